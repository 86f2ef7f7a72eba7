//! spiketile-core tiles trained as bare-metal firmware (see `README.md`).
//!
//! The library is the part shared by the firmware (`src/main.rs`, Cortex-M4F under QEMU) and the
//! host reference (`examples/host-reference.rs`, x86): the [`scenario`] both run. Both print its
//! [`scenario::Event`]s in the same text (the firmware with defmt, the host with `println!`), and the
//! runner `run.sh` compares the two line by line.
#![no_std]

pub mod scenario;
