//! Execution traces (`train --trace`, `bench --trace`, `trace summary`): the file is Chrome
//! trace-event JSON, spans are known phases, a thread's spans do not overlap and add up to its
//! time, tracing changes no result, and bad files give clear errors.

mod common;

use common::{spiketile, TINY};

use predicates::prelude::*;
use serde_json::Value;
use spiketile::checkpoint::Checkpoint;
use std::collections::BTreeMap;
use std::path::Path;

/// A span: (name, cat, tid, ts, dur, step).
type Span = (String, String, u64, f64, f64, u64, usize);

fn spans(path: &Path) -> (Value, Vec<Span>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().expect("traceEvents array");
    let mut out = Vec::new();
    for e in events {
        assert_eq!(e["pid"], 1);
        match e["ph"].as_str().unwrap() {
            "M" => continue,
            "X" => {}
            other => panic!("unexpected event type {other}"),
        }
        let name = e["name"].as_str().unwrap().to_string();
        let cat = e["cat"].as_str().unwrap().to_string();
        assert!(
            ["compute", "exchange", "sync", "loss", "update"].contains(&name.as_str()),
            "unknown phase {name}"
        );
        assert!(["forward", "backward", "update"].contains(&cat.as_str()), "unknown cat {cat}");
        let args = &e["args"];
        for k in ["step", "units", "layers", "tiles"] {
            assert!(args[k].is_u64(), "{name} has no args.{k}");
        }
        if name == "compute" || name == "exchange" {
            // Phases of one step carry t; phases of a layer over many steps carry the layer.
            assert!(
                args["t"].is_u64() != args["layer"].is_u64(),
                "{cat} {name} has neither args.t nor args.layer, or both"
            );
        }
        let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
        assert!(dur >= 0.0 && ts >= 0.0);
        let layers = args["layers"].as_u64().unwrap() as usize;
        let step = args["step"].as_u64().unwrap();
        out.push((name, cat, e["tid"].as_u64().unwrap(), ts, dur, step, layers));
    }
    (v, out)
}

/// Checks the shape of a trace of `steps` steps on `threads` threads. `Some(t_steps)`: a
/// network with a recurrent layer, whose backward runs step by step; `None`: feed-forward, with
/// `deferring` layers that defer their input-weight gradients.
fn check_trace(
    path: &Path,
    threads: u64,
    steps: &[u64],
    recurrent: Option<usize>,
    deferring: usize,
) {
    let (v, spans) = spans(path);
    let names: Vec<&Value> = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .collect();
    assert_eq!(names.len() as u64, threads, "one thread_name per worker");
    let mut by: BTreeMap<(u64, u64), Vec<&Span>> = BTreeMap::new();
    for s in &spans {
        by.entry((s.5, s.2)).or_default().push(s);
    }
    let seen_steps: std::collections::BTreeSet<u64> = spans.iter().map(|s| s.5).collect();
    assert_eq!(seen_steps.into_iter().collect::<Vec<_>>(), steps);
    assert_eq!(by.len() as u64, threads * steps.len() as u64, "every thread traced every step");
    for ((step, tid), mut list) in by {
        list.sort_by(|a, b| a.3.total_cmp(&b.3));
        for w in list.windows(2) {
            let end = w[0].3 + w[0].4;
            assert!(end <= w[1].3 + 0.002, "thread {tid} step {step}: spans overlap: {w:?}");
        }
        let total: f64 = list.iter().map(|s| s.4).sum();
        let extent = list.last().map(|s| s.3 + s.4).unwrap() - list[0].3;
        assert!(
            (total - extent).abs() <= 0.05 * extent,
            "thread {tid} step {step}: phases {total} us, wall {extent} us"
        );
        let count = |n: &str, c: &str| list.iter().filter(|s| s.0 == n && s.1 == c).count();
        // Feed-forward layers run ahead (compute), then every layer merges (exchange); the
        // recurrent networks here have one recurrent layer, which runs in lockstep instead.
        let layers = list[0].6;
        assert_eq!(count("compute", "forward"), layers - usize::from(recurrent.is_some()));
        assert_eq!(count("exchange", "forward"), layers);
        // Backward: one phase per step (recurrent), or per layer (feed-forward: all steps in
        // one block); each tile gathers its dL/dS inside it. A layer that defers its
        // input-weight gradients first lists their uses, in a phase of its own.
        assert_eq!(count("compute", "backward"), recurrent.unwrap_or(layers));
        assert_eq!(count("exchange", "backward"), deferring);
        assert_eq!(count("update", "update"), 1);
        assert_eq!(count("loss", "forward"), usize::from(tid == 0));
    }
}

