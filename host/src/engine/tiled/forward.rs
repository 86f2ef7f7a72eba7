//! The forward pass: tiles running all steps ahead, the layer merge that checks them a few steps
//! at a time (or runs them in lockstep), and the loss on the output counts.

use super::run::{BatchCtx, Scratch};
use super::TiledEngine;
use crate::engine::{batch_loss, InputBatch};
use anyhow::Result;
use spiketile_core::spikes::append;
use spiketile_core::{SharedWeights, SpikeView, StepInput, Tile, TileError};
use std::ops::Range;
use std::sync::atomic::Ordering;

impl TiledEngine {
    /// Runs the tiles of replica group `(l, p, g)` (a feed-forward layer) through all steps, each
    /// on its own, as if the layer kept every spike they emit: every replica reads the column's
    /// weights ([`Self::col_weights`]), which stay in this core's cache for the whole run.
    /// [`Self::merge_ahead`] then checks the guess.
    pub(super) fn forward_ahead(
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
        // A wide layer's column weights come from L3: into L2 in one stream as the unit
        // starts, rather than row by row as the first steps' spikes ask for them.
        if self.far_partials(l) {
            spiketile_core::simd::prefetch_lines_l2(shared.w);
            spiketile_core::simd::prefetch_lines_l2(shared.v);
        }
        for r in lr.group(g) {
            // Safety: the tiles of group (l, p, g) and their rows of `ahead_raw` belong to this
            // unit alone in this phase.
            let mut tile = unsafe { self.home(l, r * p_count + p) }.tile()?;
            self.run_ahead(input, (l, r, p), &mut tile, Some(shared), 0..self.cfg.time_steps)?;
        }
        Ok(())
    }

    /// Tile `(l, r, p)` (feed-forward) through `steps`, its own spikes taken as kept, in one
    /// call ([`Tile::forward_external_run`]); records what it found at each step in
    /// `ahead_raw` (its own statistics are left for the merge to count).
    fn run_ahead(
        &self,
        input: &InputBatch,
        (l, r, p): (usize, usize, usize),
        tile: &mut Tile<'_>,
        shared: Option<SharedWeights<'_>>,
        steps: Range<usize>,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let t_steps = self.cfg.time_steps;
        let ti = r * lr.p() + p;
        // Safety: this tile's row of `ahead_raw` belongs to this unit alone in this phase (the
        // forward ahead phase's group, or the merge's replica).
        let raw = unsafe { lr.ahead_raw.slice_mut(ti * t_steps * 2, t_steps * 2) };
        let found: &mut [[u32; 2]] = bytemuck::cast_slice_mut(raw);
        self.run_steps(input, (l, r), tile, shared, steps.clone(), &mut found[steps])
    }

    /// Tile `tile` of replica `(l, r)` (feed-forward) through `steps`, every sample of the
    /// replica at each, in one call ([`Tile::forward_external_run`]): what it found at each
    /// step goes to `found`.
    fn run_steps(
        &self,
        input: &InputBatch,
        (l, r): (usize, usize),
        tile: &mut Tile<'_>,
        shared: Option<SharedWeights<'_>>,
        steps: Range<usize>,
        found: &mut [[u32; 2]],
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let samples = lr.plan.samples_of(r, input.len);
        let (b0, len) = (samples.start, samples.len());
        if l == 0 {
            // The input batch's buffers (what `step_input` looks up for the first layer), in a
            // closure small enough for the run to inline.
            let step = move |t: usize, bl: usize| match t {
                0 => SpikeView::EMPTY,
                _ => input.step(b0 + bl, t - 1),
            };
            return tile.forward_external_run(steps, len, step, shared, found);
        }
        // Safety: layer buffers of the steps before are not written in this phase.
        let step =
            move |t: usize, bl: usize| unsafe { self.step_input(input, l, b0 + bl, t) }.input;
        tile.forward_external_run(steps, len, step, shared, found)
    }

