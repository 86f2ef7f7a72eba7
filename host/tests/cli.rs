//! The CLI contract (SPEC §5): every subcommand, checkpoints, resume, `--init`, determinism.

mod common;

use common::{spiketile, TINY};

use predicates::prelude::*;
use spiketile::checkpoint::{Checkpoint, Tensor, META_STEP};
use std::path::Path;

fn train(dir: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    spiketile().current_dir(dir).arg("train").args(TINY).args(["--quiet"]).args(extra).assert()
}

fn tensors(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    Checkpoint::load(path).unwrap().tensors
}

#[test]
fn train_on_builtin_data_writes_checkpoint_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--epochs", "2", "--save", "run.safetensors", "--metrics", "m.jsonl"])
        .success()
        .stdout(
            predicate::str::contains("final: step 10")
                .and(predicate::str::contains("test accuracy")),
        );
    let ck = Checkpoint::load(&dir.path().join("run.safetensors")).unwrap();
    assert_eq!(ck.tensors["layers.0.weight"].shape, vec![12, 700]);
    assert_eq!(ck.tensors["layers.1.weight"].shape, vec![20, 12]);
    assert!(ck.tensors.contains_key("optim.m.layers.0.weight"));
    assert_eq!(ck.meta("spiketile.step"), Some("10"));
    let metrics = std::fs::read_to_string(dir.path().join("m.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["loss"].as_f64().unwrap().is_finite());
        assert_eq!(v["layers"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--max-steps", "3", "--threads", "1", "--save", "a.safetensors"]).success();
    train(dir.path(), &["--max-steps", "3", "--threads", "2", "--save", "b.safetensors"]).success();
    let (a, b) =
        (tensors(&dir.path().join("a.safetensors")), tensors(&dir.path().join("b.safetensors")));
    assert!(a == b, "1 and 2 threads give different weights");
}

/// `--simd` caps the kernels' instructions; every level trains to the same bits. A 48-wide
/// hidden layer runs rows of 32 and 16 lanes, a recurrent one the recurrent sums and scatters
/// too, the exact mode every neuron's adjoint, and a feed-forward layer of 32-neuron tiles the
/// lean loops of the forward and backward runs (AVX-512F only). A mutated reset in either lean
/// loop fails it.
#[test]
fn results_do_not_depend_on_the_vector_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        ["--hidden", "48", "--recurrent", "--max-neurons-per-tile", "32", "--time-steps", "20"];
    let exact =
        ["--hidden", "40", "--max-activity", "1", "--window", "inf", "--output-window", "inf"];
    // Two 32-neuron tiles per replica with deferred input-weight gradients: the runs' lean
    // loops where the CPU has AVX-512F.
    let lanes = ["--hidden", "64", "--max-neurons-per-tile", "32", "--time-steps", "20"];
    for (name, shape) in [("rec", &model[..]), ("exact", &exact[..]), ("lanes", &lanes[..])] {
        let mut files = vec![];
        for level in ["auto", "avx512", "avx2", "baseline"] {
            let file = format!("{name}-{level}.safetensors");
            spiketile()
                .current_dir(dir.path())
                .args(["train", "--quiet", "--max-steps", "3", "--batch-size", "8"])
                .args(["--train-samples", "40", "--test-samples", "8"])
                .args(shape)
                .args(["--simd", level, "--save", &file])
                .assert()
                .success();
            files.push(tensors(&dir.path().join(file)));
        }
        for (level, got) in ["avx512", "avx2", "baseline"].iter().zip(&files[1..]) {
            assert!(*got == files[0], "{name}: --simd {level} trains other weights than auto");
        }
    }
    // A bad level is refused with the flag named.
    spiketile()
        .args(["bench", "--simd", "avx1024"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--simd"));
}

#[test]
fn resume_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    // 40 samples / batch 8 = 5 steps per epoch: stopping at step 7 is mid-epoch.
    train(dir.path(), &["--epochs", "3", "--max-steps", "12", "--save", "full.safetensors"])
        .success();
    train(dir.path(), &["--epochs", "3", "--max-steps", "7", "--save", "half.safetensors"])
        .success();
    spiketile()
        .current_dir(dir.path())
        .args(["train", "--quiet", "--train-samples", "40", "--test-samples", "20"])
        .args(["--epochs", "3", "--max-steps", "12", "--resume", "half.safetensors"])
        .args(["--save", "resumed.safetensors"])
        .assert()
        .success()
        .stderr(predicate::str::is_empty());
    let full = tensors(&dir.path().join("full.safetensors"));
    let resumed = tensors(&dir.path().join("resumed.safetensors"));
    assert!(full == resumed, "resumed run differs from the uninterrupted one");
    assert!(
        full != tensors(&dir.path().join("half.safetensors")),
        "training must move the weights"
    );
}

#[test]
fn model_flags_a_checkpoint_overrides_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--max-steps", "1", "--save", "ck.safetensors"]).success();
    // The saved run's own values, --threads and --engine: nothing to report.
    let mut same = vec!["train", "--quiet", "--max-steps", "2", "--resume", "ck.safetensors"];
    same.extend_from_slice(TINY);
    same.extend_from_slice(&["--threads", "1", "--lr", "0.005"]);
    spiketile()
        .current_dir(dir.path())
        .args(&same)
        .assert()
        .success()
        .stderr(predicate::str::is_empty());
    spiketile()
        .current_dir(dir.path())
        .args(["train", "--quiet", "--max-steps", "2", "--resume", "ck.safetensors"])
        .args(["--lr", "0.1", "--hidden", "7", "--window", "inf", "--threads", "1"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: ignored --hidden 7 (kept: 12), --lr 0.1 (kept: 0.005), --window inf (kept: \
             0.1): --resume continues the saved run's model",
        ));
    spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "ck.safetensors", "--test-samples", "20"])
        .args(["--time-steps", "30"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: ignored --time-steps 30 (kept: 20): the checkpoint's model is evaluated",
        ));
}

