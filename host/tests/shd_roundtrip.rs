//! SHD reader and writer: round trips, files in the SHD authors' on-disk types (and other widths),
//! atomic writes, and `spiketile data synth` (SPEC §4).
#![cfg(feature = "hdf5")]

mod common;

use common::hdf5::put;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use half::f16;
use hdf5::types::VarLenArray;
use hdf5::{File, H5Type};
use predicates::prelude::*;
use spiketile::data::shd::{self, LoadOptions};
use spiketile::data::synthetic::{generate, SynthConfig};
use spiketile::data::{EventDataset, Sample, TimeUnit};
use tempfile::TempDir;

/// File names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A deterministic dataset whose times are exactly representable in float16 (multiples of 2^-10
/// below 2 s), including an empty sample, unit 699 and label 19.
fn exact_dataset() -> EventDataset {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut samples: Vec<Sample> = (0..300)
        .map(|i| {
            let n = (next() % 400) as usize;
            let mut times: Vec<f32> = (0..n).map(|_| (next() % 2048) as f32 / 1024.0).collect();
            times.sort_by(f32::total_cmp);
            let units = (0..n).map(|_| (next() % 700) as u16).collect();
            Sample { times, units, label: (i % 20) as u16 }
        })
        .collect();
    samples[7] = Sample { times: vec![], units: vec![], label: 3 };
    samples[8] = Sample {
        times: vec![0.0, 2.0 - 1.0 / 1024.0, 65504.0],
        units: vec![699, 0, 12],
        label: 19,
    };
    EventDataset {
        name: "exact".into(),
        channels: 700,
        classes: 20,
        time_unit: TimeUnit::Seconds,
        samples,
    }
}

#[test]
fn round_trip_is_exact() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("rt.h5");
    let data = exact_dataset();
    shd::write(&path, &data).unwrap();
    assert_eq!(listing(dir.path()), vec!["rt.h5"], "no temporary file left behind");
    let (back, report) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(back.channels, 700);
    assert_eq!(back.classes, 20);
    assert_eq!(back.samples.len(), data.samples.len());
    for (i, (a, b)) in data.samples.iter().zip(&back.samples).enumerate() {
        assert_eq!(a, b, "sample {i}");
    }
    assert_eq!(report.times_dtype, "vlen float16");
    assert_eq!(report.units_dtype, "vlen uint16");
    assert_eq!(report.labels_dtype, "uint16");
    assert_eq!(report.dropped_events, 0);
    assert_eq!(report.events, data.samples.iter().map(|s| s.times.len()).sum::<usize>());
    assert!(report.warnings().is_empty());

    // Overwriting an existing file works and is again exact.
    shd::write(&path, &data).unwrap();
    assert_eq!(shd::load(&path, &LoadOptions::default()).unwrap().0.samples, data.samples);
}

/// A dataset in microseconds (an event camera's) is written in seconds, as SHD stores them.
#[test]
fn microsecond_times_are_written_in_seconds() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("camera.h5");
    let data = EventDataset {
        name: "camera".into(),
        channels: 4,
        classes: 2,
        time_unit: TimeUnit::Microseconds,
        samples: vec![Sample {
            times: vec![0.0, 250_000.0, 1_500_000.0],
            units: vec![0, 1, 3],
            label: 1,
        }],
    };
    shd::write(&path, &data).unwrap();
    let (d, _) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(d.time_unit, TimeUnit::Seconds);
    assert_eq!(d.samples[0].times, [0.0, 0.25, 1.5]);
}

