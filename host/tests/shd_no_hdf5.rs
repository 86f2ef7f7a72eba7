//! Without the `hdf5` feature, `spiketile data inspect|synth` exist and fail with a message that says
//! how to rebuild.
#![cfg(not(feature = "hdf5"))]

use assert_cmd::Command;
use predicates::prelude::*;

#[test]
fn data_subcommands_say_how_to_get_hdf5() {
    for args in [
        &["data", "inspect", "shd_train.h5"][..],
        &["data", "synth", "--out", "/nonexistent/syn"][..],
    ] {
        Command::cargo_bin("spiketile")
            .unwrap()
            .args(args)
            .assert()
            .failure()
            .stderr(predicate::str::contains("--features hdf5"))
            .stderr(predicate::str::contains("libhdf5-dev"));
    }
}
