//! Finite differences check the BPTT plumbing (SPEC §1.5): with the smooth spike function whose
//! derivative is the SuperSpike surrogate, the network is differentiable and BPTT with the
//! surrogate computes its exact gradient. The tiled engine is then checked against the same dense
//! engine in `engine_parity.rs`.
//!
//! The resets still use the Heaviside step (a constant in BPTT, SPEC §1.5), so the loss has jumps
//! where a perturbation moves a membrane across threshold. Each weight's central difference is
//! therefore taken at `h` and `h/2`: where the two disagree the perturbation crossed a jump and
//! the weight is skipped. Per matrix, 40 weights are sampled; the median per-weight relative error
//! must be < 1e-3 and the norm-wise one < 5e-3 (float32 rounding of the forward pass puts a floor
//! of about 1e-4 under both). `beta = 1` keeps the gradients well above that floor.

mod common;

use common::*;
use spiketile::config::ModelConfig;
use spiketile::engine::dense::{DenseEngine, SpikeFn};
use spiketile::engine::InputBatch;
use spiketile::model::Params;

/// Weights sampled per matrix.
const SAMPLED: usize = 40;

fn mean_loss(cfg: &ModelConfig, params: &Params, batch: &InputBatch) -> f64 {
    let e = DenseEngine::new(cfg, params.clone(), SpikeFn::Smooth).unwrap();
    e.loss_and_grads(batch).unwrap().0 / batch.len as f64
}

/// Relative error `||fd - bptt|| / ||bptt||` over a sample of weights of every matrix.
fn check(cfg: &ModelConfig) {
    let samples = random_samples(cfg, 8, 0.3, 17);
    let batch = batch(cfg, &samples);
    let mut params = Params::init(cfg, 4);
    for l in params.layers.iter_mut() {
        l.weight.iter_mut().for_each(|w| *w *= 1.5);
    }
    let engine = DenseEngine::new(cfg, params.clone(), SpikeFn::Smooth).unwrap();
    let (_, grads, _) = engine.loss_and_grads(&batch).unwrap();
    let h = 0.02f32;
    let mut rng = Lcg(99);
    for l in 0..params.layers.len() {
        for recurrent in [false, true] {
            let len = if recurrent {
                params.layers[l].recurrent.as_ref().map_or(0, Vec::len)
            } else {
                params.layers[l].weight.len()
            };
            if len == 0 {
                continue;
            }
            let (mut num, mut den, mut skipped) = (0.0f64, 0.0f64, 0);
            let mut per_weight = Vec::new();
            for _ in 0..SAMPLED {
                let k = (rng.next() * len as f32) as usize % len;
                let get = |p: &mut Params| -> *mut f32 {
                    let layer = &mut p.layers[l];
                    if recurrent {
                        &mut layer.recurrent.as_mut().unwrap()[k]
                    } else {
                        &mut layer.weight[k]
                    }
                };
                let fd = |h: f32| {
                    let mut plus = params.clone();
                    let mut minus = params.clone();
                    // Safety: the pointers point into `plus`/`minus`, alive here.
                    unsafe {
                        *get(&mut plus) += h;
                        *get(&mut minus) -= h;
                    }
                    (mean_loss(cfg, &plus, &batch) - mean_loss(cfg, &minus, &batch))
                        / (2.0 * h as f64)
                };
                let (f1, f2) = (fd(h), fd(h / 2.0));
                if (f1 - f2).abs() > 0.005 * f1.abs().max(f2.abs()).max(1e-3) {
                    skipped += 1;
                    continue;
                }
                let fd = f1;
                let g = if recurrent {
                    grads.layers[l].recurrent.as_ref().unwrap()[k]
                } else {
                    grads.layers[l].weight[k]
                } as f64;
                num += (fd - g) * (fd - g);
                per_weight.push((fd - g).abs() / g.abs().max(1e-6));
                den += g * g;
            }
            assert!(den > 1e-12, "layer {l} (recurrent {recurrent}): gradient vanished");
            let rel = (num / den).sqrt();
            per_weight.sort_by(f64::total_cmp);
            let median = per_weight[per_weight.len() / 2];
            eprintln!(
                "{} layer {l} recurrent {recurrent}: relative error {rel:.2e}, median per weight \
                 {median:.2e} ({skipped} of {SAMPLED} skipped)",
                cfg.loss
            );
            assert!(
                SAMPLED - skipped >= 15,
                "layer {l}: only {} weights left to check",
                SAMPLED - skipped
            );
            assert!(median < 1e-3, "layer {l} (recurrent {recurrent}): median error {median:.2e}");
            assert!(rel < 5e-3, "layer {l} (recurrent {recurrent}): norm-wise error {rel:.2e}");
        }
    }
}

fn config(hidden: &[usize], recurrent: bool, loss: &str) -> ModelConfig {
    let mut cfg = small_config(hidden, recurrent);
    cfg.loss = loss.into();
    cfg.time_steps = 25;
    cfg.beta = 1.0;
    // Fixed here (not the CLI default) so that the regime this test was tuned for stays put.
    cfg.init_gain = 8.0;
    cfg
}

#[test]
fn bptt_matches_finite_differences_feed_forward_two_hidden_layers() {
    for loss in ["ce-count", "mse-count"] {
        check(&config(&[10, 8], false, loss));
    }
}

#[test]
fn bptt_matches_finite_differences_recurrent() {
    for loss in ["ce-count", "mse-count"] {
        check(&config(&[10, 8], true, loss));
    }
}
