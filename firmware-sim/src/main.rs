//! Bare-metal firmware for QEMU's mps2-an386 (Cortex-M4F): three spiketile-core tiles, each in its
//! own 624 KiB static arena, train the [`scenario`](spiketile_firmware_sim::scenario) network and
//! log with defmt over semihosting; the firmware exits through semihosting with success, or with
//! failure on any core error or panic. Off target (x86 workspace builds) this is an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod firmware {
    use core::sync::atomic::{AtomicBool, Ordering};
    use cortex_m as _; // critical-section implementation (single core)
    use cortex_m_rt::entry;
    use cortex_m_semihosting::debug;
    use defmt_semihosting as _; // global defmt logger over semihosting
    use spiketile_core::TILE_SRAM_BYTES;
    use spiketile_firmware_sim::scenario::{self, Event, Exchange, TILES};

    /// A tile's memory: 624 KiB, 4-byte aligned (the core carves f32/u16 regions from it).
    #[repr(C, align(4))]
    struct Arena([u8; TILE_SRAM_BYTES]);

    /// Everything the run keeps in static RAM (.bss): the three tile arenas and the exchange.
    struct Statics {
        arenas: [Arena; TILES],
        exchange: Exchange,
    }

    static mut STATICS: Statics = Statics {
        arenas: [const { Arena([0; TILE_SRAM_BYTES]) }; TILES],
        exchange: Exchange::new(),
    };
    static TAKEN: AtomicBool = AtomicBool::new(false);

    /// The statics, once: a safe wrapper around the `static mut`.
    fn take_statics() -> Option<&'static mut Statics> {
        if TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `TAKEN` guarantees this runs at most once, so the only reference to
        // `STATICS` ever created is the one returned here.
        Some(unsafe { &mut *core::ptr::addr_of_mut!(STATICS) })
    }

    /// The defmt text of an event. Must print exactly what `examples/host-reference.rs` prints.
    fn print(ev: Event) {
        use scenario::*;
        match ev {
            Event::Config => defmt::println!(
                "scenario input={=usize} hidden={=usize} ({=usize} tiles x {=usize}, capacity {=usize}, window {=f32}) output={=usize} T={=usize} batch={=usize} sgd lr={=f32} steps={=u32} math={=str}",
                INPUTS, HIDDEN, HIDDEN_TILES, HIDDEN_PER_TILE, HIDDEN_CAPACITY, HIDDEN_WINDOW, OUTPUTS,
                TIME_STEPS, BATCH, LEARNING_RATE, TRAIN_STEPS, MATH
            ),
            Event::Tile { index, layer, first, end, arena, descriptor } => {
                defmt::println!(
                    "tile {=usize} layer={=usize} neurons={=usize}..{=usize} arena={=usize} bytes of {=usize}",
                    index, layer, first, end, arena, TILE_SRAM_BYTES
                );
                // Not compared with the host: the descriptor (slices) is smaller on 32-bit.
                defmt::println!(
                    "fw tile {=usize} descriptor={=usize} bytes total={=usize}",
                    index, descriptor, arena + descriptor
                );
            }
            Event::Step { step, loss, correct, hidden_spikes, output_spikes, overflow } => defmt::println!(
                "step {=u32} loss_bits={=u32:#010x} loss={=f32} correct={=usize}/{=usize} hidden_spikes={=u64} output_spikes={=u64} overflow={=u64}",
                step, loss.to_bits(), loss, correct, BATCH, hidden_spikes, output_spikes, overflow
            ),
            Event::Checksum { fnv1a, weights } => {
                defmt::println!("checksum fnv1a={=u32:#010x} weights={=usize}", fnv1a, weights)
            }
        }
    }

    #[entry]
    fn main() -> ! {
        defmt::println!("fw boot: QEMU mps2-an386, Cortex-M4F, spiketile-core tiles in static RAM");
        let Some(st) = take_statics() else { fail() };
        let Statics { arenas, exchange } = st;
        for (k, a) in arenas.iter().enumerate() {
            defmt::println!(
                "fw tile {=usize} arena: static {=usize} bytes at {=usize:#010x}",
                k,
                a.0.len(),
                a.0.as_ptr() as usize
            );
        }
        let [a0, a1, a2] = arenas;
        // black_box: the release build must keep the full 624 KiB arenas, not just what is used.
        let arenas = core::hint::black_box([&mut a0.0[..], &mut a1.0[..], &mut a2.0[..]]);
        match scenario::run(arenas, exchange, &mut print) {
            Ok(outcome) => {
                defmt::println!(
                    "fw loss first={=f32} last={=f32}",
                    outcome.first_loss,
                    outcome.last_loss
                );
                defmt::println!("result ok");
                debug::exit(debug::EXIT_SUCCESS);
            }
            Err(e) => {
                defmt::println!("result error {}", e);
                fail()
            }
        }
        #[allow(clippy::empty_loop)]
        loop {}
    }

    fn fail() -> ! {
        debug::exit(debug::EXIT_FAILURE);
        #[allow(clippy::empty_loop)]
        loop {}
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        defmt::println!("result panic {}", defmt::Display2Format(info));
        fail()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
