//! Streaming, mergeable statistics of one tensor: [`TensorStats`] (whole tensor, with a
//! histogram on a canonical grid) and [`ChannelStats`] (min/max per slice along an axis).
//!
//! Samples are observed one at a time and never kept. Everything stored is either an
//! integer count, an order-free extreme (min/max), or an exact fixed-point sum
//! ([`super::exact`]), so the state after observing a multiset of samples does not depend on
//! their order nor on how they were split into shards and merged: merged shards serialize
//! to the same bytes as one run over all samples. The sums (for mean and deviation) are
//! exact sums of per-chunk f64 sums: each chunk of `CHUNK` values of a sample is summed in
//! f64 in one fixed order, which depends on that chunk alone, and added exactly.
//!
//! ## The canonical histogram grid
//! Bins have width `w = 2^k` and are aligned at 0: positive bin `i` holds values in
//! `[i·w, (i+1)·w)`, negative bin `i` holds values in `(-(i+1)·w, -i·w]`, exact zeros are
//! counted apart (they are exactly representable by every quantization grid, and ReLU
//! outputs have many). `k` is a function of the abs-max seen so far only:
//! `k = floor(log2(absmax)) - 11`, so `absmax / w ∈ [2048, 4096)`: between 2049 and 4096
//! bins per side cover the data, never more ([`MAX_BINS`]). When a larger abs-max arrives, `k`
//! grows and bin `i` moves to bin `i >> Δk` (pairs of bins merge per doubling): exact, and
//! the grid stays aligned. Since `k` depends only on the final abs-max, every order of
//! observation and merging ends on the same grid with the same integer counts. (A width
//! fixed by the first sample's abs-max and only doubled when exceeded, as the reference
//! tool's histograms grow, would leave the final grid depending on which sample came first.)
//! Memory per tensor is bounded: at most 2 × 4096 `u64` counts (64 KiB), whatever the data.
//!
//! Non-finite values are counted (NaN, +Inf, -Inf) and kept out of min/max, sums and the
//! histogram. `-0.0` is counted as a zero and stored as `+0.0` in min/max.

use super::exact::{pow2, SquareSum, ValueSum};
use super::CalibError;
use crate::ir::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Maximum number of histogram bins on each side of zero.
pub const MAX_BINS: usize = 4096;
/// log2 of [`MAX_BINS`].
const LOG2_MAX_BINS: i32 = 12;
/// Width exponent used before any non-zero value was seen (abs-max of the smallest subnormal).
pub const MIN_LOG2_WIDTH: i32 = -149 - (LOG2_MAX_BINS - 1);

/// floor(log2(a)) for a finite f32 `a > 0`.
fn floor_log2(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7fff_ffff;
    let exp_field = (bits >> 23) as i32;
    if exp_field == 0 {
        // Subnormal: a = frac · 2^-149.
        31 - (bits.leading_zeros() as i32) - 149
    } else {
        exp_field - 127
    }
}

/// The canonical bin width exponent for an abs-max (see the module doc).
pub fn log2_width_for(abs_max: f32) -> i32 {
    if abs_max > 0.0 && abs_max.is_finite() {
        (floor_log2(abs_max) - (LOG2_MAX_BINS - 1)).max(MIN_LOG2_WIDTH)
    } else {
        MIN_LOG2_WIDTH
    }
}

/// Histogram of a tensor's non-zero finite values on the canonical grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    log2_width: i32,
    /// Counts of positive values, bin `i` = `[i·w, (i+1)·w)`; no trailing zeros.
    pos: Vec<u64>,
    /// Counts of negative values, bin `i` = `(-(i+1)·w, -i·w]`; no trailing zeros.
    neg: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            log2_width: MIN_LOG2_WIDTH,
            pos: Vec::new(),
            neg: Vec::new(),
        }
    }
}

/// Bin index of `abs` given `2^-k`: |x| · 2^-k is exact in f64 (power-of-two scaling of a
/// 24-bit mantissa, no overflow), so the floor (truncation: it is non-negative) is the exact bin.
fn index_with(abs: f32, inv_width: f64) -> usize {
    ((abs as f64 * inv_width) as usize).min(MAX_BINS - 1)
}

/// Values per chunk of an observation. Each chunk is read from memory once, then summed
/// and binned while it is still in cache; the chunk boundaries are fixed by position, so
/// they depend on the observation alone.
const CHUNK: usize = 1 << 15;
/// Interleaved histogram copies in the fast observation loop.
const LANES: usize = 2;
/// 2^23: adding it to a float in [0, 2^23) rounds it to an integer held in the low mantissa bits.
const MAGIC: f32 = 8_388_608.0;
/// Values per block of the fast observation loop.
const BLOCK: usize = 256;

/// What one pass over a chunk finds.
struct Extremes {
    /// Min and max of the values (exact when all are finite).
    lo: f32,
    hi: f32,
    /// Whether a NaN or an infinity is among them.
    non_finite: bool,
    /// Number of `+0.0` and of `-0.0` values.
    pos_zeros: u32,
    neg_zeros: u32,
}

/// Extremes, non-finite presence and zero counts of a chunk (at most `CHUNK` values).
/// Sixteen independent lanes, each a compare-and-select, so the compiler vectorises it.
#[inline(always)]
fn extremes(values: &[f32]) -> Extremes {
    debug_assert!(values.len() <= CHUNK);
    let mut lo = [f32::INFINITY; 16];
    let mut hi = [f32::NEG_INFINITY; 16];
    let mut big = [0u32; 16];
    let mut pz = [0u32; 16];
    let mut nz = [0u32; 16];
    let mut chunks = values.chunks_exact(16);
    for c in &mut chunks {
        let c: &[f32; 16] = c.try_into().expect("chunk of 16");
        for j in 0..16 {
            let x = c[j];
            lo[j] = if x < lo[j] { x } else { lo[j] };
            hi[j] = if x > hi[j] { x } else { hi[j] };
            let bits = x.to_bits();
            let abs = bits & 0x7fff_ffff;
            big[j] = if abs > big[j] { abs } else { big[j] };
            pz[j] += (bits == 0) as u32;
            nz[j] += (bits == 0x8000_0000) as u32;
        }
    }
    let mut e = Extremes {
        lo: f32::INFINITY,
        hi: f32::NEG_INFINITY,
        non_finite: false,
        pos_zeros: 0,
        neg_zeros: 0,
    };
    for j in 0..16 {
        e.lo = e.lo.min(lo[j]);
        e.hi = e.hi.max(hi[j]);
        e.non_finite |= big[j] >= 0x7f80_0000;
        e.pos_zeros += pz[j];
        e.neg_zeros += nz[j];
    }
    for &x in chunks.remainder() {
        e.non_finite |= !x.is_finite();
        e.lo = e.lo.min(x);
        e.hi = e.hi.max(x);
        e.pos_zeros += (x.to_bits() == 0) as u32;
        e.neg_zeros += (x.to_bits() == 0x8000_0000) as u32;
    }
    e
}

