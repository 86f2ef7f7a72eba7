#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
//! spiketile-core: everything one tile is and does, without a heap.
//!
//! A *tile* (as on the Graphcore IPU) is [`TILE_SRAM_BYTES`] = 624 KiB of memory plus the code that
//! runs on it. It owns a slice of one layer's leaky integrate-and-fire neurons, their incoming (and
//! recurrent) weights, gradients and optimizer state, the state kept for backpropagation through
//! time, and its exchange buffers. Tiles compute locally, exchange only sparse spikes, and meet at a
//! barrier once per time step; the host (or firmware) does the exchange.
//!
//! The modules, in the order a time step uses them:
//! - [`lif`]: neuron parameters, the membrane update and its adjoint (SPEC §1.1, §1.5);
//! - [`surrogate`]: the SuperSpike surrogate derivative (SPEC §1.2);
//! - [`spikes`]: the sparse spike buffer and the layer-level over-capacity policy (SPEC §2);
//! - [`budget`]: the 624 KiB budget and the exact footprint of a tile configuration (SPEC §3);
//! - [`rows`]: the row kernels of the forward and backward steps;
//! - [`simd`]: run-time detection of the vector instructions the row kernels may use (with the
//!   AVX2 and AVX-512F dispatch in [`rows`] and in the tile's runs, the runs' AVX-512F loops and
//!   Adam's SSE loop in [`optim`], the only `unsafe` code of the crate, each use with its safety
//!   argument);
//! - [`tile`]: a tile's memory and its superstep programs: forward, commit, backward, update (and
//!   runs of many steps in one call);
//! - [`loss`]: the readout losses on output spike counts and their gradients (SPEC §1.3);
//! - [`optim`]: SGD and Adam on tile-local slices (Adam four lanes at a time on x86-64).
//!
//! ```
//! use spiketile_core::spikes::SpikeBuffer;
//! // The poster's example: theta 1.0, gradient window 0.1, capacity 4.
//! let u = [0.8, 1.2, -0.5, 0.6, 0.95, 0.1, 0.98];
//! let buf = SpikeBuffer::<4>::from_membranes(&u, 1.0, 0.1);
//! assert_eq!(buf.ids(), &[1, 4, 6]);
//! assert_eq!((buf.n_spikes(), buf.n_grad()), (1, 3));
//! ```

pub mod budget;
pub mod error;
pub mod lif;
pub mod loss;
pub mod math;
pub mod optim;
pub mod rows;
pub mod simd;
pub mod spikes;
pub mod surrogate;
pub mod tile;

pub use budget::{Footprint, TILE_SRAM_BYTES};
pub use error::TileError;
pub use lif::{LifParams, NeuronParams};
pub use loss::LossKind;
pub use optim::{Optimizer, OptimizerKind};
pub use spikes::{LayerMerge, SpikeBuffer, SpikeView};
pub use surrogate::Surrogate;
pub use tile::{
    DldsAt, OutBuffers, SharedGrads, SharedWeights, StepInput, Tile, TileConfig, TileLayout,
    TileStats,
};
