//! The core's one error type.

/// What can go wrong building or driving a tile. Every variant is caused by configuration or
/// input data, never by a bug: the core does not panic on these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TileError {
    /// The configuration needs more memory than a tile has.
    OverBudget {
        /// Bytes the configuration needs.
        needed: usize,
        /// Bytes a tile has ([`crate::TILE_SRAM_BYTES`]).
        available: usize,
    },
    /// The arena handed to [`crate::Tile::new`] is smaller than the configuration's footprint.
    ArenaTooSmall {
        /// Bytes the arena must have.
        needed: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The arena does not start at a 4-byte boundary.
    Misaligned,
    /// A configuration field is out of range; the text names it.
    InvalidConfig(&'static str),
    /// A neuron parameter is out of range; the text names it.
    InvalidParams(&'static str),
    /// A time step or sample index beyond the configured `time_steps` or `batch`.
    OutOfRange,
    /// An input spike buffer holds an id beyond the source layer or more ids than its capacity.
    BadInput,
}

impl core::fmt::Display for TileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TileError::OverBudget { needed, available } => write!(
                f,
                "tile needs {needed} bytes but a tile has {available} bytes \
                 (use fewer neurons or fewer samples per tile)"
            ),
            TileError::ArenaTooSmall { needed, got } => {
                write!(f, "tile arena has {got} bytes, the configuration needs {needed}")
            }
            TileError::Misaligned => write!(f, "tile arena is not 4-byte aligned"),
            TileError::InvalidConfig(what) => write!(f, "invalid tile configuration: {what}"),
            TileError::InvalidParams(what) => write!(f, "invalid neuron parameters: {what}"),
            TileError::OutOfRange => write!(f, "time step or sample index out of range"),
            TileError::BadInput => write!(f, "input spike buffer has an id or length out of range"),
        }
    }
}

impl core::error::Error for TileError {}
