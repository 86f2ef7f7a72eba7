//! Runs: a tile through a range of steps, every sample at each step, in one call. Forward
//! ([`Tile::forward_external_run`]): a feed-forward tile, for a driver that runs its tiles ahead
//! of the layer merge; backward ([`Tile::backward_deferred_run`], module `backward`): a first
//! layer with deferred input-weight gradients, or ([`Tile::backward_deferred_run_at`], module
//! `backward_at`) the same reading its `dL/dS` where the driver points. The same arithmetic as
//! [`Tile::forward_external`] (or [`Tile::backward_external_deferred`]) step after step, bit for
//! bit; what a run saves is the per-step call: the checks of the tile's shapes once per run
//! rather than per sample and step, and (on x86-64) the row sums and the membrane update inlined
//! into one loop compiled for the widest vector instructions the CPU runs; on AVX-512F, tiles of
//! 16, 32 or 64 neurons keep their sums, membranes and adjoints in registers.

use super::{SharedWeights, StepInput, Tile};
use crate::spikes::SpikeView;
use crate::TileError;
use core::ops::Range;

mod backward;
mod backward_at;

pub use backward_at::DldsAt;

/// How many steps ahead a run asks for the history it will write ([`Tile::prefetch_forward`]).
/// Where a layer's histories exceed the caches its stores otherwise wait for every line they
/// write to come from memory (measured in the host engine, session 13: forward compute per
/// tile-sample-step, one thread, 700-1024-20 84-90 -> 76-83 ns, a batch of 256 on W 83 -> 76;
/// 700-4096-20, two threads, 34.3-34.9 -> 32.4-32.7 ms per batch; W the same). Two and four
/// steps ahead: no better.
const PREFETCH_STEPS: usize = 1;

/// A lean forward run ([`Tile::run_lanes`]) of more steps than this asks for all of its weight
/// rows in L2 as it starts: a run through a batch touches most of them. A shorter one (a layer
/// in lockstep with its merge runs one step per call) reads the few rows its spikes select.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS_AFTER: usize = 8;

/// Samples whose spikes of the step before a lean forward run ([`Tile::run_lanes`]) keeps as
/// masks (the others read them from the history, a loop over the ids). Two in tests, so that
/// their micro-batches of three take both ways.
#[cfg(target_arch = "x86_64")]
const MASKED_SAMPLES: usize = if cfg!(test) { 2 } else { 64 };

