//! Exact (order-independent) sums of f32 values and of their squares.
//!
//! Floating-point addition is not associative, so an `f64` running sum depends on the
//! order in which samples arrive and on how shards are merged. [`ExactSum`] instead keeps
//! the sum as a fixed-point integer in units of `2^LSB`, wide enough that every f32 value
//! (or its square) is an integer multiple of the unit and that 2^64 of the largest ones
//! cannot overflow. Adding and merging are then exact integer operations, the state after
//! any sequence of adds/merges depends only on the multiset of values, and the `f64` we
//! report is the correctly rounded (half-to-even) value of the exact sum.
//!
//! Representation: little-endian base-2^32 digits held in `i64` limbs so that adds can be
//! done without carrying; [`ExactSum::normalize`] brings the limbs back to the canonical form
//! (limbs `0..N-1` in `[0, 2^32)`, the top limb signed) which is what is compared and
//! serialized. Serialized form: a hexadecimal integer with the unit as a binary exponent,
//! e.g. `"-0x1f4p-149"` (= -500 · 2^-149).

use std::fmt;

/// Smallest exponent of an f32 value: every finite f32 is an integer multiple of 2^-149.
pub const SUM_LSB: i32 = -149;
/// Every finite f32 squared is an integer multiple of 2^-298 (exact in 48 bits of mantissa).
pub const SQ_LSB: i32 = -298;
/// Limbs for sums of values: |sum| < 2^64 · 2^128 = 2^(192+149) units → 341 bits < 9·32 + 63.
pub const SUM_LIMBS: usize = 10;
/// Limbs for sums of squares: |sum| < 2^64 · 2^256 → 618 bits < 18·32 + 63.
pub const SQ_LIMBS: usize = 19;

/// After this many un-normalized adds the limbs are normalized (each add puts < 2^32 into a limb).
const ADDS_BEFORE_NORMALIZE: u32 = 1 << 29;
const DIGIT: i64 = 1 << 32;

/// Exact sum of dyadic rationals `m · 2^e` (e ≥ LSB) as a fixed-point integer of `N` limbs.
#[derive(Clone, Debug)]
pub struct ExactSum<const N: usize, const LSB: i32> {
    limbs: [i64; N],
    pending: u32,
}

/// Sum of f32 values.
pub type ValueSum = ExactSum<SUM_LIMBS, SUM_LSB>;
/// Sum of squared f32 values.
pub type SquareSum = ExactSum<SQ_LIMBS, SQ_LSB>;

/// Equality of the represented integers (whatever the carry state of the limbs).
impl<const N: usize, const LSB: i32> PartialEq for ExactSum<N, LSB> {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        a.normalize();
        b.normalize();
        a.limbs == b.limbs
    }
}

impl<const N: usize, const LSB: i32> Eq for ExactSum<N, LSB> {}

impl<const N: usize, const LSB: i32> Default for ExactSum<N, LSB> {
    fn default() -> Self {
        ExactSum {
            limbs: [0; N],
            pending: 0,
        }
    }
}

/// Decomposes a finite f32 into (negative, mantissa, exponent) with `|x| = m · 2^e`, `e ≥ -149`.
/// Value by value adds (this and the two below) are the tests' exact reference; calibration
/// adds whole f64 partial sums ([`ExactSum::add_f64`]).
#[cfg(test)]
pub fn decompose_f32(x: f32) -> (bool, u64, i32) {
    let bits = x.to_bits();
    let neg = bits >> 31 == 1;
    let exp_field = ((bits >> 23) & 0xff) as i32;
    let frac = (bits & 0x7f_ffff) as u64;
    if exp_field == 0 {
        (neg, frac, -149)
    } else {
        (neg, frac | (1 << 23), exp_field - 150)
    }
}

