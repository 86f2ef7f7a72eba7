//! A layer at run time: its tiles' homes (cache-line-aligned arenas), its exchange buffers and
//! the buffers of the backward pass, and how the engine reaches them.

use super::arenas::ArenaPtr;
use super::deferred::Deferred;
use super::TiledEngine;
use crate::engine::shared::Shared;
use crate::plan::{LayerPlan, Plan, REPLICA_GROUPS};
use spiketile_core::{
    OutBuffers, SharedWeights, SpikeView, Tile, TileConfig, TileError, TileLayout, TileStats,
};

/// Bytes of a cache line.
pub(super) const CACHE_LINE: usize = 64;

/// Weights of one tile column in [`LayerRt::col_w`]: incoming and recurrent.
pub(super) fn col_lens(cfg: &TileConfig) -> (usize, usize) {
    (cfg.neurons * cfg.inputs, if cfg.recurrent { cfg.neurons * cfg.layer_width } else { 0 })
}

/// One tile's home: its validated layout, arena and spike counts.
pub(super) struct TileHome {
    pub(super) layout: TileLayout,
    /// The tile's arena: its own stretch of the engine's [`Arenas`](super::arenas::Arenas), on a
    /// cache line. A tile's weights and gradients are the first regions of its arena, so a
    /// weight row of 16 floats (16 neurons; 32 take two) is exactly one cache line instead of
    /// straddling two.
    arena: ArenaPtr,
    pub(super) stats: TileStats,
}

// Safety: the arena's words belong to this home alone (the stretches of an `Arenas` are
// disjoint), and the engine keeps the mapping for as long as its homes; access to a home
// follows the engine's phase contract like any other `Shared` element.
unsafe impl Send for TileHome {}

impl TileHome {
    /// A home for a tile of `layout` in `arena` (at least `layout.arena_bytes()` long, zeroed).
    pub(super) fn new(layout: TileLayout, arena: ArenaPtr) -> Self {
        debug_assert!(arena.len * 4 >= layout.arena_bytes());
        TileHome { layout, arena, stats: TileStats::default() }
    }

    /// The arena's words.
    pub(super) fn words(&self) -> &[u32] {
        // Safety: the stretch is this home's alone and lives as long as the engine (above).
        unsafe { std::slice::from_raw_parts(self.arena.words.as_ptr(), self.arena.len) }
    }

    fn words_mut(&mut self) -> &mut [u32] {
        // Safety: as in `words`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.arena.words.as_ptr(), self.arena.len) }
    }

    pub(super) fn tile(&mut self) -> Result<Tile<'_>, TileError> {
        let layout = self.layout;
        Tile::attach_layout(&layout, bytemuck::cast_slice_mut(self.words_mut()))
    }

    /// The tile's own spike buffers, read-only, without attaching it.
    pub(super) fn out_buffers(&self) -> Result<OutBuffers<'_>, TileError> {
        self.layout.out_buffers(bytemuck::cast_slice(self.words()))
    }
}

/// A layer at run time: its plan, tiles and exchange buffers.
pub(super) struct LayerRt {
    pub(super) plan: LayerPlan,
    /// `[r * P + p]`.
    pub(super) tiles: Shared<TileHome>,
    /// The weights every replica of tile column `p` reads: incoming, then recurrent (see
    /// [`TiledEngine::col_weights`]); `col_at[p]` is where they start and how many of each.
    pub(super) col_w: Shared<f32>,
    pub(super) col_at: Vec<(usize, usize, usize)>,
    /// Layer buffers `[t][b][cap + 2]`, global ids.
    pub(super) buf: Shared<u16>,
    /// Where each tile's entries start in the layer buffers, `[p][t][b][2]`: the positions of
    /// its first spike and of its first near-threshold id in the buffer of sample `b` at step `t`
    /// (written by the merge, read by the backward gather: for one tile, a replica's samples of
    /// one step are next to each other).
    pub(super) starts: Shared<u16>,
    /// Partial `dL/dS` of the source layer from each tile, `[slot][r][p][m][in_cap]`: backward
    /// step `t` writes slot `t % (block + 1)` (see [`TiledEngine::block`]); the source layer
    /// (or, for a layer of several tiles per replica, the sum over its tiles) reads step
    /// `t + 1`'s. Empty with [`LayerRt::unit_sums`].
    pub(super) part_src: Shared<f32>,
    /// The partials of `part_src` summed over the layer's tiles (tile order, from zero: the sums
    /// the source layer's gather would make), `[slot][b][in_cap]`; only for a layer of several
    /// tiles per replica in a backward pass in blocks, where the source layer's tiles then read
    /// one buffer instead of every tile's (see [`TiledEngine::sum_partials`], or
    /// [`LayerRt::unit_sums`]).
    pub(super) part_sum: Shared<f32>,
    /// Per sample `b` of a batch, its row in this layer's `part_src` slots, `r * P * m + bl`
    /// (replica `r = b / m`, its sample `bl = b % m`; tile `q`'s row is `m * q` further): the
    /// layer below reads it at every sample and step, and looks it up rather than dividing.
    pub(super) part_row: Vec<usize>,
    /// Partial `dL/dS` of this layer through recurrent weights, `[t % 2][r][p][m][cap]` (a
    /// network with a recurrent layer runs its backward pass step by step).
    pub(super) part_rec: Shared<f32>,
    /// Spikes and near-threshold neurons each tile found at each step while running ahead, before
    /// any capacity cut (`[r * P + p][t][2]`; feed-forward layers only): counted into the tile's
    /// statistics for the steps the layer merge accepts.
    pub(super) ahead_raw: Shared<u32>,
    /// The deferral of the input-weight gradients, where it pays (see [`Deferred`]).
    pub(super) deferred: Option<Deferred>,
    /// Whether each backward unit runs every tile column of its replica group and sums their
    /// partials as it goes, straight into `part_sum` (see [`unit_sums`]); then `part_src` is
    /// empty and no phase sums them.
    pub(super) unit_sums: bool,
}

