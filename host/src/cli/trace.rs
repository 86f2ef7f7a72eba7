//! `spiketile trace summary FILE.json`: an execution trace (`train --trace`, `bench --trace`) in
//! numbers: per phase and pass, total time, share of the thread time, and span count, like the
//! IPU execution-trace figure of the poster; and the helpers that write traces for those commands.

use crate::engine::trace::TraceSummary;
use crate::engine::Engine;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// Arguments of `spiketile trace`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// What to do with a trace.
    #[command(subcommand)]
    pub command: TraceCommand,
}

/// The `trace` subcommands.
#[derive(Subcommand, Debug)]
pub enum TraceCommand {
    /// Per-phase totals of a trace written by `train --trace` or `bench --trace`.
    Summary {
        /// The Chrome trace-event JSON file.
        file: PathBuf,
    },
}

/// Runs `spiketile trace`.
pub fn run(args: TraceArgs) -> Result<()> {
    match args.command {
        TraceCommand::Summary { file } => {
            let s = TraceSummary::from_file(&file)?;
            print!("{}", s.format());
            Ok(())
        }
    }
}

/// Starts tracing `steps` training batches on `engine` when `path` is given.
pub fn start(engine: &mut dyn Engine, path: Option<&Path>, steps: usize) -> Result<()> {
    if path.is_some() {
        engine.start_trace(steps).context("--trace")?;
    }
    Ok(())
}

/// Writes the engine's trace to `path` when given, and says where.
pub fn finish(engine: &mut dyn Engine, path: Option<&Path>) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let trace = engine.take_trace().context("--trace: the engine recorded no trace")?;
    trace.write(path)?;
    eprintln!(
        "trace of {} step{} ({} spans) written to {}; open it in ui.perfetto.dev or chrome://tracing, \
         or run `spiketile trace summary {}`",
        trace.meta.steps.len(),
        if trace.meta.steps.len() == 1 { "" } else { "s" },
        trace.events.len(),
        path.display(),
        path.display()
    );
    Ok(())
}
