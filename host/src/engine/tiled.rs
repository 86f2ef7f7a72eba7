//! The bulk-synchronous tile engine (SPEC §3).
//!
//! Every layer is planned onto tiles ([`crate::plan`]); each tile is a cache-line-aligned arena of
//! exactly its footprint that the core's [`Tile`] re-attaches to whenever it runs. One batch is a
//! fixed sequence of *phases* separated by a [`SpinBarrier`]; inside a phase, every worker thread
//! runs the work units [`super::schedule::assign`] gave it (by their measured cost in the last
//! batch, the same units from batch to batch, so a tile's memory stays in one core's cache). The
//! replicas of a tile column `(l, p)` are split into at most [`REPLICA_GROUPS`] contiguous
//! *groups* `(l, p, g)`; a group's first replica is its leader, whose gradient buffers the others
//! accumulate into. Every replica's tiles read one copy of their column's weights, which the
//! update writes from replica 0 (the only one whose own weights and optimizer state are kept:
//! the others' weights would be bit-identical copies, so they are neither copied nor touched).
//!
//! The math is one superstep per time step (SPEC §1, §3); the phases group many supersteps where
//! that changes no result. Forward, layer by layer: the tiles of a feed-forward layer run every
//! step at once, taking their spikes as kept, and the merge then checks that guess step by step
//! (`merge_ahead`). Backward, in blocks of steps from the end
//! ([`TiledEngine::backward_block`]), layer by layer (top down) within a block, each tile gathering its
//! `dL/dS` from the partials of the layer above (summed over that layer's tiles first, where it
//! has several per replica: `sum_partials`). With a recurrent layer, which exchanges with
//! itself every step, its forward runs in lockstep inside the merge and the backward runs step
//! by step, every layer in each step's phase:
//!
//! | phase | unit | writes | reads |
//! |---|---|---|---|
//! | forward ahead, layer `l` (feed-forward) | replica group `(l, p, g)`: its replicas in turn, all steps | their arenas, their rows of `ahead_raw` | layer buffers of `l-1`, the column's weights |
//! | forward merge, layer `l` | replica `(l, r)` | its tiles (commit; lockstep: everything), layer buffers and `starts` of its samples | its tiles, layer buffers of `l-1` |
//! | loss | thread 0 | counts, `dL/dc` | output layer buffers |
//! | backward, layer `l` and a block of steps (or all layers and one step) | replica group `(l, p, g)` | their arenas, the leader's gradients, their partials of those steps | layer buffers, `starts`, partials of later steps, `dL/dc`, the column's weights |
//! | backward sum, layer `l > 0` of several tiles per replica, a block of steps | replica `(l, r)` | `part_sum` of its samples at those steps | its tiles' partials of those steps, layer buffers of `l-1` |
//! | update | tile column `(l, p)` | replica 0's and the group leaders' tiles `(l, *, p)`, the column's weights | the same |
//!
//! No region is written by two units of one phase or read by a unit while another writes it, so
//! results are bit-identical for any number of threads; sums over tiles and replicas run in a
//! fixed order.
//!
//! With [`Engine::start_trace`], the next training batches record an execution trace
//! ([`super::trace`]): each worker appends one span per phase and one per barrier wait to its own
//! preallocated buffer. Tracing changes no result, and costs one branch per phase when off.

use super::barrier::SpinBarrier;
use super::claims::Claims;
use super::schedule;
use super::shared::Shared;
use super::trace::{ExecTrace, Pass, PhaseKind, Recorder, TraceBuffers, TraceMeta, LAYER, NO_STEP};
use super::{batch_loss, BatchResult, Engine, EngineMemory, InputBatch, LayerStats};
use crate::config::ModelConfig;
use crate::model::{OptimState, Params};
use crate::plan::{LayerPlan, Plan};
use anyhow::{anyhow, ensure, Result};
use spiketile_core::spikes::append;
use spiketile_core::{
    Optimizer, OptimizerKind, OutBuffers, SharedGrads, SharedWeights, SpikeView, StepInput, Tile,
    TileConfig, TileError, TileLayout, TileStats,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub use crate::plan::REPLICA_GROUPS;

/// Bytes of a cache line.
const CACHE_LINE: usize = 64;

/// The first index of `words` that lies on a cache-line boundary. A tile's weights and
/// gradients are the first regions of its arena, so with the arena there, a weight row of 16
/// floats (16 neurons; 32 take two) is exactly one cache line instead of straddling two.
fn cache_aligned(words: &[u32]) -> usize {
    let misalign = words.as_ptr() as usize % CACHE_LINE;
    if misalign == 0 {
        0
    } else {
        (CACHE_LINE - misalign) / 4
    }
}

/// Weights of one tile column in [`LayerRt::col_w`]: incoming and recurrent.
fn col_lens(cfg: &TileConfig) -> (usize, usize) {
    (cfg.neurons * cfg.inputs, if cfg.recurrent { cfg.neurons * cfg.layer_width } else { 0 })
}

/// One tile's home: its validated layout, arena and spike counts.
struct TileHome {
    layout: TileLayout,
    /// The arena is `arena[start..]`: `start` puts it on a cache line (see [`cache_aligned`]).
    arena: Box<[u32]>,
    start: usize,
    stats: TileStats,
}

impl TileHome {
    fn tile(&mut self) -> Result<Tile<'_>, TileError> {
        Tile::attach_layout(&self.layout, bytemuck::cast_slice_mut(&mut self.arena[self.start..]))
    }

    /// The tile's own spike buffers, read-only, without attaching it.
    fn out_buffers(&self) -> Result<OutBuffers<'_>, TileError> {
        self.layout.out_buffers(bytemuck::cast_slice(&self.arena[self.start..]))
    }
}

/// A layer at run time: its plan, tiles and exchange buffers.
struct LayerRt {
    plan: LayerPlan,
    /// `[r * P + p]`.
    tiles: Shared<TileHome>,
    /// The weights every replica of tile column `p` reads: incoming, then recurrent (see
    /// [`TiledEngine::col_weights`]); `col_at[p]` is where they start and how many of each.
    col_w: Shared<f32>,
    col_at: Vec<(usize, usize, usize)>,
    /// Layer buffers `[t][b][cap + 2]`, global ids.
    buf: Shared<u16>,
    /// Where each tile's entries start in the layer buffers, `[p][t][b][2]`: the positions of
    /// its first spike and of its first near-threshold id in the buffer of sample `b` at step `t`
    /// (written by the merge, read by the backward gather: for one tile, a replica's samples of
    /// one step are next to each other).
    starts: Shared<u16>,
    /// Partial `dL/dS` of the source layer from each tile, `[slot][r][p][m][in_cap]`: backward
    /// step `t` writes slot `t % (block + 1)` (see [`TiledEngine::block`]); the source layer
    /// reads step `t + 1`'s.
    part_src: Shared<f32>,
    /// The partials of `part_src` summed over the layer's tiles (tile order, from zero: the sums
    /// the source layer's gather would make), `[slot][b][in_cap]`; only for a layer of several
    /// tiles per replica in a backward pass in blocks, where the source layer's tiles then read
    /// one buffer instead of every tile's (see [`TiledEngine::sum_partials`]).
    part_sum: Shared<f32>,
    /// Partial `dL/dS` of this layer through recurrent weights, `[t % 2][r][p][m][cap]` (a
    /// network with a recurrent layer runs its backward pass step by step).
    part_rec: Shared<f32>,
    /// Spikes and near-threshold neurons each tile found at each step while running ahead, before
    /// any capacity cut (`[r * P + p][t][2]`; feed-forward layers only): counted into the tile's
    /// statistics for the steps the layer merge accepts.
    ahead_raw: Shared<u32>,
}

impl LayerRt {
    fn p(&self) -> usize {
        self.plan.splits.len()
    }

    fn groups(&self) -> usize {
        self.plan.replicas.min(REPLICA_GROUPS)
    }

    /// The replicas of group `g`; the first is its leader.
    fn group(&self, g: usize) -> std::ops::Range<usize> {
        let (r, k) = (self.plan.replicas, self.groups());
        g * r / k..(g + 1) * r / k
    }

