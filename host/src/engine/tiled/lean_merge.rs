//! The lean layer merge: a replica's tile buffers of a few steps merged cell by cell (step and
//! sample), each tile's ids copied into the layer buffer with one masked load, add and store
//! (AVX-512BW), for layers of narrow tiles whose buffers fit the layer's capacity. It writes
//! what [`TiledEngine::forward_exchange`]'s general merge writes where nothing is cut (the
//! layer buffers, the tiles' starts, their statistics), and gives up, having counted nothing,
//! at the first buffer it would have to cut: the general merge then merges those steps from
//! the start.
//!
//! The general merge goes tile after tile (a layer of a hundred tiles is too many streams for
//! the hardware to follow cell by cell), appends into scratch buffers per cell and copies them
//! into the layer buffers at the end; at W's eight tiles per replica, one pass over the cells
//! with every tile's slot of the cell read in turn keeps the counts in registers and writes each
//! id once.
//!
//! [`TiledEngine::forward_exchange`]: super::TiledEngine

use super::TiledEngine;
use spiketile_core::TileError;
use std::ops::Range;
use std::sync::OnceLock;

/// Most tiles per replica the lean merge takes (one stream of slots each).
pub(super) const LEAN_MERGE_TILES: usize = 16;

/// Most neurons per tile the lean merge takes: a tile's spikes and its near-threshold ids are
/// then at most 32 ids each, one masked register of 32 `u16` lanes.
pub(super) const LEAN_MERGE_NEURONS: usize = 32;

/// Whether the CPU runs AVX-512BW (asked once).
fn avx512bw() -> bool {
    static BW: OnceLock<bool> = OnceLock::new();
    *BW.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bw"))
}

impl TiledEngine {
    /// Whether layer `l`'s merge may take the lean way ([`Self::merge_lean`]): its replicas have
    /// at most [`LEAN_MERGE_TILES`] tiles of at most [`LEAN_MERGE_NEURONS`] neurons, the kernels
    /// may use AVX-512 ([`spiketile_core::simd::avx512`]) and the CPU runs AVX-512BW.
    pub(super) fn lean_merge_fits(&self, l: usize) -> bool {
        let plan = &self.layers[l].plan;
        self.lean_merge[l]
            && plan.splits.len() <= LEAN_MERGE_TILES
            && plan.splits.iter().all(|&(_, n)| n <= LEAN_MERGE_NEURONS)
            && spiketile_core::simd::avx512()
            && avx512bw()
    }

