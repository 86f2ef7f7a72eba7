//! Tests of whole tiles: the footprint is the memory used, a layer split over tiles equals the
//! layer on one tile, and the budget is enforced (property test).

use crate::loss::{loss_and_grad, LossKind};
use crate::spikes::LayerMerge;
use crate::*;
use proptest::prelude::*;

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

const INPUTS: usize = 12;
const WIDTH: usize = 7;
const T: usize = 25;
const B: usize = 2;

struct Net {
    w: Vec<f32>,              // row-major [WIDTH][INPUTS]
    v: Vec<f32>,              // row-major [WIDTH][WIDTH]
    data: Vec<Vec<Vec<u16>>>, // [b][t] -> input spike ids
}

fn net(seed: u64) -> Net {
    let mut r = Lcg(seed);
    let w = (0..WIDTH * INPUTS).map(|_| r.next() * 8.0 - 2.0).collect();
    let v = (0..WIDTH * WIDTH).map(|_| r.next() * 6.0 - 3.0).collect();
    let data = (0..B)
        .map(|_| (0..T).map(|_| (0..INPUTS as u16).filter(|_| r.next() < 0.3).collect()).collect())
        .collect();
    Net { w, v, data }
}

struct Outcome {
    counts: Vec<f32>,
    dw: Vec<f32>,
    dv: Vec<f32>,
    partials: Vec<f32>, // dL/dS_0 summed over tiles, per b, t, input-buffer entry
    stats: TileStats,
}

/// Runs one layer (the output layer, CE loss on counts) split at `splits`, in the way the host
/// engine does: forward supersteps with merge and commit, then backward with recurrent partials
/// reduced over tiles and fed back as dL/dS of the previous step.
fn run_layer(net: &Net, splits: &[usize], recurrent: bool, window: f32, cap: usize) -> Outcome {
    run_layer_with(net, splits, (recurrent, window, cap), Sources::Own)
}

/// Where the tiles of [`run_layer_with`] get their source buffers, and where their input-weight
/// gradients go.
#[derive(Clone, Copy, PartialEq)]
enum Sources {
    /// The tiles keep their source buffers ([`Tile::forward`], [`Tile::backward`]).
    Own,
    /// From the driver in both passes ([`Tile::forward_external`]).
    External,
    /// From the driver, and the input-weight gradients are deferred
    /// ([`Tile::backward_external_deferred`]): the driver adds every step's `dL/dc` at the end
    /// with [`rows::gather_add`], from lists in the order the steps ran.
    Deferred,
}

