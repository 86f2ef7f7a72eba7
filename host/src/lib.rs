//! spiketile (host): plan spiking networks onto 624 KiB tiles, run them bulk-synchronously over
//! threads, train and evaluate them.
//!
//! The stages, in the order data flows through them:
//! - [`data`]: event datasets (built-in synthetic, SHD HDF5 behind the `hdf5` feature) and binning;
//! - [`checkpoint`]: safetensors checkpoints, written atomically;
//! - [`cli`]: the `spiketile` command line.

pub mod atomic;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod engine;
pub mod model;
pub mod plan;
pub mod plot;
pub mod snapshot;
pub mod train;
