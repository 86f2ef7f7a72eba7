//! N-MNIST (Orchard et al. 2015) in its published layout: a reader.
//!
//! # Layout
//!
//! ```text
//! ROOT/Train/<digit>/<id>.bin     60,000 samples, digit folders 0 .. 9
//! ROOT/Test/<digit>/<id>.bin      10,000 samples
//! ```
//!
//! The class of a sample is the name of its folder (`0` .. `9`; anything else is an error). Files
//! not ending in `.bin` and hidden entries (`.DS_Store`, ...) are ignored; a class folder without
//! any `.bin` file, or a split without any class folder, is an error. Samples come in class order,
//! then file-name order.
//!
//! # Events
//!
//! Each `.bin` file is a sequence of 40-bit (5-byte) events, big-endian:
//!
//! ```text
//! byte 0        x, 8 bits (0 .. 33)
//! byte 1        y, 8 bits (0 .. 33)
//! byte 2 bit 7  polarity (1 = ON)
//! byte 2 bits 6..0, byte 3, byte 4
//!               timestamp in microseconds, 23 bits
//! ```
//!
//! This is the format documented with the dataset and decoded by Garrick Orchard's MATLAB
//! `Read_Ndataset.m` (`TD.x = evtStream(1:5:end)`, `TD.p = bitshift(evtStream(3:5:end), -7)`,
//! `TD.ts = bitshift(bitand(evtStream(3:5:end), 127), 16) + bitshift(evtStream(4:5:end), 8) +
//! evtStream(5:5:end)`), by his Python `eventvision.py` `read_dataset`, and by tonic's
//! `tonic/io.py` `read_mnist_file`, which was adapted from it.
//!
//! # Timestamp overflow
//!
//! The 23-bit counter wraps after 2^23 µs = 8.39 s. The published samples last about 0.3 s (three
//! saccades), so it never wraps in them; for other recordings in this format spiketile unwraps it:
//! a timestamp more than 2^22 µs *smaller* than the previous event's is taken as a wrap, and
//! 2^23 µs is added to it and to every later event. (Orchard's `eventvision.py` and tonic instead
//! treat an event with `y == 240` as an overflow marker and add 2^13 µs to every later event; no
//! such marker occurs in N-MNIST. spiketile skips `y == 240` records as markers, without adding
//! anything, so that files written by that convention still load; every other `y` must be < 34.)
//!
//! Sample times are the timestamps in whole microseconds ([`TimeUnit::Microseconds`]), from the
//! start of the recording (not shifted to the first event). The sensor is 34 × 34 pixels with 2 polarities: 2,312 channels, laid out and
//! pooled as described in [`super::camera`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::camera::{CameraEvent, PixelMap, Split};
use super::{EventDataset, Sample, TimeUnit};

/// Sensor width in pixels.
pub const WIDTH: usize = 34;
/// Sensor height in pixels.
pub const HEIGHT: usize = 34;
/// Number of classes (digits 0 .. 9).
pub const CLASSES: usize = 10;
/// Bytes per event.
pub const RECORD_BYTES: usize = 5;
/// `y` value of the overflow marker records of Orchard's `eventvision.py` (skipped).
pub const OVERFLOW_MARKER_Y: u8 = 240;
/// Period of the 23-bit timestamp counter, in microseconds.
pub const TIMESTAMP_PERIOD_US: u64 = 1 << 23;

/// The folder of `split` under `root`: `Train` or `Test`.
pub fn split_dir(root: &Path, split: Split) -> PathBuf {
    root.join(match split {
        Split::Train => "Train",
        Split::Test => "Test",
    })
}

/// Whether `dir` looks like an N-MNIST root (holds `Train/` and `Test/`).
pub fn is_layout(dir: &Path) -> bool {
    split_dir(dir, Split::Train).is_dir() && split_dir(dir, Split::Test).is_dir()
}

/// Decodes the bytes of one `.bin` file (see the module docs); `file` names it in errors.
///
/// Errors: a length that is not a multiple of 5 (a truncated record), a pixel outside the 34 × 34
/// sensor.
pub fn decode(bytes: &[u8], file: &Path) -> Result<Vec<CameraEvent>> {
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        bail!(
            "{}: truncated record: the file has {} bytes, not a multiple of 5 (N-MNIST events are 40 \
             bits); the last {} byte(s) are a partial event",
            file.display(),
            bytes.len(),
            bytes.len() % RECORD_BYTES
        );
    }
    let mut events = Vec::with_capacity(bytes.len() / RECORD_BYTES);
    let mut wraps = 0u64;
    let mut previous: Option<u32> = None;
    for (i, r) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let (x, y) = (r[0], r[1]);
        if y == OVERFLOW_MARKER_Y {
            continue;
        }
        let ts = (u32::from(r[2] & 0x7f) << 16) | (u32::from(r[3]) << 8) | u32::from(r[4]);
        if usize::from(x) >= WIDTH || usize::from(y) >= HEIGHT {
            bail!(
                "{}: event {i} (byte {}): pixel (x {x}, y {y}) is outside the {WIDTH}x{HEIGHT} sensor",
                file.display(),
                i * RECORD_BYTES
            );
        }
        if let Some(p) = previous {
            if u64::from(ts) + TIMESTAMP_PERIOD_US / 2 < u64::from(p) {
                wraps += 1;
            }
        }
        previous = Some(ts);
        events.push(CameraEvent {
            t_us: wraps * TIMESTAMP_PERIOD_US + u64::from(ts),
            x: u16::from(x),
            y: u16::from(y),
            polarity: r[2] & 0x80 != 0,
        });
    }
    Ok(events)
}

