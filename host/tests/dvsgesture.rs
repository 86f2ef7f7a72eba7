//! DVS Gesture in its published layout (AEDAT 3.1 recordings, `_labels.csv`, trials lists): files
//! written bit by bit here decode to exactly the events they were written from; bad files fail
//! with a message naming them; a small synthetic dataset in this layout trains well above chance.

use assert_cmd::Command;
use predicates::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spiketile::data::camera::{CameraEvent, PixelMap, Split};
use spiketile::data::dvsgesture;
use spiketile::data::TimeUnit;
use std::path::Path;

/// A camera timestamp as a sample stores it: whole microseconds in an f32.
fn us(t: u64) -> f32 {
    t as f32
}

fn spiketile() -> Command {
    Command::cargo_bin("spiketile").unwrap()
}

fn inspect(dir: &Path, flags: &[&str]) -> assert_cmd::assert::Assert {
    spiketile().arg("data").arg("inspect").arg(dir).args(flags).assert()
}

/// The header cAER writes (AEDAT 3.1, CRLF line ends).
const HEADER: &[u8] = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n\
#Start-Time: 2017-03-27 14:28:46 (TZ-0700)\r\n#!END-HEADER\r\n";

/// The 32-bit data word of a polarity event: bit 0 valid, bit 1 polarity, bits 2..16 y,
/// bits 17..31 x.
fn data_word(x: u32, y: u32, polarity: bool, valid: bool) -> u32 {
    (x << 17) | (y << 2) | (u32::from(polarity) << 1) | u32::from(valid)
}

