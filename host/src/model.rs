//! Network parameters in the layout users see (`[N_l, N_{l-1}]` rows = post-synaptic neurons,
//! like `torch.nn.Linear.weight`), their optimizer state, and weight initialisation.

use crate::config::ModelConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One layer's parameters (or gradients, or an optimizer moment), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams {
    /// `[rows, cols]` = `[N_l, N_{l-1}]`.
    pub weight: Vec<f32>,
    /// `[N_l, N_l]` recurrent weights, if the layer is recurrent.
    pub recurrent: Option<Vec<f32>>,
    /// `N_l`.
    pub rows: usize,
    /// `N_{l-1}`.
    pub cols: usize,
}

impl LayerParams {
    /// Zeros of the given shape.
    pub fn zeros(rows: usize, cols: usize, recurrent: bool) -> Self {
        LayerParams {
            weight: vec![0.0; rows * cols],
            recurrent: recurrent.then(|| vec![0.0; rows * rows]),
            rows,
            cols,
        }
    }
}

/// Parameters of every layer (index 0 = first hidden layer, last = output layer).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Layers in order.
    pub layers: Vec<LayerParams>,
}

impl Params {
    /// Zeros shaped like `cfg`'s network.
    pub fn zeros(cfg: &ModelConfig) -> Self {
        let w = cfg.widths();
        let layers = (1..w.len())
            .map(|l| LayerParams::zeros(w[l], w[l - 1], cfg.recurrent && l + 1 < w.len()))
            .collect();
        Params { layers }
    }

    /// Weights drawn as training starts them: `U(-a, a)` with `a = cfg.init_gain / sqrt(fan_in)`
    /// (recurrent weights use the layer width as fan-in), from `seed`.
    pub fn init(cfg: &ModelConfig, seed: u64) -> Self {
        let mut p = Params::zeros(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_1417);
        for layer in p.layers.iter_mut() {
            let a = cfg.init_gain / (layer.cols as f32).sqrt();
            layer.weight.iter_mut().for_each(|w| *w = rng.gen_range(-a..a));
            let rows = layer.rows;
            if let Some(v) = layer.recurrent.as_mut() {
                let a = cfg.init_gain / (rows as f32).sqrt();
                v.iter_mut().for_each(|w| *w = rng.gen_range(-a..a));
            }
        }
        p
    }

    /// Total number of weights.
    pub fn count(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len() + l.recurrent.as_ref().map_or(0, Vec::len)).sum()
    }
}

/// Default scale of the initial weights (see [`Params::init`]). With `(1 - alpha) = 0.05`
/// scaling the input current, this makes a few percent of the hidden neurons fire on SHD-like
/// input (measured: 2.4 % hidden activity on the built-in data after the first epoch).
pub const INIT_GAIN: f32 = 32.0;

/// Optimizer state: Adam's moments shaped like the parameters (empty for SGD), and the step.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimState {
    /// First moments (Adam), or empty.
    pub m: Option<Params>,
    /// Second moments (Adam), or empty.
    pub v: Option<Params>,
    /// Optimizer steps taken so far.
    pub step: u32,
}

impl OptimState {
    /// A fresh optimizer: no steps taken, every moment zero (`m` and `v` left out, which
    /// [`crate::engine::Engine::set_state`] reads as zeros).
    pub fn fresh() -> Self {
        OptimState { m: None, v: None, step: 0 }
    }
}
