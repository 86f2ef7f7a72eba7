//! A tile's own spike buffers read without attaching the tile.
//!
//! An exchange that merges many tiles' buffers at every step (the host engine merges every tile
//! of a replica at every step) only reads them, as long as nothing was dropped.
//! [`TileLayout::out_buffers`] finds them in the arena from the layout alone, where
//! [`Tile::attach_layout`] carves every region of the tile.
//!
//! ```
//! use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, Tile, TileConfig, TileLayout};
//! let cfg = TileConfig {
//!     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
//!     batch: 1, time_steps: 2, in_capacity: 3, layer_capacity: 2,
//!     optimizer: OptimizerKind::Sgd,
//! };
//! let layout = TileLayout::new(cfg, NeuronParams::default()).unwrap();
//! let mut arena = vec![0u32; layout.arena_bytes() / 4];
//! let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
//! tile.weights_mut().fill(30.0);
//! tile.forward(0, 0, SpikeView::EMPTY, SpikeView::EMPTY).unwrap();
//! tile.forward(1, 0, SpikeView::new(&[0, 2], 2).unwrap(), SpikeView::EMPTY).unwrap();
//! let out = layout.out_buffers(bytemuck::cast_slice(&arena)).unwrap();
//! assert_eq!(out.get(1, 0).spikes(), &[0, 1]);
//! let (view, rest) = out.get_with_rest(1, 0);
//! assert_eq!(rest[..view.ids.len()], *view.ids);
//! assert_eq!(out.step(1)[..4], [2, 2, 0, 1]); // two spikes, no near-threshold id
//! assert_eq!(out.slot_words(), 4);
//! ```

use super::{slot_view, Tile, TileLayout};
use crate::simd::prefetch_lines;
use crate::spikes::SpikeView;
use crate::TileError;

/// The own spike buffers of one tile, every step and sample, read-only
/// ([`TileLayout::out_buffers`]).
#[derive(Clone, Copy, Debug)]
pub struct OutBuffers<'a> {
    slots: &'a [u16],
    /// Words per slot: `own_capacity + 2`.
    slot: usize,
    batch: usize,
}

impl<'a> OutBuffers<'a> {
    /// The buffer of step `t`, sample `b`: what [`Tile::out_buffer`] returns.
    ///
    /// # Panics
    /// If `(t, b)` is out of the tile's range.
    #[inline]
    pub fn get(&self, t: usize, b: usize) -> SpikeView<'a> {
        self.get_with_rest(t, b).0
    }

    /// [`OutBuffers::get`], with the buffers' words from the first id of this one to the end of
    /// the last (a prefix of them are the ids): for a driver that copies ids in fixed-size
    /// blocks, reading past the buffer's own ids into what follows (spare words, the next
    /// buffers) rather than looping over their count.
    ///
    /// # Panics
    /// If `(t, b)` is out of the tile's range.
    #[inline]
    pub fn get_with_rest(&self, t: usize, b: usize) -> (SpikeView<'a>, &'a [u16]) {
        assert!(b < self.batch, "sample {b} of a tile of {}", self.batch);
        let slot = &self.slots[(t * self.batch + b) * self.slot..];
        (slot_view(slot), &slot[2..])
    }

    /// The slots of step `t`, every sample's in turn, each [`OutBuffers::slot_words`] long:
    /// `[n_spikes, n_grad, ids..., spare]`, the ids the gradient set ([`OutBuffers::get`]'s),
    /// spikes first. For a driver that copies the ids in blocks of a fixed size under a mask of
    /// their count (the words past them are the slot's spare ones).
    ///
    /// # Panics
    /// If `t` is out of the tile's range.
    #[inline]
    pub fn step(&self, t: usize) -> &'a [u16] {
        let len = self.batch * self.slot;
        &self.slots[t * len..][..len]
    }

    /// Words per slot of [`OutBuffers::step`]: the tile's own capacity + 2.
    #[inline]
    pub fn slot_words(&self) -> usize {
        self.slot
    }

    /// Asks the CPU to start loading the buffers of `steps`, every sample (see
    /// [`Tile::prefetch_out_buffers`]). A hint: it changes no result, and steps out of range
    /// are ignored.
    #[inline]
    pub fn prefetch_steps(&self, steps: core::ops::Range<usize>) {
        let len = self.batch * self.slot;
        let end = steps.end.min(self.slots.len() / len.max(1));
        let at = steps.start.checked_mul(len).zip(end.checked_mul(len));
        if let Some(slots) = at.and_then(|(a, b)| self.slots.get(a..b)) {
            prefetch_lines(slots);
        }
    }
}

impl TileLayout {
    /// The own spike buffers of the tile of this layout in `arena` (initialised by [`Tile::new`]
    /// with this configuration), without attaching it. The same checks of the arena as
    /// [`Tile::attach_layout`]: `ArenaTooSmall`, `Misaligned`.
    pub fn out_buffers<'a>(&self, arena: &'a [u8]) -> Result<OutBuffers<'a>, TileError> {
        if arena.len() < self.arena {
            return Err(TileError::ArenaTooSmall { needed: self.arena, got: arena.len() });
        }
        let r = &self.regions;
        // The regions before the buffers, in the order `Tile::attach_layout` carves them, all
        // of f32 words.
        let before = 2 * r.weights + 2 * r.recurrent + r.opt_words + r.state_words + r.u_hist;
        let words: &[u32] =
            bytemuck::try_cast_slice(&arena[..self.arena]).map_err(|_| TileError::Misaligned)?;
        let slots: &[u16] = bytemuck::cast_slice(&words[before..]);
        let cfg = &self.cfg;
        Ok(OutBuffers {
            slots: &slots[..r.out_hist],
            slot: cfg.own_capacity() + 2,
            batch: cfg.batch,
        })
    }
}

impl Tile<'_> {
    /// Asks the CPU to start loading the tile's buffers of step `t`, every sample
    /// ([`Tile::out_buffer`]), for a driver that merges them a while later. A hint: it changes no
    /// result, and an out-of-range `t` is ignored.
    #[inline]
    pub fn prefetch_out_buffers(&self, t: usize) {
        if t < self.cfg.time_steps {
            prefetch_lines(&self.out_hist[self.out_slot(t, 0)..self.out_slot(t, self.cfg.batch)]);
        }
    }
}
