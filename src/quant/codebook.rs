//! Non-uniform weight grids: a small table of levels (the codebook) per output channel (or
//! per tensor), each weight stored as the index of its level. Two families:
//!
//! - **k-means** ([`kmeans`]): at most `2^bits` levels by Lloyd's algorithm on the channel's
//!   values, each value weighted by the energy of the input it multiplies (the diagonal of
//!   `XᵀX` from calibration data: a level is worth more where the layer's input is large),
//!   or unweighted. Initialisation is deterministic: the weighted quantiles at
//!   `(j + ½) / k`. The values are sorted once, so a cluster is a run of consecutive
//!   values and one iteration is `k` binary searches over prefix sums; iterations stop when
//!   no centroid moves, or after [`MAX_ITERS`] (Lloyd's error never rises, so the cap only
//!   bounds the work). An empty cluster keeps its centroid.
//! - **power of two** ([`pow2`]): `0` and `±m·2^-j`, `j = 0 … 2^(bits−1) − 2` (3 bits:
//!   `0, ±m, ±m/2, ±m/4`), the kind of grid shift-based kernels multiply by; `m` is the
//!   channel's largest magnitude shrunk by the factor (`1, 0.975, …, 0.525`) of least
//!   weighted squared error.
//!
//! [`int_codebook`] puts either family on a channel's integer grid (`q · scale`, codes in
//! `[qmin, qmax]`), so the weight can be written as integers read through DequantizeLinear:
//! k-means levels are rounded to the nearest code (duplicates merged); power-of-two levels
//! are the codes `±2^j` exactly, with `scale = m / 2^(n−1)`. Every value then takes the
//! level of least error `|w − q·scale|` in float32 (the lower level on a tie).
//!
//! Everything is deterministic: fixed summation order, total orders on floats, no threads.

use serde::{Deserialize, Serialize};

/// Lloyd iterations at most.
pub const MAX_ITERS: usize = 100;

/// The weight grid of the static mode (`--weight-grid`, `--weight-bits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeightGrid {
    /// Evenly spaced codes (the weight's integer type and range say how many).
    #[default]
    Uniform,
    /// `2^bits` levels per channel by k-means.
    Kmeans { bits: u32 },
    /// `0, ±2^j` codes per channel (`2^bits − 1` levels).
    Pow2 { bits: u32 },
    /// Evenly spaced codes with one scale per block of `size` consecutive values along the
    /// weight's other axis (a 2-D weight whose channel axis is the plan's `axis`: the
    /// reduction axis of a MatMul/Gemm weight, the width of an embedding table), written
    /// as `DequantizeLinear` with `block_size` (opset 21). Only `--size-budget` and the
    /// overrides file choose it (`w4b32`…).
    Block { size: u32 },
}

impl WeightGrid {
    /// Bits of a codebook index, `None` for a uniform grid.
    pub fn index_bits(&self) -> Option<u32> {
        match *self {
            WeightGrid::Uniform | WeightGrid::Block { .. } => None,
            WeightGrid::Kmeans { bits } | WeightGrid::Pow2 { bits } => Some(bits),
        }
    }

    pub fn is_uniform(&self) -> bool {
        *self == WeightGrid::Uniform
    }

    /// `kmeans 4-bit`, `pow2 3-bit`, `uniform`.
    pub fn describe(&self) -> String {
        match *self {
            WeightGrid::Uniform => "uniform".into(),
            WeightGrid::Kmeans { bits } => format!("kmeans {bits}-bit"),
            WeightGrid::Pow2 { bits } => format!("pow2 {bits}-bit"),
            WeightGrid::Block { size } => format!("blocks of {size}"),
        }
    }

    /// Values per block of a blocked grid.
    pub fn block(&self) -> Option<usize> {
        match *self {
            WeightGrid::Block { size } => Some(size as usize),
            _ => None,
        }
    }
}

/// Values sorted with their weights, and prefix sums of `w`, `w·x` and `w·x²`.
struct Sorted {
    x: Vec<f64>,
    cw: Vec<f64>,
    cwx: Vec<f64>,
}

