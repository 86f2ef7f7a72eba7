//! DVS128 Gesture (Amir et al. 2017) in its published layout: a reader.
//!
//! # Layout
//!
//! ```text
//! ROOT/trials_to_train.txt         the .aedat files of the training split, one per line
//! ROOT/trials_to_test.txt          the .aedat files of the test split
//! ROOT/user01_fluorescent.aedat    one recording (AEDAT 3.1)
//! ROOT/user01_fluorescent_labels.csv
//! ...
//! ```
//!
//! `X_labels.csv` belongs to `X.aedat`: a header line `class,startTime_usec,endTime_usec`, then
//! one line per labelled segment of the recording, with 1-based class ids 1 .. 11 (11 = "other
//! gestures") and the segment's start and end timestamps in microseconds. Every segment becomes one
//! sample: the events with `start <= t < end`, times relative to `start` in whole microseconds
//! ([`TimeUnit::Microseconds`]), label `class - 1`.
//! Samples come in the order of the trials list, then of the labels file.
//!
//! # AEDAT 3.1
//!
//! An ASCII header of lines starting with `#`: first `#!AER-DAT3.1`, last `#!END-HEADER` (each
//! ending in `\r\n`; `#End Of ASCII Header` is accepted as the last line too). Then packets, each a
//! 28-byte little-endian header
//!
//! ```text
//! u16 eventType  u16 eventSource  u32 eventSize  u32 eventTSOffset  u32 eventTSOverflow
//! u32 eventCapacity  u32 eventNumber  u32 eventValid
//! ```
//!
//! followed by `eventNumber` events of `eventSize` bytes (`eventCapacity` equals `eventNumber` in
//! files). Packets of other types than polarity (type 1) are skipped. A polarity event is 8 bytes:
//! a `u32` data word (bit 0 valid mark, bit 1 polarity, bits 2 .. 16 y, bits 17 .. 31 x) and the
//! `i32` timestamp at `eventTSOffset` (4); the full timestamp is `(eventTSOverflow << 31) |
//! timestamp`. Events whose valid mark is 0 are skipped. This is libcaer's definition
//! (`include/libcaer/events/common.h`: `struct caer_event_packet_header`, `TS_OVERFLOW_SHIFT 31`,
//! `CAER_EVENT_PACKET_HEADER_SIZE 28`; `include/libcaer/events/polarity.h`: `POLARITY_SHIFT 1`,
//! `Y_ADDR_SHIFT 2`, `X_ADDR_SHIFT 17`, masks `0x7FFF`, `struct caer_polarity_event { uint32_t data;
//! int32_t timestamp; }`), the one described in iniVation's "AEDAT 3.1" file-format page, and the
//! one tonic's `get_aer_events_from_file` (28-byte packet headers, little-endian `u32` address and
//! timestamp pairs) and other published DVS Gesture readers decode.
//!
//! The sensor is 128 × 128 pixels with 2 polarities (32,768 channels without pooling), laid out and
//! pooled as described in [`super::camera`]; 11 classes.
//!
//! # Errors and warnings
//!
//! A missing or wrong header, a truncated packet, a pixel outside the sensor, an unknown class, a
//! segment with `start >= end` or lying entirely outside the recording are errors naming the file.
//! A segment that only partly overlaps the recording (it starts before the first event or ends
//! after the last one) is a warning (the events it has are kept), or an error with `strict`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::camera::{CameraEvent, PixelMap, Split};
use super::{EventDataset, Sample, TimeUnit};

/// Sensor width in pixels.
pub const WIDTH: usize = 128;
/// Sensor height in pixels.
pub const HEIGHT: usize = 128;
/// Number of classes (file ids 1 .. 11, labels 0 .. 10).
pub const CLASSES: usize = 11;
/// Bytes of an AEDAT 3.1 packet header.
pub const PACKET_HEADER_BYTES: usize = 28;
/// Event type of polarity packets.
pub const POLARITY_EVENT: u16 = 1;
/// Shift of the packet's overflow counter in the 64-bit timestamp.
pub const TS_OVERFLOW_SHIFT: u32 = 31;

/// One labelled segment of a recording, as in its `_labels.csv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Class id as in the file, 1 .. 11.
    pub class: u16,
    /// First microsecond of the segment.
    pub start_us: u64,
    /// End of the segment in microseconds (exclusive).
    pub end_us: u64,
}

