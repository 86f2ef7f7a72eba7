//! Criterion benches of the hot kernels of one tile: the forward step (sparse accumulate, membrane
//! update, buffer construction; with the tile's own history and with the source buffer kept by the
//! driver, as the host engine runs it), buffer construction alone, the backward step, and Adam; and the
//! two row kernels alone at the scale of W, where the rows come from L2 (the bound on W's
//! throughput that docs/performance.md derives), at every level of vector instructions the CPU
//! runs (`spiketile --simd`); the deferred gradient against the scatters;
//! the backward step's dot products (`dots`) against dots taken element after element; and a
//! hidden tile of W through whole passes, step after step against the runs.
//!
//! `cargo bench -p spiketile --bench kernels` (add `-- --quick` for a short run).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spiketile_core::rows::{accumulate_rows, dots, gather_add, scatter_add};
use spiketile_core::simd::{self, Level};
use spiketile_core::spikes::build_into;
use spiketile_core::{
    DldsAt, NeuronParams, Optimizer, OptimizerKind, SpikeView, StepInput, Tile, TileConfig,
};

/// A tile of the W workload's hidden layer (700 inputs, 256-wide layer, 5 % input activity).
fn config() -> TileConfig {
    TileConfig {
        neurons: 18,
        first_neuron: 0,
        layer_width: 256,
        inputs: 700,
        recurrent: false,
        batch: 16,
        time_steps: 100,
        in_capacity: 70,
        layer_capacity: 26,
        optimizer: OptimizerKind::Adam,
    }
}

fn input_spikes(rng: &mut ChaCha8Rng) -> Vec<u16> {
    (0..700u16).filter(|_| rng.gen_bool(0.05)).take(70).collect()
}

fn kernels(c: &mut Criterion) {
    let cfg = config();
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for w in tile.weights_mut() {
        *w = rng.gen_range(-1.2..1.2);
    }
    let inputs: Vec<Vec<u16>> = (0..cfg.time_steps).map(|_| input_spikes(&mut rng)).collect();
    c.bench_function("tile forward step (18 neurons, 35 input spikes)", |b| {
        let mut t = 0;
        b.iter(|| {
            let ids = &inputs[t % cfg.time_steps];
            let view = SpikeView::new(ids, ids.len()).unwrap();
            let r = tile.forward(t % cfg.time_steps, 0, view, SpikeView::EMPTY).unwrap();
            tile.commit_all(t % cfg.time_steps, 0).unwrap();
            t += 1;
            black_box(r)
        })
    });
    // The same with the source buffer kept by the driver (the host engine's way): no copy into
    // the tile's history.
    c.bench_function(
        "tile forward step, external source buffers (18 neurons, 35 input spikes)",
        |b| {
            let mut t = 0;
            b.iter(|| {
                let ids = &inputs[t % cfg.time_steps];
                let step = StepInput::feed_forward(SpikeView::new(ids, ids.len()).unwrap());
                let r = tile.forward_external(t % cfg.time_steps, 1, step, None).unwrap();
                tile.commit_all(t % cfg.time_steps, 1).unwrap();
                t += 1;
                black_box(r)
            })
        },
    );
    for s in 0..cfg.time_steps {
        for b in 0..cfg.batch {
            let ids = &inputs[s];
            tile.forward(s, b, SpikeView::new(ids, ids.len()).unwrap(), SpikeView::EMPTY).unwrap();
            tile.commit_all(s, b).unwrap();
        }
    }
    // With the source layer's partial dL/dS (a hidden layer after the first), and without (the
    // first hidden layer: nobody needs dL/dS of the data).
    for (name, partials) in [("", true), (", first layer", false)] {
        let id = format!("tile backward step (18 neurons, 35 input spikes{name})");
        c.bench_function(&id, |b| {
            let mut t = cfg.time_steps;
            b.iter(|| {
                t = if t == 0 { cfg.time_steps - 1 } else { t - 1 };
                let n = tile.out_buffer(t, 0).n_grad();
                tile.dlds_mut(0)[..n].fill(0.01);
                tile.backward_with(t, 0, partials).unwrap();
            })
        });
    }
    let u: Vec<f32> = (0..256).map(|_| rng.gen_range(-1.0..1.2)).collect();
    c.bench_function("buffer construction (256 neurons, capacity 26)", |b| {
        let mut ids = [0u16; 26];
        b.iter(|| black_box(build_into(black_box(&u), 1.0, 0.1, &mut ids)))
    });
    // A W hidden tile: 32 neurons, about 3 % over threshold and 5 % in the window under it.
    let quiet: Vec<Vec<f32>> =
        (0..64).map(|_| (0..32).map(|_| rng.gen_range(-1.0..1.06)).collect()).collect();
    c.bench_function("buffer construction (32 neurons, W activity, 64 draws)", |b| {
        let mut ids = [0u16; 26];
        b.iter(|| {
            for u in &quiet {
                black_box(build_into(black_box(u), 1.0, 0.1, &mut ids));
            }
        })
    });
    let n = 700 * 18;
    let (mut w, g) = (vec![0.1f32; n], vec![0.01f32; n]);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let opt = Optimizer::adam(1e-3);
    c.bench_function("adam step (12,600 weights)", |b| {
        let mut step = 0;
        b.iter(|| {
            step += 1;
            opt.step(step, &mut w, &g, &mut m, &mut v);
        })
    });
}