#[test]
fn resumed_metrics_continue_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // 40 samples / batch 8 = 5 steps per epoch; the first run stops at step 7, mid-epoch.
    let metrics = ["--metrics", "m.jsonl"];
    let mut first = vec!["--epochs", "3", "--max-steps", "7", "--save", "h.safetensors"];
    first.extend_from_slice(&metrics);
    train(dir.path(), &first).success();
    spiketile()
        .current_dir(dir.path())
        .args(["train", "--quiet", "--train-samples", "40", "--test-samples", "20"])
        .args(["--epochs", "3", "--resume", "h.safetensors"])
        .args(metrics)
        .assert()
        .success();
    let text = std::fs::read_to_string(dir.path().join("m.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![5, 7, 10, 15], "the first run's epochs, then the resumed run's");
}

#[test]
fn a_killed_run_resumes_from_its_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spiketile"))
        .current_dir(dir.path())
        .args(["train", "--quiet"])
        .args(TINY)
        .args(["--epochs", "100000", "--save", "ck.safetensors"])
        .spawn()
        .unwrap();
    // Kill the run once it has written its first checkpoint (at the end of an epoch).
    let ck = dir.path().join("ck.safetensors");
    let start = std::time::Instant::now();
    while !ck.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // 40 samples / batch 8 = 5 steps per epoch.
    let killed_at: u64 = Checkpoint::load(&ck).unwrap().meta_parse(META_STEP).unwrap();
    assert!(
        killed_at > 0 && killed_at.is_multiple_of(5),
        "killed at step {killed_at}, an epoch's end"
    );
    let epochs = (killed_at / 5 + 1).to_string();
    spiketile()
        .current_dir(dir.path())
        .args(["train", "--quiet", "--resume", "ck.safetensors", "--save", "ck.safetensors"])
        .args(["--train-samples", "40", "--test-samples", "20", "--epochs", &epochs])
        .assert()
        .success();
    train(dir.path(), &["--epochs", &epochs, "--save", "full.safetensors"]).success();
    assert!(tensors(&ck) == tensors(&dir.path().join("full.safetensors")));
}

