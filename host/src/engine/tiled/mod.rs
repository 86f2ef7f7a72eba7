//! The bulk-synchronous tile engine (SPEC §3).
//!
//! Every layer is planned onto tiles ([`crate::plan`]); each tile is a cache-line-aligned arena of
//! exactly its footprint that the core's [`Tile`] re-attaches to whenever it runs. One batch is
//! a fixed sequence of *phases* separated by a [`SpinBarrier`]; inside a phase, every worker
//! thread runs the work units [`super::schedule::assign`] gave it (by their measured cost in the
//! last batch, the same units from batch to batch, so a tile's memory stays in one core's
//! cache). The replicas of a tile column `(l, p)` are split into at most [`REPLICA_GROUPS`]
//! contiguous *groups* `(l, p, g)`; a group's first replica is its leader, whose gradient buffers
//! the others accumulate into. Every replica's tiles read one copy of their column's weights,
//! which the update writes from replica 0 (the only one whose own weights and optimizer state
//! are kept: the others' weights would be bit-identical copies, so they are neither copied nor
//! touched).
//!
//! The math is one superstep per time step (SPEC §1, §3); the phases group many supersteps where
//! that changes no result. Forward, layer by layer: the tiles of a feed-forward layer run every
//! step at once, taking their spikes as kept, and the merge then checks that guess a few steps
//! at a time, tile after tile (`merge_ahead`). Backward, in blocks of steps from the end
//! ([`TiledEngine::backward_block`]), layer by layer (top down) within a block, each tile
//! gathering its `dL/dS` from the partials of the layer above (summed over that layer's tiles
//! first, where it has several per replica: in a phase of their own, `sum_partials`, or, where
//! one unit runs all of a replica group's columns, inside the unit: `LayerRt::unit_sums`). With
//! a recurrent layer, which exchanges with itself every step, its forward runs in lockstep
//! inside the merge and the backward runs step by step, every layer in each step's phase:
//!
//! | phase | unit | writes | reads |
//! |---|---|---|---|
//! | forward ahead, layer `l` (feed-forward) | replica group `(l, p, g)`: its replicas in turn, all steps | their arenas, their rows of `ahead_raw` | layer buffers of `l-1`, the column's weights |
//! | forward merge, layer `l` | replica `(l, r)` | its tiles (commit; lockstep, or running ahead again after a drop: everything), their rows of `ahead_raw`, layer buffers and `starts` of its samples | its tiles, layer buffers of `l-1`, the columns' weights |
//! | loss | thread 0 | counts, `dL/dc` | output layer buffers |
//! | lists, layer `l` with deferred input-weight gradients (the first alongside the loss) | replica group and run `(l, g, run)` | its lists of uses | layer buffers of `l-1` (or the input batch) |
//! | backward, layer `l` and a block of steps (or all layers and one step) | replica group `(l, p, g)`, or `(l, all columns, g)` with `unit_sums` | their arenas, the leader's gradients, their partials of those steps (with `unit_sums` their sums, in `part_sum`; deferred: their `dL/dc` vectors in the thread's scratch, or step by step in the unit's own buffer) | layer buffers, `starts`, partials of later steps, `dL/dc`, the column's weights |
//! | backward sum, layer `l > 0` of several tiles per replica without `unit_sums`, a block of steps | replica `(l, r)` | `part_sum` of its samples at those steps | its tiles' partials of those steps, layer buffers of `l-1` |
//! | update | tile column `(l, p)` | replica 0's and the group leaders' tiles `(l, *, p)`, the column's weights | the same |
//!
//! No region is written by two units of one phase or read by a unit while another writes it, so
//! results are bit-identical for any number of threads; sums over tiles and replicas run in a
//! fixed order.
//!
//! With [`Engine::start_trace`], the next training batches record an execution trace
//! ([`super::trace`]): each worker appends one span per phase and one per barrier wait to its own
//! preallocated buffer. Tracing changes no result, and costs one branch per phase when off.
//!
//! A layer whose tile columns' input-weight gradient rows exceed L1 leaves those gradients to
//! the replica group: its tiles keep a run of steps' `dL/dc` vectors, and the
//! leader's gradient rows take them once per run from lists of uses built before the backward
//! pass (`deferred`; the same sums in the same order).
//!
//! The engine's parts, one module each: `layer` (a layer's tiles and buffers), `units` (work
//! units and their threads), `run` (one batch: the phases every thread runs), `forward`
//! (running ahead, the merge, the loss), `backward` (the `dL/dS` gather, the backward steps, the
//! sums of partials), `dlds` (the `dL/dS` lookups of a layer under one buffer of partials),
//! `deferred` (the deferred input-weight gradients) and `weights` (the update; reading and
//! writing parameters).