/// The row kernels as W's hidden layer runs them on one core: 16 tiles of 32 neurons (their
/// 700 x 32 weights are 1.4 MB together, so the rows come from L2), 8 samples each, 35 input
/// spikes per sample and step. Throughput is in rows (one input spike of one tile).
fn rows_at_w_scale(c: &mut Criterion) {
    const TILES: usize = 16;
    const LANES: usize = 32;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut w: Vec<Vec<f32>> =
        (0..TILES).map(|_| (0..700 * LANES).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect();
    let spikes: Vec<Vec<u16>> = (0..TILES * 8)
        .map(|_| {
            let mut ids = input_spikes(&mut rng);
            ids.truncate(35);
            ids
        })
        .collect();
    let rows = spikes.iter().map(Vec::len).sum::<usize>() as u64;
    let mut g = c.benchmark_group("rows at W scale (16 tiles x 8 samples, 32 lanes, from L2)");
    g.throughput(Throughput::Elements(rows));
    each_level(|level| {
        g.bench_function(format!("accumulate_rows (forward, {level:?})"), |b| {
            let mut cur = [0.0f32; LANES];
            b.iter(|| {
                for (k, ids) in spikes.iter().enumerate() {
                    accumulate_rows(&mut cur, &w[k / 8], ids, true);
                    black_box(&cur);
                }
            })
        });
        let x = [0.01f32; LANES];
        g.bench_function(format!("scatter_add (backward dW, {level:?})"), |b| {
            b.iter(|| {
                for (k, ids) in spikes.iter().enumerate() {
                    scatter_add(&mut w[k / 8], black_box(&x), ids);
                }
            })
        });
    });
    g.finish();
}

/// The input-weight gradient of one of W's hidden tile columns over a run of 12 steps of a
/// replica group (32 samples, 35 input spikes each per step): one scatter per sample and step
/// (`scatter_add`), against the deferred form the engine runs, each row once for all its uses
/// from lists by row (`gather_add`; the lists are built outside the timing, once per group for
/// all 8 columns). Throughput is in uses (one input spike of one sample-step).
fn deferred_gradients(c: &mut Criterion) {
    const LANES: usize = 32;
    const VECS: usize = 12 * 32;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut dw: Vec<f32> = (0..700 * LANES).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let vecs: Vec<f32> = (0..VECS * LANES).map(|_| rng.gen_range(-0.01..0.01)).collect();
    let spikes: Vec<Vec<u16>> = (0..VECS)
        .map(|_| {
            let mut ids = input_spikes(&mut rng);
            ids.truncate(35);
            ids
        })
        .collect();
    let mut by_row: Vec<Vec<u16>> = vec![Vec::new(); 700];
    for (k, ids) in spikes.iter().enumerate() {
        ids.iter().for_each(|&j| by_row[j as usize].push(k as u16));
    }
    let mut starts = vec![0u32];
    for list in &by_row {
        starts.push(starts[starts.len() - 1] + list.len() as u32);
    }
    let uses: Vec<u16> = by_row.concat();
    let mut g =
        c.benchmark_group("input-weight gradient of a run (700 x 32 rows, 12 steps x 32 samples)");
    g.throughput(Throughput::Elements(uses.len() as u64));
    g.bench_function("scatter_add per sample and step", |b| {
        b.iter(|| {
            for (k, ids) in spikes.iter().enumerate() {
                scatter_add(&mut dw, black_box(&vecs[k * LANES..(k + 1) * LANES]), ids);
            }
        })
    });
    each_level(|level| {
        g.bench_function(format!("gather_add once per run ({level:?})"), |b| {
            b.iter(|| gather_add(&mut dw, LANES, black_box(&vecs), &starts, &uses))
        });
    });
    g.finish();
}

/// Runs `f` at every level of vector instructions this CPU runs, widest first, then each
/// narrower one (as `spiketile --simd` caps them: the same sums, bit for bit), and leaves the
/// widest in use.
fn each_level(mut f: impl FnMut(Level)) {
    let widest = simd::level();
    for level in [Level::Avx512, Level::Avx2, Level::Baseline].into_iter().filter(|&l| l <= widest)
    {
        simd::limit(level);
        f(level);
    }
    simd::limit(widest);
}

/// The partial `dL/dS` of a backward step: one dot product of a weight row with `dL/dc` per id of
/// the source buffer (26 ids: W's hidden capacity), for W's readout (256 x 20 weights) and a
/// recurrent hidden tile of W (256 x 32), 64 sample-steps of different ids. `dots` (eight running
/// sums, vector instructions) against chains: the dots taken element after element, four at a time side
/// by side (the kernel before session 15). Throughput is in dots.
fn partial_dots(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let ids: Vec<Vec<u16>> =
        (0..64).map(|_| (0..256u16).filter(|_| rng.gen_bool(0.1)).take(26).collect()).collect();
    let mut g = c.benchmark_group("partial dL/dS (26 ids per sample-step, 64 sample-steps)");
    g.throughput(Throughput::Elements(ids.iter().map(Vec::len).sum::<usize>() as u64));
    for lanes in [20usize, 32] {
        let w: Vec<f32> = (0..256 * lanes).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..lanes).map(|_| rng.gen_range(-0.01..0.01)).collect();
        let mut out = [0.0f32; 26];
        g.bench_function(format!("dots, {lanes} lanes"), |b| {
            b.iter(|| {
                for list in &ids {
                    dots(&mut out, &w, list, black_box(&x));
                    black_box(&out);
                }
            })
        });
        g.bench_function(format!("chains, {lanes} lanes"), |b| {
            b.iter(|| {
                for list in &ids {
                    serial_dots(&mut out, &w, list, black_box(&x));
                    black_box(&out);
                }
            })
        });
    }
    g.finish();
}

