//! Row kernels of the tile programs: the sparse accumulate of the forward step (sum the weight
//! rows of the input spikes), the scatter of the backward step (add one vector to the gradient
//! rows of the input spikes) and its deferred form, the gather (add to each gradient row, once,
//! every vector listed for it), and the dot products of the backward step's partial `dL/dS`
//! ([`dots`], in a module of its own: their order is not the plain loop's).
//!
//! Weights are input-major (`w[j * n + i]`), so one input spike `j` selects one contiguous row of
//! `n` floats. Rows of the widths the planner makes for layers split over several tiles (1 to 32
//! lanes) are whole arrays: the sums stay in registers across all the spikes and each row costs
//! one bounds check. Wider rows (a layer on one tile) are walked in register-sized blocks of 16,
//! 8, 4, 2 and 1 lanes, looping over the spikes inside a block. Either way the rows' loads are
//! independent of each other.
//!
//! The arithmetic of the accumulate, the scatter and the gather is that of the plain loops, lane
//! by lane in spike order, so the results are bit-identical to them (and to the dense reference
//! engine). On x86-64 the same code is also compiled for AVX2 and for AVX-512F (a row of 32
//! lanes is then two registers instead of four), and the widest build the CPU runs is chosen at
//! run time ([`crate::simd`]).
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

/// Calls `$kernel` in the widest build the CPU runs (AVX-512F, then AVX2, on x86-64: detected at
/// run time by [`crate::simd`]), else `$portable`, with the same arguments.
macro_rules! dispatch {
    ($kernel:ident, $portable:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            if crate::simd::avx512() {
                // SAFETY: the CPU runs AVX-512F code (checked at run time).
                return unsafe { avx512::$kernel($($arg),*) };
            }
            if crate::simd::avx2() {
                // SAFETY: the CPU runs AVX2 code (checked at run time).
                return unsafe { avx2::$kernel($($arg),*) };
            }
        }
        $portable($($arg),*)
    }};
}

mod dots;
pub use dots::dots;

/// `out[i] (+)= sum over j in ids, in order, of w[j * n + i]` with `n = out.len()`: from zero if
/// `from_zero`, else continuing the sums already in `out`.
///
/// # Panics
/// If a row `j` of `ids` lies beyond `w` (the caller validates ids).
#[inline]
pub fn accumulate_rows(out: &mut [f32], w: &[f32], ids: &[u16], from_zero: bool) {
    dispatch!(accumulate_rows, accumulate_rows_portable(out, w, ids, from_zero))
}

/// [`accumulate_rows`] inlined into its caller, in the caller's instructions (for a caller
/// compiled for wider ones than the target's baseline; elsewhere [`accumulate_rows`] is faster).
#[inline(always)]
pub(crate) fn accumulate_rows_inline(out: &mut [f32], w: &[f32], ids: &[u16], from_zero: bool) {
    accumulate_rows_portable(out, w, ids, from_zero)
}

/// [`accumulate_rows`] in the target's baseline instructions (and, inlined into the builds that
/// `builds!` makes, in theirs).
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
    dispatch!(scatter_add, scatter_add_portable(dw, x, ids))
}

/// [`scatter_add`] in the target's baseline instructions (and, inlined into the builds that
/// `builds!` makes, in theirs).
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

/// `dw[j * n + i] += vecs[k * n + i]` for every row `j < starts.len() - 1` and every `k` of
/// `uses[starts[j]..starts[j + 1]]`, in that order, with `n` the width of the rows and vectors.
///
/// The same additions as one [`scatter_add`] of `vecs[k]` per `k` (each to the rows whose lists
/// hold `k`), in the order the lists give, so a driver that lists every row's uses in the
/// order its scatters would have run gets the same gradients bit for bit; but each row is loaded
/// and stored once for all its uses, summed in registers (two rows at a time, so that two chains
/// of additions overlap). Rows without uses are not touched.
///
/// ```
/// use spiketile_core::rows::gather_add;
/// // Two vectors of two lanes; row 0 gets vector 1, row 2 gets vectors 0 then 1.
/// let vecs = [1.0, 2.0, 10.0, 20.0];
/// let mut dw = [0.5; 6];
/// gather_add(&mut dw, 2, &vecs, &[0, 1, 1, 3], &[1, 0, 1]);
/// assert_eq!(dw, [10.5, 20.5, 0.5, 0.5, 11.5, 22.5]);
/// ```
///
/// # Panics
/// If `starts` is not ascending, a list lies beyond `uses`, a row beyond `dw` or a vector
/// beyond `vecs`.
#[inline]
pub fn gather_add(dw: &mut [f32], n: usize, vecs: &[f32], starts: &[u32], uses: &[u16]) {
    dispatch!(gather_add, gather_add_portable(dw, n, vecs, starts, uses))
}

