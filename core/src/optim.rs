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
                let k = AdamConsts {
                    b1: self.beta1,
                    b2: self.beta2,
                    bc2_sqrt: math::sqrt(1.0 - math::powi(self.beta2, step)),
                    step_size: self.lr / bc1,
                    eps: self.eps,
                };
                // The vector kernel takes whole groups of lanes, the loop below the rest.
                let done = adam_lanes(&k, w, g, m, v);
                let (w, g, m, v) = (&mut w[done..], &g[done..], &mut m[done..], &mut v[done..]);
                let AdamConsts { b1, b2, bc2_sqrt, step_size, eps } = k;
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = math::sqrt(*v) / bc2_sqrt + eps;
                    *w -= step_size * (*m / denom);
                }
            }
        }
    }
}

/// Adam's constants of one step.
struct AdamConsts {
    b1: f32,
    b2: f32,
    bc2_sqrt: f32,
    step_size: f32,
    eps: f32,
}

/// Adam on the first `4 * (len / 4)` weights, four lanes at a time; returns how many it did.
///
/// The same operations as the scalar loop of [`Optimizer::step`], in the same order, lane by
/// lane (SSE's `sqrtps` and `divps` round like `sqrtss` and `divss`: correctly), so the results
/// are bit-identical. Only on x86-64 with the exact `libm` square root; elsewhere (and with the
/// `fast-math` feature, whose square root is approximate) it does nothing.
#[cfg(all(target_arch = "x86_64", not(feature = "fast-math")))]
#[allow(unsafe_code)]
fn adam_lanes(k: &AdamConsts, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> usize {
    use core::arch::x86_64::*;
    // Sixteen lanes at a time first where the CPU has AVX-512F, then four.
    let wide = if crate::simd::avx512() {
        // SAFETY: the CPU runs AVX-512F code (checked at run time).
        unsafe { adam_lanes_avx512(k, w, g, m, v) }
    } else {
        0
    };
    let (w, g, m, v) = (&mut w[wide..], &g[wide..], &mut m[wide..], &mut v[wide..]);
    let n = w.len().min(g.len()).min(m.len()).min(v.len()) / 4 * 4;
    // SAFETY: SSE is part of the x86-64 baseline; every load and store is of lanes
    // `i .. i + 4 <= n`, within all four slices.
    unsafe {
        let (b1, b2) = (_mm_set1_ps(k.b1), _mm_set1_ps(k.b2));
        let (ob1, ob2) = (_mm_set1_ps(1.0 - k.b1), _mm_set1_ps(1.0 - k.b2));
        let (bc2, step, eps) =
            (_mm_set1_ps(k.bc2_sqrt), _mm_set1_ps(k.step_size), _mm_set1_ps(k.eps));
        for i in (0..n).step_by(4) {
            let (pw, pm, pv) =
                (w.as_mut_ptr().add(i), m.as_mut_ptr().add(i), v.as_mut_ptr().add(i));
            let gi = _mm_loadu_ps(g.as_ptr().add(i));
            let mi = _mm_add_ps(_mm_mul_ps(b1, _mm_loadu_ps(pm)), _mm_mul_ps(ob1, gi));
            let vi =
                _mm_add_ps(_mm_mul_ps(b2, _mm_loadu_ps(pv)), _mm_mul_ps(_mm_mul_ps(ob2, gi), gi));
            let denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), bc2), eps);
            let wi = _mm_sub_ps(_mm_loadu_ps(pw), _mm_mul_ps(step, _mm_div_ps(mi, denom)));
            _mm_storeu_ps(pm, mi);
            _mm_storeu_ps(pv, vi);
            _mm_storeu_ps(pw, wi);
        }
    }
    wide + n
}