#[test]
fn events_past_the_duration_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in samples last up to about a second.
    train(dir.path(), &["--max-steps", "1", "--duration", "0.5"])
        .success()
        .stderr(predicate::str::contains("are at or past --duration 0.5 s and are dropped"));
}

#[test]
fn init_from_a_tensors_only_file_takes_the_architecture_from_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // Written as another tool would: plain safetensors, no metadata, shapes [N_l, N_{l-1}].
    let w0: Vec<u8> =
        (0..9 * 700).flat_map(|i| ((i % 13) as f32 * 0.05 - 0.3).to_le_bytes()).collect();
    let w1: Vec<u8> =
        (0..20 * 9).flat_map(|i| ((i % 7) as f32 * 0.3 - 0.9).to_le_bytes()).collect();
    let views = vec![
        (
            "layers.0.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![9, 700], &w0)
                .unwrap(),
        ),
        (
            "layers.1.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![20, 9], &w1)
                .unwrap(),
        ),
    ];
    let bytes = safetensors::serialize(views, &None).unwrap();
    std::fs::write(dir.path().join("foreign.safetensors"), bytes).unwrap();
    train(
        dir.path(),
        &["--init", "foreign.safetensors", "--max-steps", "1", "--save", "out.safetensors"],
    )
    .success()
    .stderr(predicate::str::contains(
        "warning: ignored --hidden/--recurrent: the --init weights are 9",
    ));
    let out = tensors(&dir.path().join("out.safetensors"));
    assert_eq!(
        out["layers.0.weight"].shape,
        vec![9, 700],
        "hidden width comes from the file, not --hidden"
    );
}

#[test]
fn sgd_step_changes_weights_by_lr_times_gradient() {
    // The external contract: one SGD step from --init reveals the gradient as (w0 - w1) / lr.
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--max-steps", "1", "--save", "w0.safetensors", "--lr", "0"]).success();
    let w0 = tensors(&dir.path().join("w0.safetensors"));
    let ck = Checkpoint::load(&dir.path().join("w0.safetensors")).unwrap();
    let mut plain = Checkpoint::new();
    for (k, v) in &ck.tensors {
        if k.starts_with("layers.") {
            plain.tensors.insert(k.clone(), v.clone());
        }
    }
    plain.save(&dir.path().join("init.safetensors")).unwrap();
    for lr in ["0.5", "1"] {
        let out = format!("sgd{lr}.safetensors");
        spiketile()
            .current_dir(dir.path())
            .arg("train")
            .args(TINY)
            .args(["--quiet", "--init", "init.safetensors", "--optimizer", "sgd", "--lr", lr])
            .args(["--max-steps", "1", "--no-shuffle", "--save", &out])
            .assert()
            .success();
    }
    let a = tensors(&dir.path().join("sgd0.5.safetensors"));
    let b = tensors(&dir.path().join("sgd1.safetensors"));
    let name = "layers.1.weight";
    let (mut moved, mut worst) = (0, 0.0f32);
    for ((x0, xa), xb) in w0[name].data.iter().zip(&a[name].data).zip(&b[name].data) {
        let (ga, gb) = ((x0 - xa) / 0.5, x0 - xb);
        moved += usize::from(ga != 0.0);
        worst = worst.max((ga - gb).abs());
    }
    assert!(moved > 0, "one SGD step must move the output weights");
    assert!(worst < 1e-5, "gradient implied by lr 0.5 and lr 1 differ by {worst}");
}

