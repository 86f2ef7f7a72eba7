//! `spiketile plan`: print how a model is laid out on tiles.

use super::args::ModelArgs;
use crate::plan::Plan;
use anyhow::Result;
use clap::Args;

/// Arguments of `spiketile plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model flags (as for `train`).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input channels (SHD: 700).
    #[arg(long, default_value_t = 700)]
    pub inputs: usize,
    /// Output classes (SHD: 20).
    #[arg(long, default_value_t = 20)]
    pub classes: usize,
}

/// Runs `spiketile plan`.
pub fn run(args: PlanArgs) -> Result<()> {
    let cfg = args.model.config(args.inputs, args.classes)?;
    let plan = Plan::new(&cfg)?;
    println!("{plan}");
    Ok(())
}