mod arenas;
mod backward;
mod deferred;
mod dlds;
mod forward;
mod layer;
#[cfg(target_arch = "x86_64")]
mod lean_merge;
mod run;
mod units;
mod weights;

use self::arenas::Arenas;
use self::deferred::Deferred;
#[cfg(doc)]
use self::forward::PADDED_MERGE_IDS;
use self::layer::{backward_block, col_lens, part_sum_len, unit_sums, LayerRt, TileHome};
use super::shared::Shared;
use super::trace::{ExecTrace, TraceBuffers, TraceMeta};
use super::{BatchResult, Engine, EngineMemory, InputBatch};
use crate::config::ModelConfig;
use crate::engine::pool::Pool;
use crate::model::{OptimState, Params};
use crate::plan::Plan;
use anyhow::{anyhow, ensure, Result};
use spiketile_core::{Optimizer, TileConfig, TileLayout};
use std::sync::atomic::AtomicU64;
#[cfg(doc)]
use {super::barrier::SpinBarrier, spiketile_core::Tile};

pub use crate::plan::REPLICA_GROUPS;

/// The tiled bulk-synchronous engine.
pub struct TiledEngine {
    cfg: ModelConfig,
    plan: Plan,
    optimizer: Optimizer,
    layers: Vec<LayerRt>,
    /// Output counts `[b][class]` and `dL/dc`.
    counts: Shared<f32>,
    dldc: Shared<f32>,
    threads: usize,
    /// The worker threads a batch runs on (`threads` of them, the caller's included).
    pool: Pool,
    step: u32,
    /// Execution trace being recorded, if any.
    trace: Option<Box<TraceBuffers>>,
    /// Nanoseconds each unit spent in each `Measured` phase in the last training batch: the
    /// schedule's cost estimate for the next one (zeros: no measurement yet).
    unit_ns: [Vec<AtomicU64>; 3],
    /// Per layer: whether its tiles run all steps ahead of the merge in the next batch
    /// (feed-forward layers of which fewer than [`run::LOCKSTEP_SHARE`] of the replicas
    /// dropped a spike in the last batch).
    ahead: Vec<bool>,
    /// Per layer: whether the merge of the next batch appends each tile-sample's ids without a
    /// loop ([`forward::append_block`]): where the last batch's tiles offered it at least
    /// [`PADDED_MERGE_IDS`] ids per sample and step.
    merge_padded: Vec<bool>,
    /// Per layer: whether its merge may take the lean way where it fits
    /// (`lean_merge::merge_lean`; always, but in tests that compare it with the general one).
    lean_merge: Vec<bool>,
    /// Backward steps per block (`layer::backward_block`): the backward pass runs the steps in
    /// blocks of this many from the end, one layer after the other (top down) within a block,
    /// each tile running the block's steps in turn; 1 = every layer in each step's phase.
    block: usize,
    /// The memory of every tile's arena (after `layers`, whose homes point into it).
    arenas: Arenas,
    /// Per step `t`, the slot of the partial-`dL/dS` buffers that holds it, `t % (block + 1)`
    /// (looked up at every sample and step rather than divided).
    slots: Vec<usize>,
    /// The input activity the first layer's deferred runs were last planned for (`None`: none
    /// yet, the base size; see [`deferred::run_bytes`]).
    input_activity: Option<f64>,
}