impl<const N: usize, const LSB: i32> ExactSum<N, LSB> {
    /// Adds `±m · 2^e` (requires `e ≥ LSB`, `m < 2^53`, and the result within range).
    pub fn add_scaled(&mut self, negative: bool, m: u64, e: i32) {
        if m == 0 {
            return;
        }
        debug_assert!(e >= LSB && m < (1 << 53));
        let shift = (e - LSB) as u32;
        let limb = (shift / 32) as usize;
        let wide = (m as u128) << (shift % 32);
        for k in 0..3 {
            let digit = ((wide >> (32 * k)) & 0xffff_ffff) as i64;
            if digit != 0 {
                // Digits beyond the top limb cannot occur for values in range; clamp to the top
                // limb so a bad input never indexes out of bounds.
                let idx = (limb + k).min(N - 1);
                let d = if idx == limb + k { digit } else { 0 };
                if negative {
                    self.limbs[idx] = self.limbs[idx].wrapping_sub(d);
                } else {
                    self.limbs[idx] = self.limbs[idx].wrapping_add(d);
                }
            }
        }
        self.pending += 1;
        if self.pending >= ADDS_BEFORE_NORMALIZE {
            self.normalize();
        }
    }

    /// Adds a finite `f64` that is an integer multiple of `2^LSB` (the sum or sum of squares
    /// of f32 values computed in f64 always is: every partial sum is such a multiple, and
    /// rounding to a coarser f64 grid keeps it one).
    pub fn add_f64(&mut self, x: f64) {
        if x == 0.0 || !x.is_finite() {
            return;
        }
        let bits = x.to_bits();
        let field = ((bits >> 52) & 0x7ff) as i32;
        let frac = bits & ((1 << 52) - 1);
        let (mut m, mut e) = if field == 0 {
            (frac, -1074)
        } else {
            (frac | (1 << 52), field - 1075)
        };
        // Bring the exponent up to the unit: the bits dropped are zero for a multiple of it.
        if e < LSB {
            let shift = (LSB - e).min(63) as u32;
            debug_assert!(
                m.trailing_zeros() >= shift,
                "{x} is not a multiple of 2^{LSB}"
            );
            m >>= shift;
            e = LSB;
        }
        self.add_scaled(bits >> 63 == 1, m, e);
    }

