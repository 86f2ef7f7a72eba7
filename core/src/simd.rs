//! The few places where the core uses the CPU's vector instructions directly: which ones the
//! kernels may use ([`level`]: detected once at run time, and capped by [`limit`]), an 8-lane
//! compare mask for the spike-buffer construction, the LIF update's vector chunks, and prefetch
//! hints. Every result is the same with or without them.
//!
//! The crate is built for the baseline of its target (SSE2 on x86-64), so that one binary runs on
//! every machine of that architecture. The row kernels ([`crate::rows`]) are also compiled for
//! AVX2 and for AVX-512F and run the widest way the CPU (and the operating system, which must
//! save the wider registers) supports, or as [`limit`] allows. Every build does the same
//! additions lane by lane, in the same order, so the results are bit-identical; only the number
//! of instructions differs.
//!
//! Adam's loop ([`crate::optim`]) uses SSE directly, which the baseline has (`sqrtps` and `divps`
//! round like their scalar forms). On other architectures [`avx2`] is always false.
//!
//! ```
//! use spiketile_core::simd::{avx2, mask_at_least};
//! // Either answer is fine; it does not change any result.
//! let _fast = avx2();
//! let u = [0.5, 1.2, 0.95, 1.0, -3.0, f32::NAN, 2.0, 0.0];
//! assert_eq!(mask_at_least(&u, 1.0), 0b0100_1010);
//! ```

/// The vector instructions the kernels may use, narrowest first. Every level gives the same
/// results, bit for bit; only the speed differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Level {
    /// The target's baseline (SSE2 on x86-64).
    Baseline = 1,
    /// AVX2 (x86-64).
    Avx2 = 2,
    /// AVX-512F (x86-64), with POPCNT.
    Avx512 = 3,
}

/// The level in use: 0 until the first call detects the CPU's; after [`limit`], at most the
/// level it was given.
static LEVEL: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// The CPU's widest level once [`widest`] has asked: 0 until then.
static WIDEST: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// The widest level this CPU runs, asked once ([`detected`]) and kept: a virtual machine may
/// trap every CPUID (40-54 us per [`limit`] on session 19's VM when it asked each time).
fn widest() -> Level {
    kept(&WIDEST, detected)
}

/// The level `cell` keeps, or `ask()`'s answer, kept there from now on if `cell` held none.
#[inline]
fn kept(cell: &core::sync::atomic::AtomicU8, ask: fn() -> Level) -> Level {
    use core::sync::atomic::Ordering;
    match cell.load(Ordering::Relaxed) {
        1 => Level::Baseline,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let found = ask();
            cell.store(found as u8, Ordering::Relaxed);
            found
        }
    }
}

/// The widest level this CPU (and its operating system) runs (CPUID and XCR0 on x86-64,
/// [`Level::Baseline`] elsewhere); asked on every call, so [`widest`] keeps the answer.
fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::detect_avx512() {
            Level::Avx512
        } else if x86::detect_avx2() {
            Level::Avx2
        } else {
            Level::Baseline
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Level::Baseline
    }
}

/// The level the kernels use now: the CPU's widest, unless [`limit`] lowered it.
#[inline]
pub fn level() -> Level {
    kept(&LEVEL, widest)
}

/// Keeps the kernels at `max` or narrower from now on (the CPU's widest level if that is
/// narrower), for every thread; returns the level now in use. For comparing the builds on one
/// machine, or for a CPU where wide registers slow the clock. The results do not change.
///
/// ```
/// use spiketile_core::simd::{level, limit, Level};
/// let used = limit(Level::Avx2);
/// assert!(used <= Level::Avx2 && level() == used);
/// assert_eq!(limit(Level::Baseline), Level::Baseline);
/// ```
pub fn limit(max: Level) -> Level {
    let used = widest().min(max);
    LEVEL.store(used as u8, core::sync::atomic::Ordering::Relaxed);
    used
}

/// Whether the kernels may use AVX2 ([`level`] at least [`Level::Avx2`]).
#[inline]
pub fn avx2() -> bool {
    level() >= Level::Avx2
}

