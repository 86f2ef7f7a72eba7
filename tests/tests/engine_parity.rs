//! The tiled engine in exact mode equals the dense reference engine (SPEC §1, ARCHITECTURE).

mod common;

use common::*;
use spiketile::config::ModelConfig;
use spiketile::engine::dense::{DenseEngine, SpikeFn};
use spiketile::engine::tiled::TiledEngine;
use spiketile::engine::Engine;
use spiketile::model::Params;

fn scaled_init(cfg: &ModelConfig, seed: u64, gain: f32) -> Params {
    // Relative to a fixed gain of 8 (not the CLI default), so the regime stays put.
    let cfg = ModelConfig { init_gain: 8.0, ..cfg.clone() };
    let mut p = Params::init(&cfg, seed);
    for l in p.layers.iter_mut() {
        l.weight.iter_mut().for_each(|w| *w *= gain);
    }
    p
}

/// Trains both engines for `steps` batches and returns the largest relative weight difference.
fn train_both(cfg: &ModelConfig, threads: usize, steps: usize) -> f32 {
    train_both_counting(cfg, threads, steps).0
}

/// [`train_both`], also returning how many spikes and near-threshold ids the layers dropped.
fn train_both_counting(cfg: &ModelConfig, threads: usize, steps: usize) -> (f32, u64) {
    let params = scaled_init(cfg, 1, 1.5);
    let mut dense = DenseEngine::new(cfg, params.clone(), SpikeFn::Heaviside).unwrap();
    let mut tiled_cfg = cfg.clone();
    tiled_cfg.max_neurons_per_tile = Some(5);
    tiled_cfg.max_samples_per_tile = Some(3);
    let mut tiled = TiledEngine::new(&tiled_cfg, &params, threads).unwrap();
    assert!(tiled.plan().layers.iter().any(|l| l.splits.len() > 1 && l.replicas > 1));
    let data = random_samples(cfg, 8 * steps, 0.25, 9);
    let (mut total_spikes, mut overflow) = (0, 0);
    for s in 0..steps {
        let batch = batch(cfg, &data[s * 8..(s + 1) * 8]);
        let a = dense.run_batch(&batch, true).unwrap();
        let b = tiled.run_batch(&batch, true).unwrap();
        assert_eq!(a.counts, b.counts, "step {s}: output counts differ");
        assert!((a.loss_sum - b.loss_sum).abs() <= 1e-5 * a.loss_sum.abs().max(1.0));
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_eq!(x.spikes, y.spikes, "step {s}: layer spikes differ");
            assert_eq!(x.overflow, y.overflow, "step {s}: layer overflow differs");
            overflow += x.overflow;
        }
        total_spikes += a.layers.iter().map(|l| l.spikes).sum::<u64>();
    }
    assert!(total_spikes > 0, "the network must spike for the test to mean anything");
    let (pa, pb) = (dense.params(), tiled.params());
    assert!(pa != params, "training must change the weights");
    let mut worst = 0.0f32;
    for (la, lb) in pa.layers.iter().zip(&pb.layers) {
        worst = worst.max(rel_diff(&la.weight, &lb.weight));
        if let (Some(va), Some(vb)) = (&la.recurrent, &lb.recurrent) {
            worst = worst.max(rel_diff(va, vb));
        }
    }
    (worst, overflow)
}

#[test]
fn tiled_equals_dense_feed_forward_one_to_three_layers() {
    for hidden in [&[12][..], &[12, 9], &[10, 8, 6]] {
        let cfg = small_config(hidden, false);
        let d = train_both(&cfg, 1, 4);
        assert!(d < 1e-5, "hidden {hidden:?}: relative weight difference {d}");
    }
}

#[test]
fn tiled_equals_dense_recurrent_two_threads() {
    for hidden in [&[12][..], &[12, 9]] {
        let cfg = small_config(hidden, true);
        let d = train_both(&cfg, 2, 4);
        assert!(d < 1e-5, "hidden {hidden:?}: relative weight difference {d}");
    }
}

#[test]
fn tiled_equals_dense_sgd_mse_loss() {
    let mut cfg = small_config(&[12, 9], true);
    cfg.optimizer = "sgd".into();
    cfg.loss = "mse-count".into();
    cfg.lr = 0.5;
    let d = train_both(&cfg, 2, 3);
    assert!(d < 1e-5, "relative weight difference {d}");
}