    /// Merges replica `(l, r)`'s tile buffers into the layer buffers, [`MERGE_STEPS`] steps at a
    /// time (each tile's buffers of those steps in one stream), or step by step in lockstep.
    ///
    /// If the layer's tiles ran ahead ([`Self::forward_ahead`]), taking their own spikes as kept,
    /// the guess holds unless the layer drops a spike. Then the replica's tiles run again in
    /// lockstep with the merge from step 0 through the merge's steps (their statistics rolled
    /// back), and from there on merge by merge ([`Self::merge_after_drop`]). Otherwise (a
    /// recurrent layer, or a layer of which at least [`LOCKSTEP_SHARE`] of the replicas dropped
    /// spikes in the last batch) they run in lockstep from the start. Either way the result is
    /// the same, bit for bit; a replica that dropped a spike is counted in `ctx.dropped` for
    /// the next batch's choice.
    ///
    /// [`LOCKSTEP_SHARE`]: super::run::LOCKSTEP_SHARE
    pub(super) fn merge_ahead(
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
        if !ctx.ahead[l] {
            if self.lockstep(ctx, (l, r), 0..t_steps, sc)? {
                ctx.dropped[l].fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        for (p, saved) in sc.stats0[..p_count].iter_mut().enumerate() {
            *saved = home(p).stats;
        }
        let mut t0 = 0;
        while t0 < t_steps {
            let steps = t0..(t0 + MERGE_STEPS).min(t_steps);
            self.count_ahead((l, r), steps.clone());
            t0 = steps.end;
            if self.forward_exchange(input.len, (l, r, steps.clone()), ctx.padded[l], sc)? {
                let mut dropped = self.lockstep_from_start(ctx, (l, r), steps.end, sc)?;
                dropped |= self.merge_after_drop(ctx, (l, r), steps.end, sc)?;
                if dropped {
                    ctx.dropped[l].fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Adds what replica `(l, r)`'s tiles found at `steps` as they ran ahead (`ahead_raw`) to
    /// their statistics.
    fn count_ahead(&self, (l, r): (usize, usize), steps: Range<usize>) {
        let lr = &self.layers[l];
        let (p_count, t_steps) = (lr.p(), self.cfg.time_steps);
        for p in 0..p_count {
            let ti = r * p_count + p;
            // Safety: replica (l, r)'s tiles and rows of `ahead_raw` belong to the caller's
            // unit.
            let raw =
                unsafe { lr.ahead_raw.slice((ti * t_steps + steps.start) * 2, steps.len() * 2) };
            let stats = &mut unsafe { self.home(l, ti) }.stats;
            for found in raw.chunks_exact(2) {
                stats.spikes_raw += found[0] as u64;
                stats.near_raw += found[1] as u64;
            }
        }
    }

    /// Replica `(l, r)`'s tiles again in lockstep from step 0 to `end`, their statistics
    /// rolled back to the merge's start (`sc.stats0`); whether a spike was dropped. Marks the
    /// tiles that lost a spike on the way (`sc.rerun`): the others are where their run ahead
    /// left them, and their histories from `end` on still hold.
    fn lockstep_from_start(
        &self,
        ctx: &BatchCtx<'_>,
        (l, r): (usize, usize),
        end: usize,
        sc: &mut Scratch,
    ) -> Result<bool, TileError> {
        let p_count = self.layers[l].p();
        for (p, saved) in sc.stats0[..p_count].iter().enumerate() {
            // Safety: replica (l, r)'s tiles belong to the caller's unit.
            unsafe { self.home(l, r * p_count + p) }.stats = *saved;
        }
        sc.lost[..p_count].fill(false);
        let dropped = self.lockstep(ctx, (l, r), 0..end, sc)?;
        sc.rerun[..p_count].copy_from_slice(&sc.lost[..p_count]);
        Ok(dropped)
    }

    /// Replica `(l, r)` from step `from` on, after a dropped spike (see [`Self::merge_ahead`]):
    /// merge by merge, the tiles that lost a spike (`sc.rerun`) run ahead through the merge's
    /// steps from their membranes at the start, saved (the others' run ahead of the batch still
    /// holds: neurons of a feed-forward layer do not see each other), and the merge checks them.
    /// If it drops a spike, the tiles take the saved membranes back and run the steps again in
    /// lockstep, or, if some tile has none saved (it ran ahead from step 0), all run again in
    /// lockstep from step 0. After two merges in a row that drop, the rest in lockstep. Whether
    /// a spike was dropped.
    ///
    /// A replica that drops now and then runs most of its steps ahead again, and only its tiles
    /// that lost spikes. At 1 % input and `--init-gain 140.34` (hidden 2.9 %) the drops are
    /// bursts in the first steps: over 40 batches, 35 replicas dropped (first in steps 0-7
    /// mostly), and after them 379 merges ran ahead and 4 dropped. Against every step after the
    /// drop in lockstep, one thread, traced, 40 batches, 3 alternating rounds: the merge phase
    /// 1.26 / 1.14 / 0.93 -> 1.00 / 0.98 / 0.84 ms per batch (median), the batch 7.50 / 7.20 /
    /// 6.32 -> 6.98 / 6.45 / 6.05 ms (every tile running ahead again). At `--init-gain 110` and
    /// 10 % input, where most batches run the layer in lockstep from the start, the same time.
    fn merge_after_drop(
        &self,
        ctx: &BatchCtx<'_>,
        (l, r): (usize, usize),
        from: usize,
        sc: &mut Scratch,
    ) -> Result<bool, TileError> {
        let (input, lr) = (ctx.input, &self.layers[l]);
        let (p_count, t_steps) = (lr.p(), self.cfg.time_steps);
        // Safety: replica (l, r)'s tiles belong to the caller's unit.
        let home = |p: usize| unsafe { self.home(l, r * p_count + p) };
        let per = lr.plan.micro_batch * lr.plan.splits.iter().map(|&(_, n)| n).max().unwrap_or(0);
        if sc.snaps.len() < p_count * per {
            sc.snaps.resize(p_count * per, 0.0);
        }
        let (mut t0, mut in_a_row, mut dropped) = (from, 1, false);
        while t0 < t_steps {
            let all = sc.rerun[..p_count].iter().all(|&x| x);
            if in_a_row >= 2 {
                return Ok(match all {
                    true => self.lockstep(ctx, (l, r), t0..t_steps, sc)?,
                    false => self.lockstep_from_start(ctx, (l, r), t_steps, sc)?,
                } | dropped);
            }
            let steps = t0..(t0 + MERGE_STEPS).min(t_steps);
            t0 = steps.end;
            let tiles = sc.stats.iter_mut().zip(sc.snaps.chunks_exact_mut(per)).zip(&sc.rerun);
            for (p, ((saved, snap), &rerun)) in tiles.take(p_count).enumerate() {
                let home = home(p);
                *saved = home.stats;
                if rerun {
                    let mut tile = home.tile()?;
                    let u = tile.membranes();
                    snap[..u.len()].copy_from_slice(u);
                    // Safety: not the update phase.
                    let shared = unsafe { self.col_weights(l, p) };
                    self.run_ahead(input, (l, r, p), &mut tile, Some(shared), steps.clone())?;
                }
            }
            self.count_ahead((l, r), steps.clone());
            if !self.forward_exchange(input.len, (l, r, steps.clone()), ctx.padded[l], sc)? {
                in_a_row = 0;
                continue;
            }
            in_a_row += 1;
            if !all {
                dropped |= self.lockstep_from_start(ctx, (l, r), steps.end, sc)?;
                continue;
            }
            for (p, (saved, snap)) in
                sc.stats.iter().zip(sc.snaps.chunks_exact(per)).take(p_count).enumerate()
            {
                let home = home(p);
                home.stats = *saved;
                let mut tile = home.tile()?;
                let u = tile.membranes_mut();
                u.copy_from_slice(&snap[..u.len()]);
            }
            dropped |= self.lockstep(ctx, (l, r), steps, sc)?;
        }
        Ok(dropped)
    }

    /// Replica `(l, r)`'s tiles through `steps` in lockstep with the merge, step by step;
    /// whether the layer dropped a spike.
    fn lockstep(
        &self,
        ctx: &BatchCtx<'_>,
        (l, r): (usize, usize),
        steps: Range<usize>,
        sc: &mut Scratch,
    ) -> Result<bool, TileError> {
        let (input, lr) = (ctx.input, &self.layers[l]);
        let p_count = lr.p();
        let mut dropped = false;
        for t in steps {
            for p in 0..p_count {
                // Safety: replica (l, r)'s tiles belong to the caller's unit.
                let home = unsafe { self.home(l, r * p_count + p) };
                let mut tile = home.tile()?;
                // Safety: not the update phase.
                let shared = unsafe { self.col_weights(l, p) };
                if lr.plan.recurrent {
                    self.forward_replica(input, l, r, t, &mut tile, Some(shared))?;
                } else {
                    // A run of one step: the same step as `forward_replica`'s, every sample in
                    // the run's loop (on AVX-512F the lean one).
                    let found = &mut [[0u32; 2]];
                    self.run_steps(input, (l, r), &mut tile, Some(shared), t..t + 1, found)?;
                }
                let stats = tile.stats();
                home.stats.add(&stats);
            }
            dropped |= self.forward_exchange(input.len, (l, r, t..t + 1), ctx.padded[l], sc)?;
        }
        Ok(dropped)
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
    pub(super) unsafe fn step_input<'s>(
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

    /// Merges replica `(l, r)`'s tile buffers of `steps` into the layer buffers (all samples at
    /// once, each tile attached once, tile after tile): spikes in tile order, then
    /// near-threshold ids in tile order, up to the layer's capacity. Tiles are told what the
    /// layer kept ([`Tile::commit`]) only when something was dropped; otherwise their buffers
    /// already are what was kept. Returns whether a spike was dropped (which changes the dropping
    /// tile's next steps: of several steps, the caller then runs them again in lockstep).
    fn forward_exchange(
        &self,
        batch: usize,
        (l, r, steps): (usize, usize, Range<usize>),
        padded: bool,
        sc: &mut Scratch,
    ) -> Result<bool, TileError> {
        let lr = &self.layers[l];
        let (p_count, cap) = (lr.p(), lr.plan.capacity);
        let samples = lr.plan.samples_of(r, batch);
        if p_count == 1 && self.merge_single(batch, (l, r, steps.clone()))? {
            return Ok(false);
        }
        #[cfg(target_arch = "x86_64")]
        // Safety: `lean_merge_fits` holds; this unit owns the replica's tiles, its samples'
        // layer buffers and its tiles' starts of `steps`.
        if self.lean_merge_fits(l) && unsafe { self.merge_lean(batch, (l, r, steps.clone())) }? {
            return Ok(false);
        }
        let m = samples.len();
        // Per (step, sample) cell `k = (t - steps.start) * m + bl`: spikes kept, and the first
        // `cap` near-threshold ids (no more can be kept), each cell's `cap + MERGE_PAD` entries
        // apart.
        debug_assert!(steps.len() <= MERGE_STEPS, "the scratch holds MERGE_STEPS steps");
        let (cells, stride) = (steps.len() * m, cap + MERGE_PAD);
        let (spikes, near) = sc.merged[..2 * cells * stride].split_at_mut(cells * stride);
        let (n_spikes, rest) = sc.lens[..4 * cells].split_at_mut(cells);
        let (n_near, rest) = rest.split_at_mut(cells);
        let (near_raw, taken_before) = rest.split_at_mut(cells);
        n_spikes.fill(0);
        n_near.fill(0);
        near_raw.fill(0);
        // Per step: whether a spike was dropped.
        let mut spike_dropped = [false; MERGE_STEPS];
        // Safety (every `home`): this unit owns the tiles of replica (l, r) in this phase.
        let home = |p: usize| unsafe { self.home(l, r * p_count + p) };
        // Read without attaching the tiles (one is attached below only to commit a drop).
        let mut out = home(0).out_buffers()?;
        for p in 0..p_count {
            // The next tile's buffers and starts, read and written after this one's: at large
            // widths a replica has a hundred or more tiles, too many streams for the hardware
            // to follow (700-4096-20, two threads: merge 8.7-9.1 -> 7.3-7.8 ms per batch).
            let next = match p + 1 < p_count {
                true => Some(home(p + 1).out_buffers()?),
                false => None,
            };
            if let Some(next) = &next {
                next.prefetch_steps(steps.clone());
                for t in steps.clone() {
                    lr.starts.prefetch(self.start_at(p + 1, (samples.start, t)));
                }
            }
            let home = home(p);
            let first = home.layout.config().first_neuron;
            let (mut kept, mut raw, mut lost) = (0, 0, false);
            for (dt, t) in steps.clone().enumerate() {
                // Safety: the samples' entries of step t belong to this unit.
                let at = self.start_at(p, (samples.start, t));
                let starts = unsafe { lr.starts.slice_mut(at, 2 * m) };
                let mut step_dropped = false;
                for (bl, start) in starts.chunks_exact_mut(2).enumerate() {
                    let k = dt * m + bl;
                    let (view, rest) = out.get_with_rest(t, bl);
                    if !padded && view.ids.is_empty() {
                        // Nothing offered (most tile-samples of a quiet layer): what the
                        // appends below would leave. The padded appends take an empty buffer
                        // as they take any other, without a branch on whether it is empty.
                        start[0] = n_spikes[k] as u16;
                        start[1] = near_raw[k] as u16;
                        continue;
                    }
                    let (s, nr) = (view.spikes(), view.near());
                    let (sp, ne) = (&mut spikes[k * stride..], &mut near[k * stride..]);
                    let taken = if padded {
                        let near_rest = &rest[s.len()..];
                        n_near[k] +=
                            append_block(&mut ne[..stride], n_near[k], nr, near_rest, first);
                        append_block(&mut sp[..stride], n_spikes[k], s, rest, first)
                    } else {
                        n_near[k] += append(&mut ne[..cap], n_near[k], nr, first);
                        append(&mut sp[..cap], n_spikes[k], s, first)
                    };
                    n_spikes[k] += taken;
                    near_raw[k] += nr.len();
                    start[0] = (n_spikes[k] - taken) as u16;
                    // Relative to the buffer's spike count, known after the last tile (below).
                    start[1] = (near_raw[k] - nr.len()) as u16;
                    step_dropped |= taken < s.len();
                    kept += taken;
                    raw += nr.len();
                }
                spike_dropped[dt] |= step_dropped;
                lost |= step_dropped;
            }
            sc.lost[p] |= lost;
            // Every near-threshold id counts as kept unless the slow path below says otherwise.
            home.stats.spikes_kept += kept as u64;
            home.stats.near_kept += raw as u64;
            if let Some(next) = next {
                out = next;
            }
        }
        for p in 0..p_count {
            // Safety: as above. A tile's near-threshold ids follow all spikes of the buffer
            // (positions stay below the layer width: kept spikes and offered near-threshold
            // ids are distinct neurons).
            for (dt, t) in steps.clone().enumerate() {
                let at = self.start_at(p, (samples.start, t));
                let starts = unsafe { lr.starts.slice_mut(at, 2 * m) };
                for (start, &ns) in starts.chunks_exact_mut(2).zip(&n_spikes[dt * m..]) {
                    start[1] += ns as u16;
                }
            }
        }
        for (dt, t) in steps.clone().enumerate() {
            let mut dropped = spike_dropped[dt];
            for (bl, b) in samples.clone().enumerate() {
                let k = dt * m + bl;
                let ns = n_spikes[k];
                let kn = near_raw[k].min(cap - ns);
                dropped |= kn < near_raw[k];
                // Safety: sample b's slot of layer l at step t is this unit's alone.
                let slot =
                    unsafe { lr.buf.slice_mut((t * self.cfg.batch_size + b) * (cap + 2), cap + 2) };
                slot[0] = ns as u16;
                slot[1] = (ns + kn) as u16;
                slot[2..2 + ns].copy_from_slice(&spikes[k * stride..k * stride + ns]);
                slot[2 + ns..2 + ns + kn].copy_from_slice(&near[k * stride..k * stride + kn]);
            }
            if dropped {
                self.commit_drops(
                    (l, r, t),
                    &n_spikes[dt * m..][..m],
                    &near_raw[dt * m..][..m],
                    (&mut n_near[dt * m..][..m], &mut taken_before[dt * m..][..m]),
                )?;
            }
        }
        Ok(spike_dropped.contains(&true))
    }

    /// [`Self::forward_exchange`] of a replica of one tile (a readout) whose buffers of `steps`
    /// all fit the layer's capacity: the layer buffers are copies of the tile's, its
    /// near-threshold ids follow its spikes at the start. Returns false, having written nothing,
    /// if a buffer does not fit (the general merge then drops what it must).
    fn merge_single(
        &self,
        batch: usize,
        (l, r, steps): (usize, usize, Range<usize>),
    ) -> Result<bool, TileError> {
        let lr = &self.layers[l];
        let cap = lr.plan.capacity;
        let samples = lr.plan.samples_of(r, batch);
        let m = samples.len();
        // Safety: this unit owns the tiles of replica (l, r) in this phase.
        let home = unsafe { self.home(l, r) };
        if home.layout.config().first_neuron != 0 {
            return Ok(false);
        }
        let out = home.out_buffers()?;
        let fits = |t: usize| (0..m).all(|bl| out.get(t, bl).ids.len() <= cap);
        if !steps.clone().all(fits) {
            return Ok(false);
        }
        let (mut kept, mut near) = (0, 0);
        for t in steps {
            // Safety: the samples' entries of step t belong to this unit.
            let at = self.start_at(0, (samples.start, t));
            let starts = unsafe { lr.starts.slice_mut(at, 2 * m) };
            for ((bl, b), start) in samples.clone().enumerate().zip(starts.chunks_exact_mut(2)) {
                let view = out.get(t, bl);
                let (ns, ng) = (view.n_spikes, view.ids.len());
                // Safety: sample b's slot of layer l at step t is this unit's alone.
                let slot =
                    unsafe { lr.buf.slice_mut((t * self.cfg.batch_size + b) * (cap + 2), cap + 2) };
                slot[0] = ns as u16;
                slot[1] = ng as u16;
                slot[2..2 + ng].copy_from_slice(view.ids);
                start.copy_from_slice(&[0, ns as u16]);
                kept += ns;
                near += ng - ns;
            }
        }
        home.stats.spikes_kept += kept as u64;
        home.stats.near_kept += near as u64;
        Ok(true)
    }

    /// Tells replica `(l, r)`'s tiles what the layer kept of their buffers of step `t`, where
    /// something was dropped: per sample, the layer kept `n_spikes` spikes and took
    /// `near_raw` near-threshold ids offered up to its capacity. What each tile's spikes and
    /// near-threshold ids got is found again as the merge found it, tile after tile (`before`
    /// and `taken_before`: scratch, one entry per sample).
    fn commit_drops(
        &self,
        (l, r, t): (usize, usize, usize),
        n_spikes: &[usize],
        near_raw: &[usize],
        (before, taken_before): (&mut [usize], &mut [usize]),
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let (p_count, cap) = (lr.p(), lr.plan.capacity);
        before.fill(0);
        taken_before.fill(0);
        for p in 0..p_count {
            // Safety: this unit owns the tiles of replica (l, r) in this phase.
            let home = unsafe { self.home(l, r * p_count + p) };
            let mut tile = home.tile()?;
            let mut refused = 0;
            for (bl, (&ns, &offered)) in n_spikes.iter().zip(near_raw).enumerate() {
                let view = tile.out_buffer(t, bl);
                let (s, raw) = (view.spikes().len(), view.near().len());
                let ks = s.min(cap.saturating_sub(taken_before[bl]));
                taken_before[bl] += ks;
                let kn = raw.min((cap - ns).saturating_sub(before[bl]));
                debug_assert!(before[bl] + raw <= offered);
                before[bl] += raw;
                tile.commit(t, bl, ks, kn)?;
                refused += raw - kn;
            }
            // `commit` counted what was kept again on this attachment (`tile`'s own
            // statistics, not added to `home`); the layer's count is corrected here.
            home.stats.near_kept -= refused as u64;
        }
        Ok(())
    }

    pub(super) fn loss(&self, input: &InputBatch) -> Result<f64> {
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
}

/// Steps a replica's merge takes at once, tile after tile, where its tiles ran ahead
/// ([`TiledEngine::merge_ahead`]): each tile's buffers are read in one stream of this many steps.
pub(super) const MERGE_STEPS: usize = 8;

/// Spare entries past the capacity of each sample's merge scratch ([`append_block`]).
pub(super) const MERGE_PAD: usize = 8;

/// Fewest ids a layer's tiles must offer the merge per sample and step, on average, for
/// [`append_block`] to pay (up to [`MERGE_PAD`]; see [`super::TiledEngine::merge_padded`]).
/// Where most tile-samples offer none, the plain loop's exit is always the same and costs
/// nothing, while the block append always writes its block. W's first-layer merge, one
/// thread, alternating traced pairs (plain / a padded append of four entries, ms per batch,
/// session 12): 1 % input (0.05 ids per tile-sample-step) 0.589 / 0.725; 2 % (0.28) 0.68 /
/// 0.69; 5 % (0.75) 0.88 / 0.70; W at `--init-gain 48` (1.19) 0.968 / 0.711; 10 % 3.16 /
/// 2.77. The readout, whose 20 neurons are all near threshold (20 ids, none spiking), is
/// faster plain.
pub(super) const PADDED_MERGE_IDS: f64 = 0.5;

/// [`spiketile_core::spikes::append`] into `out` of capacity `out.len() - MERGE_PAD`: appends
/// `ids + offset` at `out[len..]` as far as the capacity allows and returns how many were taken
/// (a prefix of `ids`). `from` starts with `ids` ([`OutBuffers::get_with_rest`]'s words): up
/// to [`MERGE_PAD`] ids (a tile-sample's usual spikes or near-threshold ids) are copied as one
/// block of `MERGE_PAD` entries from `from`, a vector load, add and store without a branch on
/// how many there are (in a busy layer a different count every call, which the CPU mostly
/// guesses wrong); the entries past the taken ones are spare and the next append overwrites
/// them.
///
/// [`OutBuffers::get_with_rest`]: spiketile_core::OutBuffers::get_with_rest
#[inline(always)]
pub(super) fn append_block(
    out: &mut [u16],
    len: usize,
    ids: &[u16],
    from: &[u16],
    offset: usize,
) -> usize {
    debug_assert!(from.starts_with(ids), "the block starts with the ids");
    let cap = out.len() - MERGE_PAD;
    let take = ids.len().min(cap.saturating_sub(len));
    match (from.get(..MERGE_PAD), out.get_mut(len..len + MERGE_PAD)) {
        (Some(src), Some(dst)) if ids.len() <= MERGE_PAD => {
            let src: &[u16; MERGE_PAD] = src.try_into().expect("a block");
            let dst: &mut [u16; MERGE_PAD] = dst.try_into().expect("a block");
            // Ids plus the tile's first neuron fit u16 (layer widths do).
            add_block(dst, src, offset as u16);
        }
        _ => {
            for (dst, &id) in out[len..len + take].iter_mut().zip(ids) {
                *dst = (id as usize + offset) as u16;
            }
        }
    }
    take
}

/// `dst = src + offset`, lane by lane (wrapping): one SSE2 load, add and store (the compiler
/// leaves the loop as eight scalar ones).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn add_block(dst: &mut [u16; MERGE_PAD], src: &[u16; MERGE_PAD], offset: u16) {
    use std::arch::x86_64::{_mm_add_epi16, _mm_loadu_si128, _mm_set1_epi16, _mm_storeu_si128};
    // SAFETY: SSE2 is part of the x86-64 baseline; both arrays are 16 bytes, read and written
    // unaligned.
    #[allow(unsafe_code)]
    unsafe {
        let v = _mm_loadu_si128(src.as_ptr().cast());
        let sum = _mm_add_epi16(v, _mm_set1_epi16(offset as i16));
        _mm_storeu_si128(dst.as_mut_ptr().cast(), sum);
    }
}

/// `dst = src + offset`, lane by lane (wrapping).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn add_block(dst: &mut [u16; MERGE_PAD], src: &[u16; MERGE_PAD], offset: u16) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.wrapping_add(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::{append_block, MERGE_PAD};
    use crate::data::BinnedSample;
    use crate::engine::tiled::TiledEngine;
    use crate::engine::{Engine, InputBatch};
    use crate::model::Params;
    use spiketile_core::spikes::append;

    #[test]
    fn a_layer_goes_lockstep_once_half_its_replicas_drop() {
        use super::super::run::runs_ahead;
        assert!(runs_ahead(false, 0, 8));
        assert!(runs_ahead(false, 3, 8), "a few replicas' drops keep the layer ahead");
        assert!(!runs_ahead(false, 4, 8));
        assert!(!runs_ahead(false, 1, 1), "a one-replica layer that dropped");
        assert!(!runs_ahead(true, 0, 8), "a recurrent layer is always in lockstep");
    }

    /// Trains `cfg`'s model from its initial weights (seed 3) on three random batches of 30 %
    /// activity, with `setup` run on the engine before each batch: the losses, the overflow per
    /// batch and layer, the weights and the optimizer state.
    fn train_three(
        cfg: &crate::config::ModelConfig,
        setup: impl Fn(&mut TiledEngine),
    ) -> (Vec<f64>, Vec<Vec<u64>>, Params, crate::model::OptimState) {
        let params = Params::init(cfg, 3);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        let mut e = TiledEngine::new(cfg, &params, 2).unwrap();
        let (mut losses, mut overflow) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let samples = crate::cli::bench::random_batch(cfg, 0.3, &mut rng);
            setup(&mut e);
            let refs: Vec<&BinnedSample> = samples.iter().collect();
            let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
            let res = e.run_batch(&batch, true).unwrap();
            losses.push(res.loss_sum);
            overflow.push(res.layers.iter().map(|s| s.overflow).collect());
        }
        assert!(e.params() != params, "training must change the weights");
        (losses, overflow, e.params(), e.optim_state())
    }

    /// A small two-layer model on tiles of 4 neurons and 2 samples, busy (30 % capacity).
    fn busy_config() -> crate::config::ModelConfig {
        let mut cfg = crate::config::test_config();
        (cfg.hidden, cfg.max_neurons_per_tile, cfg.max_samples_per_tile) =
            (vec![12, 9], Some(4), Some(2));
        (cfg.init_gain, cfg.max_activity) = (12.0, 0.3);
        cfg
    }

    /// Merges with and without the padded append, in busy and in overflowing layers (small
    /// capacities: some batches drop spikes and merge in lockstep), train to the same weights,
    /// losses and optimizer state bit for bit.
    #[test]
    fn padded_merges_equal_plain_ones() {
        let cfg = busy_config();
        let train = |padded: bool| {
            train_three(&cfg, |e| e.merge_padded.iter_mut().for_each(|p| *p = padded))
        };
        assert!(train(true) == train(false));
    }

    /// Merges of tiles that ran ahead, `MERGE_STEPS` steps at a time and tile after tile, train
    /// as merges in lockstep, step by step, bit for bit: where near-threshold ids overflow the
    /// capacity (the tiles are told what was kept) and where spikes do (the merge runs the
    /// replica again in lockstep), over more steps than one merge takes; in the layers of
    /// several tiles per replica and in the output layer, of one (whose units merge their
    /// replicas themselves), which overflows in the third case. Only in the last do the tiles
    /// that ran ahead drop spikes (both hidden layers, in the first, second and third merge's
    /// steps: the merge runs them again).
    #[test]
    fn merges_ahead_equal_lockstep_ones() {
        let mut cfg = busy_config();
        cfg.time_steps = 2 * super::MERGE_STEPS + 3;
        for (max_activity, window, out) in
            [(0.3, 1.0, 1.0), (0.2, f32::INFINITY, 1.0), (1.0, 1.0, 0.25), (0.1, 0.5, 1.0)]
        {
            (cfg.max_activity, cfg.window, cfg.output_max_activity) = (max_activity, window, out);
            let train = |ahead: bool| {
                let mut cfg = cfg.clone();
                if out < 1.0 || max_activity < 0.2 {
                    cfg.init_gain = 40.0;
                }
                train_three(&cfg, |e| e.ahead.iter_mut().for_each(|a| *a = ahead))
            };
            let lockstep = train(false);
            let last = |o: &Vec<u64>| o[o.len() - 1];
            assert!(lockstep.1.iter().flatten().any(|&o| o > 0), "overflows: {:?}", lockstep.1);
            assert!(out == 1.0 || lockstep.1.iter().any(|o| last(o) > 0), "{:?}", lockstep.1);
            let what = format!("max activity {max_activity}, window {window}, output {out}");
            assert!(train(true) == lockstep, "{what}");
        }
    }

    /// The lean merge (`lean_merge`: replicas of at most 16 tiles of at most 32 neurons, on a
    /// CPU with AVX-512BW) trains as the general merge, bit for bit: in busy and in overflowing
    /// layers (where it gives up on the steps whose buffers need a cut, and on every step of a
    /// layer in lockstep that drops spikes), on tiles of 4 neurons, of 32 (W's hidden tiles, in a
    /// replica of three) and of uneven widths (ids offset by first neurons that are no multiple
    /// of a register).
    #[test]
    fn lean_merges_equal_general_ones() {
        let mut base = busy_config();
        base.time_steps = 2 * super::MERGE_STEPS + 3;
        let mut cfgs = Vec::new();
        for (max_activity, window, gain) in [(0.3, 1.0, 12.0), (0.1, 0.5, 40.0), (1.0, 1.0, 40.0)] {
            let mut cfg = base.clone();
            (cfg.max_activity, cfg.window, cfg.init_gain) = (max_activity, window, gain);
            cfgs.push(cfg);
        }
        let mut wide = base.clone();
        (wide.inputs, wide.hidden, wide.max_neurons_per_tile) = (40, vec![96], Some(32));
        (wide.max_activity, wide.window, wide.init_gain) = (0.15, 1.0, 30.0);
        cfgs.push(wide);
        let mut uneven = base.clone();
        (uneven.hidden, uneven.max_neurons_per_tile) = (vec![23, 10], Some(7));
        cfgs.push(uneven);
        let lean_cpu =
            spiketile_core::simd::avx512() && std::arch::is_x86_feature_detected!("avx512bw");
        for cfg in &cfgs {
            let what = format!("hidden {:?}, max activity {}", cfg.hidden, cfg.max_activity);
            let e = TiledEngine::new(cfg, &Params::init(cfg, 3), 2).unwrap();
            if lean_cpu {
                assert!(e.lean_merge_fits(0), "{what}: the lean merge takes the first layer");
            }
            let train =
                |lean: bool| train_three(cfg, |e| e.lean_merge.iter_mut().for_each(|x| *x = lean));
            let general = train(false);
            assert!(general.1.iter().flatten().any(|&o| o > 0) || cfg.max_activity == 1.0);
            assert!(train(true) == general, "{what}");
        }
    }

    /// The block append takes what `append` takes and leaves the same taken entries, for every
    /// count of ids (those of one block and more), every room left, from empty to full, and
    /// blocks that end with the buffer's ids, short of a block, or read past them.
    #[test]
    fn block_append_takes_what_append_takes() {
        let ids: Vec<u16> = (0..12).map(|k| 3 * k + 1).collect();
        for cap in 0..12 {
            for len in 0..=cap {
                for n in 0..=ids.len() {
                    for spare in [0, 3, MERGE_PAD] {
                        let mut from = ids[..n].to_vec();
                        from.extend(std::iter::repeat_n(60_000, spare));
                        let mut want = vec![7u16; cap];
                        let mut got = vec![7u16; cap + MERGE_PAD];
                        let a = append(&mut want, len, &ids[..n], 100);
                        let b = append_block(&mut got, len, &ids[..n], &from, 100);
                        let what = format!("cap {cap}, len {len}, {n} ids, {spare} spare");
                        assert_eq!(a, b, "{what}");
                        assert_eq!(got[..len + b], want[..len + a], "{what}");
                    }
                }
            }
        }
    }
}