/// Whether the kernels may use AVX-512F ([`level`] at least [`Level::Avx512`]): the row kernels
/// and the LIF update then run on 16-lane registers.
#[inline]
pub fn avx512() -> bool {
    level() >= Level::Avx512
}

/// [`prefetch`] for every cache line `xs` touches, each once (a hint: no effect on any result).
#[inline]
pub fn prefetch_lines<T>(xs: &[T]) {
    each_line(xs, prefetch_hint::<INTO_L1>);
}

/// [`prefetch_lines`] into the second-level cache only: for more data than the first holds,
/// read a while later (a hint: no effect on any result).
#[inline]
pub fn prefetch_lines_l2<T>(xs: &[T]) {
    each_line(xs, prefetch_hint::<INTO_L2>);
}

/// Calls `f` with an address inside `xs` on each cache line it touches, in order (the first
/// element's on the first line).
#[inline(always)]
fn each_line<T>(xs: &[T], f: impl Fn(usize)) {
    let Some(last) = xs.last() else { return };
    let (first, end) = (xs.as_ptr() as usize, last as *const T as usize);
    let mut line = first & !63;
    while line <= end {
        f(line.max(first));
        line += 64;
    }
}

/// Prefetch hints (x86's `_MM_HINT_T0` and `_MM_HINT_T1`): into every cache level, or from the
/// second level down.
const INTO_L1: i32 = 3;
const INTO_L2: i32 = 2;

/// [`prefetch`] by address with hint `HINT` (any address: a prefetch reads nothing and never
/// faults).
#[inline(always)]
fn prefetch_hint<const HINT: i32>(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no memory, whatever the address.
    #[allow(unsafe_code, unused_unsafe)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<HINT>(at as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Asks the CPU to start loading the cache line of `x` (a hint: no effect on any result; a no-op
/// on architectures without a prefetch instruction here).
#[inline(always)]
pub fn prefetch<T>(x: &T) {
    prefetch_hint::<INTO_L1>(x as *const T as usize);
}

/// Bit `i` set where `x[i] >= level` (false for NaN), for 8 lanes: two vector compares and a
/// move-mask on x86-64 (SSE2, part of the baseline), a loop elsewhere.
#[inline(always)]
pub fn mask_at_least(x: &[f32; 8], level: f32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads read the 8 floats of `x`.
    #[allow(unsafe_code, unused_unsafe)]
    unsafe {
        use core::arch::x86_64::{_mm_cmpge_ps, _mm_loadu_ps, _mm_movemask_ps, _mm_set1_ps};
        let l = _mm_set1_ps(level);
        let lo = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x.as_ptr()), l));
        let hi = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x.as_ptr().add(4)), l));
        (lo | hi << 4) as u32
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        x.iter().enumerate().fold(0, |m, (i, &v)| m | ((v >= level) as u32) << i)
    }
}

/// The membrane update of 8 lanes, `u[i] = alpha * u[i] + one_minus * x[i]` (a multiplication,
/// a multiplication and an addition per lane, each rounded, as the scalar expression), and the
/// masks of the new values [`mask_at_least`] `theta` and `lower`: in SSE2 on x86-64 (the
/// baseline; the same roundings lane by lane), a loop elsewhere.
#[inline(always)]
pub fn integrate8(
    u: &mut [f32; 8],
    x: &[f32; 8],
    (alpha, one_minus): (f32, f32),
    (theta, lower): (f32, f32),
) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads and stores touch the 8 floats of
    // `u` and `x`.
    #[allow(unsafe_code, unused_unsafe)]
    unsafe {
        use core::arch::x86_64::{
            _mm_add_ps, _mm_cmpge_ps, _mm_loadu_ps, _mm_movemask_ps, _mm_mul_ps, _mm_set1_ps,
            _mm_storeu_ps,
        };
        let (a, om) = (_mm_set1_ps(alpha), _mm_set1_ps(one_minus));
        let (th, lo) = (_mm_set1_ps(theta), _mm_set1_ps(lower));
        let (up, xp) = (u.as_mut_ptr(), x.as_ptr());
        let v0 = _mm_add_ps(_mm_mul_ps(a, _mm_loadu_ps(up)), _mm_mul_ps(om, _mm_loadu_ps(xp)));
        let v1 = _mm_add_ps(
            _mm_mul_ps(a, _mm_loadu_ps(up.add(4))),
            _mm_mul_ps(om, _mm_loadu_ps(xp.add(4))),
        );
        _mm_storeu_ps(up, v0);
        _mm_storeu_ps(up.add(4), v1);
        let mask = |l| {
            (_mm_movemask_ps(_mm_cmpge_ps(v0, l)) | _mm_movemask_ps(_mm_cmpge_ps(v1, l)) << 4)
                as u32
        };
        (mask(th), mask(lo))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for (v, &xi) in u.iter_mut().zip(x) {
            *v = alpha * *v + one_minus * xi;
        }
        (mask_at_least(u, theta), mask_at_least(u, lower))
    }
}