#[test]
fn sparse_mode_tiled_equals_dense() {
    let mut cfg = small_config(&[12, 9], true);
    cfg.max_activity = 0.5;
    cfg.window = 1.5;
    cfg.output_max_activity = 0.5;
    cfg.output_window = 1.5;
    let (d, overflow) = train_both_counting(&cfg, 2, 3);
    assert!(d < 1e-5, "relative weight difference {d}");
    assert!(overflow > 0, "the buffers must overflow for the test to mean anything");
}

/// Spikes over capacity (2 of 12 hidden neurons): a tile that ran ahead assumed its spikes were
/// kept, so the merge must notice and run the replica again in lockstep.
#[test]
fn dropped_spikes_tiled_equals_dense() {
    let mut cfg = small_config(&[12, 9], false);
    cfg.max_activity = 0.1;
    let (d, overflow) = train_both_counting(&cfg, 2, 4);
    assert!(d < 1e-5, "relative weight difference {d}");
    assert!(overflow > 0, "spikes must be dropped for the test to mean anything");
}

/// The backward pass in blocks of steps (tiles running several steps in turn, layer after
/// layer) computes exactly what it computes step by step.
#[test]
fn backward_blocks_are_bit_identical_to_step_by_step() {
    let mut cfg = small_config(&[12, 9], false);
    cfg.max_neurons_per_tile = Some(4);
    cfg.max_samples_per_tile = Some(2);
    let params = scaled_init(&cfg, 3, 1.5);
    let data = random_samples(&cfg, 16, 0.25, 5);
    let run = |block: usize, threads: usize| {
        let mut e = TiledEngine::new(&cfg, &params, threads).unwrap();
        e.set_backward_block(block).unwrap();
        let mut losses = Vec::new();
        for s in 0..2 {
            let b = batch(&cfg, &data[s * 8..(s + 1) * 8]);
            losses.push(e.run_batch(&b, true).unwrap().loss_sum);
        }
        (losses, e.params(), e.optim_state())
    };
    let steps = run(1, 1);
    assert!(steps.1 != params, "training must change the weights");
    for (block, threads) in [(2, 1), (3, 2), (7, 3), (cfg.time_steps, 2)] {
        assert!(run(block, threads) == steps, "blocks of {block} on {threads} threads differ");
    }
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let mut cfg = small_config(&[12, 9], true);
    cfg.max_neurons_per_tile = Some(4);
    cfg.max_samples_per_tile = Some(2);
    let params = scaled_init(&cfg, 3, 1.5);
    let data = random_samples(&cfg, 16, 0.25, 5);
    let run = |threads: usize| {
        let mut e = TiledEngine::new(&cfg, &params, threads).unwrap();
        let mut losses = Vec::new();
        for s in 0..2 {
            losses
                .push(e.run_batch(&batch(&cfg, &data[s * 8..(s + 1) * 8]), true).unwrap().loss_sum);
        }
        (losses, e.params(), e.optim_state())
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(run(threads) == one, "{threads} threads differ from 1");
    }
}

/// An input spike id at or past the model's input width is an error naming the sample and step
/// in both engines (the tiles index weight rows by these ids without checking them again).
#[test]
fn input_ids_out_of_range_are_an_error_in_both_engines() {
    let cfg = small_config(&[6], false);
    let params = scaled_init(&cfg, 1, 1.5);
    let mut data = random_samples(&cfg, 3, 0.25, 4);
    // Sample 2, step 1: one channel past the last.
    let s = &mut data[2];
    let at = s.offsets[2] as usize;
    s.ids.insert(at, cfg.inputs as u16);
    s.offsets[2..].iter_mut().for_each(|o| *o += 1);
    let input = batch(&cfg, &data);
    let mut dense = DenseEngine::new(&cfg, params.clone(), SpikeFn::Heaviside).unwrap();
    let mut tiled = TiledEngine::new(&cfg, &params, 2).unwrap();
    let errors =
        [dense.run_batch(&input, true).unwrap_err(), tiled.run_batch(&input, true).unwrap_err()];
    for e in errors {
        let msg = format!("{e:#}");
        assert!(msg.contains("sample 2") && msg.contains("step 1"), "{msg}");
        assert!(msg.contains(&format!("id {}", cfg.inputs)), "{msg}");
    }
}
