//! Backward runs: a first-layer tile with deferred input-weight gradients through a run of
//! steps, every sample at each step, in one call ([`Tile::backward_deferred_run`]). The same
//! arithmetic as [`Tile::backward_external_deferred`] step after step, bit for bit; what it saves
//! is the per-step call (checks, attachments, the driver's loop), and on AVX-512F, for tiles of
//! 16, 32 or 64 neurons, the adjoint's decay and reset in registers.

use super::super::{slot_view, StepInput, Tile};
use crate::spikes::SpikeView;
use crate::TileError;
use core::ops::Range;

impl Tile<'_> {
    /// [`Tile::backward_external_deferred`] of every step `t` of `steps`, from the last down, and
    /// every sample `b < samples` (in order, at each step), for a tile without recurrent weights
    /// whose source layer needs no partial `dL/dS` (the first layer: nothing is read of its
    /// source buffers).
    ///
    /// Before each step of each sample, `dlds(t, b, buffer, dst)` writes `dL/dS_l[t]` at the
    /// tile's buffer of step `t`, sample `b` into `dst` (one entry per id of `buffer`, as
    /// [`Tile::dlds_mut`]; nothing if the gradient set is empty, where a driver may still ask
    /// for what later steps read). The step's `dL/dc` goes to
    /// `vecs[(steps.end - 1 - t) * stride + b * n..][..n]` (`n` neurons): a driver's vectors of
    /// several tiles' samples, step after step `stride` floats apart.
    ///
    /// `BadInput` before anything runs if the tile is recurrent, `steps` or `samples` lie beyond
    /// the tile's, `stride` is less than `samples * n` or `vecs` is too short.
    ///
    /// ```
    /// use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, Tile, TileConfig};
    /// let cfg = TileConfig {
    ///     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
    ///     batch: 1, time_steps: 2, in_capacity: 3, layer_capacity: 2,
    ///     optimizer: OptimizerKind::Sgd,
    /// };
    /// let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    /// let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    /// tile.weights_mut().fill(30.0);
    /// let ids = [0u16, 2];
    /// let input = |t: usize, _| if t == 1 { SpikeView::new(&ids, 2).unwrap() } else { SpikeView::EMPTY };
    /// tile.forward_external_run(0..2, 1, input, None, &mut [[0; 2]; 2]).unwrap();
    /// // dL/dS = 1 for every entry of the tile's buffers; dL/dc of step t at (1 - t) * 2.
    /// let dlds = |_t: usize, _b: usize, _buf: SpikeView<'_>, dst: &mut [f32]| dst.fill(1.0);
    /// let mut vecs = [0.0f32; 4];
    /// tile.backward_deferred_run(0..2, 1, dlds, &mut vecs, 2).unwrap();
    /// assert!(vecs[..2].iter().all(|&c| c > 0.0)); // step 1: both neurons spiked
    /// assert!(tile.grads().0.iter().all(|&g| g == 0.0)); // the driver adds the vectors
    /// ```
    pub fn backward_deferred_run<F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        dlds: F,
        vecs: &mut [f32],
        stride: usize,
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize, SpikeView<'_>, &mut [f32]),
    {
        self.check_back_run(&steps, samples, vecs, stride)?;
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        if crate::simd::avx512() && matches!(self.cfg.neurons, 16 | 32 | 64) {
            // SAFETY: the CPU runs AVX-512F code (checked at run time); N = 16 R neurons.
            unsafe {
                match self.cfg.neurons {
                    16 => self.back_lanes::<16, 1, F>(steps, samples, dlds, vecs, stride),
                    32 => self.back_lanes::<32, 2, F>(steps, samples, dlds, vecs, stride),
                    _ => self.back_lanes::<64, 4, F>(steps, samples, dlds, vecs, stride),
                }
            }
            return Ok(());
        }
        self.back_body(steps, samples, dlds, vecs, stride);
        Ok(())
    }

    /// The checks of [`Tile::backward_deferred_run`]: `BadInput` if the tile is recurrent,
    /// `steps` or `samples` lie beyond the tile's, `stride` is less than `samples * n` or `vecs`
    /// is too short.
    pub(super) fn check_back_run(
        &self,
        steps: &Range<usize>,
        samples: usize,
        vecs: &[f32],
        stride: usize,
    ) -> Result<(), TileError> {
        let cfg = &self.cfg;
        let n = cfg.neurons;
        let need = match steps.len() {
            0 => 0,
            len => (len - 1) * stride + samples * n,
        };
        if cfg.recurrent
            || steps.end > cfg.time_steps
            || samples > cfg.batch
            || stride < samples * n
            || vecs.len() < need
        {
            return Err(TileError::BadInput);
        }
        Ok(())
    }

    /// The loop of [`Tile::backward_deferred_run`] after its checks: each step by
    /// [`Tile::backward_step`].
    pub(super) fn back_body<F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        mut dlds: F,
        vecs: &mut [f32],
        stride: usize,
    ) where
        F: FnMut(usize, usize, SpikeView<'_>, &mut [f32]),
    {
        let (n, kt) = (self.cfg.neurons, self.cfg.own_capacity());
        let last = steps.end.saturating_sub(1);
        for t in steps.rev() {
            for b in 0..samples {
                if t > 0 {
                    self.prefetch_own_history(t - 1, b);
                }
                let out = slot_view(&self.out_hist[self.out_slot(t, b)..]);
                dlds(t, b, out, &mut self.dlds[b * kt..][..out.ids.len()]);
                let v = &mut vecs[(last - t) * stride + b * n..][..n];
                self.backward_step(t, b, StepInput::EMPTY, false, None, None, Some(v));
            }
        }
    }

    /// [`Self::back_body`] for a tile of `N = 16 R` neurons in AVX-512F: the adjoints' decay,
    /// `dL/dc` and the reset of the spikes' adjoints in `R` registers of 16 lanes (the same
    /// multiplications lane by lane as [`crate::simd::decay8`]), the gradient set's entries as
    /// in [`Tile::backward_step`].
    ///
    /// # Safety
    /// The CPU must run AVX-512F code; `N` is the tile's neuron count and `16 R`; the checks of
    /// [`Tile::backward_deferred_run`] hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    pub(super) unsafe fn back_lanes<const N: usize, const R: usize, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        mut dlds: F,
        vecs: &mut [f32],
        stride: usize,
    ) where
        F: FnMut(usize, usize, SpikeView<'_>, &mut [f32]),
    {
        use core::arch::x86_64::{
            __m512, _mm512_loadu_ps, _mm512_maskz_mov_ps, _mm512_mul_ps, _mm512_set1_ps,
            _mm512_setzero_ps, _mm512_storeu_ps,
        };
        assert!(N == 16 * R && self.cfg.neurons == N);
        let cfg = self.cfg;
        let (batch, kt) = (cfg.batch, cfg.own_capacity());
        let (alpha, theta) = (self.params.lif.alpha, self.params.lif.theta);
        let one_minus = 1.0 - alpha;
        let (a, om) = (_mm512_set1_ps(alpha), _mm512_set1_ps(one_minus));
        let surrogate = self.params.surrogate;
        let last = steps.end.saturating_sub(1);
        for t in steps.rev() {
            for b in 0..samples {
                if t > 0 {
                    self.prefetch_own_history(t - 1, b);
                }
                let step = t * batch + b;
                let out = slot_view(&self.out_hist[step * (kt + 2)..]);
                let g: &mut [f32; N] = (&mut self.g[b * N..(b + 1) * N]).try_into().expect("N");
                let c: &mut [f32; N] =
                    (&mut vecs[(last - t) * stride + b * N..][..N]).try_into().expect("N");
                // Bit i set: neuron i did not spike at this step (its adjoint carries on).
                let keep = out.spikes().iter().fold(!0u64, |m, &i| m & !(1u64 << (i & 63)));
                for r in 0..R {
                    // SAFETY: lanes 16 r .. 16 r + 16 of `g` and `c` exist (N = 16 R).
                    unsafe {
                        let gr = if t + 1 == cfg.time_steps {
                            _mm512_setzero_ps()
                        } else {
                            _mm512_loadu_ps(g.as_ptr().add(16 * r))
                        };
                        let gr: __m512 = _mm512_mul_ps(gr, a);
                        _mm512_storeu_ps(c.as_mut_ptr().add(16 * r), _mm512_mul_ps(om, gr));
                        let kept = _mm512_maskz_mov_ps((keep >> (16 * r)) as u16, gr);
                        _mm512_storeu_ps(g.as_mut_ptr().add(16 * r), kept);
                    }
                }
                let ng = out.ids.len();
                let d = &mut self.dlds[b * kt..][..ng];
                dlds(t, b, out, d);
                if ng == 0 {
                    continue;
                }
                let uh = &self.u_hist[step * kt..][..ng];
                let sg = &mut self.cur[..ng];
                for ((x, &u), &d) in sg.iter_mut().zip(uh).zip(d.iter()) {
                    *x = surrogate.grad(u, theta) * d;
                }
                for (&x, &i) in sg.iter().zip(out.ids) {
                    let gi = g[i as usize] + x;
                    g[i as usize] = gi;
                    c[i as usize] = one_minus * gi;
                }
            }
        }
    }
}
