//! `spiketile plot`: every picture is written as a decodable, non-blank PNG and an SVG; bad input
//! gives a clear error and a non-zero exit.

mod common;

use common::{spiketile, TINY};

use predicates::prelude::*;
use std::path::Path;

/// Decodes `PREFIX.png` (checks its size and that it is not blank) and checks `PREFIX.svg`.
fn check_pictures(dir: &Path, prefix: &str, size: (u32, u32)) {
    let file = std::fs::File::open(dir.join(format!("{prefix}.png"))).unwrap();
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), size);
    let pixels = &buf[..info.buffer_size()];
    let dark = pixels.iter().filter(|&&b| b < 128).count();
    assert!(dark > 1000, "{prefix}.png is (nearly) blank");
    assert!(pixels.iter().any(|&b| b > 200), "{prefix}.png has no background");
    let svg = std::fs::read_to_string(dir.join(format!("{prefix}.svg"))).unwrap();
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<text"), "{prefix}.svg has no text");
}

#[test]
fn metrics_and_raster_pictures() {
    let dir = tempfile::tempdir().unwrap();
    spiketile()
        .current_dir(dir.path())
        .arg("train")
        .args(TINY)
        .args(["--quiet", "--epochs", "2", "--metrics", "m.jsonl", "--save", "c.safetensors"])
        .assert()
        .success();
    spiketile()
        .current_dir(dir.path())
        .args(["plot", "metrics", "m.jsonl", "--out", "metrics"])
        .assert()
        .success()
        .stdout(predicate::str::contains("metrics.png"));
    check_pictures(dir.path(), "metrics", (1500, 480));
    spiketile()
        .current_dir(dir.path())
        .args(["plot", "raster", "--checkpoint", "c.safetensors", "--test-samples", "20"])
        .args(["--sample", "3", "--out", "raster.png"])
        .assert()
        .success();
    check_pictures(dir.path(), "raster", (1500, 1000));
    spiketile()
        .current_dir(dir.path())
        .args(["plot", "raster", "--checkpoint", "c.safetensors", "--test-samples", "20"])
        .args(["--sample", "20", "--out", "r"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--sample 20 is out of range"));
    spiketile()
        .current_dir(dir.path())
        .args(["plot", "raster", "--checkpoint", "m.jsonl", "--out", "r"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("m.jsonl"));
}

#[test]
fn sweep_picture() {
    let dir = tempfile::tempdir().unwrap();
    spiketile()
        .current_dir(dir.path())
        .arg("bench")
        .args(["--hidden", "12", "--time-steps", "10", "--batch-size", "4", "--inputs", "40"])
        .args(["--classes", "5", "--steps", "1", "--warmup", "0", "--threads", "2"])
        .args(["--sweep", "threads", "--out", "s.csv"])
        .assert()
        .success();
    spiketile()
        .current_dir(dir.path())
        .args(["plot", "sweep", "s.csv", "--out", "sweep"])
        .assert()
        .success();
    check_pictures(dir.path(), "sweep", (1000, 620));
}

#[test]
fn bad_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let plot = |args: &[&str]| {
        spiketile().current_dir(dir.path()).arg("plot").args(args).assert().failure()
    };
    plot(&["metrics", "missing.jsonl", "--out", "m"])
        .stderr(predicate::str::contains("reading metrics missing.jsonl"));
    std::fs::write(dir.path().join("bad.jsonl"), "{\"epoch\": 1, \"loss\": \n").unwrap();
    plot(&["metrics", "bad.jsonl", "--out", "m"])
        .stderr(predicate::str::contains("bad.jsonl line 1: not a metrics line"));
    std::fs::write(dir.path().join("empty.jsonl"), "\n").unwrap();
    plot(&["metrics", "empty.jsonl", "--out", "m"])
        .stderr(predicate::str::contains("no metrics lines"));
    plot(&["sweep", "missing.csv", "--out", "s"])
        .stderr(predicate::str::contains("reading sweep missing.csv"));
    std::fs::write(dir.path().join("bad.csv"), "a,b\n1,2\n").unwrap();
    plot(&["sweep", "bad.csv", "--out", "s"])
        .stderr(predicate::str::contains("not a `bench --sweep` CSV"));
    plot(&["raster", "--checkpoint", "missing.safetensors", "--out", "r"])
        .stderr(predicate::str::contains("missing.safetensors"));
    let row =
        r#"{"epoch":1,"step":5,"loss":2.9,"train_acc":0.1,"test_acc":null,"samples_per_s":100}"#;
    std::fs::write(dir.path().join("ok.jsonl"), format!("{row}\n")).unwrap();
    plot(&["metrics", "ok.jsonl", "--out", "no/such/dir/m"])
        .stderr(predicate::str::contains("no directory"));
    assert!(!dir.path().join("m.png").exists());
}