    /// Adds another exact sum.
    pub fn merge(&mut self, other: &Self) {
        self.normalize();
        let mut o = other.clone();
        o.normalize();
        for (a, b) in self.limbs.iter_mut().zip(o.limbs.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.pending = 1;
        self.normalize();
    }

    /// Brings the limbs to canonical form (low limbs in `[0, 2^32)`, top limb signed).
    pub fn normalize(&mut self) {
        let mut carry = 0i64;
        for l in self.limbs.iter_mut().take(N - 1) {
            let v = l.wrapping_add(carry);
            *l = v.rem_euclid(DIGIT);
            carry = v.div_euclid(DIGIT);
        }
        self.limbs[N - 1] = self.limbs[N - 1].wrapping_add(carry);
        self.pending = 0;
    }

    /// True when the sum is exactly zero.
    pub fn is_zero(&self) -> bool {
        let mut c = self.clone();
        c.normalize();
        c.limbs.iter().all(|&l| l == 0)
    }

    /// Sign and magnitude as base-2^32 digits (little endian, N+1 digits).
    fn sign_magnitude(&self) -> (bool, Vec<u32>) {
        let mut c = self.clone();
        c.normalize();
        let negative = c.limbs[N - 1] < 0;
        if negative {
            for l in c.limbs.iter_mut() {
                *l = l.wrapping_neg();
            }
            c.normalize();
        }
        let mut digits: Vec<u32> = c.limbs[..N - 1].iter().map(|&l| l as u32).collect();
        let top = c.limbs[N - 1] as u64;
        digits.push(top as u32);
        digits.push((top >> 32) as u32);
        (negative, digits)
    }

    /// The sum rounded to the nearest f64 (ties to even).
    pub fn to_f64(&self) -> f64 {
        let (negative, digits) = self.sign_magnitude();
        let bit = |i: usize| -> bool { (digits[i / 32] >> (i % 32)) & 1 == 1 };
        let Some(top_digit) = digits.iter().rposition(|&d| d != 0) else {
            return 0.0;
        };
        let p = top_digit * 32 + (31 - digits[top_digit].leading_zeros() as usize);
        let (mut m, mut lsb_pos) = if p < 53 {
            let mut m = 0u64;
            for i in (0..=p).rev() {
                m = (m << 1) | bit(i) as u64;
            }
            (m, 0usize)
        } else {
            let low = p - 52;
            let mut m = 0u64;
            for i in (low..=p).rev() {
                m = (m << 1) | bit(i) as u64;
            }
            let round = bit(low - 1);
            let sticky = (0..low - 1).any(bit);
            if round && (sticky || m & 1 == 1) {
                m += 1;
            }
            (m, low)
        };
        if m == 1 << 53 {
            m >>= 1;
            lsb_pos += 1;
        }
        let value = m as f64 * pow2(lsb_pos as i32 + LSB);
        if negative {
            -value
        } else {
            value
        }
    }

    /// Largest absolute value of the top limb (used to validate deserialized sums).
    pub fn top_limb(&self) -> i64 {
        let mut c = self.clone();
        c.normalize();
        c.limbs[N - 1]
    }

    /// Parses the serialized form (`[-]0x<hex>p<LSB>`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (negative, rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let rest = rest
            .strip_prefix("0x")
            .ok_or_else(|| format!("exact sum '{s}' does not start with 0x"))?;
        let (hex, exp) = rest
            .split_once('p')
            .ok_or_else(|| format!("exact sum '{s}' has no binary exponent"))?;
        if exp != LSB.to_string() {
            return Err(format!("exact sum '{s}' must have exponent p{LSB}"));
        }
        if hex.is_empty() || hex.len() > 8 * N + 8 {
            return Err(format!("exact sum '{s}' has a bad digit count"));
        }
        let mut out = Self::default();
        let bytes = hex.as_bytes();
        for (i, chunk) in bytes.rchunks(8).enumerate() {
            let text = std::str::from_utf8(chunk).map_err(|e| e.to_string())?;
            let d = u32::from_str_radix(text, 16)
                .map_err(|_| format!("exact sum '{s}' has a non-hex digit"))?;
            if i < N {
                out.limbs[i] = d as i64;
            } else if d != 0 {
                return Err(format!("exact sum '{s}' is out of range"));
            }
        }
        if out.limbs[N - 1] >= 1 << 31 {
            return Err(format!("exact sum '{s}' is out of range"));
        }
        if negative {
            for l in out.limbs.iter_mut() {
                *l = -*l;
            }
        }
        out.pending = 1;
        out.normalize();
        Ok(out)
    }
}

impl<const N: usize, const LSB: i32> fmt::Display for ExactSum<N, LSB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (negative, digits) = self.sign_magnitude();
        let sign = if negative { "-" } else { "" };
        match digits.iter().rposition(|&d| d != 0) {
            None => write!(f, "0x0p{LSB}"),
            Some(top) => {
                write!(f, "{sign}0x{:x}", digits[top])?;
                for d in digits[..top].iter().rev() {
                    write!(f, "{d:08x}")?;
                }
                write!(f, "p{LSB}")
            }
        }
    }
}

/// 2^e as f64 for e in the normal range.
pub fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

#[cfg(test)]
impl ValueSum {
    /// Adds a finite f32.
    pub fn add_f32(&mut self, x: f32) {
        let (neg, m, e) = decompose_f32(x);
        self.add_scaled(neg, m, e);
    }
}

