//! The dot products of the backward step: a tile's partial `dL/dS` for each id of its source
//! buffer is the dot product of that input's weight row with the step's `dL/dc` vector.
//!
//! Each dot is taken in eight running sums, as an 8-lane vector unit takes it: sum `k` adds the
//! products of elements `k`, `k + 8`, `k + 16`, ... in order (the first chunk's products are
//! the sums' first values; past the row's end, up to a multiple of 8, a chunk's missing products
//! are `+0.0`), and the eight sums are then added pairwise,
//! `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`. Every build (the baseline's, the AVX2
//! one, a microcontroller's scalar one) does exactly these multiplications and additions, so the
//! results are bit-identical everywhere; they differ from a dot taken element after element only
//! by the rounding of a different order of the same sum.
//!
//! Why not element after element: that is one chain of dependent additions per dot (a 20-class
//! readout's, 20 long), which the CPU runs at the adder's latency however many dots it
//! interleaves, while here a dot is a few vector multiplications and additions.
//!
//! ```
//! use spiketile_core::rows::dots;
//! // Three inputs, two neurons: w[j * 2 + i].
//! let w = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
//! let mut out = [0.0; 2];
//! dots(&mut out, &w, &[2, 0], &[0.5, -1.0]);
//! assert_eq!(out, [-150.0, -1.5]);
//! ```

/// The running sums of a dot (see the module docs).
const LANES: usize = 8;

/// `out[k] = dot(w[ids[k] * n..][..n], c)` for every id, with `n = c.len()`, in the order of
/// the module docs (entries of `out` past `ids.len()` are left alone).
///
/// # Panics
/// If a row `j` of `ids` lies beyond `w` (the caller validates ids).
#[inline]
pub fn dots(out: &mut [f32], w: &[f32], ids: &[u16], c: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: the CPU runs AVX2 code (checked at run time).
        #[allow(unsafe_code)]
        return unsafe { avx2::dots(out, w, ids, c) };
    }
    dots_portable(out, w, ids, c)
}

/// [`dots`] one element at a time, in the order of the module docs.
fn dots_portable(out: &mut [f32], w: &[f32], ids: &[u16], c: &[f32]) {
    let n = c.len();
    for (o, &j) in out.iter_mut().zip(ids) {
        let row = &w[j as usize * n..][..n];
        let product = |i: usize| if i < n { row[i] * c[i] } else { 0.0 };
        let mut sums: [f32; LANES] = core::array::from_fn(product);
        let mut at = LANES;
        while at < n {
            for (k, s) in sums.iter_mut().enumerate() {
                *s += product(at + k);
            }
            at += LANES;
        }
        let h = [sums[0] + sums[4], sums[1] + sums[5], sums[2] + sums[6], sums[3] + sums[7]];
        *o = (h[0] + h[2]) + (h[1] + h[3]);
    }
}

