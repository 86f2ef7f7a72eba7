//! Helpers shared by the CLI tests: the binary and a tiny model on a tiny built-in dataset, so
//! debug builds run a training command in a second or two.

#![allow(dead_code)]

use assert_cmd::Command;

#[cfg(feature = "hdf5")]
pub mod hdf5;

/// Model and data flags of a tiny run.
pub const TINY: &[&str] = &[
    "--hidden",
    "12",
    "--time-steps",
    "20",
    "--batch-size",
    "8",
    "--train-samples",
    "40",
    "--test-samples",
    "20",
];

/// The `spiketile` binary of this build.
pub fn spiketile() -> Command {
    Command::cargo_bin("spiketile").unwrap()
}

/// Whether `python3` can import numpy and h5py; if not, prints that `test` is skipped.
pub fn python_with_h5py(test: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import h5py, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: python3 with h5py and numpy not available; skipping {test}");
    }
    ok
}