    /// Whether replica `r` leads a group (its gradient buffers hold the group's sum).
    fn leads_group(&self, r: usize) -> bool {
        (0..self.groups()).any(|g| self.group(g).start == r)
    }
}

/// The work units of a batch and which of them each thread runs.
struct Units {
    /// Replica units `(l, r)` (exchange phases).
    replica: Vec<(usize, usize)>,
    /// Replica-group units `(l, p, g)` (compute phases).
    group: Vec<(usize, usize, usize)>,
    /// Column units `(l, p)` (update).
    column: Vec<(usize, usize)>,
    /// Per thread and layer, by [`Measured`] phase: indices into `group` (running ahead), into
    /// `replica` (merging) and into `group` (backward blocks).
    mine_layer: Vec<Vec<[Vec<usize>; 3]>>,
    /// Per thread: indices into `group` for the backward step by step (all layers at once).
    mine_steps: Vec<Vec<usize>>,
    /// Per thread: indices into `column`.
    mine_columns: Vec<Vec<usize>>,
}

/// The units of one phase, by thread (see [`Units::list`]).
#[derive(Clone, Copy)]
enum Lists {
    /// Layer `l`'s units of a phase measured for the schedule (the backward blocks' and the
    /// forward compute's are replica groups, the forward exchange's replicas; the sums of the
    /// partials run on the forward exchange's lists).
    Layer(usize, Measured),
    /// The backward pass step by step: every layer's replica groups.
    Steps,
    /// The update: tile columns.
    Columns,
}

impl Units {
    /// Thread `tid`'s units of `lists` (indices into [`Units::replica`], [`Units::group`] or
    /// [`Units::column`]).
    fn list(&self, tid: usize, lists: Lists) -> &[usize] {
        match lists {
            Lists::Layer(l, k) => &self.mine_layer[tid][l][k as usize],
            Lists::Steps => &self.mine_steps[tid],
            Lists::Columns => &self.mine_columns[tid],
        }
    }

    /// How many units of the kind `lists` lists there are (for the trace).
    fn count(&self, lists: Lists) -> usize {
        match lists {
            Lists::Layer(_, Measured::ForwardExchange) => self.replica.len(),
            Lists::Layer(..) | Lists::Steps => self.group.len(),
            Lists::Columns => self.column.len(),
        }
    }
}

/// The phases whose units' times are measured to schedule the next batch (index into
/// [`TiledEngine::unit_ns`] and [`Units::mine_layer`]).
#[derive(Clone, Copy)]
enum Measured {
    ForwardCompute = 0,
    ForwardExchange = 1,
    BackwardCompute = 2,
}

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
    step: u32,
    /// Execution trace being recorded, if any.
    trace: Option<Box<TraceBuffers>>,
    /// Nanoseconds each unit spent in each [`Measured`] phase in the last training batch: the
    /// schedule's cost estimate for the next one (zeros: no measurement yet).
    unit_ns: [Vec<AtomicU64>; 3],
    /// Per layer: whether its tiles run all steps ahead of the merge in the next batch (feed-forward
    /// layers that dropped no spike in the last batch).
    ahead: Vec<bool>,
    /// Backward steps per block ([`backward_block`]): the backward pass runs the steps in
    /// blocks of this many from the end, one layer after the other (top down) within a block,
    /// each tile running the block's steps in turn; 1 = every layer in each step's phase.
    block: usize,
}

/// Per-thread scratch, allocated once per batch.
struct Scratch {
    /// Layer buffers being merged: spikes, then near-threshold ids, `[sample][position]`.
    merged: Vec<u16>,
    /// Per sample: spikes kept, near-threshold ids stored, near-threshold ids offered.
    lens: Vec<usize>,
    /// Kept spikes, then offered near-threshold ids, `[pass][tile][sample]`.
    keep: Vec<usize>,
    /// A replica's tile statistics, saved before a merge that may have to start over.
    stats: Vec<TileStats>,
}

/// What every thread runs in one batch.
struct BatchCtx<'a> {
    input: &'a InputBatch,
    units: Units,
    train: bool,
    barrier: SpinBarrier,
    error: OnceLock<TileError>,
    loss: OnceLock<Result<f64, String>>,
    /// Per layer: whether its tiles run ahead of the merge in this batch (see
    /// [`TiledEngine::merge_ahead`]).
    ahead: Vec<bool>,
    /// Per layer: whether it dropped a spike in this batch.
    dropped: Vec<AtomicBool>,
    /// Who runs which unit of the phase under way.
    claims: Claims,
}