/// Dots taken element after element (one chain of additions each), four ids side by side: the
/// backward step's kernel before session 15.
fn serial_dots(out: &mut [f32], w: &[f32], ids: &[u16], x: &[f32]) {
    let n = x.len();
    let row = |j: u16| &w[j as usize * n..][..n];
    let mut out4 = out.chunks_exact_mut(4);
    let mut ids4 = ids.chunks_exact(4);
    for (o, j) in (&mut out4).zip(&mut ids4) {
        let (r0, r1, r2, r3) = (row(j[0]), row(j[1]), row(j[2]), row(j[3]));
        let mut s = [0.0f32; 4];
        for (i, &xi) in x.iter().enumerate() {
            s[0] += r0[i] * xi;
            s[1] += r1[i] * xi;
            s[2] += r2[i] * xi;
            s[3] += r3[i] * xi;
        }
        o.copy_from_slice(&s);
    }
    for (o, &j) in out4.into_remainder().iter_mut().zip(ids4.remainder()) {
        *o = row(j).iter().zip(x).fold(0.0, |s, (a, b)| s + a * b);
    }
}

/// One hidden tile of W (32 neurons, 8 samples, 100 steps, 35 input spikes per sample and step)
/// through a whole forward pass and a whole backward pass with deferred input-weight gradients:
/// step after step (`forward_external`, `backward_external_deferred`, one call per sample and
/// step, as the engine ran them until session 19) against the runs (`forward_external_run`,
/// `backward_deferred_run`, one call per pass), at every level of vector instructions the CPU
/// runs. Throughput is in tile-sample-steps.
fn tile_runs(c: &mut Criterion) {
    const T: usize = 100;
    const M: usize = 8;
    let cfg = TileConfig { neurons: 32, batch: M, time_steps: T, ..config() };
    let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    let mut tile =
        Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for w in tile.weights_mut() {
        *w = rng.gen_range(-1.0..1.6);
    }
    let inputs: Vec<Vec<Vec<u16>>> =
        (0..T).map(|_| (0..M).map(|_| input_spikes(&mut rng)).collect()).collect();
    let view = |t: usize, b: usize| SpikeView::new(&inputs[t][b], inputs[t][b].len()).unwrap();
    let mut vecs = vec![0.0f32; T * M * 32];
    let mut found = vec![[0u32; 2]; T];
    let mut g = c.benchmark_group("tile runs at W (32 neurons, 8 samples, 100 steps)");
    g.throughput(Throughput::Elements((T * M) as u64));
    g.bench_function("forward, step after step", |b| {
        b.iter(|| {
            for t in 0..T {
                for s in 0..M {
                    let step = StepInput::feed_forward(view(t, s));
                    black_box(tile.forward_external(t, s, step, None).unwrap());
                }
            }
        })
    });
    each_level(|level| {
        g.bench_function(format!("forward run ({level:?})"), |b| {
            b.iter(|| tile.forward_external_run(0..T, M, view, None, &mut found).unwrap())
        });
    });
    let dlds = |t: usize, s: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
        for (k, d) in dst.iter_mut().enumerate() {
            *d = 0.01 * (1 + (t + s + k) % 3) as f32 * if buf.n_spikes > k { 1.0 } else { 0.5 };
        }
    };
    g.bench_function("backward, step after step", |b| {
        b.iter(|| {
            for t in (0..T).rev() {
                for s in 0..M {
                    let buf = tile.out_buffer(t, s);
                    let (n_spikes, ids) = (buf.n_spikes, buf.ids.len());
                    for (k, d) in tile.dlds_mut(s)[..ids].iter_mut().enumerate() {
                        *d = 0.01
                            * (1 + (t + s + k) % 3) as f32
                            * if n_spikes > k { 1.0 } else { 0.5 };
                    }
                    let v = &mut vecs[((T - 1 - t) * M + s) * 32..][..32];
                    let step = StepInput::EMPTY;
                    tile.backward_external_deferred(t, s, step, false, None, None, v).unwrap();
                }
            }
        })
    });
    each_level(|level| {
        g.bench_function(format!("backward run ({level:?})"), |b| {
            b.iter(|| tile.backward_deferred_run(0..T, M, dlds, &mut vecs, M * 32).unwrap())
        });
    });
    // The same entries, pointed at (a layer buffer's two runs, as the engine's partials).
    let entries: Vec<f32> = (0..T * M * 64).map(|i| 0.01 * (1 + i % 3) as f32).collect();
    let at = |t: usize, s: usize, _buf: SpikeView<'_>| {
        let at = (t * M + s) * 64;
        Some(DldsAt { spikes: &entries[at..at + 32], near: &entries[at + 32..at + 64] })
    };
    let copied = |t: usize, s: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
        let at = (t * M + s) * 64;
        let (d0, d1) = dst.split_at_mut(buf.n_spikes);
        d0.iter_mut().zip(&entries[at..]).for_each(|(d, &x)| *d = 0.0 + x);
        d1.iter_mut().zip(&entries[at + 32..]).for_each(|(d, &x)| *d = 0.0 + x);
    };
    // Fresh buffers for every backward run (a forward run on the next of 16 inputs, untimed):
    // the branches of a run on buffers it saw before are learnt, the engine's never are.
    let fresh: Vec<Vec<Vec<Vec<u16>>>> = (0..16)
        .map(|_| (0..T).map(|_| (0..M).map(|_| input_spikes(&mut rng)).collect()).collect())
        .collect();
    let mut next = 0;
    let mut forward_fresh = |tile: &mut Tile<'_>| {
        let inp = &fresh[next % fresh.len()];
        next += 1;
        let view = |t: usize, b: usize| SpikeView::new(&inp[t][b], inp[t][b].len()).unwrap();
        tile.forward_external_run(0..T, M, view, None, &mut [[0u32; 2]; T]).unwrap();
    };
    each_level(|level| {
        g.bench_function(format!("backward run, entries copied ({level:?})"), |b| {
            b.iter_custom(|iters| {
                let mut took = std::time::Duration::ZERO;
                for _ in 0..iters {
                    forward_fresh(&mut tile);
                    let started = std::time::Instant::now();
                    tile.backward_deferred_run(0..T, M, copied, &mut vecs, M * 32).unwrap();
                    took += started.elapsed();
                }
                took
            })
        });
    });
    each_level(|level| {
        g.bench_function(format!("backward run, entries pointed at ({level:?})"), |b| {
            b.iter_custom(|iters| {
                let mut took = std::time::Duration::ZERO;
                for _ in 0..iters {
                    forward_fresh(&mut tile);
                    let started = std::time::Instant::now();
                    tile.backward_deferred_run_at(0..T, M, at, &mut vecs, M * 32).unwrap();
                    took += started.elapsed();
                }
                took
            })
        });
    });
    // The forward run's own work: a quiet tile (weights too small for any neuron to fire) at
    // 1 % input (about 7 spikes per sample and step), fresh inputs every iteration; the same
    // with the input's rows in L1 (ids below 70: 9 KiB of rows instead of 89.6).
    for w in tile.weights_mut() {
        *w = rng.gen_range(-0.05..0.12);
    }
    let sparse = |rng: &mut ChaCha8Rng, inputs: u16, p: f64| -> Vec<Vec<Vec<Vec<u16>>>> {
        let sample = |rng: &mut ChaCha8Rng| (0..inputs).filter(|_| rng.gen_bool(p)).collect();
        let step = |rng: &mut ChaCha8Rng| (0..M).map(|_| sample(rng)).collect();
        (0..16).map(|_| (0..T).map(|_| step(rng)).collect()).collect()
    };
    let (wide, narrow) = (sparse(&mut rng, 700, 0.01), sparse(&mut rng, 70, 0.1));
    for (name, inputs) in [("rows in L2", &wide), ("rows in L1", &narrow)] {
        let mut k = 0;
        g.bench_function(format!("forward run, quiet tile, 1 % input, {name}"), |b| {
            b.iter(|| {
                let inp = &inputs[k % inputs.len()];
                k += 1;
                let view =
                    |t: usize, s: usize| SpikeView::new(&inp[t][s], inp[t][s].len()).unwrap();
                tile.forward_external_run(0..T, M, view, None, &mut found).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernels, rows_at_w_scale, deferred_gradients, partial_dots, tile_runs);
criterion_main!(benches);