/// [`run_layer`] with `(recurrent, window, cap)` and the tiles' `sources`.
fn run_layer_with(
    net: &Net,
    splits: &[usize],
    (recurrent, window, cap): (bool, f32, usize),
    sources: Sources,
) -> Outcome {
    let external = sources != Sources::Own;
    let params = NeuronParams { window, ..NeuronParams::default() };
    let mut arenas: Vec<Vec<u32>> = Vec::new();
    let cfgs: Vec<TileConfig> = splits
        .windows(2)
        .map(|s| TileConfig {
            neurons: s[1] - s[0],
            first_neuron: s[0],
            layer_width: WIDTH,
            inputs: INPUTS,
            recurrent,
            batch: B,
            time_steps: T,
            in_capacity: INPUTS,
            layer_capacity: cap,
            optimizer: OptimizerKind::Adam,
        })
        .collect();
    for c in &cfgs {
        arenas.push(vec![0u32; c.footprint().unwrap().arena() / 4]);
    }
    let mut tiles: Vec<Tile> = cfgs
        .iter()
        .zip(arenas.iter_mut())
        .map(|(c, a)| Tile::new(*c, params, bytemuck::cast_slice_mut(a)).unwrap())
        .collect();
    for tile in tiles.iter_mut() {
        let (n, f) = (tile.config().neurons, tile.config().first_neuron);
        for j in 0..INPUTS {
            for i in 0..n {
                tile.weights_mut()[j * n + i] = net.w[(f + i) * INPUTS + j];
            }
        }
        if recurrent {
            for j in 0..WIDTH {
                for i in 0..n {
                    tile.recurrent_mut()[j * n + i] = net.v[(f + i) * WIDTH + j];
                }
            }
        }
    }
    // layer[b][t] = (ids, n_spikes)
    let mut layer = vec![vec![(Vec::new(), 0usize); T]; B];
    for t in 0..T {
        for b in 0..B {
            let input: &[u16] = if t == 0 { &[] } else { &net.data[b][t - 1] };
            let input = SpikeView::new(input, input.len()).unwrap();
            let (prev_ids, prev_ns): (Vec<u16>, usize) =
                if t == 0 { (Vec::new(), 0) } else { layer[b][t - 1].clone() };
            let rec = if recurrent {
                SpikeView::new(&prev_ids, prev_ns).unwrap()
            } else {
                SpikeView::EMPTY
            };
            for tile in tiles.iter_mut() {
                if external {
                    tile.forward_external(t, b, StepInput { input, rec }, None).unwrap();
                } else {
                    tile.forward(t, b, input, rec).unwrap();
                }
            }
            let mut out = vec![0u16; cap];
            let mut merge = LayerMerge::new(&mut out);
            let keep_s: Vec<usize> = tiles
                .iter()
                .map(|x| merge.push_spikes(x.out_buffer(t, b).spikes(), x.config().first_neuron))
                .collect();
            let keep_n: Vec<usize> = tiles
                .iter()
                .map(|x| merge.push_near(x.out_buffer(t, b).near(), x.config().first_neuron))
                .collect();
            let (ns, ng) = merge.finish();
            for (k, tile) in tiles.iter_mut().enumerate() {
                tile.commit(t, b, keep_s[k], keep_n[k]).unwrap();
            }
            layer[b][t] = (out[..ng].to_vec(), ns);
        }
    }
    let mut counts = vec![0.0f32; B * WIDTH];
    for b in 0..B {
        for t in 0..T {
            let (ids, ns) = &layer[b][t];
            for &i in &ids[..*ns] {
                counts[b * WIDTH + i as usize] += 1.0;
            }
        }
    }
    let mut dldc = [0.0f32; B * WIDTH];
    for b in 0..B {
        let c = &counts[b * WIDTH..(b + 1) * WIDTH];
        loss_and_grad(
            LossKind::CeCount,
            c,
            b % WIDTH,
            1.0 / B as f32,
            &mut dldc[b * WIDTH..][..WIDTH],
        );
    }
    // dL/dS of the layer at the step being processed, dense per sample (global ids).
    let mut rec_in = vec![vec![0.0f32; WIDTH]; B];
    let mut partials = Vec::new();
    // Deferred: per tile, the dL/dc vectors in the order the steps ran, and per input the
    // vectors it takes.
    let mut vecs: Vec<Vec<f32>> = vec![Vec::new(); tiles.len()];
    let mut lists: Vec<Vec<u16>> = vec![Vec::new(); INPUTS];
    for t in (0..T).rev() {
        for b in 0..B {
            let input: &[u16] = if t == 0 { &[] } else { &net.data[b][t - 1] };
            let input = SpikeView::new(input, input.len()).unwrap();
            let (prev_ids, prev_ns): (Vec<u16>, usize) =
                if t == 0 || !recurrent { (Vec::new(), 0) } else { layer[b][t - 1].clone() };
            let rec = SpikeView::new(&prev_ids, prev_ns).unwrap();
            for tile in tiles.iter_mut() {
                let f = tile.config().first_neuron;
                let ids: Vec<u16> = tile.out_buffer(t, b).ids.to_vec();
                let d = tile.dlds_mut(b);
                for (k, &i) in ids.iter().enumerate() {
                    let gi = f + i as usize;
                    d[k] = dldc[b * WIDTH + gi] + rec_in[b][gi];
                }
                let step = StepInput { input, rec };
                if sources == Sources::Deferred {
                    let mut dldc = vec![0.0f32; tile.config().neurons];
                    tile.backward_external_deferred(t, b, step, true, None, None, &mut dldc)
                        .unwrap();
                    vecs[tile_index(&cfgs, f)].extend(dldc);
                } else if external {
                    tile.backward_external(t, b, step, true, None, None).unwrap();
                } else {
                    tile.backward(t, b).unwrap();
                }
            }
            let mut next = vec![0.0f32; WIDTH];
            let mut src = vec![0.0f32; input.n_grad()];
            for tile in tiles.iter() {
                for (s, p) in src.iter_mut().zip(tile.src_partials(b)) {
                    *s += p;
                }
                for (&j, p) in rec.ids.iter().zip(tile.rec_partials(b)) {
                    next[j as usize] += p;
                }
            }
            partials.extend(src);
            rec_in[b] = next;
            let k = ((T - 1 - t) * B + b) as u16;
            input.spikes().iter().for_each(|&j| lists[j as usize].push(k));
        }
    }
    if sources == Sources::Deferred {
        let mut starts = vec![0u32];
        for list in &lists {
            starts.push(starts[starts.len() - 1] + list.len() as u32);
        }
        let uses: Vec<u16> = lists.concat();
        for (tile, v) in tiles.iter_mut().zip(&vecs) {
            let n = tile.config().neurons;
            rows::gather_add(tile.grads_mut().0, n, v, &starts, &uses);
        }
    }
    let mut dw = vec![0.0f32; WIDTH * INPUTS];
    let mut dv = vec![0.0f32; WIDTH * WIDTH];
    let mut stats = TileStats::default();
    for tile in tiles.iter() {
        let (n, f) = (tile.config().neurons, tile.config().first_neuron);
        let (gw, gv) = tile.grads();
        for i in 0..n {
            for j in 0..INPUTS {
                dw[(f + i) * INPUTS + j] = gw[j * n + i];
            }
            for j in 0..gv.len() / n {
                dv[(f + i) * WIDTH + j] = gv[j * n + i];
            }
        }
        stats.add(&tile.stats());
    }
    Outcome { counts, dw, dv, partials, stats }
}

