//! The Spiking Heidelberg Digits HDF5 layout (SPEC §4): a reader and a writer.
//!
//! Layout (Cramer et al. 2022): `spikes/times` holds one variable-length float array per sample
//! (seconds; float16 in the published files), `spikes/units` one variable-length unsigned integer
//! array per sample (channel ids; uint16 in the published files), and `labels` one unsigned integer
//! per sample. `extra/` (speaker metadata) is ignored.
//!
//! [`load`] accepts any float width for the times (float16 is widened to f32 *before* any
//! arithmetic), any integer width for units and labels (negative values are errors), and any number
//! of channels and classes: both are read from the data (largest id + 1) unless given in
//! [`LoadOptions`], and then checked. Events stay sparse: nothing dense is built.
//! Events whose time is NaN, infinite or negative (a known quirk of the published files) are dropped
//! and counted in the [`LoadReport`]; [`LoadOptions::strict`] turns them into an error.
//! Every error names the file, the sample when there is one, and what is wrong.
//!
//! [`write()`] writes exactly the published on-disk types (vlen float16 times, vlen uint16 units,
//! uint16 labels), atomically: to a temporary file in the destination directory, then renamed.

mod read;
mod write;
pub use read::load;
pub use write::{write, write_all};

use anyhow::anyhow;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Samples read per HDF5 call: bounds the temporary memory of a load.
const CHUNK: usize = 1024;

/// Largest number of channels or classes: ids are stored as `u16`.
pub const MAX_IDS: usize = 1 << 16;

/// How many affected sample indices a warning lists before "...".
const FIRST_FEW: usize = 8;

/// Options of [`load`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Number of input channels; `None` reads it from the data (largest unit id + 1).
    /// When given, every unit id must be below it.
    pub channels: Option<usize>,
    /// Number of classes; `None` reads it from the data (largest label + 1).
    /// When given, every label must be below it.
    pub classes: Option<usize>,
    /// Make events with non-finite or negative times an error instead of dropping them.
    pub strict: bool,
}

/// What [`load`] found besides the data: on-disk types and dropped events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The file that was read.
    pub file: PathBuf,
    /// On-disk type of `spikes/times`, e.g. `vlen float16`.
    pub times_dtype: String,
    /// On-disk type of `spikes/units`, e.g. `vlen uint16`.
    pub units_dtype: String,
    /// On-disk type of `labels`, e.g. `uint16`.
    pub labels_dtype: String,
    /// Events kept (over all samples).
    pub events: usize,
    /// Events dropped because their time was NaN, infinite or negative.
    pub dropped_events: usize,
    /// Indices of the samples that had dropped events, in file order.
    pub dropped_samples: Vec<usize>,
}

impl LoadReport {
    /// The warnings of this load (at most one per file), ready to print.
    pub fn warnings(&self) -> Vec<String> {
        if self.dropped_events == 0 {
            return Vec::new();
        }
        vec![format!(
            "{}: dropped {} event{} with non-finite or negative times in {} sample{} ({})",
            self.file.display(),
            self.dropped_events,
            plural(self.dropped_events),
            self.dropped_samples.len(),
            plural(self.dropped_samples.len()),
            list_samples(&self.dropped_samples),
        )]
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "sample 3" / "samples 3, 7, 12, ... (40 in all)".
fn list_samples(indices: &[usize]) -> String {
    let shown: Vec<String> = indices.iter().take(FIRST_FEW).map(|i| i.to_string()).collect();
    let word = if indices.len() == 1 { "sample" } else { "samples" };
    if indices.len() > FIRST_FEW {
        format!("{word} {}, ...", shown.join(", "))
    } else {
        format!("{word} {}", shown.join(", "))
    }
}

fn file_err(path: &Path, msg: impl Display) -> anyhow::Error {
    anyhow!("{}: {msg}", path.display())
}
