//! Exact wide-integer helpers: products of a `u64` and a `u128` (192 bits),
//! comparisons of such products, and floor division of them.
//!
//! The allocator never uses floating point: fill levels are exact rationals
//! `num / den` and are compared by cross-multiplication, which needs up to
//! 192 bits.

use std::cmp::Ordering;

/// `a * b` as a 192-bit number `(high 64 bits, low 128 bits)`.
#[inline]
pub(crate) fn mul_64_128(a: u64, b: u128) -> (u64, u128) {
    let a = u128::from(a);
    let b_lo = b as u64 as u128;
    let b_hi = b >> 64;
    let p0 = a * b_lo; // < 2^128
    let p1 = a * b_hi; // < 2^128
    let mid = (p0 >> 64) + (p1 as u64 as u128); // < 2^65
    let lo = (p0 as u64 as u128) | ((mid as u64 as u128) << 64);
    let hi = ((p1 >> 64) + (mid >> 64)) as u64;
    (hi, lo)
}

/// Compares `a * b` with `c * d` exactly.
#[inline]
pub(crate) fn cmp_products(a: u64, b: u128, c: u64, d: u128) -> Ordering {
    if b >> 64 == 0 && d >> 64 == 0 {
        (u128::from(a) * b).cmp(&(u128::from(c) * d))
    } else {
        mul_64_128(a, b).cmp(&mul_64_128(c, d))
    }
}

/// `floor(a * b / d)` for `a <= d`, `d > 0`; the result is at most `b`.
#[inline]
pub(crate) fn mul_div_floor(a: u128, b: u64, d: u128) -> u64 {
    debug_assert!(d > 0 && a <= d);
    if a == d {
        return b;
    }
    let (hi, lo) = mul_64_128(b, a);
    if hi == 0 {
        return (lo / d) as u64;
    }
    // Restoring division. The quotient is below b < 2^64, so the top 128 bits
    // of the dividend are below d and only the low 64 bits remain to bring down.
    let mut rem: u128 = (u128::from(hi) << 64) | (lo >> 64);
    debug_assert!(rem < d);
    let low = lo as u64;
    let mut q: u64 = 0;
    for i in (0..64).rev() {
        let carry = rem >> 127;
        rem = (rem << 1) | u128::from((low >> i) & 1);
        if carry == 1 || rem >= d {
            rem = rem.wrapping_sub(d);
            q |= 1 << i;
        }
    }
    q
}

/// An exact non-negative rational `num / den` with `den > 0`: a fill level.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Level {
    pub num: u64,
    pub den: u128,
}

impl PartialEq for Level {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Level {}
impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Level {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_products(self.num, other.den, other.num, self.den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_matches_schoolbook() {
        let cases: [(u64, u128); 6] = [
            (0, 0),
            (1, u128::MAX),
            (u64::MAX, u128::MAX),
            (u64::MAX, 1 << 64),
            (12345, (1 << 100) + 77),
            (1 << 63, (1 << 127) + 1),
        ];
        for (a, b) in cases {
            let (_, lo) = mul_64_128(a, b);
            // Check via splitting a into two 32-bit halves, each product fits in 160 bits.
            let a_lo = u128::from(a as u32);
            let a_hi = u128::from(a >> 32);
            // a*b = a_hi*b*2^32 + a_lo*b; compute mod 2^128 and compare low part
            let low_check = a_hi
                .wrapping_mul(b)
                .wrapping_shl(32)
                .wrapping_add(a_lo.wrapping_mul(b));
            assert_eq!(lo, low_check, "low part of {a}*{b}");
        }
        assert_eq!(
            mul_64_128(u64::MAX, u128::MAX),
            (u64::MAX - 1, u128::MAX - u128::from(u64::MAX) + 1)
        );
        assert_eq!(mul_64_128(2, 1 << 127), (1, 0));
    }

    #[test]
    fn mul_div_floor_exact_on_wide_products() {
        assert_eq!(mul_div_floor(3, 10, 7), 4);
        assert_eq!(mul_div_floor(7, 10, 7), 10);
        assert_eq!(mul_div_floor(0, u64::MAX, 5), 0);
        // a*b needs more than 128 bits.
        let d: u128 = (1 << 100) + 12345;
        let a: u128 = d - 1;
        let b = u64::MAX;
        // floor((d-1)*b/d) = b - ceil(b/d) = b - 1 since b < d
        assert_eq!(mul_div_floor(a, b, d), b - 1);
        let a: u128 = d / 3;
        let expect = {
            // (d/3)*b/d ~ b/3, check by bounds: q*d <= a*b < (q+1)*d
            let q = mul_div_floor(a, b, d);
            let lhs = mul_64_128(q, d);
            let rhs = mul_64_128(b, a);
            let lhs1 = mul_64_128(q + 1, d);
            assert!(lhs <= rhs && rhs < lhs1);
            q
        };
        assert!(expect > b / 3 - 2 && expect <= b / 3 + 1);
        // divisor above 2^127 exercises the carry branch
        let d: u128 = u128::MAX - 5;
        let a: u128 = d - 1;
        let q = mul_div_floor(a, 1 << 40, d);
        assert_eq!(q, (1 << 40) - 1);
    }

    #[test]
    fn level_ordering_is_exact() {
        let a = Level { num: 1, den: 3 };
        let b = Level { num: 2, den: 6 };
        let c = Level {
            num: 333_333_333_333,
            den: 1_000_000_000_000,
        };
        assert_eq!(a, b);
        assert!(c < a);
        let big_den = Level {
            num: u64::MAX,
            den: u128::MAX,
        };
        let tiny = Level {
            num: 1,
            den: 1 << 64,
        };
        // (2^64 - 1) / (2^128 - 1) = 1 / (2^64 + 1), just below 1 / 2^64.
        assert!(big_den < tiny);
        assert!(Level { num: 0, den: 5 } < tiny);
    }
}
