//! Bad SHD input through the CLI (`spiketile data inspect`): every case exits non-zero with a message
//! that names the file, the sample when there is one, and the problem (SPEC §4).
#![cfg(feature = "hdf5")]

mod common;

use common::hdf5::put;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use half::f16;
use hdf5::types::VarLenArray;
use hdf5::File;
use predicates::prelude::*;
use tempfile::TempDir;

fn vlen<T: Copy>(rows: &[&[T]]) -> Vec<VarLenArray<T>> {
    rows.iter().map(|r| VarLenArray::from_slice(r)).collect()
}

fn vlen_f16(rows: &[&[f32]]) -> Vec<VarLenArray<f16>> {
    rows.iter()
        .map(|r| VarLenArray::from_slice(&r.iter().map(|&t| f16::from_f32(t)).collect::<Vec<_>>()))
        .collect()
}

/// Creates `dir/name` with `build`, returns its path.
fn h5(dir: &TempDir, name: &str, build: impl FnOnce(&File)) -> PathBuf {
    let path = dir.path().join(name);
    // No file lock: HDF5 opens files without close-on-exec, so a `spiketile` child spawned by a
    // parallel test would inherit the descriptor and hold the lock.
    let file = File::with_options().with_fapl(|p| p.file_locking(false)).create(&path).unwrap();
    build(&file);
    file.close().unwrap();
    path
}

/// A valid two-sample file in the published types.
fn good(file: &File) {
    put(file, "spikes/times", &vlen_f16(&[&[0.125, 0.5], &[0.25]]));
    put(file, "spikes/units", &vlen::<u16>(&[&[0, 3], &[2]]));
    put(file, "labels", &[1u16, 0]);
}

/// Runs `spiketile data inspect PATH ARGS...`, expects failure, checks that stderr names the file and
/// holds every one of `needles`.
fn fails(path: &Path, args: &[&str], needles: &[&str]) {
    let mut cmd = Command::cargo_bin("spiketile").unwrap();
    cmd.arg("data").arg("inspect").arg(path).args(args);
    let mut assert =
        cmd.assert().failure().stderr(predicate::str::contains(path.display().to_string()));
    for n in needles {
        assert = assert.stderr(predicate::str::contains(*n));
    }
    let _ = assert;
}

#[test]
fn good_file_passes() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "good.h5", good);
    Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "inspect"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("samples            2"))
        .stdout(predicate::str::contains("channels           4 (3 used)"))
        .stdout(predicate::str::contains(
            "spikes/times vlen float16, spikes/units vlen uint16, labels uint16",
        ));
}

#[test]
fn missing_file() {
    let dir = TempDir::new().unwrap();
    fails(&dir.path().join("nope.h5"), &[], &["no such file"]);
}

#[test]
fn directory() {
    let dir = TempDir::new().unwrap();
    fails(dir.path(), &[], &["is a directory"]);
}

#[test]
fn not_hdf5() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("text.h5");
    std::fs::write(&path, "index,label\n0,1\n1,3\n".repeat(100)).unwrap();
    fails(&path, &[], &["not an HDF5 file"]);
}

#[test]
fn zero_byte_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("zero.h5");
    std::fs::write(&path, b"").unwrap();
    fails(&path, &[], &["empty file"]);
}

#[test]
fn truncated_file() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "cut.h5", |f| {
        let times: Vec<Vec<f32>> =
            (0..200).map(|i| (0..50).map(|k| (i + k) as f32 / 1024.0).collect()).collect();
        let units: Vec<Vec<u16>> =
            (0..200).map(|i| (0..50).map(|k| ((i + k) % 700) as u16).collect()).collect();
        let tr: Vec<&[f32]> = times.iter().map(|v| v.as_slice()).collect();
        let ur: Vec<&[u16]> = units.iter().map(|v| v.as_slice()).collect();
        put(f, "spikes/times", &vlen_f16(&tr));
        put(f, "spikes/units", &vlen(&ur));
        put(f, "labels", &vec![3u16; 200]);
    });
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    fails(&path, &[], &["truncated"]);
}