/// The trials list of `split` under `root`.
pub fn trials_file(root: &Path, split: Split) -> PathBuf {
    root.join(match split {
        Split::Train => "trials_to_train.txt",
        Split::Test => "trials_to_test.txt",
    })
}

/// Whether `dir` looks like a DVS Gesture root (holds `trials_to_train.txt`).
pub fn is_layout(dir: &Path) -> bool {
    trials_file(dir, Split::Train).is_file()
}

/// The labels file of a recording: `X.aedat` -> `X_labels.csv`.
pub fn labels_file(aedat: &Path) -> PathBuf {
    let stem = aedat.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    aedat.with_file_name(format!("{stem}_labels.csv"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the ASCII header and returns the offset of the first packet.
pub fn header_end(bytes: &[u8], file: &Path) -> Result<usize> {
    let f = file.display();
    if bytes.first() != Some(&b'#') {
        bail!(
            "{f}: missing AEDAT header: the file does not start with `#!AER-DAT3.1` (DVS Gesture \
             recordings are AEDAT 3.1 files)"
        );
    }
    let mut pos = 0;
    let mut first = true;
    while pos < bytes.len() {
        if bytes[pos] != b'#' {
            bail!(
                "{f}: AEDAT header not terminated: the line at byte {pos} does not start with `#` \
                 and no `#!END-HEADER` line came before it"
            );
        }
        let Some(len) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &bytes[pos..pos + len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        if first {
            let Some(version) = text.strip_prefix("#!AER-DAT") else {
                bail!(
                    "{f}: missing AEDAT version line: the file starts with `{}`, expected \
                     `#!AER-DAT3.1`",
                    text.chars().take(40).collect::<String>()
                );
            };
            if !version.trim().starts_with("3.") {
                bail!(
                    "{f}: AEDAT version {} is not supported: DVS Gesture recordings are AEDAT 3.1",
                    version.trim()
                );
            }
            first = false;
        } else if text.trim_end() == "#!END-HEADER"
            || text.trim_end().eq_ignore_ascii_case("#End Of ASCII Header")
        {
            return Ok(pos + len + 1);
        }
        pos += len + 1;
    }
    bail!("{f}: AEDAT header not terminated: no `#!END-HEADER` line (truncated file?)")
}

/// Decodes the valid polarity events of an AEDAT 3.1 file's bytes, in file order; `file` names it
/// in errors.
pub fn decode_aedat(bytes: &[u8], file: &Path) -> Result<Vec<CameraEvent>> {
    let f = file.display();
    let mut pos = header_end(bytes, file)?;
    let mut events = Vec::new();
    while pos < bytes.len() {
        let left = bytes.len() - pos;
        if left < PACKET_HEADER_BYTES {
            bail!(
                "{f}: truncated packet header at byte {pos}: {left} byte(s) left, a packet header \
                 has {PACKET_HEADER_BYTES}"
            );
        }
        let h = &bytes[pos..pos + PACKET_HEADER_BYTES];
        let event_type = u16_at(h, 0);
        let size = u32_at(h, 4) as usize;
        let ts_offset = u32_at(h, 8) as usize;
        let overflow = u64::from(u32_at(h, 12));
        let number = u32_at(h, 20) as usize;
        let body = size
            .checked_mul(number)
            .filter(|&b| b <= left - PACKET_HEADER_BYTES)
            .ok_or_else(|| {
                anyhow!(
                    "{f}: truncated packet at byte {pos} (event type {event_type}): {number} events \
                     of {size} bytes do not fit in the {} byte(s) left",
                    left - PACKET_HEADER_BYTES
                )
            })?;
        let start = pos + PACKET_HEADER_BYTES;
        if event_type == POLARITY_EVENT && number > 0 {
            if size < 8 || ts_offset + 4 > size {
                bail!(
                    "{f}: polarity packet at byte {pos} has eventSize {size} and eventTSOffset \
                     {ts_offset}; expected 8 and 4"
                );
            }
            events.reserve(number);
            for (k, ev) in bytes[start..start + body].chunks_exact(size).enumerate() {
                let data = u32_at(ev, 0);
                if data & 1 == 0 {
                    continue;
                }
                let ts = u32_at(ev, ts_offset);
                if ts >> TS_OVERFLOW_SHIFT != 0 {
                    bail!(
                        "{f}: event {k} of the polarity packet at byte {pos}: negative timestamp \
                         {}",
                        ts as i32
                    );
                }
                let x = (data >> 17) & 0x7fff;
                let y = (data >> 2) & 0x7fff;
                if x as usize >= WIDTH || y as usize >= HEIGHT {
                    bail!(
                        "{f}: event {k} of the polarity packet at byte {pos}: pixel (x {x}, y {y}) \
                         is outside the {WIDTH}x{HEIGHT} sensor"
                    );
                }
                events.push(CameraEvent {
                    t_us: (overflow << TS_OVERFLOW_SHIFT) | u64::from(ts),
                    x: x as u16,
                    y: y as u16,
                    polarity: (data >> 1) & 1 == 1,
                });
            }
        }
        pos = start + body;
    }
    Ok(events)
}

/// Reads and decodes one `.aedat` file (see [`decode_aedat`]).
pub fn read_aedat(path: &Path) -> Result<Vec<CameraEvent>> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{}: no such file", path.display()),
        _ => anyhow!("{}: cannot read: {e}", path.display()),
    })?;
    decode_aedat(&bytes, path)
}

/// Parses a `_labels.csv` text: an optional header line, then `class,start,end` lines.
pub fn parse_labels(text: &str, file: &Path) -> Result<Vec<Segment>> {
    let f = file.display();
    let mut segments = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parse = |s: &str| s.parse::<u64>().ok();
        let (class, start, end) = match fields[..] {
            [c, s, e] => match (parse(c), parse(s), parse(e)) {
                (Some(c), Some(s), Some(e)) => (c, s, e),
                _ => bail!(
                    "{f}: line {}: `{line}` is not `class,startTime_usec,endTime_usec` (three \
                     non-negative integers)",
                    n + 1
                ),
            },
            _ => bail!(
                "{f}: line {}: `{line}` has {} field(s), expected `class,startTime_usec,endTime_usec`",
                n + 1,
                fields.len()
            ),
        };
        if !(1..=CLASSES as u64).contains(&class) {
            bail!(
                "{f}: line {}: unknown class {class} (DVS Gesture classes are 1..{CLASSES})",
                n + 1
            );
        }
        if start >= end {
            bail!("{f}: line {}: segment starts at {start} us but ends at {end} us", n + 1);
        }
        segments.push(Segment { class: class as u16, start_us: start, end_us: end });
    }
    Ok(segments)
}