/// The index of the tile that starts at neuron `first`.
fn tile_index(cfgs: &[TileConfig], first: usize) -> usize {
    cfgs.iter().position(|c| c.first_neuron == first).unwrap()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{k}]: {x} vs {y}");
    }
}

#[test]
fn split_layer_equals_single_tile_exact_mode() {
    for recurrent in [false, true] {
        let n = net(7);
        let one = run_layer(&n, &[0, WIDTH], recurrent, f32::INFINITY, WIDTH);
        assert!(one.counts.iter().sum::<f32>() > 0.0, "the layer must spike");
        assert!(one.dw.iter().any(|&g| g != 0.0), "gradients must flow");
        for splits in [&[0, 3, WIDTH][..], &[0, 1, 4, 6, WIDTH]] {
            let many = run_layer(&n, splits, recurrent, f32::INFINITY, WIDTH);
            assert_eq!(one.counts, many.counts);
            assert_close(&one.dw, &many.dw, 1e-6, "dW");
            assert_close(&one.dv, &many.dv, 1e-6, "dV");
            assert_close(&one.partials, &many.partials, 1e-6, "dL/dS_in");
        }
    }
}

#[test]
fn split_layer_equals_single_tile_sparse_mode_with_overflow() {
    for recurrent in [false, true] {
        let n = net(11);
        let one = run_layer(&n, &[0, WIDTH], recurrent, 0.3, 2);
        assert!(one.stats.overflow() > 0, "this case must overflow");
        let many = run_layer(&n, &[0, 2, 5, WIDTH], recurrent, 0.3, 2);
        assert_eq!(one.counts, many.counts);
        assert_eq!(one.stats.spikes_kept, many.stats.spikes_kept);
        assert_eq!(one.stats.near_kept, many.stats.near_kept);
        assert_close(&one.dw, &many.dw, 1e-6, "dW");
        assert_close(&one.dv, &many.dv, 1e-6, "dV");
    }
}

#[test]
fn window_covering_every_neuron_equals_exact_mode() {
    let n = net(3);
    let exact = run_layer(&n, &[0, 4, WIDTH], true, f32::INFINITY, WIDTH);
    let wide = run_layer(&n, &[0, 4, WIDTH], true, 1e9, WIDTH);
    assert_eq!(exact.counts, wide.counts);
    assert_eq!(exact.dw, wide.dw);
    assert_eq!(exact.partials, wide.partials);
    // A narrow window really is different (so the test above can fail).
    let narrow = run_layer(&n, &[0, 4, WIDTH], true, 0.05, WIDTH);
    assert_ne!(exact.dw, narrow.dw);
}

