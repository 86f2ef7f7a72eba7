//! The training scenario the firmware runs and the host reference repeats bit for bit.
//!
//! A small network on three tiles, trained with SGD for [`TRAIN_STEPS`] steps on a fixed batch:
//!
//! ```text
//! input (INPUTS = 32 channels, embedded spike data)
//!   -> hidden LIF layer (HIDDEN = 64 neurons) split over TWO tiles of 32 (tile 0: ids 0..32, tile 1: 32..64),
//!      sparse mode: layer capacity HIDDEN_CAPACITY = 16 (max activity 0.25), gradient window 0.1
//!   -> output LIF layer (OUTPUTS = 4 classes) on ONE tile, exact mode (capacity = width, window = inf)
//!   -> softmax cross-entropy on output spike counts
//! ```
//!
//! Everything is deterministic and built from integers: weights come from a tiny integer hash
//! ([`hash32`]), scaled into a range by exact power-of-two arithmetic and one rounding; the input
//! spikes are a `const` table ([`INPUT`], computed at compile time, stored in flash). No float
//! enters from outside, so an IEEE-754 binary32 machine that evaluates the same operations in the
//! same order (Cortex-M4F's FPU with default FPSCR: round to nearest, no flush-to-zero; x86-64 SSE)
//! produces the same bits: the runner checks that the firmware's lines equal the host's.
//!
//! The time loop is bulk-synchronous, as on the IPU: per superstep every tile computes reading
//! only the exchange buffers of the previous superstep, then the exchange writes the next ones.
//! The hidden layer's exchange merges its two tiles with [`LayerMerge`] in tile order (spikes of
//! tile 0, spikes of tile 1, then near-threshold ids of tile 0, then of tile 1) up to the layer
//! capacity, and tells each tile what was kept ([`Tile::commit`]); the core documents this as the
//! layer-level over-capacity policy. Dropped neurons are counted and logged (`overflow`).
//!
//! The scenario does no I/O: it reports [`Event`]s to a callback, which the firmware prints with
//! defmt and the host reference with `println!`, in the same text.

use spiketile_core::loss::{loss_and_grad, predict, LossKind};
use spiketile_core::{
    Footprint, LayerMerge, LifParams, NeuronParams, Optimizer, OptimizerKind, SpikeView, Surrogate,
    Tile, TileConfig, TileError,
};

/// Input channels.
pub const INPUTS: usize = 32;
/// Hidden layer width.
pub const HIDDEN: usize = 64;
/// Tiles the hidden layer is split over.
pub const HIDDEN_TILES: usize = 2;
/// Hidden neurons per tile.
pub const HIDDEN_PER_TILE: usize = HIDDEN / HIDDEN_TILES;
/// Hidden layer spike buffer capacity (`ceil(0.25 * 64)`: sparse mode, over-capacity possible).
pub const HIDDEN_CAPACITY: usize = 16;
/// Output classes (output layer width).
pub const OUTPUTS: usize = 4;
/// Time steps per sample.
pub const TIME_STEPS: usize = 40;
/// Samples in the (single, fixed) batch.
pub const BATCH: usize = 8;
/// SGD steps.
pub const TRAIN_STEPS: u32 = 5;
/// Tiles in total.
pub const TILES: usize = HIDDEN_TILES + 1;
/// SGD learning rate.
pub const LEARNING_RATE: f32 = 0.5;
/// Seed of the weight hash.
pub const SEED: u32 = 0x5EED_0006;
/// Which math the core was built with (the `fast-math` feature forwards to the core's).
pub const MATH: &str = if cfg!(feature = "fast-math") { "fast-math" } else { "libm" };
/// Hidden gradient window below threshold (SPEC default).
pub const HIDDEN_WINDOW: f32 = 0.1;

/// A tiny integer hash (the `lowbias32` finaliser of Chris Wellons' hash prospector): the only
/// source of "randomness" of the scenario.
pub const fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Hash of a tuple of indices.
const fn hash4(a: u32, b: u32, c: u32, d: u32) -> u32 {
    hash32(hash32(hash32(hash32(a) ^ b) ^ c) ^ d)
}

