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

/// The membrane update of a tile of at most 64 neurons, `u[i] = alpha * u[i] + (1 - alpha) *
/// x[i]` (the reset of the step before already applied), with the masks of
/// [`crate::spikes::build_from_masks`]: bit `i` of the first set where the new `u[i] >= theta`,
/// of the second where it is `>= lower`. One pass, eight lanes at a time; the same results as
/// the update followed by [`crate::spikes::build_into`].
///
/// ```
/// use spiketile_core::lif::integrate_masks;
/// let mut u = [0.0, 1.0, 2.0];
/// let masks = integrate_masks(&mut u, &[2.0, 1.0, 0.0], 0.5, 1.0, 0.9);
/// assert_eq!(u, [1.0, 1.0, 1.0 * 0.5 * 2.0]);
/// assert_eq!(masks, (0b111, 0b111));
/// ```
///
/// # Panics
/// If `u` has more than 64 membranes or `x` fewer than `u`.
#[inline(always)]
pub fn integrate_masks(u: &mut [f32], x: &[f32], alpha: f32, theta: f32, lower: f32) -> (u64, u64) {
    assert!(u.len() <= 64);
    let one_minus = 1.0 - alpha;
    let n = u.len();
    let x = &x[..n];
    let whole = n - n % 8;
    let (u8s, u_tail) = u.split_at_mut(whole);
    let (mut spikes, mut at_least_lower) =
        integrate_chunks(u8s, &x[..whole], (alpha, one_minus), (theta, lower));
    for (i, (v, &xi)) in u_tail.iter_mut().zip(&x[whole..]).enumerate() {
        *v = alpha * *v + one_minus * xi;
        spikes |= u64::from(*v >= theta) << (whole + i);
        at_least_lower |= u64::from(*v >= lower) << (whole + i);
    }
    (spikes, at_least_lower)
}

/// [`integrate_masks`] of whole chunks of 8 membranes: in AVX-512F or AVX2 where the CPU has it
/// (checked at run time), else 8 lanes per SSE2 pair ([`crate::simd::integrate8`]); the same results.
#[inline(always)]
fn integrate_chunks(
    u: &mut [f32],
    x: &[f32],
    (alpha, one_minus): (f32, f32),
    (theta, lower): (f32, f32),
) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512() {
        // SAFETY: the CPU runs AVX-512F code (checked at run time); whole chunks, at most 64
        // lanes.
        #[allow(unsafe_code)]
        return unsafe {
            crate::simd::integrate_chunks_avx512(u, x, (alpha, one_minus), (theta, lower))
        };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: the CPU runs AVX2 code (checked at run time); whole chunks, at most 64 lanes.
        #[allow(unsafe_code)]
        return unsafe {
            crate::simd::integrate_chunks_avx2(u, x, (alpha, one_minus), (theta, lower))
        };
    }
    let (mut spikes, mut at_least_lower) = (0u64, 0u64);
    for (c, (uc, xc)) in u.chunks_exact_mut(8).zip(x.chunks_exact(8)).enumerate() {
        let uc: &mut [f32; 8] = uc.try_into().expect("whole chunks");
        let xc: &[f32; 8] = xc.try_into().expect("whole chunks");
        let (s, l) = crate::simd::integrate8(uc, xc, (alpha, one_minus), (theta, lower));
        spikes |= u64::from(s) << (8 * c);
        at_least_lower |= u64::from(l) << (8 * c);
    }
    (spikes, at_least_lower)
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

    /// A deterministic spread of membranes and inputs around the threshold, with NaN and the
    /// infinities among them.
    fn values(seed: u32, n: usize) -> [f32; 64] {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, 0.9, -0.0];
        let mut x = seed.wrapping_mul(2_654_435_761);
        core::array::from_fn(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i < n && x.is_multiple_of(11) {
                special[(x / 11) as usize % special.len()]
            } else {
                (x % 4000) as f32 / 1000.0 - 1.0
            }
        })
    }

    /// The one-pass update and masks equal the update lane by lane followed by
    /// [`crate::spikes::build_into`], bit for bit, for every width up to 64 (whole chunks of 8
    /// and tails).
    #[test]
    fn integrate_masks_equals_update_then_build() {
        use crate::spikes::{build_from_masks, build_into};
        let (alpha, theta, window) = (0.95f32, 1.0f32, 0.1f32);
        for n in 1..=64 {
            for seed in 1..20 {
                let (u0, x) = (values(seed, n), values(seed + 1000, n));
                let mut want = u0;
                for (u, &x) in want[..n].iter_mut().zip(&x) {
                    *u = alpha * *u + (1.0 - alpha) * x;
                }
                let mut got = u0;
                let masks = integrate_masks(&mut got[..n], &x, alpha, theta, theta - window);
                let bits =
                    |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<heapless::Vec<u32, 64>>();
                assert_eq!(bits(&got[..n]), bits(&want[..n]), "n {n} seed {seed}");
                let (mut a, mut b) = ([0u16; 64], [0u16; 64]);
                let cap = n / 2 + 1;
                let from_masks = build_from_masks(masks.0, masks.1, &mut a[..cap]);
                let built = build_into(&want[..n], theta, window, &mut b[..cap]);
                assert_eq!(from_masks, built, "n {n} seed {seed}");
                assert_eq!(a, b, "n {n} seed {seed}");
            }
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
