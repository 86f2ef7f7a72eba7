//! Runs against the tile's steps one by one: every build the CPU runs, every width the lean
//! AVX-512F loop takes and some it does not, buffers cut by the capacity, partial micro-batches
//! and runs split in two, bit for bit over the whole arena.

use crate::*;

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

const INPUTS: usize = 40;
const T: usize = 14;
const BATCH: usize = 3;

fn cfg(neurons: usize, layer_capacity: usize) -> TileConfig {
    TileConfig {
        neurons,
        first_neuron: 0,
        layer_width: neurons,
        inputs: INPUTS,
        recurrent: false,
        batch: BATCH,
        time_steps: T,
        in_capacity: INPUTS,
        layer_capacity,
        optimizer: OptimizerKind::Adam,
    }
}

/// A tile's arena with random weights (most inputs excite, some inhibit, so that neurons spike
/// and sit near the threshold at every step).
fn arena(cfg: &TileConfig, params: NeuronParams, seed: u64) -> Vec<u32> {
    let mut a = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut r = Lcg(seed);
    Tile::new(*cfg, params, bytemuck::cast_slice_mut(&mut a))
        .unwrap()
        .weights_mut()
        .iter_mut()
        .for_each(|w| *w = r.next() * 3.0 - 0.8);
    a
}

/// [`arena`], its histories of spikes and membranes filled with a pattern no step writes, so
/// that a run writing a word the steps leave alone (past a buffer's ids, or past the last
/// buffer) changes the arena.
fn marked_arena(cfg: &TileConfig, params: NeuronParams, seed: u64) -> Vec<u32> {
    let mut a = arena(cfg, params, seed);
    let tile = Tile::attach(*cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
    tile.out_hist.fill(0xA5A5);
    tile.u_hist.fill(f32::from_bits(0x7FC0_A5A5));
    a
}

/// Input ids per `[t][b]`: ascending, each input with probability `p`.
fn inputs(seed: u64, p: f32) -> Vec<Vec<Vec<u16>>> {
    let mut r = Lcg(seed);
    (0..T)
        .map(|_| {
            (0..BATCH).map(|_| (0..INPUTS as u16).filter(|_| r.next() < p).collect()).collect()
        })
        .collect()
}

fn view(ids: &[u16]) -> SpikeView<'_> {
    SpikeView::new(ids, ids.len()).unwrap()
}

/// The reference: [`Tile::forward_external`] step after step, sample after sample; what each
/// step found.
fn step_by_step(tile: &mut Tile<'_>, input: &[Vec<Vec<u16>>], samples: usize) -> Vec<[u32; 2]> {
    (0..T)
        .map(|t| {
            let mut found = [0u32; 2];
            for (b, ids) in input[t].iter().enumerate().take(samples) {
                let r = tile.forward_external(t, b, StepInput::feed_forward(view(ids)), None);
                let r = r.unwrap();
                found[0] += r.raw_spikes as u32;
                found[1] += r.raw_near as u32;
            }
            found
        })
        .collect()
}

type Run = fn(&mut Tile<'_>, &[Vec<Vec<u16>>], usize, usize) -> Vec<[u32; 2]>;

/// Runs steps `0..split` and `split..T` of `samples` samples with one build of the run.
macro_rules! build {
    ($name:literal, |$tile:ident, $steps:ident, $samples:ident, $input:ident, $found:ident| $call:expr) => {
        (
            $name,
            (|$tile: &mut Tile<'_>, inp: &[Vec<Vec<u16>>], samples: usize, split: usize| {
                let mut found = vec![[0u32; 2]; T];
                for $steps in [0..split, split..T] {
                    let at = $steps.start;
                    let $input = |t: usize, b: usize| view(&inp[t][b]);
                    let $samples = samples;
                    let $found = &mut found[at..];
                    #[allow(unused_unsafe, unsafe_code)]
                    let r = unsafe { $call };
                    r.unwrap();
                }
                found
            }) as Run,
        )
    };
}