impl TiledEngine {
    /// Plans `cfg` and builds every tile with `params` as weights.
    pub fn new(cfg: &ModelConfig, params: &Params, threads: usize) -> Result<Self> {
        let plan = Plan::new(cfg)?;
        let b = cfg.batch_size;
        let t_steps = cfg.time_steps;
        let optimizer = cfg.optimizer()?;
        let block = backward_block(&plan, t_steps);
        // Every tile's layout first: the arenas are one mapping.
        let mut layouts = Vec::new();
        for (li, lp) in plan.layers.iter().enumerate() {
            let np = cfg.layer_params(li + 1);
            for _ in 0..lp.replicas {
                for &(first, n) in &lp.splits {
                    let tc = TileConfig {
                        neurons: n,
                        first_neuron: first,
                        layer_width: lp.width,
                        inputs: lp.inputs,
                        recurrent: lp.recurrent,
                        batch: lp.micro_batch,
                        time_steps: t_steps,
                        in_capacity: lp.in_capacity,
                        layer_capacity: lp.capacity,
                        optimizer: optimizer.kind,
                    };
                    layouts.push(TileLayout::new(tc, np).map_err(|e| anyhow!("{e}"))?);
                }
            }
        }
        let words: Vec<usize> = layouts.iter().map(|l| l.arena_bytes().div_ceil(4)).collect();
        let (arenas, ptrs) = Arenas::new(&words)?;
        let mut homes_of = layouts.into_iter().zip(ptrs).map(|(l, a)| TileHome::new(l, a));
        let mut layers = Vec::new();
        for (li, lp) in plan.layers.iter().enumerate() {
            let mut homes: Vec<TileHome> = homes_of.by_ref().take(lp.tiles()).collect();
            for home in &mut homes {
                home.tile().map_err(|e| anyhow!("building a tile: {e}"))?;
            }
            let (r, p, m) = (lp.replicas, lp.splits.len(), lp.micro_batch);
            let col_at: Vec<(usize, usize, usize)> = homes[..p]
                .iter()
                .scan(0, |at, h| {
                    let (nw, nv) = col_lens(h.layout.config());
                    *at += nw + nv;
                    Some((*at - nw - nv, nw, nv))
                })
                .collect();
            let col_total = col_at.last().map_or(0, |&(at, nw, nv)| at + nw + nv);
            let (unit_sums, src_len, sum_len) = backward_lens(li, lp, block, b, threads.max(1));
            layers.push(LayerRt {
                plan: lp.clone(),
                tiles: Shared::from_vec(homes),
                col_w: Shared::new(col_total),
                col_at,
                buf: Shared::new(b * t_steps * (lp.capacity + 2)),
                starts: Shared::new(t_steps * b * lp.splits.len() * 2),
                part_src: Shared::new(src_len),
                part_sum: Shared::new(sum_len),
                part_rec: Shared::new(if lp.recurrent { 2 * r * p * m * lp.capacity } else { 0 }),
                ahead_raw: Shared::new(if lp.recurrent { 0 } else { lp.tiles() * t_steps * 2 }),
                part_row: (0..b).map(|s| s / m * p * m + s % m).collect(),
                deferred: None,
                unit_sums,
            });
            let lr = layers.last_mut().expect("just pushed");
            lr.deferred = Deferred::new(lr, t_steps, block, None);
        }
        let ahead: Vec<bool> = plan.layers.iter().map(|lp| !lp.recurrent).collect();
        let mut engine = TiledEngine {
            cfg: cfg.clone(),
            plan,
            optimizer,
            layers,
            counts: Shared::new(b * cfg.classes),
            dldc: Shared::new(b * cfg.classes),
            threads: threads.max(1),
            pool: Pool::new(threads),
            step: 0,
            trace: None,
            unit_ns: Default::default(),
            merge_padded: vec![false; ahead.len()],
            lean_merge: vec![true; ahead.len()],
            ahead,
            block,
            arenas,
            slots: slots(t_steps, block),
            input_activity: None,
        };
        let groups: usize = engine.layers.iter().map(|lr| lr.p() * lr.groups()).sum();
        let replicas: usize = engine.layers.iter().map(|lr| lr.plan.replicas).sum();
        engine.unit_ns = [counters(groups), counters(replicas), counters(engine.back_units())];
        engine.set_state(params, None)?;
        Ok(engine)
    }

    /// The plan the engine runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Backward steps per block: the backward pass runs the steps in blocks of this many from
    /// the end, layer after layer within a block; 1 = step by step, every layer together (a
    /// network with a recurrent layer).
    pub fn backward_block(&self) -> usize {
        self.block
    }