impl Tile<'_> {
    /// [`Tile::forward_external`] of every step `t` in `steps` (in order) and every sample
    /// `b < samples` (in order, at each step), integrating `input(t, b)` (`S_{l-1}[t-1]`);
    /// writes the spikes and near-threshold neurons each step found over all samples (before
    /// any capacity cut) into `found[t - steps.start]`. A recurrent tile, `steps` or `samples`
    /// beyond the tile's, `found` shorter than `steps` or shared weights of other shapes:
    /// `BadInput` before anything runs. A buffer longer than the tile's input capacity:
    /// `BadInput` at its step (the steps before it have run).
    ///
    /// ```
    /// use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, Tile, TileConfig};
    /// let cfg = TileConfig {
    ///     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
    ///     batch: 2, time_steps: 3, in_capacity: 3, layer_capacity: 2,
    ///     optimizer: OptimizerKind::Sgd,
    /// };
    /// let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    /// let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    /// tile.weights_mut().fill(30.0);
    /// // Sample 0 sees inputs 0 and 2 before steps 1 and 2, sample 1 nothing.
    /// let ids = [0u16, 2];
    /// let input = |t: usize, b: usize| match (t, b) {
    ///     (1.., 0) => SpikeView::new(&ids, 2).unwrap(),
    ///     _ => SpikeView::EMPTY,
    /// };
    /// let mut found = [[0u32; 2]; 3];
    /// tile.forward_external_run(0..3, 2, input, None, &mut found).unwrap();
    /// assert_eq!(tile.out_buffer(1, 0).spikes(), &[0, 1]); // u = 0.05 * 60 = 3 >= 1
    /// assert_eq!(tile.out_buffer(1, 1).spikes(), &[]);
    /// assert_eq!(found[1], [2, 0]); // two spikes at step 1, over both samples
    /// ```
    ///
    /// # Panics
    /// If an id of an input buffer is out of the tile's range (see [`StepInput::check`]).
    pub fn forward_external_run<'s, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        input: F,
        shared: Option<SharedWeights<'_>>,
        found: &mut [[u32; 2]],
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize) -> SpikeView<'s>,
    {
        let cfg = &self.cfg;
        if cfg.recurrent
            || steps.end > cfg.time_steps
            || samples > cfg.batch
            || found.len() < steps.len()
        {
            return Err(TileError::BadInput);
        }
        self.check_shared(&shared)?;
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            if crate::simd::avx512() {
                // A tile of up to 64 neurons in registers of 16 lanes, its last register masked
                // if they do not fill it (a readout of 20 classes).
                macro_rules! lanes {
                    ($n:literal, $r:literal, $full:literal) => {
                        self.run_lanes::<$n, $r, $full, F>(steps, samples, input, shared, found)
                    };
                }
                // SAFETY: the CPU runs AVX-512F and POPCNT code (checked at run time).
                return unsafe {
                    match self.cfg.neurons {
                        16 => lanes!(16, 1, true),
                        32 => lanes!(32, 2, true),
                        48 => lanes!(48, 3, true),
                        64 => lanes!(64, 4, true),
                        1..16 => lanes!(16, 1, false),
                        17..32 => lanes!(32, 2, false),
                        33..48 => lanes!(48, 3, false),
                        49..64 => lanes!(64, 4, false),
                        _ => self.run_avx512(steps, samples, input, shared, found),
                    }
                };
            }
            if crate::simd::avx2() {
                // SAFETY: the CPU runs AVX2 code (checked at run time).
                return unsafe { self.run_avx2(steps, samples, input, shared, found) };
            }
        }
        self.run_body::<false, F>(steps, samples, input, shared, found)
    }

    /// [`Self::run_body`] compiled for AVX-512F.
    ///
    /// # Safety
    /// The CPU must run AVX-512F code.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn run_avx512<'s, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        input: F,
        shared: Option<SharedWeights<'_>>,
        found: &mut [[u32; 2]],
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize) -> SpikeView<'s>,
    {
        self.run_body::<true, F>(steps, samples, input, shared, found)
    }

    /// [`Self::run_body`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must run AVX2 code.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn run_avx2<'s, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        input: F,
        shared: Option<SharedWeights<'_>>,
        found: &mut [[u32; 2]],
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize) -> SpikeView<'s>,
    {
        self.run_body::<true, F>(steps, samples, input, shared, found)
    }

    /// [`Self::run_body`] for a tile of up to `N = 16 R` neurons in AVX-512F, its sums and
    /// membranes in `R` registers of 16 lanes: the same multiplications, additions and compares
    /// lane by lane as [`crate::simd::integrate_chunks_avx512`] and the row sums, so the same
    /// results; a neuron that spiked at the step before is reset by a masked load of the
    /// membranes (the run keeps each sample's spikes as a mask from step to step), and the
    /// candidate buffer and its membranes are written from the masks without a branch on their
    /// counts ([`set_from_masks`]). With fewer than `N` neurons (`FULL` false: a readout of 20
    /// classes in two registers) the last register's loads and stores are masked to the
    /// neurons it holds and its other lanes never spike nor come near the threshold. W's
    /// readout (20 neurons) ran [`Self::run_body`] before session 22.
    ///
    /// # Safety
    /// The CPU must run AVX-512F and POPCNT code ([`crate::simd::avx512`] checks both); `N` is
    /// `16 R`, the tile's neuron count `n` lies in `N - 15..=N`, and `FULL` is `n == N`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    #[allow(unsafe_code)]
    unsafe fn run_lanes<'s, const N: usize, const R: usize, const FULL: bool, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        mut input: F,
        shared: Option<SharedWeights<'_>>,
        found: &mut [[u32; 2]],
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize) -> SpikeView<'s>,
    {
        use super::forward::keep_gradient_set;
        use super::{put_masks, slot_masks, slot_view};
        use crate::spikes::build_from_masks;
        use core::arch::x86_64::{
            __m512, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_mask_storeu_ps,
            _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
            _mm512_storeu_ps, _CMP_GE_OQ,
        };
        let n = self.cfg.neurons;
        assert!(N == 16 * R && n <= N && n + 16 > N && (n == N) == FULL);
        let own = core::mem::take(&mut self.w);
        let w: &[f32] = match &shared {
            Some(sh) => sh.w,
            None => own,
        };
        // One bounds check per row (a whole row of N floats each).
        let (rows, _) = w.as_chunks::<N>();
        // Fewer neurons than lanes (FULL false): the rows are `n` floats apart, and every load
        // and store of the last register is masked to its `n - 16 (R - 1)` lanes.
        let lanes = |r: usize| (((1u32 << (n - 16 * r).min(16)) - 1) & 0xffff) as u16;
        let valid = if n == 64 { !0u64 } else { (1u64 << n) - 1 };
        let cfg = self.cfg;
        let (batch, cap, kt) = (cfg.batch, cfg.in_capacity, cfg.own_capacity());
        let (alpha, theta) = (self.params.lif.alpha, self.params.lif.theta);
        let a = _mm512_set1_ps(alpha);
        let om = _mm512_set1_ps(1.0 - alpha);
        let th = _mm512_set1_ps(theta);
        let lo = _mm512_set1_ps(theta - self.params.window);
        let (mut spikes_raw, mut near_raw) = (0u64, 0u64);
        let mut result = Ok(());
        // The spikes each sample kept at the step before, as a mask (samples beyond its length
        // read them from the history).
        let (first, mut last) = (steps.start, [0u64; MASKED_SAMPLES]);
        if steps.len() > PREFETCH_ROWS_AFTER {
            crate::simd::prefetch_lines_l2(w);
        }
        'steps: for (t, found) in steps.zip(found) {
            self.prefetch_forward(t + PREFETCH_STEPS);
            let (mut step_spikes, mut step_near) = (0u32, 0u32);
            for b in 0..samples {
                let view = input(t, b);
                if !Self::fits(&view, cap) {
                    result = Err(TileError::BadInput);
                    break 'steps;
                }
                let mut acc: [__m512; R] = [_mm512_setzero_ps(); R];
                if FULL {
                    for &j in view.spikes() {
                        let row = &rows[j as usize];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: the row holds N = 16 R floats.
                            *acc = _mm512_add_ps(*acc, unsafe {
                                _mm512_loadu_ps(row.as_ptr().add(16 * r))
                            });
                        }
                    }
                } else {
                    for &j in view.spikes() {
                        let row = &w[j as usize * n..][..n];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: the lanes loaded lie within the row's n floats.
                            *acc = _mm512_add_ps(*acc, unsafe {
                                _mm512_maskz_loadu_ps(lanes(r), row.as_ptr().add(16 * r))
                            });
                        }
                    }
                }
                let cur = &mut self.cur[..n];
                let step = t * batch + b;
                // Bit i set: neuron i keeps its membrane (not reset by a spike of the step
                // before; everything resets at step 0). The spikes of the step before are this
                // run's own (in `last`) from its second step on.
                let keep = if t == 0 {
                    0
                } else if t > first && b < last.len() {
                    !last[b]
                } else {
                    let prev = slot_view(&self.out_hist[(step - batch) * (kt + 2)..]);
                    !spike_mask(prev)
                };
                let u = &mut self.u[b * n..(b + 1) * n];
                let (mut spikes, mut at_least_lower) = (0u64, 0u64);
                let mut vs: [__m512; R] = [_mm512_setzero_ps(); R];
                for (r, (&x, vr)) in acc.iter().zip(&mut vs).enumerate() {
                    // SAFETY: lanes 16 r .. 16 r + 16 of `cur` and `u` exist (N = 16 R = n),
                    // or only those of `lanes(r)` are accessed (n < N).
                    unsafe {
                        let kept = (keep >> (16 * r)) as u16;
                        let (cp, up) = (cur.as_mut_ptr().add(16 * r), u.as_mut_ptr().add(16 * r));
                        let v = if FULL {
                            _mm512_storeu_ps(cp, x);
                            let ur = _mm512_maskz_loadu_ps(kept, up);
                            let v = _mm512_add_ps(_mm512_mul_ps(a, ur), _mm512_mul_ps(om, x));
                            _mm512_storeu_ps(up, v);
                            v
                        } else {
                            _mm512_mask_storeu_ps(cp, lanes(r), x);
                            let ur = _mm512_maskz_loadu_ps(kept & lanes(r), up);
                            let v = _mm512_add_ps(_mm512_mul_ps(a, ur), _mm512_mul_ps(om, x));
                            _mm512_mask_storeu_ps(up, lanes(r), v);
                            v
                        };
                        *vr = v;
                        spikes |= u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, th)) << (16 * r);
                        at_least_lower |=
                            u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, lo)) << (16 * r);
                    }
                }
                if !FULL {
                    // The lanes past the tile's neurons (a window of `inf` takes them all).
                    (spikes, at_least_lower) = (spikes & valid, at_least_lower & valid);
                }
                let slot = &mut self.out_hist[step * (kt + 2)..][..kt + 2];
                let uh = &mut self.u_hist[step * kt..][..kt];
                // SAFETY: the CPU runs AVX-512F and POPCNT code (this function's contract).
                let (r, kept, masks) =
                    match unsafe { set_from_masks(spikes, at_least_lower, &vs, slot, uh) } {
                        Some(r) => (r, spikes, [spikes as u32, (at_least_lower & !spikes) as u32]),
                        None => {
                            // Over the tile's capacity: the general build cuts the set.
                            let r = build_from_masks(spikes, at_least_lower, &mut slot[2..]);
                            keep_gradient_set(slot, uh, u, &r);
                            (r, spike_mask(slot_view(slot)), slot_masks(slot))
                        }
                    };
                put_masks(slot, n, masks);
                if let Some(m) = last.get_mut(b) {
                    *m = kept;
                }
                step_spikes += r.raw_spikes as u32;
                step_near += r.raw_near as u32;
            }
            spikes_raw += u64::from(step_spikes);
            near_raw += u64::from(step_near);
            *found = [step_spikes, step_near];
        }
        self.stats.spikes_raw += spikes_raw;
        self.stats.near_raw += near_raw;
        self.w = own;
        result
    }

    /// The loop of [`Tile::forward_external_run`] after its checks.
    #[inline(always)]
    fn run_body<'s, const INLINE: bool, F>(
        &mut self,
        steps: Range<usize>,
        samples: usize,
        mut input: F,
        shared: Option<SharedWeights<'_>>,
        found: &mut [[u32; 2]],
    ) -> Result<(), TileError>
    where
        F: FnMut(usize, usize) -> SpikeView<'s>,
    {
        let cap = self.cfg.in_capacity;
        for (t, found) in steps.zip(found) {
            self.prefetch_forward(t + PREFETCH_STEPS);
            let (mut spikes, mut near) = (0u32, 0u32);
            for b in 0..samples {
                let view = input(t, b);
                if !Self::fits(&view, cap) {
                    return Err(TileError::BadInput);
                }
                let step = StepInput::feed_forward(view);
                let r = self.forward_step_with::<INLINE>(t, b, step, shared);
                spikes += r.raw_spikes as u32;
                near += r.raw_near as u32;
            }
            *found = [spikes, near];
        }
        Ok(())
    }
}