/// Every build of the run this CPU executes (the public one dispatches to one of them).
fn builds(neurons: usize) -> Vec<(&'static str, Run)> {
    let mut v = vec![
        build!("dispatched", |tile, steps, samples, input, found| tile
            .forward_external_run(steps, samples, input, None, found)),
        build!("portable", |tile, steps, samples, input, found| tile
            .run_body::<false, _>(steps, samples, input, None, found)),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::avx2() {
            v.push(build!("avx2", |tile, steps, samples, input, found| tile
                .run_avx2(steps, samples, input, None, found)));
        }
        if crate::simd::avx512() {
            v.push(build!("avx512", |tile, steps, samples, input, found| tile
                .run_avx512(steps, samples, input, None, found)));
            macro_rules! lanes {
                ($name:literal, $n:literal, $r:literal, $full:literal) => {
                    v.push(build!($name, |tile, steps, samples, input, found| tile
                        .run_lanes::<$n, $r, $full, _>(steps, samples, input, None, found)))
                };
            }
            match neurons {
                16 => lanes!("lanes 16", 16, 1, true),
                32 => lanes!("lanes 32", 32, 2, true),
                48 => lanes!("lanes 48", 48, 3, true),
                64 => lanes!("lanes 64", 64, 4, true),
                1..16 => lanes!("lanes 16, masked", 16, 1, false),
                17..32 => lanes!("lanes 32, masked", 32, 2, false),
                33..48 => lanes!("lanes 48, masked", 48, 3, false),
                49..64 => lanes!("lanes 64, masked", 64, 4, false),
                _ => {}
            }
        }
    }
    v
}

