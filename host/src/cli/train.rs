//! `spiketile train`: train on a file or on the built-in dataset.

use super::args::{EngineKind, ModelArgs};
use super::dataset::{bin_all, builtin, load_dataset, FormatArgs};
use crate::atomic::check_writable;
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::data::camera::Split;
use crate::engine::dense::{DenseEngine, SpikeFn};
use crate::engine::tiled::TiledEngine;
use crate::engine::Engine;
use crate::model::Params;
use crate::snapshot::{params_from_tensors, Progress, RunConfig, Snapshot};
use crate::train::{TrainOptions, Trainer};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `spiketile train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model and optimisation.
    #[command(flatten)]
    pub model: ModelArgs,
    /// SHD-layout HDF5 training file, or an N-MNIST / DVS Gesture directory (its training split)
    /// (default: the built-in synthetic dataset).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// SHD-layout HDF5 file (or dataset directory: its test split) evaluated after every epoch
    /// (default with the built-in data or a dataset directory: its test split).
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Dataset format, pooling and polarity handling of --data and --test-data.
    #[command(flatten)]
    pub format: FormatArgs,
    /// Treat non-finite or negative event times in data files as errors.
    #[arg(long)]
    pub strict: bool,
    /// Input channels of --data (default: the --init or --resume weights' inputs, else the
    /// largest unit id + 1); unit ids are checked against it.
    #[arg(long, requires = "data")]
    pub channels: Option<usize>,
    /// Classes of --data (default: the --init or --resume weights' outputs, else the largest
    /// label + 1); labels are checked against it.
    #[arg(long, requires = "data")]
    pub classes: Option<usize>,
    /// Epochs to train.
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// Stop after this many optimizer steps in total.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Batches in file order instead of shuffled.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of all randomness (initial weights, data order, built-in data).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from the weights in this safetensors file (`layers.*` tensors; any tool may write it).
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Write the checkpoint here after every epoch, at the end and on Ctrl-C (a run that dies can
    /// --resume from its last epoch).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint exactly (model, seed and data order from it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write per-epoch metrics as JSON lines here (a resumed run keeps the file's lines up to its
    /// step and adds its own).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Training samples of the built-in dataset.
    #[arg(long, default_value_t = 2000)]
    pub train_samples: usize,
    /// Test samples of the built-in dataset.
    #[arg(long, default_value_t = 500)]
    pub test_samples: usize,
    /// No per-epoch lines, no progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write an execution trace of the first training steps here (Chrome trace-event JSON: open
    /// it in ui.perfetto.dev, or run `spiketile trace summary FILE`). Tiled engine only.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Training steps (batches) traced with --trace.
    #[arg(long, default_value_t = 2, requires = "trace", value_parser = super::args::at_least_one)]
    pub trace_steps: usize,
}

/// Builds the engine of `kind`.
pub fn make_engine(
    kind: EngineKind,
    cfg: &ModelConfig,
    params: &Params,
    threads: usize,
) -> Result<Box<dyn Engine>> {
    Ok(match kind {
        EngineKind::Tiled => Box::new(TiledEngine::new(cfg, params, threads)?),
        EngineKind::Dense => Box::new(DenseEngine::new(cfg, params.clone(), SpikeFn::Heaviside)?),
    })
}

fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second Ctrl-C while the first is handled exits at once.
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: stopping after this batch (press again to quit now)");
    });
    flag
}

/// Runs `spiketile train`.
pub fn run(args: TrainArgs) -> Result<()> {
    // Outputs first: a bad --save path is reported now, not after the training it would keep.
    for path in [&args.save, &args.metrics, &args.trace].into_iter().flatten() {
        check_writable(path)?;
    }
    let resumed = match &args.resume {
        Some(path) => Some(
            Snapshot::from_checkpoint(&Checkpoint::load(path)?)
                .with_context(|| format!("resuming from {}", path.display()))?,
        ),
        None => None,
    };
    match &resumed {
        Some(s) => {
            args.model.warn_ignored(&s.run.model, "--resume continues the saved run's model")
        }
        // The model flags' own checks before the data is read (the data's shape comes later).
        None => {
            args.model.config(1, 2)?;
            args.model.note_output_layer();
        }
    }
    let init = match &args.init {
        Some(path) => Some(InitWeights::load(path)?),
        None => None,
    };
    let seed = resumed.as_ref().map_or(args.seed, |s| s.run.seed);
    let time_steps = resumed.as_ref().map_or(args.model.time_steps, |s| s.run.model.time_steps);
    let duration = resumed.as_ref().map_or(args.model.duration, |s| s.run.model.duration);
    // The model's inputs and outputs, when weights fix them: the data is read against them (a
    // file whose labels never reach the last class still has that class).
    let shape = match (&resumed, &init) {
        (Some(s), _) => Some((s.run.model.inputs, s.run.model.classes, "--resume")),
        (None, Some(i)) => Some((i.inputs, i.classes, "--init")),
        (None, None) => None,
    };
    if let Some((inputs, classes, flag)) = shape {
        for (given, fixed, name) in
            [(args.channels, inputs, "--channels"), (args.classes, classes, "--classes")]
        {
            if let Some(n) = given.filter(|&n| n != fixed) {
                bail!("{name} {n}: the {flag} weights have {fixed}");
            }
        }
    }
    let channels = shape.map(|s| s.0).or(args.channels);
    let classes = shape.map(|s| s.1).or(args.classes);
    let (train_set, test_set) = match &args.data {
        Some(path) => {
            let f = &args.format;
            let train = load_dataset(path, Split::Train, f, channels, classes, args.strict)?;
            let (channels, classes) = (Some(train.channels), Some(train.classes));
            // A dataset directory holds its own test split: the default test data.
            let test_path = match &args.test_data {
                Some(t) => Some(t),
                None if f.resolve(path)?.is_directory() => Some(path),
                None => None,
            };
            let test = match test_path {
                Some(t) => Some(load_dataset(t, Split::Test, f, channels, classes, args.strict)?),
                None => None,
            };
            (train, test)
        }
        None => {
            ensure!(
                args.test_data.is_none(),
                "--test-data needs --data (the built-in data has its own test split)"
            );
            ensure!(
                args.format == FormatArgs::default(),
                "--format, --downsample and --merge-polarity need --data"
            );
            let (train, test) = builtin(seed, args.train_samples, args.test_samples);
            (train, Some(test))
        }
    };
    ensure!(!train_set.samples.is_empty(), "{}: no training samples", train_set.name);
    let (run, params, optim, progress) = match resumed {
        Some(s) => {
            let m = &s.run.model;
            ensure!(
                m.inputs == train_set.channels && m.classes == train_set.classes,
                "the checkpoint's model has {} inputs and {} classes, {} has {} channels and {} classes",
                m.inputs, m.classes, train_set.name, train_set.channels, train_set.classes
            );
            (s.run, s.params, Some(s.optim), s.progress)
        }
        None => {
            let (cfg, params) = initial(&args, init, train_set.channels, train_set.classes, seed)?;
            let run = RunConfig { model: cfg, seed, shuffle: !args.no_shuffle };
            (run, params, None, Progress { seed, ..Progress::default() })
        }
    };
    let cfg = run.model.clone();
    let train = bin_all(&train_set, time_steps, duration);
    let test = test_set.as_ref().map(|t| bin_all(t, time_steps, duration));
    let threads = args.model.threads();
    let mut engine = make_engine(args.model.engine, &cfg, &params, threads)?;
    if let Some(o) = &optim {
        engine.set_state(&params, Some(o))?;
    }
    super::trace::start(engine.as_mut(), args.trace.as_deref(), args.trace_steps)?;
    if !args.quiet {
        eprintln!(
            "training {}-{}-{}{} on {} ({} samples{}), T = {}, batch {}, {} {} lr {}, max activity {}, window {}, {} threads, engine {:?}",
            cfg.inputs,
            cfg.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-"),
            cfg.classes,
            if cfg.recurrent { " (recurrent)" } else { "" },
            train_set.name,
            train.len(),
            test.as_ref().map_or(String::new(), |t| format!(", {} test", t.len())),
            cfg.time_steps,
            cfg.batch_size,
            cfg.optimizer,
            cfg.loss,
            cfg.lr,
            cfg.max_activity,
            cfg.window,
            threads,
            args.model.engine,
        );
    }
    let opts = TrainOptions {
        epochs: args.epochs,
        max_steps: args.max_steps,
        metrics: args.metrics.clone(),
        save: args.save.clone(),
        progress: !args.quiet && std::io::stderr().is_terminal(),
        verbose: !args.quiet,
    };
    let stop = stop_flag();
    let mut trainer = Trainer { run, engine, progress };
    let metrics = trainer.run(&train, test.as_deref(), &opts, &stop)?;
    super::trace::finish(trainer.engine.as_mut(), args.trace.as_deref())?;
    if let Some(last) = metrics.last() {
        println!(
            "final: step {} loss {:.4} train accuracy {:.2}%{}",
            last.step,
            last.loss,
            100.0 * last.train_acc,
            last.test_acc.map_or(String::new(), |a| format!(" test accuracy {:.2}%", 100.0 * a))
        );
    } else if !stop.load(Ordering::Relaxed) {
        println!(
            "nothing to do: the run is already at epoch {} / step {}",
            trainer.progress.epoch, trainer.progress.step
        );
    }
    if let Some(p) = &args.save {
        if !args.quiet {
            eprintln!("checkpoint written to {}", p.display());
        }
    }
    Ok(())
}

/// The weights of `--init` and the architecture their shapes give.
struct InitWeights {
    path: PathBuf,
    params: Params,
    inputs: usize,
    hidden: Vec<usize>,
    classes: usize,
    recurrent: bool,
}

impl InitWeights {
    fn load(path: &std::path::Path) -> Result<Self> {
        let ck = Checkpoint::load(path)?;
        let (params, inputs, hidden, classes, recurrent) =
            params_from_tensors(&ck).with_context(|| format!("--init {}", path.display()))?;
        Ok(InitWeights { path: path.to_path_buf(), params, inputs, hidden, classes, recurrent })
    }
}

/// The model configuration and initial weights: from `--init` (architecture from the tensor
/// shapes) or drawn from the seed.
fn initial(
    args: &TrainArgs,
    init: Option<InitWeights>,
    channels: usize,
    classes: usize,
    seed: u64,
) -> Result<(ModelConfig, Params)> {
    match init {
        Some(init) => {
            if init.inputs != channels || init.classes != classes {
                bail!(
                    "--init {}: the weights are for {} inputs and {} classes, the data has \
                     {channels} channels and {classes} classes",
                    init.path.display(),
                    init.inputs,
                    init.classes
                );
            }
            let mut model = args.model.clone();
            model.hidden = init.hidden;
            model.recurrent = init.recurrent;
            let given = |flag: &str| args.model.given.iter().any(|g| g == flag);
            if (given("hidden") && args.model.hidden != model.hidden)
                || (given("recurrent") && !model.recurrent)
            {
                eprintln!(
                    "warning: ignored --hidden/--recurrent: the --init weights are {}{}",
                    model.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(","),
                    if model.recurrent { " (recurrent)" } else { "" }
                );
            }
            let cfg = model.config(channels, classes)?;
            Ok((cfg, init.params))
        }
        None => {
            let cfg = args.model.config(channels, classes)?;
            let params = Params::init(&cfg, seed);
            Ok((cfg, params))
        }
    }
}
