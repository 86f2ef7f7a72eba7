//! A tile: its memory, carved from one arena, and its superstep programs (SPEC §1, §3).
//!
//! One tile owns neurons `first_neuron .. first_neuron + neurons` of one layer for a micro-batch
//! of `batch` samples. Per time step `t` and sample `b` the driver (host engine or firmware) runs:
//!
//! 1. [`Tile::forward`] with the source layer's buffer `S_{l-1}[t-1]` (global ids) and, for a
//!    recurrent layer, the own layer's buffer `S_l[t-1]`; the tile writes its candidate buffer;
//! 2. the exchange: the layer's tiles are merged with [`crate::LayerMerge`], and each tile is told
//!    how many of its spikes and near-threshold ids the layer kept with [`Tile::commit`].
//!
//! Then, for `t = T-1 .. 0`:
//!
//! 3. the driver writes `dL/dS_l[t]` at the tile's gradient set into [`Tile::dlds_mut`];
//! 4. [`Tile::backward`] updates the adjoints, accumulates the weight gradients and writes partial
//!    `dL/dS` for the source layer's gradient set at `t-1` ([`Tile::src_partials`]) and, if
//!    recurrent, for the own layer's ([`Tile::rec_partials`]); the driver sums them over tiles.
//!
//! Finally [`Tile::apply`] runs the optimizer on the tile's own weights.
//!
//! A driver that keeps every step's source buffers itself (as the host engine does) passes them
//! to [`Tile::forward_external`] and [`Tile::backward_external`] instead, and the tile does not
//! copy them into its histories (module `external`). Such a driver may also run a tile through
//! many steps in one call (module `run`: [`Tile::forward_external_run`], a first layer's
//! [`Tile::backward_deferred_run`], or [`Tile::backward_deferred_run_at`] reading its `dL/dS`
//! where the driver's partials lie) or step back every sample of one step in one call (module
//! `samples`: [`Tile::backward_external_samples`]), with the same results bit for bit.
//!
//! A tile of up to 32 neurons also keeps each buffer of its own history as two masks (spikes,
//! near-threshold ids) in the spare end of the buffer's slot, where its ids leave room (see
//! `MASKED_NEURONS`): its backward runs read those instead of the ids.
//!
//! Weights are stored input-major (`w[j * neurons + i]` is the weight from source neuron `j` to
//! local neuron `i`) so that one input spike touches one contiguous row.
//!
//! ```
//! use spiketile_core::{NeuronParams, Optimizer, OptimizerKind, SpikeView, Tile, TileConfig};
//! let cfg = TileConfig {
//!     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
//!     batch: 1, time_steps: 2, in_capacity: 3, layer_capacity: 2,
//!     optimizer: OptimizerKind::Sgd,
//! };
//! let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
//! let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
//! tile.weights_mut().fill(30.0);
//! tile.forward(0, 0, SpikeView::EMPTY, SpikeView::EMPTY).unwrap();
//! tile.commit_all(0, 0).unwrap();
//! let input = SpikeView::new(&[0, 2], 2).unwrap();
//! tile.forward(1, 0, input, SpikeView::EMPTY).unwrap();
//! tile.commit_all(1, 0).unwrap();
//! assert_eq!(tile.out_buffer(1, 0).spikes(), &[0, 1]); // u = 0.05 * 60 = 3 >= 1
//! ```

use crate::budget::pad4;
use crate::spikes::SpikeView;
use crate::{Footprint, NeuronParams, Optimizer, OptimizerKind, TileError};
use bytemuck::Pod;

mod backward;
mod config;
mod external;
mod forward;
mod out_view;
mod run;
mod samples;
#[cfg(test)]
mod tests;
pub use config::{SharedGrads, SharedWeights, TileConfig, TileLayout, TileStats};
pub use external::StepInput;
pub use out_view::OutBuffers;
pub use run::DldsAt;

/// One tile: configuration, parameters and the slices of its arena.
#[derive(Debug)]
pub struct Tile<'a> {
    cfg: TileConfig,
    params: NeuronParams,
    w: &'a mut [f32],
    v: &'a mut [f32],
    dw: &'a mut [f32],
    dv: &'a mut [f32],
    opt: &'a mut [f32],
    u: &'a mut [f32],
    g: &'a mut [f32],
    cur: &'a mut [f32],
    c: &'a mut [f32],
    u_hist: &'a mut [f32],
    dlds: &'a mut [f32],
    src_partials: &'a mut [f32],
    rec_partials: &'a mut [f32],
    out_hist: &'a mut [u16],
    in_hist: &'a mut [u16],
    rec_hist: &'a mut [u16],
    stats: TileStats,
}