/// Every build, widths 16, 32, 48 and 64 (the lean loop), 7, 20, 40 and 63 (the lean loop with
/// its last register masked) and 70 (the generic one), with buffers cut by the capacity or not,
/// a window or exact mode (which takes the masked lanes past the neurons too, unless they are
/// masked off), all or some samples, in one run or two: the same arena bit for bit, and the
/// same counts, as the steps one by one.
#[test]
fn runs_equal_the_steps_one_by_one() {
    let (mut lean_runs, mut masked_runs) = (0, 0);
    for (neurons, capacity) in [(16, 16), (16, 3), (32, 32), (32, 5), (64, 64), (64, 9)]
        .into_iter()
        .chain([(48, 6), (7, 7), (20, 4), (20, 20), (40, 40), (63, 8), (70, 9)])
    {
        let cfg = cfg(neurons, capacity);
        for (seed, window) in [(1, 0.3), (2, f32::INFINITY)] {
            let params = NeuronParams { window, ..NeuronParams::default() };
            let start = marked_arena(&cfg, params, seed);
            let input = inputs(seed + 10, 0.25);
            for samples in [BATCH, 2] {
                let mut want = start.clone();
                let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut want));
                let found = step_by_step(tile.as_mut().unwrap(), &input, samples);
                let stats = tile.unwrap().stats();
                assert!(stats.spikes_raw > 0 && stats.near_raw > 0, "neurons must spike");
                for (name, run) in builds(neurons) {
                    lean_runs += usize::from(name.starts_with("lanes"));
                    masked_runs += usize::from(name.ends_with("masked"));
                    for split in [T, 5] {
                        let what = format!(
                            "{name}, {neurons} neurons, cap {capacity}, window {window}, \
                             {samples} samples, split {split}"
                        );
                        let mut got = start.clone();
                        {
                            let arena = bytemuck::cast_slice_mut(&mut got);
                            let mut tile = Tile::attach(cfg, params, arena).unwrap();
                            assert_eq!(run(&mut tile, &input, samples, split), found, "{what}");
                            assert_eq!(tile.stats(), stats, "{what}");
                        }
                        assert!(got == want, "arena differs: {what}");
                    }
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    assert!(!crate::simd::avx512() || (lean_runs > 0 && masked_runs > 0));
}

/// Runs a tile cannot take are refused before anything runs; a buffer over the input capacity
/// is refused at its step, after the steps before it.
#[test]
fn runs_are_checked() {
    let mut cfg = cfg(32, 32);
    let params = NeuronParams::default();
    let ids: Vec<u16> = (0..INPUTS as u16).collect();
    let mut found = [[0u32; 2]; T];
    for (recurrent, steps, samples, found_len) in [
        (true, 0..T, BATCH, T),
        (false, 0..T + 1, BATCH, T + 1),
        (false, 0..T, BATCH + 1, T),
        (false, 0..T, BATCH, T - 1),
    ] {
        cfg.recurrent = recurrent;
        let mut a = arena(&cfg, params, 3);
        let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
        let mut longer = [[0u32; 2]; T + 1];
        let found = &mut longer[..found_len];
        let r = tile.forward_external_run(steps, samples, |_, _| view(&ids), None, found);
        assert_eq!(r, Err(TileError::BadInput));
        assert_eq!(tile.out_buffer(0, 0), SpikeView::EMPTY, "nothing ran");
    }
    cfg.recurrent = false;
    cfg.in_capacity = 4;
    let mut a = arena(&cfg, params, 3);
    let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
    tile.weights_mut().fill(30.0);
    let input = |t: usize, _| view(if t < 2 { &ids[..4] } else { &ids[..5] });
    let r = tile.forward_external_run(0..T, BATCH, input, None, &mut found);
    assert_eq!(r, Err(TileError::BadInput));
    assert!(tile.out_buffer(1, BATCH - 1).n_spikes > 0, "steps 0 and 1 ran");
    assert_eq!(tile.out_buffer(2, 0), SpikeView::EMPTY, "step 2 did not");
    let wrong = SharedWeights { w: &[0.0; 3], v: &[] };
    let r = tile.forward_external_run(0..T, BATCH, |_, _| view(&ids[..1]), Some(wrong), &mut found);
    assert_eq!(r, Err(TileError::BadInput));
}

/// An input id beyond the tile's inputs panics (as in [`Tile::forward_external`]).
#[test]
#[should_panic]
fn runs_panic_on_an_id_out_of_range() {
    let cfg = cfg(32, 32);
    let params = NeuronParams::default();
    let mut a = arena(&cfg, params, 3);
    let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
    let ids = [INPUTS as u16];
    let mut found = [[0u32; 2]; T];
    let _ = tile.forward_external_run(0..T, BATCH, |_, _| view(&ids), None, &mut found);
}

/// `dL/dS` of entry `k` of the buffer of step `t`, sample `b`: small numbers of both signs.
fn dlds_of(t: usize, b: usize, k: usize) -> f32 {
    ((t * 7 + b * 13 + k * 3) % 11) as f32 * 0.1 - 0.5
}

/// The reference of the backward runs: [`Tile::backward_external_deferred`] from the last step
/// down, sample after sample, `dL/dS` from [`dlds_of`]; step `t`'s vector of sample `b` at
/// `(T - 1 - t) * stride + b * n`.
fn back_step_by_step(tile: &mut Tile<'_>, samples: usize, vecs: &mut [f32], stride: usize) {
    let n = tile.config().neurons;
    for t in (0..T).rev() {
        for b in 0..samples {
            let ng = tile.out_buffer(t, b).ids.len();
            for (k, d) in tile.dlds_mut(b)[..ng].iter_mut().enumerate() {
                *d = dlds_of(t, b, k);
            }
            let v = &mut vecs[(T - 1 - t) * stride + b * n..][..n];
            tile.backward_external_deferred(t, b, StepInput::EMPTY, false, None, None, v).unwrap();
        }
    }
}

type BackRun = fn(&mut Tile<'_>, usize, &mut [f32], usize, usize);

/// Runs steps `split..T`, then `0..split` (each with its own stretch of the vectors), with one
/// build of the backward run.
macro_rules! back_build {
    ($name:literal, |$tile:ident, $steps:ident, $samples:ident, $dlds:ident, $vecs:ident, $stride:ident| $call:expr) => {
        (
            $name,
            (|$tile: &mut Tile<'_>,
              samples: usize,
              all: &mut [f32],
              stride: usize,
              split: usize| {
                for $steps in [split..T, 0..split] {
                    let calls = core::cell::Cell::new(0);
                    let expected = $steps.len() * samples;
                    let $dlds = |t: usize, b: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
                        assert_eq!(dst.len(), buf.ids.len());
                        calls.set(calls.get() + 1);
                        for (k, d) in dst.iter_mut().enumerate() {
                            *d = dlds_of(t, b, k);
                        }
                    };
                    let $vecs = &mut all[(T - $steps.end) * stride..];
                    let ($samples, $stride) = (samples, stride);
                    #[allow(unused_unsafe, unsafe_code)]
                    unsafe {
                        $call
                    };
                    assert_eq!(calls.get(), expected, "dL/dS asked for every sample and step");
                }
            }) as BackRun,
        )
    };
}

/// Every build of the backward run this CPU executes.
fn back_builds(neurons: usize) -> Vec<(&'static str, BackRun)> {
    let mut v = vec![
        back_build!("dispatched", |tile, steps, samples, dlds, vecs, stride| tile
            .backward_deferred_run(steps, samples, dlds, vecs, stride)
            .unwrap()),
        back_build!("portable", |tile, steps, samples, dlds, vecs, stride| tile
            .back_body(steps, samples, dlds, vecs, stride)),
    ];
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512() {
        match neurons {
            16 => v
                .push(back_build!("lanes 16", |tile, steps, samples, dlds, vecs, stride| tile
                    .back_lanes::<16, 1, _>(steps, samples, dlds, vecs, stride))),
            32 => v
                .push(back_build!("lanes 32", |tile, steps, samples, dlds, vecs, stride| tile
                    .back_lanes::<32, 2, _>(steps, samples, dlds, vecs, stride))),
            64 => v
                .push(back_build!("lanes 64", |tile, steps, samples, dlds, vecs, stride| tile
                    .back_lanes::<64, 4, _>(steps, samples, dlds, vecs, stride))),
            _ => {}
        }
    }
    v
}

/// Every build of the backward run, after a forward pass, equals the steps one by one: the
/// whole arena and every vector (and the gaps between samples' vectors untouched), widths 16,
/// 32 and 64 (the lean loop) and 7 and 20, buffers cut or not, a window or exact mode, all or
/// some samples, in one run or two, twice over (the adjoints start from zero at the last step).
#[test]
fn backward_runs_equal_the_steps_one_by_one() {
    let mut lean_runs = 0;
    for (neurons, capacity) in [(16, 3), (32, 32), (32, 5), (64, 9), (7, 7), (20, 4)] {
        let cfg = cfg(neurons, capacity);
        for (seed, window) in [(4, 0.3), (5, f32::INFINITY)] {
            let params = NeuronParams { window, ..NeuronParams::default() };
            let mut start = arena(&cfg, params, seed);
            let input = inputs(seed + 10, 0.25);
            let spikes = {
                let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut start));
                step_by_step(tile.as_mut().unwrap(), &input, BATCH);
                tile.unwrap().stats().spikes_raw
            };
            assert!(spikes > 0, "neurons must spike");
            for samples in [BATCH, 2] {
                let stride = (samples + 1) * neurons;
                let mut want = start.clone();
                let mut want_vecs = vec![7.0f32; T * stride];
                {
                    let mut tile =
                        Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut want)).unwrap();
                    // Twice: the second pass starts from the adjoints the first left.
                    back_step_by_step(&mut tile, samples, &mut want_vecs, stride);
                    back_step_by_step(&mut tile, samples, &mut want_vecs, stride);
                }
                assert!(want_vecs.iter().any(|&x| x != 0.0 && x != 7.0), "gradients must flow");
                for (name, run) in back_builds(neurons) {
                    lean_runs += usize::from(name.starts_with("lanes"));
                    for split in [0, 6] {
                        let what = format!(
                            "{name}, {neurons} neurons, cap {capacity}, window {window}, \
                             {samples} samples, split {split}"
                        );
                        let mut got = start.clone();
                        let mut vecs = vec![7.0f32; T * stride];
                        {
                            let arena = bytemuck::cast_slice_mut(&mut got);
                            let mut tile = Tile::attach(cfg, params, arena).unwrap();
                            run(&mut tile, samples, &mut vecs, stride, split);
                            run(&mut tile, samples, &mut vecs, stride, split);
                        }
                        assert!(vecs == want_vecs, "vectors differ: {what}");
                        assert!(got == want, "arena differs: {what}");
                    }
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    assert!(!crate::simd::avx512() || lean_runs > 0);
}

/// Backward runs a tile cannot take are refused before anything runs.
#[test]
fn backward_runs_are_checked() {
    let mut cfg = cfg(32, 32);
    let params = NeuronParams::default();
    let n = cfg.neurons;
    for (recurrent, steps, samples, stride, len) in [
        (true, 0..T, BATCH, BATCH * n, T * BATCH * n),
        (false, 0..T + 1, BATCH, BATCH * n, (T + 1) * BATCH * n),
        (false, 0..T, BATCH + 1, (BATCH + 1) * n, T * (BATCH + 1) * n),
        (false, 0..T, BATCH, BATCH * n - 1, T * BATCH * n),
        (false, 0..T, BATCH, BATCH * n, T * BATCH * n - 1),
    ] {
        cfg.recurrent = recurrent;
        let mut a = arena(&cfg, params, 3);
        let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
        let mut vecs = vec![7.0f32; len];
        let r = tile.backward_deferred_run(steps, samples, |_, _, _, _| {}, &mut vecs, stride);
        assert_eq!(r, Err(TileError::BadInput));
        assert!(vecs.iter().all(|&x| x == 7.0), "nothing ran");
    }
}

/// One backward pass (from the last step down) of `samples` samples with `dL/dS` from
/// [`dlds_of`] and each step's input from `input`: step by step and sample by sample through
/// [`Tile::backward_external`] (`per_sample`), or a step at a time through
/// [`Tile::backward_external_samples`]. The partials of every step and sample, in order.
fn back_samples(
    tile: &mut Tile<'_>,
    input: &[Vec<Vec<u16>>],
    samples: usize,
    grads: &mut [f32],
    per_sample: bool,
) -> Vec<Vec<f32>> {
    let mut partials = Vec::new();
    for t in (0..T).rev() {
        let shared = SharedGrads { dw: &mut *grads, dv: &mut [] };
        if per_sample {
            let mut shared = shared;
            for (b, ids) in input[t].iter().enumerate().take(samples) {
                let ng = tile.out_buffer(t, b).ids.len();
                for (k, d) in tile.dlds_mut(b)[..ng].iter_mut().enumerate() {
                    *d = dlds_of(t, b, k);
                }
                let step = StepInput::feed_forward(view(ids));
                let g = Some(shared.reborrow());
                tile.backward_external(t, b, step, true, None, g).unwrap();
                partials.push(tile.src_partials(b)[..ids.len()].to_vec());
            }
            continue;
        }
        let dlds = |b: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
            assert_eq!(dst.len(), buf.ids.len());
            for (k, d) in dst.iter_mut().enumerate() {
                *d = dlds_of(t, b, k);
            }
        };
        let mut next = 0;
        let got = |b: usize, p: &[f32]| {
            assert_eq!((b, p.len()), (next, input[t][b].len()), "every sample, in order");
            next += 1;
            partials.push(p.to_vec());
        };
        let step = |b: usize| view(&input[t][b]);
        tile.backward_external_samples(t, samples, dlds, step, got, true, None, Some(shared))
            .unwrap();
    }
    partials
}

/// [`Tile::backward_external_samples`] equals [`Tile::backward_external`] sample after sample:
/// the whole arena, the shared gradients and every partial, bit for bit, twice over (the
/// adjoints carry from the first pass into the second), at widths of one register (7, 16) and
/// two (20, 32; AVX-512F's lean loop, whose whole-tile gradient sets in exact mode take the
/// permuted surrogate terms), and 40 (the step one by one), buffers cut or not, with a window
/// or in exact mode, all or some samples.
#[test]
fn backward_samples_equal_the_steps_one_by_one() {
    let mut whole_sets = 0;
    for (neurons, capacity) in [(7, 7), (16, 16), (16, 3), (20, 20), (20, 4), (32, 32), (32, 5)]
        .into_iter()
        .chain([(40, 40)])
    {
        let cfg = cfg(neurons, capacity);
        for (seed, window) in [(6, 0.3), (7, f32::INFINITY)] {
            let params = NeuronParams { window, ..NeuronParams::default() };
            let mut start = arena(&cfg, params, seed);
            let input = inputs(seed + 10, 0.25);
            {
                let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut start));
                let tile = tile.as_mut().unwrap();
                step_by_step(tile, &input, BATCH);
                let sets = (0..T).flat_map(|t| (0..BATCH).map(move |b| (t, b)));
                whole_sets +=
                    sets.filter(|&(t, b)| tile.out_buffer(t, b).ids.len() == neurons).count();
                assert!(tile.stats().spikes_raw > 0, "neurons must spike");
            }
            for samples in [BATCH, 2] {
                let what = format!(
                    "{neurons} neurons, cap {capacity}, window {window}, {samples} samples"
                );
                let mut results = Vec::new();
                for per_sample in [true, false] {
                    let mut arena = start.clone();
                    let mut grads = vec![0.5f32; cfg.inputs * neurons];
                    let mut tile =
                        Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut arena)).unwrap();
                    let mut p = back_samples(&mut tile, &input, samples, &mut grads, per_sample);
                    p.extend(back_samples(&mut tile, &input, samples, &mut grads, per_sample));
                    assert!(grads.iter().any(|&g| g != 0.5), "gradients must flow: {what}");
                    results.push((arena, grads, p));
                }
                let bits = |p: &[Vec<f32>]| -> Vec<Vec<u32>> {
                    p.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
                };
                let (want, got) = (&results[0], &results[1]);
                assert!(got.0 == want.0, "arena differs: {what}");
                assert!(
                    got.1.iter().zip(&want.1).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "gradients differ: {what}"
                );
                assert_eq!(bits(&got.2), bits(&want.2), "partials differ: {what}");
            }
        }
    }
    assert!(whole_sets > 0, "some gradient sets must be the whole tile");
}