/// Source buffers kept by the driver give the tiles' own results, bit for bit: exact mode and
/// overflow, with and without recurrent weights, on one tile and split.
#[test]
fn external_histories_equal_the_tiles_own() {
    for recurrent in [false, true] {
        for (seed, window, cap) in [(7, f32::INFINITY, WIDTH), (11, 0.3, 2)] {
            let n = net(seed);
            for splits in [&[0, WIDTH][..], &[0, 2, 5, WIDTH]] {
                let own = run_layer_with(&n, splits, (recurrent, window, cap), Sources::Own);
                let ext = run_layer_with(&n, splits, (recurrent, window, cap), Sources::External);
                assert!(own.dw.iter().any(|&g| g != 0.0), "gradients must flow");
                assert_eq!(own.counts, ext.counts);
                assert_eq!(own.dw, ext.dw);
                assert_eq!(own.dv, ext.dv);
                assert_eq!(own.partials, ext.partials);
                assert_eq!(own.stats, ext.stats);
            }
        }
    }
}

/// Deferred input-weight gradients, added at the end from lists in step order, equal the
/// scatters of every step bit for bit (exact mode and overflow, on one tile and split, and
/// split with recurrent weights, whose gradients are still scattered); a vector of the wrong
/// length is refused.
#[test]
fn deferred_input_gradients_equal_the_scatters() {
    for (seed, window, cap) in [(7, f32::INFINITY, WIDTH), (11, 0.3, 2)] {
        let n = net(seed);
        for (splits, recurrent) in
            [(&[0, WIDTH][..], false), (&[0, 2, 5, WIDTH], false), (&[0, 2, 5, WIDTH], true)]
        {
            let own = run_layer_with(&n, splits, (recurrent, window, cap), Sources::Own);
            let def = run_layer_with(&n, splits, (recurrent, window, cap), Sources::Deferred);
            assert!(own.dw.iter().any(|&g| g != 0.0), "gradients must flow");
            assert!(
                !recurrent || own.dv.iter().any(|&g| g != 0.0),
                "recurrent gradients must flow"
            );
            assert_eq!(own.counts, def.counts);
            assert_eq!(own.dw, def.dw);
            assert_eq!(own.dv, def.dv);
            assert_eq!(own.partials, def.partials);
        }
    }
    let mut cfg = small_cfg();
    for recurrent in [false, true] {
        cfg.recurrent = recurrent;
        let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
        let mut tile =
            Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
        let mut short = vec![0.0f32; cfg.neurons - 1];
        let step = StepInput::EMPTY;
        let r = tile.backward_external_deferred(0, 0, step, false, None, None, &mut short);
        assert_eq!(r, Err(TileError::BadInput));
        let mut right = vec![0.0f32; cfg.neurons];
        let r = tile.backward_external_deferred(0, 0, step, false, None, None, &mut right);
        assert!(r.is_ok(), "recurrent {recurrent}");
    }
}

/// External buffers: [`StepInput::check`] refuses out-of-range ids, both passes refuse
/// over-long buffers (and a refused step changes nothing), and an id out of range that was not
/// checked panics (the next tests).
#[test]
fn external_buffers_are_checked() {
    let cfg = small_cfg();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    tile.weights_mut().fill(0.5);
    let ok = SpikeView::new(&[1, 11], 2).unwrap();
    let bad = [
        StepInput::feed_forward(SpikeView::new(&[13], 1).unwrap()),
        StepInput { input: ok, rec: SpikeView::new(&[9], 1).unwrap() },
        StepInput::feed_forward(SpikeView::new(&[0, 1, 2, 3, 4], 5).unwrap()),
    ];
    for step in &bad[..2] {
        assert_eq!(step.check(cfg.inputs, cfg.layer_width), Err(TileError::BadInput));
    }
    let too_long = bad[2];
    assert_eq!(tile.forward_external(0, 0, too_long, None), Err(TileError::BadInput));
    assert_eq!(tile.out_buffer(0, 0), SpikeView::EMPTY, "a refused step writes nothing");
    assert_eq!(tile.backward_external(0, 0, too_long, true, None, None), Err(TileError::BadInput));
    assert!(tile.grads().0.iter().all(|&g| g == 0.0));
    let step = StepInput::feed_forward(ok);
    assert_eq!(step.check(cfg.inputs, cfg.layer_width), Ok(()));
    assert_eq!(tile.forward_external(cfg.time_steps, 0, step, None), Err(TileError::OutOfRange));
    assert!(tile.forward_external(0, 0, step, None).is_ok());
}