#[test]
fn eval_writes_predictions_csv() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--max-steps", "2", "--save", "c.safetensors"]).success();
    spiketile()
        .current_dir(dir.path())
        .args(["eval", "--checkpoint", "c.safetensors", "--test-samples", "20"])
        .args(["--predictions", "p.csv"])
        .assert()
        .success()
        .stdout(predicate::str::contains("accuracy"));
    let csv = std::fs::read_to_string(dir.path().join("p.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("index,label,prediction,count_0,count_1"));
    assert!(header.ends_with(",count_19"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 20);
    for (i, row) in rows.iter().enumerate() {
        let f: Vec<u64> = row.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(f.len(), 23);
        assert_eq!(f[0], i as u64);
        let counts = &f[3..];
        let best =
            counts.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).unwrap().0;
        assert_eq!(f[2], best as u64, "prediction is the argmax, ties to the lowest index");
    }
}

#[test]
fn plan_spreads_a_large_model_over_thousands_of_tiles() {
    let out = spiketile()
        .args(["plan", "--hidden", "4096,4096", "--batch-size", "64"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let total = text.lines().find(|l| l.starts_with("total:")).unwrap();
    let tiles: usize = total.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(tiles > 1000, "{text}");
    for line in text.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())) {
        let bytes: usize = line.split_whitespace().nth(7).unwrap().parse().unwrap();
        assert!(bytes <= 638_976, "{line}");
    }
}

#[test]
fn unplannable_model_says_why() {
    spiketile()
        .args([
            "plan",
            "--inputs",
            "60000",
            "--hidden",
            "4",
            "--time-steps",
            "3000",
            "--max-activity",
            "1",
        ])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("cannot be planned")
                .and(predicate::str::contains("--time-steps")),
        );
}