/// Backward steps of every sample a tile cannot take are refused before anything runs; a
/// source buffer over its capacity is refused at its sample, after the samples before it.
#[test]
fn backward_samples_are_checked() {
    let mut cfg = cfg(20, 20);
    let params = NeuronParams::default();
    let ids: Vec<u16> = (0..INPUTS as u16).collect();
    let nothing = |_: usize, _: SpikeView<'_>, _: &mut [f32]| {};
    for (recurrent, t, samples, shared_len, want) in [
        (true, 0, BATCH, None, TileError::BadInput),
        (false, T, BATCH, None, TileError::OutOfRange),
        (false, 0, BATCH + 1, None, TileError::BadInput),
        (false, 0, BATCH, Some(3), TileError::BadInput),
    ] {
        cfg.recurrent = recurrent;
        let mut a = arena(&cfg, params, 3);
        let start = a.clone();
        let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
        let w = vec![0.0f32; shared_len.unwrap_or(0)];
        let shared = shared_len.map(|_| SharedWeights { w: &w, v: &[] });
        let mut calls = 0;
        let r = tile.backward_external_samples(
            t,
            samples,
            nothing,
            |_| view(&ids[..1]),
            |_, _| calls += 1,
            true,
            shared,
            None,
        );
        assert_eq!(r, Err(want));
        assert!(calls == 0 && a == start, "nothing ran");
    }
    cfg.recurrent = false;
    cfg.in_capacity = 4;
    let mut a = arena(&cfg, params, 3);
    let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
    let mut calls = vec![];
    let step = |b: usize| view(if b == 0 { &ids[..4] } else { &ids[..5] });
    let r = tile.backward_external_samples(
        0,
        BATCH,
        nothing,
        step,
        |b, _| calls.push(b),
        true,
        None,
        None,
    );
    assert_eq!(r, Err(TileError::BadInput));
    assert_eq!(calls, [0], "sample 0 ran, sample 1 did not");
}

