//! The `dL/dS` of a layer whose every entry's partial lies in one buffer: a feed-forward layer
//! under a layer of one tile per replica, or under one whose partials are summed over its tiles
//! ([`TiledEngine::summed`]). [`TiledEngine::gather_dlds`] works out where a tile-sample-step's
//! partials lie at every call (which layers, buffers and strides; some twenty loads and
//! branches); a [`OneSource`] works them out once per tile run, so that each step looks up its
//! starts and nothing else, and the tile reads its entries where they lie (the same values,
//! each read as `0.0 + x`, as the gather copies them).

use super::TiledEngine;
use crate::engine::shared::Shared;
use spiketile_core::DldsAt;

/// Where the `dL/dS` of one tile column `(l, p)` lie, if one buffer holds all its partials:
/// entry `k` of sample `b`'s buffer at step `t` at `(slots[t + 1] * slot_len + b) * cap + k`.
#[derive(Clone, Copy)]
pub(super) struct OneSource<'a> {
    /// The partials (of the layer above, or their sums over its tiles).
    part: &'a Shared<f32>,
    /// The column's starts: `[t][b][2]`, where its spikes and its near-threshold ids begin.
    starts: &'a [u16],
    /// The partial buffers' slot of each step.
    slots: &'a [usize],
    /// Rows (samples) per slot, and entries per row.
    slot_len: usize,
    cap: usize,
    batch: usize,
}

impl<'a> OneSource<'a> {
    /// Where the column's entries of sample `b` at step `t` start (spikes, near-threshold ids).
    #[inline(always)]
    fn starts(&self, b: usize, t: usize) -> (usize, usize) {
        let i = (t * self.batch + b) * 2;
        (self.starts[i] as usize, self.starts[i + 1] as usize)
    }

    /// Where sample `b`'s partials of step `t` start; `None` at the last step (nothing above
    /// it).
    #[inline(always)]
    fn base(&self, b: usize, t: usize) -> Option<usize> {
        let slot = *self.slots.get(t + 1)?;
        Some((slot * self.slot_len + b) * self.cap)
    }

    /// Where the `ns` spikes' and `nn` near-threshold ids' entries of sample `b` at step `t`
    /// lie, for the tile to read them itself (`0.0 + x` each, as [`TiledEngine::gather_dlds`]
    /// copies them; [`spiketile_core::Tile::backward_deferred_run_at`]); `None` at the last step
    /// (nothing above it: all zeros).
    #[inline(always)]
    pub(super) fn at(
        &self,
        (b, t): (usize, usize),
        (ns, nn): (usize, usize),
    ) -> Option<DldsAt<'a>> {
        let base = self.base(b, t)?;
        let (s0, n0) = self.starts(b, t);
        // Safety: the partials of step t + 1 were written in an earlier phase; backward phases
        // only read them.
        let (spikes, near) =
            unsafe { (self.part.slice(base + s0, ns), self.part.slice(base + n0, nn)) };
        Some(DldsAt { spikes, near })
    }

    /// Asks for the partials [`Self::at`] of sample `b` at step `t` names (a hint).
    #[inline(always)]
    pub(super) fn prefetch(&self, b: usize, t: usize) {
        if let Some(base) = self.base(b, t) {
            let (s0, n0) = self.starts(b, t);
            self.part.prefetch(base + s0);
            self.part.prefetch(base + n0);
        }
    }

    /// Asks for the starts of sample `b` at step `t` (a hint).
    #[inline(always)]
    pub(super) fn prefetch_starts(&self, b: usize, t: usize) {
        if let Some(s) = self.starts.get((t * self.batch + b) * 2) {
            spiketile_core::simd::prefetch(s);
        }
    }
}

impl TiledEngine {
    /// The [`OneSource`] of column `(l, p)`, if one buffer holds all its partials: a
    /// feed-forward layer below another whose partials are summed or which has one tile per
    /// replica. `None` elsewhere (the output layer, recurrent layers, layers under several
    /// unsummed tiles per replica), where [`Self::gather_dlds`] does the general sums.
    pub(super) fn one_source(&self, (l, p): (usize, usize)) -> Option<OneSource<'_>> {
        let (lr, nx) = (&self.layers[l], self.layers.get(l + 1)?);
        if lr.plan.recurrent {
            return None;
        }
        let (t_steps, batch) = (self.cfg.time_steps, self.cfg.batch_size);
        let (part, slot_len) = if self.summed(l + 1) {
            (&nx.part_sum, batch)
        } else if nx.p() == 1 {
            // One tile per replica: sample b's row of the partials is b.
            debug_assert!(nx.part_row.iter().enumerate().all(|(b, &row)| row == b));
            (&nx.part_src, nx.plan.tiles() * nx.plan.micro_batch)
        } else {
            return None;
        };
        let at = self.start_at(p, (0, 0));
        // Safety: starts are read-only in backward phases.
        let starts = unsafe { lr.starts.slice(at, t_steps * batch * 2) };
        Some(OneSource {
            part,
            starts,
            slots: &self.slots,
            slot_len,
            cap: nx.plan.in_capacity,
            batch,
        })
    }
}