/// Takes the next `count` elements of type `T` (`f32` or `u16`) off the front of `rest`, padded
/// to whole 4-byte words. The casts from words cannot fail (`T` is no larger than a word and
/// its alignment divides 4), so they compile to nothing; what remains is one bounds check.
#[inline(always)]
fn carve<'a, T: Pod>(rest: &mut &'a mut [u32], count: usize) -> &'a mut [T] {
    let words = pad4(count * core::mem::size_of::<T>()) / 4;
    let (head, tail) = core::mem::take(rest).split_at_mut(words);
    *rest = tail;
    &mut bytemuck::cast_slice_mut(head)[..count]
}

/// Tiles of up to this many neurons keep each buffer of their own history also as two masks
/// (spikes, near-threshold ids; bit `i` for neuron `i`), in the last [`MASK_ENTRIES`] entries
/// of its slot wherever its ids leave them free (at most `capacity - MASK_ENTRIES` ids): what
/// their backward runs read instead of the ids ([`Tile::backward_deferred_run_at`]). The
/// footprint does not change.
const MASKED_NEURONS: usize = 32;

/// Entries (`u16`) of a slot that hold its masks: `[spikes low, spikes high, near low, near
/// high]`.
const MASK_ENTRIES: usize = 4;

/// The masks of a buffer slot's ids (see [`MASKED_NEURONS`]): its spikes' bits and its
/// near-threshold ids' bits (ids below 32).
fn slot_masks(slot: &[u16]) -> [u32; 2] {
    let view = slot_view(slot);
    let bits = |ids: &[u16]| ids.iter().fold(0u32, |m, &i| m | (1u32 << (i & 31)));
    [bits(view.spikes()), bits(view.near())]
}

/// Writes `masks` into the tail of `slot` (`kt + 2` entries) if its ids leave room and the
/// tile has at most [`MASKED_NEURONS`] neurons (`n`).
#[inline(always)]
fn put_masks(slot: &mut [u16], n: usize, [spikes, near]: [u32; 2]) {
    let (ng, len) = (slot[1] as usize, slot.len());
    if n <= MASKED_NEURONS && ng + MASK_ENTRIES + 2 <= len {
        let tail = &mut slot[len - MASK_ENTRIES..];
        tail.copy_from_slice(&[
            spikes as u16,
            (spikes >> 16) as u16,
            near as u16,
            (near >> 16) as u16,
        ]);
    }
}

/// The masks [`put_masks`] wrote into `slot`, or (no room for them) the masks of its ids.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn get_masks(slot: &[u16]) -> [u32; 2] {
    let (ng, len) = (slot[1] as usize, slot.len());
    if ng + MASK_ENTRIES + 2 <= len {
        let t = &slot[len - MASK_ENTRIES..];
        [u32::from(t[0]) | u32::from(t[1]) << 16, u32::from(t[2]) | u32::from(t[3]) << 16]
    } else {
        slot_masks(slot)
    }
}

/// A buffer slot in a history: `[n_spikes, n_grad, ids...]`.
fn slot_view(slot: &[u16]) -> SpikeView<'_> {
    let n_grad = slot[1] as usize;
    SpikeView { ids: &slot[2..2 + n_grad], n_spikes: slot[0] as usize }
}

/// Stores `view` in `slot`; whether every id is below `width`.
fn store_checked(slot: &mut [u16], view: SpikeView<'_>, width: usize) -> bool {
    slot[0] = view.n_spikes as u16;
    slot[1] = view.ids.len() as u16;
    let mut max = 0u16;
    for (dst, &id) in slot[2..2 + view.ids.len()].iter_mut().zip(view.ids) {
        *dst = id;
        max = max.max(id);
    }
    view.ids.is_empty() || (max as usize) < width
}

impl<'a> Tile<'a> {
    /// Builds a tile in `arena` (4-byte aligned, at least `cfg.footprint()?.arena()` bytes),
    /// zeroing what it uses. Refuses configurations over [`crate::TILE_SRAM_BYTES`].
    pub fn new(
        cfg: TileConfig,
        params: NeuronParams,
        arena: &'a mut [u8],
    ) -> Result<Self, TileError> {
        let fp = Self::check_arena(&cfg, &params, arena)?;
        arena[..fp.arena()].fill(0);
        Self::attach(cfg, params, arena)
    }

    fn check_arena(
        cfg: &TileConfig,
        params: &NeuronParams,
        arena: &[u8],
    ) -> Result<Footprint, TileError> {
        params.validate()?;
        let fp = Footprint::of(cfg)?;
        fp.check()?;
        if arena.len() < fp.arena() {
            return Err(TileError::ArenaTooSmall { needed: fp.arena(), got: arena.len() });
        }
        if !(arena.as_ptr() as usize).is_multiple_of(4) {
            return Err(TileError::Misaligned);
        }
        Ok(fp)
    }