/// The `dL/dS` entries of every buffer of a tile's history where a driver's partials would hold
/// them for [`Tile::backward_deferred_run_at`]: per step and sample a row of 64 spikes' entries,
/// then 64 near-threshold ids', each [`dlds_of`] its place in the buffer; `NaN` where no entry
/// is (a run that read one would differ).
fn pointed_entries(tile: &Tile<'_>) -> Vec<f32> {
    let mut entries = vec![f32::NAN; T * BATCH * 128];
    for t in 0..T {
        for b in 0..BATCH {
            let buf = tile.out_buffer(t, b);
            let row = &mut entries[(t * BATCH + b) * 128..][..128];
            for k in 0..buf.ids.len() {
                let at = if k < buf.n_spikes { k } else { 64 + k - buf.n_spikes };
                row[at] = dlds_of(t, b, k);
            }
        }
    }
    entries
}

/// Zeroes the tile's `dL/dS` in-buffers and scratch: what the backward runs that read their
/// entries where they are pointed leave alone.
fn clear_scratch(arena: &mut [u32], cfg: &TileConfig, params: NeuronParams) {
    let tile = Tile::attach(*cfg, params, bytemuck::cast_slice_mut(arena)).unwrap();
    tile.dlds.fill(0.0);
    tile.cur.fill(0.0);
}

