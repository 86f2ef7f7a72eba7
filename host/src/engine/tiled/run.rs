//! One batch on the worker threads: the phases every thread runs in turn, each followed by the
//! barrier, with the work stealing and the cost measurements of the schedule.

use super::forward::{MERGE_PAD, MERGE_STEPS, PADDED_MERGE_IDS};
use super::units::{Lists, Measured, Units};
use super::TiledEngine;
use crate::engine::barrier::SpinBarrier;
use crate::engine::claims::Claims;
use crate::engine::trace::{Pass, PhaseKind, Recorder, LAYER, NO_STEP};
use crate::engine::{BatchResult, InputBatch, LayerStats};
use anyhow::{anyhow, ensure, Result};
use spiketile_core::{TileError, TileStats};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Per-thread scratch, allocated once per batch.
pub(super) struct Scratch {
    /// Layer buffers being merged: spikes, then near-threshold ids, `[step][sample][position]`,
    /// each cell `capacity + MERGE_PAD` entries long, for up to `MERGE_STEPS` steps.
    pub(super) merged: Vec<u16>,
    /// Per step and sample: spikes kept, near-threshold ids stored, near-threshold ids offered,
    /// and the scratch of a merge that dropped some.
    pub(super) lens: Vec<usize>,
    /// A replica's tile statistics, saved before each merge of a few steps that may have to
    /// start over, and before its first (`stats0`).
    pub(super) stats: Vec<TileStats>,
    pub(super) stats0: Vec<TileStats>,
    /// The membranes of a replica's tiles at the start of a merge's steps, saved as they run
    /// ahead again after a drop (`[p][the widest tile's batch x neurons]`, see
    /// `merge_after_drop`); empty until a replica drops a spike.
    pub(super) snaps: Vec<f32>,
    /// Per tile of the replica being merged: whether it lost a spike in the merges since this
    /// was last cleared, and whether it runs ahead again after a drop (`merge_after_drop`).
    pub(super) lost: Vec<bool>,
    pub(super) rerun: Vec<bool>,
    /// The `dL/dc` vectors of a unit of a layer with deferred gradients (see
    /// [`super::deferred`]), from the first cache line boundary on ([`Scratch::vecs`]).
    vecs: Vec<f32>,
}

impl Scratch {
    /// The vectors' buffer, starting on a cache line: each vector of a 32-neuron tile is two
    /// whole lines (unaligned, three, and every load of a row kernel's would cross a line).
    pub(super) fn vecs(&mut self) -> &mut [f32] {
        let skip = self.vecs.as_ptr().align_offset(64).min(self.vecs.len());
        &mut self.vecs[skip..]
    }
}

/// The share of a feed-forward layer's replicas that must have dropped a spike in the last
/// batch for the next to run the layer in lockstep from the start (see
/// [`TiledEngine::merge_ahead`]): a replica that drops runs ahead and then again in lockstep,
/// which costs about twice the run ahead (session 21, a network dropping spikes in every
/// batch: 11.5 ms per batch in lockstep against 5.8 ahead with room in its buffers), so running
/// ahead pays while fewer than half the replicas drop.
pub(super) const LOCKSTEP_SHARE: f64 = 0.5;

/// Whether a layer's tiles run ahead of the merge in the next batch: a feed-forward layer of
/// which fewer than [`LOCKSTEP_SHARE`] of the `replicas` dropped a spike (`dropped`) in the
/// last batch.
pub(super) fn runs_ahead(recurrent: bool, dropped: usize, replicas: usize) -> bool {
    !recurrent && (dropped as f64) < LOCKSTEP_SHARE * replicas as f64
}

/// What every thread runs in one batch.
pub(super) struct BatchCtx<'a> {
    pub(super) input: &'a InputBatch,
    pub(super) units: Units,
    pub(super) train: bool,
    pub(super) barrier: SpinBarrier,
    pub(super) error: OnceLock<TileError>,
    pub(super) loss: OnceLock<Result<f64, String>>,
    /// Per layer: whether its tiles run ahead of the merge in this batch (see
    /// [`TiledEngine::merge_ahead`]).
    pub(super) ahead: Vec<bool>,
    /// Per layer: whether its merge appends a tile-sample's ids without a loop in this batch
    /// (see [`TiledEngine::merge_padded`]).
    pub(super) padded: Vec<bool>,
    /// Per layer: how many of its replicas dropped a spike in this batch.
    pub(super) dropped: Vec<AtomicUsize>,
    /// Who runs which unit of the phase under way.
    pub(super) claims: Claims,
}

