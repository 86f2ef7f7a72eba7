//! The `spiketile` command line (SPEC §5): `train`, `eval`, `plan`, `bench`, `data`, `trace`,
//! `plot`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod args;
pub mod bench;
pub mod data;
pub mod dataset;
pub mod eval;
pub mod plan;
pub mod plot;
pub mod trace;
pub mod train;

/// Train sparse spiking neural networks on 624 KiB tiles, bulk-synchronously, on a CPU.
#[derive(Parser, Debug)]
#[command(name = "spiketile", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a network (on the built-in synthetic dataset unless --data is given).
    Train(Box<train::TrainArgs>),
    /// Evaluate a checkpoint and write per-sample predictions.
    Eval(Box<eval::EvalArgs>),
    /// Show how a model is laid out on 624 KiB tiles.
    Plan(Box<plan::PlanArgs>),
    /// Measure training throughput on random input.
    Bench(Box<bench::BenchArgs>),
    /// Inspect or write event datasets.
    Data(data::DataArgs),
    /// Summarise execution traces written by `train --trace` / `bench --trace`.
    Trace(trace::TraceArgs),
    /// Draw pictures (PNG and SVG): metrics of a run, spike rasters, benchmark sweeps.
    Plot(plot::PlotArgs),
}

/// Parses the command line, runs it, and turns errors into a message and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Plan(args) => plan::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Data(args) => data::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Plot(args) => plot::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
