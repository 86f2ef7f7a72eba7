//! What sizes a tile and what it reports: its configuration, its layout in an arena, its spike
//! counts, and the weights and gradients replicas share.

#[cfg(doc)]
use super::Tile;
use crate::budget::Regions;
use crate::{Footprint, NeuronParams, OptimizerKind, TileError};

/// Everything that sizes a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TileConfig {
    /// Neurons on this tile.
    pub neurons: usize,
    /// Global id of its first neuron within the layer.
    pub first_neuron: usize,
    /// Width `N_l` of the whole layer.
    pub layer_width: usize,
    /// Width `N_{l-1}` of the source layer.
    pub inputs: usize,
    /// Whether the layer has recurrent weights `V_l` (SPEC §1.4).
    pub recurrent: bool,
    /// Samples this tile runs (its micro-batch).
    pub batch: usize,
    /// Time steps `T`.
    pub time_steps: usize,
    /// Capacity `K_{l-1}` of the source layer's spike buffer.
    pub in_capacity: usize,
    /// Capacity `K_l` of the own layer's spike buffer.
    pub layer_capacity: usize,
    /// Optimizer (decides optimizer state).
    pub optimizer: OptimizerKind,
}

impl TileConfig {
    /// Capacity of this tile's own buffer: `min(neurons, layer_capacity)`.
    pub fn own_capacity(&self) -> usize {
        self.neurons.min(self.layer_capacity)
    }

    /// Checks that every field is in range (ids and counts fit `u16`).
    pub fn validate(&self) -> Result<(), TileError> {
        let max = u16::MAX as usize;
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(TileError::InvalidConfig(what)) };
        check(self.neurons >= 1, "neurons must be >= 1")?;
        check(self.layer_width <= max, "layer width must be <= 65535")?;
        check(self.first_neuron + self.neurons <= self.layer_width, "neurons beyond layer width")?;
        check((1..=max).contains(&self.inputs), "inputs must be in 1..=65535")?;
        check(self.batch >= 1, "batch must be >= 1")?;
        check(self.time_steps >= 1, "time steps must be >= 1")?;
        check((1..=self.inputs).contains(&self.in_capacity), "input capacity not in 1..=inputs")?;
        check(
            (1..=self.layer_width).contains(&self.layer_capacity),
            "layer capacity not in 1..=layer width",
        )
    }

    /// The footprint of this configuration (see [`Footprint::of`]).
    pub fn footprint(&self) -> Result<Footprint, TileError> {
        Footprint::of(self)
    }
}

/// Spike counts of a tile since the last [`Tile::reset_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TileStats {
    /// Neurons at or over threshold, over all steps and samples.
    pub spikes_raw: u64,
    /// Neurons in the gradient window under threshold.
    pub near_raw: u64,
    /// Spikes the layer kept.
    pub spikes_kept: u64,
    /// Near-threshold ids the layer kept.
    pub near_kept: u64,
}

impl TileStats {
    /// Neurons dropped for lack of buffer capacity (spikes and near-threshold).
    pub fn overflow(&self) -> u64 {
        self.spikes_raw + self.near_raw - self.spikes_kept - self.near_kept
    }

    /// Adds another tile's counts.
    pub fn add(&mut self, o: &TileStats) {
        self.spikes_raw += o.spikes_raw;
        self.near_raw += o.near_raw;
        self.spikes_kept += o.spikes_kept;
        self.near_kept += o.near_kept;
    }
}

/// Weights a tile reads instead of its own (see [`Tile::forward_shared`]): incoming `w` and
/// recurrent `v`, laid out like [`Tile::weights`] and [`Tile::recurrent`].
#[derive(Clone, Copy, Debug)]
pub struct SharedWeights<'w> {
    /// Incoming weights, input-major.
    pub w: &'w [f32],
    /// Recurrent weights (empty if not recurrent).
    pub v: &'w [f32],
}

/// Gradient buffers a tile accumulates into instead of its own (see [`Tile::backward_shared`]),
/// laid out like [`Tile::grads`].
#[derive(Debug)]
pub struct SharedGrads<'g> {
    /// `dL/dW`, input-major.
    pub dw: &'g mut [f32],
    /// `dL/dV` (empty if not recurrent).
    pub dv: &'g mut [f32],
}

impl SharedGrads<'_> {
    /// A shorter-lived borrow of the same buffers.
    pub fn reborrow(&mut self) -> SharedGrads<'_> {
        SharedGrads { dw: &mut *self.dw, dv: &mut *self.dv }
    }
}

/// A tile configuration and neuron parameters, validated, with the tile's memory layout: what
/// [`Tile::attach_layout`] needs to attach to an arena without recomputing anything.
///
/// ```
/// use spiketile_core::{NeuronParams, OptimizerKind, Tile, TileConfig, TileLayout};
/// let cfg = TileConfig {
///     neurons: 4, first_neuron: 0, layer_width: 4, inputs: 8, recurrent: false,
///     batch: 2, time_steps: 5, in_capacity: 8, layer_capacity: 4,
///     optimizer: OptimizerKind::Sgd,
/// };
/// let layout = TileLayout::new(cfg, NeuronParams::default()).unwrap();
/// let mut arena = vec![0u32; layout.arena_bytes() / 4];
/// Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
/// let tile = Tile::attach_layout(&layout, bytemuck::cast_slice_mut(&mut arena)).unwrap();
/// assert_eq!(tile.weights().len(), 8 * 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileLayout {
    pub(super) cfg: TileConfig,
    pub(super) params: NeuronParams,
    pub(super) regions: Regions,
    pub(super) arena: usize,
}

impl TileLayout {
    /// Validates `cfg` (it must fit [`crate::TILE_SRAM_BYTES`]) and `params`.
    pub fn new(cfg: TileConfig, params: NeuronParams) -> Result<Self, TileError> {
        params.validate()?;
        let fp = Footprint::of(&cfg)?;
        fp.check()?;
        Ok(TileLayout { cfg, params, regions: Regions::of(&cfg)?, arena: fp.arena() })
    }

    /// The configuration.
    pub fn config(&self) -> &TileConfig {
        &self.cfg
    }

    /// The neuron parameters.
    pub fn params(&self) -> &NeuronParams {
        &self.params
    }

    /// Bytes of arena the tile needs ([`Footprint::arena`]).
    pub fn arena_bytes(&self) -> usize {
        self.arena
    }
}
