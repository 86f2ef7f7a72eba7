//! Firmware simulation (being written).
fn main() {}
