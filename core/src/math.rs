//! The few transcendental functions the core needs, from `libm` (exact, the default) or from
//! `micromath` (approximate and small, with the `fast-math` feature).
//!
//! Everything else in the core calls these wrappers, so one feature switches all of them.
//! The functions are called through explicit paths, never as `f32` methods: under `cfg(test)` std's
//! inherent methods would otherwise shadow the ones chosen here.

/// `e^x`.
#[inline]
pub fn exp(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        micromath::F32Ext::exp(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::expf(x)
    }
}

/// Natural logarithm.
#[inline]
pub fn ln(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        micromath::F32Ext::ln(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::logf(x)
    }
}

/// Square root.
#[inline]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        micromath::F32Ext::sqrt(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::sqrtf(x)
    }
}

/// `x^y`.
#[inline]
pub fn powi(x: f32, n: u32) -> f32 {
    // Repeated squaring is exact enough and identical under both features.
    let (mut base, mut n, mut acc) = (x, n, 1.0f32);
    while n > 0 {
        if n & 1 == 1 {
            acc *= base;
        }
        base *= base;
        n >>= 1;
    }
    acc
}

/// `|x|` (no library needed).
#[inline]
pub fn abs(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powi_matches_repeated_multiplication() {
        assert_eq!(powi(0.9, 0), 1.0);
        assert_eq!(powi(0.9, 1), 0.9);
        assert!((powi(0.999, 1000) - 0.999f64.powi(1000) as f32).abs() < 1e-5);
    }

    #[test]
    fn libm_functions_agree_with_std() {
        for x in [-3.0f32, -0.5, 0.0, 0.7, 4.0] {
            assert!((exp(x) - x.exp()).abs() <= 1e-3 * x.exp());
            assert_eq!(abs(x), x.abs());
        }
        assert!((sqrt(25.0) - 5.0).abs() < 0.2);
        assert!((ln(10.0) - 10f32.ln()).abs() < 1e-2);
    }
}
