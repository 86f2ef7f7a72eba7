//! The forward step: integrating the source buffers, the membrane update, the candidate spike
//! buffer, and the commit of what the layer merge kept.

use super::{slot_view, store_checked, SharedWeights, StepInput, Tile};
use crate::lif::integrate_masks;
use crate::rows::accumulate_rows;
use crate::spikes::{build_from_masks, build_into, BuildResult, SpikeView};
use crate::TileError;

impl<'a> Tile<'a> {
    /// Forward compute of step `t` for sample `b`: integrates `input` (`S_{l-1}[t-1]`, global
    /// ids) and, if recurrent, `rec` (`S_l[t-1]`), updates membranes, and writes the candidate
    /// buffer ([`Tile::out_buffer`], local ids). Commit it with [`Tile::commit`] after the
    /// exchange, before step `t + 1`.
    pub fn forward(
        &mut self,
        t: usize,
        b: usize,
        input: SpikeView<'_>,
        rec: SpikeView<'_>,
    ) -> Result<BuildResult, TileError> {
        self.forward_shared(t, b, input, rec, None)
    }

    /// [`Tile::forward`], reading the weights from `shared` instead of the tile's own copy.
    ///
    /// For drivers that run the replicas of one tile (identical weights, bit for bit, since every
    /// replica applies the same summed gradient) on one core: reading one copy keeps it in cache.
    /// The result is identical to [`Tile::forward`] with equal weights. `BadInput` if the shapes
    /// differ from the tile's.
    pub fn forward_shared(
        &mut self,
        t: usize,
        b: usize,
        input: SpikeView<'_>,
        rec: SpikeView<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> Result<BuildResult, TileError> {
        self.check_step(t, b, &input, &rec, &shared)?;
        let cfg = self.cfg;
        // The ids are checked while they are copied into the history (one pass over them); a
        // refused step leaves its history slots empty.
        let (si, sr) = (self.in_slot(t, b), self.rec_slot(t, b));
        let in_slot = &mut self.in_hist[si..si + cfg.in_capacity + 2];
        let mut ids_ok = store_checked(in_slot, input, cfg.inputs);
        if cfg.recurrent {
            let rec_slot = &mut self.rec_hist[sr..sr + cfg.layer_capacity + 2];
            ids_ok &= store_checked(rec_slot, rec, cfg.layer_width);
        }
        if !ids_ok {
            self.in_hist[si..si + 2].fill(0);
            if cfg.recurrent {
                self.rec_hist[sr..sr + 2].fill(0);
            }
            return Err(TileError::BadInput);
        }
        Ok(self.forward_step(t, b, StepInput { input, rec }, shared))
    }

    /// The checks of a forward step before its ids: `(t, b)` in range, the shared weights' shapes,
    /// the buffers' lengths (a tile that is not recurrent takes no own-layer buffer).
    pub(super) fn check_step(
        &self,
        t: usize,
        b: usize,
        input: &SpikeView<'_>,
        rec: &SpikeView<'_>,
        shared: &Option<SharedWeights<'_>>,
    ) -> Result<(), TileError> {
        self.check_tb(t, b)?;
        self.check_shared(shared)?;
        self.check_lengths(input, rec)
    }

    /// The buffers' lengths of a step: within their capacities, and no own-layer buffer for a
    /// tile that is not recurrent.
    pub(super) fn check_lengths(
        &self,
        input: &SpikeView<'_>,
        rec: &SpikeView<'_>,
    ) -> Result<(), TileError> {
        let cfg = &self.cfg;
        let rec_ok =
            if cfg.recurrent { Self::fits(rec, cfg.layer_capacity) } else { rec.ids.is_empty() };
        if Self::fits(input, cfg.in_capacity) && rec_ok {
            Ok(())
        } else {
            Err(TileError::BadInput)
        }
    }

    /// The forward step after every check: integrates `step`, updates the membranes and writes
    /// the candidate buffer and the membranes of its gradient set.
    pub(super) fn forward_step(
        &mut self,
        t: usize,
        b: usize,
        step_in: StepInput<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> BuildResult {
        self.forward_step_with::<false>(t, b, step_in, shared)
    }

    /// [`Self::forward_step`], with the row sums inlined (`INLINE`: for a caller compiled for
    /// wider vector instructions, see [`super::run`]) or dispatched at run time.
    #[inline(always)]
    pub(super) fn forward_step_with<const INLINE: bool>(
        &mut self,
        t: usize,
        b: usize,
        step_in: StepInput<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> BuildResult {
        let cfg = self.cfg;
        let n = cfg.neurons;
        let (input, rec) = (step_in.input, step_in.rec);
        let (w, v): (&[f32], &[f32]) = match &shared {
            Some(sh) => (sh.w, sh.v),
            None => (self.w, self.v),
        };
        if INLINE {
            crate::rows::accumulate_rows_inline(self.cur, w, input.spikes(), true);
        } else {
            accumulate_rows(self.cur, w, input.spikes(), true);
        }
        if cfg.recurrent {
            accumulate_rows(self.cur, v, rec.spikes(), false);
        }
        let step = self.step_index(t, b);
        let prev_step = step.wrapping_sub(cfg.batch);
        let u = &mut self.u[b * n..(b + 1) * n];
        if t == 0 {
            u.fill(0.0);
        } else {
            let s = prev_step * (cfg.own_capacity() + 2);
            let prev = slot_view(&self.out_hist[s..]);
            for &i in prev.spikes() {
                u[i as usize] = 0.0;
            }
        }
        let (alpha, theta) = (self.params.lif.alpha, self.params.lif.theta);
        let kt = cfg.own_capacity();
        let s = step * (kt + 2);
        let slot = &mut self.out_hist[s..s + kt + 2];
        let r = if n <= 64 {
            // The usual tile: update and masks in one pass.
            let lower = theta - self.params.window;
            let (spikes, at_least_lower) = integrate_masks(u, self.cur, alpha, theta, lower);
            build_from_masks(spikes, at_least_lower, &mut slot[2..])
        } else {
            let one_minus = 1.0 - alpha;
            for (u, &x) in u.iter_mut().zip(self.cur.iter()) {
                *u = alpha * *u + one_minus * x;
            }
            build_into(u, theta, self.params.window, &mut slot[2..])
        };
        keep_gradient_set(slot, &mut self.u_hist[step * kt..][..kt], u, &r);
        self.store_masks(step);
        self.stats.spikes_raw += r.raw_spikes as u64;
        self.stats.near_raw += r.raw_near as u64;
        r
    }

    /// The tile's buffer of step `t`, sample `b` (local ids): candidates after
    /// [`Tile::forward`], what the layer kept after [`Tile::commit`].
    pub fn out_buffer(&self, t: usize, b: usize) -> SpikeView<'_> {
        slot_view(&self.out_hist[self.out_slot(t, b)..])
    }

    /// The source-layer buffer the tile integrated at step `t` (global ids of `S_{l-1}[t-1]`).
    pub fn in_buffer(&self, t: usize, b: usize) -> SpikeView<'_> {
        slot_view(&self.in_hist[self.in_slot(t, b)..])
    }

    /// The own-layer buffer a recurrent tile integrated at step `t` (`S_l[t-1]`); empty if not
    /// recurrent.
    pub fn rec_buffer(&self, t: usize, b: usize) -> SpikeView<'_> {
        if self.cfg.recurrent {
            slot_view(&self.rec_hist[self.rec_slot(t, b)..])
        } else {
            SpikeView::EMPTY
        }
    }

