//! One quantized weight as the report shows it: the histogram of its float values and the
//! levels of the grid it is written on. Plain data ([`WeightRow`]), drawn by
//! [`super::plot::weight_histogram`].
//!
//! The levels are the dequantized values the written model holds, `(code − zero point) ·
//! scale` in float32 as DequantizeLinear computes them: for a uniform grid every code of
//! the grid (drawn one in [`WeightRow::step`] when there are more than [`MAX_TICKS`]), for
//! a codebook grid (k-means or power of two) the channel's levels as written to its level
//! table. A per-channel weight has one grid per channel; the report draws the histogram of
//! the whole tensor with the levels of **one** channel, the one whose values span the
//! widest range (its levels reach furthest, so every value drawn falls within reach of
//! them); the caption names it. An overlay of every channel's levels would be unreadable
//! past a few channels.

use super::tensor::{DisplayHistogram, DISPLAY_BINS};
use crate::quant::params::QType;

/// Uniform grids with more codes than this are drawn one code in [`WeightRow::step`].
pub const MAX_TICKS: usize = 64;

/// How the weight's levels were chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelKind {
    /// Every code of an evenly spaced grid.
    Uniform,
    /// A codebook's levels (k-means centroids or powers of two).
    Codebook,
}

impl LevelKind {
    pub fn name(&self) -> &'static str {
        match self {
            LevelKind::Uniform => "uniform",
            LevelKind::Codebook => "codebook",
        }
    }
}

/// One quantized weight (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightRow {
    /// The weight's name (plan key).
    pub name: String,
    /// Its grid in words, e.g. `kmeans 4-bit on i8 symmetric [-127, 127], per channel (axis 0)`.
    pub grid: String,
    pub kind: LevelKind,
    /// Number of values, their range.
    pub count: usize,
    pub min: f32,
    pub max: f32,
    /// Histogram of every value of the tensor.
    pub histogram: DisplayHistogram,
    /// Channels (1 for a per-tensor weight) and the one whose levels are drawn.
    pub channels: usize,
    pub channel: usize,
    /// That channel's range, scale and zero point.
    pub channel_min: f32,
    pub channel_max: f32,
    pub scale: f32,
    pub zero_point: i64,
    /// That channel's codes, ascending: every code of a uniform grid, or the codebook's.
    pub codes: Vec<i64>,
    /// One code in `step` is drawn (uniform grids with many codes; 1 otherwise). The drawn
    /// codes are those whose distance to the zero point is a multiple of `step`.
    pub step: i64,
}

/// The grid a weight was written on, per channel.
pub struct Written<'a> {
    pub qtype: &'a QType,
    /// Scale and zero point per channel (one for a per-tensor weight).
    pub params: &'a [(f32, i64)],
    /// Per channel codebook levels (codes); `None` for a uniform grid.
    pub codebook: Option<&'a [Vec<i64>]>,
    pub grid: String,
}

/// Histogram of `vals` on `bins` equal bins over their `[min, max]` (the last bin closed);
/// one bin of zero width when they are all equal. `None` without a finite value.
pub fn exact_histogram(vals: &[f32], bins: usize) -> Option<DisplayHistogram> {
    let finite = vals.iter().filter(|v| v.is_finite()).map(|&v| v as f64);
    let (lo, hi) = finite.clone().fold(None, |acc: Option<(f64, f64)>, v| {
        Some(acc.map_or((v, v), |(l, h)| (l.min(v), h.max(v))))
    })?;
    if hi <= lo || bins == 0 {
        return Some(DisplayHistogram {
            lo,
            hi: lo,
            counts: vec![finite.count() as f64],
        });
    }
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0.0f64; bins];
    for v in finite {
        let i = (((v - lo) / w).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1.0;
    }
    Some(DisplayHistogram { lo, hi, counts })
}