/// Reads a `_labels.csv` file (see [`parse_labels`]).
pub fn read_labels(path: &Path) -> Result<Vec<Segment>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow!("{}: no such file (the labels of the recording next to it)", path.display())
        }
        _ => anyhow!("{}: cannot read: {e}", path.display()),
    })?;
    parse_labels(&text, path)
}

/// The `.aedat` files a trials list names, as paths next to the list.
pub fn read_trials(path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "{}: no such file (DVS Gesture layout: trials_to_train.txt and trials_to_test.txt next \
             to the .aedat files)",
            path.display()
        ),
        _ => anyhow!("{}: cannot read: {e}", path.display()),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        if !name.ends_with(".aedat") {
            bail!("{}: line {}: `{name}` is not an .aedat file", path.display(), n + 1);
        }
        let file = dir.join(name);
        if !file.is_file() {
            bail!("{}: line {}: {} does not exist", path.display(), n + 1, file.display());
        }
        files.push(file);
    }
    if files.is_empty() {
        bail!("{}: empty trials list: no .aedat files", path.display());
    }
    Ok(files)
}

/// Cuts the labelled segments out of one recording. Returns the samples and, for segments that only
/// partly overlap the recording, a warning (an error with `strict`).
pub fn segment(
    events: &[CameraEvent],
    segments: &[Segment],
    map: &PixelMap,
    aedat: &Path,
    labels: &Path,
    strict: bool,
) -> Result<(Vec<Sample>, Option<String>)> {
    let sorted = events.windows(2).all(|w| w[0].t_us <= w[1].t_us);
    let first = events.iter().map(|e| e.t_us).min();
    let last = events.iter().map(|e| e.t_us).max();
    let mut partial = Vec::new();
    let mut samples = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        let describe = |how: &str| {
            format!(
                "{}: segment {i} (class {}, {}..{} us) {how} the recording {} ({})",
                labels.display(),
                s.class,
                s.start_us,
                s.end_us,
                aedat.display(),
                match (first, last) {
                    (Some(a), Some(b)) => format!("events at {a}..={b} us"),
                    _ => "no events".into(),
                }
            )
        };
        let (Some(a), Some(b)) = (first, last) else { bail!(describe("lies outside")) };
        if s.end_us <= a || s.start_us > b {
            bail!(describe("lies outside"));
        }
        if s.start_us < a || s.end_us > b + 1 {
            if strict {
                bail!("{} (an error with --strict)", describe("extends past"));
            }
            partial.push(i);
        }
        let inside = |e: &&CameraEvent| e.t_us >= s.start_us && e.t_us < s.end_us;
        let picked: Vec<&CameraEvent> = if sorted {
            let lo = events.partition_point(|e| e.t_us < s.start_us);
            let hi = events.partition_point(|e| e.t_us < s.end_us);
            events[lo..hi].iter().collect()
        } else {
            events.iter().filter(inside).collect()
        };
        samples.push(Sample {
            times: picked.iter().map(|e| (e.t_us - s.start_us) as f32).collect(),
            units: picked
                .iter()
                .map(|e| map.channel(usize::from(e.x), usize::from(e.y), e.polarity))
                .collect(),
            label: s.class - 1,
        });
    }
    let warning = (!partial.is_empty()).then(|| {
        format!(
            "{}: {} segment(s) ({}) extend past the recording {} (events at {}..={} us); kept \
             with the events they have (--strict makes this an error)",
            labels.display(),
            partial.len(),
            partial.iter().map(|i| format!("segment {i}")).collect::<Vec<_>>().join(", "),
            aedat.display(),
            first.unwrap_or(0),
            last.unwrap_or(0)
        )
    });
    Ok((samples, warning))
}

