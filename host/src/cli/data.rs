//! `spiketile data`: inspect a dataset (an SHD file, or an N-MNIST / DVS Gesture directory), or
//! write the synthetic dataset in the SHD layout.
//!
//! Reading or writing HDF5 needs the `hdf5` cargo feature; without it `synth` and `inspect` of an
//! SHD file exist and fail with a message saying how to rebuild. Dataset directories need nothing.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::dataset::{FormatArgs, SplitArg};

/// Arguments of `spiketile data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to do with data.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// `data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print statistics of an SHD-layout HDF5 file or of a split of an N-MNIST / DVS Gesture
    /// directory: samples, class histogram, channels used, events per sample and durations,
    /// events past --duration, and warnings.
    Inspect(InspectArgs),
    /// Write the built-in synthetic dataset as PREFIX_train.h5 and PREFIX_test.h5 (SHD layout).
    Synth(SynthArgs),
}

/// Arguments of `spiketile data inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The SHD-layout HDF5 file, or an N-MNIST / DVS Gesture directory.
    pub file: PathBuf,
    /// Dataset format, pooling and polarity handling.
    #[command(flatten)]
    pub format: FormatArgs,
    /// Which split of a dataset directory to inspect (default: train).
    #[arg(long, value_enum)]
    pub split: Option<SplitArg>,
    /// Seconds mapped onto the time steps; events at or past it are counted as dropped.
    #[arg(long, default_value_t = 1.4)]
    pub duration: f64,
    /// Make events with non-finite or negative times an error instead of dropping them.
    #[arg(long)]
    pub strict: bool,
    /// Number of input channels (default: largest unit id + 1); unit ids are checked against it.
    #[arg(long)]
    pub channels: Option<usize>,
    /// Number of classes (default: largest label + 1); labels are checked against it.
    #[arg(long)]
    pub classes: Option<usize>,
}

/// Arguments of `spiketile data synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output prefix: writes PREFIX_train.h5 and PREFIX_test.h5.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Number of training samples (default: the generator's default).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Number of test samples (default: the generator's default).
    #[arg(long)]
    pub test_samples: Option<usize>,
    /// Seed of the generator.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs `spiketile data ...`.
pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Inspect(a) => inspect(a),
        DataCommand::Synth(a) => synth(a),
    }
}

/// `PREFIX_train.h5` and `PREFIX_test.h5`.
fn output_paths(prefix: &std::path::Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    (with("_train.h5"), with("_test.h5"))
}

/// `data inspect`: an SHD file goes to [`inspect_shd`], a dataset directory is loaded here.
fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    use super::dataset::load_dataset;
    use crate::data::inspect;
    if !(a.duration.is_finite() && a.duration > 0.0) {
        anyhow::bail!("--duration must be a positive number of seconds, got {}", a.duration);
    }
    let kind = a.format.resolve(&a.file)?;
    if !kind.is_directory() {
        if a.split.is_some() {
            anyhow::bail!(
                "--split applies to dataset directories (N-MNIST, DVS Gesture), not to SHD files"
            );
        }
        if a.format.downsample.is_some() || a.format.merge_polarity {
            anyhow::bail!(
                "{}: --downsample and --merge-polarity apply to camera datasets (--format nmnist \
                 or dvsgesture), not to SHD files",
                a.file.display()
            );
        }
        return inspect_shd(a);
    }
    let split = a.split.unwrap_or(SplitArg::Train).into();
    let data = load_dataset(&a.file, split, &a.format, a.channels, a.classes, a.strict)?;
    print!("{}", inspect::inspect(&data, a.duration));
    Ok(())
}

#[cfg(feature = "hdf5")]
fn inspect_shd(a: InspectArgs) -> anyhow::Result<()> {
    use crate::data::{inspect, shd};
    let opts = shd::LoadOptions { channels: a.channels, classes: a.classes, strict: a.strict };
    let (data, report) = shd::load(&a.file, &opts)?;
    for w in report.warnings() {
        eprintln!("warning: {w}");
    }
    let stats = inspect::inspect(&data, a.duration);
    print!("{stats}");
    println!(
        "on disk            spikes/times {}, spikes/units {}, labels {}",
        report.times_dtype, report.units_dtype, report.labels_dtype
    );
    println!(
        "dropped on load    {} event(s) with non-finite or negative times in {} sample(s)",
        report.dropped_events,
        report.dropped_samples.len()
    );
    Ok(())
}

#[cfg(feature = "hdf5")]
fn synth(a: SynthArgs) -> anyhow::Result<()> {
    use crate::data::{shd, synthetic};
    let defaults = synthetic::SynthConfig::default();
    let config = synthetic::SynthConfig {
        seed: a.seed.unwrap_or(defaults.seed),
        train_samples: a.samples.unwrap_or(defaults.train_samples),
        test_samples: a.test_samples.unwrap_or(defaults.test_samples),
    };
    if config.train_samples == 0 || config.test_samples == 0 {
        anyhow::bail!("--samples and --test-samples must be at least 1");
    }
    let (train_path, test_path) = output_paths(&a.out);
    let (train, test) = synthetic::generate(&config);
    shd::write_all(&[(&train_path, &train), (&test_path, &test)])?;
    for (path, data) in [(&train_path, &train), (&test_path, &test)] {
        let events: usize = data.samples.iter().map(|s| s.times.len()).sum();
        println!(
            "wrote {} ({} samples, {} events, {} channels, {} classes)",
            path.display(),
            data.samples.len(),
            events,
            data.channels,
            data.classes
        );
    }
    Ok(())
}

#[cfg(not(feature = "hdf5"))]
fn no_hdf5(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`spiketile data {what}` needs HDF5 support, and this spiketile was built without it: rebuild with \
         `cargo build --release --features hdf5` (needs the HDF5 library, apt package libhdf5-dev)"
    )
}

#[cfg(not(feature = "hdf5"))]
fn inspect_shd(a: InspectArgs) -> anyhow::Result<()> {
    let _ = a;
    Err(no_hdf5("inspect"))
}

#[cfg(not(feature = "hdf5"))]
fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let _ = output_paths(&a.out);
    Err(no_hdf5("synth"))
}