impl TiledEngine {
    pub(super) fn run(&mut self, input: &InputBatch, train: bool) -> Result<BatchResult> {
        ensure!(
            input.len >= 1 && input.len <= self.cfg.batch_size,
            "batch of {} samples, the engine runs 1 to {}",
            input.len,
            self.cfg.batch_size
        );
        ensure!(input.capacity == self.plan.input_capacity, "input capacity differs from the plan");
        input.check_ids(self.cfg.inputs)?;
        if train {
            // Input spikes kept per input, sample and step.
            let slots = input.len * input.time_steps * self.cfg.inputs;
            self.fit_runs(input.stats.spikes as f64 / slots.max(1) as f64);
        }
        let ctx = BatchCtx {
            input,
            units: self.units(self.threads),
            train,
            barrier: SpinBarrier::new(self.threads),
            error: OnceLock::new(),
            loss: OnceLock::new(),
            ahead: self.ahead.clone(),
            padded: self.merge_padded.clone(),
            dropped: self.layers.iter().map(|_| AtomicUsize::new(0)).collect(),
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
        // Every thread at once on the engine's pool (threads that live as long as the engine:
        // spawning one per batch cost 2-3 % of a batch at 1 % input, see `engine::pool`).
        let recs: Vec<Mutex<Option<Recorder<'_>>>> = recorders.drain(..).map(Mutex::new).collect();
        let this = &*self;
        let ctx_ref = &ctx;
        self.pool.run(&|tid| {
            let rec = recs.get(tid).and_then(|r| r.lock().ok()?.take());
            this.run_thread_or_poison(tid, ctx_ref, rec);
        });
        drop(recs);
        drop(recorders);
        for ((ahead, dropped), lr) in self.ahead.iter_mut().zip(&ctx.dropped).zip(&self.layers) {
            let dropped = dropped.load(Ordering::Relaxed);
            *ahead = runs_ahead(lr.plan.recurrent, dropped, lr.plan.replicas);
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

    /// [`Self::run_thread`]; if it panics (a bug), the barrier is poisoned first, so that the
    /// other threads panic too instead of waiting at it forever, and the panic goes on.
    fn run_thread_or_poison(&self, tid: usize, ctx: &BatchCtx<'_>, rec: Option<Recorder<'_>>) {
        let run = std::panic::AssertUnwindSafe(|| self.run_thread(tid, ctx, rec));
        if let Err(panic) = std::panic::catch_unwind(run) {
            ctx.barrier.poison();
            std::panic::resume_unwind(panic);
        }
    }

    /// The schedule every thread runs for one batch.
    fn run_thread(&self, tid: usize, ctx: &BatchCtx<'_>, mut rec: Option<Recorder<'_>>) {
        let max_cm = self
            .layers
            .iter()
            .map(|l| (l.plan.capacity + MERGE_PAD) * l.plan.micro_batch)
            .max()
            .unwrap_or(1);
        let max_m = self.layers.iter().map(|l| l.plan.micro_batch).max().unwrap_or(1);
        let max_p = self.layers.iter().map(|l| l.p()).max().unwrap_or(1);
        let deferred = self.layers.iter();
        let vecs =
            deferred.flat_map(|l| Some(l.back_cols(0).len() * l.deferred.as_ref()?.unit_len()));
        let max_vecs = vecs.max().unwrap_or(0);
        let mut sc = Scratch {
            merged: vec![0; 2 * MERGE_STEPS * max_cm],
            lens: vec![0; 4 * MERGE_STEPS * max_m],
            stats: vec![TileStats::default(); max_p],
            stats0: vec![TileStats::default(); max_p],
            snaps: Vec::new(),
            lost: vec![false; max_p],
            rerun: vec![false; max_p],
            // With room for the alignment (`Scratch::vecs`).
            vecs: vec![0.0; 16 + max_vecs],
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
        // each replica's merge checks them a few steps at a time (see `merge_ahead`).
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
        // The lists of the deferred gradients' uses, layer by layer (`list_uses`); the first
        // phase while thread 0 computes the loss (the others take its units meanwhile).
        let deferred = (0..self.layers.len()).filter(|&l| self.layers[l].deferred.is_some());
        let mut lists = ctx.train.then_some(deferred).into_iter().flatten().peekable();
        if lists.peek().is_none() {
            ctx.barrier.wait();
            if let Some(r) = rec.as_mut() {
                r.push(Sync, fwd, NO_STEP, 0, 1, Instant::now());
            }
        }
        for l in lists {
            let units = (tid, Lists::Uses(l));
            self.phase(ctx, units, &mut rec, (Exchange, bwd, LAYER | l as u32), |i| {
                self.list_uses(ctx.input, u.lists[i]);
            });
        }
        if !ctx.train {
            return;
        }
        // Backward: each tile gathers its dL/dS from the partials an earlier phase wrote (see
        // `gather_dlds`), then steps back. With a recurrent layer, one phase per step for all
        // layers; otherwise blocks of steps from the end, one phase per layer (top down) and
        // block, each tile running the block's steps in turn.
        // In blocks, a layer of several tiles per replica then sums its partials over its tiles
        // (one phase per replica), so that the layer below reads one buffer (`sum_partials`),
        // unless its units did (`LayerRt::unit_sums`).
        let mut backward =
            |units: Lists, steps: std::ops::Range<usize>, at: u32, layer: Option<usize>| {
                self.phase(ctx, (tid, units), &mut rec, (Compute, bwd, at), |i| {
                    let started = Instant::now();
                    let (l, p0, p1, g) = u.back[i];
                    let vecs = sc.vecs();
                    let unit = (l, p0..p1, g);
                    Self::record(ctx, self.backward_compute(ctx.input, unit, steps.clone(), vecs));
                    self.charge(BackwardCompute, i, started);
                });
                if let Some(l) = layer.filter(|&l| self.summed(l) && !self.layers[l].unit_sums) {
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

    fn collect_stats(&mut self, batch: usize) -> Vec<LayerStats> {
        let t_steps = self.cfg.time_steps as u64;
        self.layers
            .iter_mut()
            .zip(&mut self.merge_padded)
            .map(|(lr, padded)| {
                let mut s = TileStats::default();
                for home in lr.tiles.get_mut() {
                    s.add(&home.stats);
                    home.stats = TileStats::default();
                }
                // Ids each tile offered the merge per sample and step: the merge of the next
                // batch appends them without a loop if they are a few, most of the time some.
                let offered = (s.spikes_raw + s.near_raw) as f64
                    / (lr.p() as u64 * t_steps * batch as u64).max(1) as f64;
                *padded = (PADDED_MERGE_IDS..=MERGE_PAD as f64).contains(&offered);
                LayerStats {
                    spikes: s.spikes_kept,
                    overflow: s.overflow(),
                    neuron_steps: lr.plan.width as u64 * t_steps * batch as u64,
                }
            })
            .collect()
    }
}
