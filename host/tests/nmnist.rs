//! N-MNIST in its published layout (`Train/<digit>/<id>.bin`, 40-bit big-endian events): files
//! written bit by bit here decode to exactly the events they were written from; bad files fail
//! with a message naming them; a small synthetic dataset in this layout trains well above chance.

use assert_cmd::Command;
use predicates::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spiketile::data::camera::{CameraEvent, PixelMap, Split};
use spiketile::data::nmnist;
use spiketile::data::TimeUnit;
use std::path::Path;

/// A camera timestamp as a sample stores it: whole microseconds in an f32.
fn us(t: u64) -> f32 {
    t as f32
}

fn spiketile() -> Command {
    Command::cargo_bin("spiketile").unwrap()
}

/// One event as the published files store it: x, y, then polarity in bit 7 of byte 2 above a
/// 23-bit big-endian microsecond timestamp.
fn record(x: u8, y: u8, polarity: bool, ts: u32) -> [u8; 5] {
    assert!(ts < 1 << 23);
    [x, y, (u8::from(polarity) << 7) | (ts >> 16) as u8, (ts >> 8) as u8, ts as u8]
}

/// Writes `events` (timestamps already reduced to 23 bits by the caller) as one `.bin` file.
fn write_bin(path: &Path, events: &[(u8, u8, bool, u32)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bytes: Vec<u8> = events.iter().flat_map(|&(x, y, p, t)| record(x, y, p, t)).collect();
    std::fs::write(path, bytes).unwrap();
}

fn inspect(dir: &Path) -> assert_cmd::assert::Assert {
    inspect_with(dir, &[])
}

fn inspect_with(dir: &Path, flags: &[&str]) -> assert_cmd::assert::Assert {
    spiketile().arg("data").arg("inspect").arg(dir).args(flags).assert()
}

#[test]
fn round_trip_exact_events_including_counter_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Two samples of digit 3 and one of digit 7 in Train, one of digit 0 in Test.
    let a =
        [(0, 0, false, 0), (33, 0, true, 1), (0, 33, true, 0x01_2345), (33, 33, false, 299_999)];
    // The counter wraps (8,388,607 -> 2): the reader adds 2^23 us from there on.
    let b = [(5, 6, true, (1 << 23) - 1), (7, 8, false, 2), (9, 10, true, 40)];
    let c = [(16, 17, true, 100)];
    write_bin(&root.join("Train/3/00001.bin"), &a);
    write_bin(&root.join("Train/3/00002.bin"), &b);
    write_bin(&root.join("Train/7/00001.bin"), &c);
    write_bin(&root.join("Test/0/00001.bin"), &c);

    let ev = nmnist::read_file(&root.join("Train/3/00002.bin")).unwrap();
    assert_eq!(
        ev,
        vec![
            CameraEvent { t_us: (1 << 23) - 1, x: 5, y: 6, polarity: true },
            CameraEvent { t_us: (1 << 23) + 2, x: 7, y: 8, polarity: false },
            CameraEvent { t_us: (1 << 23) + 40, x: 9, y: 10, polarity: true },
        ]
    );
    let ev = nmnist::read_file(&root.join("Train/3/00001.bin")).unwrap();
    let expected: Vec<CameraEvent> = a
        .iter()
        .map(|&(x, y, p, t)| CameraEvent { t_us: t.into(), x: x.into(), y: y.into(), polarity: p })
        .collect();
    assert_eq!(ev, expected);

    // The dataset: samples in class then file order, channel = p*34*34 + y*34 + x.
    let map = PixelMap::new(34, 34, 1, false).unwrap();
    let data = nmnist::load(root, Split::Train, &map).unwrap();
    assert_eq!((data.channels, data.classes, data.samples.len()), (2312, 10, 3));
    assert_eq!(data.time_unit, TimeUnit::Microseconds);
    let labels: Vec<u16> = data.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [3, 3, 7]);
    assert_eq!(data.samples[0].units, [0, 1156 + 33, 1156 + 33 * 34, 33 * 34 + 33]);
    assert_eq!(data.samples[0].times, [us(0), us(1), us(0x01_2345), us(299_999)]);
    assert_eq!(data.samples[1].times[1], us((1 << 23) + 2));
    let test = nmnist::load(root, Split::Test, &map).unwrap();
    assert_eq!(test.samples.len(), 1);
    assert_eq!(test.samples[0].label, 0);
    assert_eq!(test.samples[0].units, [1156 + 17 * 34 + 16]);

    // Pooling 2x2 and merged polarities.
    let map = PixelMap::new(34, 34, 2, true).unwrap();
    let data = nmnist::load(root, Split::Train, &map).unwrap();
    assert_eq!(data.channels, 17 * 17);
    assert_eq!(data.samples[0].units, [0, 16, 16 * 17, 16 * 17 + 16]);

    // The CLI: detected format, pooling flags, both splits.
    inspect(root)
        .success()
        .stdout(predicate::str::contains("samples            3"))
        .stdout(predicate::str::contains("channels           2312 (8 used)"));
    inspect_with(root, &["--downsample", "4", "--merge-polarity", "--split", "test"])
        .success()
        .stdout(predicate::str::contains("samples            1"))
        .stdout(predicate::str::contains("channels           81 (1 used)"));
}

