//! The CLI against an independent implementation of SPEC §1: `autodiff/reference.py` (numpy,
//! float64, its own reverse-mode automatic differentiation with the SuperSpike surrogate) writes
//! SHD-layout data and initial weights, runs one SGD step of `spiketile train` and
//! `spiketile eval`, and compares the gradients (to float32 rounding) and the predictions and
//! output counts (exactly): in exact mode with multi-layer, recurrent, `mse-count`, tiled and
//! windowed networks, and in sparse mode with buffers that overflow (the over-capacity policy,
//! the merge of a layer's tiles, recurrent). Skipped, with a printed note, when python3 lacks
//! numpy or h5py.
#![cfg(feature = "hdf5")]

mod common;

use std::process::Command;

#[test]
fn cli_gradients_and_predictions_equal_an_independent_autodiff() {
    let available = Command::new("python3")
        .args(["-c", "import h5py, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !available {
        eprintln!(
            "note: python3 with h5py and numpy not available; skipping the autodiff comparison"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/autodiff/reference.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_spiketile"))
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .output()
        .expect("python3 runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the CLI disagrees with the reference:\n{text}");
    assert_eq!(text.matches("worst gradient error").count(), 8, "every case ran:\n{text}");
}
