//! The sparse spike buffer (SPEC §2) and the layer-level over-capacity policy.
//!
//! A buffer of capacity `K` holds neuron ids: `ids[0..n_spikes]` spiked (`u >= theta`),
//! `ids[n_spikes..n_grad]` did not spike but are within the gradient window
//! (`u >= theta - window`); together `ids[0..n_grad]` are the *gradient set*.
//!
//! **Over-capacity policy** (deterministic): spikes before near-threshold neurons; within each
//! group, lower neuron ids first. A layer split over tiles keeps exactly what the whole layer would
//! keep: every tile keeps up to `K` spikes and up to `K - kept spikes` near-threshold ids in id
//! order, and [`LayerMerge`] concatenates the tiles' spikes (tile order = id order) and then their
//! near-threshold ids, up to the layer capacity `K`, telling each tile how many of each it kept.
//! Every neuron that does not fit is dropped (it did not spike, for every purpose) and counted.
//!
//! ```
//! use spiketile_core::spikes::{build_into, SpikeView};
//! let u = [0.8, 1.2, -0.5, 0.6, 0.95, 0.1, 0.98];
//! let mut ids = [0u16; 4];
//! let b = build_into(&u, 1.0, 0.1, &mut ids);
//! assert_eq!((b.n_spikes, b.n_grad), (1, 3));
//! assert_eq!(&ids[..3], &[1, 4, 6]);
//! ```

use heapless::Vec;

/// What [`build_into`] found and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BuildResult {
    /// Spikes kept (`ids[0..n_spikes]`).
    pub n_spikes: usize,
    /// End of the gradient set (`ids[0..n_grad]`).
    pub n_grad: usize,
    /// Neurons at or over threshold, kept or not.
    pub raw_spikes: usize,
    /// Neurons in the window under threshold, kept or not.
    pub raw_near: usize,
}

impl BuildResult {
    /// Neurons dropped for lack of capacity.
    pub fn dropped(&self) -> usize {
        self.raw_spikes + self.raw_near - self.n_grad
    }
}

/// Membranes per block of [`build_into`]: one bit each in a `u64` mask.
const BLOCK: usize = 64;

/// The ids `0..64`, for a buffer whose gradient set is a whole block.
const IOTA: [u16; BLOCK] = {
    let mut ids = [0u16; BLOCK];
    let mut i = 0;
    while i < BLOCK {
        ids[i] = i as u16;
        i += 1;
    }
    ids
};

/// The masks of a block of at most [`BLOCK`] membranes: bit `i` of the first is set where
/// `u[i] >= theta` (a spike), of the second where `u[i] >= lower` (a spike or near it). Eight
/// lanes per vector compare (see [`crate::simd::mask_at_least`]).
#[inline(always)]
fn block_masks(u: &[f32], theta: f32, lower: f32) -> (u64, u64) {
    let chunks = u.chunks_exact(8);
    let tail_base = u.len() - chunks.remainder().len();
    let (mut spikes, mut at_least_lower) = (0u64, 0u64);
    for (i, &x) in chunks.remainder().iter().enumerate() {
        spikes |= u64::from(x >= theta) << (tail_base + i);
        at_least_lower |= u64::from(x >= lower) << (tail_base + i);
    }
    for (c, chunk) in chunks.enumerate() {
        let chunk: &[f32; 8] = chunk.try_into().expect("chunks_exact gives whole chunks");
        spikes |= u64::from(crate::simd::mask_at_least(chunk, theta)) << (8 * c);
        at_least_lower |= u64::from(crate::simd::mask_at_least(chunk, lower)) << (8 * c);
    }
    (spikes, at_least_lower)
}

/// Appends `base +` the positions of the set bits of `mask`, lowest first, to `ids[*n..]` (up to
/// its capacity); returns how many bits were set (a loop over them: few are, and the x86-64
/// baseline has no population-count instruction).
#[inline(always)]
fn push_bits(mut mask: u64, base: usize, ids: &mut [u16], n: &mut usize) -> usize {
    let mut set = 0;
    while mask != 0 {
        if *n < ids.len() {
            ids[*n] = (base + mask.trailing_zeros() as usize) as u16;
            *n += 1;
        }
        set += 1;
        mask &= mask - 1;
    }
    set
}