/// Backward runs that read `dL/dS` where the driver points ([`Tile::backward_deferred_run_at`])
/// equal the steps one by one: every vector and the whole arena but the `dL/dS` in-buffers and
/// the scratch, at widths 16 and 32 (the lean loop: masks from the slots, or from the ids where
/// these leave no room) and 7, 20 and 64 (the run given copies), buffers cut or not, a window
/// or exact mode, all or some samples, in one run or two, twice over.
#[test]
fn backward_runs_pointed_at_equal_the_steps_one_by_one() {
    let mut lean_runs = 0;
    for (neurons, capacity) in [(16, 3), (16, 16), (32, 32), (32, 5), (32, 24), (64, 9), (7, 7)]
        .into_iter()
        .chain([(20, 4)])
    {
        let cfg = cfg(neurons, capacity);
        for (seed, window) in [(4, 0.3), (5, f32::INFINITY)] {
            let params = NeuronParams { window, ..NeuronParams::default() };
            let mut start = marked_arena(&cfg, params, seed);
            let input = inputs(seed + 10, 0.25);
            let entries = {
                let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut start));
                let tile = tile.as_mut().unwrap();
                step_by_step(tile, &input, BATCH);
                pointed_entries(tile)
            };
            let at = |t: usize, b: usize, _: SpikeView<'_>| {
                let row = &entries[(t * BATCH + b) * 128..][..128];
                Some(DldsAt { spikes: &row[..64], near: &row[64..] })
            };
            for samples in [BATCH, 2] {
                let stride = (samples + 1) * neurons;
                let mut want = start.clone();
                let mut want_vecs = vec![7.0f32; T * stride];
                {
                    let mut tile =
                        Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut want)).unwrap();
                    back_step_by_step(&mut tile, samples, &mut want_vecs, stride);
                    back_step_by_step(&mut tile, samples, &mut want_vecs, stride);
                }
                clear_scratch(&mut want, &cfg, params);
                lean_runs +=
                    usize::from(crate::simd::avx512() && neurons <= 32 && neurons % 16 == 0);
                for split in [0, 6] {
                    let what = format!(
                        "{neurons} neurons, cap {capacity}, window {window}, {samples} samples, \
                         split {split}"
                    );
                    let mut got = start.clone();
                    let mut vecs = vec![7.0f32; T * stride];
                    {
                        let arena = bytemuck::cast_slice_mut(&mut got);
                        let mut tile = Tile::attach(cfg, params, arena).unwrap();
                        for _ in 0..2 {
                            for steps in [split..T, 0..split] {
                                let v = &mut vecs[(T - steps.end) * stride..];
                                tile.backward_deferred_run_at(steps, samples, at, v, stride)
                                    .unwrap();
                            }
                        }
                    }
                    clear_scratch(&mut got, &cfg, params);
                    assert!(vecs == want_vecs, "vectors differ: {what}");
                    assert!(got == want, "arena differs: {what}");
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    assert!(!crate::simd::avx512() || lean_runs > 0);
}