/// [`adam_lanes`] sixteen lanes at a time (the same operations lane by lane; AVX-512's square
/// root and division round correctly too) on the first `16 * (len / 16)` weights; returns how
/// many it did. The update of a W-sized network: 0.13 ms of SSE's arithmetic per batch.
///
/// # Safety
/// The CPU must run AVX-512F code.
#[cfg(all(target_arch = "x86_64", not(feature = "fast-math")))]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn adam_lanes_avx512(
    k: &AdamConsts,
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> usize {
    use core::arch::x86_64::*;
    let n = w.len().min(g.len()).min(m.len()).min(v.len()) / 16 * 16;
    let (b1, b2) = (_mm512_set1_ps(k.b1), _mm512_set1_ps(k.b2));
    let (ob1, ob2) = (_mm512_set1_ps(1.0 - k.b1), _mm512_set1_ps(1.0 - k.b2));
    let (bc2, step, eps) =
        (_mm512_set1_ps(k.bc2_sqrt), _mm512_set1_ps(k.step_size), _mm512_set1_ps(k.eps));
    for i in (0..n).step_by(16) {
        // SAFETY: every load and store is of lanes `i .. i + 16 <= n`, within all four slices.
        unsafe {
            let (pw, pm, pv) =
                (w.as_mut_ptr().add(i), m.as_mut_ptr().add(i), v.as_mut_ptr().add(i));
            let gi = _mm512_loadu_ps(g.as_ptr().add(i));
            let mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(pm)), _mm512_mul_ps(ob1, gi));
            let vi = _mm512_add_ps(
                _mm512_mul_ps(b2, _mm512_loadu_ps(pv)),
                _mm512_mul_ps(_mm512_mul_ps(ob2, gi), gi),
            );
            let denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2), eps);
            let wi =
                _mm512_sub_ps(_mm512_loadu_ps(pw), _mm512_mul_ps(step, _mm512_div_ps(mi, denom)));
            _mm512_storeu_ps(pm, mi);
            _mm512_storeu_ps(pv, vi);
            _mm512_storeu_ps(pw, wi);
        }
    }
    n
}

#[cfg(not(all(target_arch = "x86_64", not(feature = "fast-math"))))]
fn adam_lanes(_: &AdamConsts, _: &mut [f32], _: &[f32], _: &mut [f32], _: &mut [f32]) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector lanes and the scalar loop give the same bits: odd lengths (a scalar tail),
    /// and values across magnitudes, zeros and sub-normals included.
    #[test]
    fn adam_lanes_equal_the_scalar_loop() {
        let opt = Optimizer::adam(0.01);
        let vals = [0.3f32, -2.0, 0.0, 1e-30, -7.5e-39, 1e-3, 123.0, -0.0, 4.2e-5, 0.77, -1e4];
        // 40 and 71: sixteen lanes (AVX-512F), then four, then one at a time.
        for len in [1usize, 4, 7, 11, 33, 40, 71] {
            // The values above, each scaled by a factor of its own in [1, 2) (so that every
            // lane rounds differently).
            let at = |i: usize, s: usize| {
                let f = 1.0 + ((i * 2654435761 + s * 40503) % 1000) as f32 / 1000.0;
                vals[(i * 7 + s) % vals.len()] * f
            };
            let g: Vec<f32> = (0..len).map(|i| at(i, 0)).collect();
            let (mut w1, mut m1, mut v1): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                (0..len).map(|i| at(i, 3)).collect(),
                (0..len).map(|i| at(i, 5) * 0.1).collect(),
                (0..len).map(|i| at(i, 2).abs()).collect(),
            );
            let (mut w2, mut m2, mut v2) = (w1.clone(), m1.clone(), v1.clone());
            for step in 1..4 {
                opt.step(step, &mut w1, &g, &mut m1, &mut v1);
                // The scalar loop alone: one weight at a time.
                for i in 0..len {
                    let (w, m, v) = (&mut w2[i..i + 1], &mut m2[i..i + 1], &mut v2[i..i + 1]);
                    opt.step(step, w, &g[i..i + 1], m, v);
                }
            }
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&w1), bits(&w2), "weights, len {len}");
            assert_eq!(bits(&m1), bits(&m2), "m, len {len}");
            assert_eq!(bits(&v1), bits(&v2), "v, len {len}");
        }
    }

    /// Pinned against PyTorch's Adam: the first step moves every weight by about `lr * sign(g)`.
    #[test]
    fn adam_first_steps() {
        let opt = Optimizer::adam(0.1);
        let mut w = [1.0f32, -1.0, 0.5];
        let g = [0.3f32, -2.0, 0.0];
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        // The `fast-math` square root is approximate (micromath's, to about 2 %: here the first
        // step moves the first weight by 0.0982 instead of 0.1).
        let tol = if cfg!(feature = "fast-math") { 2.5e-3 } else { 1e-6 };
        opt.step(1, &mut w, &g, &mut m, &mut v);
        assert!((w[0] - 0.9).abs() < tol && (w[1] + 0.9).abs() < tol && w[2] == 0.5, "{w:?}");
        opt.step(2, &mut w, &g, &mut m, &mut v);
        assert!((w[0] - 0.8).abs() < 10.0 * tol, "{}", w[0]);
    }
}
