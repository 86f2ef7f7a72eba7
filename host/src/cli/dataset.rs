//! Getting datasets for the commands: a file (`--data`, SHD layout, `hdf5` feature) or the
//! built-in synthetic data, binned for a model.

use crate::data::synthetic::{self, SynthConfig};
use crate::data::{bin_sample, BinnedSample, Binning, EventDataset};
use anyhow::Result;
use std::path::Path;

/// Loads an SHD-layout file, printing its warnings (non-finite times dropped, ...).
#[cfg(feature = "hdf5")]
pub fn load_file(
    path: &Path,
    channels: Option<usize>,
    classes: Option<usize>,
    strict: bool,
) -> Result<EventDataset> {
    let opts = crate::data::shd::LoadOptions { channels, classes, strict };
    let (data, report) = crate::data::shd::load(path, &opts)?;
    for w in report.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(data)
}

/// Without the `hdf5` feature, files cannot be read: say how to get it.
#[cfg(not(feature = "hdf5"))]
pub fn load_file(
    path: &Path,
    _channels: Option<usize>,
    _classes: Option<usize>,
    _strict: bool,
) -> Result<EventDataset> {
    anyhow::bail!(
        "cannot read {}: this spiketile was built without HDF5 support; install libhdf5-dev \
         (apt-get install libhdf5-dev) and build with `cargo build --release -p spiketile \
         --features hdf5`",
        path.display()
    )
}

/// The built-in dataset `(train, test)` for `seed`.
pub fn builtin(seed: u64, train: usize, test: usize) -> (EventDataset, EventDataset) {
    synthetic::generate(&SynthConfig { seed, train_samples: train, test_samples: test })
}

/// Bins every sample (sparse per-step channel lists).
pub fn bin_all(data: &EventDataset, time_steps: usize, duration: f32) -> Vec<BinnedSample> {
    let binning = Binning { time_steps, duration };
    data.samples.iter().map(|s| bin_sample(s, binning)).collect()
}
