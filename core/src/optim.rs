//! SGD and Adam on tile-local slices.
//!
//! Adam follows PyTorch's `torch.optim.Adam` (no weight decay, no amsgrad):
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `w -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)` at step `t = 1, 2, ...`.
//!
//! ```
//! use spiketile_core::optim::{Optimizer, OptimizerKind};
//! let opt = Optimizer::sgd(0.5);
//! let (mut w, g) = ([1.0f32, 2.0], [0.2f32, -0.4]);
//! opt.step(1, &mut w, &g, &mut [], &mut []);
//! assert_eq!(w, [0.9, 2.2]);
//! ```

use crate::math;

/// Which optimizer; decides the optimizer state a tile holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent (no state).
    Sgd,
    /// Adam (two state words per weight).
    Adam,
}

impl OptimizerKind {
    /// State words kept per weight.
    pub const fn state_per_weight(self) -> usize {
        match self {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Adam => 2,
        }
    }
}

/// Optimizer and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Optimizer {
    /// Which one.
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f32,
    /// Adam's first-moment decay (0.9).
    pub beta1: f32,
    /// Adam's second-moment decay (0.999).
    pub beta2: f32,
    /// Adam's epsilon (1e-8).
    pub eps: f32,
}

impl Optimizer {
    /// SGD with learning rate `lr`.
    pub fn sgd(lr: f32) -> Self {
        Optimizer { kind: OptimizerKind::Sgd, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// Adam with learning rate `lr` and PyTorch's default betas and epsilon.
    pub fn adam(lr: f32) -> Self {
        Optimizer { kind: OptimizerKind::Adam, ..Self::sgd(lr) }
    }

    /// One update of `w` by gradient `g` at optimizer step `step` (1-based). `m` and `v` are the
    /// Adam moments (same length as `w`; ignored and may be empty for SGD).
    pub fn step(&self, step: u32, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match self.kind {
            OptimizerKind::Sgd => {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= self.lr * g;
                }
            }
            OptimizerKind::Adam => {
                let bc1 = 1.0 - math::powi(self.beta1, step);
                let bc2_sqrt = math::sqrt(1.0 - math::powi(self.beta2, step));
                let step_size = self.lr / bc1;
                let (b1, b2) = (self.beta1, self.beta2);
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = math::sqrt(*v) / bc2_sqrt + self.eps;
                    *w -= step_size * (*m / denom);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned against PyTorch's Adam: the first step moves every weight by about `lr * sign(g)`.
    #[test]
    fn adam_first_steps() {
        let opt = Optimizer::adam(0.1);
        let mut w = [1.0f32, -1.0, 0.5];
        let g = [0.3f32, -2.0, 0.0];
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        opt.step(1, &mut w, &g, &mut m, &mut v);
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 0.9).abs() < 1e-6 && w[2] == 0.5);
        opt.step(2, &mut w, &g, &mut m, &mut v);
        assert!((w[0] - 0.8).abs() < 1e-5, "{}", w[0]);
    }
}