#[test]
#[should_panic]
fn external_forward_panics_on_an_id_out_of_range() {
    let cfg = small_cfg();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    let step = StepInput::feed_forward(SpikeView::new(&[13], 1).unwrap());
    let _ = tile.forward_external(0, 0, step, None);
}

#[test]
#[should_panic]
fn external_backward_panics_on_an_id_out_of_range() {
    let cfg = small_cfg();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    let step = StepInput::feed_forward(SpikeView::new(&[13], 1).unwrap());
    let _ = tile.backward_external(0, 0, step, true, None, None);
}

fn small_cfg() -> TileConfig {
    TileConfig {
        neurons: 5,
        first_neuron: 2,
        layer_width: 9,
        inputs: 13,
        recurrent: true,
        batch: 3,
        time_steps: 7,
        in_capacity: 4,
        layer_capacity: 3,
        optimizer: OptimizerKind::Adam,
    }
}

#[test]
fn footprint_is_exactly_the_memory_used() {
    let cfg = small_cfg();
    let fp = cfg.footprint().unwrap();
    // Carving asserts (debug) that it consumed the arena exactly; one word less is refused.
    let mut arena = vec![0u32; fp.arena() / 4];
    assert!(Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).is_ok());
    let short = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut arena)[..fp.arena() - 4];
    assert_eq!(
        Tile::new(cfg, NeuronParams::default(), short).unwrap_err(),
        TileError::ArenaTooSmall { needed: fp.arena(), got: fp.arena() - 4 }
    );
    assert_eq!(fp.header, core::mem::size_of::<Tile>());
    // Region sizes by hand: weights 13*5 + recurrent 9*5 floats.
    assert_eq!(fp.weights, (13 * 5 + 9 * 5) * 4);
    assert_eq!(fp.optimizer, 2 * fp.weights);
    let bt = 3 * 7;
    let pad = |bytes: usize| bytes.div_ceil(4) * 4;
    assert_eq!(fp.history, bt * 3 * 4 + pad(2 * bt * 5) + pad(2 * bt * 6) + pad(2 * bt * 5));
}

#[test]
fn misaligned_arena_is_refused() {
    let cfg = small_cfg();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4 + 1];
    let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut arena)[1..];
    assert_eq!(Tile::new(cfg, NeuronParams::default(), bytes).unwrap_err(), TileError::Misaligned);
}