/// [`dots`] in AVX2 vectors: one 8-lane multiplication and addition per chunk (the last chunk
/// loaded under a mask, its missing lanes zeros), the halving additions of the module docs.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use core::arch::x86_64::*;

    /// # Safety
    /// The CPU must run AVX2 code ([`crate::simd::avx2`]).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots(out: &mut [f32], w: &[f32], ids: &[u16], c: &[f32]) {
        let n = c.len();
        // Rows of the widths the planner makes: the chunks known when compiled, and `c`'s chunks
        // kept in registers across the ids.
        whole_rows!(n, N => {
            // SAFETY: as this function's.
            return unsafe { rows::<N>(out, w, ids, c) };
        });
        // SAFETY: as this function's.
        unsafe { rows::<0>(out, w, ids, c) }
    }

    /// The dots of rows of `N` lanes (`N == c.len()`), or of `c.len()` lanes if `N` is 0.
    ///
    /// # Safety
    /// As [`dots`].
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn rows<const N: usize>(out: &mut [f32], w: &[f32], ids: &[u16], c: &[f32]) {
        let n = if N == 0 { c.len() } else { N };
        debug_assert_eq!(n, c.len());
        let (whole, tail) = (n / 8, n % 8);
        // Lanes below `tail` of the last chunk are loaded, the others are zeros (nothing read).
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail as i32), lanes);
        for (o, &j) in out.iter_mut().zip(ids) {
            let row = &w[j as usize * n..][..n];
            // SAFETY: every load lies within `row` and `c` (both `n` floats): whole chunks below
            // `8 * whole`, the masked one from there on.
            unsafe {
                let (r, cp) = (row.as_ptr(), c.as_ptr());
                let mut sums = _mm256_setzero_ps();
                for k in 0..whole {
                    let p = _mm256_mul_ps(
                        _mm256_loadu_ps(r.add(8 * k)),
                        _mm256_loadu_ps(cp.add(8 * k)),
                    );
                    sums = if k == 0 { p } else { _mm256_add_ps(sums, p) };
                }
                if tail > 0 {
                    let at = 8 * whole;
                    let rt = _mm256_maskload_ps(r.add(at), mask);
                    let ct = _mm256_maskload_ps(cp.add(at), mask);
                    let p = _mm256_mul_ps(rt, ct);
                    sums = if whole == 0 { p } else { _mm256_add_ps(sums, p) };
                }
                let h = _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps::<1>(sums));
                let q = _mm_add_ps(h, _mm_movehl_ps(h, h));
                *o = _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps::<1>(q, q)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{dots, dots_portable};

    /// The order of the module docs, written out plainly: eight sums over the row's elements
    /// padded with zeros to a multiple of eight, then the pairwise additions.
    fn reference(row: &[f32], c: &[f32]) -> f32 {
        let padded = row.len().div_ceil(8).max(1) * 8;
        let mut sums = [0.0f32; 8];
        for i in 0..padded {
            let p = if i < row.len() { row[i] * c[i] } else { 0.0 };
            sums[i % 8] = if i < 8 { p } else { sums[i % 8] + p };
        }
        let (a, b) =
            ((sums[0] + sums[4]) + (sums[2] + sums[6]), (sums[1] + sums[5]) + (sums[3] + sums[7]));
        a + b
    }

    type Dots = fn(&mut [f32], &[f32], &[u16], &[f32]);

    /// Every width from 1 to 70 (the rows of 1 to 32 lanes and the wider ones), bit for bit
    /// against the plain order, dispatched (AVX2 where the CPU has it) and portable; and within
    /// rounding of the dot taken element after element.
    #[test]
    fn dots_equal_the_plain_order_bit_for_bit() {
        let kernels: [(Dots, &str); 2] = [(dots, "dispatched"), (dots_portable, "portable")];
        let ids = [3u16, 0, 7, 5, 1, 3];
        for (kernel, which) in kernels {
            for n in 1..=70 {
                let mut s = 12345u32 + n as u32;
                let mut next = || {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
                };
                let w: Vec<f32> = (0..8 * n).map(|_| next()).collect();
                let c: Vec<f32> = (0..n).map(|_| next()).collect();
                let mut out = vec![f32::NAN; ids.len() + 1];
                kernel(&mut out, &w, &ids, &c);
                for (k, &j) in ids.iter().enumerate() {
                    let row = &w[j as usize * n..][..n];
                    let want = reference(row, &c);
                    assert_eq!(out[k].to_bits(), want.to_bits(), "{which}, n = {n}, id {k}");
                    let serial = row.iter().zip(&c).fold(0.0f32, |a, (x, y)| a + x * y);
                    let scale: f32 = row.iter().zip(&c).map(|(x, y)| (x * y).abs()).sum();
                    assert!((out[k] - serial).abs() <= 1e-6 * scale, "{which}, n = {n}");
                }
                assert!(out[ids.len()].is_nan(), "{which}, n = {n}: an entry past the ids");
            }
        }
    }

    /// A negative zero product is summed like any other (the padding's `+0.0` included), the
    /// same way in both builds.
    #[test]
    fn signed_zeros_sum_alike() {
        let kernels: [Dots; 2] = [dots, dots_portable];
        for n in [1usize, 3, 8, 20, 32, 33] {
            let w = vec![-0.0f32; n];
            let c = vec![1.0f32; n];
            let want = reference(&w, &c);
            for kernel in kernels {
                let mut out = [f32::NAN];
                kernel(&mut out, &w, &[0], &c);
                assert_eq!(out[0].to_bits(), want.to_bits(), "n = {n}");
            }
        }
    }
}