/// Label of sample `b`.
pub const fn label(b: usize) -> usize {
    b % OUTPUTS
}

/// Input spikes: `INPUT[b][t]` is the bit mask of the channels that spike at step `t` of sample `b`.
/// Class `k` drives channels `8k .. 8k+8` at ~40 % per step, the other channels fire at ~6 %.
pub const INPUT: [[u32; TIME_STEPS]; BATCH] = make_input();

const fn make_input() -> [[u32; TIME_STEPS]; BATCH] {
    let mut out = [[0u32; TIME_STEPS]; BATCH];
    let mut b = 0;
    while b < BATCH {
        let class = label(b);
        let mut t = 0;
        while t < TIME_STEPS {
            let mut mask = 0u32;
            let mut c = 0;
            while c < INPUTS {
                let p256 = if c / 8 == class { 102 } else { 16 };
                if hash4(0xDA7A, b as u32, t as u32, c as u32) & 0xff < p256 {
                    mask |= 1 << c;
                }
                c += 1;
            }
            out[b][t] = mask;
            t += 1;
        }
        b += 1;
    }
    out
}

/// A weight in `[lo, lo + span)` from the hash of its indices: a 24-bit integer made a float
/// exactly (`* 2^-24`), then one multiply and one add (both IEEE-rounded, deterministic).
fn weight(layer: u32, post: u32, pre: u32, lo: f32, span: f32) -> f32 {
    let h = hash4(SEED, layer, post, pre) >> 8;
    let unit = h as f32 * (1.0 / 16_777_216.0);
    lo + span * unit
}

/// The configuration of hidden tile `k`.
pub fn hidden_config(k: usize) -> TileConfig {
    TileConfig {
        neurons: HIDDEN_PER_TILE,
        first_neuron: k * HIDDEN_PER_TILE,
        layer_width: HIDDEN,
        inputs: INPUTS,
        recurrent: false,
        batch: BATCH,
        time_steps: TIME_STEPS,
        in_capacity: INPUTS,
        layer_capacity: HIDDEN_CAPACITY,
        optimizer: OptimizerKind::Sgd,
    }
}

/// The configuration of the output tile.
pub fn output_config() -> TileConfig {
    TileConfig {
        neurons: OUTPUTS,
        first_neuron: 0,
        layer_width: OUTPUTS,
        inputs: HIDDEN,
        recurrent: false,
        batch: BATCH,
        time_steps: TIME_STEPS,
        in_capacity: HIDDEN_CAPACITY,
        layer_capacity: OUTPUTS,
        optimizer: OptimizerKind::Sgd,
    }
}

fn hidden_params() -> NeuronParams {
    NeuronParams {
        lif: LifParams { alpha: 0.95, theta: 1.0 },
        surrogate: Surrogate::SuperSpike { beta: 10.0 },
        window: HIDDEN_WINDOW,
    }
}

fn output_params() -> NeuronParams {
    NeuronParams { window: f32::INFINITY, ..hidden_params() }
}

/// The exchange buffers between tiles (what the IPU's exchange fabric moves), double-buffered per
/// superstep. Fixed-size, so the firmware keeps them in a `static`.
pub struct Exchange {
    /// Hidden layer buffer `S_1[t-1]` per sample (global ids), read by the output tile.
    hidden_prev: [[u16; HIDDEN_CAPACITY]; BATCH],
    hidden_prev_len: [(usize, usize); BATCH],
    /// Hidden layer buffer `S_1[t]` being merged.
    hidden_next: [[u16; HIDDEN_CAPACITY]; BATCH],
    hidden_next_len: [(usize, usize); BATCH],
    /// Input layer buffer `S_0[t-1]` per sample (the binned data; all spikes, no near set).
    input: [[u16; INPUTS]; BATCH],
    input_len: [usize; BATCH],
    /// `dL/dS_1[t]` per sample, dense over the hidden layer, read by the hidden tiles.
    dlds_hidden: [[f32; HIDDEN]; BATCH],
    /// `dL/dS_1[t-1]` being reduced from the output tile's partials.
    dlds_hidden_next: [[f32; HIDDEN]; BATCH],
    /// `dL/dcounts` per sample (already scaled by `1/B`), read by the output tile.
    dl_dcounts: [[f32; OUTPUTS]; BATCH],
    /// Output spike counts per sample.
    counts: [[f32; OUTPUTS]; BATCH],
}