impl Sorted {
    fn new(vals: &[f64], wts: Option<&[f64]>) -> Sorted {
        let mut pairs: Vec<(f64, f64)> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, wts.map_or(1.0, |w| w[i].max(0.0))))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let (mut cw, mut cwx) = (vec![0.0], vec![0.0]);
        for &(x, w) in &pairs {
            cw.push(cw.last().unwrap() + w);
            cwx.push(cwx.last().unwrap() + w * x);
        }
        Sorted {
            x: pairs.iter().map(|p| p.0).collect(),
            cw,
            cwx,
        }
    }

    /// Index of the first value above `t`.
    fn split(&self, t: f64) -> usize {
        self.x.partition_point(|&v| v <= t)
    }
}

/// Weighted 1-D k-means of `vals` (weights `wts`, one per value; `None`: all 1) into at
/// most `k` levels, sorted ascending and distinct. All-zero weights count as unweighted.
pub fn kmeans(vals: &[f64], wts: Option<&[f64]>, k: usize) -> Vec<f64> {
    if vals.is_empty() || k == 0 {
        return vec![0.0];
    }
    let wts = wts.filter(|w| w.iter().any(|&v| v > 0.0));
    let s = Sorted::new(vals, wts);
    let n = s.x.len();
    let total = s.cw[n];
    // Weighted quantiles at (j + 1/2)/k.
    let mut c: Vec<f64> = (0..k)
        .map(|j| {
            let target = (j as f64 + 0.5) / k as f64 * total;
            let i = s.cw[1..].partition_point(|&v| v < target).min(n - 1);
            s.x[i]
        })
        .collect();
    c.dedup();
    for _ in 0..MAX_ITERS {
        let mut moved = false;
        let mut lo = 0;
        for j in 0..c.len() {
            let hi = if j + 1 < c.len() {
                s.split(0.5 * (c[j] + c[j + 1]))
            } else {
                n
            };
            let w = s.cw[hi] - s.cw[lo];
            if hi > lo && w > 0.0 {
                let m = (s.cwx[hi] - s.cwx[lo]) / w;
                if m != c[j] {
                    moved = true;
                    c[j] = m;
                }
            }
            lo = hi;
        }
        c.sort_by(f64::total_cmp);
        c.dedup();
        if !moved {
            break;
        }
    }
    c
}

/// The power-of-two levels `0, ±m·2^-j` for `bits` (ascending).
pub fn pow2_levels(m: f64, bits: u32) -> Vec<f64> {
    let n = (1i32 << (bits - 1)) - 1;
    let mut l: Vec<f64> = (0..n).map(|j| m * 2f64.powi(-j)).collect();
    l.extend((0..n).map(|j| -m * 2f64.powi(-j)));
    l.push(0.0);
    l.sort_by(f64::total_cmp);
    l.dedup();
    l
}

/// Index of the level nearest `v` in the ascending `levels` (the lower one on a tie).
pub fn nearest(levels: &[f64], v: f64) -> usize {
    let i = levels.partition_point(|&l| l < v);
    if i == 0 {
        return 0;
    }
    if i == levels.len() {
        return i - 1;
    }
    if v - levels[i - 1] <= levels[i] - v {
        i - 1
    } else {
        i
    }
}

/// Weighted squared error of `vals` on `levels`.
pub fn error(vals: &[f64], wts: Option<&[f64]>, levels: &[f64]) -> f64 {
    vals.iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = v - levels[nearest(levels, v)];
            wts.map_or(1.0, |w| w[i]) * d * d
        })
        .sum()
}

/// Range shrink factors the power-of-two search tries, widest first.
fn shrink_factors() -> impl Iterator<Item = f64> {
    (0..20).map(|k| 1.0 - 0.025 * k as f64)
}

/// The largest level `m` of the power-of-two grid of least weighted error.
pub fn pow2_max(vals: &[f64], wts: Option<&[f64]>, bits: u32) -> f64 {
    let amax = vals.iter().fold(0f64, |a, &v| a.max(v.abs()));
    let mut best = (f64::INFINITY, amax);
    for f in shrink_factors() {
        let e = error(vals, wts, &pow2_levels(amax * f, bits));
        if e < best.0 {
            best = (e, amax * f);
        }
    }
    best.1
}

