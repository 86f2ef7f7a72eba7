//! Flags shared by `train`, `plan` and `bench`: the model (SPEC §5).

use crate::config::ModelConfig;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// The bulk-synchronous tile engine (default).
    Tiled,
    /// The plain dense reference engine (slow; for checking).
    Dense,
}

/// Model and optimisation flags.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    pub hidden: Vec<usize>,
    /// Hidden layers get recurrent weights (SPEC §1.4).
    #[arg(long)]
    pub recurrent: bool,
    /// Time steps per sample.
    #[arg(long, default_value_t = 100)]
    pub time_steps: usize,
    /// Seconds of each sample binned onto the time steps.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.4)]
    pub duration: f64,
    /// Membrane decay per step.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.95)]
    pub alpha: f32,
    /// Firing threshold.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub threshold: f32,
    /// SuperSpike surrogate steepness.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10.0)]
    pub beta: f32,
    /// Loss on output spike counts.
    #[arg(long, default_value = "ce-count", value_parser = ["ce-count", "mse-count"])]
    pub loss: String,
    /// Spike buffer capacity as a fraction of each layer's width (1 = exact mode).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    pub max_activity: f64,
    /// Gradient window under threshold; `inf` for exact mode.
    #[arg(long, allow_negative_numbers = true, default_value = "0.1", value_parser = parse_window)]
    pub window: f32,
    /// Spike buffer capacity of the output layer as a fraction of its width (1 = every output
    /// spike counts; the readout is small).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub output_max_activity: f64,
    /// Gradient window of the output layer; `inf` (default) = surrogate at every output neuron.
    #[arg(long, allow_negative_numbers = true, default_value = "inf", value_parser = parse_window)]
    pub output_window: f32,
    /// Optimizer.
    #[arg(long, default_value = "adam", value_parser = ["adam", "sgd"])]
    pub optimizer: String,
    /// Learning rate.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5e-3)]
    pub lr: f32,
    /// Samples per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Scale of the initial weights: U(-a, a) with a = gain / sqrt(fan-in).
    #[arg(long, allow_negative_numbers = true, default_value_t = crate::model::INIT_GAIN)]
    pub init_gain: f32,
    /// Planner limit: at most this many neurons per tile.
    #[arg(long)]
    pub max_neurons_per_tile: Option<usize>,
    /// Planner limit: at most this many samples per tile.
    #[arg(long)]
    pub max_samples_per_tile: Option<usize>,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub threads: Option<usize>,
    /// Engine.
    #[arg(long, value_enum, default_value_t = EngineKind::Tiled)]
    pub engine: EngineKind,
    /// The flags of this struct given on the command line (their field names), filled in by
    /// [`crate::cli::main`]: for commands that take the model from a file and may ignore them.
    #[arg(skip)]
    pub given: Vec<String>,
}

/// A configuration value as a flag would give it: numbers at f32 precision (`0.1`, not
/// `0.10000000149011612`), strings unquoted, lists comma-separated, `None` as `none`.
fn flag_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            n.as_f64().map_or(n.to_string(), |x| (x as f32).to_string())
        }
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(flag_value).collect::<Vec<_>>().join(","),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// A count of at least 1 (`bench --steps`, `--trace-steps`).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got {s:?}")),
    }
}

fn parse_window(s: &str) -> Result<f32, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "inf" | "infinity" => Ok(f32::INFINITY),
        t => match t.parse::<f32>() {
            Ok(w) if w >= 0.0 => Ok(w),
            _ => Err(format!("{s:?} is not a window: give a number >= 0 or `inf`")),
        },
    }
}

