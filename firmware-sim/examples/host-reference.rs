//! Host reference: runs the firmware's scenario on x86 and prints the same lines as the firmware's
//! defmt log (`src/main.rs`), so `run.sh` can compare them. Keep the two `print` functions in step.
//!
//! `cargo run --release -p spiketile-firmware-sim --example host-reference [--features fast-math]`

use spiketile_firmware_sim::scenario::{self, Event, Exchange, TILES};
use std::process::ExitCode;

fn print(ev: Event) {
    use scenario::*;
    match ev {
        Event::Config => println!(
            "scenario input={} hidden={} ({} tiles x {}, capacity {}, window {}) output={} T={} batch={} sgd lr={} steps={} math={}",
            INPUTS, HIDDEN, HIDDEN_TILES, HIDDEN_PER_TILE, HIDDEN_CAPACITY, HIDDEN_WINDOW, OUTPUTS,
            TIME_STEPS, BATCH, LEARNING_RATE, TRAIN_STEPS, MATH
        ),
        Event::Tile { index, layer, first, end, arena, descriptor } => {
            println!(
                "tile {} layer={} neurons={}..{} arena={} bytes of {}",
                index, layer, first, end, arena, spiketile_core::TILE_SRAM_BYTES
            );
            // Not compared: the descriptor holds slices, twice as large on a 64-bit host.
            println!("host tile {} descriptor={} bytes total={}", index, descriptor, arena + descriptor);
        }
        Event::Step { step, loss, correct, hidden_spikes, output_spikes, overflow } => println!(
            "step {} loss_bits={:#010x} loss={} correct={}/{} hidden_spikes={} output_spikes={} overflow={}",
            step, loss.to_bits(), loss, correct, BATCH, hidden_spikes, output_spikes, overflow
        ),
        Event::Checksum { fnv1a, weights } => {
            println!("checksum fnv1a={:#010x} weights={}", fnv1a, weights)
        }
    }
}

fn main() -> ExitCode {
    // Arenas as u32 words, so they are 4-byte aligned like the firmware's statics.
    let mut words: Vec<Vec<u32>> =
        (0..TILES).map(|_| vec![0u32; spiketile_core::TILE_SRAM_BYTES / 4]).collect();
    let mut it = words.iter_mut().map(|w| bytemuck::cast_slice_mut::<u32, u8>(w));
    let arenas = [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()];
    let mut x = Box::new(Exchange::new());
    match scenario::run(arenas, &mut x, &mut print) {
        Ok(_) => {
            println!("result ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("result error {e}");
            ExitCode::FAILURE
        }
    }
}