/// Slot of each value of a block in the fast path's counts: bin `floor(|x| · 2^-k)` (the
/// product is exact: a power-of-two scaling that stays below 4096 and, where it would
/// underflow, below 1), offset by `pos_offset` for non-negative values. Branch-free, so
/// the compiler vectorises it; floor(y) for 0 <= y < 2^23 rounds to nearest through 2^23
/// and subtracts one where that rounded up (no float-to-int conversion).
#[inline(always)]
fn slot_of(x: f32, inv_width: f32, pos_offset: i32) -> u32 {
    let bits = x.to_bits();
    let abs = bits & 0x7fff_ffff;
    let sign = (bits as i32) >> 31; // 0 or -1
    let y = f32::from_bits(abs) * inv_width;
    let t = y + MAGIC;
    let bin = (t.to_bits() - MAGIC.to_bits()) as i32 - ((t - MAGIC) > y) as i32;
    (bin + (pos_offset & !sign)) as u32
}

/// Sum and sum of squares of a chunk's finite values, in f64, in one fixed order (eight
/// lanes, then the lanes in order), so they depend on the chunk alone. `all_finite` says
/// the chunk has no NaN or infinity (the fast path's case: the mask is then skipped, which
/// changes nothing in the result).
#[inline(always)]
fn sums(values: &[f32], all_finite: bool) -> (f64, f64) {
    let mut s = [0f64; 8];
    let mut q = [0f64; 8];
    let mut chunks = values.chunks_exact(8);
    if all_finite {
        for c in &mut chunks {
            for j in 0..8 {
                let v = c[j] as f64;
                s[j] += v;
                q[j] += v * v;
            }
        }
    } else {
        for c in &mut chunks {
            for j in 0..8 {
                let v = if c[j].is_finite() { c[j] as f64 } else { 0.0 };
                s[j] += v;
                q[j] += v * v;
            }
        }
    }
    for (j, &x) in chunks.remainder().iter().enumerate() {
        let v = if x.is_finite() { x as f64 } else { 0.0 };
        s[j] += v;
        q[j] += v * v;
    }
    let (mut sum, mut sum_sq) = (0f64, 0f64);
    for j in 0..8 {
        sum += s[j];
        sum_sq += q[j];
    }
    (sum, sum_sq)
}

fn trim(v: &mut Vec<u64>) {
    while v.last() == Some(&0) {
        v.pop();
    }
}

fn rebin(v: &mut Vec<u64>, shift: u32) {
    if shift == 0 || v.is_empty() {
        return;
    }
    let new_len = if shift >= 64 {
        1
    } else {
        ((v.len() - 1) >> shift) + 1
    };
    let mut out = vec![0u64; new_len];
    for (i, &c) in v.iter().enumerate() {
        let j = if shift >= 64 { 0 } else { i >> shift };
        out[j] = out[j].saturating_add(c);
    }
    *v = out;
    trim(v);
}

/// Adds bin counts (u64, or the fast path's u32) into `dst`, growing it as needed.
fn add_bins<C: Copy + Into<u64>>(dst: &mut Vec<u64>, src: &[C]) {
    if dst.len() < src.len() {
        dst.resize(src.len(), 0);
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = d.saturating_add(s.into());
    }
}

impl Histogram {
    /// Exponent `k` of the bin width `2^k`.
    pub fn log2_width(&self) -> i32 {
        self.log2_width
    }

    /// Bin width as f64 (exact).
    pub fn width(&self) -> f64 {
        pow2(self.log2_width)
    }

    /// Positive-side counts (bin `i` = `[i·w, (i+1)·w)`, exact zeros excluded).
    pub fn pos(&self) -> &[u64] {
        &self.pos
    }

    /// Negative-side counts (bin `i` = `(-(i+1)·w, -i·w]`).
    pub fn neg(&self) -> &[u64] {
        &self.neg
    }

    /// Total count in the bins.
    pub fn total(&self) -> u64 {
        self.pos
            .iter()
            .chain(self.neg.iter())
            .fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Moves to a coarser grid (`k` must not decrease).
    fn widen_to(&mut self, k: i32) {
        debug_assert!(k >= self.log2_width);
        let shift = (k - self.log2_width).max(0) as u32;
        rebin(&mut self.pos, shift);
        rebin(&mut self.neg, shift);
        self.log2_width = k;
    }

    /// Bin index of a finite |x| on this grid (the grid must cover it).
    pub fn index(&self, abs: f32) -> usize {
        index_with(abs, pow2(-self.log2_width))
    }

    fn add_value(&mut self, x: f32, inv_width: f64) {
        let i = index_with(x.abs(), inv_width);
        let side = if x < 0.0 {
            &mut self.neg
        } else {
            &mut self.pos
        };
        if side.len() <= i {
            side.resize(i + 1, 0);
        }
        side[i] += 1;
    }
}

/// [`TensorStats::observe`] as an operation compiled once per instruction set.
struct Observe<'a> {
    stats: &'a mut TensorStats,
    values: &'a [f32],
}

impl pulp::WithSimd for Observe<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let mut lanes = Vec::new();
        for chunk in self.values.chunks(CHUNK) {
            self.stats.observe_chunk(chunk, &mut lanes);
        }
    }
}