/// Entries named `None` are zeros (a driver's last step); entries fewer than a buffer's are
/// refused.
#[test]
fn backward_runs_pointed_at_take_none_and_refuse_short_entries() {
    for neurons in [32, 7] {
        let cfg = cfg(neurons, neurons);
        let params = NeuronParams::default();
        let mut start = arena(&cfg, params, 8);
        let input = inputs(18, 0.25);
        let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut start)).unwrap();
        step_by_step(&mut tile, &input, BATCH);
        let stride = BATCH * neurons;
        let mut want = vec![7.0f32; T * stride];
        let zeros = |_: usize, _: usize, _: SpikeView<'_>, d: &mut [f32]| d.fill(0.0);
        tile.backward_deferred_run(0..T, BATCH, zeros, &mut want, stride).unwrap();
        let mut got = vec![7.0f32; T * stride];
        let none = |_: usize, _: usize, _: SpikeView<'_>| None;
        tile.backward_deferred_run_at(0..T, BATCH, none, &mut got, stride).unwrap();
        assert!(got == want, "{neurons} neurons: None is zeros");
        // The step with the most entries gets one fewer than it has.
        let (mut most, mut at) = (0, (0, 0));
        for t in 0..T {
            for b in 0..BATCH {
                let buf = tile.out_buffer(t, b);
                if buf.n_spikes > most {
                    (most, at) = (buf.n_spikes, (t, b));
                }
            }
        }
        assert!(most > 0, "neurons must spike");
        let ones = [1.0f32; 64];
        let short = |t: usize, b: usize, buf: SpikeView<'_>| {
            let n = if (t, b) == at { buf.n_spikes - 1 } else { 64 };
            Some(DldsAt { spikes: &ones[..n], near: &ones })
        };
        let mut vecs = vec![7.0f32; T * stride];
        let r = tile.backward_deferred_run_at(0..T, BATCH, short, &mut vecs, stride);
        assert_eq!(r, Err(TileError::BadInput), "{neurons} neurons");
    }
}

/// Every slot with room for them holds its buffer's masks, after the steps, the runs and a
/// merge's cuts ([`Tile::commit`]); the masks read back are the ids' either way.
#[test]
fn slots_keep_their_masks_through_runs_and_cuts() {
    use crate::tile::{get_masks, slot_masks};
    for (neurons, capacity) in [(16, 16), (32, 26), (32, 5), (20, 20), (7, 7)] {
        let cfg = cfg(neurons, capacity);
        let params = NeuronParams { window: 0.3, ..NeuronParams::default() };
        let input = inputs(21, 0.25);
        for (name, run) in builds(neurons) {
            let mut a = marked_arena(&cfg, params, 9);
            let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut a)).unwrap();
            run(&mut tile, &input, BATCH, 5);
            let (mut with_room, mut cut) = (0, 0);
            for t in 0..T {
                for b in 0..BATCH {
                    let buf = tile.out_buffer(t, b);
                    let (ns, nn) = (buf.n_spikes, buf.near().len());
                    if (t + b) % 2 == 1 && ns + nn > 0 {
                        tile.commit(t, b, ns / 2, nn / 2).unwrap();
                        cut += 1;
                    }
                    let kt = cfg.own_capacity();
                    let slot = &tile.out_hist[tile.out_slot(t, b)..][..kt + 2];
                    let what = format!("{name}, {neurons} neurons, cap {capacity}, t {t}, b {b}");
                    assert_eq!(get_masks(slot), slot_masks(slot), "{what}");
                    with_room += usize::from(slot[1] as usize + 4 <= kt);
                }
            }
            assert!(cut > 0 && (neurons > 32 || capacity < 8 || with_room > 0), "{name}");
        }
    }
}

