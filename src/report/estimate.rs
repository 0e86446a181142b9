//! How sure a figure measured on a few samples is: the bootstrap over samples.
//!
//! A figure pooled over samples (an output SQNR, an accuracy drop) is a statistic of the
//! samples it was measured on. Resampling those samples with replacement, pooling each
//! resample's per-sample comparisons again and recomputing the figure gives its spread:
//! the 10th and 90th percentiles of [`RESAMPLES`] resamples are one-sided 90 % bounds.
//! The generator is seeded with a constant, so the same comparisons give the same bounds.
//! A few samples near a decision boundary can carry most of the error; the bounds then
//! stay wide, which is what a goal must be judged against.

use super::metrics::{Comparison, Metrics};
use serde::Serialize;
use std::collections::BTreeMap;

/// Resamples drawn.
pub const RESAMPLES: usize = 1000;
/// One-sided confidence of each bound.
pub const LEVEL: f64 = 0.9;

/// Per-output comparisons of one sample.
pub type SampleComparison = BTreeMap<String, Comparison>;

/// A figure with its bootstrap bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// The figure pooled over every sample.
    pub figure: f64,
    /// The lower one-sided bound at [`Estimate::level`].
    pub lower: f64,
    /// The upper one-sided bound at [`Estimate::level`].
    pub upper: f64,
    /// Samples the figure pools.
    pub samples: usize,
    pub level: f64,
}

impl Estimate {
    /// Roughly how many samples would put the lower bound at `threshold` (the bounds'
    /// distance to the figure shrinks as 1/sqrt(n)); `None` when the bound already
    /// reaches it or the figure itself does not.
    pub fn samples_for(&self, threshold: f64) -> Option<usize> {
        if self.lower >= threshold || self.figure <= threshold || !self.lower.is_finite() {
            return None;
        }
        let ratio = (self.figure - self.lower) / (self.figure - threshold);
        if !ratio.is_finite() {
            return None;
        }
        Some((self.samples as f64 * ratio * ratio).ceil() as usize)
    }
}

/// Pools the comparisons of `samples` (indices into `per_sample`) into per-output metrics.
pub fn pool<'a>(
    per_sample: &'a [SampleComparison],
    samples: impl IntoIterator<Item = &'a usize>,
) -> BTreeMap<String, Metrics> {
    let mut acc: BTreeMap<String, Comparison> = BTreeMap::new();
    for &i in samples {
        for (name, c) in &per_sample[i] {
            acc.entry(name.clone()).or_default().merge(c);
        }
    }
    acc.into_iter().map(|(k, c)| (k, c.metrics())).collect()
}

/// splitmix64: a small generator whose stream depends on its seed only.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection so that no index is favoured.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

/// The figure `figure` computes from pooled metrics, over every sample of `per_sample`,
/// with its bootstrap bounds (deterministic: a fixed seed).
pub fn bootstrap(
    per_sample: &[SampleComparison],
    figure: impl Fn(&BTreeMap<String, Metrics>) -> f64,
) -> Estimate {
    let n = per_sample.len();
    let all: Vec<usize> = (0..n).collect();
    let point = figure(&pool(per_sample, &all));
    if n == 0 {
        return Estimate {
            figure: point,
            lower: point,
            upper: point,
            samples: 0,
            level: LEVEL,
        };
    }
    let mut rng = SplitMix(0x005e_ed0f_b007_5742);
    let mut draw = vec![0usize; n];
    let mut figures: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for d in draw.iter_mut() {
                *d = rng.below(n);
            }
            figure(&pool(per_sample, &draw))
        })
        .collect();
    figures.sort_by(f64::total_cmp);
    let k = ((1.0 - LEVEL) * RESAMPLES as f64).floor() as usize;
    Estimate {
        figure: point,
        lower: figures[k],
        upper: figures[RESAMPLES - 1 - k],
        samples: n,
        level: LEVEL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(err: f32) -> SampleComparison {
        let mut c = Comparison::default();
        c.add(&[1.0, 1.0], &[1.0 + err, 1.0], false, None);
        BTreeMap::from([("y".to_string(), c)])
    }

    fn sqnr(m: &BTreeMap<String, Metrics>) -> f64 {
        m["y"].sqnr_db
    }

    #[test]
    fn pooled_figure_and_deterministic_bounds() {
        // Signal 2 per sample; noise 0.01 on 9 samples, 1.0 on one: pooled
        // 10·log10(20 / 1.09) = 12.636 dB.
        let mut per: Vec<SampleComparison> = (0..9).map(|_| sample(0.1)).collect();
        per.push(sample(1.0));
        let e = bootstrap(&per, sqnr);
        assert!((e.figure - 10.0 * (20.0f64 / 1.09).log10()).abs() < 1e-3);
        assert!(e.lower < e.figure && e.figure < e.upper, "{e:?}");
        // Resamples without the bad sample reach 10·log10(2/0.01) = 23 dB: the upper
        // bound sees them (P(no bad sample in 10 draws) = 0.35).
        assert!((e.upper - 10.0 * 200f64.log10()).abs() < 1e-3, "{e:?}");
        assert_eq!(e, bootstrap(&per, sqnr));
        assert_eq!(e.samples, 10);
    }

    #[test]
    fn equal_samples_have_no_spread_and_need_no_more_samples() {
        let per: Vec<SampleComparison> = (0..8).map(|_| sample(0.1)).collect();
        let e = bootstrap(&per, sqnr);
        assert_eq!((e.lower, e.upper), (e.figure, e.figure));
        assert_eq!(e.samples_for(e.figure - 1.0), None);
    }

    #[test]
    fn samples_needed_scale_with_the_square_of_the_spread() {
        let e = Estimate {
            figure: 32.0,
            lower: 26.0,
            upper: 36.0,
            samples: 32,
            level: LEVEL,
        };
        // The bound must come 3 times closer: 9 times the samples.
        assert_eq!(e.samples_for(30.0), Some(288));
        assert_eq!(e.samples_for(25.0), None);
        assert_eq!(e.samples_for(33.0), None);
    }
}