    /// Runs the backward pass in blocks of `steps` steps (at least 1; 1 = step by step, every
    /// layer together) instead of the planned size, which only a network without recurrent
    /// layers can change. Results do not depend on it; for tests and experiments.
    pub fn set_backward_block(&mut self, steps: usize) -> Result<()> {
        ensure!(
            steps >= 1 && (steps == 1 || !self.plan.layers.iter().any(|lp| lp.recurrent)),
            "backward blocks of {steps} steps: at least 1, and 1 with a recurrent layer"
        );
        self.block = steps;
        self.configure_backward();
        Ok(())
    }

    /// Everything of the backward pass that follows from the block size and the thread count:
    /// the partials' buffers and their slots, each layer's deferral and whether its units sum
    /// their partials ([`LayerRt::unit_sums`]), and the backward units' cost counters.
    fn configure_backward(&mut self) {
        let (t_steps, block, batch) = (self.cfg.time_steps, self.block, self.cfg.batch_size);
        self.slots = slots(t_steps, block);
        for (li, lr) in self.layers.iter_mut().enumerate() {
            let activity = if li == 0 { self.input_activity } else { None };
            lr.deferred = Deferred::new(lr, t_steps, block, activity);
            let (unit_sums, src_len, sum_len) =
                backward_lens(li, &lr.plan, block, batch, self.threads);
            (lr.unit_sums, lr.part_src, lr.part_sum) =
                (unit_sums, Shared::new(src_len), Shared::new(sum_len));
        }
        self.unit_ns[2] = counters(self.back_units());
    }

    /// Plans the first layer's deferred runs again for a batch whose input holds a fraction
    /// `activity` of the inputs per sample and step, if it would take runs of another size
    /// ([`Deferred::replan`]): sparse input gets longer runs. The gradients do not depend on
    /// the runs.
    fn fit_runs(&mut self, activity: f64) {
        let (t_steps, block) = (self.cfg.time_steps, self.block);
        let Some(lr) = self.layers.first_mut() else { return };
        if lr.deferred.as_ref().is_some_and(|d| d.replan(activity)) {
            self.input_activity = Some(activity);
            lr.deferred = Deferred::new(lr, t_steps, block, Some(activity));
        }
    }

    /// How many backward units there are (see [`Units::back`](units::Units)).
    fn back_units(&self) -> usize {
        self.layers.iter().map(|lr| lr.p() / lr.back_cols(0).len() * lr.groups()).sum()
    }

    /// Sets the number of worker threads (results do not depend on it).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
        if self.pool.threads() != self.threads {
            self.pool = Pool::new(self.threads);
        }
        self.configure_backward();
    }
}

impl Engine for TiledEngine {
    fn run_batch(&mut self, input: &InputBatch, train: bool) -> Result<BatchResult> {
        self.run(input, train)
    }

    fn params(&mut self) -> Params {
        self.read_params()
    }

    fn optim_state(&mut self) -> OptimState {
        self.read_optim_state()
    }

