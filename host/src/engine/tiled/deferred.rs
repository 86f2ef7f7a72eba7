//! Deferred input-weight gradients: a layer's tiles keep the `dL/dc` vectors of a *run* of
//! backward steps and add them to the gradient rows once per run, each row once for all its uses
//! ([`rows::gather_add`]), where scattering every step reads and writes a gradient row for every
//! spike of the source layer ([`rows::scatter_add`]).
//!
//! On W (700-256-20) the first layer's tiles have 700 gradient rows of 32 floats (87.5 KiB,
//! more than L1) and scatter into about 35 of them per sample and step. A replica group's 32
//! samples over a run of 12 steps (48 KiB of vectors) use each row about 19 times; each row is
//! then loaded and stored once, its uses summed in registers, two rows at a time.
//!
//! The uses of each row are listed once per batch, replica group and run, in a phase of their
//! own before the backward pass ([`TiledEngine::list_uses`]), and shared by the group's tile
//! columns. A row's list is in the order the scatters would have run (steps from the last, then
//! replicas, then samples), so the gradients are the same bit for bit.
//!
//! Measured on W (docs/performance.md, session 10): 1 to 3 % more samples/s than the scatters,
//! with 2 threads 10,191–10,219 against 9,966–10,108 in three alternating pairs.
//!
//! A run's length follows the first layer's input ([`run_bytes`]): at 1 % input activity a row
//! takes a quarter of W's uses per run, so the runs grow (up to four times W's) until each row
//! takes about as many again. The engine plans them again when a batch's input wants another
//! size by a margin (`TiledEngine::fit_runs`); the gradients do not depend on them.
//!
//! In a backward pass step by step (a network with a recurrent layer: every step is a phase of
//! its own), each unit keeps its run's vectors in a buffer of its own from phase to phase, since
//! the next step's phase may run it on the other thread; a recurrent layer's recurrent-weight
//! gradients are still scattered (session 15: recurrent W 1.25 × with the dot products' change).

use super::layer::LayerRt;
use super::TiledEngine;
use crate::engine::shared::Shared;
use crate::engine::InputBatch;
use spiketile_core::{rows, SharedGrads, SharedWeights, SpikeView, Tile, TileError};
use std::ops::Range;

/// Bytes of `dL/dc` vectors a unit keeps for one run. Measured on W, one thread, two rounds
/// (samples/s): 16 KiB 5,039 / 4,943; 24 KiB 5,285 / 5,221; 32 KiB 5,416 / 5,405; 48 KiB
/// 5,478 / 5,443; 64 KiB 5,400 / 5,425; 96 KiB 5,390 / 5,332; the scatters 5,343 / 5,349.
/// Sparser input lengthens the runs ([`run_bytes`]).
const RUN_BYTES: usize = 48 << 10;

/// The most bytes of vectors a run keeps, however sparse its source layer.
const MAX_RUN_BYTES: usize = 4 * RUN_BYTES;

/// Uses per gradient row and run that [`run_bytes`] aims for: each row is loaded and stored once
/// per run, so a run whose rows take few uses pays that for little. A run of [`RUN_BYTES`] gives
/// W's rows of 32 floats (384 vectors per slot) about 19 uses at 5 % input activity, 38 at 10 %,
/// but 3.8 at 1 %, where runs twice and four times as long ran faster. Matched networks
/// (hidden layer 3 %), one thread, traced first-layer backward per batch, 4 alternating rounds
/// (median): 1 % input 2.44 / 2.26 / 2.15 ms at 48 / 96 / 192 KiB; W (5 %) 3.44 / 3.45 / 3.92
/// ms; 10 % 4.79 / 4.94 / 5.48 ms (its lists, too, 0.74 / 1.00 / 1.04 ms).
const USES_PER_ROW: f64 = 16.0;

/// Bytes of vectors per run for a layer whose tile columns are `lanes` wide and whose source
/// buffers hold a fraction `activity` of their neurons (per sample and step; `None` unknown):
/// [`RUN_BYTES`], or where that leaves each row fewer than [`USES_PER_ROW`] uses, twice or four
/// times as many (the nearest of the three in ratio to what would give the uses, up to
/// [`MAX_RUN_BYTES`]).
pub(super) fn run_bytes(lanes: usize, activity: Option<f64>) -> usize {
    let Some(want) = activity.map(|a| wanted_bytes(lanes, a)) else { return RUN_BYTES };
    [RUN_BYTES, 2 * RUN_BYTES, MAX_RUN_BYTES]
        .into_iter()
        .min_by(|&x, &y| ratio(x as f64, want).total_cmp(&ratio(y as f64, want)))
        .unwrap_or(RUN_BYTES)
}

