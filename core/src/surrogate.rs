//! Surrogate derivatives of the spike function (SPEC §1.2).
//!
//! The forward pass spikes with the Heaviside step `H(u - theta)`; the backward pass replaces its
//! derivative by a smooth surrogate. SuperSpike (Zenke & Ganguli 2018):
//!
//! `sigma'(u) = 1 / (beta * |u - theta| + 1)^2`
//!
//! ```
//! use spiketile_core::Surrogate;
//! let s = Surrogate::SuperSpike { beta: 10.0 };
//! assert_eq!(s.grad(1.0, 1.0), 1.0);
//! assert!((s.grad(1.1, 1.0) - 0.25).abs() < 1e-6);
//! ```

use crate::math;

/// A surrogate derivative; an enum so that adding one is an exhaustive-match change.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Surrogate {
    /// SuperSpike with steepness `beta` (default 10).
    SuperSpike {
        /// Steepness; larger is narrower.
        beta: f32,
    },
}

impl Default for Surrogate {
    fn default() -> Self {
        Surrogate::SuperSpike { beta: 10.0 }
    }
}

impl Surrogate {
    /// The surrogate `dS/du` at membrane `u` for threshold `theta`.
    #[inline]
    pub fn grad(&self, u: f32, theta: f32) -> f32 {
        match *self {
            Surrogate::SuperSpike { beta } => {
                let x = beta * math::abs(u - theta) + 1.0;
                1.0 / (x * x)
            }
        }
    }

    /// A smooth spike function whose derivative *is* [`Surrogate::grad`]: its antiderivative,
    /// rising from 0 at `-inf` to `2 / beta` at `+inf`.
    ///
    /// Not used for training: it exists so that finite differences of a network that spikes with
    /// it check the BPTT plumbing exactly (the gradient of that network is what BPTT with the
    /// surrogate computes).
    pub fn smooth_spike(&self, u: f32, theta: f32) -> f32 {
        match *self {
            Surrogate::SuperSpike { beta } => {
                let x = u - theta;
                if x < 0.0 {
                    1.0 / (beta * (1.0 - beta * x))
                } else {
                    (2.0 - 1.0 / (1.0 + beta * x)) / beta
                }
            }
        }
    }

    /// Checks the parameters: `beta` finite and positive.
    pub fn validate(&self) -> Result<(), crate::TileError> {
        match *self {
            Surrogate::SuperSpike { beta } if beta.is_finite() && beta > 0.0 => Ok(()),
            Surrogate::SuperSpike { .. } => {
                Err(crate::TileError::InvalidParams("beta must be finite and > 0"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superspike_closed_form() {
        let s = Surrogate::SuperSpike { beta: 10.0 };
        for &(u, want) in &[(1.0f32, 1.0f32), (0.9, 0.25), (1.3, 1.0 / 16.0), (-1.0, 1.0 / 441.0)] {
            assert!((s.grad(u, 1.0) - want).abs() < 1e-6, "u={u}");
        }
    }

    #[test]
    fn smooth_spike_derivative_is_the_surrogate() {
        let s = Surrogate::SuperSpike { beta: 5.0 };
        for i in -40..40 {
            let u = 1.0 + i as f64 * 0.037;
            let h = 1e-3f64;
            let f = |x: f64| s.smooth_spike(x as f32, 1.0) as f64;
            let fd = (f(u + h) - f(u - h)) / (2.0 * h);
            let g = s.grad(u as f32, 1.0) as f64;
            assert!((fd - g).abs() < 2e-3 + 1e-2 * g, "u={u} fd={fd} g={g}");
        }
        assert!(s.smooth_spike(-1e6, 0.0) < 1e-6);
        assert!((s.smooth_spike(1e6, 0.0) - 0.4).abs() < 1e-6);
    }
}
