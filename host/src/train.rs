//! The training loop: epochs of shuffled batches, evaluation, metrics, checkpoints, resume.

use crate::atomic::write_atomic;
use crate::data::BinnedSample;
use crate::engine::{Engine, InputBatch, LayerStats};
use crate::snapshot::{Progress, RunConfig, Snapshot};
use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use spiketile_core::loss::predict;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How long and how to report.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Epochs to run in total (a resumed run counts the epochs already done).
    pub epochs: usize,
    /// Stop after this many optimizer steps in total.
    pub max_steps: Option<u64>,
    /// JSON-lines metrics file, rewritten atomically after every epoch. A resumed run keeps the
    /// file's lines up to the step it resumes from and adds its own.
    pub metrics: Option<PathBuf>,
    /// Checkpoint written after every epoch, at the end and on Ctrl-C: a run that dies can
    /// `--resume` from its last epoch.
    pub save: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Print per-epoch lines.
    pub verbose: bool,
}

/// Per-layer figures of an epoch.
#[derive(Clone, Debug, Serialize)]
pub struct LayerMetrics {
    /// `input`, `hidden1`, ..., `output`.
    pub layer: String,
    /// Fraction of neuron-steps that spiked.
    pub activity: f64,
    /// Spikes and near-threshold ids dropped for lack of capacity.
    pub overflow: u64,
}

/// One epoch's figures (also one JSON line of `--metrics`).
#[derive(Clone, Debug, Serialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (during the epoch, as the weights changed).
    pub train_acc: f64,
    /// Test accuracy after the epoch, if there is test data.
    pub test_acc: Option<f64>,
    /// Training throughput.
    pub samples_per_s: f64,
    /// Wall time of the epoch's training.
    pub seconds: f64,
    /// Spike activity and overflow per layer.
    pub layers: Vec<LayerMetrics>,
}

/// Accuracy and per-sample results of an evaluation.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    /// Output counts `[sample][class]`.
    pub counts: Vec<f32>,
    /// Predicted class per sample.
    pub predictions: Vec<usize>,
    /// Labels.
    pub labels: Vec<u16>,
    /// Mean loss.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
}

/// Runs `samples` forward in batches.
pub fn evaluate(engine: &mut dyn Engine, samples: &[BinnedSample]) -> Result<Evaluation> {
    let cfg = engine.config().clone();
    let mut ev = Evaluation::default();
    let mut loss = 0.0;
    for chunk in samples.chunks(cfg.batch_size) {
        let refs: Vec<&BinnedSample> = chunk.iter().collect();
        let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
        let r = engine.run_batch(&batch, false)?;
        loss += r.loss_sum;
        for (b, s) in chunk.iter().enumerate() {
            let c = &r.counts[b * cfg.classes..(b + 1) * cfg.classes];
            ev.predictions.push(predict(c));
            ev.labels.push(s.label);
        }
        ev.counts.extend_from_slice(&r.counts);
    }
    let n = samples.len().max(1) as f64;
    let correct =
        ev.predictions.iter().zip(&ev.labels).filter(|(p, l)| **p == **l as usize).count();
    ev.accuracy = correct as f64 / n;
    ev.loss = loss / n;
    Ok(ev)
}

fn layer_names(n: usize) -> Vec<String> {
    let mut names = vec!["input".to_string()];
    names.extend((1..=n).map(|l| format!("hidden{l}")));
    names.push("output".into());
    names
}

/// The order of the training samples in `epoch`.
fn order(run: &RunConfig, epoch: usize, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if run.shuffle {
        let mut rng =
            ChaCha8Rng::seed_from_u64(run.seed ^ 0xDA7A_0000 ^ (epoch as u64).rotate_left(32));
        idx.shuffle(&mut rng);
    }
    idx
}

/// A training run in progress.
pub struct Trainer<'a> {
    /// Configuration.
    pub run: RunConfig,
    /// The engine.
    pub engine: Box<dyn Engine + 'a>,
    /// Where the run is.
    pub progress: Progress,
}