impl LayerRt {
    pub(super) fn p(&self) -> usize {
        self.plan.splits.len()
    }

    /// The tile columns of one backward unit starting at column `p`: all of them with
    /// [`LayerRt::unit_sums`], else `p` alone.
    pub(super) fn back_cols(&self, p: usize) -> std::ops::Range<usize> {
        if self.unit_sums {
            0..self.p()
        } else {
            p..p + 1
        }
    }

    pub(super) fn groups(&self) -> usize {
        self.plan.replicas.min(REPLICA_GROUPS)
    }

    /// The replicas of group `g`; the first is its leader.
    pub(super) fn group(&self, g: usize) -> std::ops::Range<usize> {
        let (r, k) = (self.plan.replicas, self.groups());
        g * r / k..(g + 1) * r / k
    }

    /// Whether replica `r` leads a group (its gradient buffers hold the group's sum).
    pub(super) fn leads_group(&self, r: usize) -> bool {
        (0..self.groups()).any(|g| self.group(g).start == r)
    }
}

impl TiledEngine {
    /// Layer `l`'s buffer of sample `b` at step `t`.
    ///
    /// Safety: the caller's phase does not write it.
    #[inline(always)]
    pub(super) unsafe fn layer_buf(&self, l: usize, b: usize, t: usize) -> SpikeView<'_> {
        let cap = self.layers[l].plan.capacity;
        let slot =
            unsafe { self.layers[l].buf.slice((t * self.cfg.batch_size + b) * (cap + 2), cap + 2) };
        SpikeView { ids: &slot[2..2 + slot[1] as usize], n_spikes: slot[0] as usize }
    }

    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn home(&self, l: usize, index: usize) -> &mut TileHome {
        unsafe { &mut self.layers[l].tiles.slice_mut(index, 1)[0] }
    }

    /// The weights of tile column `(l, p)`, which every replica's tile reads: replica 0's,
    /// copied there by the update. Only replica 0's tiles keep their own weights up to date
    /// (the optimizer steps there); the other replicas' copies are not read or written after
    /// they are built, so their pages stay untouched.
    ///
    /// Safety: the caller's phase is not the update.
    #[inline(always)]
    pub(super) unsafe fn col_weights(&self, l: usize, p: usize) -> SharedWeights<'_> {
        let lr = &self.layers[l];
        let (at, nw, nv) = lr.col_at[p];
        unsafe { SharedWeights { w: lr.col_w.slice(at, nw), v: lr.col_w.slice(at + nw, nv) } }
    }
}

/// Bytes the backward blocks may spend on partial `dL/dS` buffers, over all layers.
const BLOCK_PARTIALS_BYTES: usize = 256 << 20;