/// The bytes of vectors that give each row [`USES_PER_ROW`] uses per run at `activity`
/// (unbounded).
fn wanted_bytes(lanes: usize, activity: f64) -> f64 {
    USES_PER_ROW * (4 * lanes.max(1)) as f64 / activity.max(1e-6)
}

/// How far apart `a` and `b` are, as a ratio of at least 1.
fn ratio(a: f64, b: f64) -> f64 {
    (a / b).max(b / a)
}

/// Fewest steps per run for deferring to pay: a prototype at W's shape took 2.57 ns per use
/// with runs of 2 steps, 1.72 with 4 and 1.26 with 8, against 2.13 for the scatter.
const MIN_RUN: usize = 4;

/// Largest gradient rows (a tile column's, in bytes) that are scattered into directly: they stay
/// in L1 (48 KiB here), so each scatter costs no more than its share of a gather, and the lists
/// would be pure overhead. W's readout (256 x 20 floats, 20 KiB): its lists took 0.10-0.17 ms
/// per thread and batch, its backward 0.02 ms more without them; W 11,165 / 11,073 / 11,004
/// samples/s against 10,944 / 10,892 / 10,958 with them (alternating), the same checkpoints.
const L1_ROWS_BYTES: usize = 32 << 10;

/// A layer's deferred input-weight gradients: its runs, the lists of uses and the vectors.
pub(super) struct Deferred {
    /// The runs, top down; each lies within one backward block.
    runs: Vec<Range<usize>>,
    /// Steps of the longest run.
    run: usize,
    /// Bytes of vectors per run the runs were planned for ([`run_bytes`]).
    bytes: usize,
    /// Vector slots per step of a run: the samples of the largest replica group. Vector `k` of
    /// a run ending at `hi` is step `t`, replica `r` of a group starting at `r0`, its sample
    /// `bl`: `k = (hi - 1 - t) * slots + (r - r0) * m + bl`.
    slots: usize,
    /// Floats per vector slot of a unit's vectors: the width of the widest tile column.
    lanes: usize,
    /// Rows of the gradient (the source layer's width).
    inputs: usize,
    /// The most uses a run can list (every slot of every step with a full source buffer).
    run_uses: usize,
    /// Per group and run, where each row's uses start in [`Self::uses`], relative to the run's
    /// own region: `[g][run][inputs + 1]`.
    starts: Shared<u32>,
    /// Per group and run, the vector indices each row takes, row after row: `[g][run][run_uses]`.
    uses: Shared<u16>,
    /// In a backward pass step by step (blocks of 1 step, every step a phase of its own), each
    /// unit's vectors, kept from phase to phase: `[p * groups + g][unit_len]` (a unit may run
    /// on either thread, so the threads' scratch cannot hold them). `None` in blocks.
    step_vecs: Option<Shared<f32>>,
}

impl Deferred {
    /// The deferral of layer `lr` for backward blocks of `block` steps out of `t_steps` (1: step
    /// by step, where the runs span the steps of the whole pass), if it pays: not where a unit's
    /// vectors would leave room for fewer than [`MIN_RUN`] steps in [`RUN_BYTES`] or its runs
    /// would be shorter, nor where a tile column's gradient rows fit in [`L1_ROWS_BYTES`].
    pub(super) fn new(
        lr: &LayerRt,
        t_steps: usize,
        block: usize,
        activity: Option<f64>,
    ) -> Option<Deferred> {
        let lp = &lr.plan;
        let slots = lp.replicas.div_ceil(lr.groups()) * lp.micro_batch;
        let lanes = lp.splits.iter().map(|&(_, n)| n).max()?;
        let bytes = run_bytes(lanes, activity);
        // Whether deferring pays is judged at the base size, so that the choice of deferring
        // does not depend on the input.
        let run = RUN_BYTES / (4 * slots * lanes);
        let rows_bytes = 4 * lp.inputs * lanes;
        if run.min(span(t_steps, block)) < MIN_RUN || rows_bytes <= L1_ROWS_BYTES {
            return None;
        }
        let mut d = Self::with_run(lr, t_steps, block, bytes / (4 * slots * lanes));
        d.bytes = bytes;
        Some(d)
    }

