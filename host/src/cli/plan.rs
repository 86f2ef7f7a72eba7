//! `spiketile plan`: print how a model is laid out on tiles.

use super::args::{ModelArgs, ShapeArgs};
use crate::plan::Plan;
use anyhow::Result;
use clap::Args;

/// Arguments of `spiketile plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model flags (as for `train`).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// Runs `spiketile plan`.
pub fn run(args: PlanArgs) -> Result<()> {
    let cfg = args.model.config(args.shape.inputs, args.shape.classes)?;
    let plan = Plan::new(&cfg)?;
    println!("{plan}");
    Ok(())
}
