//! The `spiketile` command line (SPEC §5): `train`, `eval`, `plan`, `bench`, `data`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod data;

/// Train sparse spiking neural networks on 624 KiB tiles.
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
    /// Inspect or write event datasets.
    Data(data::DataArgs),
}

/// Parses the command line, runs it, and turns errors into a message and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(args) => data::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