    /// Whether a layer whose source buffers hold a fraction `activity` of their neurons would
    /// take runs of a different size than these by [`run_bytes`], by a margin: the runs are
    /// planned again (which allocates the lists) only where the wanted size lies beyond the
    /// geometric middle between two sizes by a quarter of an octave, so that batches whose
    /// activity wavers about a middle do not plan them again and again.
    pub(super) fn replan(&self, activity: f64) -> bool {
        let want = wanted_bytes(self.lanes, activity).clamp(RUN_BYTES as f64, MAX_RUN_BYTES as f64);
        ratio(want, self.bytes as f64) >= 2f64.powf(0.75)
    }

    /// The deferral of layer `lr` in runs of at most `run` steps (at least 1), each within one
    /// backward block of `block` steps out of `t_steps` (with `block` 1, step by step, within
    /// the whole pass).
    pub(super) fn with_run(lr: &LayerRt, t_steps: usize, block: usize, run: usize) -> Deferred {
        let lp = &lr.plan;
        let groups = lr.groups();
        let slots = lp.replicas.div_ceil(groups) * lp.micro_batch;
        let lanes = lp.splits.iter().map(|&(_, n)| n).max().unwrap_or(0);
        let span = span(t_steps, block);
        // Vector indices are u16.
        let run = run.min(u16::MAX as usize / slots).min(span).max(1);
        let mut runs = Vec::new();
        for k in (0..t_steps.div_ceil(span)).rev() {
            let (lo, mut hi) = (k * span, ((k + 1) * span).min(t_steps));
            while hi > lo {
                let start = hi.saturating_sub(run).max(lo);
                runs.push(start..hi);
                hi = start;
            }
        }
        let run_uses = run * slots * lp.in_capacity;
        let lists = groups * runs.len();
        let step_vecs = (block == 1).then(|| Shared::new(lr.p() * groups * slots * run * lanes));
        Deferred {
            bytes: run * slots * lanes * 4,
            slots,
            lanes,
            inputs: lp.inputs,
            run_uses,
            starts: Shared::new(lists * (lp.inputs + 1)),
            uses: Shared::new(lists * run_uses),
            step_vecs,
            runs,
            run,
        }
    }

    /// How many runs there are (a group lists the uses of each in a unit of its own).
    pub(super) fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Group `g`'s lists of run `ri`: where each row's uses start, and the uses.
    fn list(&self, g: usize, ri: usize) -> (&[u32], &[u16]) {
        let list = g * self.runs.len() + ri;
        // Safety: the lists are written in a phase before the backward pass, which only reads
        // them.
        unsafe {
            (
                self.starts.slice(list * (self.inputs + 1), self.inputs + 1),
                self.uses.slice(list * self.run_uses, self.run_uses),
            )
        }
    }

    /// Bytes of the lists (and of the units' vectors, step by step).
    pub(super) fn bytes(&self) -> usize {
        let vecs = self.step_vecs.as_ref().map_or(0, Shared::len);
        4 * self.starts.len() + 2 * self.uses.len() + 4 * vecs
    }

    /// Floats of one unit's vectors, `[slots * run][lanes]` (the thread's scratch: a unit fills
    /// and empties them run by run).
    pub(super) fn unit_len(&self) -> usize {
        self.slots * self.run * self.lanes
    }
}

/// The steps a run may span: a backward block's, or with blocks of 1 step (step by step) all.
fn span(t_steps: usize, block: usize) -> usize {
    if block == 1 {
        t_steps.max(1)
    } else {
        block.min(t_steps).max(1)
    }
}

