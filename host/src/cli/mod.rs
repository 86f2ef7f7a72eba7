//! The `spiketile` command line (SPEC §5): `train`, `eval`, `plan`, `bench`, `data`, `trace`,
//! `plot`.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

pub mod args;
pub mod bench;
pub mod data;
pub mod dataset;
pub mod eval;
pub mod gain;
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
    /// The widest vector instructions the kernels may use (`auto`: the CPU's widest). Every
    /// choice gives the same results, bit for bit: for comparing them on one machine, or for a
    /// CPU that slows its clock for wide registers.
    #[arg(long, value_enum, global = true, default_value_t = Simd::Auto)]
    pub simd: Simd,
}

/// `--simd`: a cap on [`spiketile_core::simd::level`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// The CPU's widest.
    Auto,
    /// AVX-512F where the CPU has it (x86-64).
    Avx512,
    /// AVX2 at most (x86-64).
    Avx2,
    /// The target's baseline instructions only (SSE2 on x86-64).
    Baseline,
}

/// Applies `--simd`; a note on stderr if the CPU runs less than was asked for.
fn apply_simd(choice: Simd) {
    use spiketile_core::simd::{limit, Level};
    let asked = match choice {
        Simd::Auto => return,
        Simd::Avx512 => Level::Avx512,
        Simd::Avx2 => Level::Avx2,
        Simd::Baseline => Level::Baseline,
    };
    let used = limit(asked);
    if used < asked {
        eprintln!("note: --simd {choice:?}: this CPU runs at most {used:?}; using that");
    }
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

/// The ids (field names) of the arguments given on the command line.
fn given(m: &ArgMatches) -> Vec<String> {
    m.ids()
        .filter(|id| {
            matches!(m.try_get_raw(id.as_str()), Ok(Some(_)))
                && m.value_source(id.as_str()) == Some(ValueSource::CommandLine)
        })
        .map(|id| id.to_string())
        .collect()
}

/// Parses the command line, runs it, and turns errors into a message and a non-zero exit.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some((_, sub)) = matches.subcommand() {
        match &mut cli.command {
            Command::Train(a) => a.model.given = given(sub),
            Command::Eval(a) => a.model.given = given(sub),
            _ => {}
        }
    }
    apply_simd(cli.simd);
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
