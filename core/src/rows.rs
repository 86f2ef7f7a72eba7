//! Row kernels of the tile programs: the sparse accumulate of the forward step (sum the weight
//! rows of the input spikes) and the scatter of the backward step (add one vector to the gradient
//! rows of the input spikes).
//!
//! Weights are input-major (`w[j * n + i]`), so one input spike `j` selects one contiguous row of
//! `n` floats. Rows of the widths the planner makes for layers split over several tiles (1 to 32
//! lanes) are whole arrays: the sums stay in registers across all the spikes and each row costs
//! one bounds check. Wider rows (a layer on one tile) are walked in register-sized blocks of 16,
//! 8, 4, 2 and 1 lanes, looping over the spikes inside a block. Either way the rows' loads are
//! independent of each other.
//!
//! The arithmetic is that of the plain loops, lane by lane in spike order, so the results are
//! bit-identical to them (and to the dense reference engine).
//!
//! ```
//! use spiketile_core::rows::{accumulate_rows, scatter_add};
//! // Three inputs, two neurons: w[j * 2 + i].
//! let w = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
//! let mut cur = [0.0; 2];
//! accumulate_rows(&mut cur, &w, &[0, 2], true);
//! assert_eq!(cur, [101.0, 202.0]);
//! let mut dw = [0.0; 6];
//! scatter_add(&mut dw, &[0.5, -1.0], &[1]);
//! assert_eq!(dw, [0.0, 0.0, 0.5, -1.0, 0.0, 0.0]);
//! ```

/// Runs `$body` with `$c` the first lane and `L` the width of each block of 16, 8, 4, 2 and 1
/// lanes (widest first) that together cover lanes `0..$n`.
macro_rules! in_blocks {
    ($n:expr, $c:ident, L => $body:expr) => {{
        let mut $c = 0;
        while $c + 16 <= $n {
            {
                const L: usize = 16;
                $body;
            }
            $c += 16;
        }
        in_blocks!(@tail $n, $c, $body, 8, 4, 2, 1);
    }};
    (@tail $n:expr, $c:ident, $body:expr, $($w:literal),*) => {
        $(
            if $n - $c >= $w {
                {
                    const L: usize = $w;
                    $body;
                }
                $c += $w;
            }
        )*
    };
}

/// Runs `$body` with the constant `N` equal to `$n` if `$n` is a row width the planner makes
/// (1 to 32 lanes), and does nothing otherwise.
macro_rules! whole_rows {
    ($n:expr, N => $body:block) => {
        whole_rows!(@ $n, $body, 32, 20, 16, 8, 4, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15,
            17, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31)
    };
    (@ $n:expr, $body:block, $($w:literal),*) => {
        match $n {
            $($w => {
                const N: usize = $w;
                $body
            })*
            _ => {}
        }
    };
}

/// `out[i] (+)= sum over j in ids, in order, of w[j * n + i]` with `n = out.len()`: from zero if
/// `from_zero`, else continuing the sums already in `out`.
///
/// # Panics
/// If a row `j` of `ids` lies beyond `w` (the caller validates ids).
#[inline]
pub fn accumulate_rows(out: &mut [f32], w: &[f32], ids: &[u16], from_zero: bool) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: the CPU runs AVX2 code (checked at run time).
        #[allow(unsafe_code)]
        return unsafe { avx2::accumulate_rows(out, w, ids, from_zero) };
    }
    accumulate_rows_portable(out, w, ids, from_zero)
}

/// [`accumulate_rows`] in the target's baseline instructions (and, inlined into
/// `avx2::accumulate_rows`, in AVX2 ones).
#[inline(always)]
fn accumulate_rows_portable(out: &mut [f32], w: &[f32], ids: &[u16], from_zero: bool) {
    let n = out.len();
    whole_rows!(n, N => {
        if let (Ok(acc), Ok(rows)) = (<&mut [f32; N]>::try_from(&mut *out), bytemuck::try_cast_slice(w)) {
            return sum_rows::<N>(acc, rows, ids, from_zero);
        }
    });
    in_blocks!(n, c, L => sum_block::<L>(out, w, n, c, ids, from_zero));
}

/// [`accumulate_rows`] for rows of exactly `N` lanes: the sums stay in registers across all the
/// rows, and each row costs one bounds check.
#[inline(always)]
fn sum_rows<const N: usize>(out: &mut [f32; N], rows: &[[f32; N]], ids: &[u16], from_zero: bool) {
    let mut acc = if from_zero { [0.0f32; N] } else { *out };
    for &j in ids {
        let row = &rows[j as usize];
        for k in 0..N {
            acc[k] += row[k];
        }
    }
    *out = acc;
}

#[inline(always)]
fn sum_block<const L: usize>(
    out: &mut [f32],
    w: &[f32],
    n: usize,
    c: usize,
    ids: &[u16],
    from_zero: bool,
) {
    let mut acc = [0.0f32; L];
    if !from_zero {
        acc.copy_from_slice(&out[c..c + L]);
    }
    for &j in ids {
        let start = j as usize * n + c;
        let row = &w[start..start + L];
        for k in 0..L {
            acc[k] += row[k];
        }
    }
    out[c..c + L].copy_from_slice(&acc);
}