/// One packet: the 28-byte little-endian header, then `events` as (data, timestamp) pairs padded
/// to `size` bytes each.
fn packet(event_type: u16, size: u32, overflow: u32, events: &[(u32, u32)]) -> Vec<u8> {
    let n = events.len() as u32;
    let mut b = Vec::new();
    b.extend(event_type.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // eventSource
    b.extend(size.to_le_bytes());
    b.extend(4u32.to_le_bytes()); // eventTSOffset
    b.extend(overflow.to_le_bytes());
    b.extend(n.to_le_bytes()); // eventCapacity
    b.extend(n.to_le_bytes()); // eventNumber
    b.extend(n.to_le_bytes()); // eventValid
    for &(data, ts) in events {
        let start = b.len();
        b.extend(data.to_le_bytes());
        b.extend(ts.to_le_bytes());
        b.resize(start + size as usize, 0);
    }
    b
}

/// A polarity packet of `events` (x, y, polarity, full timestamp): all must share the overflow
/// counter `t >> 31`.
fn polarity_packet(events: &[(u32, u32, bool, u64)]) -> Vec<u8> {
    let overflow = events.first().map_or(0, |e| (e.3 >> 31) as u32);
    let words: Vec<(u32, u32)> = events
        .iter()
        .map(|&(x, y, p, t)| {
            assert_eq!(t >> 31, u64::from(overflow));
            (data_word(x, y, p, true), (t & 0x7fff_ffff) as u32)
        })
        .collect();
    packet(1, 8, overflow, &words)
}

fn labels_csv(segments: &[(u16, u64, u64)]) -> String {
    let mut s = String::from("class,startTime_usec,endTime_usec\r\n");
    for (c, a, b) in segments {
        s.push_str(&format!("{c},{a},{b}\r\n"));
    }
    s
}

/// Writes `ROOT/NAME.aedat` (header, then `packets`) and `ROOT/NAME_labels.csv`.
fn write_recording(root: &Path, name: &str, packets: &[Vec<u8>], segments: &[(u16, u64, u64)]) {
    let mut bytes = HEADER.to_vec();
    for p in packets {
        bytes.extend(p);
    }
    std::fs::write(root.join(format!("{name}.aedat")), bytes).unwrap();
    std::fs::write(root.join(format!("{name}_labels.csv")), labels_csv(segments)).unwrap();
}

fn write_trials(root: &Path, train: &[&str], test: &[&str]) {
    let list = |names: &[&str]| names.iter().map(|n| format!("{n}.aedat\r\n")).collect::<String>();
    std::fs::write(root.join("trials_to_train.txt"), list(train)).unwrap();
    std::fs::write(root.join("trials_to_test.txt"), list(test)).unwrap();
}

#[test]
fn round_trip_exact_events_with_overflow_and_skipped_packets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let big = 1u64 << 31; // first microsecond of overflow period 1
    let p0 = [(0, 0, false, 1_000), (127, 0, true, 1_500), (0, 127, true, 2_000)];
    let p1 = [(5, 6, false, big + 10), (127, 127, true, big + 20), (64, 32, false, big + 500)];
    let packets = vec![
        // A special-event packet (type 0): skipped.
        packet(0, 8, 0, &[(0x0000_0005, 900)]),
        polarity_packet(&p0),
        // An invalid polarity event (valid mark 0) among valid ones, and 16-byte events: the
        // valid ones are kept, the rest of each event is padding.
        packet(
            1,
            16,
            0,
            &[(data_word(9, 9, true, false), 2_100), (data_word(3, 4, true, true), 2_200)],
        ),
        // Timestamps past 2^31 us: eventTSOverflow = 1.
        polarity_packet(&p1),
    ];
    let segments = [(2, 1_000, 2_001), (11, 2_150, big + 21), (1, big, big + 501)];
    write_recording(root, "user01_test", &packets, &segments);
    write_trials(root, &["user01_test"], &["user01_test"]);

    let ev = dvsgesture::read_aedat(&root.join("user01_test.aedat")).unwrap();
    let mut expected: Vec<CameraEvent> = p0
        .iter()
        .map(|&(x, y, p, t)| CameraEvent { t_us: t, x: x as u16, y: y as u16, polarity: p })
        .collect();
    expected.push(CameraEvent { t_us: 2_200, x: 3, y: 4, polarity: true });
    expected.extend(p1.iter().map(|&(x, y, p, t)| CameraEvent {
        t_us: t,
        x: x as u16,
        y: y as u16,
        polarity: p,
    }));
    assert_eq!(ev, expected);

    // Segments become samples: times from the segment start, label = class - 1,
    // channel = p*128*128 + y*128 + x.
    let map = PixelMap::new(128, 128, 1, false).unwrap();
    let (data, warnings) = dvsgesture::load(root, Split::Train, &map, true).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!((data.channels, data.classes, data.samples.len()), (32768, 11, 3));
    assert_eq!(data.time_unit, TimeUnit::Microseconds);
    let s = &data.samples;
    assert_eq!([s[0].label, s[1].label, s[2].label], [1, 10, 0]);
    assert_eq!(s[0].units, [0, 16384 + 127, 16384 + 127 * 128]);
    assert_eq!(s[0].times, [us(0), us(500), us(1_000)]);
    assert_eq!(s[1].units, [16384 + 4 * 128 + 3, 6 * 128 + 5, 16384 + 127 * 128 + 127]);
    assert_eq!(s[1].times, [us(50), us(big + 10 - 2_150), us(big + 20 - 2_150)]);
    assert_eq!(s[2].times, [us(10), us(20), us(500)]);
    assert_eq!(s[2].units[2], 32 * 128 + 64);

    // Pooled 4x4 with merged polarities: 32 x 32 cells.
    let map = PixelMap::new(128, 128, 4, true).unwrap();
    let (data, _) = dvsgesture::load(root, Split::Test, &map, true).unwrap();
    assert_eq!(data.channels, 1024);
    assert_eq!(data.samples[0].units, [0, 31, 31 * 32]);

    // The CLI detects the layout; `#End Of ASCII Header` also ends a header.
    inspect(root, &["--downsample", "4"])
        .success()
        .stdout(predicate::str::contains("samples            3"))
        .stdout(predicate::str::contains("channels           2048"));
    let mut bytes = b"#!AER-DAT3.1\r\n#End Of ASCII Header\r\n".to_vec();
    bytes.extend(polarity_packet(&p0));
    std::fs::write(root.join("user01_test.aedat"), bytes).unwrap();
    std::fs::write(root.join("user01_test_labels.csv"), labels_csv(&[(4, 1_000, 2_001)])).unwrap();
    let (data, _) = dvsgesture::load(root, Split::Train, &map, true).unwrap();
    assert_eq!(data.samples[0].times.len(), 3);
}