/// Builds a buffer from membranes into `ids` (capacity `ids.len()`), by the policy above.
/// Ids are positions in `u`; `u.len()` must fit `u16`.
///
/// Blocks of 64 membranes become two bit masks (spikes, and everything at or above the window)
/// by vector compares without branches; the ids are the set bits, spikes of every block first,
/// then the near-threshold ones. Only set bits cost work, and a tile of at most 64 neurons (the
/// usual case) is one sweep over its membranes.
#[inline]
pub fn build_into(u: &[f32], theta: f32, window: f32, ids: &mut [u16]) -> BuildResult {
    let lower = theta - window;
    let mut n = 0;
    let (raw_spikes, raw_near);
    if u.len() <= BLOCK {
        let (spikes, at_least_lower) = block_masks(u, theta, lower);
        return build_from_masks(spikes, at_least_lower, ids);
    }
    // Wider: all blocks' spikes first, then (masks again) their near-threshold neurons.
    let blocks = || u.chunks(BLOCK).enumerate().map(|(b, x)| (b * BLOCK, x));
    raw_spikes = blocks()
        .map(|(base, x)| push_bits(block_masks(x, theta, lower).0, base, ids, &mut n))
        .sum();
    let n_spikes = n;
    raw_near = blocks()
        .map(|(base, x)| {
            let (spikes, at_least_lower) = block_masks(x, theta, lower);
            push_bits(at_least_lower & !spikes, base, ids, &mut n)
        })
        .sum();
    BuildResult { n_spikes, n_grad: n, raw_spikes, raw_near }
}

/// [`build_into`] of at most 64 membranes from their masks: bit `i` of `spikes` set where
/// `u[i] >= theta`, of `at_least_lower` where `u[i] >= theta - window` (what
/// [`crate::lif::integrate_masks`] returns). The same buffer as [`build_into`] of those membranes.
///
/// ```
/// use spiketile_core::spikes::{build_from_masks, build_into};
/// let u = [0.2, 1.3, 0.95, 1.0];
/// let (mut a, mut b) = ([0u16; 4], [0u16; 4]);
/// assert_eq!(build_from_masks(0b1010, 0b1110, &mut a), build_into(&u, 1.0, 0.1, &mut b));
/// assert_eq!(a[..3], [1, 3, 2]);
/// ```
#[inline]
pub fn build_from_masks(spikes: u64, at_least_lower: u64, ids: &mut [u16]) -> BuildResult {
    let near = at_least_lower & !spikes;
    if spikes == 0 && near & near.wrapping_add(1) == 0 {
        // No spike, and the near-threshold neurons are 0..k (a readout whose whole tile is its
        // gradient set, or nothing at all): the ids without a loop over the bits.
        let k = near.trailing_ones() as usize;
        if k <= ids.len() {
            ids[..k].copy_from_slice(&IOTA[..k]);
            return BuildResult { n_spikes: 0, n_grad: k, raw_spikes: 0, raw_near: k };
        }
    }
    let mut n = 0;
    let raw_spikes = push_bits(spikes, 0, ids, &mut n);
    let n_spikes = n;
    let raw_near = push_bits(at_least_lower & !spikes, 0, ids, &mut n);
    BuildResult { n_spikes, n_grad: n, raw_spikes, raw_near }
}

/// A borrowed spike buffer: the gradient set `ids` with its first `n_spikes` entries the spikes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SpikeView<'a> {
    /// The gradient set, spikes first.
    pub ids: &'a [u16],
    /// How many of `ids` are spikes.
    pub n_spikes: usize,
}

impl<'a> SpikeView<'a> {
    /// An empty buffer (no spikes, empty gradient set).
    pub const EMPTY: SpikeView<'static> = SpikeView { ids: &[], n_spikes: 0 };