#[cfg(test)]
impl SquareSum {
    /// Adds the square of a finite f32.
    pub fn add_square(&mut self, x: f32) {
        let (_, m, e) = decompose_f32(x);
        self.add_scaled(false, m * m, 2 * e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_exact_where_f64_is_not() {
        // 1e30 + 1 - 1e30 loses the 1 in f64; the exact sum keeps it.
        let mut s = ValueSum::default();
        s.add_f32(1e30);
        s.add_f32(1.0);
        s.add_f32(-1e30);
        assert_eq!(s.to_f64(), 1.0);
        // Smallest subnormal survives next to huge values.
        let tiny = f32::from_bits(1);
        s.add_f32(tiny);
        s.add_f32(f32::MAX);
        s.add_f32(-f32::MAX);
        s.add_f32(-1.0);
        assert_eq!(s.to_f64(), tiny as f64);
    }

    #[test]
    fn rounding_is_half_to_even() {
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: rounds to the even 2^53.
        let mut s = ValueSum::default();
        s.add_f32(2f32.powi(53));
        s.add_f32(1.0);
        assert_eq!(s.to_f64(), 2f64.powi(53));
        // 2^53 + 3 is a tie between 2^53+2 and 2^53+4: rounds to 2^53 + 4.
        s.add_f32(2.0);
        assert_eq!(s.to_f64(), 2f64.powi(53) + 4.0);
        // 2^53 + 3 + 2^-149 is just above the tie: still up (sticky bit).
        let mut t = ValueSum::default();
        t.add_f32(2f32.powi(53));
        t.add_f32(1.0);
        t.add_f32(f32::from_bits(1));
        assert_eq!(t.to_f64(), 2f64.powi(53) + 2.0);
    }

    #[test]
    fn squares_and_extremes() {
        let mut s = SquareSum::default();
        s.add_square(3.0);
        s.add_square(-4.0);
        assert_eq!(s.to_f64(), 25.0);
        let mut big = SquareSum::default();
        big.add_square(f32::MAX);
        assert_eq!(big.to_f64(), (f32::MAX as f64) * (f32::MAX as f64));
        let mut small = SquareSum::default();
        small.add_square(f32::from_bits(1));
        assert_eq!(small.to_f64(), 2f64.powi(-298));
    }

    #[test]
    fn text_round_trip_and_negatives() {
        let mut s = ValueSum::default();
        for x in [1.5f32, -1e20, 3e-40, -7.25, f32::MAX, -f32::MAX, -1e38] {
            s.add_f32(x);
        }
        let text = s.to_string();
        assert!(text.starts_with('-'), "{text}");
        let back = ValueSum::parse(&text).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_string(), text);
        assert_eq!(ValueSum::default().to_string(), "0x0p-149");
        assert_eq!(ValueSum::parse("0x0p-149").unwrap(), ValueSum::default());
        let mut one = ValueSum::default();
        one.add_f32(-1.0);
        // -1 = -2^149 units = -0x20 followed by 36 hex zeros.
        assert_eq!(one.to_string(), format!("-0x20{}p-149", "0".repeat(36)));
        assert!(ValueSum::parse("0x1p-150").is_err());
        assert!(ValueSum::parse("1p-149").is_err());
        assert!(ValueSum::parse("0xzzp-149").is_err());
        assert!(ValueSum::parse(&format!("0x1{}p-149", "0".repeat(90))).is_err());
    }

    #[test]
    fn merge_equals_sequential() {
        let xs = [1.0f32, -2.5, 1e-42, 3e38, -3e38, 0.1, 7.0];
        let mut all = ValueSum::default();
        xs.iter().for_each(|&x| all.add_f32(x));
        let mut a = ValueSum::default();
        let mut b = ValueSum::default();
        xs[..3].iter().for_each(|&x| a.add_f32(x));
        xs[3..].iter().rev().for_each(|&x| b.add_f32(x));
        b.merge(&a);
        all.normalize();
        assert_eq!(b, all);
        assert!(!all.is_zero());
    }
}
