//! What a checkpoint holds of a run, and the conversions both ways (SPEC §5).
//!
//! Tensors: `layers.{l}.weight` `[N_l, N_{l-1}]`, `layers.{l}.recurrent` `[N_l, N_l]`; with Adam,
//! the moments under `optim.m.layers.{l}.*` and `optim.v.layers.{l}.*`. Metadata: the run
//! configuration as JSON (`spiketile.config`), the format version, the optimizer step, the epoch,
//! and the position in the data order (`spiketile.rng`: seed, epoch and batch, from which the
//! shuffled order is recomputed exactly).

use crate::checkpoint::{
    recurrent_name, weight_name, Checkpoint, Tensor, FORMAT_VERSION, META_CONFIG, META_EPOCH,
    META_RNG, META_STEP, META_VERSION,
};
use crate::config::ModelConfig;
use crate::model::{LayerParams, OptimState, Params};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The run configuration stored in checkpoints: the model plus how data is ordered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The model and optimiser.
    pub model: ModelConfig,
    /// Seed of every random choice (initial weights, data order, synthetic data).
    pub seed: u64,
    /// Batches in random order (else file order).
    pub shuffle: bool,
}

/// Where a run is in its data: the next batch to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Seed of the data order.
    pub seed: u64,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already run.
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: u64,
}

/// A run's complete state.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Configuration.
    pub run: RunConfig,
    /// Parameters.
    pub params: Params,
    /// Optimizer state.
    pub optim: OptimState,
    /// Position in the data.
    pub progress: Progress,
}

fn put(ck: &mut Checkpoint, prefix: &str, p: &Params) -> Result<()> {
    for (l, layer) in p.layers.iter().enumerate() {
        let w = Tensor::new(vec![layer.rows, layer.cols], layer.weight.clone())?;
        ck.tensors.insert(format!("{prefix}{}", weight_name(l)), w);
        if let Some(v) = &layer.recurrent {
            let v = Tensor::new(vec![layer.rows, layer.rows], v.clone())?;
            ck.tensors.insert(format!("{prefix}{}", recurrent_name(l)), v);
        }
    }
    Ok(())
}

fn take(ck: &Checkpoint, prefix: &str, like: &Params) -> Result<Params> {
    let mut out = like.clone();
    for (l, layer) in out.layers.iter_mut().enumerate() {
        let name = format!("{prefix}{}", weight_name(l));
        layer.weight = ck.tensor(&name, &[layer.rows, layer.cols])?.data.clone();
        if let Some(v) = layer.recurrent.as_mut() {
            let name = format!("{prefix}{}", recurrent_name(l));
            *v = ck.tensor(&name, &[layer.rows, layer.rows])?.data.clone();
        }
    }
    Ok(out)
}

impl Snapshot {
    /// The checkpoint of this snapshot.
    pub fn to_checkpoint(&self) -> Result<Checkpoint> {
        let mut ck = Checkpoint::new();
        put(&mut ck, "", &self.params)?;
        if let (Some(m), Some(v)) = (&self.optim.m, &self.optim.v) {
            put(&mut ck, "optim.m.", m)?;
            put(&mut ck, "optim.v.", v)?;
        }
        ck.set_meta(META_CONFIG, serde_json::to_string(&self.run)?);
        ck.set_meta(META_VERSION, FORMAT_VERSION);
        ck.set_meta(META_STEP, self.optim.step);
        ck.set_meta(META_EPOCH, self.progress.epoch);
        ck.set_meta(META_RNG, serde_json::to_string(&self.progress)?);
        Ok(ck)
    }

    /// A full spiketile checkpoint back into a snapshot (for `--resume` and `eval`).
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Snapshot> {
        let version = ck.meta(META_VERSION).context(
            "not a spiketile run checkpoint (no spiketile.version metadata); \
             use --init for a file holding only layer weights",
        )?;
        ensure!(
            version == FORMAT_VERSION,
            "checkpoint format version {version}, this build reads {FORMAT_VERSION}"
        );
        let run: RunConfig = ck.meta_json(META_CONFIG)?;
        run.model.validate().context("the checkpoint's configuration is invalid")?;
        let progress: Progress = ck.meta_json(META_RNG)?;
        let zeros = Params::zeros(&run.model);
        let params = take(ck, "", &zeros)?;
        let adam = run.model.optimizer_kind()? == spiketile_core::OptimizerKind::Adam;
        let (m, v) = if adam {
            (Some(take(ck, "optim.m.", &zeros)?), Some(take(ck, "optim.v.", &zeros)?))
        } else {
            (None, None)
        };
        let step: u32 = ck.meta_parse(META_STEP)?;
        Ok(Snapshot { run, params, optim: OptimState { m, v, step }, progress })
    }
}

/// Parameters from any file holding `layers.*` tensors (`--init`): the architecture comes from the
/// shapes. Returns the parameters and `(inputs, hidden widths, classes, recurrent)`.
pub fn params_from_tensors(ck: &Checkpoint) -> Result<(Params, usize, Vec<usize>, usize, bool)> {
    let layers = ck.layer_weights()?;
    let n = layers.len();
    ensure!(n >= 1, "no layers");
    let recurrent = layers.first().is_some_and(|l| l.recurrent.is_some());
    for (l, layer) in layers.iter().enumerate() {
        let hidden = l + 1 < n;
        if layer.recurrent.is_some() != (recurrent && hidden) {
            bail!(
                "layer {l}: recurrent weights must be present on every hidden layer or on none \
                 (and never on the output layer)"
            );
        }
    }
    let params = Params {
        layers: layers
            .iter()
            .map(|l| LayerParams {
                rows: l.neurons(),
                cols: l.inputs(),
                weight: l.weight.data.clone(),
                recurrent: l.recurrent.as_ref().map(|r| r.data.clone()),
            })
            .collect(),
    };
    let inputs = layers[0].inputs();
    let hidden = layers[..n - 1].iter().map(|l| l.neurons()).collect();
    let classes = layers[n - 1].neurons();
    Ok((params, inputs, hidden, classes, recurrent))
}