/// [`gather_add`] in the target's baseline instructions (and, inlined into the builds that
/// `builds!` makes, in theirs).
#[inline(always)]
fn gather_add_portable(dw: &mut [f32], n: usize, vecs: &[f32], starts: &[u32], uses: &[u16]) {
    let rows = starts.len().saturating_sub(1);
    let dw = &mut dw[..rows * n];
    whole_rows!(n, N => {
        if let (Ok(rows), Ok(vecs)) = (bytemuck::try_cast_slice_mut(&mut *dw), bytemuck::try_cast_slice(vecs)) {
            return gather_rows::<N>(rows, vecs, starts, uses);
        }
    });
    in_blocks!(n, c, L => gather_block::<L>(dw, n, vecs, c, starts, uses));
}

/// [`gather_add`] for rows of exactly `N` lanes: each row stays in registers for all its uses.
#[inline(always)]
fn gather_rows<const N: usize>(
    rows: &mut [[f32; N]],
    vecs: &[[f32; N]],
    starts: &[u32],
    uses: &[u16],
) {
    // Two rows at a time: each row's additions form one chain, and two chains interleaved
    // keep the adders busy.
    let done = rows.len() / 2 * 2;
    let mut pairs = rows.chunks_exact_mut(2);
    for (j, pair) in (&mut pairs).enumerate() {
        let [ra, rb] = pair else { unreachable!() };
        let la = &uses[starts[2 * j] as usize..starts[2 * j + 1] as usize];
        let lb = &uses[starts[2 * j + 1] as usize..starts[2 * j + 2] as usize];
        let (mut a, mut b) = (*ra, *rb);
        let both = la.len().min(lb.len());
        for (&ka, &kb) in la[..both].iter().zip(&lb[..both]) {
            let (va, vb) = (&vecs[ka as usize], &vecs[kb as usize]);
            for i in 0..N {
                a[i] += va[i];
                b[i] += vb[i];
            }
        }
        for (acc, list) in [(&mut a, &la[both..]), (&mut b, &lb[both..])] {
            for &k in list {
                let v = &vecs[k as usize];
                for i in 0..N {
                    acc[i] += v[i];
                }
            }
        }
        (*ra, *rb) = (a, b);
    }
    for (row, list) in pairs.into_remainder().iter_mut().zip(starts[done..].windows(2)) {
        let mut acc = *row;
        for &k in &uses[list[0] as usize..list[1] as usize] {
            let v = &vecs[k as usize];
            for i in 0..N {
                acc[i] += v[i];
            }
        }
        *row = acc;
    }
}

#[inline(always)]
fn gather_block<const L: usize>(
    dw: &mut [f32],
    n: usize,
    vecs: &[f32],
    c: usize,
    starts: &[u32],
    uses: &[u16],
) {
    for (j, list) in starts.windows(2).enumerate() {
        let list = &uses[list[0] as usize..list[1] as usize];
        if list.is_empty() {
            continue;
        }
        let row = &mut dw[j * n + c..j * n + c + L];
        let mut acc = [0.0f32; L];
        acc.copy_from_slice(row);
        for &k in list {
            let start = k as usize * n + c;
            let v = &vecs[start..start + L];
            for i in 0..L {
                acc[i] += v[i];
            }
        }
        row.copy_from_slice(&acc);
    }
}