impl TiledEngine {
    /// Plans `cfg` and builds every tile with `params` as weights.
    pub fn new(cfg: &ModelConfig, params: &Params, threads: usize) -> Result<Self> {
        let plan = Plan::new(cfg)?;
        let b = cfg.batch_size;
        let t_steps = cfg.time_steps;
        let optimizer = cfg.optimizer()?;
        let block = backward_block(&plan, t_steps);
        let mut layers = Vec::new();
        for (li, lp) in plan.layers.iter().enumerate() {
            let np = cfg.layer_params(li + 1);
            let mut homes = Vec::with_capacity(lp.tiles());
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
                    let layout = TileLayout::new(tc, np).map_err(|e| anyhow!("{e}"))?;
                    let mut home = TileHome {
                        layout,
                        arena: vec![0u32; layout.arena_bytes() / 4 + CACHE_LINE / 4].into(),
                        start: 0,
                        stats: TileStats::default(),
                    };
                    home.start = cache_aligned(&home.arena);
                    home.tile().map_err(|e| anyhow!("building a tile: {e}"))?;
                    homes.push(home);
                }
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
            layers.push(LayerRt {
                plan: lp.clone(),
                tiles: Shared::from_vec(homes),
                col_w: Shared::new(col_total),
                col_at,
                buf: Shared::new(b * t_steps * (lp.capacity + 2)),
                starts: Shared::new(t_steps * b * lp.splits.len() * 2),
                // The first layer's partials (dL/dS of the data) have no reader.
                part_src: Shared::new(if li == 0 {
                    0
                } else {
                    (block + 1) * r * p * m * lp.in_capacity
                }),
                part_sum: Shared::new(part_sum_len(li, lp, block, b)),
                part_rec: Shared::new(if lp.recurrent { 2 * r * p * m * lp.capacity } else { 0 }),
                ahead_raw: Shared::new(if lp.recurrent { 0 } else { lp.tiles() * t_steps * 2 }),
            });
        }
        let ahead = plan.layers.iter().map(|lp| !lp.recurrent).collect();
        let mut engine = TiledEngine {
            cfg: cfg.clone(),
            plan,
            optimizer,
            layers,
            counts: Shared::new(b * cfg.classes),
            dldc: Shared::new(b * cfg.classes),
            threads: threads.max(1),
            step: 0,
            trace: None,
            unit_ns: Default::default(),
            ahead,
            block,
        };
        let groups: usize = engine.layers.iter().map(|lr| lr.p() * lr.groups()).sum();
        let replicas: usize = engine.layers.iter().map(|lr| lr.plan.replicas).sum();
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        engine.unit_ns = [counters(groups), counters(replicas), counters(groups)];
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
        for (li, lr) in self.layers.iter_mut().enumerate().skip(1) {
            let lp = &lr.plan;
            lr.part_src = Shared::new((steps + 1) * lp.tiles() * lp.micro_batch * lp.in_capacity);
            lr.part_sum = Shared::new(part_sum_len(li, lp, steps, self.cfg.batch_size));
        }
        Ok(())
    }

    /// Sets the number of worker threads (results do not depend on it).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    fn record(ctx: &BatchCtx<'_>, r: Result<(), TileError>) {
        if let Err(e) = r {
            let _ = ctx.error.set(e);
        }
    }

    /// Runs one phase on thread `tid`: its own units of `lists`, then (see [`Claims`]) units
    /// from the back of the other threads' lists until none is left; then waits at the barrier.
    /// With a recorder, records the phase (`kind`, `pass`, step `t`) and the wait as two spans.
    #[inline]
    fn phase(
        &self,
        ctx: &BatchCtx<'_>,
        (tid, lists): (usize, Lists),
        rec: &mut Option<Recorder<'_>>,
        (kind, pass, t): (PhaseKind, Pass, u32),
        mut f: impl FnMut(usize),
    ) {
        // Each thread first runs the units the schedule gave it, so that a tile's memory stays in
        // one core's cache from batch to batch (measured: ~10 % faster than taking units from a
        // shared counter on the W workload); helping the others comes after.
        let u = &ctx.units;
        let mine = u.list(tid, lists);
        ctx.claims.open(tid, mine.len());
        let mut ran = 0u32;
        while let Some(k) = ctx.claims.own(tid) {
            f(mine[k]);
            ran += 1;
        }
        let threads = ctx.claims.threads();
        for victim in (1..threads).map(|v| (tid + v) % threads) {
            let theirs = u.list(victim, lists);
            while let Some(k) = ctx.claims.steal(victim) {
                f(theirs[k]);
                ran += 1;
            }
        }
        let units = u.count(lists);
        match rec {
            None => ctx.barrier.wait(),
            Some(r) => {
                let worked = Instant::now();
                ctx.barrier.wait();
                let synced = Instant::now();
                r.push(kind, pass, t, ran, units as u32, worked);
                r.push(PhaseKind::Sync, pass, t, 0, units as u32, synced);
            }
        }
    }

    /// Adds the time since `started` to unit `i`'s cost in phase `what`.
    #[inline]
    fn charge(&self, what: Measured, i: usize, started: Instant) {
        let ns = started.elapsed().as_nanos() as u64;
        self.unit_ns[what as usize][i].fetch_add(ns.max(1), Ordering::Relaxed);
    }

    /// Spans one thread records in one training batch (at most).
    fn trace_spans(&self) -> usize {
        8 * self.cfg.time_steps + 8
    }

    /// The schedule every thread runs for one batch.
    fn run_thread(&self, tid: usize, ctx: &BatchCtx<'_>, mut rec: Option<Recorder<'_>>) {
        let max_cm =
            self.layers.iter().map(|l| l.plan.capacity * l.plan.micro_batch).max().unwrap_or(1);
        let max_pm = self.layers.iter().map(|l| l.p() * l.plan.micro_batch).max().unwrap_or(1);
        let max_m = self.layers.iter().map(|l| l.plan.micro_batch).max().unwrap_or(1);
        let mut sc = Scratch {
            merged: vec![0; 2 * max_cm],
            lens: vec![0; 3 * max_m],
            keep: vec![0; 2 * max_pm],
            stats: vec![TileStats::default(); self.layers.iter().map(|l| l.p()).max().unwrap_or(1)],
        };
        let t_steps = self.cfg.time_steps;
        let u = &ctx.units;
        use Measured::{BackwardCompute, ForwardCompute, ForwardExchange};
        use PhaseKind::{Compute, Exchange, Loss, Sync, Update};
        let (fwd, bwd) = (Pass::Forward, Pass::Backward);
        if let Some(r) = rec.as_mut() {
            r.restart(Instant::now());
        }
        // Forward, layer by layer: each tile of a feed-forward layer runs all steps ahead, then
        // each replica's merge checks them step by step (see `merge_ahead`).
        for l in 0..self.layers.len() {
            if ctx.ahead[l] {
                let units = (tid, Lists::Layer(l, ForwardCompute));
                self.phase(ctx, units, &mut rec, (Compute, fwd, LAYER | l as u32), |i| {
                    let (l, p, g) = u.group[i];
                    let started = Instant::now();
                    Self::record(ctx, self.forward_ahead(ctx.input, l, p, g));
                    self.charge(ForwardCompute, i, started);
                });
            }
            let units = (tid, Lists::Layer(l, ForwardExchange));
            self.phase(ctx, units, &mut rec, (Exchange, fwd, LAYER | l as u32), |i| {
                let (l, r) = u.replica[i];
                let started = Instant::now();
                Self::record(ctx, self.merge_ahead(ctx, l, r, &mut sc));
                self.charge(ForwardExchange, i, started);
            });
        }
        if tid == 0 {
            let _ = ctx.loss.set(self.loss(ctx.input).map_err(|e| format!("{e:#}")));
            if let Some(r) = rec.as_mut() {
                r.push(Loss, fwd, NO_STEP, 1, 1, Instant::now());
            }
        }
        ctx.barrier.wait();
        if let Some(r) = rec.as_mut() {
            r.push(Sync, fwd, NO_STEP, 0, 1, Instant::now());
        }
        if !ctx.train {
            return;
        }
        // Backward: each tile gathers its dL/dS from the partials an earlier phase wrote (see
        // `gather_dlds`), then steps back. With a recurrent layer, one phase per step for all
        // layers; otherwise blocks of steps from the end, one phase per layer (top down) and
        // block, each tile running the block's steps in turn.
        // In blocks, a layer of several tiles per replica then sums its partials over its tiles
        // (one phase per replica), so that the layer below reads one buffer (`sum_partials`).
        let mut backward =
            |units: Lists, steps: std::ops::Range<usize>, at: u32, layer: Option<usize>| {
                self.phase(ctx, (tid, units), &mut rec, (Compute, bwd, at), |i| {
                    let started = Instant::now();
                    Self::record(ctx, self.backward_compute(ctx.input, u.group[i], steps.clone()));
                    self.charge(BackwardCompute, i, started);
                });
                if let Some(l) = layer.filter(|&l| self.summed(l)) {
                    let units = (tid, Lists::Layer(l, ForwardExchange));
                    self.phase(ctx, units, &mut rec, (Exchange, bwd, at), |i| {
                        let (l, r) = u.replica[i];
                        self.sum_partials(ctx.input.len, l, r, steps.clone());
                    });
                }
            };
        if self.block == 1 {
            for t in (0..t_steps).rev() {
                backward(Lists::Steps, t..t + 1, t as u32, None);
            }
        } else {
            for k in (0..t_steps.div_ceil(self.block)).rev() {
                let steps = k * self.block..((k + 1) * self.block).min(t_steps);
                for l in (0..self.layers.len()).rev() {
                    let units = Lists::Layer(l, BackwardCompute);
                    backward(units, steps.clone(), LAYER | l as u32, Some(l));
                }
            }
        }
        let traced = (Update, Pass::Update, NO_STEP);
        self.phase(ctx, (tid, Lists::Columns), &mut rec, traced, |i| {
            let (l, p) = u.column[i];
            Self::record(ctx, self.update(l, p));
        });
    }

    /// Layer `l`'s buffer of sample `b` at step `t`.
    ///
    /// Safety: the caller's phase does not write it.
    #[inline(always)]
    unsafe fn layer_buf(&self, l: usize, b: usize, t: usize) -> SpikeView<'_> {
        let cap = self.layers[l].plan.capacity;
        let slot =
            unsafe { self.layers[l].buf.slice((t * self.cfg.batch_size + b) * (cap + 2), cap + 2) };
        SpikeView { ids: &slot[2..2 + slot[1] as usize], n_spikes: slot[0] as usize }
    }

    #[allow(clippy::mut_from_ref)]
    unsafe fn home(&self, l: usize, index: usize) -> &mut TileHome {
        unsafe { &mut self.layers[l].tiles.slice_mut(index, 1)[0] }
    }

    /// The weights of tile column `(l, p)`, which every replica's tile reads: replica 0's,
    /// copied there by the update. Only replica 0's tiles keep their own weights up to date
    /// (the optimizer steps there); the other replicas' copies are not read or written after
    /// they are built, so their pages stay untouched.
    ///
    /// Safety: the caller's phase is not the update.
    #[inline(always)]
    unsafe fn col_weights(&self, l: usize, p: usize) -> SharedWeights<'_> {
        let lr = &self.layers[l];
        let (at, nw, nv) = lr.col_at[p];
        unsafe { SharedWeights { w: lr.col_w.slice(at, nw), v: lr.col_w.slice(at + nw, nv) } }
    }

    /// Runs the tiles of replica group `(l, p, g)` (a feed-forward layer) through all steps, each
    /// on its own, as if the layer kept every spike they emit: every replica reads the column's
    /// weights ([`Self::col_weights`]), which stay in this core's cache for the whole run.
    /// [`Self::merge_ahead`] then checks the guess.
    fn forward_ahead(
        &self,
        input: &InputBatch,
        l: usize,
        p: usize,
        g: usize,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let p_count = lr.p();
        // Safety: not the update phase.
        let shared = unsafe { self.col_weights(l, p) };
        for r in lr.group(g) {
            // Safety: the tiles of group (l, p, g) and their rows of `ahead_raw` belong to this
            // unit alone in this phase.
            let mut tile = unsafe { self.home(l, r * p_count + p) }.tile()?;
            self.run_ahead(input, l, r, p, &mut tile, Some(shared))?;
        }
        Ok(())
    }

    /// Tile `(l, r, p)` through steps `0..T`, its own spikes taken as kept; records what it found
    /// at each step in `ahead_raw` (its own statistics are left for the merge to count).
    fn run_ahead(
        &self,
        input: &InputBatch,
        l: usize,
        r: usize,
        p: usize,
        tile: &mut Tile<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let t_steps = self.cfg.time_steps;
        let ti = r * lr.p() + p;
        // Safety: this tile's row of `ahead_raw` belongs to this unit alone in this phase.
        let raw = unsafe { lr.ahead_raw.slice_mut(ti * t_steps * 2, t_steps * 2) };
        for (t, found) in raw.chunks_exact_mut(2).enumerate() {
            let (spikes, near) = self.forward_replica(input, l, r, t, tile, shared)?;
            found.copy_from_slice(&[spikes, near]);
        }
        Ok(())
    }

    /// Merges replica `(l, r)`'s tile buffers step by step into the layer buffers.
    ///
    /// If the layer's tiles ran ahead ([`Self::forward_ahead`]), taking their own spikes as kept,
    /// the guess holds unless the layer drops a spike: then the replica's statistics are rolled
    /// back and its tiles run again from step 0, in lockstep with the merge (the membranes of
    /// the step before the drop are gone). Otherwise (a recurrent layer, or a layer that dropped
    /// spikes in the last batch) they run in lockstep from the start. Either way the result is
    /// the same, bit for bit; a dropped spike is recorded in `ctx.dropped` for the next batch's
    /// choice.
    fn merge_ahead(
        &self,
        ctx: &BatchCtx<'_>,
        l: usize,
        r: usize,
        sc: &mut Scratch,
    ) -> Result<(), TileError> {
        let (input, lr) = (ctx.input, &self.layers[l]);
        let (p_count, t_steps) = (lr.p(), self.cfg.time_steps);
        // Safety: replica (l, r)'s tiles and rows of `ahead_raw` belong to this unit alone.
        let home = |p: usize| unsafe { self.home(l, r * p_count + p) };
        let mut lockstep = !ctx.ahead[l];
        if !lockstep {
            for (p, saved) in sc.stats[..p_count].iter_mut().enumerate() {
                *saved = home(p).stats;
            }
            for t in 0..t_steps {
                for p in 0..p_count {
                    let ti = r * p_count + p;
                    let raw = unsafe { lr.ahead_raw.slice((ti * t_steps + t) * 2, 2) };
                    let stats = &mut home(p).stats;
                    stats.spikes_raw += raw[0] as u64;
                    stats.near_raw += raw[1] as u64;
                }
                if self.forward_exchange(input.len, l, r, t, sc)? {
                    for (p, saved) in sc.stats[..p_count].iter().enumerate() {
                        home(p).stats = *saved;
                    }
                    lockstep = true;
                    break;
                }
            }
        }
        if lockstep {
            let mut dropped = false;
            for t in 0..t_steps {
                for p in 0..p_count {
                    let home = home(p);
                    let mut tile = home.tile()?;
                    // Safety: not the update phase.
                    let shared = unsafe { self.col_weights(l, p) };
                    self.forward_replica(input, l, r, t, &mut tile, Some(shared))?;
                    let stats = tile.stats();
                    home.stats.add(&stats);
                }
                dropped |= self.forward_exchange(input.len, l, r, t, sc)?;
            }
            if dropped {
                ctx.dropped[l].store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Forward compute of step `t` for every sample of tile `(l, r, ·)`; returns the spikes and
    /// near-threshold neurons it found (before any capacity cut).
    fn forward_replica(
        &self,
        input: &InputBatch,
        l: usize,
        r: usize,
        t: usize,
        tile: &mut Tile<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> Result<(u32, u32), TileError> {
        let lr = &self.layers[l];
        let before = tile.stats();
        for (bl, b) in lr.plan.samples_of(r, input.len).enumerate() {
            // Safety: layer buffers of step t-1 are not written in this phase.
            let step = unsafe { self.step_input(input, l, b, t) };
            tile.forward_external(t, bl, step, shared)?;
        }
        // The tile counts what it finds; the difference is this step's.
        let after = tile.stats();
        Ok((
            (after.spikes_raw - before.spikes_raw) as u32,
            (after.near_raw - before.near_raw) as u32,
        ))
    }

    /// What layer `l`'s tiles integrate at step `t` for sample `b`: the input batch's or the
    /// source layer's buffer of step `t - 1` and, if recurrent, the layer's own. The tiles do not
    /// keep copies ([`Tile::forward_external`]): every tile of a replica reads the same buffers,
    /// and the backward pass reads them here again.
    ///
    /// Safety: the caller's phase does not write layer buffers of step `t - 1`.
    #[inline(always)]
    unsafe fn step_input<'s>(
        &'s self,
        input: &'s InputBatch,
        l: usize,
        b: usize,
        t: usize,
    ) -> StepInput<'s> {
        if t == 0 {
            return StepInput::EMPTY;
        }
        let src =
            if l == 0 { input.step(b, t - 1) } else { unsafe { self.layer_buf(l - 1, b, t - 1) } };
        let rec = if self.layers[l].plan.recurrent {
            unsafe { self.layer_buf(l, b, t - 1) }
        } else {
            SpikeView::EMPTY
        };
        StepInput { input: src, rec }
    }

    /// Merges replica `(l, r)`'s tile buffers of step `t` into the layer buffers (all samples at
    /// once, each tile attached once): spikes in tile order, then near-threshold ids in tile
    /// order, up to the layer's capacity. Tiles are told what the layer kept ([`Tile::commit`])
    /// only when something was dropped; otherwise their buffers already are what was kept.
    /// Returns whether a spike was dropped (which changes the dropping tile's next steps).
    fn forward_exchange(
        &self,
        batch: usize,
        l: usize,
        r: usize,
        t: usize,
        sc: &mut Scratch,
    ) -> Result<bool, TileError> {
        let lr = &self.layers[l];
        let (p_count, cap) = (lr.p(), lr.plan.capacity);
        let samples = lr.plan.samples_of(r, batch);
        let m = samples.len();
        // Spikes kept, and the first `cap` near-threshold ids (no more can be kept), per sample.
        let (spikes, near) = sc.merged[..2 * m * cap].split_at_mut(m * cap);
        let (n_spikes, rest) = sc.lens[..3 * m].split_at_mut(m);
        let (n_near, near_raw) = rest.split_at_mut(m);
        n_spikes.fill(0);
        n_near.fill(0);
        near_raw.fill(0);
        let (mut dropped, mut spike_dropped) = (false, false);
        for p in 0..p_count {
            // Safety: this unit owns the tiles of replica (l, r) in this phase.
            let home = unsafe { self.home(l, r * p_count + p) };
            let first = home.layout.config().first_neuron;
            // Read without attaching the tile (it is attached below only to commit a drop).
            let out = home.out_buffers()?;
            // The next step's buffers, read after the other tiles' of this step: at large widths
            // a replica has a hundred or more tiles, too many streams for the hardware to follow.
            out.prefetch(t + 1);
            let (mut kept, mut raw) = (0, 0);
            for bl in 0..m {
                let view = out.get(t, bl);
                let (s, nr) = (view.spikes(), view.near());
                let range = bl * cap..(bl + 1) * cap;
                let taken = append(&mut spikes[range.clone()], n_spikes[bl], s, first);
                n_spikes[bl] += taken;
                n_near[bl] += append(&mut near[range], n_near[bl], nr, first);
                near_raw[bl] += nr.len();
                sc.keep[p * m + bl] = taken;
                let b = samples.start + bl;
                // Safety: sample b's entries of step t belong to this unit.
                let start = unsafe { lr.starts.slice_mut(self.start_at(p, (b, t)), 2) };
                start[0] = (n_spikes[bl] - taken) as u16;
                // Relative to the buffer's spike count, known after the last tile (below).
                start[1] = (near_raw[bl] - nr.len()) as u16;
                sc.keep[(p_count + p) * m + bl] = nr.len();
                spike_dropped |= taken < s.len();
                kept += taken;
                raw += nr.len();
            }
            // Every near-threshold id counts as kept unless the slow path below says otherwise.
            home.stats.spikes_kept += kept as u64;
            home.stats.near_kept += raw as u64;
        }
        dropped |= spike_dropped;
        for p in 0..p_count {
            // Safety: as above. A tile's near-threshold ids follow all spikes of the buffer
            // (positions stay below the layer width: kept spikes and offered near-threshold
            // ids are distinct neurons).
            let at = self.start_at(p, (samples.start, t));
            let starts = unsafe { lr.starts.slice_mut(at, 2 * m) };
            for (start, &ns) in starts.chunks_exact_mut(2).zip(n_spikes.iter()) {
                start[1] += ns as u16;
            }
        }
        for (bl, b) in samples.enumerate() {
            let ns = n_spikes[bl];
            let kn = near_raw[bl].min(cap - ns);
            dropped |= kn < near_raw[bl];
            // Safety: sample b's slot of layer l at step t is this unit's alone.
            let slot =
                unsafe { lr.buf.slice_mut((t * self.cfg.batch_size + b) * (cap + 2), cap + 2) };
            slot[0] = ns as u16;
            slot[1] = (ns + kn) as u16;
            slot[2..2 + ns].copy_from_slice(&spikes[bl * cap..bl * cap + ns]);
            slot[2 + ns..2 + ns + kn].copy_from_slice(&near[bl * cap..bl * cap + kn]);
        }
        if dropped {
            // Near-threshold ids before tile p, per sample.
            let before = n_near;
            before.fill(0);
            for p in 0..p_count {
                let home = unsafe { self.home(l, r * p_count + p) };
                let mut tile = home.tile()?;
                let mut refused = 0;
                for bl in 0..m {
                    let (ks, raw) = (sc.keep[p * m + bl], sc.keep[(p_count + p) * m + bl]);
                    let room = cap - n_spikes[bl];
                    let kn = raw.min(room.saturating_sub(before[bl]));
                    before[bl] += raw;
                    tile.commit(t, bl, ks, kn)?;
                    refused += raw - kn;
                }
                // `commit` counted what was kept again on this attachment (`tile`'s own
                // statistics, not added to `home`); the layer's count is corrected here.
                home.stats.near_kept -= refused as u64;
            }
        }
        Ok(spike_dropped)
    }

    fn loss(&self, input: &InputBatch) -> Result<f64> {
        let c = self.cfg.classes;
        let last = self.layers.len() - 1;
        // Safety: runs on thread 0 between barriers; nothing else runs.
        let counts = unsafe { self.counts.slice_mut(0, input.len * c) };
        counts.fill(0.0);
        for b in 0..input.len {
            for t in 0..self.cfg.time_steps {
                for &k in unsafe { self.layer_buf(last, b, t) }.spikes() {
                    counts[b * c + k as usize] += 1.0;
                }
            }
        }
        let dldc = unsafe { self.dldc.slice_mut(0, input.len * c) };
        batch_loss(&self.cfg, counts, &input.labels[..input.len], dldc)
    }

    /// Backward compute of `steps` (from the last down) for replica group `(l, p, g)`: at each
    /// step, every replica in turn; every replica reads the column's weights, and those after
    /// the leader accumulate their weight gradients into its buffers, so one copy of each stays
    /// in this core's cache (the update needs only their sum).
    fn backward_compute(
        &self,
        input: &InputBatch,
        (l, p, g): (usize, usize, usize),
        steps: std::ops::Range<usize>,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let p_count = lr.p();
        let reps = lr.group(g);
        // Safety: not the update phase.
        let shared = unsafe { self.col_weights(l, p) };
        // Safety: the tiles of group (l, p, g) and their partial out-buffers belong to this unit.
        let mut tile0 = unsafe { self.home(l, reps.start * p_count + p) }.tile()?;
        for t in steps.rev() {
            self.backward_replica(input, l, reps.start, p, t, &mut tile0, Some(shared), None)?;
            let (dw, dv) = tile0.grads_mut();
            let mut grads = SharedGrads { dw, dv };
            for r in reps.start + 1..reps.end {
                let mut tile = unsafe { self.home(l, r * p_count + p) }.tile()?;
                let g = Some(grads.reborrow());
                self.backward_replica(input, l, r, p, t, &mut tile, Some(shared), g)?;
            }
        }
        Ok(())
    }

    /// The slot of the partial-`dL/dS` buffers that holds backward step `t`.
    fn slot(&self, t: usize) -> usize {
        t % (self.block + 1)
    }

    fn backward_replica(
        &self,
        input: &InputBatch,
        l: usize,
        r: usize,
        p: usize,
        t: usize,
        tile: &mut Tile<'_>,
        shared: Option<SharedWeights<'_>>,
        mut grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let m = lr.plan.micro_batch;
        let ti = r * lr.p() + p;
        // This step's partials go to its slot (step t + 1's, still to be read, is another).
        let tiles = lr.plan.tiles();
        let (slot, rec_slot) = (self.slot(t), t % 2);
        let samples = lr.plan.samples_of(r, input.len);
        let last = samples.len().saturating_sub(1);
        let far = self.far_partials(l);
        for (bl, b) in samples.enumerate() {
            // The history loads of this tile's next sample (or of its first at the step before,
            // its next work) overlap this sample's work.
            match (bl < last, t) {
                (true, _) => tile.prefetch_backward_external(t, bl + 1),
                (false, t) if t > 0 => tile.prefetch_backward_external(t - 1, 0),
                _ => {}
            }
            // Partials in buffers larger than L2 (wide layers): the next sample's (their
            // addresses known by now), and where those of the sample after start.
            if far {
                if bl < last {
                    self.prefetch_dlds((l, r, p), (b + 1, bl + 1, t));
                }
                if bl + 1 < last {
                    self.prefetch_dlds_starts((l, p), (b + 2, t));
                }
            }
            self.gather_dlds((l, r, p), (b, bl, t), tile);
            // Safety: layer buffers are read-only in backward phases.
            let step = unsafe { self.step_input(input, l, b, t) };
            let grads = grads.as_mut().map(SharedGrads::reborrow);
            tile.backward_external(t, bl, step, l > 0, shared, grads)?;
            if l > 0 {
                let k = lr.plan.in_capacity;
                let n = step.input.n_grad();
                // Safety: tile ti's partial out-buffer of this slot belongs to this unit alone.
                let at = ((slot * tiles + ti) * m + bl) * k;
                let dst = unsafe { lr.part_src.slice_mut(at, n) };
                dst.copy_from_slice(&tile.src_partials(bl)[..n]);
            }
            if lr.plan.recurrent {
                let k = lr.plan.capacity;
                let n = step.rec.n_grad();
                let at = ((rec_slot * tiles + ti) * m + bl) * k;
                let dst = unsafe { lr.part_rec.slice_mut(at, n) };
                dst.copy_from_slice(&tile.rec_partials(bl)[..n]);
            }
        }
        Ok(())
    }

    /// Writes `dL/dS_l[t]` of sample `b` (the tile's `bl`) at tile's gradient set into its
    /// `dL/dS` in-buffer: the exchange of the backward pass, run by the receiving tile.
    ///
    /// The layer's buffer is two runs (spikes, then near-threshold ids), each in tile order, so
    /// the tile's entries are one stretch of each run, in the order of its own gradient set;
    /// the merge recorded where they start (`starts`). Each entry sums, in this order, the
    /// recurrent partials of step `t + 1` (tile order), the next layer's partials of step
    /// `t + 1` (tile order), and for the output layer `dL/dc`.
    fn gather_dlds(
        &self,
        (l, r, p): (usize, usize, usize),
        (b, bl, t): (usize, usize, usize),
        tile: &mut Tile<'_>,
    ) {
        let last = l + 1 == self.layers.len();
        // Safety: layer buffers and starts are read-only in backward phases; the partials of
        // step t + 1 were written in an earlier phase.
        let (s0, n0) = self.dlds_starts((l, p), (b, t));
        let mine = tile.out_buffer(t, bl);
        let own = (s0..s0 + mine.n_spikes).chain(n0..n0 + mine.near().len());
        let sources = self.dlds_sources((l, r), (b, bl, t));
        // The output layer's dL/dc, and the class of each entry of its buffer.
        let dldc = last.then(|| unsafe {
            (self.dldc.slice(b * self.cfg.classes, self.cfg.classes), self.layer_buf(l, b, t).ids)
        });
        let dst = tile.dlds_mut(bl);
        if sources.iter().all(Option::is_none) {
            // Nothing to sum (the output layer, and every layer at the last step): the same
            // sums as below, from zero, without their loops.
            match dldc {
                Some((dldc, ids)) => {
                    for (d, k) in dst.iter_mut().zip(own) {
                        *d = 0.0 + dldc[ids[k] as usize];
                    }
                }
                None => dst.iter_mut().zip(own).for_each(|(d, _)| *d = 0.0),
            }
            return;
        }
        for (d, k) in dst.iter_mut().zip(own) {
            let mut a = 0.0f32;
            for &(part, base, stride, tiles) in sources.iter().flatten() {
                for q in 0..tiles {
                    a += unsafe { part.slice(base + q * stride + k, 1)[0] };
                }
            }
            if let Some((dldc, ids)) = dldc {
                a += dldc[ids[k] as usize];
            }
            *d = a;
        }
    }

    /// Where tile `p`'s entries of layer `l`'s buffer of sample `b` at step `t` start: its
    /// spikes, and its near-threshold ids.
    #[inline(always)]
    fn dlds_starts(&self, (l, p): (usize, usize), (b, t): (usize, usize)) -> (usize, usize) {
        // Safety: starts are read-only in backward phases.
        let start = unsafe { self.layers[l].starts.slice(self.start_at(p, (b, t)), 2) };
        (start[0] as usize, start[1] as usize)
    }

    /// Index of tile `p`'s entry for sample `b` at step `t` in a layer's `starts`.
    #[inline(always)]
    fn start_at(&self, p: usize, (b, t): (usize, usize)) -> usize {
        ((p * self.cfg.time_steps + t) * self.cfg.batch_size + b) * 2
    }

    /// The partial `dL/dS` buffers [`Self::gather_dlds`] sums for replica `r` of layer `l`,
    /// sample `b` (the replica's `bl`), step `t`: `(buffer, base, stride, tiles)`, tile `q`'s
    /// partial of layer-buffer entry `k` at `base + q * stride + k`; the recurrent ones, then
    /// the next layer's.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn dlds_sources(
        &self,
        (l, r): (usize, usize),
        (b, bl, t): (usize, usize, usize),
    ) -> [Option<(&Shared<f32>, usize, usize, usize)>; 2] {
        let lr = &self.layers[l];
        let last = l + 1 == self.layers.len();
        if t + 1 >= self.cfg.time_steps {
            return [None, None];
        }
        let (slot, rec_slot) = (self.slot(t + 1), (t + 1) % 2);
        let rec_at = lr.plan.recurrent.then(|| {
            let (p_count, m, cap) = (lr.p(), lr.plan.micro_batch, lr.plan.capacity);
            let base = ((rec_slot * lr.plan.tiles() + r * p_count) * m + bl) * cap;
            (&lr.part_rec, base, m * cap, p_count)
        });
        let next_at = (!last).then(|| {
            let nx = &self.layers[l + 1];
            let (np, nm, ncap) = (nx.p(), nx.plan.micro_batch, nx.plan.in_capacity);
            if self.summed(l + 1) {
                return (&nx.part_sum, (slot * self.cfg.batch_size + b) * ncap, 0, 1);
            }
            let base = ((slot * nx.plan.tiles() + (b / nm) * np) * nm + b % nm) * ncap;
            (&nx.part_src, base, nm * ncap, np)
        });
        [rec_at, next_at]
    }

    /// Whether layer `l`'s partial `dL/dS` are summed over its tiles before the layer below
    /// reads them ([`Self::sum_partials`]): a layer above the first with several tiles per
    /// replica, in a backward pass in blocks.
    fn summed(&self, l: usize) -> bool {
        l > 0 && self.block > 1 && self.layers[l].p() > 1
    }

    /// Sums replica `r` of layer `l`'s partial `dL/dS_{l-1}` of `steps` over its tiles into
    /// `part_sum`: per entry from zero, in tile order, the sum [`Self::gather_dlds`] would make
    /// from `part_src`, so the results are the same bit for bit. The source layer's tiles then
    /// read one float per entry where they read one per tile of this layer, scattered over
    /// buffers of up to hundreds of megabytes (at hidden 4096 this layer has 4 tiles per
    /// replica, between two 4096-wide layers 820); here each tile's partials are read in order.
    fn sum_partials(&self, batch: usize, l: usize, r: usize, steps: std::ops::Range<usize>) {
        let lr = &self.layers[l];
        let (np, m, cap, tiles) =
            (lr.p(), lr.plan.micro_batch, lr.plan.in_capacity, lr.plan.tiles());
        // Step 0's partials (dL/dS of step -1) have no reader.
        for t in steps.filter(|&t| t > 0) {
            let slot = self.slot(t);
            for (bl, b) in lr.plan.samples_of(r, batch).enumerate() {
                // Safety: the layer buffers are read-only in backward phases, this replica's
                // partials of these steps were written in the phase before, and the sums of its
                // samples at these steps belong to this unit alone.
                let n = unsafe { self.layer_buf(l - 1, b, t - 1) }.n_grad();
                let sum =
                    unsafe { lr.part_sum.slice_mut((slot * self.cfg.batch_size + b) * cap, n) };
                sum.fill(0.0);
                for q in 0..np {
                    let at = ((slot * tiles + r * np + q) * m + bl) * cap;
                    let part = unsafe { lr.part_src.slice(at, n) };
                    for (s, &x) in sum.iter_mut().zip(part) {
                        *s += x;
                    }
                }
            }
        }
    }

    /// Whether the partial `dL/dS` layer `l` gathers from lie in buffers larger than a core's
    /// L2 cache (then [`Self::backward_replica`] prefetches them a sample ahead; below that, the
    /// hints cost more than they save).
    fn far_partials(&self, l: usize) -> bool {
        const L2_BYTES: usize = 2 << 20;
        let sources = self.layers.get(l + 1).map(|nx| {
            let part = if self.summed(l + 1) { &nx.part_sum } else { &nx.part_src };
            part.len()
        });
        let rec = if self.layers[l].plan.recurrent { self.layers[l].part_rec.len() } else { 0 };
        (sources.unwrap_or(0) + rec) * 4 > L2_BYTES
    }

    /// Asks for the cache lines [`Self::gather_dlds`] of sample `b` (the replica's `bl`) at
    /// step `t` reads first: where the tile's entries start in each partial buffer of every
    /// source tile (a tile's entries are a few consecutive floats). Above the first hidden
    /// layer's tiles these lie in buffers of tens of megabytes, written a whole block of steps
    /// earlier. A hint: it changes no result.
    fn prefetch_dlds(&self, (l, r, p): (usize, usize, usize), (b, bl, t): (usize, usize, usize)) {
        let (s0, n0) = self.dlds_starts((l, p), (b, t));
        for &(part, base, stride, tiles) in self.dlds_sources((l, r), (b, bl, t)).iter().flatten() {
            for q in 0..tiles {
                part.prefetch(base + q * stride + s0);
                part.prefetch(base + q * stride + n0);
            }
        }
    }

    /// Asks for what [`Self::prefetch_dlds`] of sample `b` at step `t` reads: tile `p`'s starts.
    fn prefetch_dlds_starts(&self, (l, p): (usize, usize), (b, t): (usize, usize)) {
        self.layers[l].starts.prefetch(self.start_at(p, (b, t)));
    }

    /// Sums the group leaders' gradients of tile column `(l, p)` (group order) into replica 0,
    /// applies the optimizer there, copies the new weights to the column's weights that every
    /// replica reads ([`Self::col_weights`]: what each replica's own update with the summed
    /// gradient would compute, bit for bit), and clears the gradients. Only replica 0 steps the
    /// optimizer and keeps weights and optimizer state (checkpoints read them there).
    fn update(&self, l: usize, p: usize) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let p_count = lr.p();
        // Safety: the column's tiles and its weights in `col_w` belong to this unit alone in
        // this phase.
        let mut first = unsafe { self.home(l, p) }.tile()?;
        for g in 1..lr.groups() {
            let mut leader = unsafe { self.home(l, lr.group(g).start * p_count + p) }.tile()?;
            let (sw, sv) = first.grads_mut();
            let (dw, dv) = leader.grads();
            sw.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
            sv.iter_mut().zip(dv).for_each(|(a, b)| *a += b);
            leader.zero_grads();
        }
        first.apply(&self.optimizer, self.step + 1);
        first.zero_grads();
        let (at, nw, nv) = lr.col_at[p];
        // Safety: as above (the column's weights).
        let col = unsafe { lr.col_w.slice_mut(at, nw + nv) };
        col[..nw].copy_from_slice(first.weights());
        col[nw..].copy_from_slice(first.recurrent());
        Ok(())
    }

    /// The work units of this engine and their assignment to `threads` threads, by estimated
    /// cost (see [`schedule::assign`]): for the compute units, the time they took in the last
    /// training batch. The assignment changes no result, only which core does the work.
    fn units(&self, threads: usize) -> Units {
        let mut replica = Vec::new();
        let mut group = Vec::new();
        let mut column = Vec::new();
        let (mut rc, mut gc, mut cc) = (Vec::new(), Vec::new(), Vec::new());
        for (l, lr) in self.layers.iter().enumerate() {
            let lp = &lr.plan;
            let (m, p_count) = (lp.micro_batch as u64, lr.p() as u64);
            let fan_in = (lp.in_capacity + if lp.recurrent { lp.capacity } else { 0 }) as u64;
            for r in 0..lp.replicas {
                replica.push((l, r));
                rc.push(m * p_count);
            }
            for (p, &(_, n)) in lp.splits.iter().enumerate() {
                for g in 0..lr.groups() {
                    group.push((l, p, g));
                    gc.push(lr.group(g).len() as u64 * m * fan_in * n as u64);
                }
                column.push((l, p));
                let width = lp.inputs + if lp.recurrent { lp.width } else { 0 };
                cc.push((width * n) as u64 * (lp.replicas as u64 + 2));
            }
        }
        // Measured costs, once every unit has been measured: the static estimates above cannot
        // know how active each layer is.
        let measured: [Vec<u64>; 3] = self
            .unit_ns
            .each_ref()
            .map(|counters| counters.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect());
        let costs = |k: usize, units: &[usize]| -> Vec<u64> {
            let statics = if k % 2 == 0 { &gc } else { &rc };
            let m = &measured[k];
            if units.iter().all(|&i| m[i] > 0) {
                units.iter().map(|&i| m[i]).collect()
            } else {
                units.iter().map(|&i| statics[i]).collect()
            }
        };
        let threads = threads.max(1);
        let mut mine_layer: Vec<Vec<[Vec<usize>; 3]>> =
            vec![vec![Default::default(); self.layers.len()]; threads];
        // Forward and backward blocks: each layer's units on their own (the layers run one
        // after the other).
        for l in 0..self.layers.len() {
            let groups: Vec<usize> = (0..group.len()).filter(|&i| group[i].0 == l).collect();
            let replicas = (0..replica.len()).filter(|&i| replica[i].0 == l).collect();
            for (k, units) in [groups.clone(), replicas, groups].iter().enumerate() {
                let plan = schedule::assign(&costs(k, units), threads);
                for (tid, picked) in plan.into_iter().enumerate() {
                    let picked: Vec<usize> = picked.into_iter().map(|j| units[j]).collect();
                    mine_layer[tid][l][k] = picked;
                }
            }
        }
        // Backward step by step: every layer's units in each step's phase.
        let all: Vec<usize> = (0..group.len()).collect();
        let mine_steps =
            schedule::assign(&costs(Measured::BackwardCompute as usize, &all), threads);
        let mine_columns = schedule::assign(&cc, threads);
        Units { replica, group, column, mine_layer, mine_steps, mine_columns }
    }

    fn collect_stats(&mut self, batch: usize) -> Vec<LayerStats> {
        let t_steps = self.cfg.time_steps as u64;
        self.layers
            .iter_mut()
            .map(|lr| {
                let mut s = TileStats::default();
                for home in lr.tiles.get_mut() {
                    s.add(&home.stats);
                    home.stats = TileStats::default();
                }
                LayerStats {
                    spikes: s.spikes_kept,
                    overflow: s.overflow(),
                    neuron_steps: lr.plan.width as u64 * t_steps * batch as u64,
                }
            })
            .collect()
    }
}