/// A layout validated once attaches like `Tile::attach` (same weights seen), refuses what
/// `Tile::new` refuses, and is itself refused for a configuration or parameters out of range.
#[test]
fn layout_attach_checks_the_arena_and_sees_the_same_tile() {
    let cfg = small_cfg();
    let params = NeuronParams::default();
    let layout = TileLayout::new(cfg, params).unwrap();
    assert_eq!(layout.arena_bytes(), cfg.footprint().unwrap().arena());
    let mut arena = vec![0u32; layout.arena_bytes() / 4 + 1];
    {
        let mut tile = Tile::new(cfg, params, bytemuck::cast_slice_mut(&mut arena)).unwrap();
        tile.weights_mut().iter_mut().enumerate().for_each(|(i, w)| *w = i as f32);
    }
    let bytes = bytemuck::cast_slice_mut::<u32, u8>(&mut arena);
    let via_layout = Tile::attach_layout(&layout, bytes).unwrap().weights().to_vec();
    let via_attach = Tile::attach(cfg, params, bytes).unwrap().weights().to_vec();
    assert_eq!(via_layout, via_attach);
    assert_eq!(via_layout[7], 7.0);
    let n = layout.arena_bytes();
    assert_eq!(
        Tile::attach_layout(&layout, &mut bytes[..n - 4]).unwrap_err(),
        TileError::ArenaTooSmall { needed: n, got: n - 4 }
    );
    assert_eq!(Tile::attach_layout(&layout, &mut bytes[1..]).unwrap_err(), TileError::Misaligned);
    let mut bad = params;
    bad.lif.alpha = 1.5;
    assert!(matches!(TileLayout::new(cfg, bad), Err(TileError::InvalidParams(_))));
    let huge = TileConfig { inputs: 60_000, neurons: 9, layer_width: 9, first_neuron: 0, ..cfg };
    assert!(matches!(TileLayout::new(huge, params), Err(TileError::OverBudget { .. })));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let cfg = small_cfg();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    let too_big = SpikeView::new(&[13], 1).unwrap();
    assert_eq!(tile.forward(0, 0, too_big, SpikeView::EMPTY), Err(TileError::BadInput));
    assert_eq!(tile.in_buffer(0, 0), SpikeView::EMPTY, "a refused step records nothing");
    let bad_rec = SpikeView::new(&[9], 1).unwrap();
    let ok_input = SpikeView::new(&[1], 1).unwrap();
    assert_eq!(tile.forward(0, 0, ok_input, bad_rec), Err(TileError::BadInput));
    assert_eq!(tile.in_buffer(0, 0), SpikeView::EMPTY);
    assert_eq!(tile.rec_buffer(0, 0), SpikeView::EMPTY);
    let too_many = SpikeView::new(&[0, 1, 2, 3, 4], 5).unwrap();
    assert_eq!(tile.forward(0, 0, too_many, SpikeView::EMPTY), Err(TileError::BadInput));
    assert_eq!(tile.forward(7, 0, SpikeView::EMPTY, SpikeView::EMPTY), Err(TileError::OutOfRange));
    assert_eq!(tile.backward(0, 3), Err(TileError::OutOfRange));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Every tile that builds fits the budget, and every configuration over budget is refused.
    #[test]
    fn footprint_never_exceeds_budget_for_tiles_that_build(
        neurons in 1usize..300,
        inputs in 1usize..5000,
        extra_width in 0usize..2000,
        recurrent: bool,
        batch in 1usize..64,
        time_steps in 1usize..200,
        in_frac in 0.0f64..1.0,
        layer_frac in 0.0f64..1.0,
        adam: bool,
    ) {
        let layer_width = neurons + extra_width;
        let cfg = TileConfig {
            neurons, first_neuron: extra_width, layer_width, inputs, recurrent, batch, time_steps,
            in_capacity: ((inputs as f64 * in_frac).ceil() as usize).max(1),
            layer_capacity: ((layer_width as f64 * layer_frac).ceil() as usize).max(1),
            optimizer: if adam { OptimizerKind::Adam } else { OptimizerKind::Sgd },
        };
        let fp = cfg.footprint().unwrap();
        // Offer a full tile's worth of memory (or more): only the budget may refuse.
        let words = fp.arena().max(TILE_SRAM_BYTES) / 4 + 1;
        let mut arena = vec![0u32; words];
        match Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)) {
            Ok(_) => prop_assert!(fp.total() <= TILE_SRAM_BYTES),
            Err(e) => {
                prop_assert!(fp.total() > TILE_SRAM_BYTES);
                prop_assert_eq!(e, TileError::OverBudget { needed: fp.total(), available: TILE_SRAM_BYTES });
            }
        }
    }
}

#[test]
fn shared_weights_give_the_same_result_and_wrong_shapes_are_refused() {
    let cfg = small_cfg();
    let (mut a1, mut a2) = (
        vec![0u32; cfg.footprint().unwrap().arena() / 4],
        vec![0u32; cfg.footprint().unwrap().arena() / 4],
    );
    let mut own =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut a1)).unwrap();
    let mut other =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut a2)).unwrap();
    let mut r = Lcg(5);
    let w: Vec<f32> = (0..own.weights().len()).map(|_| r.next() * 40.0 - 10.0).collect();
    let v: Vec<f32> = (0..own.recurrent().len()).map(|_| r.next() * 10.0 - 5.0).collect();
    own.weights_mut().copy_from_slice(&w);
    own.recurrent_mut().copy_from_slice(&v);
    let input = SpikeView::new(&[0, 3, 7, 12], 4).unwrap();
    let rec = SpikeView::new(&[1, 4], 2).unwrap();
    for t in 0..3 {
        let a = own.forward(t, 1, input, rec).unwrap();
        let shared = SharedWeights { w: &w, v: &v };
        let b = other.forward_shared(t, 1, input, rec, Some(shared)).unwrap();
        assert_eq!(a, b);
        own.commit_all(t, 1).unwrap();
        other.commit_all(t, 1).unwrap();
        assert_eq!(own.out_buffer(t, 1), other.out_buffer(t, 1));
    }
    let short = SharedWeights { w: &w[1..], v: &v };
    assert_eq!(other.forward_shared(3, 1, input, rec, Some(short)), Err(TileError::BadInput));
}