    /// Merges replica `(l, r)`'s tile buffers of `steps` into the layer buffers if no buffer
    /// needs a cut: step after step, sample after sample, every tile's spikes (tile order, ids
    /// offset by the tile's first neuron), then every tile's near-threshold ids; records where
    /// each tile's entries start and counts them in its statistics. Returns false at the first
    /// buffer whose spikes and near-threshold ids exceed the layer's capacity, having counted
    /// nothing (the layer buffers and starts it wrote, the general merge writes again).
    ///
    /// # Safety
    /// [`Self::lean_merge_fits`] holds for `l`; the caller's unit owns replica `(l, r)`'s tiles,
    /// layer buffers and starts of `steps` in this phase.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn merge_lean(
        &self,
        batch: usize,
        (l, r, steps): (usize, usize, Range<usize>),
    ) -> Result<bool, TileError> {
        use std::arch::x86_64::_mm512_set1_epi16;
        let lr = &self.layers[l];
        let (p_count, cap) = (lr.p(), lr.plan.capacity);
        debug_assert!(p_count <= LEAN_MERGE_TILES);
        let samples = lr.plan.samples_of(r, batch);
        // Safety (every `home`): the caller's unit owns replica (l, r)'s tiles.
        let home = |p: usize| unsafe { self.home(l, r * p_count + p) };
        let mut outs = [None; LEAN_MERGE_TILES];
        let mut firsts = [_mm512_set1_epi16(0); LEAN_MERGE_TILES];
        for p in 0..p_count {
            let home = home(p);
            outs[p] = Some(home.out_buffers()?);
            firsts[p] = _mm512_set1_epi16(home.layout.config().first_neuron as i16);
        }
        let outs = &outs[..p_count];
        let m = samples.len();
        // What each tile's buffers hold: spikes, near-threshold ids.
        let mut counted = [(0u64, 0u64); LEAN_MERGE_TILES];
        for t in steps {
            // Every tile's slots of the step after next (the hardware does not follow this many
            // streams of slots far enough ahead).
            for out in outs.iter().flatten() {
                out.prefetch_steps(t + 2..t + 3);
            }
            // Per tile: its slots of step t, their length, and its starts of the replica's
            // samples at step t.
            let mut srcs: [&[u16]; LEAN_MERGE_TILES] = [&[]; LEAN_MERGE_TILES];
            let mut words = [0usize; LEAN_MERGE_TILES];
            let mut starts: [&mut [u16]; LEAN_MERGE_TILES] = Default::default();
            for (p, out) in outs.iter().flatten().enumerate() {
                (srcs[p], words[p]) = (out.step(t), out.slot_words());
                let at = self.start_at(p, (samples.start, t));
                // Safety: tile p's starts of the replica's samples at step t are this unit's.
                starts[p] = unsafe { lr.starts.slice_mut(at, 2 * m) };
            }
            let at = (t * self.cfg.batch_size + samples.start) * (cap + 2);
            // Safety: the replica's samples' slots of layer l at step t are this unit's alone.
            let slots = unsafe { lr.buf.slice_mut(at, m * (cap + 2)) };
            for (bl, slot) in slots.chunks_exact_mut(cap + 2).enumerate() {
                // Each tile's counts (spikes, gradient set) of this sample, read once.
                let mut counts = [(0usize, 0usize); LEAN_MERGE_TILES];
                let mut ns = 0;
                for p in 0..p_count {
                    let src = &srcs[p][bl * words[p]..];
                    let (s, g) = (src[0] as usize, src[1] as usize);
                    if ns + s > cap {
                        return Ok(false);
                    }
                    counts[p] = (s, g);
                    starts[p][2 * bl] = ns as u16;
                    // Safety: `ns + s <= cap`: the ids stored lie within the slot.
                    unsafe { copy_ids(&mut slot[2 + ns..], &src[2..], s, firsts[p]) };
                    ns += s;
                }
                let mut nn = 0;
                for p in 0..p_count {
                    let (s, g) = counts[p];
                    if ns + nn + (g - s) > cap {
                        return Ok(false);
                    }
                    starts[p][2 * bl + 1] = (ns + nn) as u16;
                    let src = &srcs[p][bl * words[p] + 2 + s..];
                    // Safety: `ns + nn + g - s <= cap`, as above.
                    unsafe { copy_ids(&mut slot[2 + ns + nn..], src, g - s, firsts[p]) };
                    nn += g - s;
                    counted[p].0 += s as u64;
                    counted[p].1 += (g - s) as u64;
                }
                slot[0] = ns as u16;
                slot[1] = (ns + nn) as u16;
            }
        }
        for (p, &(spikes, near)) in counted[..p_count].iter().enumerate() {
            let stats = &mut home(p).stats;
            stats.spikes_kept += spikes;
            stats.near_kept += near;
        }
        Ok(true)
    }
}

/// `dst[..n] = src[..n] + first` lane by lane (wrapping), `n <= 32`: one load, add and store of
/// 32 `u16` lanes under the mask of the first `n`.
///
/// # Safety
/// The CPU runs AVX-512BW; `dst` and `src` hold at least `n` entries each and `n <= 32` (the
/// lanes past `n` are neither read nor written).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn copy_ids(dst: &mut [u16], src: &[u16], n: usize, first: std::arch::x86_64::__m512i) {
    use std::arch::x86_64::{_mm512_add_epi16, _mm512_mask_storeu_epi16, _mm512_maskz_loadu_epi16};
    debug_assert!(n <= 32 && n <= dst.len() && n <= src.len());
    let mask = ((1u64 << n) - 1) as u32;
    // SAFETY: the CPU runs AVX-512BW (this function's contract); the lanes under the mask lie
    // within both slices, the others are not accessed.
    unsafe {
        let ids = _mm512_maskz_loadu_epi16(mask, src.as_ptr().cast());
        _mm512_mask_storeu_epi16(dst.as_mut_ptr().cast(), mask, _mm512_add_epi16(ids, first));
    }
}