#[test]
fn channels_and_classes_from_options() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("small.h5");
    let data = EventDataset {
        name: "small".into(),
        channels: 10,
        classes: 5,
        time_unit: TimeUnit::Seconds,
        samples: vec![Sample { times: vec![0.5], units: vec![2], label: 1 }],
    };
    shd::write(&path, &data).unwrap();
    let (d, _) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!((d.channels, d.classes), (3, 2), "read from the data: largest id + 1");
    let opts = LoadOptions { channels: Some(10), classes: Some(5), strict: false };
    let (d, _) = shd::load(&path, &opts).unwrap();
    assert_eq!((d.channels, d.classes), (10, 5));
    let err = shd::load(&path, &LoadOptions { channels: Some(2), ..LoadOptions::default() })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("small.h5")
            && err.contains("sample 0")
            && err.contains("unit id 2 >= channels 2"),
        "{err}"
    );
    let err = shd::load(&path, &LoadOptions { classes: Some(1), ..LoadOptions::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 0") && err.contains("label 1 >= classes 1"), "{err}");
}

#[test]
fn bad_writes_leave_nothing_behind() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.h5");
    let mut data = exact_dataset();
    data.samples[5].units[0] = 700;
    let err = shd::write(&path, &data).unwrap_err().to_string();
    assert!(
        err.contains("bad.h5")
            && err.contains("sample 5")
            && err.contains("unit id 700 >= channels 700"),
        "{err}"
    );
    let mut data = exact_dataset();
    data.samples[4].times.push(f32::NAN);
    data.samples[4].units.push(1);
    let err = shd::write(&path, &data).unwrap_err().to_string();
    assert!(err.contains("sample 4") && err.contains("time NaN"), "{err}");
    let mut data = exact_dataset();
    data.samples[3].label = 20;
    assert!(shd::write(&path, &data)
        .unwrap_err()
        .to_string()
        .contains("sample 3: label 20 >= classes 20"));
    let mut data = exact_dataset();
    data.samples[2].units.pop();
    assert!(shd::write(&path, &data)
        .unwrap_err()
        .to_string()
        .contains("sample 2: mismatched lengths"));
    let empty = EventDataset { samples: vec![], ..exact_dataset() };
    assert!(shd::write(&path, &empty).unwrap_err().to_string().contains("no samples"));
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));

    // A failed write leaves an existing file untouched.
    let good = exact_dataset();
    shd::write(&path, &good).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut bad = exact_dataset();
    bad.samples[0].label = 99;
    assert!(shd::write(&path, &bad).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(listing(dir.path()), vec!["bad.h5"]);
}

fn create(path: &Path) -> File {
    File::with_options().with_fapl(|p| p.file_locking(false)).create(path).unwrap()
}

/// Builds a file the way the SHD authors' files are typed, with `convert` mapping each time and
/// unit to the on-disk element types, and checks every event read back.
fn check_on_disk_types<T, U, L>(
    name: &str,
    time: impl Fn(f32) -> T,
    unit: impl Fn(u16) -> U,
    label: impl Fn(u16) -> L,
) where
    T: H5Type + Copy,
    U: H5Type + Copy,
    L: H5Type + Copy,
{
    let dir = TempDir::new().unwrap();
    let path: PathBuf = dir.path().join(name);
    let data = exact_dataset();
    let file = create(&path);
    let times: Vec<VarLenArray<T>> = data
        .samples
        .iter()
        .map(|s| VarLenArray::from_slice(&s.times.iter().map(|&t| time(t)).collect::<Vec<_>>()))
        .collect();
    let units: Vec<VarLenArray<U>> = data
        .samples
        .iter()
        .map(|s| VarLenArray::from_slice(&s.units.iter().map(|&u| unit(u)).collect::<Vec<_>>()))
        .collect();
    let labels: Vec<L> = data.samples.iter().map(|s| label(s.label)).collect();
    put(&file, "spikes/times", &times);
    put(&file, "spikes/units", &units);
    put(&file, "labels", &labels);
    // The published files also carry speaker metadata, which the reader ignores.
    put(&file, "extra/speaker", &vec![1u16; data.samples.len()]);
    file.close().unwrap();

    let (back, report) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(back.samples.len(), data.samples.len());
    for (i, (a, b)) in data.samples.iter().zip(&back.samples).enumerate() {
        assert_eq!(a.times, b.times, "{name}: sample {i} times");
        assert_eq!(a.units, b.units, "{name}: sample {i} units");
        assert_eq!(a.label, b.label, "{name}: sample {i} label");
    }
    assert_eq!((back.channels, back.classes), (700, 20));
    assert_eq!(report.dropped_events, 0);
}

#[test]
fn reads_the_shd_authors_on_disk_types() {
    // Published SHD: vlen float16 times, vlen uint16 units, uint16 labels.
    check_on_disk_types("shd.h5", f16::from_f32, |u| u, |l| l);
}

