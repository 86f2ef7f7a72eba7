//! The backward step of every sample of a tile at one step, in one call
//! ([`Tile::backward_external_samples`]): the arithmetic of [`Tile::backward_external`] sample
//! after sample, bit for bit, without its checks and attachments per sample. On AVX-512F, for
//! tiles of up to 32 neurons (W's readout of 20 classes), the adjoints stay in registers, and
//! where a sample's gradient set is the whole tile (a readout's is, at every step) its surrogate
//! terms are taken in lane order, the membranes and `dL/dS` moved there by a permutation.

use super::{slot_view, SharedGrads, SharedWeights, StepInput, Tile};
use crate::spikes::SpikeView;
use crate::TileError;

impl Tile<'_> {
    /// [`Tile::backward_external`] of step `t` for every sample `b < samples`, in order, for a
    /// tile without recurrent weights (what a driver calls per sample, in one call).
    ///
    /// For each sample, `dlds(b, buffer, dst)` first writes `dL/dS_l[t]` at the tile's buffer of
    /// step `t` into `dst` (one entry per id of `buffer`, as [`Tile::dlds_mut`]); `input(b)` is
    /// the source buffer the forward step integrated at `t`; with `source_partials`, the
    /// sample's partial `dL/dS_{l-1}` (one per id of that buffer, as [`Tile::src_partials`]) goes
    /// to `partials(b, values)` after its step. `BadInput` before anything runs if the tile is
    /// recurrent, `samples` exceeds its batch or a shape of `shared` or `grads` differs from the
    /// tile's; `OutOfRange` if `t` does; `BadInput` at a sample whose source buffer is longer
    /// than its capacity (the samples before it have run).
    ///
    /// ```
    /// use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, StepInput, Tile, TileConfig};
    /// let cfg = TileConfig {
    ///     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
    ///     batch: 2, time_steps: 1, in_capacity: 3, layer_capacity: 2,
    ///     optimizer: OptimizerKind::Sgd,
    /// };
    /// let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    /// let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    /// tile.weights_mut().fill(30.0);
    /// let ids = [0u16, 2];
    /// let step = StepInput::feed_forward(SpikeView::new(&ids, 2).unwrap());
    /// for b in 0..2 {
    ///     tile.forward_external(0, b, step, None).unwrap();
    ///     tile.commit_all(0, b).unwrap();
    /// }
    /// let mut got = vec![];
    /// tile.backward_external_samples(
    ///     0,
    ///     2,
    ///     |_b, _buf: SpikeView<'_>, dst: &mut [f32]| dst.fill(1.0),
    ///     |_b| step.input,
    ///     |b, p: &[f32]| got.push((b, p.to_vec())),
    ///     true,
    ///     None,
    ///     None,
    /// )
    /// .unwrap();
    /// assert_eq!(got.len(), 2);
    /// assert!(got[0].1.len() == 2 && got[0].1[0] != 0.0);
    /// assert!(tile.grads().0[0] != 0.0 && tile.grads().0[2] == 0.0);
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward_external_samples<'s, D, I, P>(
        &mut self,
        t: usize,
        samples: usize,
        dlds: D,
        input: I,
        partials: P,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError>
    where
        D: FnMut(usize, SpikeView<'_>, &mut [f32]),
        I: FnMut(usize) -> SpikeView<'s>,
        P: FnMut(usize, &[f32]),
    {
        let dl = DldsFrom::Driver(dlds);
        self.samples_impl(t, samples, dl, input, partials, source_partials, shared, grads)
    }

    /// [`Tile::backward_external_samples`] of an output layer's tile, whose `dL/dS` is the same
    /// at every step: neuron `i`'s of sample `b` is `0.0 + dldc[b * stride + i]` (its class's
    /// `dL/dc`, read in neuron order: on AVX-512F no permutation of the gradient set's entries).
    /// The same arithmetic, bit for bit; the tile's `dL/dS` in-buffer and scratch hold nothing
    /// of use after it. `BadInput` as there, or if `dldc` is shorter than `samples` rows.
    ///
    /// ```
    /// use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, StepInput, Tile, TileConfig};
    /// let cfg = TileConfig {
    ///     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
    ///     batch: 2, time_steps: 1, in_capacity: 3, layer_capacity: 2,
    ///     optimizer: OptimizerKind::Sgd,
    /// };
    /// let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    /// let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    /// tile.weights_mut().fill(30.0);
    /// let ids = [0u16, 2];
    /// let step = StepInput::feed_forward(SpikeView::new(&ids, 2).unwrap());
    /// for b in 0..2 {
    ///     tile.forward_external(0, b, step, None).unwrap();
    ///     tile.commit_all(0, b).unwrap();
    /// }
    /// // dL/dc of two samples of two classes.
    /// let dldc = [0.5f32, -0.5, 0.25, -0.25];
    /// let mut got = vec![];
    /// let partials = |b, p: &[f32]| got.push((b, p.to_vec()));
    /// tile.backward_output_samples(0, 2, &dldc, 2, |_b| step.input, partials, true, None, None)
    ///     .unwrap();
    /// assert_eq!(got.len(), 2);
    /// assert!(tile.grads().0[0] != 0.0 && tile.grads().0[2] == 0.0);
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward_output_samples<'s, I, P>(
        &mut self,
        t: usize,
        samples: usize,
        dldc: &[f32],
        stride: usize,
        input: I,
        partials: P,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError>
    where
        I: FnMut(usize) -> SpikeView<'s>,
        P: FnMut(usize, &[f32]),
    {
        let rows = samples.checked_sub(1).map(|last| last * stride + self.cfg.neurons);
        if rows.is_some_and(|len| len > dldc.len()) {
            return Err(TileError::BadInput);
        }
        let dl = DldsFrom::<fn(usize, SpikeView<'_>, &mut [f32])>::Lanes(dldc, stride);
        self.samples_impl(t, samples, dl, input, partials, source_partials, shared, grads)
    }

    /// [`Tile::backward_external_samples`] with `dL/dS` from the driver or in neuron order.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn samples_impl<'s, D, I, P>(
        &mut self,
        t: usize,
        samples: usize,
        mut dlds: DldsFrom<'_, D>,
        mut input: I,
        mut partials: P,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        mut grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError>
    where
        D: FnMut(usize, SpikeView<'_>, &mut [f32]),
        I: FnMut(usize) -> SpikeView<'s>,
        P: FnMut(usize, &[f32]),
    {
        if self.cfg.recurrent || samples > self.cfg.batch {
            return Err(TileError::BadInput);
        }
        self.check_backward(t, 0, &shared, &grads)?;
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        if crate::simd::avx512() && self.cfg.neurons <= 32 && self.cfg.neurons > 0 {
            let args = (t, samples, source_partials);
            // SAFETY: the CPU runs AVX-512F and POPCNT code (checked at run time); the tile has
            // 1..=16 or 17..=32 neurons for N = 16 or 32; the checks above hold.
            return unsafe {
                if self.cfg.neurons <= 16 {
                    self.samples_lanes::<16, 1, D, I, P>(args, dlds, input, partials, shared, grads)
                } else {
                    self.samples_lanes::<32, 2, D, I, P>(args, dlds, input, partials, shared, grads)
                }
            };
        }
        let (kt, cap) = (self.cfg.own_capacity(), self.cfg.in_capacity);
        for b in 0..samples {
            let view = input(b);
            self.check_lengths(&view, &SpikeView::EMPTY)?;
            if t > 0 {
                self.prefetch_own_history(t - 1, b);
            }
            let at = self.out_slot(t, b);
            let out = slot_view(&self.out_hist[at..]);
            dlds.write(b, out, &mut self.dlds[b * kt..][..out.ids.len()]);
            let g = grads.as_mut().map(SharedGrads::reborrow);
            let step = StepInput::feed_forward(view);
            self.backward_step(t, b, step, source_partials, shared, g, None);
            if source_partials {
                partials(b, &self.src_partials[b * cap..][..view.ids.len()]);
            }
        }
        Ok(())
    }

    /// [`Tile::backward_external_samples`] after its checks, for a tile of up to `N = 16 R`
    /// neurons in AVX-512F: each sample's adjoints decayed, reset and (where its gradient set is
    /// the whole tile) given their surrogate terms in `R` registers of 16 lanes, the same
    /// multiplications, additions and division lane by lane as [`Tile::backward_step`]; a
    /// smaller gradient set's entries are added one by one, as there. The weight-gradient
    /// scatter and the dot products are [`Tile::backward_step`]'s.
    ///
    /// # Safety
    /// The CPU must run AVX-512F and POPCNT code; `N` is `16 R` with `R` 1 or 2 and the tile's
    /// neuron count lies in `N - 15..=N`; the checks of [`Tile::backward_external_samples`]
    /// hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    #[allow(unsafe_code)]
    unsafe fn samples_lanes<'s, const N: usize, const R: usize, D, I, P>(
        &mut self,
        (t, samples, source_partials): (usize, usize, bool),
        mut dlds: DldsFrom<'_, D>,
        mut input: I,
        mut partials: P,
        shared: Option<SharedWeights<'_>>,
        mut grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError>
    where
        D: FnMut(usize, SpikeView<'_>, &mut [f32]),
        I: FnMut(usize) -> SpikeView<'s>,
        P: FnMut(usize, &[f32]),
    {
        use crate::rows::{dots, scatter_add};
        use crate::Surrogate;
        use core::arch::x86_64::{
            __m512, _mm512_abs_ps, _mm512_add_epi32, _mm512_add_ps, _mm512_div_ps,
            _mm512_mask_storeu_ps, _mm512_maskz_compress_ps, _mm512_maskz_expand_epi32,
            _mm512_maskz_loadu_ps, _mm512_maskz_mov_ps, _mm512_mul_ps, _mm512_or_si512,
            _mm512_permutex2var_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setr_epi32,
            _mm512_setzero_ps, _mm512_sub_ps,
        };
        let cfg = self.cfg;
        let n = cfg.neurons;
        assert!((R == 1 || R == 2) && N == 16 * R && n <= N && n + 16 > N);
        // The lanes of register r that hold neurons (all 16 but in the last of a tile of fewer
        // than N).
        let lanes = |r: usize| (((1u32 << (n - 16 * r).min(16)) - 1) & 0xffff) as u16;
        let (batch, kt, cap) = (cfg.batch, cfg.own_capacity(), cfg.in_capacity);
        let (alpha, theta) = (self.params.lif.alpha, self.params.lif.theta);
        let one_minus = 1.0 - alpha;
        let (a, om) = (_mm512_set1_ps(alpha), _mm512_set1_ps(one_minus));
        let surrogate = self.params.surrogate;
        let Surrogate::SuperSpike { beta } = surrogate;
        let (be, th, one) = (_mm512_set1_ps(beta), _mm512_set1_ps(theta), _mm512_set1_ps(1.0));
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let last = t + 1 == cfg.time_steps;
        for b in 0..samples {
            let view = input(b);
            if !Self::fits(&view, cap) {
                return Err(TileError::BadInput);
            }
            if t > 0 {
                self.prefetch_own_history(t - 1, b);
            }
            let step = t * batch + b;
            let out = slot_view(&self.out_hist[step * (kt + 2)..]);
            let ng = out.ids.len();
            // In neuron order (an output layer's), the whole set's entries are loaded below.
            let lanes_dlds = dlds.lanes(b).filter(|_| ng == n);
            if lanes_dlds.is_none() {
                dlds.write(b, out, &mut self.dlds[b * kt..][..ng]);
            }
            let g = &mut self.g[b * n..(b + 1) * n];
            let c = &mut self.c[..n];
            // Bit i set: neuron i spiked at this step (its adjoint is reset).
            let spiked = out.spikes().iter().fold(0u64, |m, &i| m | (1u64 << (i & 63)));
            let mut gr: [__m512; R] = [_mm512_setzero_ps(); R];
            let mut cr: [__m512; R] = [_mm512_setzero_ps(); R];
            for r in 0..R {
                // SAFETY: the lanes of `lanes(r)` lie within `g` (n floats).
                let x = match last {
                    true => _mm512_setzero_ps(),
                    false => unsafe { _mm512_maskz_loadu_ps(lanes(r), g.as_ptr().add(16 * r)) },
                };
                let x = _mm512_mul_ps(x, a);
                cr[r] = _mm512_mul_ps(om, x);
                gr[r] = _mm512_maskz_mov_ps(!((spiked >> (16 * r)) as u16), x);
            }
            if ng == n {
                // The gradient set is every neuron: the spikes (lowest first), then the others.
                // Lane i's entry is at the rank of i among the spikes, or after the spikes at
                // its rank among the others; the membranes and dL/dS (ng <= 32 entries, two
                // registers) are moved to their lanes by that permutation.
                let at =
                    (self.u_hist[step * kt..][..ng].as_ptr(), self.dlds[b * kt..][..ng].as_ptr());
                let part = |r: usize| {
                    (((1u32 << (ng.saturating_sub(16 * r)).min(16)) - 1) & 0xffff) as u16
                };
                let zero = _mm512_setzero_ps();
                // SAFETY: the lanes of `part(r)` lie within the ng entries at each pointer.
                let (u, d) = unsafe {
                    (
                        [
                            _mm512_maskz_loadu_ps(part(0), at.0),
                            _mm512_maskz_loadu_ps(part(1), at.0.add(16)),
                        ],
                        match lanes_dlds {
                            Some(_) => [zero; 2],
                            None => [
                                _mm512_maskz_loadu_ps(part(0), at.1),
                                _mm512_maskz_loadu_ps(part(1), at.1.add(16)),
                            ],
                        },
                    )
                };
                let (mut below_spikes, mut below_others) = (0i32, out.n_spikes as i32);
                let mut sg: [__m512; R] = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let s = (spiked >> (16 * r)) as u16 & lanes(r);
                    let o = !s & lanes(r);
                    let pos = _mm512_or_si512(
                        _mm512_maskz_expand_epi32(
                            s,
                            _mm512_add_epi32(iota, _mm512_set1_epi32(below_spikes)),
                        ),
                        _mm512_maskz_expand_epi32(
                            o,
                            _mm512_add_epi32(iota, _mm512_set1_epi32(below_others)),
                        ),
                    );
                    below_spikes += s.count_ones() as i32;
                    below_others += o.count_ones() as i32;
                    let ur = _mm512_permutex2var_ps(u[0], pos, u[1]);
                    let dr = match lanes_dlds {
                        // SAFETY: the lanes of `lanes(r)` lie within the sample's n entries
                        // (checked by `backward_output_samples`).
                        Some(row) => _mm512_add_ps(zero, unsafe {
                            _mm512_maskz_loadu_ps(lanes(r), row.as_ptr().add(16 * r))
                        }),
                        None => _mm512_permutex2var_ps(d[0], pos, d[1]),
                    };
                    // Surrogate::grad: 1 / (x x) with x = beta |u - theta| + 1, times dL/dS.
                    let x =
                        _mm512_add_ps(_mm512_mul_ps(be, _mm512_abs_ps(_mm512_sub_ps(ur, th))), one);
                    sg[r] = _mm512_mul_ps(_mm512_div_ps(one, _mm512_mul_ps(x, x)), dr);
                    gr[r] = _mm512_add_ps(gr[r], sg[r]);
                    cr[r] = _mm512_mul_ps(om, gr[r]);
                }
                // The terms also go to the scratch in the gradient set's order, as the step one
                // by one leaves them (the same arena, bit for bit; an output layer's run leaves
                // the scratch alone).
                let (mut to, cur) = (0, self.cur[..ng].as_mut_ptr());
                let sets = if lanes_dlds.is_some() { &[][..] } else { &[spiked, !spiked][..] };
                for &set in sets {
                    for (r, &x) in sg.iter().enumerate() {
                        let k = (set >> (16 * r)) as u16 & lanes(r);
                        let count = k.count_ones() as usize;
                        // SAFETY: the `count` lanes stored lie within `cur`'s ng entries (the
                        // counts of both sets over all registers add up to n = ng).
                        unsafe {
                            let stored = ((1u32 << count) - 1) as u16;
                            _mm512_mask_storeu_ps(
                                cur.add(to),
                                stored,
                                _mm512_maskz_compress_ps(k, x),
                            );
                        }
                        to += count;
                    }
                }
                for r in 0..R {
                    // SAFETY: as the loads of `g`; `c` holds n floats.
                    unsafe {
                        _mm512_mask_storeu_ps(g.as_mut_ptr().add(16 * r), lanes(r), gr[r]);
                        _mm512_mask_storeu_ps(c.as_mut_ptr().add(16 * r), lanes(r), cr[r]);
                    }
                }
            } else {
                for r in 0..R {
                    // SAFETY: as the loads of `g`; `c` holds n floats.
                    unsafe {
                        _mm512_mask_storeu_ps(g.as_mut_ptr().add(16 * r), lanes(r), gr[r]);
                        _mm512_mask_storeu_ps(c.as_mut_ptr().add(16 * r), lanes(r), cr[r]);
                    }
                }
                let (uh, dl) = (&self.u_hist[step * kt..][..ng], &self.dlds[b * kt..][..ng]);
                let sg = &mut self.cur[..ng];
                for ((x, &u), &d) in sg.iter_mut().zip(uh).zip(dl) {
                    *x = surrogate.grad(u, theta) * d;
                }
                for (&x, &i) in sg.iter().zip(out.ids) {
                    let gi = g[i as usize] + x;
                    g[i as usize] = gi;
                    c[i as usize] = one_minus * gi;
                }
            }
            let c: &[f32] = c;
            let dw: &mut [f32] = match grads.as_mut() {
                Some(gr) => &mut *gr.dw,
                None => &mut *self.dw,
            };
            scatter_add(dw, c, view.spikes());
            if source_partials {
                let w: &[f32] = match &shared {
                    Some(sh) => sh.w,
                    None => &*self.w,
                };
                let p = &mut self.src_partials[b * cap..][..view.ids.len()];
                dots(p, w, view.ids, c);
                partials(b, p);
            }
        }
        Ok(())
    }
}

/// Where [`Tile::backward_external_samples`] and [`Tile::backward_output_samples`] take each
/// sample's `dL/dS`.
enum DldsFrom<'d, D> {
    /// The driver writes it at the ids of the tile's buffer.
    Driver(D),
    /// Sample `b`'s of neuron `i` is `0.0 + values[b * stride + i]`, at every step.
    Lanes(&'d [f32], usize),
}

impl<'d, D: FnMut(usize, SpikeView<'_>, &mut [f32])> DldsFrom<'d, D> {
    /// Sample `b`'s entries at the ids of `buf` into `dst`.
    #[inline(always)]
    fn write(&mut self, b: usize, buf: SpikeView<'_>, dst: &mut [f32]) {
        match self {
            DldsFrom::Driver(f) => f(b, buf, dst),
            DldsFrom::Lanes(values, stride) => {
                let row = &values[b * *stride..];
                for (d, &i) in dst.iter_mut().zip(buf.ids) {
                    *d = 0.0 + row[i as usize];
                }
            }
        }
    }

    /// Sample `b`'s entries in neuron order, if that is where they are.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    fn lanes(&self, b: usize) -> Option<&'d [f32]> {
        match self {
            DldsFrom::Driver(_) => None,
            DldsFrom::Lanes(values, stride) => Some(&values[b * *stride..]),
        }
    }
}