impl ModelArgs {
    /// The model configuration for data with `inputs` channels and `classes` classes.
    pub fn config(&self, inputs: usize, classes: usize) -> Result<ModelConfig> {
        if self.hidden.is_empty() {
            bail!("--hidden needs at least one width");
        }
        let cfg = self.unchecked_config(inputs, classes);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Warns (on stderr) about every model flag given on the command line whose value differs
    /// from `saved`, the model of a file that `why` says takes precedence. `--threads` and
    /// `--engine` are not part of a saved model: they always apply.
    pub fn warn_ignored(&self, saved: &ModelConfig, why: &str) {
        let flags = self.unchecked_config(saved.inputs, saved.classes);
        let (Ok(serde_json::Value::Object(ours)), Ok(serde_json::Value::Object(theirs))) =
            (serde_json::to_value(&flags), serde_json::to_value(saved))
        else {
            return;
        };
        let ignored: Vec<String> = ours
            .iter()
            .filter(|(k, v)| self.given.contains(k) && theirs.get(*k) != Some(*v))
            .map(|(k, v)| {
                let saved = theirs.get(k).map_or("nothing".into(), flag_value);
                format!("--{} {} (kept: {saved})", k.replace('_', "-"), flag_value(v))
            })
            .collect();
        if !ignored.is_empty() {
            eprintln!("warning: ignored {}: {why}", ignored.join(", "));
        }
    }

    /// Notes (on stderr) that `--window` and `--max-activity`, when given, apply to the hidden
    /// layers only: the output layer has its own flags (full capacity and an infinite window by
    /// default, see the README's "Readout"), which a reader of SPEC §2 may not expect.
    pub fn note_output_layer(&self) {
        let given = |flag: &str| self.given.iter().any(|g| g == flag);
        let mut hidden = Vec::new();
        let mut output = Vec::new();
        if given("window") && !given("output_window") && self.window != self.output_window {
            hidden.push(format!("--window {}", self.window));
            output.push(format!("--output-window {}", self.output_window));
        }
        if given("max_activity")
            && !given("output_max_activity")
            && self.max_activity != self.output_max_activity
        {
            hidden.push(format!("--max-activity {}", self.max_activity));
            output.push(format!("--output-max-activity {}", self.output_max_activity));
        }
        if !hidden.is_empty() {
            eprintln!(
                "note: {} appl{} to the hidden layers; the output layer keeps {} (give {} to \
                 change it)",
                hidden.join(" and "),
                if hidden.len() == 1 { "ies" } else { "y" },
                output.join(" and "),
                if output.len() == 1 { "that flag" } else { "those flags" }
            );
        }
    }

    /// [`ModelArgs::config`] without the checks.
    fn unchecked_config(&self, inputs: usize, classes: usize) -> ModelConfig {
        ModelConfig {
            inputs,
            hidden: self.hidden.clone(),
            classes,
            recurrent: self.recurrent,
            time_steps: self.time_steps,
            duration: self.duration,
            alpha: self.alpha,
            threshold: self.threshold,
            beta: self.beta,
            loss: self.loss.clone(),
            max_activity: self.max_activity,
            window: self.window,
            output_max_activity: self.output_max_activity,
            output_window: self.output_window,
            optimizer: self.optimizer.clone(),
            lr: self.lr,
            batch_size: self.batch_size,
            init_gain: self.init_gain,
            max_neurons_per_tile: self.max_neurons_per_tile,
            max_samples_per_tile: self.max_samples_per_tile,
        }
    }

    /// Worker threads: the flag, or all cores.
    /// More threads than cores is allowed (results do not depend on the thread count) but slow,
    /// since the threads wait for each other at every superstep: a warning says so.
    pub fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.threads.unwrap_or(cores);
        if threads > cores {
            eprintln!(
                "warning: --threads {threads} on {cores} cores: the threads meet at a barrier every \
                 superstep, so more threads than cores run much slower (same results)"
            );
        }
        threads
    }
}

/// The data shape for commands that run without data (`plan`, `bench`).
#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// Input channels (SHD: 700).
    #[arg(long, default_value_t = 700)]
    pub inputs: usize,
    /// Output classes (SHD: 20).
    #[arg(long, default_value_t = 20)]
    pub classes: usize,
}