/// The kernels compiled for AVX2 (`avx2`) and for AVX-512F (`avx512`): the same code, so the
/// same additions in the same order.
macro_rules! builds {
    ($($feature:literal => $m:ident),*) => {$(
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        mod $m {
            /// # Safety
            /// The CPU must run the build's instructions ([`crate::simd`]).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn accumulate_rows(out: &mut [f32], w: &[f32], ids: &[u16], zero: bool) {
                super::accumulate_rows_portable(out, w, ids, zero)
            }

            /// # Safety
            /// The CPU must run the build's instructions ([`crate::simd`]).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn scatter_add(dw: &mut [f32], x: &[f32], ids: &[u16]) {
                super::scatter_add_portable(dw, x, ids)
            }

            /// # Safety
            /// The CPU must run the build's instructions ([`crate::simd`]).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn gather_add(
                dw: &mut [f32],
                n: usize,
                vecs: &[f32],
                starts: &[u32],
                uses: &[u16],
            ) {
                super::gather_add_portable(dw, n, vecs, starts, uses)
            }
        }
    )*};
}

builds!("avx2" => avx2, "avx512f" => avx512);

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

    /// The accumulate and scatter of every build this CPU runs: the dispatching ones, the
    /// portable ones, and (on x86-64) the AVX2 and AVX-512F builds where the CPU has them.
    fn accumulate_scatter_builds() -> Vec<(Accumulate, Scatter, &'static str)> {
        let mut v: Vec<(Accumulate, Scatter, &str)> = vec![
            (accumulate_rows, scatter_add, "dispatched"),
            (|o, w, i, z| accumulate_rows_portable(o, w, i, z), scatter_add_portable, "portable"),
        ];
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            if crate::simd::avx2() {
                // SAFETY: the CPU runs AVX2 code.
                v.push((
                    |o, w, i, z| unsafe { avx2::accumulate_rows(o, w, i, z) },
                    |d, x, i| unsafe { avx2::scatter_add(d, x, i) },
                    "avx2",
                ));
            }
            if crate::simd::avx512() {
                // SAFETY: the CPU runs AVX-512F code.
                v.push((
                    |o, w, i, z| unsafe { avx512::accumulate_rows(o, w, i, z) },
                    |d, x, i| unsafe { avx512::scatter_add(d, x, i) },
                    "avx512",
                ));
            }
        }
        v
    }

    /// Every width from 1 to 40 (whole rows and all block combinations), bit for bit against the
    /// plain loops, in every build this CPU runs.
    #[test]
    fn kernels_equal_plain_loops() {
        let kernels = accumulate_scatter_builds();
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

    type Gather = fn(&mut [f32], usize, &[f32], &[u32], &[u16]);

    /// Every width from 1 to 40, bit for bit against one plain scatter per use in list order
    /// (rows with several uses, one with none, uses that repeat a vector), in every build this
    /// CPU runs.
    #[test]
    fn gather_equals_scatters_in_list_order() {
        let mut gathers: Vec<(Gather, &str)> =
            vec![(gather_add, "dispatched"), (gather_add_portable, "portable")];
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            if crate::simd::avx2() {
                // SAFETY: the CPU runs AVX2 code.
                gathers.push((|d, n, v, s, u| unsafe { avx2::gather_add(d, n, v, s, u) }, "avx2"));
            }
            if crate::simd::avx512() {
                // SAFETY: the CPU runs AVX-512F code.
                gathers
                    .push((|d, n, v, s, u| unsafe { avx512::gather_add(d, n, v, s, u) }, "avx512"));
            }
        }
        // Rows 0..5: row 0 vectors 2, 0, 3; row 1 none; row 2 vector 1; row 3 vectors 3, 3, 1;
        // row 4 vector 0.
        let starts = [0u32, 3, 3, 4, 7, 8];
        let uses = [2u16, 0, 3, 1, 3, 3, 1, 0];
        for (gather, which) in gathers {
            for n in 1..=40 {
                let w = weights(5, n);
                let vecs = weights(4, n + 1);
                let vecs = &vecs[..4 * n];
                let mut plain = [0.0f32; 4096];
                plain[..5 * n].copy_from_slice(&w[..5 * n]);
                let mut got = plain;
                for (j, list) in starts.windows(2).enumerate() {
                    for &k in &uses[list[0] as usize..list[1] as usize] {
                        for i in 0..n {
                            plain[j * n + i] += vecs[k as usize * n + i];
                        }
                    }
                }
                gather(&mut got[..5 * n], n, vecs, &starts, &uses);
                assert_eq!(&got[..5 * n], &plain[..5 * n], "{which} gather, n = {n}");
            }
        }
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