    /// Re-attaches a tile to an arena that [`Tile::new`] initialised with the same configuration,
    /// keeping its contents (weights, state, history). Spike counts start at zero.
    ///
    /// This is how a driver that keeps many tiles' arenas (rather than `Tile` values) runs a
    /// tile's program: attach, run, drop. A driver that attaches often validates once with
    /// [`TileLayout::new`] and attaches with [`Tile::attach_layout`].
    pub fn attach(
        cfg: TileConfig,
        params: NeuronParams,
        arena: &'a mut [u8],
    ) -> Result<Self, TileError> {
        Self::attach_layout(&TileLayout::new(cfg, params)?, arena)
    }

    /// [`Tile::attach`] with a layout validated beforehand: only the arena's size and alignment
    /// are checked, then it is split into the tile's regions.
    pub fn attach_layout(layout: &TileLayout, arena: &'a mut [u8]) -> Result<Self, TileError> {
        if arena.len() < layout.arena {
            return Err(TileError::ArenaTooSmall { needed: layout.arena, got: arena.len() });
        }
        if !(arena.as_ptr() as usize).is_multiple_of(4) {
            return Err(TileError::Misaligned);
        }
        let (cfg, params, r) = (layout.cfg, layout.params, &layout.regions);
        // Every region is whole 4-byte words (`layout.arena` is their sum).
        let words: &mut [u32] = bytemuck::try_cast_slice_mut(&mut arena[..layout.arena])
            .map_err(|_| TileError::Misaligned)?;
        let mut rest = words;
        let n = cfg.neurons;
        let w = carve(&mut rest, r.weights);
        let v = carve(&mut rest, r.recurrent);
        let dw = carve(&mut rest, r.weights);
        let dv = carve(&mut rest, r.recurrent);
        let opt = carve(&mut rest, r.opt_words);
        let state: &mut [f32] = carve(&mut rest, r.state_words);
        let (u, state) = state.split_at_mut(cfg.batch * n);
        let (g, state) = state.split_at_mut(cfg.batch * n);
        let (cur, c) = state.split_at_mut(n);
        let u_hist = carve(&mut rest, r.u_hist);
        let out_hist = carve(&mut rest, r.out_hist);
        let in_hist = carve(&mut rest, r.in_hist);
        let rec_hist = carve(&mut rest, r.rec_hist);
        let dlds = carve(&mut rest, r.dlds);
        let src_partials = carve(&mut rest, r.src_partials);
        let rec_partials = carve(&mut rest, r.rec_partials);
        debug_assert!(rest.is_empty(), "footprint and carving disagree");
        Ok(Tile {
            cfg,
            params,
            w,
            v,
            dw,
            dv,
            opt,
            u,
            g,
            cur,
            c,
            u_hist,
            dlds,
            src_partials,
            rec_partials,
            out_hist,
            in_hist,
            rec_hist,
            stats: TileStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TileConfig {
        &self.cfg
    }

    /// The neuron parameters.
    pub fn params(&self) -> &NeuronParams {
        &self.params
    }

    /// Incoming weights, input-major: `[inputs][neurons]`.
    pub fn weights(&self) -> &[f32] {
        self.w
    }

    /// Incoming weights, mutable.
    pub fn weights_mut(&mut self) -> &mut [f32] {
        self.w
    }

    /// Recurrent weights, `[layer_width][neurons]` (empty if not recurrent).
    pub fn recurrent(&self) -> &[f32] {
        self.v
    }

    /// Recurrent weights, mutable.
    pub fn recurrent_mut(&mut self) -> &mut [f32] {
        self.v
    }

    /// Accumulated gradients `(dL/dW, dL/dV)`, laid out like the weights.
    pub fn grads(&self) -> (&[f32], &[f32]) {
        (self.dw, self.dv)
    }

    /// Gradients, mutable (the driver sums replicas' gradients here).
    pub fn grads_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        (self.dw, self.dv)
    }

    /// Optimizer state (Adam: first moments of W, second moments of W, then the same for V).
    pub fn optimizer_state(&self) -> &[f32] {
        self.opt
    }

    /// Optimizer state, mutable (for checkpoints).
    pub fn optimizer_state_mut(&mut self) -> &mut [f32] {
        self.opt
    }

    /// The tile's weights to share with its replicas and its gradient buffers for them to
    /// accumulate into (see [`Tile::forward_shared`], [`Tile::backward_shared`]).
    pub fn split_for_replicas(&mut self) -> (SharedWeights<'_>, SharedGrads<'_>) {
        (SharedWeights { w: self.w, v: self.v }, SharedGrads { dw: self.dw, dv: self.dv })
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self) {
        self.dw.fill(0.0);
        self.dv.fill(0.0);
    }

    /// The membranes `u` the next forward step starts from, `[sample][neuron]` over the tile's
    /// batch. A driver that runs steps ahead may save them and put them back
    /// ([`Tile::membranes_mut`]) to run the steps after again from there.
    ///
    /// ```
    /// use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, Tile, TileConfig};
    /// let cfg = TileConfig {
    ///     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 1, recurrent: false,
    ///     batch: 1, time_steps: 3, in_capacity: 1, layer_capacity: 2,
    ///     optimizer: OptimizerKind::Sgd,
    /// };
    /// let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    /// let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    /// tile.weights_mut().copy_from_slice(&[4.0, 8.0]);
    /// let ids = [0u16];
    /// let input = |t: usize, _| if t > 0 { SpikeView::new(&ids, 1).unwrap() } else { SpikeView::EMPTY };
    /// tile.forward_external_run(0..2, 1, input, None, &mut [[0; 2]; 2]).unwrap();
    /// let saved = tile.membranes().to_vec(); // after step 1: u = 0.05 * [4, 8]
    /// tile.forward_external_run(2..3, 1, input, None, &mut [[0; 2]; 1]).unwrap();
    /// let third = tile.out_buffer(2, 0).ids.to_vec();
    /// tile.membranes_mut().copy_from_slice(&saved);
    /// tile.forward_external_run(2..3, 1, input, None, &mut [[0; 2]; 1]).unwrap();
    /// assert_eq!(tile.out_buffer(2, 0).ids, &third[..]); // step 2 again, the same
    /// ```
    pub fn membranes(&self) -> &[f32] {
        self.u
    }

    /// The membranes of [`Tile::membranes`], to put saved ones back.
    pub fn membranes_mut(&mut self) -> &mut [f32] {
        self.u
    }

    /// Spike counts since the last reset.
    pub fn stats(&self) -> TileStats {
        self.stats
    }

    /// Resets the spike counts.
    pub fn reset_stats(&mut self) {
        self.stats = TileStats::default();
    }

    fn check_shared(&self, shared: &Option<SharedWeights<'_>>) -> Result<(), TileError> {
        match shared {
            Some(sh) if sh.w.len() != self.w.len() || sh.v.len() != self.v.len() => {
                Err(TileError::BadInput)
            }
            _ => Ok(()),
        }
    }

    fn check_tb(&self, t: usize, b: usize) -> Result<(), TileError> {
        if t < self.cfg.time_steps && b < self.cfg.batch {
            Ok(())
        } else {
            Err(TileError::OutOfRange)
        }
    }

    /// Index of step `t`, sample `b` in the histories: step-major, so that one step of every
    /// sample is one contiguous stretch of memory (streamed forward, then backward).
    #[inline]
    fn step_index(&self, t: usize, b: usize) -> usize {
        t * self.cfg.batch + b
    }

    fn out_slot(&self, t: usize, b: usize) -> usize {
        self.step_index(t, b) * (self.cfg.own_capacity() + 2)
    }

    /// Writes the masks of sample-step `step`'s own buffer into its slot (see
    /// [`MASKED_NEURONS`]): after every change of a buffer.
    #[inline]
    fn store_masks(&mut self, step: usize) {
        let (n, kt) = (self.cfg.neurons, self.cfg.own_capacity());
        if n <= MASKED_NEURONS {
            let slot = &mut self.out_hist[step * (kt + 2)..][..kt + 2];
            put_masks(slot, n, slot_masks(slot));
        }
    }

    fn in_slot(&self, t: usize, b: usize) -> usize {
        self.step_index(t, b) * (self.cfg.in_capacity + 2)
    }

    fn rec_slot(&self, t: usize, b: usize) -> usize {
        self.step_index(t, b) * (self.cfg.layer_capacity + 2)
    }

    /// Whether `view` fits a buffer of capacity `cap` (its ids are checked by [`store_checked`]).
    fn fits(view: &SpikeView<'_>, cap: usize) -> bool {
        view.ids.len() <= cap && view.n_spikes <= view.ids.len()
    }

    /// Applies optimizer step `step` (1-based) to the weights with the accumulated gradients.
    ///
    /// # Panics
    /// If `opt.kind` differs from the configured optimizer (a programming error).
    pub fn apply(&mut self, opt: &Optimizer, step: u32) {
        assert_eq!(opt.kind, self.cfg.optimizer, "optimizer kind differs from the tile's");
        let (nw, nv) = (self.w.len(), self.v.len());
        match opt.kind {
            OptimizerKind::Sgd => {
                opt.step(step, self.w, self.dw, &mut [], &mut []);
                opt.step(step, self.v, self.dv, &mut [], &mut []);
            }
            OptimizerKind::Adam => {
                let (mw, rest) = self.opt.split_at_mut(nw);
                let (vw, rest) = rest.split_at_mut(nw);
                let (mv, vv) = rest.split_at_mut(nv);
                opt.step(step, self.w, self.dw, mw, vw);
                opt.step(step, self.v, self.dv, mv, vv);
            }
        }
    }
}