impl WeightRow {
    /// The row of weight `name`: its values `vals`, the channel of each element
    /// (`channel_of`, below `w.params.len()`), and how it was written. `None` when it has no
    /// finite value or its parameters do not match its channels.
    pub fn new(
        name: &str,
        vals: &[f32],
        channel_of: &dyn Fn(usize) -> usize,
        w: &Written,
    ) -> Option<WeightRow> {
        let histogram = exact_histogram(vals, DISPLAY_BINS)?;
        let channels = w.params.len();
        if channels == 0 || w.codebook.is_some_and(|c| c.len() != channels) {
            return None;
        }
        let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); channels];
        for (i, &v) in vals.iter().enumerate() {
            let r = ranges.get_mut(channel_of(i))?;
            if v.is_finite() {
                *r = (r.0.min(v), r.1.max(v));
            }
        }
        // The widest channel, the first of equals.
        let width = |(lo, hi): (f32, f32)| if hi >= lo { hi - lo } else { -1.0 };
        let channel = (0..channels).fold(0, |best, c| {
            if width(ranges[c]) > width(ranges[best]) {
                c
            } else {
                best
            }
        });
        let (scale, zero_point) = w.params[channel];
        let (kind, codes, step) = match w.codebook {
            Some(cb) => (LevelKind::Codebook, cb[channel].clone(), 1),
            None => {
                let n = (w.qtype.qmax - w.qtype.qmin + 1).max(1) as usize;
                (
                    LevelKind::Uniform,
                    (w.qtype.qmin..=w.qtype.qmax).collect(),
                    n.div_ceil(MAX_TICKS) as i64,
                )
            }
        };
        Some(WeightRow {
            name: name.to_string(),
            grid: w.grid.clone(),
            kind,
            count: vals.len(),
            min: histogram.lo as f32,
            max: histogram.hi as f32,
            histogram,
            channels,
            channel,
            channel_min: ranges[channel].0,
            channel_max: ranges[channel].1,
            scale,
            zero_point,
            codes,
            step,
        })
    }

    /// The float value of `code` on the drawn channel, as DequantizeLinear computes it.
    pub fn level(&self, code: i64) -> f32 {
        (code - self.zero_point) as f32 * self.scale
    }

    /// The codes drawn: all of a codebook's; one in [`WeightRow::step`] of a uniform grid,
    /// counted from the zero point.
    pub fn drawn(&self) -> Vec<i64> {
        self.codes
            .iter()
            .copied()
            .filter(|&c| (c - self.zero_point).rem_euclid(self.step) == 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;

    #[test]
    fn histogram_counts_every_value_once() {
        let h = exact_histogram(&[0.0, 1.0, 1.0, 2.0, 4.0, f32::NAN], 4).unwrap();
        assert_eq!((h.lo, h.hi), (0.0, 4.0));
        assert_eq!(h.counts, vec![1.0, 2.0, 1.0, 1.0]);
        let c = exact_histogram(&[3.0, 3.0], 10).unwrap();
        assert_eq!((c.lo, c.hi, c.counts), (3.0, 3.0, vec![2.0]));
        assert!(exact_histogram(&[f32::NAN], 4).is_none());
    }

    #[test]
    fn widest_channel_and_its_levels() {
        // Two channels of 3 values, channel-major; channel 1 spans the widest range.
        let vals = [0.1f32, -0.2, 0.3, 1.0, -2.0, 0.5];
        let ch = |i: usize| i / 3;
        let q = QType::new(DType::I8, true, false).unwrap();
        let params = [(0.3 / 127.0, 0), (2.0 / 127.0, 0)];
        let cb = vec![vec![-1, 0, 1], vec![-127, 0, 32, 64]];
        let r = WeightRow::new(
            "w",
            &vals,
            &ch,
            &Written {
                qtype: &q,
                params: &params,
                codebook: Some(&cb),
                grid: "kmeans 2-bit".into(),
            },
        )
        .unwrap();
        assert_eq!((r.channels, r.channel, r.kind), (2, 1, LevelKind::Codebook));
        assert_eq!((r.channel_min, r.channel_max), (-2.0, 1.0));
        assert_eq!(r.drawn(), vec![-127, 0, 32, 64]);
        assert_eq!(r.level(-127), -127.0 * (2.0f32 / 127.0));
        // Uniform: every code, thinned to one in 4 from the zero point.
        let u = WeightRow::new(
            "w",
            &vals,
            &ch,
            &Written {
                qtype: &q,
                params: &params,
                codebook: None,
                grid: "uniform".into(),
            },
        )
        .unwrap();
        assert_eq!(
            (u.kind, u.codes.len(), u.step),
            (LevelKind::Uniform, 255, 4)
        );
        let d = u.drawn();
        assert!(d.contains(&0) && d.contains(&124) && d.contains(&-124));
        assert!(!d.contains(&1) && !d.contains(&127));
        assert_eq!(d.len(), 63);
        // A 4-bit grid is drawn whole.
        let q4 = QType::new(DType::I4, true, false).unwrap();
        let u4 = WeightRow::new(
            "w",
            &vals,
            &ch,
            &Written {
                qtype: &q4,
                params: &params,
                codebook: None,
                grid: "uniform".into(),
            },
        )
        .unwrap();
        assert_eq!((u4.step, u4.drawn().len()), (1, u4.codes.len()));
    }
}