/// Backward steps per block for `plan`: 1 if any layer is recurrent (its tiles exchange
/// `dL/dS` every step, so every layer advances step by step together); otherwise as many as
/// the budget of partial-`dL/dS` buffers allows (they hold every step of a block), at least 2
/// and at most `t_steps`. Blocks change no result: a tile's arithmetic and every sum's order
/// are the same as step by step.
pub(super) fn backward_block(plan: &Plan, t_steps: usize) -> usize {
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

/// Most bytes of weights and gradient rows a backward unit that sums its partials
/// ([`unit_sums`]) may run over: its columns' tiles stay in one core's L2 (2 MiB) while it runs
/// them step by step. 700-4096-20's readout (4 columns of 5 neurons): 640 KiB.
const UNIT_SUMS_BYTES: usize = 1 << 20;

/// Whether layer `li` of `plan`, in backward blocks of `block` steps on `threads` threads, sums
/// its partials inside its backward units ([`LayerRt::unit_sums`]): a layer whose partials are
/// summed (above the first, several tiles per replica, in blocks), whose columns' weights and
/// gradient rows fit [`UNIT_SUMS_BYTES`], and whose replica groups keep every thread busy (one
/// unit per group). The same sums as [`TiledEngine::sum_partials`] (from zero, in tile order),
/// without writing every tile's partials and reading them again in a phase of their own.
/// 700-4096-20 (its readout: 4 columns), three alternating traced pairs, ms per thread and batch:
/// the readout's backward 7.6-7.7 -> 5.7-5.9, its phase of sums (and lists) 2.8 -> 1.0 (the
/// lists alone); all phases 94.9-96.6 -> 93.1-96.7 (docs/performance.md, session 14).
pub(super) fn unit_sums(li: usize, lp: &LayerPlan, block: usize, threads: usize) -> bool {
    let bytes: usize = lp.splits.iter().map(|&(_, n)| 2 * 4 * n * lp.inputs).sum();
    li > 0
        && block > 1
        && lp.splits.len() > 1
        && bytes <= UNIT_SUMS_BYTES
        && threads <= lp.replicas.min(REPLICA_GROUPS)
}

/// Floats of layer `li`'s `part_sum` (see [`LayerRt::part_sum`]) for backward blocks of
/// `block` steps and batches of `batch` samples: none for the first layer, a layer of one tile
/// per replica, or a backward pass step by step.
pub(super) fn part_sum_len(li: usize, lp: &LayerPlan, block: usize, batch: usize) -> usize {
    if li == 0 || lp.splits.len() < 2 || block < 2 {
        0
    } else {
        (block + 1) * batch * lp.in_capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Params;

    /// Backward units that sum their partials as they go (two threads: one unit per replica
    /// group) train as units of one column each and a phase that sums them (three threads),
    /// bit for bit, with the input-weight gradients scattered and deferred.
    #[test]
    fn units_that_sum_equal_the_sum_phase() {
        use super::super::deferred::Deferred;
        use crate::data::BinnedSample;
        use crate::engine::{Engine, InputBatch};
        let mut cfg = crate::config::test_config();
        (cfg.hidden, cfg.max_neurons_per_tile, cfg.max_samples_per_tile) =
            (vec![12, 9], Some(4), Some(2));
        (cfg.init_gain, cfg.max_activity) = (12.0, 0.3);
        let params = Params::init(&cfg, 3);
        let train = |threads: usize, defer: bool| {
            let mut e = TiledEngine::new(&cfg, &params, threads).unwrap();
            let sums: Vec<bool> = e.layers.iter().map(|lr| lr.unit_sums).collect();
            if defer {
                for lr in &mut e.layers {
                    lr.deferred = Some(Deferred::with_run(lr, cfg.time_steps, e.block, 4));
                }
            }
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
            let mut losses = Vec::new();
            for _ in 0..3 {
                let samples = crate::cli::bench::random_batch(&cfg, 0.3, &mut rng);
                let refs: Vec<&BinnedSample> = samples.iter().collect();
                let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
                losses.push(e.run_batch(&batch, true).unwrap().loss_sum);
            }
            (sums, losses, e.params(), e.optim_state())
        };
        for defer in [false, true] {
            let (two, three) = (train(2, defer), train(3, defer));
            assert_eq!(two.0, [false, true, false], "a layer of 3 columns sums in its units");
            assert_eq!(three.0, [false; 3], "with more threads than replica groups, a phase");
            assert!(two.2 != params, "training must change the weights");
            assert!(two.1 == three.1 && two.2 == three.2 && two.3 == three.3, "defer {defer}");
        }
    }

    /// Every tile's arena starts on a cache line.
    #[test]
    fn arenas_start_on_a_cache_line() {
        let mut cfg = crate::config::test_config();
        cfg.hidden = vec![40];
        let mut engine = TiledEngine::new(&cfg, &Params::init(&cfg, 1), 1).unwrap();
        for lr in &mut engine.layers {
            for home in lr.tiles.get_mut().iter() {
                assert_eq!(home.words().as_ptr() as usize % CACHE_LINE, 0);
            }
        }
    }
}