impl Engine for TiledEngine {
    fn run_batch(&mut self, input: &InputBatch, train: bool) -> Result<BatchResult> {
        ensure!(
            input.len >= 1 && input.len <= self.cfg.batch_size,
            "batch of {} samples, the engine runs 1 to {}",
            input.len,
            self.cfg.batch_size
        );
        ensure!(input.capacity == self.plan.input_capacity, "input capacity differs from the plan");
        input.check_ids(self.cfg.inputs)?;
        let ctx = BatchCtx {
            input,
            units: self.units(self.threads),
            train,
            barrier: SpinBarrier::new(self.threads),
            error: OnceLock::new(),
            loss: OnceLock::new(),
            ahead: self.ahead.clone(),
            dropped: self.layers.iter().map(|_| AtomicBool::new(false)).collect(),
            claims: Claims::new(self.threads),
        };
        // Tracing: the buffers leave the engine for the batch, one recorder per thread.
        let mut trace = self.trace.take_if(|tr| train && tr.active());
        let mut recorders: Vec<Option<Recorder<'_>>> = match trace.as_deref_mut() {
            Some(tr) => {
                let step = self.step + 1;
                let start = tr.begin(self.threads, self.trace_spans(), step);
                tr.recorders(self.threads, step, start).into_iter().map(Some).collect()
            }
            None => (0..self.threads).map(|_| None).collect(),
        };
        let this = &*self;
        std::thread::scope(|s| {
            let mut recs = recorders.drain(..);
            let rec0 = recs.next().flatten();
            for (tid, rec) in (1..this.threads).zip(recs) {
                let ctx = &ctx;
                s.spawn(move || this.run_thread(tid, ctx, rec));
            }
            this.run_thread(0, &ctx, rec0);
        });
        drop(recorders);
        for ((ahead, dropped), lr) in self.ahead.iter_mut().zip(&ctx.dropped).zip(&self.layers) {
            *ahead = !lr.plan.recurrent && !dropped.load(Ordering::Relaxed);
        }
        if trace.is_some() {
            self.trace = trace;
        }
        if let Some(e) = ctx.error.get() {
            return Err(anyhow!("tile error: {e}"));
        }
        let loss_sum = match ctx.loss.into_inner() {
            Some(Ok(l)) => l,
            Some(Err(e)) => return Err(anyhow!(e)),
            None => return Err(anyhow!("loss was not computed")),
        };
        if train {
            self.step += 1;
        }
        let c = self.cfg.classes;
        let counts = self.counts.get_mut()[..input.len * c].to_vec();
        Ok(BatchResult { loss_sum, counts, layers: self.collect_stats(input.len) })
    }

    fn params(&mut self) -> Params {
        let mut out = Params::zeros(&self.cfg);
        for (lr, lp) in self.layers.iter_mut().zip(out.layers.iter_mut()) {
            let p_count = lr.p();
            for home in lr.tiles.get_mut().iter_mut().take(p_count) {
                let cfg = home.layout.config();
                let (n, f) = (cfg.neurons, cfg.first_neuron);
                let Ok(tile) = home.tile() else { continue };
                copy_out(tile.weights(), n, f, lp.cols, &mut lp.weight);
                if let Some(v) = lp.recurrent.as_mut() {
                    copy_out(tile.recurrent(), n, f, lp.rows, v);
                }
            }
        }
        out
    }

    fn optim_state(&mut self) -> OptimState {
        let adam = self.optimizer.kind == OptimizerKind::Adam;
        let (mut m, mut v) = (Params::zeros(&self.cfg), Params::zeros(&self.cfg));
        if adam {
            for (l, lr) in self.layers.iter_mut().enumerate() {
                let p_count = lr.p();
                for home in lr.tiles.get_mut().iter_mut().take(p_count) {
                    let cfg = *home.layout.config();
                    let Ok(tile) = home.tile() else { continue };
                    let st = tile.optimizer_state();
                    let (n, f, cols, rows) =
                        (cfg.neurons, cfg.first_neuron, cfg.inputs, cfg.layer_width);
                    let nw = cols * n;
                    let nv = if cfg.recurrent { rows * n } else { 0 };
                    copy_out(&st[..nw], n, f, cols, &mut m.layers[l].weight);
                    copy_out(&st[nw..2 * nw], n, f, cols, &mut v.layers[l].weight);
                    if let (Some(mr), Some(vr)) =
                        (m.layers[l].recurrent.as_mut(), v.layers[l].recurrent.as_mut())
                    {
                        copy_out(&st[2 * nw..2 * nw + nv], n, f, rows, mr);
                        copy_out(&st[2 * nw + nv..2 * nw + 2 * nv], n, f, rows, vr);
                    }
                }
            }
        }
        OptimState { m: adam.then_some(m), v: adam.then_some(v), step: self.step }
    }

    fn set_state(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()> {
        ensure!(params.layers.len() == self.layers.len(), "layer count differs from the model");
        for (l, (lr, lp)) in self.layers.iter_mut().zip(&params.layers).enumerate() {
            ensure!(
                lp.rows == lr.plan.width && lp.cols == lr.plan.inputs,
                "layer {l} weights are {}x{}, the model needs {}x{}",
                lp.rows,
                lp.cols,
                lr.plan.width,
                lr.plan.inputs
            );
            ensure!(
                lp.recurrent.is_some() == lr.plan.recurrent,
                "layer {l}: recurrent weights mismatch"
            );
            // Replica 0 holds the weights and the optimizer state (see `update`), group leaders
            // gradients; the other replicas' tiles only their own step state.
            let p_count = lr.p();
            let leaders: Vec<bool> = (0..lr.plan.replicas).map(|r| lr.leads_group(r)).collect();
            let (col_w, col_at) = (lr.col_w.get_mut(), &lr.col_at);
            for (i, home) in lr.tiles.get_mut().iter_mut().enumerate() {
                let (r, p) = (i / p_count, i % p_count);
                if r > 0 {
                    if leaders[r] {
                        home.tile().map_err(|e| anyhow!("{e}"))?.zero_grads();
                    }
                    continue;
                }
                let cfg = *home.layout.config();
                let mut tile = home.tile().map_err(|e| anyhow!("{e}"))?;
                let (n, f) = (cfg.neurons, cfg.first_neuron);
                copy_in(&lp.weight, n, f, cfg.inputs, tile.weights_mut());
                if let Some(v) = &lp.recurrent {
                    copy_in(v, n, f, cfg.layer_width, tile.recurrent_mut());
                }
                let (at, nw, nv) = col_at[p];
                col_w[at..at + nw].copy_from_slice(tile.weights());
                col_w[at + nw..at + nw + nv].copy_from_slice(tile.recurrent());
                let st = tile.optimizer_state_mut();
                st.fill(0.0);
                if let Some(o) = optim {
                    if let (Some(m), Some(v)) = (&o.m, &o.v) {
                        if !st.is_empty() {
                            copy_in(&m.layers[l].weight, n, f, cfg.inputs, &mut st[..nw]);
                            copy_in(&v.layers[l].weight, n, f, cfg.inputs, &mut st[nw..2 * nw]);
                            if let (Some(mr), Some(vr)) =
                                (&m.layers[l].recurrent, &v.layers[l].recurrent)
                            {
                                copy_in(mr, n, f, cfg.layer_width, &mut st[2 * nw..2 * nw + nv]);
                                copy_in(
                                    vr,
                                    n,
                                    f,
                                    cfg.layer_width,
                                    &mut st[2 * nw + nv..2 * nw + 2 * nv],
                                );
                            }
                        }
                    }
                }
                tile.zero_grads();
            }
        }
        if let Some(o) = optim {
            self.step = o.step;
        }
        Ok(())
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Replica 0's tiles write everything but their input histories (the engine keeps the
    /// source buffers: [`Tile::forward_external`]); the group leaders' tiles also leave their
    /// weights and optimizer state alone (every replica reads the column's weights), and the
    /// other replicas' tiles their gradients too (they accumulate into their leader's). Counted by
    /// whole regions, not pages. The buffers are every [`Shared`] buffer of the engine.
    fn memory(&mut self) -> Option<EngineMemory> {
        let mut bytes = 0;
        let mut buffers = 4 * (self.counts.len() + self.dldc.len());
        for lr in &mut self.layers {
            buffers += 2 * (lr.buf.len() + lr.starts.len())
                + 4 * (lr.col_w.len()
                    + lr.part_src.len()
                    + lr.part_sum.len()
                    + lr.part_rec.len()
                    + lr.ahead_raw.len());
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
        Some(EngineMemory { tile_written: bytes, buffers })
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

/// Bytes the backward blocks may spend on partial `dL/dS` buffers, over all layers.
const BLOCK_PARTIALS_BYTES: usize = 256 << 20;

/// Backward steps per block for `plan`: 1 if any layer is recurrent (its tiles exchange
/// `dL/dS` every step, so every layer advances step by step together); otherwise as many as
/// the budget of partial-`dL/dS` buffers allows (they hold every step of a block), at least 2
/// and at most `t_steps`. Blocks change no result: a tile's arithmetic and every sum's order
/// are the same as step by step.
fn backward_block(plan: &Plan, t_steps: usize) -> usize {
    if plan.layers.iter().any(|lp| lp.recurrent) {
        return 1;
    }
    // Per step, every layer's partials but the first's (nobody needs dL/dS of the data), and
    // their sums over tiles.
    let per_step: usize = plan.layers[1..]
        .iter()
        .map(|lp| {
            let sums = if lp.splits.len() > 1 { plan.batch_size } else { 0 };
            (lp.tiles() * lp.micro_batch + sums) * lp.in_capacity * 4
        })
        .sum();
    (BLOCK_PARTIALS_BYTES / per_step.max(1)).saturating_sub(1).clamp(2, t_steps.max(2))
}

/// Floats of layer `li`'s `part_sum` (see [`LayerRt::part_sum`]) for backward blocks of
/// `block` steps and batches of `batch` samples: none for the first layer, a layer of one tile
/// per replica, or a backward pass step by step.
fn part_sum_len(li: usize, lp: &LayerPlan, block: usize, batch: usize) -> usize {
    if li == 0 || lp.splits.len() < 2 || block < 2 {
        0
    } else {
        (block + 1) * batch * lp.in_capacity
    }
}

/// Row-major `[rows][cols]` rows `first..first+n` → input-major `[cols][n]`.
fn copy_in(rowmajor: &[f32], n: usize, first: usize, cols: usize, dst: &mut [f32]) {
    for j in 0..cols {
        for i in 0..n {
            dst[j * n + i] = rowmajor[(first + i) * cols + j];
        }
    }
}

/// Input-major `[cols][n]` → row-major rows `first..first+n`.
fn copy_out(src: &[f32], n: usize, first: usize, cols: usize, rowmajor: &mut [f32]) {
    for j in 0..cols {
        for i in 0..n {
            rowmajor[(first + i) * cols + j] = src[j * n + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile's arena starts on a cache line, however the allocator aligned the words.
    #[test]
    fn arenas_start_on_a_cache_line() {
        let words = vec![0u32; 64];
        for skip in 0..16 {
            let part = &words[skip..];
            let start = cache_aligned(part);
            assert!(start < CACHE_LINE / 4);
            assert_eq!(part[start..].as_ptr() as usize % CACHE_LINE, 0);
        }
        let mut cfg = crate::config::test_config();
        cfg.hidden = vec![40];
        let mut engine = TiledEngine::new(&cfg, &Params::init(&cfg, 1), 1).unwrap();
        for lr in &mut engine.layers {
            for home in lr.tiles.get_mut().iter() {
                assert_eq!(home.arena[home.start..].as_ptr() as usize % CACHE_LINE, 0);
            }
        }
    }

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