/// The adjoint's decay of 8 lanes and its input-current gradient: `g[i] = alpha * g[i]`, then
/// `c[i] = one_minus * g[i]` (each a rounded multiplication, as the scalar expressions), in
/// SSE2 on x86-64, a loop elsewhere.
#[inline(always)]
pub fn decay8(g: &mut [f32; 8], c: &mut [f32; 8], alpha: f32, one_minus: f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads and stores touch the 8 floats of
    // `g` and `c`.
    #[allow(unsafe_code, unused_unsafe)]
    unsafe {
        use core::arch::x86_64::{_mm_loadu_ps, _mm_mul_ps, _mm_set1_ps, _mm_storeu_ps};
        let (a, om) = (_mm_set1_ps(alpha), _mm_set1_ps(one_minus));
        let (gp, cp) = (g.as_mut_ptr(), c.as_mut_ptr());
        let g0 = _mm_mul_ps(_mm_loadu_ps(gp), a);
        let g1 = _mm_mul_ps(_mm_loadu_ps(gp.add(4)), a);
        _mm_storeu_ps(gp, g0);
        _mm_storeu_ps(gp.add(4), g1);
        _mm_storeu_ps(cp, _mm_mul_ps(om, g0));
        _mm_storeu_ps(cp.add(4), _mm_mul_ps(om, g1));
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (x, c) in g.iter_mut().zip(c) {
        *x *= alpha;
        *c = one_minus * *x;
    }
}

/// [`integrate8`] over whole chunks of 8 lanes (`u.len()` a multiple of 8, at most 64, `x` as
/// long), in 256-bit AVX operations: the same multiplications, additions and ordered compares
/// lane by lane, so the same results; returns the two masks over all chunks.
///
/// # Safety
/// The CPU must run AVX2 code ([`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
pub(crate) unsafe fn integrate_chunks_avx2(
    u: &mut [f32],
    x: &[f32],
    (alpha, one_minus): (f32, f32),
    (theta, lower): (f32, f32),
) -> (u64, u64) {
    use core::arch::x86_64::{
        _mm256_add_ps, _mm256_cmp_ps, _mm256_loadu_ps, _mm256_movemask_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_storeu_ps, _CMP_GE_OQ,
    };
    let (a, om) = (_mm256_set1_ps(alpha), _mm256_set1_ps(one_minus));
    let (th, lo) = (_mm256_set1_ps(theta), _mm256_set1_ps(lower));
    let (mut spikes, mut at_least_lower) = (0u64, 0u64);
    for (c, (uc, xc)) in u.chunks_exact_mut(8).zip(x.chunks_exact(8)).enumerate() {
        // SAFETY: each chunk holds 8 floats; AVX2 (hence AVX) is enabled by the caller's check.
        unsafe {
            let xv = _mm256_mul_ps(om, _mm256_loadu_ps(xc.as_ptr()));
            let v = _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(uc.as_ptr())), xv);
            _mm256_storeu_ps(uc.as_mut_ptr(), v);
            let s = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, th)) as u32;
            let l = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, lo)) as u32;
            spikes |= u64::from(s) << (8 * c);
            at_least_lower |= u64::from(l) << (8 * c);
        }
    }
    (spikes, at_least_lower)
}

