//! Backward runs whose `dL/dS` a driver points at rather than copies
//! ([`Tile::backward_deferred_run_at`]): for each tile-sample-step the driver names where the
//! entries of the tile's spikes and of its near-threshold ids lie (a layer buffer's two runs,
//! [`DldsAt`]), and the tile reads them itself. On AVX-512F, for tiles of 16 or 32 neurons, a
//! step then runs without a branch on how many entries it has: the spike and near-threshold
//! masks are the ones the forward pass kept in the buffer's slot (computed from the ids only
//! where the slot has no room for them: a nearly full buffer), and the gradient set's membranes
//! and `dL/dS` are moved to their neurons' lanes by expansion (each run of a tile's buffer is
//! ascending, as the tile builds it and as a merge's cut keeps it), so that the surrogate terms
//! are added in lanes. The same arithmetic as [`Tile::backward_deferred_run`], bit for bit.
//! (Computing the masks from the ids in vector registers instead cost more than the branches it
//! saved: docs/performance.md.)

use super::super::Tile;
use crate::spikes::SpikeView;
use crate::TileError;
use core::ops::Range;

/// Where one tile-sample-step's `dL/dS` entries lie (see [`Tile::backward_deferred_run_at`]):
/// `spikes[k]` belongs to the buffer's `k`-th spike, `near[k]` to its `k`-th near-threshold id.
/// Each is read as `0.0 + x`, as a gather from partials copies it; longer slices are fine.
#[derive(Clone, Copy, Debug)]
pub struct DldsAt<'p> {
    /// The spikes' entries (at least as many as the buffer's spikes).
    pub spikes: &'p [f32],
    /// The near-threshold ids' entries (at least as many as the buffer has).
    pub near: &'p [f32],
}