/// A valid one-recording dataset to break in one place.
fn small_dataset(root: &Path) {
    let p = polarity_packet(&[(1, 1, true, 100), (2, 2, false, 200), (3, 3, true, 300)]);
    write_recording(root, "user02_led", &[p], &[(3, 100, 301)]);
    write_trials(root, &["user02_led"], &["user02_led"]);
}

fn fails_with(root: &Path, file: &str, what: &str) {
    inspect(root, &[]).failure().stderr(
        predicate::str::contains(root.join(file).display().to_string())
            .and(predicate::str::contains(what)),
    );
}

#[test]
fn bad_header_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_dataset(root);
    inspect(root, &[]).success();
    let aedat = root.join("user02_led.aedat");
    let body = polarity_packet(&[(1, 1, true, 100)]);
    std::fs::write(&aedat, &body).unwrap();
    fails_with(root, "user02_led.aedat", "missing AEDAT header");
    let mut b = b"#!AER-DAT2.0\r\n#!END-HEADER\r\n".to_vec();
    b.extend(&body);
    std::fs::write(&aedat, b).unwrap();
    fails_with(root, "user02_led.aedat", "AEDAT version 2.0 is not supported");
    std::fs::write(&aedat, b"#!AER-DAT3.1\r\n#Format: RAW\r\n").unwrap();
    fails_with(root, "user02_led.aedat", "header not terminated");
}

#[test]
fn truncated_packet_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_dataset(root);
    let aedat = root.join("user02_led.aedat");
    let mut b = HEADER.to_vec();
    b.extend(polarity_packet(&[(1, 1, true, 100), (2, 2, false, 200)]));
    b.truncate(b.len() - 3);
    std::fs::write(&aedat, &b).unwrap();
    let at = HEADER.len();
    fails_with(root, "user02_led.aedat", &format!("truncated packet at byte {at} (event type 1)"));
    b.truncate(HEADER.len() + 10);
    std::fs::write(&aedat, &b).unwrap();
    fails_with(root, "user02_led.aedat", &format!("truncated packet header at byte {at}"));
    let mut b = HEADER.to_vec();
    b.extend(packet(1, 8, 0, &[(data_word(128, 0, true, true), 5)]));
    std::fs::write(&aedat, &b).unwrap();
    fails_with(root, "user02_led.aedat", "pixel (x 128, y 0) is outside the 128x128 sensor");
}

#[test]
fn bad_labels_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_dataset(root);
    let labels = root.join("user02_led_labels.csv");
    std::fs::write(&labels, labels_csv(&[(12, 100, 200)])).unwrap();
    fails_with(
        root,
        "user02_led_labels.csv",
        "line 2: unknown class 12 (DVS Gesture classes are 1..11)",
    );
    std::fs::write(&labels, labels_csv(&[(0, 100, 200)])).unwrap();
    fails_with(root, "user02_led_labels.csv", "unknown class 0");
    // Entirely outside the recording: an error.
    std::fs::write(&labels, labels_csv(&[(1, 100, 200), (2, 5_000, 6_000)])).unwrap();
    fails_with(root, "user02_led_labels.csv", "segment 1 (class 2, 5000..6000 us) lies outside");
    // Partly outside: a warning, or an error with --strict.
    std::fs::write(&labels, labels_csv(&[(1, 50, 250)])).unwrap();
    inspect(root, &[]).success().stderr(predicate::str::contains(
        "user02_led_labels.csv: 1 segment(s) (segment 0) extend past the recording",
    ));
    inspect(root, &["--strict"]).failure().stderr(predicate::str::contains(
        "segment 0 (class 1, 50..250 us) extends past the recording",
    ));
    std::fs::remove_file(&labels).unwrap();
    fails_with(root, "user02_led_labels.csv", "no such file");
    // Trials lists naming missing files.
    std::fs::write(root.join("trials_to_train.txt"), "user09_none.aedat\n").unwrap();
    fails_with(root, "trials_to_train.txt", "line 1");
}

