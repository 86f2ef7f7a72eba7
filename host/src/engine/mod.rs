//! Engines run one batch forward (and, when training, backward and the optimizer step).
//!
//! - [`tiled`]: the bulk-synchronous tile engine: tiles of the core on worker threads, explicit
//!   exchange buffers, a barrier per phase;
//! - [`dense`]: a plain dense implementation of the same math, the oracle for parity tests (and,
//!   with a smooth spike function, for finite-difference gradient checks).

pub mod barrier;
pub mod claims;
pub mod dense;
pub mod pool;
pub mod schedule;
mod shared;
pub mod tiled;
pub mod trace;

use crate::config::ModelConfig;
use crate::data::BinnedSample;
use crate::model::{OptimState, Params};
use anyhow::{bail, Result};
use spiketile_core::SpikeView;

/// The input spikes of a batch: per sample and step the data's spike ids truncated to the input
/// capacity (lowest ids kept, drops counted), laid out as `[n_spikes, n_grad, ids..]` slots,
/// step-major (all samples of step `t` are contiguous).
#[derive(Clone, Debug, Default)]
pub struct InputBatch {
    /// Samples in the batch.
    pub len: usize,
    /// Time steps.
    pub time_steps: usize,
    /// Capacity `K_0`.
    pub capacity: usize,
    slots: Vec<u16>,
    /// Labels.
    pub labels: Vec<u16>,
    /// Input spikes kept / dropped.
    pub stats: LayerStats,
    /// The largest id kept, with its sample and step (none if no spike was kept).
    max_id: Option<(u16, usize, usize)>,
}

impl InputBatch {
    /// Builds the batch from binned samples.
    pub fn new(samples: &[&BinnedSample], time_steps: usize, capacity: usize) -> Self {
        let slot = capacity + 2;
        let mut slots = vec![0u16; samples.len() * time_steps * slot];
        let mut stats = LayerStats::default();
        let mut max_id: Option<(u16, usize, usize)> = None;
        for (b, s) in samples.iter().enumerate() {
            for t in 0..time_steps {
                let ids = s.step(t);
                let keep = ids.len().min(capacity);
                let dst = &mut slots[(t * samples.len() + b) * slot..][..slot];
                dst[0] = keep as u16;
                dst[1] = keep as u16;
                dst[2..2 + keep].copy_from_slice(&ids[..keep]);
                stats.spikes += keep as u64;
                stats.overflow += (ids.len() - keep) as u64;
                if let Some(&top) = ids[..keep].iter().max() {
                    if max_id.is_none_or(|(m, _, _)| top > m) {
                        max_id = Some((top, b, t));
                    }
                }
            }
        }
        stats.neuron_steps = 0;
        InputBatch {
            len: samples.len(),
            time_steps,
            capacity,
            slots,
            labels: samples.iter().map(|s| s.label).collect(),
            stats,
            max_id,
        }
    }

    /// Checks that every input spike id is below `inputs`, the model's input width (the
    /// engines' tiles index weight rows by these ids without checking them again).
    pub fn check_ids(&self, inputs: usize) -> Result<()> {
        match self.max_id {
            Some((id, b, t)) if id as usize >= inputs => bail!(
                "sample {b} of the batch has input spike id {id} at step {t}, but the model has \
                 {inputs} inputs (ids 0 to {})",
                inputs - 1
            ),
            _ => Ok(()),
        }
    }

    /// `S_0[t]` of sample `b`.
    #[inline]
    pub fn step(&self, b: usize, t: usize) -> SpikeView<'_> {
        let slot = &self.slots[(t * self.len + b) * (self.capacity + 2)..];
        SpikeView { ids: &slot[2..2 + slot[1] as usize], n_spikes: slot[0] as usize }
    }
}

/// Spike statistics of one layer over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Spikes kept.
    pub spikes: u64,
    /// Spikes and near-threshold ids dropped for lack of capacity.
    pub overflow: u64,
    /// Neurons × steps × samples (the denominator of activity).
    pub neuron_steps: u64,
}

impl LayerStats {
    /// Fraction of neuron-steps that spiked.
    pub fn activity(&self) -> f64 {
        if self.neuron_steps == 0 {
            0.0
        } else {
            self.spikes as f64 / self.neuron_steps as f64
        }
    }

    /// Adds another batch's counts.
    pub fn add(&mut self, o: &LayerStats) {
        self.spikes += o.spikes;
        self.overflow += o.overflow;
        self.neuron_steps += o.neuron_steps;
    }
}

/// What one batch produced.
#[derive(Clone, Debug, Default)]
pub struct BatchResult {
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Output spike counts, `[sample][class]`.
    pub counts: Vec<f32>,
    /// Per layer (hidden layers then output) spike statistics.
    pub layers: Vec<LayerStats>,
}

/// A training/inference engine of one model.
pub trait Engine: Send {
    /// Runs a batch (at most the configured batch size). With `train`, also backpropagates and
    /// takes one optimizer step.
    fn run_batch(&mut self, batch: &InputBatch, train: bool) -> Result<BatchResult>;
    /// The current parameters.
    fn params(&mut self) -> Params;
    /// The current optimizer state.
    fn optim_state(&mut self) -> OptimState;
    /// Replaces parameters and (optionally) optimizer state; moments left out (`None`) of an
    /// optimizer that has them are zeros ([`OptimState::fresh`] restarts the optimizer).
    fn set_state(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()>;
    /// The model configuration.
    fn config(&self) -> &ModelConfig;
    /// Records an execution trace ([`trace`]) of the next `batches` training batches. Only the
    /// tiled engine has phases to trace; the others say so.
    fn start_trace(&mut self, batches: usize) -> Result<()> {
        let _ = batches;
        bail!("execution traces need the tiled engine (--engine tiled)")
    }
    /// The trace recorded since [`Engine::start_trace`] (and stops tracing), if any.
    fn take_trace(&mut self) -> Option<trace::ExecTrace> {
        None
    }
    /// Where the memory of an engine that runs tiles goes ([`tiled::TiledEngine`]), or `None`.
    fn memory(&mut self) -> Option<EngineMemory> {
        None
    }
}

/// The memory of the tiled engine besides the process's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineMemory {
    /// Bytes of the tiles' memory the engine writes: the plan reserves every region of every
    /// tile, the host engine leaves some of them alone, and their pages are never resident.
    pub tile_written: usize,
    /// Bytes of the engine's own buffers: layer buffers, partial `dL/dS`, the column weights
    /// every replica reads, loss buffers.
    pub buffers: usize,
    /// Whether the tiles' memory was put on transparent huge pages (then the pages of the
    /// regions it does not write are resident too).
    pub huge_pages: bool,
}

/// Sums per-sample losses and writes `dL/dc` (scaled by `1 / batch`) for every sample.
pub(crate) fn batch_loss(
    cfg: &ModelConfig,
    counts: &[f32],
    labels: &[u16],
    dldc: &mut [f32],
) -> Result<f64> {
    let kind = cfg.loss_kind()?;
    let c = cfg.classes;
    let scale = 1.0 / labels.len() as f32;
    let mut sum = 0.0;
    for (b, &label) in labels.iter().enumerate() {
        let range = b * c..(b + 1) * c;
        sum += spiketile_core::loss::loss_and_grad(
            kind,
            &counts[range.clone()],
            label as usize,
            scale,
            &mut dldc[range],
        ) as f64;
    }
    Ok(sum)
}