#[test]
fn bench_reports_throughput_and_activity() {
    spiketile()
        .args([
            "bench",
            "--hidden",
            "32",
            "--time-steps",
            "20",
            "--batch-size",
            "8",
            "--steps",
            "1",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("samples/s").and(predicate::str::contains("hidden1")));
}

#[test]
fn bench_repeats_report_the_median_and_the_range() {
    let small =
        ["bench", "--hidden", "32", "--time-steps", "20", "--batch-size", "8", "--steps", "1"];
    spiketile()
        .args(small)
        .args(["--repeat", "3"])
        .assert()
        .success()
        .stdout(predicate::str::contains("samples/s (median of 3; "));
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("s.csv");
    spiketile()
        .args(small)
        .args(["--repeat", "2", "--sweep", "threads", "--threads", "2", "--out"])
        .arg(&csv)
        .assert()
        .success()
        .stderr(predicate::str::contains("(round 2 of 2)"));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "one row per point: {text}");
    for row in rows {
        assert_eq!(row[col("repeats")], "2");
        let value = |name: &str| row[col(name)].parse::<f64>().unwrap();
        let (lo, mid, hi) =
            (value("samples_per_s_min"), value("samples_per_s"), value("samples_per_s_max"));
        assert!(lo <= mid && mid <= hi && lo > 0.0, "{lo} {mid} {hi}");
        // The tiled engine leaves the input histories alone: it writes less than the plan.
        let (written, planned) = (value("tile_bytes_written"), value("tile_bytes"));
        assert!(0.0 < written && written < planned, "{written} of {planned}");
        assert!(value("engine_buffer_bytes") > 0.0);
    }
    spiketile()
        .args(small)
        .args(["--repeat", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--repeat"));
}

#[test]
fn bench_min_time_keeps_stepping() {
    let small = ["bench", "--hidden", "32", "--time-steps", "20", "--batch-size", "8"];
    spiketile()
        .args(small)
        .args(["--steps", "2", "--min-time", "0.3"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "2 timed steps, run again from the initial weights until 0.3 s are timed",
        ))
        .stdout(predicate::function(|out: &str| {
            // "... N steps in S s": it stopped only once 0.3 s had been timed, after whole runs.
            let words: Vec<&str> = out.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "steps").unwrap();
            let n: usize = words[at - 1].parse().unwrap();
            words[at + 1] == "in"
                && words[at + 2].parse::<f64>().unwrap() >= 0.3
                && n.is_multiple_of(2)
        }));
    spiketile()
        .args(small)
        .args(["--steps", "2", "--trace", "t.json", "--trace-steps", "3"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--trace-steps 3 is more than --steps 2"));
    spiketile()
        .args(small)
        .args(["--min-time=-1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--min-time").and(predicate::str::contains(">= 0")));
}

#[test]
fn bench_warns_when_the_hidden_layer_is_silent() {
    let args =
        ["bench", "--hidden", "32", "--time-steps", "20", "--batch-size", "8", "--steps", "1"];
    spiketile()
        .args(args)
        .args(["--activity", "0"])
        .assert()
        .success()
        .stderr(predicate::str::contains("note: hidden1 0.00 % outside 2-20 % activity"));
}

#[test]
fn bench_finds_the_gain_for_a_hidden_activity() {
    let small =
        ["bench", "--hidden", "32", "--time-steps", "20", "--batch-size", "8", "--steps", "1"];
    // The hidden layer's activity at the gain found, on the search's batch: within 2 % of 5 %.
    let reached = |out: &str| -> f64 {
        let at = out.find("--hidden-activity 0.05: hidden1 ").expect(out) + 32;
        out[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    spiketile()
        .args(small)
        .args(["--activity", "0.02", "--hidden-activity", "0.05"])
        .assert()
        .success()
        .stderr(predicate::str::contains("init gain for hidden1 at 0.05"))
        .stdout(predicate::function(|out: &str| (reached(out) - 5.0).abs() <= 0.1));
    // A sweep searches at every point: sparser input needs a larger gain.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("a.csv");
    spiketile()
        .args(small)
        .args(["--hidden-activity", "0.05", "--sweep", "activity", "--out"])
        .arg(&csv)
        .assert()
        .success();
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "init_gain").expect("an init_gain column");
    let gains: Vec<f64> =
        text.lines().skip(1).map(|l| l.split(',').nth(col).unwrap().parse().unwrap()).collect();
    assert_eq!(gains.len(), 5, "{text}");
    assert!(gains.windows(2).all(|w| w[0] > w[1]), "gains should fall with input activity: {text}");
    // Targets it cannot reach, and a gain given twice, are refused with the flag named.
    let refused = |extra: &[&str], says: &str| {
        spiketile()
            .args(small)
            .args(extra)
            .assert()
            .failure()
            .stderr(predicate::str::contains(says.to_string()));
    };
    refused(&["--activity", "0", "--hidden-activity", "0.05"], "even at initial-weight gain");
    refused(&["--hidden-activity", "0.5"], "--hidden-activity 0.5 is above --max-activity 0.1");
    refused(&["--hidden-activity", "0"], "--hidden-activity must be a fraction above 0");
    refused(&["--hidden-activity", "0.05", "--init-gain", "40"], "cannot be used with");
}

#[test]
fn bad_flags_are_refused_with_the_flag_named() {
    spiketile()
        .args(["train", "--max-activity", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--max-activity"));
    spiketile()
        .args(["train", "--window=-1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("window"));
    spiketile()
        .args(["train", "--hidden", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--hidden"));
    spiketile()
        .args(["train", "--threads", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--threads"));
    for gain in ["inf", "nan"] {
        spiketile()
            .args(["train", "--init-gain", gain])
            .assert()
            .failure()
            .stderr(predicate::str::contains("--init-gain"));
    }
    // A negative number is a value, so the flag's own check explains what is wrong (clap alone
    // would call `-1` an unexpected argument).
    for (flag, says) in [("--lr", "--lr must be"), ("--duration", "--duration must be")] {
        spiketile()
            .args(["train", flag, "-1"])
            .assert()
            .failure()
            .stderr(predicate::str::contains(says));
    }
    spiketile()
        .args(["bench", "--steps", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("at least 1"));
}

/// `--window` and `--max-activity` are the hidden layers'; given without the output layer's own
/// flags, a note says what the output layer keeps (SPEC §2 reads as if they applied to every
/// layer).
#[test]
fn hidden_only_flags_say_what_the_output_layer_keeps() {
    let quick =
        ["train", "--quiet", "--train-samples", "8", "--test-samples", "0", "--max-steps", "1"];
    spiketile().args(quick).args(["--window", "0.3"]).assert().success().stderr(
        predicate::str::contains(
            "note: --window 0.3 applies to the hidden layers; the output layer keeps \
             --output-window inf",
        ),
    );
    spiketile()
        .args(quick)
        .args(["--window", "0.3", "--output-window", "0.2", "--max-activity", "1"])
        .assert()
        .success()
        .stderr(predicate::str::contains("note:").not());
}

#[test]
fn unwritable_outputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let cases: [(&[&str], &str); 5] = [
        (&["train", "--save"], "x.safetensors"),
        (&["train", "--metrics"], "m.jsonl"),
        (&["train", "--trace"], "t.json"),
        (&["bench", "--sweep", "threads", "--out"], "s.csv"),
        (&["eval", "--checkpoint", "none.safetensors", "--predictions"], "p.csv"),
    ];
    for (args, name) in cases {
        let path = missing.join(name);
        spiketile()
            .current_dir(dir.path())
            .args(args)
            .arg(&path)
            .assert()
            .failure()
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains(format!("cannot write {}", path.display())));
    }
    // A directory is not a file to write either; and nothing was left behind.
    spiketile()
        .args(["train", "--save"])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("is a directory"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn write_bad(dir: &Path, name: &str, f: impl FnOnce(&mut Checkpoint)) {
    let ck_path = dir.join("good.safetensors");
    let mut ck = Checkpoint::load(&ck_path).unwrap();
    f(&mut ck);
    ck.save(&dir.join(name)).unwrap();
}

#[test]
fn bad_checkpoints_are_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--max-steps", "1", "--save", "good.safetensors"]).success();
    write_bad(dir.path(), "missing.safetensors", |ck| {
        ck.tensors.remove("layers.1.weight");
    });
    write_bad(dir.path(), "shape.safetensors", |ck| {
        let t = ck.tensors.get_mut("layers.1.weight").unwrap();
        t.shape = vec![t.shape[1], t.shape[0]];
    });
    let good = std::fs::read(dir.path().join("good.safetensors")).unwrap();
    std::fs::write(dir.path().join("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    // A float64 tensor, as another tool might write by mistake.
    let w: Vec<u8> = (0..20 * 12).flat_map(|_| 0.5f64.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![20, 12], &w).unwrap();
    std::fs::write(
        dir.path().join("dtype.safetensors"),
        safetensors::serialize(vec![("layers.0.weight", view)], &None).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("out.safetensors"), b"precious").unwrap();
    for (file, msg) in [
        ("missing.safetensors", "layers.1.weight"),
        ("shape.safetensors", "shape"),
        ("truncated.safetensors", "truncated.safetensors"),
        ("dtype.safetensors", "F64"),
    ] {
        spiketile()
            .current_dir(dir.path())
            .args(["eval", "--checkpoint", file, "--test-samples", "4"])
            .assert()
            .failure()
            .stderr(predicate::str::contains(msg));
        spiketile()
            .current_dir(dir.path())
            .args(["train", "--quiet", "--resume", file, "--save", "out.safetensors"])
            .assert()
            .failure()
            .stderr(predicate::str::contains("error"));
        assert_eq!(std::fs::read(dir.path().join("out.safetensors")).unwrap(), b"precious");
    }
}