    /// A view of `ids` whose first `n_spikes` are spikes. Returns `None` if `n_spikes > ids.len()`.
    pub fn new(ids: &'a [u16], n_spikes: usize) -> Option<Self> {
        (n_spikes <= ids.len()).then_some(SpikeView { ids, n_spikes })
    }

    /// The spiking ids.
    pub fn spikes(&self) -> &'a [u16] {
        &self.ids[..self.n_spikes]
    }

    /// The non-spiking ids of the gradient set.
    pub fn near(&self) -> &'a [u16] {
        &self.ids[self.n_spikes..]
    }

    /// Size of the gradient set.
    pub fn n_grad(&self) -> usize {
        self.ids.len()
    }
}

/// A fixed-capacity spike buffer owning its ids (capacity as a type, as in `heapless`).
#[derive(Clone, Debug, Default)]
pub struct SpikeBuffer<const K: usize> {
    ids: Vec<u16, K>,
    n_spikes: usize,
    dropped: usize,
}

impl<const K: usize> SpikeBuffer<K> {
    /// Builds the buffer of membranes `u` by the over-capacity policy.
    pub fn from_membranes(u: &[f32], theta: f32, window: f32) -> Self {
        let mut ids = [0u16; K];
        let r = build_into(u, theta, window, &mut ids);
        let mut buf = SpikeBuffer { ids: Vec::new(), n_spikes: r.n_spikes, dropped: r.dropped() };
        for &id in &ids[..r.n_grad] {
            // Cannot fail: n_grad <= K.
            let _ = buf.ids.push(id);
        }
        buf
    }

    /// The gradient set, spikes first.
    pub fn ids(&self) -> &[u16] {
        &self.ids
    }

    /// Number of spikes.
    pub fn n_spikes(&self) -> usize {
        self.n_spikes
    }

    /// Size of the gradient set.
    pub fn n_grad(&self) -> usize {
        self.ids.len()
    }

    /// Neurons that did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// A borrowed view.
    pub fn view(&self) -> SpikeView<'_> {
        SpikeView { ids: &self.ids, n_spikes: self.n_spikes }
    }
}

/// The step [`LayerMerge`] repeats: appends `ids + offset` to `out[len..]` as far as capacity
/// `out.len()` allows; returns how many were taken (a prefix of `ids`). Drivers that merge many
/// samples at once keep one `len` per sample and call this directly, in the same order.
pub fn append(out: &mut [u16], len: usize, ids: &[u16], offset: usize) -> usize {
    let take = ids.len().min(out.len().saturating_sub(len));
    for (dst, &id) in out[len..len + take].iter_mut().zip(ids) {
        *dst = (id as usize + offset) as u16;
    }
    take
}

/// Merges the buffers of a layer's tiles into the layer's buffer of capacity `out.len()`.
///
/// Push every tile's spikes in tile order with [`LayerMerge::push_spikes`], then every tile's
/// near-threshold ids with [`LayerMerge::push_near`]; each push returns how many of them the layer
/// kept (a prefix), which the tile then commits. Ids are offset to global layer ids.
///
/// ```
/// use spiketile_core::spikes::LayerMerge;
/// let mut out = [0u16; 3];
/// let mut m = LayerMerge::new(&mut out);
/// assert_eq!(m.push_spikes(&[1], 0), 1); // tile 0 owns neurons 0..4
/// assert_eq!(m.push_spikes(&[0, 2], 4), 2); // tile 1 owns neurons 4..8
/// assert_eq!(m.push_near(&[3], 0), 0); // full
/// let (n_spikes, n_grad) = m.finish();
/// assert_eq!((n_spikes, n_grad), (3, 3));
/// assert_eq!(out, [1, 4, 6]);
/// ```
#[derive(Debug)]
pub struct LayerMerge<'a> {
    out: &'a mut [u16],
    len: usize,
    n_spikes: Option<usize>,
}