/// Streaming statistics of one tensor (see the module doc). Fed with [`TensorStats::observe`],
/// combined with [`TensorStats::merge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "repr::StatsRepr", into = "repr::StatsRepr")]
pub struct TensorStats {
    count: u64,
    zeros: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    /// Min and max of the finite values (`None` until one is seen).
    min: Option<f32>,
    max: Option<f32>,
    sum: ValueSum,
    sum_sq: SquareSum,
    hist: Histogram,
}

impl Default for TensorStats {
    fn default() -> Self {
        TensorStats::new()
    }
}

impl TensorStats {
    /// Statistics of nothing.
    pub fn new() -> Self {
        TensorStats {
            count: 0,
            zeros: 0,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
            min: None,
            max: None,
            sum: ValueSum::default(),
            sum_sq: SquareSum::default(),
            hist: Histogram::default(),
        }
    }

    /// Adds one sample's values.
    ///
    /// The loops are compiled for the widest vector instructions the CPU has (chosen at run
    /// time); every instruction set gives the same bits: the arithmetic is the same IEEE
    /// operations in the same order, only more of them at once.
    pub fn observe(&mut self, values: &[f32]) {
        self.observe_on(pulp::Arch::new(), values);
    }

    /// [`TensorStats::observe`] compiled for the instruction set `arch`.
    fn observe_on(&mut self, arch: pulp::Arch, values: &[f32]) {
        arch.dispatch(Observe {
            stats: self,
            values,
        });
    }

    /// Adds one chunk of a sample (at most `CHUNK` values); `lanes` is scratch space.
    #[inline(always)]
    fn observe_chunk(&mut self, values: &[f32], lanes: &mut Vec<u32>) {
        // Pass 1: extremes, non-finite presence and zeros, so the grid is widened once per chunk.
        let ext = extremes(values);
        let (lo, hi) = (ext.lo, ext.hi);
        if ext.non_finite || lo > hi {
            // NaN or infinities: the value-by-value path.
            return self.observe_value_by_value(values);
        }
        self.add_extremes(lo, hi);
        let k = self.hist.log2_width;
        if !(-126..=126).contains(&k) {
            // 2^-k is not a normal f32: the value-by-value path (widening is idempotent).
            return self.observe_value_by_value(values);
        }
        self.count = self.count.saturating_add(values.len() as u64);
        let (sum, sum_sq) = sums(values, true);
        self.sum.add_f64(sum);
        self.sum_sq.add_f64(sum_sq);
        // Pass 2, per block of values: first each value's slot (vectorised), then the counts.
        let n_neg = self.hist.index(-lo.min(0.0)) + 1;
        let n_pos = self.hist.index(hi.max(0.0)) + 1;
        let len = n_neg + n_pos;
        let inv_width = pow2(-k) as f32;
        // Two interleaved copies of the counts: runs of equal bins (zeros, narrow
        // distributions) would otherwise chain every increment through one memory slot.
        lanes.clear();
        lanes.resize(LANES * len, 0);
        let (c0, c1) = lanes.split_at_mut(len);
        let pos_offset = n_neg as i32;
        let mut slot = [0u32; BLOCK];
        let mut count = |slots: &[u32]| {
            let mut pairs = slots.chunks_exact(2);
            for sl in &mut pairs {
                c0[sl[0] as usize] += 1;
                c1[sl[1] as usize] += 1;
            }
            if let [last] = pairs.remainder() {
                c0[*last as usize] += 1;
            }
        };
        let mut blocks = values.chunks_exact(BLOCK);
        for block in &mut blocks {
            let block: &[f32; BLOCK] = block.try_into().expect("block");
            for i in 0..BLOCK {
                slot[i] = slot_of(block[i], inv_width, pos_offset);
            }
            count(&slot);
        }
        let rest = blocks.remainder();
        for (s, &x) in slot.iter_mut().zip(rest) {
            *s = slot_of(x, inv_width, pos_offset);
        }
        count(&slot[..rest.len()]);
        for (a, b) in c0.iter_mut().zip(c1.iter()) {
            *a += b;
        }
        let (pos_zeros, neg_zeros) = (ext.pos_zeros, ext.neg_zeros);
        // Exact zeros were counted in bin 0 of their side; they are counted apart.
        c0[n_neg] -= pos_zeros;
        c0[0] -= neg_zeros;
        self.zeros += (pos_zeros + neg_zeros) as u64;
        let (neg_counts, pos_counts) = c0.split_at(n_neg);
        add_bins(&mut self.hist.neg, neg_counts);
        add_bins(&mut self.hist.pos, pos_counts);
        trim(&mut self.hist.neg);
        trim(&mut self.hist.pos);
    }

    /// Min/max update and grid widening for a sample whose finite extremes are `lo <= hi`.
    fn add_extremes(&mut self, lo: f32, hi: f32) {
        // Normalise -0.0 so min/max do not depend on which zero came first.
        let (lo, hi) = (lo + 0.0, hi + 0.0);
        self.min = Some(self.min.map_or(lo, |m| m.min(lo)));
        self.max = Some(self.max.map_or(hi, |m| m.max(hi)));
        let k = log2_width_for(self.abs_max());
        if k > self.hist.log2_width {
            self.hist.widen_to(k);
        }
    }

