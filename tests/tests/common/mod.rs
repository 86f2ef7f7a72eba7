//! Shared helpers of the workspace tests: small models and deterministic random data.

#![allow(dead_code)]

use spiketile::config::ModelConfig;
use spiketile::data::BinnedSample;
use spiketile::engine::InputBatch;

/// Deterministic pseudo-random numbers in [0, 1).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// A small exact-mode model.
pub fn small_config(hidden: &[usize], recurrent: bool) -> ModelConfig {
    ModelConfig { hidden: hidden.to_vec(), recurrent, ..spiketile::config::test_config() }
}

/// `n` random binned samples with about `activity` of the inputs spiking per step.
pub fn random_samples(cfg: &ModelConfig, n: usize, activity: f32, seed: u64) -> Vec<BinnedSample> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|k| {
            let mut offsets = vec![0u32];
            let mut ids = Vec::new();
            for _ in 0..cfg.time_steps {
                for c in 0..cfg.inputs as u16 {
                    if r.next() < activity {
                        ids.push(c);
                    }
                }
                offsets.push(ids.len() as u32);
            }
            BinnedSample { offsets, ids, label: (k % cfg.classes) as u16 }
        })
        .collect()
}

/// The input batch of `samples` for `cfg`.
pub fn batch(cfg: &ModelConfig, samples: &[BinnedSample]) -> InputBatch {
    let refs: Vec<&BinnedSample> = samples.iter().collect();
    InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs))
}

/// Largest absolute difference relative to the largest magnitude.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().chain(b).fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