impl TiledEngine {
    /// Lists the uses of every gradient row of layer `l` by replica group `g` in run `ri`: per
    /// row, the indices of the vectors to add, in the order the scatters would have run.
    pub(super) fn list_uses(&self, input: &InputBatch, (l, g, ri): (usize, usize, usize)) {
        let lr = &self.layers[l];
        let Some(d) = &lr.deferred else { return };
        let run = d.runs[ri].clone();
        let list = g * d.runs.len() + ri;
        // Safety: each unit (l, g, ri) writes its own lists, which nobody reads in this phase.
        let starts = unsafe { d.starts.slice_mut(list * (d.inputs + 1), d.inputs + 1) };
        let uses = unsafe { d.uses.slice_mut(list * d.run_uses, d.run_uses) };
        let (reps, m) = (lr.group(g), lr.plan.micro_batch);
        // Runs `$body` for every source buffer of the run (`$ids`) with the index of its vector
        // (`$k`), in scatter order.
        macro_rules! each_buffer {
            (|$k:ident, $ids:ident| $body:block) => {
                for t in run.clone().rev() {
                    for r in reps.clone() {
                        let k0 = (run.end - 1 - t) * d.slots + (r - reps.start) * m;
                        for (bl, b) in lr.plan.samples_of(r, input.len).enumerate() {
                            let $k = (k0 + bl) as u16;
                            // Safety: source buffers are read-only after the forward pass.
                            let $ids = unsafe { self.step_input(input, l, b, t) }.input.spikes();
                            $body
                        }
                    }
                }
            };
        }
        // A counting sort by row: counts, the first use of each row, then the uses in order.
        starts.fill(0);
        each_buffer!(|_k, ids| {
            for &j in ids {
                starts[j as usize + 1] += 1;
            }
        });
        for j in 1..starts.len() {
            starts[j] += starts[j - 1];
        }
        each_buffer!(|k, ids| {
            for &j in ids {
                let at = &mut starts[j as usize];
                uses[*at as usize] = k;
                *at += 1;
            }
        });
        // Each row's start moved to its end, the next row's start: shift them back.
        starts.copy_within(..d.inputs, 1);
        starts[0] = 0;
    }

    /// [`TiledEngine::backward_compute`] of a layer with deferred input-weight gradients: run
    /// by run, every replica's tiles write their `dL/dc` vectors instead of scattering them,
    /// then the leader's gradient rows take them from the group's lists.
    pub(super) fn backward_deferred(
        &self,
        input: &InputBatch,
        d: &Deferred,
        (l, cols, g): (usize, Range<usize>, usize),
        steps: Range<usize>,
        vecs: &mut [f32],
    ) -> Result<(), TileError> {
        if let Some(all) = &d.step_vecs {
            debug_assert!(cols.len() == 1 && steps.len() == 1, "step by step: one column");
            return self.backward_deferred_step(input, (d, all), (l, cols.start, g), steps.start);
        }
        if cols.len() > 1 {
            return self.backward_deferred_columns(input, d, (l, cols, g), steps, vecs);
        }
        let lr = &self.layers[l];
        let (p, p_count) = (cols.start, lr.p());
        let reps = lr.group(g);
        // Safety: not the update phase.
        let shared = unsafe { self.col_weights(l, p) };
        self.prefetch_grads(l, cols, reps.start)?;
        // Safety: the tiles of group (l, p, g) and their partial out-buffers belong to this
        // unit.
        let mut tile0 = unsafe { self.home(l, reps.start * p_count + p) }.tile()?;
        // This thread's scratch, in cache from the unit before (a buffer per unit, in a wide
        // layer, would come from memory at each unit's first run).
        let vecs = &mut vecs[..d.unit_len()];
        let n = tile0.config().neurons;
        // A first layer without recurrent weights runs each replica's tile through the run in
        // one call (its steps touch nothing of the other replicas'); elsewhere step after step,
        // replica after replica.
        let runs_whole = l == 0 && !lr.plan.recurrent;
        let runs = d.runs.iter().enumerate();
        for (ri, run) in runs.filter(|(_, run)| run.start >= steps.start && run.end <= steps.end) {
            let unit = (l, p, reps.clone());
            if runs_whole {
                self.deferred_group_run(input, d, unit, run.clone(), &mut tile0, vecs)?;
            } else {
                for t in run.clone().rev() {
                    let (unit, at) = (unit.clone(), (t, run.end));
                    self.deferred_group_step(input, d, unit, at, &mut tile0, shared, vecs)?;
                }
            }
            let (starts, uses) = d.list(g, ri);
            let vecs = &vecs[..d.slots * d.run * n];
            rows::gather_add(tile0.grads_mut().0, n, vecs, starts, uses);
        }
        Ok(())
    }