    /// Keeps the first `keep_spikes` spikes and the first `keep_near` near-threshold ids of the
    /// candidate buffer of step `t`, sample `b` (what the layer merge kept); the rest is dropped.
    pub fn commit(
        &mut self,
        t: usize,
        b: usize,
        keep_spikes: usize,
        keep_near: usize,
    ) -> Result<(), TileError> {
        self.check_tb(t, b)?;
        let step = self.step_index(t, b);
        let kt = self.cfg.own_capacity();
        let s = step * (kt + 2);
        let slot = &mut self.out_hist[s..s + kt + 2];
        let (ns, ng) = (slot[0] as usize, slot[1] as usize);
        if keep_spikes > ns || keep_near > ng - ns {
            return Err(TileError::OutOfRange);
        }
        if keep_spikes < ns {
            slot.copy_within(2 + ns..2 + ns + keep_near, 2 + keep_spikes);
            let uh = &mut self.u_hist[step * kt..][..kt];
            uh.copy_within(ns..ns + keep_near, keep_spikes);
        }
        slot[0] = keep_spikes as u16;
        slot[1] = (keep_spikes + keep_near) as u16;
        self.store_masks(step);
        self.stats.spikes_kept += keep_spikes as u64;
        self.stats.near_kept += keep_near as u64;
        Ok(())
    }

    /// Commits the whole candidate buffer (a layer on one tile, or nothing over capacity).
    pub fn commit_all(&mut self, t: usize, b: usize) -> Result<(), TileError> {
        let v = self.out_buffer(t, b);
        let (ns, nn) = (v.n_spikes, v.near().len());
        self.commit(t, b, ns, nn)
    }
}

/// Writes the counts of a candidate buffer `r` into its `slot`'s header (the ids are in place)
/// and the membranes `u` of its gradient set into `uh`, in the set's order: what the backward
/// step reads of a forward step.
#[inline(always)]
pub(super) fn keep_gradient_set(slot: &mut [u16], uh: &mut [f32], u: &[f32], r: &BuildResult) {
    slot[0] = r.n_spikes as u16;
    slot[1] = r.n_grad as u16;
    let n = u.len();
    if r.n_spikes == 0 && r.n_grad == n {
        // The gradient set is the whole tile in order (ids ascending, none spiking): a
        // readout's usual step.
        uh[..n].copy_from_slice(u);
    } else {
        for (dst, &i) in uh.iter_mut().zip(&slot[2..2 + r.n_grad]) {
            *dst = u[i as usize];
        }
    }
}