impl Tile<'_> {
    /// [`Tile::backward_deferred_run`], with each step's `dL/dS` read where the driver points:
    /// `at(t, b, buffer)` names where the entries of the tile's buffer of step `t`, sample `b`
    /// lie, or `None` if they are all zero (nothing above the step). The arithmetic is the same,
    /// bit for bit; the tile's `dL/dS` in-buffer and scratch are left alone.
    ///
    /// `BadInput` as [`Tile::backward_deferred_run`], before anything runs; `BadInput` if a
    /// step's entries are fewer than its buffer's (the run's vectors and the tile's adjoints are
    /// then unspecified).
    ///
    /// ```
    /// use spiketile_core::{DldsAt, NeuronParams, OptimizerKind, SpikeView, Tile, TileConfig};
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
    /// let ones = [1.0f32; 2];
    /// let at = |_t: usize, _b: usize, _buf: SpikeView<'_>| Some(DldsAt { spikes: &ones, near: &ones });
    /// let mut vecs = [0.0f32; 4];
    /// tile.backward_deferred_run_at(0..2, 1, at, &mut vecs, 2).unwrap();
    /// assert!(vecs[..2].iter().all(|&c| c > 0.0)); // step 1: both neurons spiked
    /// ```
    pub fn backward_deferred_run_at<'p, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        mut at: F,
        vecs: &mut [f32],
        stride: usize,
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize, SpikeView<'_>) -> Option<DldsAt<'p>>,
    {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        if crate::simd::avx512() && matches!(self.cfg.neurons, 16 | 32) {
            self.check_back_run(&steps, samples, vecs, stride)?;
            // SAFETY: the CPU runs AVX-512F and POPCNT code (checked at run time); N = 16 R
            // neurons; the run's checks hold.
            return unsafe {
                match self.cfg.neurons {
                    16 => self.back_lanes_at::<16, 1, F>(steps, samples, at, vecs, stride),
                    _ => self.back_lanes_at::<32, 2, F>(steps, samples, at, vecs, stride),
                }
            };
        }
        let mut short = false;
        let dlds = |t: usize, b: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
            let (ns, nn) = (buf.n_spikes, buf.near().len());
            let (d0, d1) = dst.split_at_mut(ns);
            match at(t, b, buf) {
                Some(src) if src.spikes.len() >= ns && src.near.len() >= nn => {
                    d0.iter_mut().zip(src.spikes).for_each(|(d, &x)| *d = 0.0 + x);
                    d1.iter_mut().zip(src.near).for_each(|(d, &x)| *d = 0.0 + x);
                }
                Some(_) => {
                    short = true;
                    dst.fill(0.0);
                }
                None => dst.fill(0.0),
            }
        };
        self.backward_deferred_run(steps, samples, dlds, vecs, stride)?;
        if short {
            return Err(TileError::BadInput);
        }
        Ok(())
    }

    /// [`Tile::backward_deferred_run_at`] for a tile of `N = 16 R` neurons (`R` 1 or 2) in
    /// AVX-512F: the adjoints of a sample in `R` registers; the step's spike mask `S` and
    /// near-threshold mask from its buffer's slot (see `MASKED_NEURONS`; from its ids where the
    /// slot has no room for them); the gradient set's membranes and `dL/dS` loaded contiguously
    /// and expanded into the lanes of `S` (the spikes' entries, ascending) and of the near mask
    /// (theirs); the surrogate terms added where the set is, in lanes. The same operations on
    /// each neuron's values as [`Tile::backward_step`].
    ///
    /// # Safety
    /// The CPU must run AVX-512F and POPCNT code; `N` is the tile's neuron count and `16 R`, `R`
    /// 1 or 2; the checks of [`Tile::backward_deferred_run`] hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    #[allow(unsafe_code)]
    pub(super) unsafe fn back_lanes_at<'p, const N: usize, const R: usize, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        mut at: F,
        vecs: &mut [f32],
        stride: usize,
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize, SpikeView<'_>) -> Option<DldsAt<'p>>,
    {
        use crate::tile::{get_masks, slot_view};
        use crate::Surrogate;
        use core::arch::x86_64::{
            __m512, _mm512_add_epi32, _mm512_add_ps, _mm512_loadu_ps, _mm512_mask_add_ps,
            _mm512_mask_expand_ps, _mm512_maskz_expand_ps, _mm512_maskz_loadu_ps,
            _mm512_maskz_mov_ps, _mm512_mul_ps, _mm512_permutexvar_ps, _mm512_set1_epi32,
            _mm512_set1_ps, _mm512_setr_epi32, _mm512_setzero_ps, _mm512_storeu_ps,
        };
        assert!((R == 1 || R == 2) && N == 16 * R && self.cfg.neurons == N);
        let cfg = self.cfg;
        let (batch, kt) = (cfg.batch, cfg.own_capacity());
        let (alpha, theta) = (self.params.lif.alpha, self.params.lif.theta);
        let (a, om) = (_mm512_set1_ps(alpha), _mm512_set1_ps(1.0 - alpha));
        let Surrogate::SuperSpike { beta } = self.params.surrogate;
        let (be, th, one) = (_mm512_set1_ps(beta), _mm512_set1_ps(theta), _mm512_set1_ps(1.0));
        let zero = _mm512_setzero_ps();
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        // The first `k` lanes (k <= 16).
        let first = |k: u32| ((1u32 << k) - 1) as u16;
        let last = steps.end.saturating_sub(1);
        for t in steps.rev() {
            for b in 0..samples {
                if t > 0 {
                    self.prefetch_own_history(t - 1, b);
                }
                let step = t * batch + b;
                let slot = &self.out_hist[step * (kt + 2)..][..kt + 2];
                let out = slot_view(slot);
                let (ns, ng) = (out.n_spikes, out.ids.len());
                let src = at(t, b, out);
                if let Some(src) = src {
                    if src.spikes.len() < ns || src.near.len() < ng - ns {
                        return Err(TileError::BadInput);
                    }
                }
                // The spikes and near-threshold ids as masks (the forward pass's, kept in the
                // slot where its ids leave room).
                let [s_mask, n_mask] = get_masks(slot);
                debug_assert_eq!(
                    (s_mask.count_ones() as usize, n_mask.count_ones() as usize),
                    (ns, ng - ns),
                    "the slot's masks are its ids'"
                );
                let uh = self.u_hist[step * kt..][..ng].as_ptr();
                let g: &mut [f32; N] = (&mut self.g[b * N..(b + 1) * N]).try_into().expect("N");
                let c: &mut [f32; N] =
                    (&mut vecs[(last - t) * stride + b * N..][..N]).try_into().expect("N");
                // The surrogate terms of a set of at most 16 entries are taken once, in the set's
                // order (spikes, then near-threshold ids), and moved to their lanes; a larger set
                // takes them register by register, in lanes.
                let packed = ng <= 16;
                // SAFETY: the entries loaded lie within the set's ng membranes and within the
                // driver's entries (ns spikes, ng - ns near-threshold ids; checked above).
                let sg_set = match (packed, src) {
                    (false, _) => zero,
                    (true, src) => unsafe {
                        let u = _mm512_maskz_loadu_ps(first(ng as u32), uh);
                        let d = match src {
                            Some(src) => {
                                let ds =
                                    _mm512_maskz_loadu_ps(first(ns as u32), src.spikes.as_ptr());
                                let dn = _mm512_maskz_loadu_ps(
                                    first((ng - ns) as u32),
                                    src.near.as_ptr(),
                                );
                                let near_lanes = first(ng as u32) & !first(ns as u32);
                                _mm512_add_ps(zero, _mm512_mask_expand_ps(ds, near_lanes, dn))
                            }
                            None => zero,
                        };
                        surrogate_terms(u, d, (be, th, one))
                    },
                };
                let (mut s_before, mut n_before) = (0usize, 0usize);
                for r in 0..R {
                    let (s, nr) = ((s_mask >> (16 * r)) as u16, (n_mask >> (16 * r)) as u16);
                    // As many entries as the masks' bits (the ids, distinct), never more than
                    // the buffer has left.
                    let cs = s.count_ones().min((ns - s_before) as u32);
                    let cn = nr.count_ones().min((ng - ns - n_before) as u32);
                    // SAFETY: lanes 16 r .. 16 r + 16 of `g` and `c` exist (N = 16 R); the
                    // entries loaded lie within the gradient set's membranes (`s_before + cs <=
                    // ns` spikes, then `n_before + cn <= ng - ns` near-threshold ids) and within
                    // the driver's entries (checked above).
                    unsafe {
                        let gr = if t + 1 == cfg.time_steps {
                            _mm512_setzero_ps()
                        } else {
                            _mm512_loadu_ps(g.as_ptr().add(16 * r))
                        };
                        let gr: __m512 = _mm512_mul_ps(gr, a);
                        let kept = _mm512_maskz_mov_ps(!s, gr);
                        let sg = if packed {
                            // This register's spikes' terms start at the set's entry s_before,
                            // its near-threshold ids' at ns + n_before.
                            let from = |k: usize| {
                                _mm512_permutexvar_ps(
                                    _mm512_add_epi32(iota, _mm512_set1_epi32(k as i32)),
                                    sg_set,
                                )
                            };
                            let spikes = _mm512_maskz_expand_ps(s, from(s_before));
                            _mm512_mask_expand_ps(spikes, nr, from(ns + n_before))
                        } else {
                            let us = _mm512_maskz_loadu_ps(first(cs), uh.add(s_before));
                            let un = _mm512_maskz_loadu_ps(first(cn), uh.add(ns + n_before));
                            let u = _mm512_mask_expand_ps(_mm512_maskz_expand_ps(s, us), nr, un);
                            let d = match src {
                                Some(src) => {
                                    let ds = _mm512_maskz_loadu_ps(
                                        first(cs),
                                        src.spikes.as_ptr().add(s_before),
                                    );
                                    let dn = _mm512_maskz_loadu_ps(
                                        first(cn),
                                        src.near.as_ptr().add(n_before),
                                    );
                                    let d = _mm512_mask_expand_ps(
                                        _mm512_maskz_expand_ps(s, ds),
                                        nr,
                                        dn,
                                    );
                                    _mm512_add_ps(zero, d)
                                }
                                None => zero,
                            };
                            surrogate_terms(u, d, (be, th, one))
                        };
                        let gi = _mm512_mask_add_ps(kept, s | nr, kept, sg);
                        _mm512_storeu_ps(g.as_mut_ptr().add(16 * r), gi);
                        _mm512_storeu_ps(c.as_mut_ptr().add(16 * r), _mm512_mul_ps(om, gi));
                    }
                    s_before += cs as usize;
                    n_before += cn as usize;
                }
            }
        }
        Ok(())
    }
}

/// [`crate::Surrogate::grad`] of the membranes `u`, times `d`, lane by lane: `1 / (x x) d` with
/// `x = beta |u - theta| + 1` (`(beta, theta, 1)` in every lane of `consts`).
///
/// # Safety
/// The CPU must run AVX-512F code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
#[inline]
unsafe fn surrogate_terms(
    u: core::arch::x86_64::__m512,
    d: core::arch::x86_64::__m512,
    (be, th, one): (
        core::arch::x86_64::__m512,
        core::arch::x86_64::__m512,
        core::arch::x86_64::__m512,
    ),
) -> core::arch::x86_64::__m512 {
    use core::arch::x86_64::{
        _mm512_abs_ps, _mm512_add_ps, _mm512_div_ps, _mm512_mul_ps, _mm512_sub_ps,
    };
    let x = _mm512_add_ps(_mm512_mul_ps(be, _mm512_abs_ps(_mm512_sub_ps(u, th))), one);
    _mm512_mul_ps(_mm512_div_ps(one, _mm512_mul_ps(x, x)), d)
}
