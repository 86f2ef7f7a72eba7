//! What the event-camera readers ([`super::nmnist`], [`super::dvsgesture`]) share: decoded camera
//! events, the dataset split, and the map from pixels and polarities to input channels.
//!
//! # Channel layout
//!
//! A sensor of `width × height` pixels pooled by `downsample = K` becomes a grid of
//! `ceil(width / K) × ceil(height / K)` cells (when `K` does not divide a side, the last row or
//! column of cells pools fewer pixels). The cell of pixel `(x, y)` is `(x / K, y / K)`, and its
//! channel is
//!
//! ```text
//! channel = polarity * cells_x * cells_y + (y / K) * cells_x + (x / K)
//! ```
//!
//! with `polarity` 0 (OFF) or 1 (ON), so that channels `0 .. cells_x*cells_y` are the OFF events
//! and the rest the ON events; `channels = cells_x * cells_y * 2`. With `merge_polarity` both
//! polarities share one channel per cell (`channel = (y / K) * cells_x + (x / K)`, `channels =
//! cells_x * cells_y`). Pooling keeps every event: several events of one channel in one time step
//! become one spike when the sample is binned (SPEC §4).

use std::fmt;

use anyhow::{bail, Result};

/// Largest number of input channels: channel ids are `u16`.
pub const MAX_CHANNELS: usize = 1 << 16;

/// One decoded camera event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CameraEvent {
    /// Timestamp in microseconds (overflow counters already applied).
    pub t_us: u64,
    /// Pixel column.
    pub x: u16,
    /// Pixel row.
    pub y: u16,
    /// `true` for an ON (brightness increase) event.
    pub polarity: bool,
}

/// Which half of a dataset directory to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split (`Train/`, `trials_to_train.txt`).
    Train,
    /// The test split (`Test/`, `trials_to_test.txt`).
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// Pixels and polarities to channels (see the module docs for the layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelMap {
    /// Sensor width in pixels.
    pub width: usize,
    /// Sensor height in pixels.
    pub height: usize,
    /// Pool `downsample × downsample` pixels into one cell (1 = no pooling).
    pub downsample: usize,
    /// One channel per cell for both polarities instead of one per polarity.
    pub merge_polarity: bool,
}

impl PixelMap {
    /// The map for a `width × height` sensor, checked: `downsample >= 1` and at most
    /// [`MAX_CHANNELS`] channels.
    pub fn new(
        width: usize,
        height: usize,
        downsample: usize,
        merge_polarity: bool,
    ) -> Result<Self> {
        if downsample == 0 {
            bail!("--downsample must be at least 1 (1 = no pooling)");
        }
        let map = PixelMap { width, height, downsample, merge_polarity };
        if map.channels() > MAX_CHANNELS {
            bail!(
                "a {width}x{height} sensor with --downsample {downsample} gives {} channels, more than \
                 the {MAX_CHANNELS} spiketile supports: pool more (a larger --downsample) or use \
                 --merge-polarity",
                map.channels()
            );
        }
        Ok(map)
    }

    /// Cells per row: `ceil(width / downsample)`.
    pub fn cells_x(&self) -> usize {
        self.width.div_ceil(self.downsample)
    }

    /// Cells per column: `ceil(height / downsample)`.
    pub fn cells_y(&self) -> usize {
        self.height.div_ceil(self.downsample)
    }

    /// Number of input channels.
    pub fn channels(&self) -> usize {
        let cells = self.cells_x() * self.cells_y();
        if self.merge_polarity {
            cells
        } else {
            2 * cells
        }
    }

    /// The channel of an event at pixel `(x, y)`; the caller has checked `x < width`, `y < height`.
    pub fn channel(&self, x: usize, y: usize, polarity: bool) -> u16 {
        debug_assert!(x < self.width && y < self.height);
        let cells = self.cells_x() * self.cells_y();
        let cell = (y / self.downsample) * self.cells_x() + x / self.downsample;
        let id = if polarity && !self.merge_polarity { cells + cell } else { cell };
        // `new` checked channels <= MAX_CHANNELS, so every id fits.
        id as u16
    }

    /// A short description for messages, e.g. `128x128 pixels, 2x2 pooling, 2 polarities -> 8192
    /// channels`.
    pub fn describe(&self) -> String {
        format!(
            "{}x{} pixels, {}x{} pooling, {} -> {} channels",
            self.width,
            self.height,
            self.downsample,
            self.downsample,
            if self.merge_polarity { "polarities merged" } else { "2 polarities" },
            self.channels()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_pooling() {
        let m = PixelMap::new(34, 34, 1, false).unwrap();
        assert_eq!(m.channels(), 2312);
        assert_eq!(m.channel(0, 0, false), 0);
        assert_eq!(m.channel(33, 0, false), 33);
        assert_eq!(m.channel(0, 1, false), 34);
        assert_eq!(m.channel(33, 33, true), 2311);
        let m = PixelMap::new(128, 128, 4, false).unwrap();
        assert_eq!(m.channels(), 2048);
        assert_eq!(m.channel(127, 127, false), 1023);
        assert_eq!(m.channel(4, 0, true), 1025);
        let m = PixelMap::new(34, 34, 4, true).unwrap();
        assert_eq!((m.cells_x(), m.channels()), (9, 81));
        assert_eq!(m.channel(33, 33, true), 80);
        assert!(PixelMap::new(34, 34, 0, false).is_err());
        assert_eq!(PixelMap::new(128, 128, 1, false).unwrap().channels(), 32768);
        assert!(PixelMap::new(256, 256, 1, false).is_err());
    }
}