/// The prefetch hints accept every step, in range or not, and change nothing.
#[test]
fn prefetch_hints_ignore_out_of_range_steps() {
    let cfg = small_cfg();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    for t in [0, cfg.time_steps - 1, cfg.time_steps, usize::MAX] {
        tile.prefetch_out_buffers(t);
        tile.prefetch_forward(t);
        tile.prefetch_backward(t, 0);
        tile.prefetch_backward(t, cfg.batch);
        tile.prefetch_backward_external(t, 0);
        tile.prefetch_backward_external(t, cfg.batch);
    }
    assert_eq!(tile.out_buffer(0, 0).n_grad(), 0);
}

/// The buffers read through the layout alone are the attached tile's, every step and sample;
/// the arena is checked as `attach_layout` checks it.
#[test]
fn out_buffers_without_attaching_equal_the_tiles() {
    let cfg = small_cfg();
    let params = NeuronParams::default();
    let layout = TileLayout::new(cfg, params).unwrap();
    let mut arena = vec![0u32; layout.arena_bytes() / 4 + 1];
    let mut r = Lcg(11);
    let mut want = Vec::new();
    {
        let mut tile = Tile::new(cfg, params, bytemuck::cast_slice_mut(&mut arena)).unwrap();
        tile.weights_mut().iter_mut().for_each(|w| *w = r.next() * 30.0 - 5.0);
        tile.recurrent_mut().iter_mut().for_each(|w| *w = r.next() * 10.0 - 5.0);
        for t in 0..cfg.time_steps {
            for b in 0..cfg.batch {
                let ids: Vec<u16> = (0..cfg.inputs as u16).filter(|_| r.next() < 0.3).collect();
                let input = SpikeView::new(&ids[..ids.len().min(cfg.in_capacity)], 0).unwrap();
                let input = SpikeView { n_spikes: input.ids.len(), ..input };
                let rec = if t == 0 { SpikeView::EMPTY } else { tile.out_buffer(t - 1, b) };
                let rec_ids: Vec<u16> = rec.ids.iter().map(|&i| i + 2).collect();
                let rec = SpikeView::new(&rec_ids, rec.n_spikes).unwrap();
                tile.forward(t, b, input, rec).unwrap();
                tile.commit_all(t, b).unwrap();
            }
        }
        for t in 0..cfg.time_steps {
            for b in 0..cfg.batch {
                let v = tile.out_buffer(t, b);
                want.push((v.ids.to_vec(), v.n_spikes));
            }
        }
    }
    assert!(want.iter().any(|(ids, n)| *n > 0 && ids.len() > *n), "spikes and near ids both seen");
    let bytes = bytemuck::cast_slice::<u32, u8>(&arena);
    let out = layout.out_buffers(bytes).unwrap();
    for t in 0..cfg.time_steps {
        out.prefetch_steps(t..t + 1);
        for b in 0..cfg.batch {
            let (ids, n) = &want[t * cfg.batch + b];
            assert_eq!(out.get(t, b), SpikeView::new(ids, *n).unwrap(), "step {t}, sample {b}");
        }
    }
    // Out-of-range or empty steps are ignored.
    out.prefetch_steps(0..cfg.time_steps + 5);
    out.prefetch_steps(cfg.time_steps..usize::MAX);
    out.prefetch_steps(3..3);
    let n = layout.arena_bytes();
    assert_eq!(
        layout.out_buffers(&bytes[..n - 4]).unwrap_err(),
        TileError::ArenaTooSmall { needed: n, got: n - 4 }
    );
    assert_eq!(layout.out_buffers(&bytes[1..]).unwrap_err(), TileError::Misaligned);
}

#[test]
#[should_panic(expected = "sample 3 of a tile of 3")]
fn out_buffers_panic_on_a_sample_out_of_range() {
    let cfg = small_cfg();
    let layout = TileLayout::new(cfg, NeuronParams::default()).unwrap();
    let mut arena = vec![0u32; layout.arena_bytes() / 4];
    Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    let _ = layout.out_buffers(bytemuck::cast_slice(&arena)).unwrap().get(0, cfg.batch);
}