/// An output layer's backward steps with `dL/dS` in neuron order
/// ([`Tile::backward_output_samples`]) equal [`Tile::backward_external_samples`] given the same
/// entries at the buffers' ids: every partial, the shared gradients and the whole arena but
/// the `dL/dS` in-buffers and scratch, twice over, at the widths of one and two registers
/// (AVX-512F's lean loop, whole-tile gradient sets in exact mode) and wider, cut buffers or
/// not, a window or exact mode, all or some samples; a short `dL/dc` is refused.
#[test]
fn output_samples_equal_the_samples_given_the_entries() {
    for (neurons, capacity) in [(7, 7), (16, 16), (20, 20), (20, 4), (32, 32), (32, 5), (40, 40)] {
        let cfg = cfg(neurons, capacity);
        let stride = neurons + 3;
        let dldc: Vec<f32> =
            (0..BATCH * stride).map(|i| dlds_of(i / stride, 1, i) - 0.05).collect();
        for (seed, window) in [(6, 0.3), (7, f32::INFINITY)] {
            let params = NeuronParams { window, ..NeuronParams::default() };
            let mut start = arena(&cfg, params, seed);
            let input = inputs(seed + 10, 0.25);
            {
                let mut tile = Tile::attach(cfg, params, bytemuck::cast_slice_mut(&mut start));
                step_by_step(tile.as_mut().unwrap(), &input, BATCH);
            }
            for samples in [BATCH, 2] {
                let what = format!(
                    "{neurons} neurons, cap {capacity}, window {window}, {samples} samples"
                );
                let mut results = Vec::new();
                for lanes in [false, true] {
                    let mut arena = start.clone();
                    let mut grads = vec![0.5f32; cfg.inputs * neurons];
                    let mut partials = Vec::new();
                    {
                        let a = bytemuck::cast_slice_mut(&mut arena);
                        let mut tile = Tile::attach(cfg, params, a).unwrap();
                        for t in (0..T).rev().chain((0..T).rev()) {
                            let shared = Some(SharedGrads { dw: &mut grads, dv: &mut [] });
                            let got = |_: usize, p: &[f32]| partials.push(p.to_vec());
                            let step = |b: usize| view(&input[t][b]);
                            if lanes {
                                tile.backward_output_samples(
                                    t, samples, &dldc, stride, step, got, true, None, shared,
                                )
                                .unwrap();
                            } else {
                                let dlds = |b: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
                                    for (d, &i) in dst.iter_mut().zip(buf.ids) {
                                        *d = 0.0 + dldc[b * stride + i as usize];
                                    }
                                };
                                tile.backward_external_samples(
                                    t, samples, dlds, step, got, true, None, shared,
                                )
                                .unwrap();
                            }
                        }
                    }
                    clear_scratch(&mut arena, &cfg, params);
                    results.push((arena, grads, partials));
                }
                let (want, got) = (&results[0], &results[1]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(want.1.iter().any(|&g| g != 0.5), "gradients must flow: {what}");
                assert!(got.0 == want.0, "arena differs: {what}");
                assert_eq!(bits(&got.1), bits(&want.1), "gradients differ: {what}");
                let (gp, wp) = (got.2.concat(), want.2.concat());
                assert_eq!(bits(&gp), bits(&wp), "partials differ: {what}");
            }
        }
        let mut a = arena(&cfg, NeuronParams::default(), 1);
        let mut tile = Tile::attach(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut a));
        let short = &dldc[..(BATCH - 1) * stride + neurons - 1];
        let r = tile.as_mut().unwrap().backward_output_samples(
            0,
            BATCH,
            short,
            stride,
            |_| SpikeView::EMPTY,
            |_, _| {},
            true,
            None,
            None,
        );
        assert_eq!(r, Err(TileError::BadInput), "{neurons} neurons: short dL/dc");
    }
}
