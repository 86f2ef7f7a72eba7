//! Getting datasets for the commands: a file (`--data`, SHD layout, `hdf5` feature), an N-MNIST or
//! DVS Gesture directory in its published layout ([`load_dataset`], `--format`, `--downsample`,
//! `--merge-polarity`), or the built-in synthetic data, binned for a model.

use crate::data::camera::{PixelMap, Split};
use crate::data::synthetic::{self, SynthConfig};
use crate::data::{bin_sample_counting, dvsgesture, nmnist, BinnedSample, Binning, EventDataset};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::Path;

/// On-disk dataset formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    /// SHD-layout HDF5 file (needs the `hdf5` feature).
    Shd,
    /// N-MNIST directory: `Train/<digit>/<id>.bin`, `Test/<digit>/<id>.bin`.
    Nmnist,
    /// DVS Gesture directory: `*.aedat` (AEDAT 3.1), `*_labels.csv`, `trials_to_{train,test}.txt`.
    Dvsgesture,
}

impl DataFormat {
    /// Whether the format is a directory holding both splits (N-MNIST, DVS Gesture).
    pub fn is_directory(self) -> bool {
        !matches!(self, DataFormat::Shd)
    }

    /// The format of `path` when none is given: a directory holding `Train/` and `Test/` is
    /// N-MNIST, a directory holding `trials_to_train.txt` is DVS Gesture, anything else SHD.
    pub fn detect(path: &Path) -> Result<DataFormat> {
        if !path.is_dir() {
            return Ok(DataFormat::Shd);
        }
        if nmnist::is_layout(path) {
            Ok(DataFormat::Nmnist)
        } else if dvsgesture::is_layout(path) {
            Ok(DataFormat::Dvsgesture)
        } else {
            bail!(
                "{}: is a directory, not an HDF5 file, and in no known dataset layout: an N-MNIST \
                 directory holds Train/ and Test/, a DVS Gesture directory holds \
                 trials_to_train.txt and trials_to_test.txt (--format says which to read)",
                path.display()
            )
        }
    }
}

/// Which split of a dataset directory to read (`--split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// `Train/` (N-MNIST), `trials_to_train.txt` (DVS Gesture).
    Train,
    /// `Test/` (N-MNIST), `trials_to_test.txt` (DVS Gesture).
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Flags choosing how a dataset path is read (`train`, `eval`, `data inspect`).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatArgs {
    /// Dataset format (default: detect; a directory holding Train/ and Test/ is N-MNIST, one
    /// holding trials_to_train.txt is DVS Gesture, a file is SHD HDF5).
    #[arg(long, value_enum)]
    pub format: Option<DataFormat>,
    /// N-MNIST and DVS Gesture: pool KxK pixels into one channel
    /// (channels = ceil(W/K) * ceil(H/K) * 2).
    #[arg(long, value_name = "K")]
    pub downsample: Option<usize>,
    /// N-MNIST and DVS Gesture: one channel per pixel for both polarities (halves the channels).
    #[arg(long)]
    pub merge_polarity: bool,
}

impl FormatArgs {
    /// The format of `path`: `--format`, or detected.
    pub fn resolve(&self, path: &Path) -> Result<DataFormat> {
        match self.format {
            Some(f) => Ok(f),
            None => DataFormat::detect(path),
        }
    }

    /// The pixel map of a `width x height` sensor under these flags.
    fn pixel_map(&self, width: usize, height: usize) -> Result<PixelMap> {
        PixelMap::new(width, height, self.downsample.unwrap_or(1), self.merge_polarity)
    }
}

/// Loads the dataset at `path` in `format.format` (or detected): an SHD file (`split` unused), or
/// split `split` of an N-MNIST or DVS Gesture directory, pooled and polarity-mapped as the flags
/// say. `channels` and `classes`, when given, must match the data (SHD: ids are checked against
/// them). Warnings are printed.
pub fn load_dataset(
    path: &Path,
    split: Split,
    format: &FormatArgs,
    channels: Option<usize>,
    classes: Option<usize>,
    strict: bool,
) -> Result<EventDataset> {
    let kind = format.resolve(path)?;
    let data = match kind {
        DataFormat::Shd => {
            if format.downsample.is_some() || format.merge_polarity {
                bail!(
                    "{}: --downsample and --merge-polarity apply to camera datasets (--format \
                     nmnist or dvsgesture), not to SHD files",
                    path.display()
                );
            }
            return load_file(path, channels, classes, strict);
        }
        DataFormat::Nmnist => {
            nmnist::load(path, split, &format.pixel_map(nmnist::WIDTH, nmnist::HEIGHT)?)?
        }
        DataFormat::Dvsgesture => {
            let map = format.pixel_map(dvsgesture::WIDTH, dvsgesture::HEIGHT)?;
            let (data, warnings) = dvsgesture::load(path, split, &map, strict)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            data
        }
    };
    if let Some(c) = channels {
        if c != data.channels {
            bail!(
                "{} has {} channels, {c} expected (--downsample and --merge-polarity change the \
                 number of channels; use the ones the model was trained with)",
                data.name,
                data.channels
            );
        }
    }
    if let Some(c) = classes {
        if c != data.classes {
            bail!("{} has {} classes, {c} expected", data.name, data.classes);
        }
    }
    Ok(data)
}

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

/// Bins every sample (sparse per-step channel lists). Events at or past `duration`, which
/// binning drops, are counted and reported in one note (a `--duration` too short for the data
/// would otherwise lose them silently).
pub fn bin_all(data: &EventDataset, time_steps: usize, duration: f64) -> Vec<BinnedSample> {
    let binning = Binning { time_steps, duration, unit: data.time_unit };
    let (mut late, mut late_samples, mut events) = (0usize, 0usize, 0usize);
    let mut binned = Vec::with_capacity(data.samples.len());
    for s in &data.samples {
        let (b, n) = bin_sample_counting(s, binning);
        binned.push(b);
        late += n;
        late_samples += usize::from(n > 0);
        events += s.times.len();
    }
    if late > 0 {
        eprintln!(
            "note: {}: {late} of {events} events ({:.2} %) in {late_samples} samples are at or past \
             --duration {duration} s and are dropped by binning",
            data.name,
            100.0 * late as f64 / events as f64
        );
    }
    binned
}