/// The power-of-two levels of least weighted error.
pub fn pow2(vals: &[f64], wts: Option<&[f64]>, bits: u32) -> Vec<f64> {
    pow2_levels(pow2_max(vals, wts, bits), bits)
}

/// One channel on an integer grid: its scale, levels (codes, ascending) and each value's
/// level index.
#[derive(Clone, Debug, PartialEq)]
pub struct IntCodebook {
    pub scale: f32,
    pub levels: Vec<i64>,
    pub index: Vec<u8>,
}

impl IntCodebook {
    /// The float32 value of element `i`.
    pub fn value(&self, i: usize) -> f32 {
        self.levels[self.index[i] as usize] as f32 * self.scale
    }
}

/// Why a codebook cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodebookError {
    #[error("{grid} needs codes ±{need}, but the weight grid reaches only ±{qmax}")]
    Range { grid: String, need: i64, qmax: i64 },
}

/// The channel `vals` (weights `wts`) on `grid` (k-means or power of two) over the codes
/// `[-qmax, qmax]`; `scale` is the channel's uniform scale (`max|w| / qmax`), which
/// k-means keeps (see the module doc).
pub fn int_codebook(
    vals: &[f32],
    wts: Option<&[f64]>,
    grid: WeightGrid,
    scale: f32,
    qmax: i64,
) -> Result<IntCodebook, CodebookError> {
    let x: Vec<f64> = vals.iter().map(|&v| v as f64).collect();
    let (scale, levels): (f32, Vec<i64>) = match grid {
        WeightGrid::Uniform | WeightGrid::Block { .. } => {
            unreachable!("uniform and blocked grids have no codebook")
        }
        WeightGrid::Kmeans { bits } => {
            let c = kmeans(&x, wts, 1usize << bits);
            let mut l: Vec<i64> = c
                .iter()
                .map(|&v| ((v / scale as f64).round_ties_even() as i64).clamp(-qmax, qmax))
                .collect();
            l.sort_unstable();
            l.dedup();
            (scale, l)
        }
        WeightGrid::Pow2 { bits } => {
            let n = (1i64 << (bits - 1)) - 1;
            let top = 1i64 << (n - 1).max(0);
            if top > qmax {
                return Err(CodebookError::Range {
                    grid: grid.describe(),
                    need: top,
                    qmax,
                });
            }
            let m = pow2_max(&x, wts, bits);
            let s = (m / top as f64) as f32;
            let s = if s.is_finite() && s >= f32::MIN_POSITIVE {
                s
            } else {
                1.0
            };
            let mut l: Vec<i64> = (0..n).flat_map(|j| [1i64 << j, -(1i64 << j)]).collect();
            l.push(0);
            l.sort_unstable();
            (s, l)
        }
    };
    let fl: Vec<f32> = levels.iter().map(|&q| q as f32 * scale).collect();
    let index = vals
        .iter()
        .map(|&v| {
            let mut best = (f32::INFINITY, 0usize);
            for (i, &l) in fl.iter().enumerate() {
                let d = (v - l).abs();
                if d < best.0 {
                    best = (d, i);
                }
            }
            best.1 as u8
        })
        .collect();
    Ok(IntCodebook {
        scale,
        levels,
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard normal values (Box–Muller on an xorshift stream).
    fn gaussian(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut u = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (a, b) = (u(), u());
                (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
            })
            .collect()
    }

    fn sqnr(vals: &[f64], levels: &[f64]) -> f64 {
        let sig: f64 = vals.iter().map(|v| v * v).sum();
        10.0 * (sig / error(vals, None, levels)).log10()
    }

    /// The symmetric uniform grid of `bits` on `[-a, a]`.
    fn uniform(a: f64, bits: u32) -> Vec<f64> {
        let q = (1i64 << (bits - 1)) - 1;
        (-q..=q).map(|i| i as f64 * a / q as f64).collect()
    }

    #[test]
    fn kmeans_beats_the_best_uniform_grid_on_a_gaussian() {
        let x = gaussian(4096, 0x2545_f491_4f6c_dd1d);
        let amax = x.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (bits, margin) in [(4u32, 1.0), (3, 1.0)] {
            let km = sqnr(&x, &kmeans(&x, None, 1 << bits));
            // The uniform grid with the best clipping range (a fine search).
            let best_uniform = (1..=400)
                .map(|i| sqnr(&x, &uniform(amax * i as f64 / 400.0, bits)))
                .fold(f64::MIN, f64::max);
            assert!(
                km >= best_uniform + margin,
                "{bits} bits: k-means {km:.2} dB, uniform {best_uniform:.2} dB"
            );
        }
    }

    #[test]
    fn kmeans_is_lloyd_optimal_and_deterministic() {
        let x = gaussian(1000, 7);
        let c = kmeans(&x, None, 8);
        assert_eq!(c.len(), 8);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        // Each level is the mean of the values nearest it.
        for (j, &cj) in c.iter().enumerate() {
            let mine: Vec<f64> = x.iter().copied().filter(|&v| nearest(&c, v) == j).collect();
            let mean = mine.iter().sum::<f64>() / mine.len() as f64;
            assert!((mean - cj).abs() < 1e-9, "level {j}: {cj} vs mean {mean}");
        }
        assert_eq!(kmeans(&x, None, 8), c);
        // Fewer distinct values than levels: every value is a level.
        assert_eq!(kmeans(&[1.0, -2.0, 1.0], None, 16), vec![-2.0, 1.0]);
    }

    #[test]
    fn weighted_kmeans_puts_levels_where_the_weight_is_large() {
        // Values evenly on [-1, 1]; the negative half weighs 100 times more.
        let x: Vec<f64> = (0..2000).map(|i| i as f64 / 999.5 - 1.0).collect();
        let w: Vec<f64> = x
            .iter()
            .map(|&v| if v < 0.0 { 100.0 } else { 1.0 })
            .collect();
        let plain = kmeans(&x, None, 8);
        let weighted = kmeans(&x, Some(&w), 8);
        let below = |c: &[f64]| c.iter().filter(|&&v| v < 0.0).count();
        assert_eq!(below(&plain), 4);
        assert!(below(&weighted) >= 6, "{weighted:?}");
        // And the weighted error is lower with the weighted levels.
        assert!(error(&x, Some(&w), &weighted) < error(&x, Some(&w), &plain));
    }

    #[test]
    fn pow2_levels_and_search() {
        assert_eq!(
            pow2_levels(1.0, 3),
            vec![-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
        );
        let x = gaussian(2000, 11);
        let l = pow2(&x, None, 4);
        assert_eq!(l.len(), 15);
        // The search never does worse than the unshrunk grid.
        let amax = x.iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(error(&x, None, &l) <= error(&x, None, &pow2_levels(amax, 4)));
    }

    #[test]
    fn integer_codebooks() {
        let x: Vec<f32> = gaussian(512, 3).iter().map(|&v| v as f32 * 0.1).collect();
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let cb = int_codebook(&x, None, WeightGrid::Kmeans { bits: 4 }, scale, 127).unwrap();
        assert_eq!(cb.scale, scale);
        assert!(cb.levels.len() <= 16 && cb.levels.len() >= 14);
        assert!(cb.levels.iter().all(|&l| (-127..=127).contains(&l)));
        // Every value takes its nearest level.
        for (i, &v) in x.iter().enumerate() {
            let e = (v - cb.value(i)).abs();
            assert!(cb.levels.iter().all(|&l| (v - l as f32 * scale).abs() >= e));
        }
        let p = int_codebook(&x, None, WeightGrid::Pow2 { bits: 3 }, scale, 127).unwrap();
        assert_eq!(p.levels, vec![-4, -2, -1, 0, 1, 2, 4]);
        assert_eq!(
            int_codebook(&x, None, WeightGrid::Pow2 { bits: 4 }, scale, 64)
                .unwrap()
                .levels
                .len(),
            15
        );
        assert!(matches!(
            int_codebook(&x, None, WeightGrid::Pow2 { bits: 5 }, scale, 127),
            Err(CodebookError::Range { need: 16384, .. })
        ));
    }
}