    /// [`Self::backward_deferred`] of step `t` in a backward pass step by step, every step a
    /// phase of its own: unit `(l, p, g)`'s vectors stay in its own buffer (`all`) from phase to
    /// phase, and the leader's gradient rows take them at the first step of each run. The
    /// replicas after the leader add their recurrent-weight gradients into the leader's.
    fn backward_deferred_step(
        &self,
        input: &InputBatch,
        (d, all): (&Deferred, &Shared<f32>),
        (l, p, g): (usize, usize, usize),
        t: usize,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let p_count = lr.p();
        let reps = lr.group(g);
        let Some(ri) = d.runs.iter().position(|run| run.contains(&t)) else {
            return Err(TileError::OutOfRange);
        };
        let run = d.runs[ri].clone();
        let len = d.unit_len();
        // Safety: unit (l, p, g)'s vectors belong to it alone; not the update phase; the tiles
        // of group (l, p, g) and their partial out-buffers belong to this unit.
        let vecs = unsafe { all.slice_mut((p * lr.groups() + g) * len, len) };
        let shared = unsafe { self.col_weights(l, p) };
        let mut tile0 = unsafe { self.home(l, reps.start * p_count + p) }.tile()?;
        let n = tile0.config().neurons;
        let unit = (l, p, reps.clone());
        self.deferred_group_step(input, d, unit, (t, run.end), &mut tile0, shared, vecs)?;
        if t == run.start {
            let (starts, uses) = d.list(g, ri);
            let vecs = &vecs[..d.slots * d.run * n];
            rows::gather_add(tile0.grads_mut().0, n, vecs, starts, uses);
        }
        Ok(())
    }