/// `dw[j * n + i] += x[i]` for every `j` in `ids`, with `n = x.len()` (ids must be distinct for
/// the result to equal one addition per spike, which a spike buffer guarantees).
///
/// # Panics
/// If a row `j` of `ids` lies beyond `dw`.
#[inline]
pub fn scatter_add(dw: &mut [f32], x: &[f32], ids: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: the CPU runs AVX2 code (checked at run time).
        #[allow(unsafe_code)]
        return unsafe { avx2::scatter_add(dw, x, ids) };
    }
    scatter_add_portable(dw, x, ids)
}

/// [`scatter_add`] in the target's baseline instructions (and, inlined into
/// `avx2::scatter_add`, in AVX2 ones).
#[inline(always)]
fn scatter_add_portable(dw: &mut [f32], x: &[f32], ids: &[u16]) {
    let n = x.len();
    whole_rows!(n, N => {
        if let (Ok(v), Ok(rows)) = (<&[f32; N]>::try_from(x), bytemuck::try_cast_slice_mut(&mut *dw)) {
            return scatter_rows::<N>(rows, v, ids);
        }
    });
    in_blocks!(n, c, L => scatter_block::<L>(dw, x, n, c, ids));
}

/// [`scatter_add`] for rows of exactly `N` lanes: one bounds check per row.
#[inline(always)]
fn scatter_rows<const N: usize>(rows: &mut [[f32; N]], x: &[f32; N], ids: &[u16]) {
    let v = *x;
    for &j in ids {
        let row = &mut rows[j as usize];
        for k in 0..N {
            row[k] += v[k];
        }
    }
}

#[inline(always)]
fn scatter_block<const L: usize>(dw: &mut [f32], x: &[f32], n: usize, c: usize, ids: &[u16]) {
    let mut v = [0.0f32; L];
    v.copy_from_slice(&x[c..c + L]);
    for &j in ids {
        let start = j as usize * n + c;
        let row = &mut dw[start..start + L];
        for k in 0..L {
            row[k] += v[k];
        }
    }
}

/// The kernels compiled for AVX2: the same code, so the same additions in the same order.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    /// # Safety
    /// The CPU must run AVX2 code ([`crate::simd::avx2`]).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn accumulate_rows(out: &mut [f32], w: &[f32], ids: &[u16], zero: bool) {
        super::accumulate_rows_portable(out, w, ids, zero)
    }

    /// # Safety
    /// The CPU must run AVX2 code ([`crate::simd::avx2`]).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scatter_add(dw: &mut [f32], x: &[f32], ids: &[u16]) {
        super::scatter_add_portable(dw, x, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(inputs: usize, n: usize) -> [f32; 4096] {
        let mut w = [0.0f32; 4096];
        let mut s = 12345u32;
        for x in w[..inputs * n].iter_mut() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *x = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
        }
        w
    }

    type Accumulate = fn(&mut [f32], &[f32], &[u16], bool);
    type Scatter = fn(&mut [f32], &[f32], &[u16]);

    /// Every width from 1 to 40 (whole rows and all block combinations), bit for bit against the
    /// plain loops: the dispatching kernels (AVX2 where the CPU has it) and the portable ones.
    #[test]
    fn kernels_equal_plain_loops() {
        let kernels: [(Accumulate, Scatter, &str); 2] = [
            (accumulate_rows, scatter_add, "dispatched"),
            (|o, w, i, z| accumulate_rows_portable(o, w, i, z), scatter_add_portable, "portable"),
        ];
        let ids = [3u16, 0, 7, 5, 1];
        for (accumulate, scatter, which) in kernels {
            for n in 1..=40 {
                let w = weights(8, n);
                let w = &w[..8 * n];
                let mut plain = [0.0f32; 40];
                for &j in &ids {
                    for i in 0..n {
                        plain[i] += w[j as usize * n + i];
                    }
                }
                let mut got = [9.0f32; 40];
                accumulate(&mut got[..n], w, &ids, true);
                assert_eq!(&got[..n], &plain[..n], "{which} accumulate, n = {n}");
                // Continuing: the rest of the ids added to a sum over the first two.
                let mut part = [0.0f32; 40];
                accumulate(&mut part[..n], w, &ids[..2], true);
                accumulate(&mut part[..n], w, &ids[2..], false);
                assert_eq!(&part[..n], &plain[..n], "{which} continued accumulate, n = {n}");

                let x: [f32; 40] = core::array::from_fn(|i| 0.25 * i as f32 - 3.0);
                let mut dw_plain = [0.0f32; 4096];
                dw_plain[..8 * n].copy_from_slice(w);
                let mut dw = dw_plain;
                for &j in &ids {
                    for i in 0..n {
                        dw_plain[j as usize * n + i] += x[i];
                    }
                }
                scatter(&mut dw[..8 * n], &x[..n], &ids);
                assert_eq!(&dw[..8 * n], &dw_plain[..8 * n], "{which} scatter, n = {n}");
            }
        }
    }

    /// The detection agrees with the standard library's.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_detection_agrees_with_std() {
        assert_eq!(crate::simd::avx2(), std::is_x86_feature_detected!("avx2"));
    }

    #[test]
    fn no_ids_gives_zero_or_leaves_the_sum() {
        let w = [1.0f32; 6];
        let mut out = [5.0f32; 3];
        accumulate_rows(&mut out, &w, &[], false);
        assert_eq!(out, [5.0; 3]);
        accumulate_rows(&mut out, &w, &[], true);
        assert_eq!(out, [0.0; 3]);
    }
}