/// Loads split `split` of the DVS Gesture directory `root`, mapping pixels to channels with `map`
/// (built for a 128 × 128 sensor). Returns the dataset and its warnings.
pub fn load(
    root: &Path,
    split: Split,
    map: &PixelMap,
    strict: bool,
) -> Result<(EventDataset, Vec<String>)> {
    debug_assert_eq!((map.width, map.height), (WIDTH, HEIGHT));
    let trials = trials_file(root, split);
    let mut samples = Vec::new();
    let mut warnings = Vec::new();
    for aedat in read_trials(&trials)? {
        let labels = labels_file(&aedat);
        let segments = read_labels(&labels)?;
        if segments.is_empty() {
            bail!("{}: no labelled segments", labels.display());
        }
        let events = read_aedat(&aedat)?;
        let (mut s, warning) = segment(&events, &segments, map, &aedat, &labels, strict)?;
        samples.append(&mut s);
        warnings.extend(warning);
    }
    let data = EventDataset {
        name: format!("{} (DVS Gesture {split}, {})", root.display(), map.describe()),
        channels: map.channels(),
        classes: CLASSES,
        time_unit: TimeUnit::Microseconds,
        samples,
    };
    Ok((data, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_check() {
        let p = Path::new("u_labels.csv");
        let s = parse_labels("class,startTime_usec,endTime_usec\r\n3,10,20\r\n11,20,30\r\n", p)
            .unwrap();
        assert_eq!(s[1], Segment { class: 11, start_us: 20, end_us: 30 });
        let e = parse_labels("class,a,b\n12,1,2\n", p).unwrap_err().to_string();
        assert!(e.contains("u_labels.csv: line 2: unknown class 12"), "{e}");
        assert!(parse_labels("0,1,2\n", p).is_err());
        assert!(parse_labels("1,5,5\n", p).is_err());
        assert!(parse_labels("1,5\n", p).is_err());
    }

    #[test]
    fn header_versions() {
        let p = Path::new("a.aedat");
        assert_eq!(header_end(b"#!AER-DAT3.1\r\n#x\r\n#!END-HEADER\r\nZ", p).unwrap(), 32);
        let e = header_end(b"#!AER-DAT2.0\r\n#!END-HEADER\r\n", p).unwrap_err().to_string();
        assert!(e.contains("version 2.0"), "{e}");
        assert!(header_end(b"\x01\x00", p).unwrap_err().to_string().contains("missing AEDAT"));
        let e = header_end(b"#!AER-DAT3.1\r\n#Format: RAW\r\n", p).unwrap_err().to_string();
        assert!(e.contains("not terminated"), "{e}");
    }
}