#[test]
fn missing_times() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "no_times.h5", |f| {
        put(f, "spikes/units", &vlen::<u16>(&[&[0]]));
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["missing dataset `spikes/times`"]);
}

#[test]
fn missing_spikes_group() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "no_spikes.h5", |f| put(f, "labels", &[0u16]));
    fails(&path, &[], &["missing dataset `spikes/times`"]);
}

#[test]
fn missing_units() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "no_units.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5]]));
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["missing dataset `spikes/units`"]);
}

#[test]
fn missing_labels() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "no_labels.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[0]]));
    });
    fails(&path, &[], &["missing dataset `labels`"]);
}

#[test]
fn spikes_is_not_a_group() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "flat.h5", |f| {
        put(f, "spikes", &[1u16, 2]);
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["`spikes` is not a group"]);
}

#[test]
fn times_wrong_dtype() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "times_int.h5", |f| {
        put(f, "spikes/times", &vlen::<i32>(&[&[1, 2]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[0, 1]]));
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["`spikes/times` has dtype vlen int32", "expected variable-length floats"]);
}

#[test]
fn times_not_variable_length() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "times_flat.h5", |f| {
        put(f, "spikes/times", &[0.5f32]);
        put(f, "spikes/units", &vlen::<u16>(&[&[0]]));
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["`spikes/times` has dtype float32"]);
}

#[test]
fn units_wrong_dtype() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "units_float.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5]]));
        put(f, "spikes/units", &vlen::<f32>(&[&[1.0]]));
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["`spikes/units` has dtype vlen float32", "unsigned integers"]);
}

#[test]
fn labels_wrong_dtype() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "labels_float.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[1]]));
        put(f, "labels", &[1.0f64]);
    });
    fails(&path, &[], &["`labels` has dtype float64"]);
}

#[test]
fn labels_wrong_shape() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "labels_2d.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5], &[0.25]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[1], &[0]]));
        let labels = f.new_dataset::<u16>().shape((2, 1)).create("labels").unwrap();
        labels.write_raw(&[0u16, 1]).unwrap();
    });
    fails(&path, &[], &["`labels` has shape [2, 1]", "one dimension"]);
}

#[test]
fn unit_ids_at_or_past_channels() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "good.h5", good);
    fails(&path, &["--channels", "3"], &["sample 0", "unit id 3 >= channels 3"]);
}

#[test]
fn negative_unit_ids() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "neg_units.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5], &[0.25]]));
        put(f, "spikes/units", &vlen::<i16>(&[&[1], &[-4]]));
        put(f, "labels", &[0u16, 1]);
    });
    fails(&path, &[], &["sample 1", "negative unit id -4"]);
}

#[test]
fn labels_at_or_past_classes() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "good.h5", good);
    fails(&path, &["--classes", "1"], &["sample 0", "label 1 >= classes 1"]);
}

#[test]
fn mismatched_lengths_within_a_sample() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "ragged.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5], &[0.25, 0.75]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[1], &[0]]));
        put(f, "labels", &[0u16, 1]);
    });
    fails(&path, &[], &["sample 1", "mismatched lengths: 2 times but 1 units"]);
}

#[test]
fn mismatched_sample_counts() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "counts.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[0.5], &[0.25]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[1], &[0]]));
        put(f, "labels", &[0u16, 1, 1]);
    });
    fails(
        &path,
        &[],
        &["mismatched lengths", "`spikes/times` has 2 samples, `spikes/units` 2, `labels` 3"],
    );
}

#[test]
fn no_samples() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "empty.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[]));
        put(f, "spikes/units", &vlen::<u16>(&[]));
        put(f, "labels", &[] as &[u16]);
    });
    fails(&path, &[], &["empty dataset", "no samples"]);
}

#[test]
fn no_events_at_all() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "silent.h5", |f| {
        put(f, "spikes/times", &vlen_f16(&[&[]]));
        put(f, "spikes/units", &vlen::<u16>(&[&[]]));
        put(f, "labels", &[0u16]);
    });
    fails(&path, &[], &["no spike events in any sample"]);
    // Given the channel count explicitly, such a file is fine.
    Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "inspect"])
        .arg(&path)
        .args(["--channels", "700"])
        .assert()
        .success();
}