    /// Run `run` of column `(l, p)`'s replicas `reps` (a first layer without recurrent weights),
    /// replica after replica, each through all the run's steps in one call
    /// ([`Tile::backward_deferred_run`]): the leader's tile `tile0`, then every other replica's,
    /// each writing its samples' `dL/dc` vectors into their slots of `vecs`. The same vectors
    /// as [`Self::deferred_group_step`] step after step (each replica's steps read and write
    /// only its own tile and slots).
    fn deferred_group_run(
        &self,
        input: &InputBatch,
        d: &Deferred,
        (l, p, reps): (usize, usize, Range<usize>),
        run: Range<usize>,
        tile0: &mut Tile<'_>,
        vecs: &mut [f32],
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let (p_count, m) = (lr.p(), lr.plan.micro_batch);
        let n = tile0.config().neurons;
        let one = self.one_source((l, p));
        for r in reps.clone() {
            let samples = lr.plan.samples_of(r, input.len);
            let (b0, last) = (samples.start, samples.end.saturating_sub(1));
            let at = (r - reps.start) * m * n;
            let (vecs, stride) = (&mut vecs[at..], d.slots * n);
            let mut run_tile = |tile: &mut Tile<'_>| -> Result<(), TileError> {
                // Where the entries of the step after next lie, as the tile starts a step, and
                // this sample's entries of the step before, a step of the tile ahead (as
                // `backward_replica` asks in wide layers). In every layer: the gather waits on
                // these loads, written by the layer above in another phase, and the run's short
                // loops leave the CPU little to do meanwhile. The Zen 4 of session 21, W on one
                // thread, perf, 3 alternating rounds: the gather, the run and this closure 0.75 /
                // 0.68 / 0.77 -> 0.65 / 0.65 / 0.65 of the forward run's samples (1.32 / 1.32 /
                // 1.24 -> 0.94 / 0.94 / 0.92 at 1 % input, `--init-gain 110 --max-activity 0.3`),
                // W 10,881 -> 11,476 samples/s (6 rounds); session 19's Xeon: no change.
                if let Some(one) = one {
                    let at = |t: usize, bl: usize, mine: SpikeView<'_>| {
                        let b = b0 + bl;
                        if bl == 0 && t > 1 {
                            one.prefetch_starts(b0, t - 2);
                            one.prefetch_starts(last, t - 2);
                        }
                        if t > 0 {
                            one.prefetch(b, t - 1);
                        }
                        one.at((b, t), (mine.n_spikes, mine.near().len()))
                    };
                    return tile.backward_deferred_run_at(
                        run.clone(),
                        samples.len(),
                        at,
                        vecs,
                        stride,
                    );
                }
                let dlds = |t: usize, bl: usize, mine: SpikeView<'_>, dst: &mut [f32]| {
                    let b = b0 + bl;
                    if bl == 0 && t > 1 {
                        self.prefetch_dlds_starts((l, p), (b0, t - 2));
                        self.prefetch_dlds_starts((l, p), (last, t - 2));
                    }
                    if t > 0 {
                        self.prefetch_dlds((l, r, p), (b, bl, t - 1));
                    }
                    let counts = (mine.n_spikes, mine.near().len());
                    self.gather_dlds((l, r, p), (b, bl, t), counts, dst);
                };
                tile.backward_deferred_run(run.clone(), samples.len(), dlds, vecs, stride)
            };
            if r == reps.start {
                run_tile(tile0)?;
            } else {
                // Safety: the tiles of the group belong to the caller's unit.
                run_tile(&mut unsafe { self.home(l, r * p_count + p) }.tile()?)?;
            }
        }
        Ok(())
    }

    /// Step `t` of column `(l, p)`'s replicas `reps` with deferred input-weight gradients, in a
    /// run ending at `run_end`: the leader's tile `tile0`, then every other replica's, each
    /// writing its samples' `dL/dc` vectors into their slots of `vecs`. The replicas after the
    /// leader add their recurrent-weight gradients (if any) into the leader's.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn deferred_group_step(
        &self,
        input: &InputBatch,
        d: &Deferred,
        (l, p, reps): (usize, usize, Range<usize>),
        (t, run_end): (usize, usize),
        tile0: &mut Tile<'_>,
        shared: SharedWeights<'_>,
        vecs: &mut [f32],
    ) -> Result<(), TileError> {
        let (p_count, m) = (self.layers[l].p(), self.layers[l].plan.micro_batch);
        let n = tile0.config().neurons;
        for r in reps.clone() {
            let at = ((run_end - 1 - t) * d.slots + (r - reps.start) * m) * n;
            let v = Some(&mut vecs[at..at + m * n]);
            if r == reps.start {
                self.backward_replica(input, l, r, p, t, tile0, Some(shared), None, v)?;
            } else {
                let (dw, dv) = tile0.grads_mut();
                let grads = Some(SharedGrads { dw, dv });
                // Safety: the tiles of the group belong to the caller's unit.
                let mut tile = unsafe { self.home(l, r * p_count + p) }.tile()?;
                self.backward_replica(input, l, r, p, t, &mut tile, Some(shared), grads, v)?;
            }
        }
        Ok(())
    }

    /// In a wide layer, whose gradient rows come from L3, asks for the gradient rows of the
    /// leader `r0` of columns `cols` into L2, in one stream each (see `forward_ahead`); a hint.
    fn prefetch_grads(&self, l: usize, cols: Range<usize>, r0: usize) -> Result<(), TileError> {
        if self.far_partials(l) {
            for p in cols {
                // Safety: the caller's unit owns the group's tiles.
                let tile = unsafe { self.home(l, r0 * self.layers[l].p() + p) }.tile()?;
                spiketile_core::simd::prefetch_lines_l2(tile.grads().0);
            }
        }
        Ok(())
    }

    /// [`Self::backward_deferred`] of several columns `cols` (see
    /// [`TiledEngine::backward_compute`]): at each step, column after column, each column's
    /// vectors in a part of the thread's scratch of their own. Out of line, as
    /// `backward_columns`.
    #[inline(never)]
    fn backward_deferred_columns(
        &self,
        input: &InputBatch,
        d: &Deferred,
        (l, cols, g): (usize, Range<usize>, usize),
        steps: Range<usize>,
        vecs: &mut [f32],
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let (p_count, m) = (lr.p(), lr.plan.micro_batch);
        let reps = lr.group(g);
        self.prefetch_grads(l, cols.clone(), reps.start)?;
        let len = d.unit_len();
        let vecs = &mut vecs[..cols.len() * len];
        let runs = d.runs.iter().enumerate();
        for (ri, run) in runs.filter(|(_, run)| run.start >= steps.start && run.end <= steps.end) {
            for t in run.clone().rev() {
                for (p, vecs) in cols.clone().zip(vecs.chunks_exact_mut(len)) {
                    // Safety: not the update phase.
                    let shared = Some(unsafe { self.col_weights(l, p) });
                    for r in reps.clone() {
                        // Safety: the tiles of group (l, p, g) and their partial out-buffers
                        // belong to this unit.
                        let mut tile = unsafe { self.home(l, r * p_count + p) }.tile()?;
                        let n = tile.config().neurons;
                        let at = ((run.end - 1 - t) * d.slots + (r - reps.start) * m) * n;
                        let v = Some(&mut vecs[at..at + m * n]);
                        self.backward_replica(input, l, r, p, t, &mut tile, shared, None, v)?;
                    }
                }
            }
            let (starts, uses) = d.list(g, ri);
            for (p, vecs) in cols.clone().zip(vecs.chunks_exact(len)) {
                // Safety: as above.
                let mut tile0 = unsafe { self.home(l, reps.start * p_count + p) }.tile()?;
                let n = tile0.config().neurons;
                let vecs = &vecs[..d.slots * d.run * n];
                rows::gather_add(tile0.grads_mut().0, n, vecs, starts, uses);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BinnedSample;
    use crate::engine::Engine;
    use crate::model::Params;

    /// Runs that do not fill their block, blocks that split a run's worth of steps, a batch
    /// shorter than the engine's, a backward pass step by step (the runs' vectors kept from
    /// phase to phase), recurrent layers (step by step, their recurrent gradients still
    /// scattered into the leader's): the deferred gradients equal the scatters bit for bit.
    #[test]
    fn deferred_runs_equal_the_scatters() {
        for recurrent in [false, true] {
            deferred_runs_equal_the_scatters_in(recurrent);
        }
    }

    fn deferred_runs_equal_the_scatters_in(recurrent: bool) {
        let mut cfg = crate::config::test_config();
        (cfg.hidden, cfg.max_neurons_per_tile, cfg.max_samples_per_tile) =
            (vec![12, 9], Some(4), Some(2));
        (cfg.init_gain, cfg.recurrent) = (12.0, recurrent);
        let params = Params::init(&cfg, 3);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
        let batches: Vec<Vec<BinnedSample>> =
            (0..3).map(|_| crate::cli::bench::random_batch(&cfg, 0.25, &mut rng)).collect();
        // `run` None: no deferral; the second batch runs 5 of the 8 samples.
        let train = |block: usize, run: Option<usize>| {
            let mut e = TiledEngine::new(&cfg, &params, 2).unwrap();
            e.set_backward_block(block).unwrap();
            for lr in &mut e.layers {
                lr.deferred = run.map(|run| Deferred::with_run(lr, cfg.time_steps, block, run));
            }
            let mut losses = Vec::new();
            for (s, samples) in batches.iter().enumerate() {
                let n = if s == 1 { 5 } else { samples.len() };
                let refs: Vec<&BinnedSample> = samples[..n].iter().collect();
                let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
                losses.push(e.run_batch(&batch, true).unwrap().loss_sum);
            }
            (losses, e.params(), e.optim_state())
        };
        let blocks: &[(usize, usize)] = match recurrent {
            false => &[(cfg.time_steps, 4), (7, 4), (7, 7), (10, 3), (cfg.time_steps, 1), (1, 4)],
            true => &[(1, 4), (1, 3), (1, 1), (1, cfg.time_steps)],
        };
        let scattered = train(blocks[blocks.len() - 1].0, None);
        assert!(scattered.1 != params, "training must change the weights");
        for &(block, run) in blocks {
            let deferred = train(block, Some(run));
            let what = format!("recurrent {recurrent}: blocks of {block}, runs of {run}");
            assert!(deferred == scattered, "{what} differ");
        }
    }

    /// The first layer's runs follow the input: planned at the base size, four times as long
    /// after a batch of 1 % input (each row then takes few uses per run), back after one of
    /// 10 %, unchanged by batches whose wanted size lies near the middle between two sizes
    /// (2.7 % after 10 %, 1.65 % after 1 %, each nearer the other size), twice as long at 2 %; and the gradients are those of
    /// an engine whose runs stay at the base size, bit for bit.
    #[test]
    fn runs_follow_the_input_activity() {
        let mut cfg = crate::config::test_config();
        (cfg.inputs, cfg.hidden, cfg.time_steps, cfg.batch_size) = (700, vec![32], 60, 64);
        (cfg.max_activity, cfg.init_gain) = (0.3, 40.0);
        let params = Params::init(&cfg, 2);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(9);
        // Input activity per batch, and its runs' size in multiples of the base size.
        let steps = [(0.01, 4), (0.1, 1), (0.027, 1), (0.01, 4), (0.0165, 4), (0.02, 2)];
        let batches: Vec<Vec<BinnedSample>> = steps
            .iter()
            .map(|&(a, _)| crate::cli::bench::random_batch(&cfg, a, &mut rng))
            .collect();
        let run = |e: &TiledEngine| e.layers[0].deferred.as_ref().map(|d| d.run);
        let mut adapting = TiledEngine::new(&cfg, &params, 1).unwrap();
        let d = adapting.layers[0].deferred.as_ref().expect("the first layer defers");
        let slot_bytes = 4 * d.slots * d.lanes;
        let steps_of = |k: usize| (k * RUN_BYTES / slot_bytes).min(cfg.time_steps);
        let (base, double, quadruple) = (steps_of(1), steps_of(2), steps_of(4));
        assert!(
            base >= MIN_RUN && double > base && quadruple > double,
            "{base} {double} {quadruple}"
        );
        assert_eq!(run(&adapting), Some(base), "the base size");
        // The reference scatters its gradients (the deferred ones equal them bit for bit).
        let mut scattering = TiledEngine::new(&cfg, &params, 1).unwrap();
        scattering.layers.iter_mut().for_each(|lr| lr.deferred = None);
        for ((samples, &(activity, want)), s) in batches.iter().zip(&steps).zip(0..) {
            let refs: Vec<&BinnedSample> = samples.iter().collect();
            let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
            let got = adapting.run_batch(&batch, true).unwrap();
            assert_eq!(run(&adapting), Some(steps_of(want)), "batch {s} at {activity}");
            let base = scattering.run_batch(&batch, true).unwrap();
            assert_eq!(got.loss_sum.to_bits(), base.loss_sum.to_bits(), "batch {s}");
        }
        assert_eq!(run(&scattering), None);
        assert!(adapting.params() == scattering.params(), "the same gradients");
        assert!(adapting.params() != params, "training must change the weights");
    }

    /// The planned deferral: W's first layer defers in runs of 12 steps, step by step too (a
    /// recurrent layer, or blocks of 1); its readout (gradient rows of 20 KiB) and a backward
    /// pass in blocks of 2 or 3 steps do not.
    #[test]
    fn deferral_where_it_pays() {
        let mut cfg = crate::config::test_config();
        (cfg.inputs, cfg.hidden, cfg.classes, cfg.time_steps, cfg.batch_size) =
            (700, vec![256], 20, 100, 64);
        (cfg.max_activity, cfg.window, cfg.output_window) = (0.1, 0.1, f32::INFINITY);
        let params = Params::init(&cfg, 1);
        let e = TiledEngine::new(&cfg, &params, 1).unwrap();
        let runs: Vec<Option<usize>> =
            e.layers.iter().map(|lr| lr.deferred.as_ref().map(|d| d.run)).collect();
        assert_eq!(runs[0], Some(12));
        assert_eq!(runs[1], None);
        let mut e = e;
        e.set_backward_block(3).unwrap();
        assert!(e.layers.iter().all(|lr| lr.deferred.is_none()));
        let runs = |e: &TiledEngine| -> Vec<Option<usize>> {
            e.layers.iter().map(|lr| lr.deferred.as_ref().map(|d| d.run)).collect()
        };
        e.set_backward_block(1).unwrap();
        assert_eq!(runs(&e), [Some(12), None]);
        cfg.recurrent = true;
        let e = TiledEngine::new(&cfg, &Params::init(&cfg, 1), 1).unwrap();
        assert_eq!(e.backward_block(), 1);
        assert_eq!(runs(&e), [Some(12), None]);
    }
}
