//! The model and optimisation settings of a run, as the CLI flags give them (SPEC §5), stored as
//! JSON in checkpoints (`spiketile.config`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use spiketile_core::{LifParams, LossKind, NeuronParams, Optimizer, OptimizerKind, Surrogate};

/// Everything that defines the network and how it trains, except the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Input channels (from the data).
    pub inputs: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Output classes (from the data).
    pub classes: usize,
    /// Hidden layers get recurrent weights (SPEC §1.4).
    pub recurrent: bool,
    /// Time steps `T`.
    pub time_steps: usize,
    /// Seconds binned onto the `T` steps (f64: the boundaries of the steps are those of the
    /// decimal the user gave, as SPEC §4's formula has them).
    pub duration: f64,
    /// Membrane decay.
    pub alpha: f32,
    /// Firing threshold.
    pub threshold: f32,
    /// SuperSpike steepness.
    pub beta: f32,
    /// Loss on output counts: `ce-count` or `mse-count`.
    pub loss: String,
    /// Buffer capacity as a fraction of each layer's width.
    pub max_activity: f64,
    /// Gradient window under threshold (`inf` for exact mode; stored as a string in JSON).
    #[serde(with = "window_json")]
    pub window: f32,
    /// Buffer capacity of the output layer as a fraction of its width (default 1: the readout
    /// keeps every spike).
    #[serde(default = "one")]
    pub output_max_activity: f64,
    /// Gradient window of the output layer (default `inf`: the surrogate everywhere).
    #[serde(with = "window_json", default = "infinite")]
    pub output_window: f32,
    /// `adam` or `sgd`.
    pub optimizer: String,
    /// Learning rate.
    pub lr: f32,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Scale of the initial weights: `U(-a, a)` with `a = init_gain / sqrt(fan_in)`.
    #[serde(default = "default_init_gain")]
    pub init_gain: f32,
    /// Planner limit: at most this many neurons per tile (`None`: as many as fit).
    #[serde(default)]
    pub max_neurons_per_tile: Option<usize>,
    /// Planner limit: at most this many samples per tile (`None`: as many as fit).
    #[serde(default)]
    pub max_samples_per_tile: Option<usize>,
}

