//! Leaky integrate-and-fire neurons: parameters, the membrane update and its adjoint
//! (SPEC §1.1 and §1.5).
//!
//! Forward, per neuron and step (`S` is 0 or 1, the spike of the previous step resets):
//!
//! `u[t] = alpha * u[t-1] * (1 - S[t-1]) + (1 - alpha) * I[t]`
//!
//! Backward, with `g[t] = dL/du[t]` and the reset factor treated as a constant:
//!
//! `g[t] = sigma'(u[t]) * dL/dS[t] + alpha * (1 - S[t]) * g[t+1]`
//!
//! ```
//! use spiketile_core::lif::{membrane_step, LifParams};
//! let p = LifParams { alpha: 0.5, theta: 1.0 };
//! assert_eq!(membrane_step(&p, 1.0, false, 2.0), 1.5);
//! assert_eq!(membrane_step(&p, 1.0, true, 2.0), 1.0);
//! ```

use crate::{Surrogate, TileError};

/// Membrane parameters of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LifParams {
    /// Membrane decay per step, in `[0, 1)` (default 0.95).
    pub alpha: f32,
    /// Firing threshold (default 1.0).
    pub theta: f32,
}

impl Default for LifParams {
    fn default() -> Self {
        LifParams { alpha: 0.95, theta: 1.0 }
    }
}

/// Everything a tile needs to know about its neurons: membrane, surrogate and gradient window.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NeuronParams {
    /// Membrane parameters.
    pub lif: LifParams,
    /// Surrogate derivative for the backward pass.
    pub surrogate: Surrogate,
    /// Gradient window below threshold (SPEC §2; default 0.1, `f32::INFINITY` for exact mode).
    pub window: f32,
}

impl Default for NeuronParams {
    fn default() -> Self {
        NeuronParams { lif: LifParams::default(), surrogate: Surrogate::default(), window: 0.1 }
    }
}

impl NeuronParams {
    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), TileError> {
        let LifParams { alpha, theta } = self.lif;
        if !(0.0..1.0).contains(&alpha) {
            return Err(TileError::InvalidParams("alpha must be in [0, 1)"));
        }
        if !theta.is_finite() {
            return Err(TileError::InvalidParams("threshold must be finite"));
        }
        if self.window.is_nan() || self.window < 0.0 {
            return Err(TileError::InvalidParams("window must be >= 0 (or inf)"));
        }
        self.surrogate.validate()
    }
}

/// One membrane update: `alpha * u_prev * (1 - S_prev) + (1 - alpha) * input`.
#[inline]
pub fn membrane_step(p: &LifParams, u_prev: f32, spiked_prev: bool, input: f32) -> f32 {
    let keep = if spiked_prev { 0.0 } else { 1.0 };
    p.alpha * u_prev * keep + (1.0 - p.alpha) * input
}

/// One adjoint update: `sigma_prime * dl_ds + alpha * (1 - S) * g_next`.
#[inline]
pub fn adjoint_step(p: &LifParams, sigma_prime: f32, dl_ds: f32, spiked: bool, g_next: f32) -> f32 {
    let keep = if spiked { 0.0 } else { 1.0 };
    sigma_prime * dl_ds + p.alpha * keep * g_next
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dynamics pinned to hand-computed numbers (constant input 1.5, alpha 0.9, theta 1).
    #[test]
    fn membrane_trajectory_with_reset() {
        let p = LifParams { alpha: 0.9, theta: 1.0 };
        let (mut u, mut s) = (0.0f32, false);
        let mut trace = [0.0f32; 12];
        for v in trace.iter_mut() {
            u = membrane_step(&p, u, s, 1.5);
            s = u >= p.theta;
            *v = u;
        }
        let want = [
            0.15,
            0.285,
            0.4065,
            0.51585,
            0.614265,
            0.7028385,
            0.782_554_6,
            0.8542992,
            0.9188693,
            0.97698236,
            1.0292841,
            0.15,
        ];
        for (got, want) in trace.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn params_are_validated() {
        let mut p = NeuronParams::default();
        assert!(p.validate().is_ok());
        p.lif.alpha = 1.0;
        assert!(p.validate().is_err());
        p.lif.alpha = 0.9;
        p.window = f32::INFINITY;
        assert!(p.validate().is_ok());
        p.window = -1.0;
        assert!(p.validate().is_err());
    }
}