/// Reads and decodes one `.bin` file.
pub fn read_file(path: &Path) -> Result<Vec<CameraEvent>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    decode(&bytes, path)
}

/// The entries of `dir`, sorted by name, hidden ones left out.
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let read = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "{}: no such directory (N-MNIST layout: ROOT/Train/<digit>/<id>.bin and \
             ROOT/Test/<digit>/<id>.bin)",
            dir.display()
        ),
        _ => anyhow!("{}: cannot list: {e}", dir.display()),
    })?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| anyhow!("{}: cannot list: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            entries.push((name, entry.path()));
        }
    }
    entries.sort();
    Ok(entries)
}

/// Loads split `split` of the N-MNIST directory `root` (which holds `Train/` and `Test/`), mapping
/// pixels to channels with `map` (built for a 34 × 34 sensor).
pub fn load(root: &Path, split: Split, map: &PixelMap) -> Result<EventDataset> {
    debug_assert_eq!((map.width, map.height), (WIDTH, HEIGHT));
    let dir = split_dir(root, split);
    let mut samples = Vec::new();
    let mut classes_seen = 0;
    for (name, class_dir) in sorted_entries(&dir)? {
        if !class_dir.is_dir() {
            continue;
        }
        let label = match name.as_bytes() {
            [d @ b'0'..=b'9'] => u16::from(d - b'0'),
            _ => bail!(
                "{}: class folder `{name}` is not a digit 0-9 (N-MNIST layout: {}/<digit>/<id>.bin)",
                class_dir.display(),
                dir.display()
            ),
        };
        let mut files = 0;
        for (file_name, file) in sorted_entries(&class_dir)? {
            if !file_name.ends_with(".bin") || file.is_dir() {
                continue;
            }
            let events = read_file(&file)?;
            samples.push(Sample {
                times: events.iter().map(|e| e.t_us as f32).collect(),
                units: events
                    .iter()
                    .map(|e| map.channel(usize::from(e.x), usize::from(e.y), e.polarity))
                    .collect(),
                label,
            });
            files += 1;
        }
        if files == 0 {
            bail!("{}: empty class folder: no .bin files", class_dir.display());
        }
        classes_seen += 1;
    }
    if classes_seen == 0 {
        bail!(
            "{}: empty directory: no class folders 0-9 (N-MNIST layout: {}/<digit>/<id>.bin)",
            dir.display(),
            dir.display()
        );
    }
    Ok(EventDataset {
        name: format!("{} (N-MNIST {split}, {})", root.display(), map.describe()),
        channels: map.channels(),
        classes: CLASSES,
        time_unit: TimeUnit::Microseconds,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(x: u8, y: u8, p: bool, ts: u32) -> [u8; 5] {
        [x, y, (u8::from(p) << 7) | (ts >> 16) as u8 & 0x7f, (ts >> 8) as u8, ts as u8]
    }

    #[test]
    fn decodes_bits_and_unwraps_the_counter() {
        let mut bytes = Vec::new();
        bytes.extend(record(1, 2, true, 0x7f_fff0));
        bytes.extend(record(0, 0, false, 0)); // overflow marker convention: skipped
        bytes[6] = OVERFLOW_MARKER_Y;
        bytes.extend(record(33, 33, false, 5)); // counter wrapped
        bytes.extend(record(3, 4, true, 3)); // slightly out of order: not a wrap
        let ev = decode(&bytes, Path::new("f.bin")).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0], CameraEvent { t_us: 0x7f_fff0, x: 1, y: 2, polarity: true });
        assert_eq!(ev[1], CameraEvent { t_us: (1 << 23) + 5, x: 33, y: 33, polarity: false });
        assert_eq!(ev[2].t_us, (1 << 23) + 3);
        let err = decode(&bytes[..7], Path::new("f.bin")).unwrap_err().to_string();
        assert!(err.contains("f.bin: truncated record"), "{err}");
        let err = decode(&record(34, 0, true, 1), Path::new("g.bin")).unwrap_err().to_string();
        assert!(err.contains("g.bin: event 0") && err.contains("outside"), "{err}");
    }
}