impl Exchange {
    /// Zeroed buffers (`const`, so a `static` needs no runtime initialiser).
    pub const fn new() -> Self {
        Exchange {
            hidden_prev: [[0; HIDDEN_CAPACITY]; BATCH],
            hidden_prev_len: [(0, 0); BATCH],
            hidden_next: [[0; HIDDEN_CAPACITY]; BATCH],
            hidden_next_len: [(0, 0); BATCH],
            input: [[0; INPUTS]; BATCH],
            input_len: [0; BATCH],
            dlds_hidden: [[0.0; HIDDEN]; BATCH],
            dlds_hidden_next: [[0.0; HIDDEN]; BATCH],
            dl_dcounts: [[0.0; OUTPUTS]; BATCH],
            counts: [[0.0; OUTPUTS]; BATCH],
        }
    }
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

/// What the scenario reports, in order: one `Config`, one `Tile` per tile, one `Step` per SGD
/// step, one `Checksum`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    /// The network and training setup.
    Config,
    /// A tile's place and memory.
    Tile {
        /// Tile index (0, 1: hidden; 2: output).
        index: usize,
        /// Layer (1 = hidden, 2 = output).
        layer: usize,
        /// First global neuron id.
        first: usize,
        /// One past the last.
        end: usize,
        /// Bytes the tile carves from its arena ([`Footprint::arena`]): the same on every target.
        arena: usize,
        /// Bytes of the tile descriptor ([`Footprint::header`], `size_of::<Tile>()`): it holds
        /// slices, so it is larger on a 64-bit host than on the 32-bit Cortex-M4. Arena plus
        /// descriptor is what the core checks against [`spiketile_core::TILE_SRAM_BYTES`].
        descriptor: usize,
    },
    /// One SGD step (loss of the forward pass before the update).
    Step {
        /// 1-based step.
        step: u32,
        /// Mean cross-entropy over the batch.
        loss: f32,
        /// Samples predicted right.
        correct: usize,
        /// Hidden spikes the layer kept (all samples and steps).
        hidden_spikes: u64,
        /// Output spikes (all samples and steps).
        output_spikes: u64,
        /// Hidden neurons dropped for lack of layer capacity.
        overflow: u64,
    },
    /// After the last step: FNV-1a over the bits of every weight (tiles in order, then weights
    /// in storage order), and their count.
    Checksum {
        /// The hash.
        fnv1a: u32,
        /// Weights hashed.
        weights: usize,
    },
}

/// The result of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Loss of the first and the last step.
    pub first_loss: f32,
    /// Loss of the last step.
    pub last_loss: f32,
    /// Final weight checksum.
    pub fnv1a: u32,
}

/// Bytes a tile of `cfg` uses (arena + descriptor).
pub fn footprint(cfg: &TileConfig) -> Result<Footprint, TileError> {
    Footprint::of(cfg)
}

