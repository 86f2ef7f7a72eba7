//! `spiketile eval`: predictions of a checkpoint on a dataset, as CSV.

use super::args::ModelArgs;
use super::dataset::{bin_all, builtin, load_dataset, FormatArgs, SplitArg};
use super::train::make_engine;
use crate::atomic::{check_writable, write_atomic};
use crate::checkpoint::{Checkpoint, META_VERSION};
use crate::snapshot::{params_from_tensors, Snapshot};
use crate::train::evaluate;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of `spiketile eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (a spiketile checkpoint, or `layers.*` tensors only: then the
    /// architecture comes from the shapes and everything else from the model flags).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// SHD-layout HDF5 file, or an N-MNIST / DVS Gesture directory (default: the built-in
    /// dataset's test split).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Dataset format, pooling and polarity handling of --data (as used for training).
    #[command(flatten)]
    pub format: FormatArgs,
    /// Which split of a dataset directory to evaluate (default: test).
    #[arg(long, value_enum)]
    pub split: Option<SplitArg>,
    /// Write `index,label,prediction,count_0,...` per sample here.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Treat non-finite or negative event times as errors.
    #[arg(long)]
    pub strict: bool,
    /// Seed of the built-in dataset (default: the checkpoint's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Test samples of the built-in dataset.
    #[arg(long, default_value_t = 500)]
    pub test_samples: usize,
    /// Model flags, used only for a tensors-only checkpoint (and `--threads`, `--engine`).
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `spiketile eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(path) = &args.predictions {
        check_writable(path)?;
    }
    let ck = Checkpoint::load(&args.checkpoint)?;
    let (cfg, params, seed) = if ck.meta(META_VERSION).is_some() {
        let s = Snapshot::from_checkpoint(&ck)
            .with_context(|| format!("reading {}", args.checkpoint.display()))?;
        args.model.warn_ignored(&s.run.model, "the checkpoint's model is evaluated");
        (s.run.model, s.params, s.run.seed)
    } else {
        let (params, inputs, hidden, classes, recurrent) = params_from_tensors(&ck)?;
        args.model.note_output_layer();
        let mut model = args.model.clone();
        model.hidden = hidden;
        model.recurrent = recurrent;
        (model.config(inputs, classes)?, params, 0)
    };
    let data = match &args.data {
        Some(path) => {
            if args.split.is_some() && !args.format.resolve(path)?.is_directory() {
                bail!(
                    "--split applies to dataset directories (N-MNIST, DVS Gesture), not to SHD \
                     files"
                );
            }
            let split = args.split.unwrap_or(SplitArg::Test).into();
            load_dataset(path, split, &args.format, Some(cfg.inputs), None, args.strict)?
        }
        None => {
            if args.format != FormatArgs::default() || args.split.is_some() {
                bail!("--format, --downsample, --merge-polarity and --split need --data");
            }
            builtin(args.seed.unwrap_or(seed), 0, args.test_samples).1
        }
    };
    if data.channels != cfg.inputs {
        bail!("{} has {} channels, the model has {} inputs", data.name, data.channels, cfg.inputs);
    }
    if data.classes > cfg.classes {
        bail!("{} has {} classes, the model has {} outputs", data.name, data.classes, cfg.classes);
    }
    if data.samples.is_empty() {
        bail!("{}: no samples to evaluate", data.name);
    }
    let samples = bin_all(&data, cfg.time_steps, cfg.duration);
    let mut engine = make_engine(args.model.engine, &cfg, &params, args.model.threads())?;
    let ev = evaluate(engine.as_mut(), &samples)?;
    if let Some(out) = &args.predictions {
        let mut csv = String::from("index,label,prediction");
        for k in 0..cfg.classes {
            write!(csv, ",count_{k}")?;
        }
        csv.push('\n');
        for (i, (&label, &pred)) in ev.labels.iter().zip(&ev.predictions).enumerate() {
            write!(csv, "{i},{label},{pred}")?;
            for c in &ev.counts[i * cfg.classes..(i + 1) * cfg.classes] {
                write!(csv, ",{}", *c as u64)?;
            }
            csv.push('\n');
        }
        write_atomic(out, csv.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "{}: {} samples, accuracy {:.2}%, mean loss {:.4}",
        data.name,
        samples.len(),
        100.0 * ev.accuracy,
        ev.loss
    );
    print_confusion(&ev.labels, &ev.predictions, cfg.classes);
    Ok(())
}

/// Per-class recall and the most frequent confusions.
fn print_confusion(labels: &[u16], preds: &[usize], classes: usize) {
    let mut m = vec![0usize; classes * classes];
    for (&l, &p) in labels.iter().zip(preds) {
        m[l as usize * classes + p] += 1;
    }
    let mut line = String::from("recall per class:");
    for k in 0..classes {
        let total: usize = m[k * classes..(k + 1) * classes].iter().sum();
        if total > 0 {
            let _ = write!(line, " {k}:{:.0}%", 100.0 * m[k * classes + k] as f64 / total as f64);
        }
    }
    println!("{line}");
    let mut confusions: Vec<(usize, usize, usize)> = (0..classes)
        .flat_map(|a| (0..classes).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (m[a * classes + b], a, b))
        .filter(|c| c.0 > 0)
        .collect();
    confusions.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    if !confusions.is_empty() {
        let top: Vec<String> =
            confusions.iter().take(5).map(|(n, a, b)| format!("{a}->{b} x{n}")).collect();
        println!("most confused (label->prediction): {}", top.join(", "));
    }
}