/// [`integrate_chunks_avx2`] in 512-bit AVX-512F operations, 16 lanes at a time (a last chunk
/// of 8 in 256-bit ones): the same multiplications, additions and ordered compares lane by lane,
/// so the same results.
///
/// # Safety
/// The CPU must run AVX-512F code ([`avx512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
pub(crate) unsafe fn integrate_chunks_avx512(
    u: &mut [f32],
    x: &[f32],
    (alpha, one_minus): (f32, f32),
    (theta, lower): (f32, f32),
) -> (u64, u64) {
    use core::arch::x86_64::{
        _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps,
        _mm512_storeu_ps, _CMP_GE_OQ,
    };
    let (a, om) = (_mm512_set1_ps(alpha), _mm512_set1_ps(one_minus));
    let (th, lo) = (_mm512_set1_ps(theta), _mm512_set1_ps(lower));
    let (mut spikes, mut at_least_lower) = (0u64, 0u64);
    let whole = u.len() / 16 * 16;
    let (u16s, u_rest) = u.split_at_mut(whole);
    for (c, (uc, xc)) in u16s.chunks_exact_mut(16).zip(x.chunks_exact(16)).enumerate() {
        // SAFETY: each chunk holds 16 floats; AVX-512F is enabled by the caller's check.
        unsafe {
            let xv = _mm512_mul_ps(om, _mm512_loadu_ps(xc.as_ptr()));
            let v = _mm512_add_ps(_mm512_mul_ps(a, _mm512_loadu_ps(uc.as_ptr())), xv);
            _mm512_storeu_ps(uc.as_mut_ptr(), v);
            spikes |= u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, th)) << (16 * c);
            at_least_lower |= u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, lo)) << (16 * c);
        }
    }
    if !u_rest.is_empty() {
        // SAFETY: AVX-512F implies AVX2; a whole chunk of 8 is left.
        let (s, l) = unsafe {
            integrate_chunks_avx2(u_rest, &x[whole..], (alpha, one_minus), (theta, lower))
        };
        spikes |= s << whole;
        at_least_lower |= l << whole;
    }
    (spikes, at_least_lower)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

    /// CPUID says AVX2, and XCR0 says the OS saves the XMM and YMM registers.
    #[allow(unused_unsafe)] // `__cpuid` is a safe function on newer compilers
    pub(super) fn detect_avx2() -> bool {
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only if the CPU has it.
        let (max, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
        let (osxsave, avx) = (leaf1.ecx & (1 << 27) != 0, leaf1.ecx & (1 << 28) != 0);
        if max < 7 || !osxsave || !avx {
            return false;
        }
        // SAFETY: OSXSAVE is set, so XGETBV is enabled.
        if unsafe { xcr0() } & 0b110 != 0b110 {
            return false;
        }
        // SAFETY: leaf 7 exists (max >= 7).
        unsafe { __cpuid_count(7, 0) }.ebx & (1 << 5) != 0
    }

    /// CPUID says AVX-512F (and AVX2, and POPCNT, which every AVX-512 CPU has and the lean
    /// loops count masks with), and XCR0 says the OS saves the XMM, YMM, opmask and ZMM
    /// registers.
    #[allow(unused_unsafe)]
    pub(super) fn detect_avx512() -> bool {
        // SAFETY: CPUID exists on every x86-64 CPU.
        let popcnt = unsafe { __cpuid(1) }.ecx & (1 << 23) != 0;
        if !popcnt || !detect_avx2() {
            return false;
        }
        // SAFETY: detect_avx2 found OSXSAVE set, so XGETBV is enabled.
        if unsafe { xcr0() } & 0b1110_0110 != 0b1110_0110 {
            return false;
        }
        // SAFETY: leaf 7 exists (detect_avx2 checked).
        unsafe { __cpuid_count(7, 0) }.ebx & (1 << 16) != 0
    }

    /// # Safety
    /// The CPU must have XSAVE enabled by the OS (CPUID.1:ECX.OSXSAVE).
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        #[allow(unused_unsafe)]
        unsafe {
            _xgetbv(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector decay equals the scalar expressions bit for bit, NaN, infinities, signed
    /// zeros and subnormals included.
    #[test]
    fn decay8_equals_the_scalar_expressions() {
        let vals = [1.5f32, -0.0, 0.0, f32::NAN, f32::INFINITY, -3.25, 1e-39, 0.123_456_7, -1e30];
        for start in 0..vals.len() {
            let g0: [f32; 8] = core::array::from_fn(|i| vals[(start + i) % vals.len()]);
            let (mut g, mut c) = (g0, [7.0f32; 8]);
            decay8(&mut g, &mut c, 0.95, 1.0 - 0.95);
            for i in 0..8 {
                let want = g0[i] * 0.95;
                assert_eq!(g[i].to_bits(), want.to_bits(), "g[{i}] of {g0:?}");
                assert_eq!(c[i].to_bits(), ((1.0 - 0.95f32) * want).to_bits(), "c[{i}]");
            }
        }
    }

    /// The AVX2 and AVX-512F chunks equal the SSE2 ones ([`integrate8`]) bit for bit, masks
    /// included, for every whole number of chunks up to 64 lanes (where the CPU runs them).
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn vector_chunks_equal_integrate8() {
        if !avx2() {
            return;
        }
        let vals =
            [0.95f32, 1.0, -0.0, f32::NAN, f32::INFINITY, 0.9, 1e-39, 2.5, -7.0, 0.899_999_9];
        for chunks in 1..=8 {
            let n = chunks * 8;
            let u0: [f32; 64] = core::array::from_fn(|i| vals[(i * 7 + chunks) % vals.len()]);
            let x: [f32; 64] = core::array::from_fn(|i| vals[(i * 3 + 1) % vals.len()] * 1.5);
            let params = ((0.95f32, 1.0 - 0.95f32), (1.0f32, 0.9f32));
            let mut want = u0;
            let mut masks = (0u64, 0u64);
            for c in 0..chunks {
                let (uc, xc) = (&mut want[8 * c..8 * c + 8], &x[8 * c..8 * c + 8]);
                let (s, l) =
                    integrate8(uc.try_into().unwrap(), xc.try_into().unwrap(), params.0, params.1);
                masks.0 |= u64::from(s) << (8 * c);
                masks.1 |= u64::from(l) << (8 * c);
            }
            let mut got = u0;
            // SAFETY: avx2() said yes; whole chunks.
            let got_masks =
                unsafe { integrate_chunks_avx2(&mut got[..n], &x[..n], params.0, params.1) };
            assert_eq!(got_masks, masks, "{chunks} chunks");
            for i in 0..n {
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "lane {i} of {chunks} chunks");
            }
            if avx512() {
                let mut got = u0;
                // SAFETY: avx512() said yes; whole chunks.
                let got_masks =
                    unsafe { integrate_chunks_avx512(&mut got[..n], &x[..n], params.0, params.1) };
                assert_eq!(got_masks, masks, "AVX-512F, {chunks} chunks");
                for i in 0..n {
                    assert_eq!(got[i].to_bits(), want[i].to_bits(), "AVX-512F lane {i}");
                }
            }
        }
    }

    /// The detection agrees with the standard library's (no unit test lowers the level with
    /// [`limit`]: it is the whole process's).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn detection_agrees_with_std() {
        let found = detected();
        assert_eq!(found >= Level::Avx2, std::is_x86_feature_detected!("avx2"));
        assert_eq!(found >= Level::Avx512, std::is_x86_feature_detected!("avx512f"));
        assert_eq!(widest(), found, "the kept answer is the CPU's");
        assert_eq!(level(), found);
        assert_eq!((avx2(), avx512()), (found >= Level::Avx2, found >= Level::Avx512));
    }

    /// The vector mask equals the plain loop, NaN and infinities included.
    #[test]
    fn mask_at_least_equals_the_plain_loop() {
        let vals = [-1.0f32, 0.9, 1.0, 1.2, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.95, 2.0];
        for start in 0..vals.len() {
            let x: [f32; 8] = core::array::from_fn(|i| vals[(start + i) % vals.len()]);
            for level in [0.9f32, 1.0, f32::NEG_INFINITY, f32::INFINITY] {
                let plain =
                    x.iter().enumerate().fold(0, |m, (i, &v)| m | ((v >= level) as u32) << i);
                assert_eq!(mask_at_least(&x, level), plain, "x = {x:?}, level = {level}");
            }
        }
    }
}