impl<'a> Trainer<'a> {
    /// The run's snapshot (for checkpoints).
    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            run: self.run.clone(),
            params: self.engine.params(),
            optim: self.engine.optim_state(),
            progress: self.progress,
        }
    }

    fn save(&mut self, opts: &TrainOptions) -> Result<()> {
        if let Some(path) = &opts.save {
            let ck = self.snapshot().to_checkpoint()?;
            ck.save(path).with_context(|| format!("writing checkpoint {}", path.display()))?;
        }
        Ok(())
    }

    /// Trains until `opts.epochs` or `opts.max_steps`, or until `stop` is set (then it saves and
    /// returns early). Returns the metrics of every epoch run.
    pub fn run(
        &mut self,
        train: &[BinnedSample],
        test: Option<&[BinnedSample]>,
        opts: &TrainOptions,
        stop: &AtomicBool,
    ) -> Result<Vec<EpochMetrics>> {
        let bs = self.run.model.batch_size;
        let batches = train.len().div_ceil(bs);
        let mut all = Vec::new();
        let mut lines = earlier_metrics(opts.metrics.as_deref(), self.progress.step);
        let mut saved_at = None;
        let names = layer_names(self.run.model.hidden.len());
        let done = |p: &Progress| opts.max_steps.is_some_and(|m| p.step >= m);
        while self.progress.epoch < opts.epochs && !done(&self.progress) {
            let idx = order(&self.run, self.progress.epoch, train.len());
            let bar = opts.progress.then(|| {
                let b = indicatif::ProgressBar::new(batches as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "epoch {prefix} [{bar:30}] {pos}/{len} batches {per_sec} eta {eta} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(format!("{}", self.progress.epoch + 1));
                b.set_position(self.progress.batch as u64);
                b
            });
            let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let mut stats = vec![LayerStats::default(); names.len()];
            let started = Instant::now();
            while self.progress.batch < batches && !done(&self.progress) {
                if stop.load(Ordering::Relaxed) {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    self.save(opts)?;
                    eprintln!(
                        "interrupted at step {}; {}",
                        self.progress.step,
                        match &opts.save {
                            Some(p) => format!("checkpoint written to {}", p.display()),
                            None => "no --save given, nothing written".into(),
                        }
                    );
                    return Ok(all);
                }
                let range =
                    self.progress.batch * bs..((self.progress.batch + 1) * bs).min(train.len());
                let refs: Vec<&BinnedSample> = idx[range].iter().map(|&i| &train[i]).collect();
                let m = &self.run.model;
                let batch = InputBatch::new(&refs, m.time_steps, m.capacity(m.inputs));
                let r = self.engine.run_batch(&batch, true)?;
                loss += r.loss_sum;
                for (b, s) in refs.iter().enumerate() {
                    let c = &r.counts[b * m.classes..(b + 1) * m.classes];
                    correct += usize::from(predict(c) == s.label as usize);
                }
                seen += refs.len();
                let mut input = batch.stats;
                input.neuron_steps = (m.inputs * m.time_steps * refs.len()) as u64;
                stats[0].add(&input);
                for (acc, s) in stats[1..].iter_mut().zip(&r.layers) {
                    acc.add(s);
                }
                self.progress.batch += 1;
                self.progress.step += 1;
                if let Some(b) = &bar {
                    b.set_position(self.progress.batch as u64);
                    b.set_message(format!("loss {:.4}", loss / seen.max(1) as f64));
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let epoch_done = self.progress.batch >= batches;
            if epoch_done {
                self.progress.epoch += 1;
                self.progress.batch = 0;
            }
            let test_acc = match test {
                Some(t) if !t.is_empty() => Some(evaluate(self.engine.as_mut(), t)?.accuracy),
                _ => None,
            };
            let metrics = EpochMetrics {
                epoch: self.progress.epoch + usize::from(!epoch_done),
                step: self.progress.step,
                loss: loss / seen.max(1) as f64,
                train_acc: correct as f64 / seen.max(1) as f64,
                test_acc,
                samples_per_s: seen as f64 / seconds.max(1e-9),
                seconds,
                layers: names
                    .iter()
                    .zip(&stats)
                    .map(|(n, s)| LayerMetrics {
                        layer: n.clone(),
                        activity: s.activity(),
                        overflow: s.overflow,
                    })
                    .collect(),
            };
            if opts.verbose {
                eprintln!("{}", format_epoch(&metrics, opts.epochs));
            }
            if let Some(path) = &opts.metrics {
                lines.push_str(&serde_json::to_string(&metrics)?);
                lines.push('\n');
                write_atomic(path, lines.as_bytes())
                    .with_context(|| format!("writing metrics {}", path.display()))?;
            }
            all.push(metrics);
            self.save(opts)?;
            saved_at = Some(self.progress.step);
        }
        if saved_at != Some(self.progress.step) {
            self.save(opts)?;
        }
        Ok(all)
    }
}

/// The lines of the metrics file at `path` up to optimizer step `step` (none for a run from
/// step 0, or when there is no such file): what a resumed run's metrics continue.
fn earlier_metrics(path: Option<&std::path::Path>, step: u64) -> String {
    let Some(text) = path.filter(|_| step > 0).and_then(|p| std::fs::read_to_string(p).ok()) else {
        return String::new();
    };
    let mut kept = String::new();
    for line in text.lines() {
        let at =
            serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["step"].as_u64());
        if at.is_some_and(|s| s <= step) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// One human-readable line per epoch.
pub fn format_epoch(m: &EpochMetrics, epochs: usize) -> String {
    let test = m.test_acc.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
    let act: Vec<String> =
        m.layers.iter().map(|l| format!("{} {:.1}%", l.layer, 100.0 * l.activity)).collect();
    let over: Vec<String> = m.layers.iter().map(|l| format!("{}", l.overflow)).collect();
    format!(
        "epoch {}/{} step {}: loss {:.4}  train {:.1}%  test {}  {:.0} samples/s  activity [{}]  overflow [{}]",
        m.epoch,
        epochs,
        m.step,
        m.loss,
        100.0 * m.train_acc,
        test,
        m.samples_per_s,
        act.join(", "),
        over.join(", ")
    )
}
