//! `spiketile plot`: pictures as `PREFIX.png` and `PREFIX.svg` ([`crate::plot`]).
//!
//! - `plot metrics RUN.jsonl --out PREFIX`: loss, train/test accuracy and samples/s per epoch of a
//!   `train --metrics` file;
//! - `plot raster --checkpoint C [--data FILE] --sample I --out PREFIX`: input, hidden and output
//!   spikes of one sample through a trained network (the dense reference engine's forward pass,
//!   bit-identical to the tile engine's), and the output counts with the label;
//! - `plot sweep SWEEP.csv --out PREFIX`: throughput against the swept variable of a
//!   `bench --sweep ... --out SWEEP.csv` file.

use super::dataset::{bin_all, builtin, load_file};
use crate::checkpoint::Checkpoint;
use crate::engine::dense::{DenseEngine, SpikeFn};
use crate::plot::{
    read_metrics, read_sweep, save, MetricsPicture, RasterLayer, RasterPicture, SweepPicture,
};
use crate::snapshot::Snapshot;
use anyhow::{ensure, Context, Result};
use clap::{Args, Subcommand};
use spiketile_core::loss::predict;
use std::path::{Path, PathBuf};

/// Arguments of `spiketile plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// What to draw.
    #[command(subcommand)]
    pub command: PlotCommand,
}

/// The `plot` subcommands.
#[derive(Subcommand, Debug)]
pub enum PlotCommand {
    /// Loss, train/test accuracy and samples/s per epoch of a `train --metrics` file.
    Metrics {
        /// The JSON-lines metrics file.
        file: PathBuf,
        /// Writes PREFIX.png and PREFIX.svg.
        #[arg(long)]
        out: PathBuf,
    },
    /// Spike rasters of one sample through a trained network, and its output counts.
    Raster(RasterArgs),
    /// Throughput against the swept variable of a `bench --sweep ... --out FILE.csv` file.
    Sweep {
        /// The sweep CSV.
        file: PathBuf,
        /// Writes PREFIX.png and PREFIX.svg.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Arguments of `spiketile plot raster`.
#[derive(Args, Debug)]
pub struct RasterArgs {
    /// A spiketile checkpoint (`train --save`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// SHD-layout HDF5 file (default: the built-in dataset's test split, as `eval` uses).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Index of the sample in the data.
    #[arg(long, default_value_t = 0)]
    pub sample: usize,
    /// Seed of the built-in dataset (default: the checkpoint's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Test samples of the built-in dataset.
    #[arg(long, default_value_t = 500)]
    pub test_samples: usize,
    /// Writes PREFIX.png and PREFIX.svg.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `spiketile plot`.
pub fn run(args: PlotArgs) -> Result<()> {
    let written = match args.command {
        PlotCommand::Metrics { file, out } => {
            let rows = read_metrics(&file)?;
            let title = format!("training run {}", file_name(&file));
            save(&MetricsPicture { rows, title }, &out)?
        }
        PlotCommand::Sweep { file, out } => {
            let (sweep, points) = read_sweep(&file)?;
            let title = format!("bench --sweep {}: training throughput", sweep.to_lowercase());
            save(&SweepPicture { sweep, points, title }, &out)?
        }
        PlotCommand::Raster(a) => raster(&a)?,
    };
    println!("wrote {} and {}", written.0.display(), written.1.display());
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn raster(args: &RasterArgs) -> Result<(PathBuf, PathBuf)> {
    let ck = Checkpoint::load(&args.checkpoint)?;
    let snap = Snapshot::from_checkpoint(&ck)
        .with_context(|| format!("reading {}", args.checkpoint.display()))?;
    let cfg = snap.run.model.clone();
    let data = match &args.data {
        Some(path) => load_file(path, Some(cfg.inputs), None, false)?,
        None => builtin(args.seed.unwrap_or(snap.run.seed), 0, args.test_samples).1,
    };
    ensure!(
        data.channels == cfg.inputs,
        "{} has {} channels, the model has {} inputs",
        data.name,
        data.channels,
        cfg.inputs
    );
    ensure!(
        args.sample < data.samples.len(),
        "--sample {} is out of range: {} has {} samples (0 to {})",
        args.sample,
        data.name,
        data.samples.len(),
        data.samples.len().saturating_sub(1)
    );
    let one = crate::data::EventDataset {
        samples: vec![data.samples[args.sample].clone()],
        ..data.clone()
    };
    let binned = bin_all(&one, cfg.time_steps, cfg.duration).remove(0);
    let engine = DenseEngine::new(&cfg, snap.params, SpikeFn::Heaviside)?;
    let spikes = engine.spike_raster(&binned);
    let widths = cfg.widths();
    let n = spikes.len();
    let layers: Vec<RasterLayer> = spikes
        .into_iter()
        .enumerate()
        .map(|(l, s)| RasterLayer {
            name: match l {
                0 => "input".into(),
                l if l + 1 == n => "output".into(),
                l => format!("hidden{l}"),
            },
            width: widths[l],
            spikes: s,
        })
        .collect();
    let mut counts = vec![0.0f32; cfg.classes];
    for ids in &layers[n - 1].spikes {
        for &k in ids {
            counts[k as usize] += 1.0;
        }
    }
    let prediction = predict(&counts);
    let label = binned.label as usize;
    let title = format!(
        "sample {} of {}, label {label}, predicted {prediction} ({})",
        args.sample,
        data.name,
        file_name(&args.checkpoint)
    );
    save(&RasterPicture { layers, counts, label, prediction, title }, &args.out)
}