/// Writes a 4-class DVS-Gesture-layout dataset: each recording holds one 0.5 s segment of each
/// class 1..4, whose events fall mostly in image quadrant `class - 1`.
fn write_quadrant_dataset(root: &Path, train: usize, test: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut names = Vec::new();
    for r in 0..train + test {
        let name = format!("user{:02}_synthetic", r + 1);
        let mut segments = Vec::new();
        let mut events = Vec::new();
        let mut t0 = 3_000_000u64;
        let mut classes = [1u16, 2, 3, 4];
        for i in (1..4).rev() {
            classes.swap(i, rng.gen_range(0..=i));
        }
        for class in classes {
            let q = u32::from(class - 1);
            let (qx, qy) = ((q % 2) * 64, (q / 2) * 64);
            let mut seg: Vec<(u32, u32, bool, u64)> = (0..3000)
                .map(|_| {
                    let (x, y) = if rng.gen_bool(0.8) {
                        (qx + rng.gen_range(0..64), qy + rng.gen_range(0..64))
                    } else {
                        (rng.gen_range(0..128), rng.gen_range(0..128))
                    };
                    (x, y, rng.gen_bool(0.5), t0 + rng.gen_range(0..500_000))
                })
                .collect();
            seg.sort_by_key(|e| e.3);
            events.extend(seg);
            segments.push((class, t0, t0 + 500_000));
            t0 += 700_000;
        }
        let packets: Vec<Vec<u8>> = events.chunks(1000).map(polarity_packet).collect();
        write_recording(root, &name, &packets, &segments);
        names.push(name);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trials(root, &names[..train], &names[train..]);
}

#[test]
fn trains_well_above_chance_on_a_small_dvsgesture_layout_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("DvsGesture");
    std::fs::create_dir_all(&root).unwrap();
    write_quadrant_dataset(&root, 10, 5, 11);
    let out = spiketile()
        .current_dir(dir.path())
        .args(["train", "--data", "DvsGesture", "--downsample", "4", "--quiet"])
        .args(["--hidden", "32", "--time-steps", "20", "--epochs", "3", "--duration", "0.5"])
        .args(["--batch-size", "4", "--lr", "0.01", "--save", "m.st"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let key = "test accuracy";
    let at = stdout.find(key).unwrap_or_else(|| panic!("no test accuracy in {stdout}"));
    let acc: f64 =
        stdout[at + key.len()..].trim_start().split('%').next().unwrap().parse().unwrap();
    eprintln!("{stdout}");
    assert!(acc >= 60.0, "test accuracy {acc}% on 4 balanced classes (chance 25%): {stdout}");
    spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "m.st", "--data", "DvsGesture", "--downsample", "4"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("DVS Gesture test")
                .and(predicate::str::contains("20 samples")),
        );
    // --split train evaluates the training split; without --downsample the channels differ.
    spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "m.st", "--data", "DvsGesture", "--downsample", "4"])
        .args(["--split", "train"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("DVS Gesture train")
                .and(predicate::str::contains("40 samples")),
        );
    spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "m.st", "--data", "DvsGesture"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("has 32768 channels, 2048 expected"));
}
