//! The 624 KiB tile budget and the exact footprint of a tile configuration (SPEC §3).
//!
//! [`Footprint::of`] is the truth the host planner uses: a [`crate::Tile`] carves its memory out
//! of an arena of exactly [`Footprint::arena`] bytes, region by region in the order listed here,
//! and the tile descriptor itself adds [`Footprint::header`] bytes.
//!
//! ```
//! use spiketile_core::{Footprint, OptimizerKind, TileConfig, TILE_SRAM_BYTES};
//! let cfg = TileConfig {
//!     neurons: 16, first_neuron: 0, layer_width: 256, inputs: 700, recurrent: false,
//!     batch: 8, time_steps: 100, in_capacity: 70, layer_capacity: 26,
//!     optimizer: OptimizerKind::Adam,
//! };
//! let fp = Footprint::of(&cfg).unwrap();
//! assert!(fp.total() <= TILE_SRAM_BYTES);
//! assert_eq!(fp.weights, 700 * 16 * 4);
//! ```

use crate::{TileConfig, TileError};

/// Bytes of memory of one tile (624 KiB, like an IPU-Tile's SRAM).
pub const TILE_SRAM_BYTES: usize = 624 * 1024;

/// The memory of one tile configuration, by purpose. Every region is rounded up to 4 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Footprint {
    /// Incoming (and recurrent) weights.
    pub weights: usize,
    /// Their gradients.
    pub grads: usize,
    /// Optimizer state (Adam moments).
    pub optimizer: usize,
    /// Membranes and adjoints per sample, and per-step scratch.
    pub state: usize,
    /// What the backward pass needs of the forward pass: own spike buffers and membranes at the
    /// gradient set, input (and recurrent) spike buffers, per sample and step.
    pub history: usize,
    /// Of `history`, the input (and recurrent) spike buffers: a driver that keeps those itself
    /// ([`crate::Tile::forward_external`]) never writes them.
    pub input_history: usize,
    /// Exchange buffers: dL/dS arriving, partial dL/dS leaving.
    pub exchange: usize,
    /// The tile descriptor (`size_of::<Tile>()`).
    pub header: usize,
}

/// Offsets and lengths (in elements) of every region of a tile's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Regions {
    pub weights: usize,
    pub recurrent: usize,
    pub state_words: usize,
    pub opt_words: usize,
    pub u_hist: usize,
    pub out_hist: usize,
    pub in_hist: usize,
    pub rec_hist: usize,
    pub dlds: usize,
    pub src_partials: usize,
    pub rec_partials: usize,
}

pub(crate) const fn pad4(bytes: usize) -> usize {
    (bytes + 3) & !3
}

impl Regions {
    pub(crate) fn of(cfg: &TileConfig) -> Result<Regions, TileError> {
        cfg.validate()?;
        let n = cfg.neurons;
        let bt = cfg.batch.checked_mul(cfg.time_steps).ok_or(TileError::InvalidConfig("size"))?;
        let kt = cfg.own_capacity();
        let mul = |a: usize, b: usize| a.checked_mul(b).ok_or(TileError::InvalidConfig("size"));
        let weights = mul(cfg.inputs, n)?;
        let recurrent = if cfg.recurrent { mul(cfg.layer_width, n)? } else { 0 };
        Ok(Regions {
            weights,
            recurrent,
            state_words: mul(2 * cfg.batch + 2, n)?,
            opt_words: mul(weights + recurrent, cfg.optimizer.state_per_weight())?,
            u_hist: mul(bt, kt)?,
            out_hist: mul(bt, kt + 2)?,
            in_hist: mul(bt, cfg.in_capacity + 2)?,
            rec_hist: if cfg.recurrent { mul(bt, cfg.layer_capacity + 2)? } else { 0 },
            dlds: mul(cfg.batch, kt)?,
            src_partials: mul(cfg.batch, cfg.in_capacity)?,
            rec_partials: if cfg.recurrent { mul(cfg.batch, cfg.layer_capacity)? } else { 0 },
        })
    }
}

impl Footprint {
    /// The footprint of `cfg`, whether or not it fits a tile. Errors only for an invalid config.
    pub fn of(cfg: &TileConfig) -> Result<Footprint, TileError> {
        let r = Regions::of(cfg)?;
        let f32s = |n: usize| pad4(n * 4);
        let u16s = |n: usize| pad4(n * 2);
        Ok(Footprint {
            weights: f32s(r.weights) + f32s(r.recurrent),
            grads: f32s(r.weights) + f32s(r.recurrent),
            optimizer: f32s(r.opt_words),
            state: f32s(r.state_words),
            history: f32s(r.u_hist) + u16s(r.out_hist) + u16s(r.in_hist) + u16s(r.rec_hist),
            input_history: u16s(r.in_hist) + u16s(r.rec_hist),
            exchange: f32s(r.dlds) + f32s(r.src_partials) + f32s(r.rec_partials),
            header: core::mem::size_of::<crate::Tile<'static>>(),
        })
    }

    /// Bytes of the arena a tile carves (everything but the header).
    pub fn arena(&self) -> usize {
        self.weights + self.grads + self.optimizer + self.state + self.history + self.exchange
    }

    /// All bytes the tile uses: arena plus header.
    pub fn total(&self) -> usize {
        self.arena() + self.header
    }

    /// `Ok` if the tile fits [`TILE_SRAM_BYTES`], else the typed error with both numbers.
    pub fn check(&self) -> Result<(), TileError> {
        if self.total() <= TILE_SRAM_BYTES {
            Ok(())
        } else {
            Err(TileError::OverBudget { needed: self.total(), available: TILE_SRAM_BYTES })
        }
    }
}