impl ModelConfig {
    /// Checks ranges, with messages that name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.inputs == 0 || self.inputs > u16::MAX as usize {
            bail!("the input has {} channels; spiketile supports 1 to 65535", self.inputs);
        }
        if self.classes < 2 || self.classes > u16::MAX as usize {
            bail!("the data has {} classes; spiketile needs 2 to 65535", self.classes);
        }
        if self.hidden.iter().any(|&h| h == 0 || h > u16::MAX as usize) {
            bail!("--hidden widths must be in 1..=65535 (got {:?})", self.hidden);
        }
        if self.time_steps == 0 {
            bail!("--time-steps must be at least 1");
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
        if !(self.max_activity > 0.0 && self.max_activity <= 1.0) {
            bail!("--max-activity must be in (0, 1] (got {})", self.max_activity);
        }
        if !(self.output_max_activity > 0.0 && self.output_max_activity <= 1.0) {
            bail!("--output-max-activity must be in (0, 1] (got {})", self.output_max_activity);
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!("--lr must be a finite non-negative number");
        }
        if !(self.init_gain.is_finite() && self.init_gain >= 0.0) {
            bail!("--init-gain must be a finite non-negative number (got {})", self.init_gain);
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.max_neurons_per_tile == Some(0) || self.max_samples_per_tile == Some(0) {
            bail!("--max-neurons-per-tile and --max-samples-per-tile must be at least 1");
        }
        self.loss_kind()?;
        self.optimizer_kind()?;
        for l in 1..self.widths().len() {
            if let Err(e) = self.layer_params(l).validate() {
                bail!("{e} (check --alpha, --threshold, --beta, --window, --output-window)");
            }
        }
        Ok(())
    }

    /// Widths of all layers: inputs, hidden..., classes.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.inputs];
        w.extend(&self.hidden);
        w.push(self.classes);
        w
    }

    /// Buffer capacity of a layer of width `n`: `ceil(max_activity * n)`, at least 1.
    /// (A tolerance of 1e-9 keeps e.g. `0.1 * 700` at 70 despite binary rounding.)
    pub fn capacity(&self, n: usize) -> usize {
        fraction_of(self.max_activity, n)
    }

    /// Buffer capacity of layer `l` of [`ModelConfig::widths`] (0 = the input; the last = the
    /// output layer, which uses `output_max_activity`).
    pub fn layer_capacity(&self, l: usize) -> usize {
        let widths = self.widths();
        if l + 1 == widths.len() {
            fraction_of(self.output_max_activity, widths[l])
        } else {
            self.capacity(widths[l])
        }
    }

    /// Neuron parameters of layer `l >= 1` of [`ModelConfig::widths`] (the output layer uses
    /// `output_window`).
    pub fn layer_params(&self, l: usize) -> NeuronParams {
        let mut p = self.neuron_params();
        if l + 1 == self.widths().len() {
            p.window = self.output_window;
        }
        p
    }

    /// The loss.
    pub fn loss_kind(&self) -> Result<LossKind> {
        match self.loss.as_str() {
            "ce-count" => Ok(LossKind::CeCount),
            "mse-count" => Ok(LossKind::MseCount),
            other => bail!("unknown loss {other:?}: use ce-count or mse-count"),
        }
    }

    /// The optimizer kind.
    pub fn optimizer_kind(&self) -> Result<OptimizerKind> {
        match self.optimizer.as_str() {
            "adam" => Ok(OptimizerKind::Adam),
            "sgd" => Ok(OptimizerKind::Sgd),
            other => bail!("unknown optimizer {other:?}: use adam or sgd"),
        }
    }

    /// The optimizer with its hyper-parameters.
    pub fn optimizer(&self) -> Result<Optimizer> {
        Ok(match self.optimizer_kind()? {
            OptimizerKind::Adam => Optimizer::adam(self.lr),
            OptimizerKind::Sgd => Optimizer::sgd(self.lr),
        })
    }

    /// Neuron parameters of the hidden layers.
    pub fn neuron_params(&self) -> NeuronParams {
        NeuronParams {
            lif: LifParams { alpha: self.alpha, theta: self.threshold },
            surrogate: Surrogate::SuperSpike { beta: self.beta },
            window: self.window,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn infinite() -> f32 {
    f32::INFINITY
}

fn default_init_gain() -> f32 {
    crate::model::INIT_GAIN
}

fn fraction_of(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64 - 1e-9).ceil() as usize).clamp(1, n)
}

/// JSON has no infinity: the window is written as a string (`"inf"` or a number's text).
mod window_json {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(w: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&if w.is_infinite() { "inf".to_string() } else { w.to_string() })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<f32>().map_err(serde::de::Error::custom)
    }
}

/// A small exact-mode model (20 inputs, one hidden layer of 12, 4 classes, T = 30) for tests.
#[doc(hidden)]
pub fn test_config() -> ModelConfig {
    ModelConfig {
        inputs: 20,
        hidden: vec![12],
        classes: 4,
        recurrent: false,
        time_steps: 30,
        duration: 1.0,
        alpha: 0.9,
        threshold: 1.0,
        beta: 10.0,
        loss: "ce-count".into(),
        max_activity: 1.0,
        window: f32::INFINITY,
        output_max_activity: 1.0,
        output_window: f32::INFINITY,
        optimizer: "adam".into(),
        lr: 1e-2,
        batch_size: 8,
        init_gain: crate::model::INIT_GAIN,
        max_neurons_per_tile: None,
        max_samples_per_tile: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rounds_up_without_binary_noise() {
        let mut c = test_config();
        c.max_activity = 0.1;
        assert_eq!(c.capacity(700), 70);
        assert_eq!(c.capacity(256), 26);
        assert_eq!(c.capacity(20), 2);
        assert_eq!(c.capacity(3), 1);
        c.max_activity = 1.0;
        assert_eq!(c.capacity(20), 20);
    }

    #[test]
    fn json_round_trip_keeps_infinite_window() {
        let c = test_config();
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validation_names_the_flag() {
        let mut c = test_config();
        c.max_activity = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("--max-activity"));
        let mut c = test_config();
        c.loss = "hinge".into();
        assert!(c.validate().unwrap_err().to_string().contains("ce-count"));
    }
}