#[test]
fn truncated_record_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_bin(&root.join("Train/1/00001.bin"), &[(1, 1, true, 5)]);
    std::fs::create_dir_all(root.join("Test")).unwrap();
    let bad = root.join("Train/1/00002.bin");
    let mut bytes = record(1, 2, true, 3).to_vec();
    bytes.extend([4, 5, 6]);
    std::fs::write(&bad, bytes).unwrap();
    inspect(root).failure().stderr(
        predicate::str::contains(bad.display().to_string())
            .and(predicate::str::contains("truncated record"))
            .and(predicate::str::contains("8 bytes, not a multiple of 5")),
    );
}

#[test]
fn pixel_outside_the_sensor_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("Test")).unwrap();
    let bad = root.join("Train/4/00009.bin");
    write_bin(&bad, &[(1, 1, true, 5), (3, 34, false, 9)]);
    inspect(root).failure().stderr(
        predicate::str::contains(bad.display().to_string())
            .and(predicate::str::contains("event 1 (byte 5): pixel (x 3, y 34) is outside")),
    );
    write_bin(&bad, &[(34, 0, false, 9)]);
    inspect(root).failure().stderr(predicate::str::contains("pixel (x 34, y 0) is outside"));
}

#[test]
fn non_digit_class_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_bin(&root.join("Train/1/00001.bin"), &[(1, 1, true, 5)]);
    write_bin(&root.join("Train/ten/00001.bin"), &[(1, 1, true, 5)]);
    std::fs::create_dir_all(root.join("Test")).unwrap();
    inspect(root).failure().stderr(
        predicate::str::contains(root.join("Train/ten").display().to_string())
            .and(predicate::str::contains("class folder `ten` is not a digit 0-9")),
    );
}

#[test]
fn empty_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("Train")).unwrap();
    std::fs::create_dir_all(root.join("Test")).unwrap();
    inspect(root).failure().stderr(
        predicate::str::contains(root.join("Train").display().to_string())
            .and(predicate::str::contains("empty directory")),
    );
    std::fs::create_dir_all(root.join("Train/5")).unwrap();
    inspect(root).failure().stderr(
        predicate::str::contains(root.join("Train/5").display().to_string())
            .and(predicate::str::contains("empty class folder: no .bin files")),
    );
    // --format nmnist on a directory without the layout.
    let other = tempfile::tempdir().unwrap();
    inspect_with(other.path(), &["--format", "nmnist"])
        .failure()
        .stderr(predicate::str::contains("Train: no such directory (N-MNIST layout"));
    // Detection fails on an unknown directory with a message listing the layouts.
    inspect(other.path()).failure().stderr(predicate::str::contains("no known dataset layout"));
}

/// Writes a 4-class N-MNIST-layout dataset: 80 % of the 2,000 events of a sample of class `c`
/// fall in image quadrant `c`, the rest anywhere, over 0.3 s.
fn write_quadrant_dataset(root: &Path, per_class: &[(Split, usize)], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for &(split, n) in per_class {
        let dir = nmnist::split_dir(root, split);
        for c in 0..4u8 {
            let (qx, qy) = ((c % 2) * 17, (c / 2) * 17);
            for i in 0..n {
                let mut events: Vec<(u8, u8, bool, u32)> = (0..2000)
                    .map(|_| {
                        let (x, y) = if rng.gen_bool(0.8) {
                            (qx + rng.gen_range(0..17), qy + rng.gen_range(0..17))
                        } else {
                            (rng.gen_range(0..34), rng.gen_range(0..34))
                        };
                        (x, y, rng.gen_bool(0.5), rng.gen_range(0..300_000))
                    })
                    .collect();
                events.sort_by_key(|e| e.3);
                write_bin(&dir.join(format!("{c}/{:05}.bin", i + 1)), &events);
            }
        }
    }
}

/// The percentage after `key` in `text` (e.g. `test accuracy 87.50%`).
fn percent_after(text: &str, key: &str) -> f64 {
    let rest =
        &text[text.find(key).unwrap_or_else(|| panic!("no `{key}` in {text}")) + key.len()..];
    rest.trim_start().split('%').next().unwrap().trim().parse().unwrap()
}

#[test]
fn trains_well_above_chance_on_a_small_nmnist_layout_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nmnist");
    write_quadrant_dataset(&root, &[(Split::Train, 10), (Split::Test, 5)], 7);
    let out = spiketile()
        .current_dir(dir.path())
        .args(["train", "--data", "nmnist", "--quiet", "--hidden", "32", "--time-steps", "20"])
        .args(["--epochs", "3", "--duration", "0.3", "--batch-size", "4", "--lr", "0.01"])
        .args(["--save", "m.st"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let acc = percent_after(&stdout, "test accuracy");
    eprintln!("{stdout}");
    assert!(acc >= 60.0, "test accuracy {acc}% on 4 balanced classes (chance 25%): {stdout}");
    // eval defaults to the test split of the directory.
    let out = spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "m.st", "--data", "nmnist", "--predictions", "p.csv"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("N-MNIST test").and(predicate::str::contains("20 samples")),
        );
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(percent_after(&stdout, "accuracy"), acc);
    let csv = std::fs::read_to_string(dir.path().join("p.csv")).unwrap();
    assert_eq!(csv.lines().count(), 21);
    // A model trained on 2312 channels refuses pooled data, saying why.
    spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "m.st", "--data", "nmnist", "--downsample", "2"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("has 578 channels, 2312 expected"));
}