impl<'a> LayerMerge<'a> {
    /// Starts an empty layer buffer over `out`.
    pub fn new(out: &'a mut [u16]) -> Self {
        LayerMerge { out, len: 0, n_spikes: None }
    }

    fn push(&mut self, ids: &[u16], offset: usize) -> usize {
        let take = append(self.out, self.len, ids, offset);
        self.len += take;
        take
    }

    /// Appends a tile's spikes (local ids + `offset`); returns how many fit.
    ///
    /// # Panics
    /// If called after [`LayerMerge::push_near`] (a programming error).
    pub fn push_spikes(&mut self, ids: &[u16], offset: usize) -> usize {
        assert!(self.n_spikes.is_none(), "push all spikes before near-threshold ids");
        self.push(ids, offset)
    }

    /// Appends a tile's near-threshold ids; returns how many fit.
    pub fn push_near(&mut self, ids: &[u16], offset: usize) -> usize {
        if self.n_spikes.is_none() {
            self.n_spikes = Some(self.len);
        }
        self.push(ids, offset)
    }

    /// `(n_spikes, n_grad)` of the merged buffer `out[..n_grad]`.
    pub fn finish(self) -> (usize, usize) {
        (self.n_spikes.unwrap_or(self.len), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poster_example() {
        let u = [0.8, 1.2, -0.5, 0.6, 0.95, 0.1, 0.98];
        let b = SpikeBuffer::<4>::from_membranes(&u, 1.0, 0.1);
        assert_eq!(b.ids(), &[1, 4, 6]);
        assert_eq!(b.n_spikes(), 1);
        assert_eq!(b.n_grad(), 3);
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn over_capacity_keeps_spikes_first_and_lowest_ids() {
        let u = [0.95, 1.5, 0.99, 2.0, 1.0, 0.0];
        let b = SpikeBuffer::<2>::from_membranes(&u, 1.0, 0.1);
        assert_eq!(b.ids(), &[1, 3]);
        assert_eq!((b.n_spikes(), b.dropped()), (2, 3));
        let b = SpikeBuffer::<4>::from_membranes(&u, 1.0, 0.1);
        assert_eq!(b.ids(), &[1, 3, 4, 0]);
        assert_eq!(b.view().near(), &[0]);
    }

    #[test]
    fn infinite_window_takes_every_neuron() {
        let u = [-5.0, 1.0, 0.2];
        let b = SpikeBuffer::<3>::from_membranes(&u, 1.0, f32::INFINITY);
        assert_eq!(b.ids(), &[1, 0, 2]);
    }

    #[test]
    fn nan_and_infinities_follow_the_comparisons() {
        // NaN is neither a spike nor near; +inf spikes; -inf is below any window but an
        // infinite one. Small (<= 64) and large widths take different paths.
        for width in [10, 70] {
            let mut u = [0.0f32; 70];
            u[1] = f32::NAN;
            u[3] = f32::INFINITY;
            u[5] = 0.95;
            u[8] = f32::NEG_INFINITY;
            let mut ids = [0u16; 70];
            let r = build_into(&u[..width], 1.0, 0.1, &mut ids);
            assert_eq!((r.n_spikes, r.n_grad), (1, 2), "width {width}");
            assert_eq!(&ids[..2], &[3, 5]);
            let r = build_into(&u[..width], 1.0, f32::INFINITY, &mut ids);
            // Every non-NaN neuron is in the window: all but u[1] (and u[3] spikes).
            assert_eq!((r.n_spikes, r.n_grad), (1, width - 1), "width {width}");
            assert_eq!(ids[0], 3);
        }
    }

    /// Whether `build_into` (threshold 1, window 0.1) builds the buffer policy written as
    /// filters: spikes (`u >= 1.0`) then near-threshold neurons (`0.9 <= u < 1.0`), ascending,
    /// up to `cap`.
    fn assert_builds_plain_policy(u: &[f32], cap: usize) {
        let mut plain = [0u16; 200];
        let mut n = 0;
        let spikes = (0..u.len()).filter(|&i| u[i] >= 1.0);
        let near = (0..u.len()).filter(|&i| u[i] < 1.0 && u[i] >= 0.9);
        for i in spikes.clone() {
            if n < cap {
                plain[n] = i as u16;
                n += 1;
            }
        }
        let n_spikes = n;
        for i in near.clone() {
            if n < cap {
                plain[n] = i as u16;
                n += 1;
            }
        }
        let want =
            BuildResult { n_spikes, n_grad: n, raw_spikes: spikes.count(), raw_near: near.count() };
        let mut ids = [0u16; 200];
        let r = build_into(u, 1.0, 0.1, &mut ids[..cap]);
        assert_eq!(r, want, "width {} cap {cap} {u:?}", u.len());
        assert_eq!(&ids[..n], &plain[..n], "width {} cap {cap} {u:?}", u.len());
    }

    /// Construction against the policy written as filters, over several widths and capacities.
    #[test]
    fn build_into_equals_the_plain_policy() {
        let mut seed = 99u32;
        let mut u = [0.0f32; 200];
        for width in [1, 7, 20, 32, 63, 64, 65, 130, 200] {
            for x in u[..width].iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *x = (seed >> 8) as f32 / (1u32 << 24) as f32 * 1.3;
            }
            let u = &u[..width];
            for cap in [0, 1, 3, 10, width] {
                assert_builds_plain_policy(u, cap);
            }
        }
    }

    /// A tile whose near-threshold neurons are its first `k` and none spikes takes its ids
    /// without the loop over the bits: the same buffer as the policy, for every width up to 64
    /// and every `k`, at capacities below, at and above `k`; and the cases next to it (a hole in
    /// the run, one spike, a run not starting at 0) take the loop, with the same result.
    #[test]
    fn runs_of_near_ids_from_zero_equal_the_plain_policy() {
        for width in 1..=64 {
            for k in 0..=width {
                let mut variants = [[0.0f32; 64]; 4];
                for (v, u) in variants.iter_mut().enumerate() {
                    u[..k].fill(0.95);
                    match v {
                        1 if k > 2 => u[k / 2] = 0.5,
                        2 if k > 0 => u[k - 1] = 1.5,
                        3 if k > 0 => u[0] = 0.0,
                        _ => {}
                    }
                }
                for u in &variants {
                    let u = &u[..width];
                    for cap in [0, k.saturating_sub(1), k, width] {
                        assert_builds_plain_policy(u, cap);
                    }
                }
            }
        }
    }

    /// Splitting a layer over tiles and merging keeps exactly what one tile keeps.
    #[test]
    fn merge_of_tiles_equals_whole_layer() {
        let u: [f32; 12] = [1.1, 0.95, 0.2, 1.3, 0.91, 1.0, 0.99, 0.5, 1.7, 0.92, 0.0, 1.2];
        for cap in 1..=12 {
            let mut whole = [0u16; 12];
            let w = build_into(&u, 1.0, 0.1, &mut whole[..cap]);
            for split in [[0usize, 5, 12], [0, 1, 12], [0, 11, 12]] {
                let mut tile_ids = [[0u16; 12]; 2];
                let mut res = [BuildResult::default(); 2];
                for k in 0..2 {
                    let part = &u[split[k]..split[k + 1]];
                    let kt = cap.min(part.len());
                    res[k] = build_into(part, 1.0, 0.1, &mut tile_ids[k][..kt]);
                }
                let mut out = [0u16; 12];
                let mut m = LayerMerge::new(&mut out[..cap]);
                for k in 0..2 {
                    m.push_spikes(&tile_ids[k][..res[k].n_spikes], split[k]);
                }
                for k in 0..2 {
                    m.push_near(&tile_ids[k][res[k].n_spikes..res[k].n_grad], split[k]);
                }
                let (ns, ng) = m.finish();
                assert_eq!((ns, ng), (w.n_spikes, w.n_grad), "cap {cap}");
                assert_eq!(&out[..ng], &whole[..w.n_grad], "cap {cap} split {split:?}");
            }
        }
    }
}