/// The spikes of `view` (local ids below 64) as a mask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn spike_mask(view: SpikeView<'_>) -> u64 {
    view.spikes().iter().fold(0u64, |m, &i| m | (1u64 << (i & 63)))
}

/// The candidate buffer of a lean step ([`Tile::run_lanes`]) from its masks: the ids of the
/// spikes, then of the near-threshold neurons (each lowest first), into `slot[2..]` with their
/// counts in its header, and the membranes `vs` (16 lanes per register) of that gradient set, in
/// its order, into `uh`: what [`build_from_masks`](crate::spikes::build_from_masks) and
/// [`keep_gradient_set`](super::forward::keep_gradient_set) write, without a branch on how many
/// there are (each 16-lane block's ids and membranes compressed, stored under a mask of their
/// count). `None`, having written nothing, if the set does not fit the slot (the general build
/// then cuts it).
///
/// # Safety
/// The CPU must run AVX-512F and POPCNT code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,popcnt")]
#[allow(unsafe_code)]
#[inline]
unsafe fn set_from_masks<const R: usize>(
    spikes: u64,
    at_least_lower: u64,
    vs: &[core::arch::x86_64::__m512; R],
    slot: &mut [u16],
    uh: &mut [f32],
) -> Option<crate::spikes::BuildResult> {
    use core::arch::x86_64::{
        _mm512_add_epi32, _mm512_mask_cvtepi32_storeu_epi16, _mm512_mask_storeu_ps,
        _mm512_maskz_compress_epi32, _mm512_maskz_compress_ps, _mm512_set1_epi32,
        _mm512_setr_epi32,
    };
    let near = at_least_lower & !spikes;
    let (ns, nn) = (spikes.count_ones() as usize, near.count_ones() as usize);
    let kt = slot.len().checked_sub(2)?;
    if ns + nn > kt || uh.len() < kt || R > 4 {
        return None;
    }
    let (ids, uh) = (slot[2..].as_mut_ptr(), uh.as_mut_ptr());
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut at = 0;
    for mask in [spikes, near] {
        for (r, &v) in vs.iter().enumerate() {
            let k = (mask >> (16 * r)) as u16;
            let n = k.count_ones() as usize;
            let stored = ((1u32 << n) - 1) as u16;
            let lanes = _mm512_add_epi32(iota, _mm512_set1_epi32(16 * r as i32));
            // SAFETY: `at + n <= ns + nn <= kt`: the `n` lanes stored lie within the slot's ids
            // and within `uh`; the lanes masked off are not accessed.
            unsafe {
                _mm512_mask_cvtepi32_storeu_epi16(
                    ids.add(at).cast(),
                    stored,
                    _mm512_maskz_compress_epi32(k, lanes),
                );
                _mm512_mask_storeu_ps(uh.add(at), stored, _mm512_maskz_compress_ps(k, v));
            }
            at += n;
        }
    }
    slot[0] = ns as u16;
    slot[1] = (ns + nn) as u16;
    Some(crate::spikes::BuildResult { n_spikes: ns, n_grad: ns + nn, raw_spikes: ns, raw_near: nn })
}

#[cfg(test)]
mod tests;
