//! The firmware's scenario on the host: it runs without a core error, is deterministic, and trains
//! (the loss of the last step is below the first). `run.sh` checks the firmware against the host
//! bit for bit; this test keeps the scenario itself honest under `cargo test --workspace`.

use spiketile_core::TILE_SRAM_BYTES;
use spiketile_firmware_sim::scenario::{self, Event, Exchange, Outcome, TILES, TRAIN_STEPS};

fn run_once(events: &mut Vec<Event>) -> Outcome {
    let mut words: Vec<Vec<u32>> = (0..TILES).map(|_| vec![0u32; TILE_SRAM_BYTES / 4]).collect();
    let mut it = words.iter_mut().map(|w| bytemuck::cast_slice_mut::<u32, u8>(w));
    let arenas = [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()];
    let mut x = Box::new(Exchange::new());
    scenario::run(arenas, &mut x, &mut |e| events.push(e)).expect("scenario runs")
}

#[test]
fn scenario_is_deterministic_and_trains() {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let oa = run_once(&mut a);
    let ob = run_once(&mut b);
    assert_eq!(oa.fnv1a, ob.fnv1a);
    assert_eq!(a, b);
    let steps = a.iter().filter(|e| matches!(e, Event::Step { .. })).count();
    assert_eq!(steps, TRAIN_STEPS as usize);
    assert!(oa.last_loss < oa.first_loss, "{} -> {}", oa.first_loss, oa.last_loss);
    for e in &a {
        if let Event::Tile { arena, descriptor, .. } = e {
            assert!(arena + descriptor <= TILE_SRAM_BYTES);
        }
        if let Event::Step { output_spikes, loss, .. } = e {
            assert!(*output_spikes > 0, "the output layer must spike for the loss to move");
            assert!(loss.is_finite());
        }
    }
}

#[test]
fn input_data_is_class_dependent() {
    // Class k drives channels 8k..8k+8 harder than the rest.
    for (b, sample) in scenario::INPUT.iter().enumerate() {
        let k = scenario::label(b);
        let band = 0xffu32 << (8 * k);
        let inside: u32 = sample.iter().map(|m| (m & band).count_ones()).sum();
        let outside: u32 = sample.iter().map(|m| (m & !band).count_ones()).sum();
        assert!(inside * 3 > outside, "sample {b}: {inside} vs {outside}");
    }
}