#[test]
fn train_trace_is_chrome_json_of_the_traced_steps() {
    let dir = tempfile::tempdir().unwrap();
    spiketile()
        .current_dir(dir.path())
        .arg("train")
        .args(TINY)
        .args(["--quiet", "--max-steps", "3", "--threads", "2", "--trace", "t.json"])
        .args(["--trace-steps", "2"])
        .assert()
        .success();
    // The first layer's gradient rows (700 x 12 floats, 33 KiB) are more than L1 holds, so it
    // defers; the readout's (12 x 20) are not.
    check_trace(&dir.path().join("t.json"), 2, &[1, 2], None, 1);
    let out = spiketile()
        .current_dir(dir.path())
        .args(["trace", "summary", "t.json"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("compute")
                .and(predicate::str::contains("exchange"))
                .and(predicate::str::contains("sync"))
                .and(predicate::str::contains("backward"))
                .and(predicate::str::contains("2 steps, 2 threads")),
        );
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let total = text.lines().find(|l| l.starts_with("total")).expect("a total line");
    assert!(total.contains("100.0%"), "{total}");
}

#[test]
fn bench_trace_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    spiketile()
        .current_dir(dir.path())
        .arg("bench")
        .args(["--hidden", "12", "--time-steps", "10", "--batch-size", "4", "--inputs", "40"])
        .args(["--classes", "5", "--steps", "3", "--warmup", "1", "--threads", "3"])
        .args(["--trace", "b.json", "--trace-steps", "1"])
        .assert()
        .success();
    // Gradient rows of 40 x 12 and 12 x 5 floats stay in L1: no layer defers.
    check_trace(&dir.path().join("b.json"), 3, &[2], None, 0);
    spiketile()
        .current_dir(dir.path())
        .args(["trace", "summary", "b.json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("1 step, 3 threads"));
    // With a recurrent layer the backward runs step by step.
    spiketile()
        .current_dir(dir.path())
        .arg("bench")
        .args(["--hidden", "12", "--time-steps", "10", "--batch-size", "4", "--inputs", "40"])
        .args(["--classes", "5", "--steps", "2", "--warmup", "0", "--threads", "2"])
        .args(["--recurrent", "--trace", "r.json", "--trace-steps", "1"])
        .assert()
        .success();
    check_trace(&dir.path().join("r.json"), 2, &[1], Some(10), 0);
}

#[test]
fn tracing_changes_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        spiketile()
            .current_dir(dir.path())
            .arg("train")
            .args(TINY)
            .args(["--quiet", "--max-steps", "3", "--threads", "2"])
            .args(extra)
            .assert()
            .success();
    };
    run(&["--save", "plain.safetensors"]);
    run(&["--save", "traced.safetensors", "--trace", "t.json", "--trace-steps", "3"]);
    let a = Checkpoint::load(&dir.path().join("plain.safetensors")).unwrap();
    let b = Checkpoint::load(&dir.path().join("traced.safetensors")).unwrap();
    assert!(a.tensors == b.tensors, "tracing changed the weights");
}

#[test]
fn tracing_the_dense_engine_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    spiketile()
        .current_dir(dir.path())
        .arg("train")
        .args(TINY)
        .args(["--quiet", "--max-steps", "1", "--engine", "dense", "--trace", "t.json"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("tiled engine"));
}

#[test]
fn summary_of_bad_files_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let summary = |file: &str| {
        spiketile().current_dir(dir.path()).args(["trace", "summary", file]).assert().failure()
    };
    summary("missing.json").stderr(predicate::str::contains("reading trace missing.json"));
    std::fs::write(dir.path().join("bad.json"), "{\"traceEvents\": [").unwrap();
    summary("bad.json").stderr(predicate::str::contains("invalid JSON"));
    std::fs::write(dir.path().join("other.json"), "{\"events\": []}").unwrap();
    summary("other.json").stderr(predicate::str::contains("no \"traceEvents\""));
    std::fs::write(dir.path().join("empty.json"), "{\"traceEvents\": []}").unwrap();
    summary("empty.json").stderr(predicate::str::contains("no phase spans"));
    let unknown = r#"{"traceEvents": [{"name": "nap", "cat": "forward", "ph": "X", "pid": 1,
        "tid": 0, "ts": 0, "dur": 1}]}"#;
    std::fs::write(dir.path().join("unknown.json"), unknown).unwrap();
    summary("unknown.json").stderr(predicate::str::contains("unknown phase \"nap\""));
}