fn fnv1a(mut h: u32, w: &[f32]) -> u32 {
    for x in w {
        for byte in x.to_bits().to_le_bytes() {
            h ^= byte as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Runs the scenario on three tiles built in `arenas` (hidden tile 0, hidden tile 1, output tile;
/// each 4-byte aligned and large enough), with the exchange through `x`, reporting to `report`.
pub fn run(
    arenas: [&mut [u8]; TILES],
    x: &mut Exchange,
    report: &mut dyn FnMut(Event),
) -> Result<Outcome, TileError> {
    let [a0, a1, a2] = arenas;
    let mut hidden = [
        Tile::new(hidden_config(0), hidden_params(), a0)?,
        Tile::new(hidden_config(1), hidden_params(), a1)?,
    ];
    let mut out = Tile::new(output_config(), output_params(), a2)?;

    report(Event::Config);
    for (k, tile) in hidden.iter().enumerate() {
        let cfg = tile.config();
        let fp = footprint(cfg)?;
        report(Event::Tile {
            index: k,
            layer: 1,
            first: cfg.first_neuron,
            end: cfg.first_neuron + cfg.neurons,
            arena: fp.arena(),
            descriptor: fp.header,
        });
    }
    let fp = footprint(out.config())?;
    report(Event::Tile {
        index: 2,
        layer: 2,
        first: 0,
        end: OUTPUTS,
        arena: fp.arena(),
        descriptor: fp.header,
    });

    // Deterministic initial weights, stored input-major: w[j * neurons + i].
    for tile in hidden.iter_mut() {
        let first = tile.config().first_neuron;
        for (idx, w) in tile.weights_mut().iter_mut().enumerate() {
            let (j, i) = (idx / HIDDEN_PER_TILE, idx % HIDDEN_PER_TILE);
            *w = weight(1, (first + i) as u32, j as u32, -0.5, 2.5);
        }
    }
    for (idx, w) in out.weights_mut().iter_mut().enumerate() {
        let (j, i) = (idx / OUTPUTS, idx % OUTPUTS);
        *w = weight(2, i as u32, j as u32, -0.5, 1.5);
    }

    let opt = Optimizer::sgd(LEARNING_RATE);
    let mut first_loss = 0.0;
    let mut last_loss = 0.0;
    for step in 1..=TRAIN_STEPS {
        for tile in hidden.iter_mut() {
            tile.zero_grads();
            tile.reset_stats();
        }
        out.zero_grads();
        out.reset_stats();
        x.hidden_prev_len = [(0, 0); BATCH];
        x.counts = [[0.0; OUTPUTS]; BATCH];

        // ---- forward: one superstep per time step ----
        for t in 0..TIME_STEPS {
            for b in 0..BATCH {
                // Input layer buffer S_0[t-1] (the data is the input layer's "tile").
                let mut n = 0;
                if t > 0 {
                    let mask = INPUT[b][t - 1];
                    for c in 0..INPUTS {
                        if mask & (1 << c) != 0 {
                            x.input[b][n] = c as u16;
                            n += 1;
                        }
                    }
                }
                x.input_len[b] = n;
            }
            // Compute: every tile reads only buffers of the previous superstep.
            for b in 0..BATCH {
                let input =
                    SpikeView { ids: &x.input[b][..x.input_len[b]], n_spikes: x.input_len[b] };
                for tile in hidden.iter_mut() {
                    tile.forward(t, b, input, SpikeView::EMPTY)?;
                }
                let (ns, ng) = x.hidden_prev_len[b];
                let h = SpikeView { ids: &x.hidden_prev[b][..ng], n_spikes: ns };
                out.forward(t, b, h, SpikeView::EMPTY)?;
            }
            // Exchange: merge the hidden tiles in tile order, commit what the layer kept.
            for b in 0..BATCH {
                let mut kept = [(0usize, 0usize); HIDDEN_TILES];
                let mut merge = LayerMerge::new(&mut x.hidden_next[b]);
                for (k, tile) in hidden.iter().enumerate() {
                    kept[k].0 = merge
                        .push_spikes(tile.out_buffer(t, b).spikes(), tile.config().first_neuron);
                }
                for (k, tile) in hidden.iter().enumerate() {
                    kept[k].1 =
                        merge.push_near(tile.out_buffer(t, b).near(), tile.config().first_neuron);
                }
                x.hidden_next_len[b] = merge.finish();
                for (tile, &(ks, kn)) in hidden.iter_mut().zip(&kept) {
                    tile.commit(t, b, ks, kn)?;
                }
                // The output layer is one tile with capacity = width: nothing to drop.
                out.commit_all(t, b)?;
                for &k in out.out_buffer(t, b).spikes() {
                    x.counts[b][k as usize] += 1.0;
                }
            }
            core::mem::swap(&mut x.hidden_prev, &mut x.hidden_next);
            core::mem::swap(&mut x.hidden_prev_len, &mut x.hidden_next_len);
        }

        // ---- loss on output counts ----
        let scale = 1.0 / BATCH as f32;
        let mut loss_sum = 0.0f32;
        let mut correct = 0;
        for b in 0..BATCH {
            loss_sum += loss_and_grad(
                LossKind::CeCount,
                &x.counts[b],
                label(b),
                scale,
                &mut x.dl_dcounts[b],
            );
            if predict(&x.counts[b]) == label(b) {
                correct += 1;
            }
        }
        let loss = loss_sum * scale;

        // ---- backward: supersteps t = T-1 .. 0 ----
        x.dlds_hidden = [[0.0; HIDDEN]; BATCH]; // dL/dS_1[T-1] = 0: no step T reads it
        for t in (0..TIME_STEPS).rev() {
            for b in 0..BATCH {
                // Output tile: dL/dS_2[t] = dL/dcounts at its gradient set (all 4 neurons).
                let ids_len = out.out_buffer(t, b).n_grad();
                let mut ids = [0u16; OUTPUTS];
                ids[..ids_len].copy_from_slice(out.out_buffer(t, b).ids);
                for (d, &i) in out.dlds_mut(b).iter_mut().zip(&ids[..ids_len]) {
                    *d = x.dl_dcounts[b][i as usize];
                }
                out.backward(t, b)?;
                // Hidden tiles: dL/dS_1[t] at their gradient sets, from the previous superstep.
                for tile in hidden.iter_mut() {
                    let first = tile.config().first_neuron;
                    let view = tile.out_buffer(t, b);
                    let mut ids = [0u16; HIDDEN_PER_TILE];
                    let n = view.n_grad().min(HIDDEN_PER_TILE);
                    ids[..n].copy_from_slice(&view.ids[..n]);
                    for (d, &i) in tile.dlds_mut(b).iter_mut().zip(&ids[..n]) {
                        *d = x.dlds_hidden[b][first + i as usize];
                    }
                    tile.backward(t, b)?;
                }
            }
            // Exchange: reduce the output tile's partial dL/dS_1[t-1] (one consumer tile here;
            // with several the partials would be summed in tile order).
            for b in 0..BATCH {
                x.dlds_hidden_next[b] = [0.0; HIDDEN];
                let src = out.in_buffer(t, b);
                for (&j, &p) in src.ids.iter().zip(out.src_partials(b)) {
                    x.dlds_hidden_next[b][j as usize] += p;
                }
            }
            core::mem::swap(&mut x.dlds_hidden, &mut x.dlds_hidden_next);
        }

        // ---- update: every tile its own weights ----
        for tile in hidden.iter_mut() {
            tile.apply(&opt, step);
        }
        out.apply(&opt, step);

        let mut hidden_spikes = 0;
        let mut overflow = 0;
        for tile in hidden.iter() {
            let s = tile.stats();
            hidden_spikes += s.spikes_kept;
            overflow += s.overflow();
        }
        report(Event::Step {
            step,
            loss,
            correct,
            hidden_spikes,
            output_spikes: out.stats().spikes_kept,
            overflow,
        });
        if step == 1 {
            first_loss = loss;
        }
        last_loss = loss;
    }

    let mut h = 0x811c_9dc5;
    let mut count = 0;
    for tile in hidden.iter() {
        h = fnv1a(h, tile.weights());
        count += tile.weights().len();
    }
    h = fnv1a(h, out.weights());
    count += out.weights().len();
    report(Event::Checksum { fnv1a: h, weights: count });
    Ok(Outcome { first_loss, last_loss, fnv1a: h })
}