    fn set_state(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()> {
        self.write_state(params, optim)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Replica 0's tiles write everything but their input histories (the engine keeps the
    /// source buffers: [`Tile::forward_external`]); the group leaders' tiles also leave their
    /// weights and optimizer state alone (every replica reads the column's weights), and the
    /// other replicas' tiles their gradients too (they accumulate into their leader's). Counted
    /// by whole regions, not pages. The buffers are every `Shared` buffer of the engine.
    fn memory(&mut self) -> Option<EngineMemory> {
        let mut bytes = 0;
        let mut buffers = 4 * (self.counts.len() + self.dldc.len());
        for lr in &mut self.layers {
            buffers += 2 * (lr.buf.len() + lr.starts.len())
                + 4 * (lr.col_w.len()
                    + lr.part_src.len()
                    + lr.part_sum.len()
                    + lr.part_rec.len()
                    + lr.ahead_raw.len())
                + lr.deferred.as_ref().map_or(0, Deferred::bytes);
            let p_count = lr.p();
            let leaders: Vec<bool> = (0..lr.plan.replicas).map(|r| lr.leads_group(r)).collect();
            for (i, home) in lr.tiles.get_mut().iter().enumerate() {
                let f = home.layout.config().footprint().ok()?;
                let step_state = f.state + f.history - f.input_history + f.exchange;
                bytes += match i / p_count {
                    0 => step_state + f.weights + f.grads + f.optimizer,
                    r if leaders[r] => step_state + f.grads,
                    _ => step_state,
                };
            }
        }
        Some(EngineMemory { tile_written: bytes, buffers, huge_pages: self.arenas.huge() })
    }

    fn start_trace(&mut self, batches: usize) -> Result<()> {
        let meta = TraceMeta {
            layers: self.layers.len(),
            tiles: self.plan.tiles(),
            threads: self.threads,
            time_steps: self.cfg.time_steps,
            batch_size: self.cfg.batch_size,
            steps: Vec::new(),
        };
        self.trace = Some(Box::new(TraceBuffers::new(batches, meta)));
        Ok(())
    }

    fn take_trace(&mut self) -> Option<ExecTrace> {
        self.trace.take().map(|tr| tr.finish())
    }
}

/// Layer `li`'s (planned as `lp`) backward buffers for blocks of `block` steps, batches of
/// `batch` samples and `threads` threads: whether its units sum their partials
/// ([`LayerRt::unit_sums`]), and the lengths of its `part_src` and `part_sum`. The first layer's
/// partials (`dL/dS` of the data) have no reader; a layer whose units sum its partials writes
/// only the sums.
fn backward_lens(
    li: usize,
    lp: &crate::plan::LayerPlan,
    block: usize,
    batch: usize,
    threads: usize,
) -> (bool, usize, usize) {
    let sums = unit_sums(li, lp, block, threads);
    let src = if li == 0 || sums { 0 } else { lp.tiles() * lp.micro_batch };
    (sums, (block + 1) * src * lp.in_capacity, part_sum_len(li, lp, block, batch))
}

/// `n` cost counters at zero (see [`TiledEngine::unit_ns`]).
fn counters(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// The slot of the partial-`dL/dS` buffers of each of `t_steps` steps, for backward blocks of
/// `block` steps: `t % (block + 1)`.
fn slots(t_steps: usize, block: usize) -> Vec<usize> {
    (0..t_steps).map(|t| t % (block + 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`Engine::memory`] counts as not written stays untouched through training: the input
    /// histories of every tile, the weights and optimizer state of every replica but the first,
    /// and the gradients of every replica that leads no group.
    #[test]
    fn regions_counted_unwritten_stay_zero() {
        let mut cfg = crate::config::test_config();
        (cfg.max_samples_per_tile, cfg.max_neurons_per_tile) = (Some(2), Some(4));
        let mut engine = TiledEngine::new(&cfg, &Params::init(&cfg, 3), 2).unwrap();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
        for _ in 0..2 {
            let samples = crate::cli::bench::random_batch(&cfg, 0.3, &mut rng);
            let refs: Vec<&crate::data::BinnedSample> = samples.iter().collect();
            let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
            engine.run_batch(&batch, true).unwrap();
        }
        let memory = engine.memory().unwrap();
        assert!(memory.tile_written < engine.plan.total_bytes() && memory.buffers > 0);
        let zero = |x: &[f32]| x.iter().all(|&v| v == 0.0);
        let mut checked = 0;
        for lr in &mut engine.layers {
            assert_eq!((lr.plan.replicas, lr.groups()), (4, 2));
            let p_count = lr.p();
            for (i, home) in lr.tiles.get_mut().iter_mut().enumerate() {
                let r = i / p_count;
                let tile = home.tile().unwrap();
                let cfg = *tile.config();
                for (t, b) in (0..cfg.time_steps).flat_map(|t| (0..cfg.batch).map(move |b| (t, b)))
                {
                    assert_eq!(tile.in_buffer(t, b).n_grad(), 0, "tile {i}: input history");
                }
                assert_eq!(r == 0, !zero(tile.weights()), "tile {i}: weights");
                assert_eq!(r == 0, !zero(tile.optimizer_state()), "tile {i}: Adam moments");
                if r != 0 && r != 2 {
                    assert!(zero(tile.grads().0), "tile {i}: gradients");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 4 * (3 + 1));
    }
}