    /// [`TensorStats::observe_chunk`] value by value: for chunks holding NaN or infinities,
    /// and grids whose width the fast path cannot scale by in f32.
    fn observe_value_by_value(&mut self, values: &[f32]) {
        self.count = self.count.saturating_add(values.len() as u64);
        let (sum, sum_sq) = sums(values, false);
        self.sum.add_f64(sum);
        self.sum_sq.add_f64(sum_sq);
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &x in values {
            if x.is_nan() {
                self.nan += 1;
            } else if x == f32::INFINITY {
                self.pos_inf += 1;
            } else if x == f32::NEG_INFINITY {
                self.neg_inf += 1;
            } else {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        if lo > hi {
            return; // no finite value in this chunk
        }
        self.add_extremes(lo, hi);
        let inv_width = pow2(-self.hist.log2_width);
        for &x in values {
            if !x.is_finite() {
                continue;
            }
            if x == 0.0 {
                self.zeros += 1;
                continue;
            }
            self.hist.add_value(x, inv_width);
        }
    }

    /// Adds one sample given as a host tensor (float types only; f64 is rounded to f32).
    pub fn observe_tensor(&mut self, tensor: &str, t: &Tensor) -> Result<(), CalibError> {
        with_f32_values(tensor, t, |v| self.observe(v))
    }

    /// Adds the statistics of another shard. Merging shards in any grouping and order gives
    /// exactly the state of one run over all their samples.
    pub fn merge(&mut self, other: &TensorStats) {
        self.count = self.count.saturating_add(other.count);
        self.zeros = self.zeros.saturating_add(other.zeros);
        self.nan = self.nan.saturating_add(other.nan);
        self.pos_inf = self.pos_inf.saturating_add(other.pos_inf);
        self.neg_inf = self.neg_inf.saturating_add(other.neg_inf);
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.sum.merge(&other.sum);
        self.sum_sq.merge(&other.sum_sq);
        let k = log2_width_for(self.abs_max());
        self.hist.widen_to(k);
        let mut theirs = other.hist.clone();
        theirs.widen_to(k);
        add_bins(&mut self.hist.pos, &theirs.pos);
        add_bins(&mut self.hist.neg, &theirs.neg);
    }

    /// Number of values observed (finite or not).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Number of finite values observed.
    pub fn finite(&self) -> u64 {
        self.count
            .saturating_sub(self.nan)
            .saturating_sub(self.pos_inf)
            .saturating_sub(self.neg_inf)
    }

    /// Number of values exactly zero.
    pub fn zeros(&self) -> u64 {
        self.zeros
    }

    /// Number of NaN values.
    pub fn nan(&self) -> u64 {
        self.nan
    }

    /// Number of +Inf and -Inf values.
    pub fn infinities(&self) -> (u64, u64) {
        (self.pos_inf, self.neg_inf)
    }

    /// Smallest finite value.
    pub fn min(&self) -> Option<f32> {
        self.min
    }

    /// Largest finite value.
    pub fn max(&self) -> Option<f32> {
        self.max
    }

    /// Largest |x| over finite values (0 when none).
    pub fn abs_max(&self) -> f32 {
        match (self.min, self.max) {
            (Some(a), Some(b)) => a.abs().max(b.abs()),
            _ => 0.0,
        }
    }

    /// Sum of the finite values (correctly rounded from the exact sum).
    pub fn sum(&self) -> f64 {
        self.sum.to_f64()
    }

    /// Sum of squares of the finite values (correctly rounded from the exact sum).
    pub fn sum_sq(&self) -> f64 {
        self.sum_sq.to_f64()
    }

    /// Mean of the finite values.
    pub fn mean(&self) -> Option<f64> {
        let n = self.finite();
        (n > 0).then(|| self.sum() / n as f64)
    }

    /// Population standard deviation of the finite values.
    pub fn std(&self) -> Option<f64> {
        let n = self.finite() as f64;
        let mean = self.mean()?;
        Some((self.sum_sq() / n - mean * mean).max(0.0).sqrt())
    }

    /// The histogram of non-zero finite values.
    pub fn histogram(&self) -> &Histogram {
        &self.hist
    }
}

/// Runs `f` on the values of a float tensor as f32 (contiguous f32 data is not copied).
fn with_f32_values<R>(
    tensor: &str,
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> Result<R, CalibError> {
    Ok(match t {
        Tensor::F32(a) => match a.as_slice() {
            Some(s) => f(s),
            None => f(&a.iter().copied().collect::<Vec<_>>()),
        },
        Tensor::F16(a) => f(&a.iter().map(|v| v.to_f32()).collect::<Vec<_>>()),
        Tensor::BF16(a) => f(&a.iter().map(|v| v.to_f32()).collect::<Vec<_>>()),
        Tensor::F64(a) => f(&a.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        other => {
            return Err(CalibError::NotFloat {
                tensor: tensor.to_string(),
                dtype: other.dtype().name(),
            })
        }
    })
}

/// Min/max of each slice along one axis (per-channel weights and activations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "repr::ChannelRepr", into = "repr::ChannelRepr")]
pub struct ChannelStats {
    axis: usize,
    /// Per channel: number of finite values, min, max (`None` before a finite value).
    count: Vec<u64>,
    min: Vec<Option<f32>>,
    max: Vec<Option<f32>>,
    /// Non-finite values over all channels.
    non_finite: u64,
}

impl ChannelStats {
    /// Empty statistics for slices along `axis` (the channel count is fixed by the first sample).
    pub fn new(axis: usize) -> Self {
        ChannelStats {
            axis,
            count: Vec::new(),
            min: Vec::new(),
            max: Vec::new(),
            non_finite: 0,
        }
    }

    /// The channel axis.
    pub fn axis(&self) -> usize {
        self.axis
    }

    /// Number of channels (0 before the first sample).
    pub fn channels(&self) -> usize {
        self.count.len()
    }

    /// Per-channel minimum of finite values.
    pub fn min(&self) -> &[Option<f32>] {
        &self.min
    }

    /// Per-channel maximum of finite values.
    pub fn max(&self) -> &[Option<f32>] {
        &self.max
    }

    /// Per-channel number of finite values.
    pub fn counts(&self) -> &[u64] {
        &self.count
    }

    /// Number of NaN/Inf values seen over all channels.
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    fn ensure_channels(&mut self, tensor: &str, channels: usize) -> Result<(), CalibError> {
        if self.count.is_empty() {
            self.count = vec![0; channels];
            self.min = vec![None; channels];
            self.max = vec![None; channels];
        } else if self.count.len() != channels {
            return Err(CalibError::ChannelMismatch {
                tensor: tensor.to_string(),
                expected: self.count.len(),
                found: channels,
            });
        }
        Ok(())
    }

    /// Adds one sample in row-major order with the given shape.
    pub fn observe(
        &mut self,
        tensor: &str,
        shape: &[usize],
        values: &[f32],
    ) -> Result<(), CalibError> {
        if self.axis >= shape.len() {
            return Err(CalibError::BadAxis {
                tensor: tensor.to_string(),
                axis: self.axis,
                rank: shape.len(),
            });
        }
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(CalibError::ShapeMismatch {
                tensor: tensor.to_string(),
                shape: shape.to_vec(),
                len: values.len(),
            });
        }
        let channels = shape[self.axis];
        self.ensure_channels(tensor, channels)?;
        let inner: usize = shape[self.axis + 1..].iter().product();
        if inner == 0 || channels == 0 {
            return Ok(());
        }
        for (i, chunk) in values.chunks(inner).enumerate() {
            let c = i % channels;
            let mut lo = f32::INFINITY;
            let mut hi = f32::NEG_INFINITY;
            let mut n = 0u64;
            for &x in chunk {
                if x.is_finite() {
                    lo = lo.min(x);
                    hi = hi.max(x);
                    n += 1;
                } else {
                    self.non_finite += 1;
                }
            }
            if n > 0 {
                let (lo, hi) = (lo + 0.0, hi + 0.0);
                self.count[c] = self.count[c].saturating_add(n);
                self.min[c] = Some(self.min[c].map_or(lo, |m| m.min(lo)));
                self.max[c] = Some(self.max[c].map_or(hi, |m| m.max(hi)));
            }
        }
        Ok(())
    }

    /// Adds one sample given as a host tensor (float types only).
    pub fn observe_tensor(&mut self, tensor: &str, t: &Tensor) -> Result<(), CalibError> {
        let shape = t.shape();
        with_f32_values(tensor, t, |v| self.observe(tensor, &shape, v))?
    }

    /// Adds the statistics of another shard (same axis and channel count).
    pub fn merge(&mut self, tensor: &str, other: &ChannelStats) -> Result<(), CalibError> {
        if self.axis != other.axis {
            return Err(CalibError::AxisMismatch {
                tensor: tensor.to_string(),
                a: self.axis,
                b: other.axis,
            });
        }
        if other.count.is_empty() {
            self.non_finite = self.non_finite.saturating_add(other.non_finite);
            return Ok(());
        }
        self.ensure_channels(tensor, other.count.len())?;
        for c in 0..other.count.len() {
            self.count[c] = self.count[c].saturating_add(other.count[c]);
            self.min[c] = match (self.min[c], other.min[c]) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.max[c] = match (self.max[c], other.max[c]) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        self.non_finite = self.non_finite.saturating_add(other.non_finite);
        Ok(())
    }
}

/// Serialized forms. Floats are written as f64 (f32 → f64 is exact, and the JSON writer
/// prints the shortest text that parses back to the same f64), exact sums as hex strings.
mod repr {
    use super::*;

    /// An f32 stored through its exact f64 value.
    #[derive(Clone, Copy, Debug, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct F32Exact(pub f64);

    impl F32Exact {
        pub fn from_f32(v: f32) -> Self {
            F32Exact(v as f64)
        }
        pub fn to_f32(self, what: &str) -> Result<f32, String> {
            let v = self.0 as f32;
            if v as f64 == self.0 && v.is_finite() {
                Ok(v + 0.0)
            } else {
                Err(format!("{what} {} is not a finite f32 value", self.0))
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HistRepr {
        pub log2_width: i32,
        pub neg: Vec<u64>,
        pub pos: Vec<u64>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StatsRepr {
        pub count: u64,
        pub zeros: u64,
        pub nan: u64,
        pub pos_inf: u64,
        pub neg_inf: u64,
        pub min: Option<F32Exact>,
        pub max: Option<F32Exact>,
        pub sum: String,
        pub sum_sq: String,
        pub hist: HistRepr,
    }

    impl From<TensorStats> for StatsRepr {
        fn from(s: TensorStats) -> Self {
            StatsRepr {
                count: s.count,
                zeros: s.zeros,
                nan: s.nan,
                pos_inf: s.pos_inf,
                neg_inf: s.neg_inf,
                min: s.min.map(F32Exact::from_f32),
                max: s.max.map(F32Exact::from_f32),
                sum: s.sum.to_string(),
                sum_sq: s.sum_sq.to_string(),
                hist: HistRepr {
                    log2_width: s.hist.log2_width,
                    neg: s.hist.neg,
                    pos: s.hist.pos,
                },
            }
        }
    }

    impl TryFrom<StatsRepr> for TensorStats {
        type Error = String;
        fn try_from(r: StatsRepr) -> Result<Self, String> {
            let min = r.min.map(|v| v.to_f32("min")).transpose()?;
            let max = r.max.map(|v| v.to_f32("max")).transpose()?;
            let s = TensorStats {
                count: r.count,
                zeros: r.zeros,
                nan: r.nan,
                pos_inf: r.pos_inf,
                neg_inf: r.neg_inf,
                min,
                max,
                sum: ValueSum::parse(&r.sum)?,
                sum_sq: SquareSum::parse(&r.sum_sq)?,
                hist: Histogram {
                    log2_width: r.hist.log2_width,
                    neg: r.hist.neg,
                    pos: r.hist.pos,
                },
            };
            s.validate()?;
            Ok(s)
        }
    }

    impl TensorStats {
        /// Checks the invariants a deserialized value must satisfy (so that merging it keeps
        /// the canonical form).
        fn validate(&self) -> Result<(), String> {
            let bins = self.hist.total() as u128;
            let finite = self.zeros as u128 + bins;
            let total = finite + self.nan as u128 + self.pos_inf as u128 + self.neg_inf as u128;
            if total != self.count as u128 {
                return Err(format!(
                    "count {} differs from zeros + bins + non-finite = {total}",
                    self.count
                ));
            }
            match (self.min, self.max) {
                (None, None) if finite == 0 => {}
                (Some(lo), Some(hi)) if finite > 0 && lo <= hi => {}
                _ => return Err("min/max inconsistent with the counts".into()),
            }
            let k = log2_width_for(self.abs_max());
            if self.hist.log2_width != k {
                return Err(format!(
                    "histogram log2_width {} is not the canonical {k} for abs-max {}",
                    self.hist.log2_width,
                    self.abs_max()
                ));
            }
            // The outermost non-empty bin on each side is the one holding max (resp. min).
            for (name, side, bound) in [
                ("pos", &self.hist.pos, self.max.unwrap_or(0.0).max(0.0)),
                ("neg", &self.hist.neg, -self.min.unwrap_or(0.0).min(0.0)),
            ] {
                let expected_len = if bound > 0.0 {
                    self.hist.index(bound) + 1
                } else {
                    0
                };
                if side.len() != expected_len || side.last() == Some(&0) {
                    return Err(format!(
                        "histogram {name} does not end at the bin of the min/max"
                    ));
                }
            }
            if (self.sum.is_zero() && self.sum_sq.is_zero()) != (bins == 0) {
                return Err("sums inconsistent with the counts".into());
            }
            Ok(())
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ChannelRepr {
        pub axis: usize,
        pub count: Vec<u64>,
        pub min: Vec<Option<F32Exact>>,
        pub max: Vec<Option<F32Exact>>,
        pub non_finite: u64,
    }

    impl From<ChannelStats> for ChannelRepr {
        fn from(c: ChannelStats) -> Self {
            ChannelRepr {
                axis: c.axis,
                count: c.count,
                min: c.min.iter().map(|v| v.map(F32Exact::from_f32)).collect(),
                max: c.max.iter().map(|v| v.map(F32Exact::from_f32)).collect(),
                non_finite: c.non_finite,
            }
        }
    }

    impl TryFrom<ChannelRepr> for ChannelStats {
        type Error = String;
        fn try_from(r: ChannelRepr) -> Result<Self, String> {
            let n = r.count.len();
            if r.min.len() != n || r.max.len() != n {
                return Err("per-channel count/min/max lengths differ".into());
            }
            let min = r
                .min
                .iter()
                .map(|v| v.map(|x| x.to_f32("min")).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            let max = r
                .max
                .iter()
                .map(|v| v.map(|x| x.to_f32("max")).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            for c in 0..n {
                let ok = match (min[c], max[c]) {
                    (None, None) => r.count[c] == 0,
                    (Some(lo), Some(hi)) => r.count[c] > 0 && lo <= hi,
                    _ => false,
                };
                if !ok {
                    return Err(format!("channel {c}: min/max inconsistent with its count"));
                }
            }
            Ok(ChannelStats {
                axis: r.axis,
                count: r.count,
                min,
                max,
                non_finite: r.non_finite,
            })
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sums_are_per_chunk_f64_sums_added_exactly() {
        // Values across the whole exponent range, subnormals and both signs included, over
        // more than one chunk.
        let mut vals = vec![
            f32::from_bits(1),
            -f32::from_bits(7),
            1e-40,
            3.0e38,
            -2.5e38,
        ];
        let mut x: u32 = 12345;
        while vals.len() < 2 * CHUNK + 13 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            if v.is_finite() {
                vals.push(v);
            }
        }
        let mut st = TensorStats::new();
        st.observe(&vals);
        // Reference: per chunk, value i goes to lane i mod 8; lanes summed in order.
        let mut s = ValueSum::default();
        let mut q = SquareSum::default();
        for chunk in vals.chunks(CHUNK) {
            let (mut ls, mut lq) = ([0f64; 8], [0f64; 8]);
            for (i, &v) in chunk.iter().enumerate() {
                ls[i % 8] += v as f64;
                lq[i % 8] += v as f64 * v as f64;
            }
            s.add_f64(ls.iter().fold(0.0, |a, b| a + b));
            q.add_f64(lq.iter().fold(0.0, |a, b| a + b));
        }
        assert!(st.sum == s, "sums differ");
        assert!(st.sum_sq == q, "sums of squares differ");
        // A chunk with a NaN takes the value-by-value path; its sums are those of the fast
        // path with a zero in the NaN's place.
        let (mut with_nan, mut with_zero) = (vals.clone(), vals.clone());
        with_nan[CHUNK + 5] = f32::NAN;
        with_zero[CHUNK + 5] = 0.0;
        let (mut a, mut b) = (TensorStats::new(), TensorStats::new());
        a.observe(&with_nan);
        b.observe(&with_zero);
        assert!(a.sum == b.sum && a.sum_sq == b.sum_sq);
        assert_eq!(a.nan(), 1);
    }

    #[test]
    fn every_instruction_set_gives_the_same_statistics() {
        // The vectorised build chosen for this CPU against the scalar one, on values that
        // take every path: signs, zeros of both signs, subnormals, a NaN chunk, a widening.
        let mut vals: Vec<f32> = (0..CHUNK + 4099)
            .map(|i| {
                ((i as f32 * 0.731).sin() * 40.0).powi(3) * if i % 7 == 0 { 0.0 } else { 1e-3 }
            })
            .collect();
        vals[11] = -0.0;
        vals[12] = f32::from_bits(3);
        let mut second = vals.clone();
        second[CHUNK + 1] = f32::NAN;
        second[5] = 9.0e5;
        let (mut fast, mut scalar) = (TensorStats::new(), TensorStats::new());
        for v in [&vals, &second] {
            fast.observe_on(pulp::Arch::new(), v);
            scalar.observe_on(pulp::Arch::Scalar, v);
        }
        assert_eq!(json(&fast), json(&scalar));
        assert_eq!(fast.nan(), 1);
    }

    #[test]
    fn sums_are_close_to_the_exact_sums() {
        let vals: Vec<f32> = (0..3 * CHUNK)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let mut st = TensorStats::new();
        st.observe(&vals);
        let (mut s, mut q) = (ValueSum::default(), SquareSum::default());
        for &v in &vals {
            s.add_f32(v);
            q.add_square(v);
        }
        assert!((st.sum() - s.to_f64()).abs() <= 1e-9 * q.to_f64().sqrt());
        assert!((st.sum_sq() - q.to_f64()).abs() <= 1e-12 * q.to_f64());
    }
    use super::*;
    use proptest::prelude::*;

    fn json(s: &TensorStats) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn grid_follows_abs_max() {
        // abs-max 1.0 = 2^0 → k = -11: 1.0 / 2^-11 = 2048 bins.
        assert_eq!(log2_width_for(1.0), -11);
        // 3.9 ∈ [2, 4) → floor log2 = 1 → k = -10; 3.9 · 2^10 = 3993.6 → bin 3993 < 4096.
        assert_eq!(log2_width_for(3.9), -10);
        assert_eq!(log2_width_for(0.0), MIN_LOG2_WIDTH);
        assert_eq!(log2_width_for(f32::from_bits(1)), -149 - 11);
        assert_eq!(log2_width_for(f32::MAX), 127 - 11);
    }

    #[test]
    fn observe_counts_and_bins() {
        let mut s = TensorStats::new();
        // abs-max 2048 → k = 0, w = 1: bins are unit intervals.
        s.observe(&[
            0.0,
            -0.0,
            0.5,
            1.0,
            2.5,
            -2.5,
            -0.25,
            2048.0,
            f32::NAN,
            f32::INFINITY,
        ]);
        assert_eq!(s.count(), 10);
        assert_eq!(s.finite(), 8);
        assert_eq!(s.zeros(), 2);
        assert_eq!(s.nan(), 1);
        assert_eq!(s.infinities(), (1, 0));
        assert_eq!(s.min(), Some(-2.5));
        assert_eq!(s.max(), Some(2048.0));
        let h = s.histogram();
        assert_eq!(h.log2_width(), 0);
        // pos: 0.5 → bin 0, 1.0 → bin 1, 2.5 → bin 2, 2048 → bin 2048.
        assert_eq!(&h.pos()[..3], &[1, 1, 1]);
        assert_eq!(h.pos().len(), 2049);
        assert_eq!(h.pos()[2048], 1);
        // neg: -0.25 → bin 0, -2.5 → bin 2.
        assert_eq!(h.neg(), &[1, 0, 1]);
        assert_eq!(s.sum(), 0.5 + 1.0 + 2.5 - 2.5 - 0.25 + 2048.0);
        assert_eq!(
            s.sum_sq(),
            0.25 + 1.0 + 6.25 + 6.25 + 0.0625 + 2048.0 * 2048.0
        );
        // -0.0 and 0.0 are the same zero for min/max.
        let mut z = TensorStats::new();
        z.observe(&[-0.0]);
        assert_eq!(z.min().unwrap().to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn widening_merges_bin_pairs() {
        let mut s = TensorStats::new();
        s.observe(&[1.0, 3.0, 2048.0]); // k = 0: bins 1, 3, 2048
        s.observe(&[4096.0]); // k = 1: bins 0, 1, 1024, 2048
        let h = s.histogram();
        assert_eq!(h.log2_width(), 1);
        assert_eq!(h.pos()[0], 1);
        assert_eq!(h.pos()[1], 1);
        assert_eq!(h.pos()[1024], 1);
        assert_eq!(h.pos()[2048], 1);
        assert_eq!(h.total(), 4);
        // Same values in the other order give the same state.
        let mut t = TensorStats::new();
        t.observe(&[4096.0]);
        t.observe(&[2048.0, 3.0, 1.0]);
        assert_eq!(json(&s), json(&t));
    }

    #[test]
    fn only_non_finite_values() {
        let mut s = TensorStats::new();
        s.observe(&[f32::NAN, f32::NEG_INFINITY]);
        assert_eq!(s.finite(), 0);
        assert_eq!(s.min(), None);
        assert_eq!(s.mean(), None);
        let back: TensorStats = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn deserialization_rejects_broken_invariants() {
        let mut s = TensorStats::new();
        s.observe(&[1.0, -2.0, 0.0]);
        let good = json(&s);
        assert_eq!(serde_json::from_str::<TensorStats>(&good).unwrap(), s);
        let bad = [
            good.replace("\"count\":3", "\"count\":4"),
            good.replace("\"log2_width\":-10", "\"log2_width\":-9"),
            good.replace("\"max\":1.0", "\"max\":0.1"),
            good.replace("\"max\":1.0", "\"max\":-3.0"),
            good.replace("\"zeros\":1", "\"zeros\":1,\"extra\":2"),
        ];
        for b in bad {
            assert_ne!(b, good);
            assert!(serde_json::from_str::<TensorStats>(&b).is_err(), "{b}");
        }
    }

    #[test]
    fn f32_values_round_trip_exactly_through_json() {
        let mut s = TensorStats::new();
        let vals = [
            0.1f32,
            -3.4028235e38,
            1.1754942e-38,
            f32::from_bits(1),
            16777217.0,
        ];
        s.observe(&vals);
        let back: TensorStats = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(back.min().unwrap().to_bits(), (-3.4028235e38f32).to_bits());
        assert_eq!(back.max().unwrap().to_bits(), 16777216f32.to_bits());
        assert_eq!(back.sum().to_bits(), s.sum().to_bits());
        assert_eq!(back, s);
    }

    #[test]
    fn channel_stats() {
        // shape [2, 3, 2], axis 1: channel of element (a, c, b) is c.
        let data: Vec<f32> = (0..12).map(|i| i as f32 - 5.0).collect();
        let mut c = ChannelStats::new(1);
        c.observe("w", &[2, 3, 2], &data).unwrap();
        // channel 0 holds indices 0,1,6,7 → values -5,-4,1,2.
        assert_eq!(c.min(), &[Some(-5.0), Some(-3.0), Some(-1.0)]);
        assert_eq!(c.max(), &[Some(2.0), Some(4.0), Some(6.0)]);
        assert_eq!(c.counts(), &[4, 4, 4]);
        let mut other = ChannelStats::new(1);
        other
            .observe("w", &[1, 3, 1], &[10.0, f32::NAN, -10.0])
            .unwrap();
        c.merge("w", &other).unwrap();
        assert_eq!(c.max()[0], Some(10.0));
        assert_eq!(c.min()[2], Some(-10.0));
        assert_eq!(c.non_finite(), 1);
        let back: ChannelStats = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(matches!(
            c.observe("w", &[3, 4], &[0.0; 12]),
            Err(CalibError::ChannelMismatch { .. })
        ));
        assert!(matches!(
            c.observe("w", &[3], &[0.0; 3]),
            Err(CalibError::BadAxis { .. })
        ));
        assert!(matches!(
            c.observe("w", &[1, 3], &[0.0; 2]),
            Err(CalibError::ShapeMismatch { .. })
        ));
        assert!(c.merge("w", &ChannelStats::new(0)).is_err());
        let t = Tensor::I8(ndarray::arr1(&[1i8]).into_dyn());
        let err = c.observe_tensor("w", &t).unwrap_err().to_string();
        assert!(err.contains("'w'") && err.contains("i8"), "{err}");
    }

    #[test]
    fn observes_other_float_tensors() {
        use ndarray::arr1;
        let mut a = TensorStats::new();
        a.observe_tensor("t", &Tensor::F64(arr1(&[0.5f64, -2.0, 1e300]).into_dyn()))
            .unwrap();
        // 1e300 does not fit f32: it becomes +Inf and is counted as such.
        assert_eq!(
            (a.min(), a.max(), a.infinities()),
            (Some(-2.0), Some(0.5), (1, 0))
        );
        let mut b = TensorStats::new();
        let h = [half::f16::from_f32(0.5), half::f16::from_f32(-2.0)];
        b.observe_tensor("t", &Tensor::F16(arr1(&h).into_dyn()))
            .unwrap();
        let mut c = TensorStats::new();
        // A non-contiguous f32 view: the transposed 2×2 [[1, 2], [3, 4]].
        let m = ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]])
            .reversed_axes()
            .into_dyn();
        c.observe_tensor("t", &Tensor::F32(m)).unwrap();
        assert_eq!((c.count(), c.sum()), (4, 10.0));
        assert_eq!((b.min(), b.max()), (Some(-2.0), Some(0.5)));
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -10.0f32..10.0,
            2 => -1e-3f32..1e-3,
            1 => -1e6f32..1e6,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => any::<f32>(),
            1 => Just(f32::from_bits(3)),
        ]
    }

    fn samples() -> impl Strategy<Value = Vec<Vec<f32>>> {
        prop::collection::vec(prop::collection::vec(value(), 0..40), 1..10)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The branch-free fast path (finite samples) and the value-by-value path (taken when a
        /// sample holds NaN or infinities) reach the same state.
        #[test]
        fn fast_and_value_by_value_paths_agree(samples in samples()) {
            let mut fast = TensorStats::new();
            let mut slow = TensorStats::new();
            for s in &samples {
                let finite: Vec<f32> = s.iter().copied().filter(|x| x.is_finite()).collect();
                fast.observe(&finite);
                slow.observe_value_by_value(&finite);
            }
            prop_assert_eq!(json(&fast), json(&slow));
        }

        /// Shards split at random points and merged in different orders (and through JSON)
        /// serialize to exactly the bytes of one run over all samples.
        #[test]
        fn merged_shards_are_bit_identical(samples in samples(), cuts in prop::collection::vec(0usize..100, 0..5), rot in 0usize..10) {
            let mut one = TensorStats::new();
            for s in &samples {
                one.observe(s);
            }
            let reference = json(&one);

            let mut points: Vec<usize> = cuts.iter().map(|c| c % (samples.len() + 1)).collect();
            points.push(0);
            points.push(samples.len());
            points.sort_unstable();
            points.dedup();
            let shards: Vec<TensorStats> = points
                .windows(2)
                .map(|w| {
                    let mut t = TensorStats::new();
                    // Within a shard, observe samples in reverse order.
                    for s in samples[w[0]..w[1]].iter().rev() {
                        t.observe(s);
                    }
                    t
                })
                .collect();

            // Left fold in order.
            let mut a = TensorStats::new();
            for s in &shards {
                a.merge(s);
            }
            prop_assert_eq!(&json(&a), &reference);

            // Rotated order, each shard passed through JSON.
            let n = shards.len();
            let mut b = TensorStats::new();
            for i in 0..n {
                let shard: TensorStats = serde_json::from_str(&json(&shards[(i + rot) % n])).unwrap();
                b.merge(&shard);
            }
            prop_assert_eq!(&json(&b), &reference);

            // Right fold (tree shape differs).
            let mut c = shards[n - 1].clone();
            for s in shards[..n - 1].iter().rev() {
                let mut acc = s.clone();
                acc.merge(&c);
                c = acc;
            }
            prop_assert_eq!(&json(&c), &reference);

            // Every sample as its own shard, in reverse.
            let mut d = TensorStats::new();
            for s in samples.iter().rev() {
                let mut t = TensorStats::new();
                t.observe(s);
                d.merge(&t);
            }
            prop_assert_eq!(json(&d), reference);
        }

        /// Per-channel statistics merged from shards in any order equal one run.
        #[test]
        fn channel_shards_merge_exactly(rows in prop::collection::vec(prop::collection::vec(value(), 3), 1..30), cut in 0usize..30) {
            let mut one = ChannelStats::new(1);
            for r in &rows {
                one.observe("c", &[1, 3], r).unwrap();
            }
            let cut = cut % (rows.len() + 1);
            let (mut a, mut b) = (ChannelStats::new(1), ChannelStats::new(1));
            for r in rows[..cut].iter().rev() {
                a.observe("c", &[1, 3], r).unwrap();
            }
            for r in &rows[cut..] {
                b.observe("c", &[1, 3], r).unwrap();
            }
            let mut ba = b.clone();
            ba.merge("c", &a).unwrap();
            a.merge("c", &b).unwrap();
            let text = serde_json::to_string(&one).unwrap();
            prop_assert_eq!(serde_json::to_string(&a).unwrap(), text.clone());
            prop_assert_eq!(serde_json::to_string(&ba).unwrap(), text);
        }

        /// Whatever was observed, the histogram stays within the memory bound and its counts
        /// add up, and JSON round-trips.
        #[test]
        fn bounded_and_consistent(samples in samples()) {
            let mut s = TensorStats::new();
            for x in &samples {
                s.observe(x);
            }
            let h = s.histogram();
            prop_assert!(h.pos().len() <= MAX_BINS && h.neg().len() <= MAX_BINS);
            prop_assert_eq!(h.total() + s.zeros(), s.finite());
            let back: TensorStats = serde_json::from_str(&json(&s)).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
