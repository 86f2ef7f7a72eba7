//! Readout losses on output spike counts `c_k = sum_t S_L,k[t]` (SPEC §1.3).
//!
//! - [`LossKind::CeCount`]: softmax cross-entropy of the counts against the label;
//! - [`LossKind::MseCount`]: `sum_k (softmax(c)_k - onehot_k)^2`.
//!
//! Both are averaged over the batch by the caller through `scale = 1 / B` on the gradient.
//! Prediction: `argmax_k c_k`, ties to the lowest index.
//!
//! ```
//! use spiketile_core::loss::{loss_and_grad, predict, LossKind};
//! let counts = [0.0f32, 0.0];
//! let mut g = [0.0f32; 2];
//! let l = loss_and_grad(LossKind::CeCount, &counts, 1, 1.0, &mut g);
//! assert!((l - 2f32.ln()).abs() < 1e-3); // within 1e-6 with libm; the `fast-math` logarithm is coarser
//! assert_eq!(g, [0.5, -0.5]);
//! assert_eq!(predict(&counts), 0);
//! ```

use crate::math;

/// Which loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LossKind {
    /// Softmax cross-entropy on counts (default).
    CeCount,
    /// Squared error of softmax(counts) against one-hot (the IPU benchmarks' loss).
    MseCount,
}

/// Writes `softmax(c)` into `p` (same length).
fn softmax(c: &[f32], p: &mut [f32]) {
    let max = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &c) in p.iter_mut().zip(c) {
        *p = math::exp(c - max);
        sum += *p;
    }
    for p in p.iter_mut() {
        *p /= sum;
    }
}

/// Loss of one sample, and `scale * dL/dc` written into `grad` (same length as `counts`).
///
/// # Panics
/// If `grad.len() != counts.len()` or `label >= counts.len()` (programming errors: labels are
/// validated when data is loaded).
pub fn loss_and_grad(
    kind: LossKind,
    counts: &[f32],
    label: usize,
    scale: f32,
    grad: &mut [f32],
) -> f32 {
    assert!(grad.len() == counts.len() && label < counts.len());
    softmax(counts, grad);
    match kind {
        LossKind::CeCount => {
            let max = counts.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = counts.iter().map(|&c| math::exp(c - max)).sum();
            let loss = max + math::ln(sum) - counts[label];
            grad[label] -= 1.0;
            for g in grad.iter_mut() {
                *g *= scale;
            }
            loss
        }
        LossKind::MseCount => {
            let mut loss = 0.0;
            let mut dot = 0.0; // sum_k dL/dp_k * p_k
            for (k, &p) in grad.iter().enumerate() {
                let e = p - if k == label { 1.0 } else { 0.0 };
                loss += e * e;
                dot += 2.0 * e * p;
            }
            for (k, p) in grad.iter_mut().enumerate() {
                let e = *p - if k == label { 1.0 } else { 0.0 };
                *p = *p * (2.0 * e - dot) * scale;
            }
            loss
        }
    }
}

/// `argmax_k counts[k]`, ties to the lowest index; 0 for an empty slice.
pub fn predict(counts: &[f32]) -> usize {
    let mut best = 0;
    for (k, &c) in counts.iter().enumerate() {
        if c > counts[best] {
            best = k;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_grad(kind: LossKind, c: &[f32], label: usize) -> [f64; 4] {
        let mut out = [0.0; 4];
        let mut scratch = [0.0f32; 4];
        for k in 0..4 {
            let h = 1e-2f32;
            let (mut a, mut b) = ([0.0f32; 4], [0.0f32; 4]);
            a.copy_from_slice(c);
            b.copy_from_slice(c);
            a[k] += h;
            b[k] -= h;
            let la = loss_and_grad(kind, &a, label, 1.0, &mut scratch) as f64;
            let lb = loss_and_grad(kind, &b, label, 1.0, &mut scratch) as f64;
            out[k] = (la - lb) / (2.0 * h as f64);
        }
        out
    }

    #[test]
    fn gradients_match_finite_differences() {
        let c = [3.0f32, 1.0, 4.0, 0.0];
        for kind in [LossKind::CeCount, LossKind::MseCount] {
            let mut g = [0.0f32; 4];
            loss_and_grad(kind, &c, 1, 1.0, &mut g);
            let fd = numeric_grad(kind, &c, 1);
            for k in 0..4 {
                assert!((g[k] as f64 - fd[k]).abs() < 1e-3, "{kind:?} {k}: {} vs {}", g[k], fd[k]);
            }
        }
    }

    #[test]
    fn mse_value_and_ties() {
        let mut g = [0.0f32; 2];
        let l = loss_and_grad(LossKind::MseCount, &[0.0, 0.0], 0, 0.5, &mut g);
        assert!((l - 0.5).abs() < 1e-6);
        assert_eq!(predict(&[2.0, 5.0, 5.0]), 1);
    }
}
