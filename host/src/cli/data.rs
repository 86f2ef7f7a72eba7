//! `spiketile data`: inspect a dataset file, or write the synthetic dataset in the SHD layout.

use clap::{Args, Subcommand};

/// Arguments of `spiketile data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to do with data.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// `data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {}

/// Runs `spiketile data ...`.
pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {}
}