/// A file with NaN, infinite and negative times in samples 0 and 2 (4 events in all).
fn non_finite(file: &File) {
    put(
        file,
        "spikes/times",
        &vlen_f16(&[
            &[f32::NAN, 0.5, 0.75],
            &[0.125],
            &[f32::INFINITY, -0.25, 1.0, f32::NEG_INFINITY],
        ]),
    );
    put(file, "spikes/units", &vlen::<u16>(&[&[1, 2, 3], &[4], &[5, 6, 7, 8]]));
    put(file, "labels", &[0u16, 1, 2]);
}

#[test]
fn non_finite_times_are_dropped_with_one_warning() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "nan.h5", non_finite);
    let out = Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "inspect"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("events             4 in all"))
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let w = warnings[0];
    for needle in
        [path.display().to_string().as_str(), "dropped 4 events", "2 samples", "samples 0, 2"]
    {
        assert!(w.contains(needle), "{needle:?} not in {w:?}");
    }
}

#[test]
fn non_finite_times_are_an_error_with_strict() {
    let dir = TempDir::new().unwrap();
    let path = h5(&dir, "nan.h5", non_finite);
    fails(
        &path,
        &["--strict"],
        &["4 events with non-finite or negative times", "samples 0, 2", "--strict"],
    );
}

#[test]
fn synth_leaves_no_partial_output() {
    let dir = TempDir::new().unwrap();
    let prefix = dir.path().join("syn");
    // The test output's name is taken by a directory: nothing may be written, not even the train file.
    std::fs::create_dir(dir.path().join("syn_test.h5")).unwrap();
    Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "synth", "--samples", "20", "--test-samples", "20", "--out"])
        .arg(&prefix)
        .assert()
        .failure()
        .stderr(predicate::str::contains("syn_test.h5"))
        .stderr(predicate::str::contains("is a directory"));
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["syn_test.h5".to_string()]);

    // A missing output directory.
    let missing = dir.path().join("no/such/dir/syn");
    Command::cargo_bin("spiketile")
        .unwrap()
        .args(["data", "synth", "--samples", "20", "--out"])
        .arg(&missing)
        .assert()
        .failure()
        .stderr(predicate::str::contains("does not exist"));
}

/// Runs `spiketile train --data PATH ARGS...` (under `dir`; one step unless `args` say).
fn train(dir: &TempDir, path: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = Command::cargo_bin("spiketile").unwrap();
    cmd.current_dir(dir.path())
        .args(["train", "--quiet", "--hidden", "4", "--time-steps", "5"])
        .arg("--data")
        .arg(path)
        .args(args);
    if !args.contains(&"--max-steps") {
        cmd.args(["--max-steps", "1"]);
    }
    cmd.assert()
}

#[test]
fn train_reads_channels_and_classes_from_flags_or_weights() {
    let dir = TempDir::new().unwrap();
    // Largest unit id 3 and largest label 1: the data alone says 4 channels, 2 classes.
    let path = h5(&dir, "small.h5", good);
    train(&dir, &path, &["--save", "data.safetensors"]).success();
    train(&dir, &path, &["--channels", "6", "--classes", "3", "--save", "flags.safetensors"])
        .success();
    // A model with more inputs and classes than the data happens to use trains on it.
    train(&dir, &path, &["--init", "flags.safetensors", "--save", "init.safetensors"]).success();
    train(&dir, &path, &["--resume", "init.safetensors", "--max-steps", "2"]).success();
    train(&dir, &path, &["--classes", "1"])
        .failure()
        .stderr(predicate::str::contains("sample 0: label 1 >= classes 1"));
    train(&dir, &path, &["--channels", "3"])
        .failure()
        .stderr(predicate::str::contains("small.h5"))
        .stderr(predicate::str::contains("sample 0"));
    train(&dir, &path, &["--init", "flags.safetensors", "--classes", "2"])
        .failure()
        .stderr(predicate::str::contains("--classes 2: the --init weights have 3"));
    train(&dir, &path, &["--init", "data.safetensors", "--channels", "6"])
        .failure()
        .stderr(predicate::str::contains("--channels 6: the --init weights have 4"));
}