#[test]
fn reads_other_widths() {
    check_on_disk_types("f32.h5", |t| t, u32::from, |l| l as u8);
    check_on_disk_types("f64.h5", f64::from, u64::from, u64::from);
    // numpy's default integer type is int64: accepted as long as nothing is negative.
    check_on_disk_types("i64.h5", |t| t, i32::from, i64::from);
}

#[test]
fn u8_units() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("u8.h5");
    let file = create(&path);
    let times: Vec<VarLenArray<f16>> =
        vec![VarLenArray::from_slice(&[f16::from_f32(0.5), f16::from_f32(0.75)])];
    put(&file, "spikes/times", &times);
    put(&file, "spikes/units", &[VarLenArray::from_slice(&[255u8, 7])]);
    put(&file, "labels", &[4u32]);
    file.close().unwrap();
    let (d, _) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(d.samples, vec![Sample { times: vec![0.5, 0.75], units: vec![255, 7], label: 4 }]);
    assert_eq!((d.channels, d.classes), (256, 5));
}

#[test]
fn non_finite_times_are_dropped_and_counted() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nan.h5");
    let file = create(&path);
    let f = |v: &[f32]| {
        VarLenArray::from_slice(&v.iter().map(|&t| f16::from_f32(t)).collect::<Vec<_>>())
    };
    // 70000 s overflows float16 to +inf, as scaling float16 times would.
    let times = vec![f(&[0.25, f32::NAN, 0.5]), f(&[0.125]), f(&[-1.0, 70000.0]), f(&[0.0])];
    put(&file, "spikes/times", &times);
    put(
        &file,
        "spikes/units",
        &[
            VarLenArray::from_slice(&[1u16, 2, 3]),
            VarLenArray::from_slice(&[4u16]),
            VarLenArray::from_slice(&[5u16, 6]),
            VarLenArray::from_slice(&[7u16]),
        ],
    );
    put(&file, "labels", &[0u16, 1, 0, 1]);
    file.close().unwrap();
    let (d, report) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(d.samples[0], Sample { times: vec![0.25, 0.5], units: vec![1, 3], label: 0 });
    assert_eq!(d.samples[2], Sample { times: vec![], units: vec![], label: 0 });
    assert_eq!(report.dropped_events, 3);
    assert_eq!(report.dropped_samples, vec![0, 2]);
    assert_eq!(report.events, 4);
    let w = report.warnings();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("nan.h5")
            && w[0].contains("dropped 3 events")
            && w[0].contains("samples 0, 2"),
        "{}",
        w[0]
    );
    let err = shd::load(&path, &LoadOptions { strict: true, ..LoadOptions::default() })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nan.h5") && err.contains("3 events") && err.contains("samples 0, 2"),
        "{err}"
    );
}

#[test]
fn synth_writes_loadable_train_and_test_files() {
    let dir = TempDir::new().unwrap();
    let prefix = dir.path().join("syn");
    Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "synth", "--samples", "40", "--test-samples", "20", "--seed", "3", "--out"])
        .arg(&prefix)
        .assert()
        .success()
        .stdout(predicate::str::contains("syn_train.h5 (40 samples"));
    assert_eq!(listing(dir.path()), vec!["syn_test.h5", "syn_train.h5"]);
    let (train, test) = generate(&SynthConfig { seed: 3, train_samples: 40, test_samples: 20 });
    for (file, want) in [("syn_train.h5", &train), ("syn_test.h5", &test)] {
        let opts = LoadOptions {
            channels: Some(want.channels),
            classes: Some(want.classes),
            strict: true,
        };
        let (got, _) = shd::load(&dir.path().join(file), &opts).unwrap();
        assert_eq!(got.samples.len(), want.samples.len());
        for (a, b) in want.samples.iter().zip(&got.samples) {
            let rounded: Vec<f32> = a.times.iter().map(|&t| f16::from_f32(t).to_f32()).collect();
            assert_eq!(rounded, b.times);
            assert_eq!(a.units, b.units);
            assert_eq!(a.label, b.label);
        }
    }
    Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "inspect"])
        .arg(dir.path().join("syn_test.h5"))
        .assert()
        .success()
        .stdout(predicate::str::contains("samples            20"))
        .stdout(predicate::str::contains("classes            20"));
}
