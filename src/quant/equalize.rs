//! Cross-layer equalization's numerics (data-free quantization): the per-channel ranges
//! of two weights that meet at one activation, and the factors that make them equal.
//!
//! For a layer `W1` whose output channel `i` feeds input channel `i` of `W2` through a
//! positively homogeneous function `f` (`f(x / s) = f(x) / s` for `s > 0`: identity, Relu,
//! LeakyRelu), dividing `W1`'s output channel `i` (and its bias) by `s_i` and multiplying
//! `W2`'s input channel `i` by `s_i` leaves the product unchanged. With
//! `r1_i = max|W1[i, …]|` and `r2_i = max|W2[…, i, …]|`, the factor
//! `s_i = √(r1_i / r2_i)` makes both ranges `√(r1_i · r2_i)`: a per-tensor weight grid then
//! no longer spends its range on one channel. Channels whose range is zero or not finite
//! on either side keep factor 1.
//!
//! Weights are plain row-major `f32` slices; a [`Layout`] says which element belongs to
//! which channel, as an output (rows of a Conv weight, columns of a MatMul weight) or as
//! an input (a Conv weight's second axis, within its group; a MatMul weight's rows).

/// How a weight tensor is laid out, for its channels.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// A Conv weight `[O, C/group, k…]`.
    Conv { dims: Vec<usize>, group: usize },
    /// A MatMul weight `[K, N]` (or Gemm's `B` without `transB`): row = input channel,
    /// column = output channel.
    Rows { k: usize, n: usize },
    /// Gemm's `B` with `transB = 1`, `[N, K]`: row = output channel, column = input.
    Cols { n: usize, k: usize },
}

/// Which side of a weight a channel is taken on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The layer's output channels (the first weight of a pair).
    Out,
    /// The layer's input channels (the second weight of a pair).
    In,
}

impl Layout {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Layout::Conv { dims, .. } => dims.iter().product(),
            Layout::Rows { k, n } => k * n,
            Layout::Cols { n, k } => n * k,
        }
    }

    /// Whether the weight has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of channels on `side`.
    pub fn channels(&self, side: Side) -> usize {
        match (self, side) {
            (Layout::Conv { dims, .. }, Side::Out) => dims.first().copied().unwrap_or(0),
            (Layout::Conv { dims, group }, Side::In) => dims.get(1).copied().unwrap_or(0) * group,
            (Layout::Rows { n, .. }, Side::Out) | (Layout::Cols { n, .. }, Side::Out) => *n,
            (Layout::Rows { k, .. }, Side::In) | (Layout::Cols { k, .. }, Side::In) => *k,
        }
    }

    /// The channel on `side` of each element, in element order.
    pub fn channel_map(&self, side: Side) -> Vec<usize> {
        match (self, side) {
            (Layout::Conv { dims, .. }, Side::Out) => {
                let per: usize = dims.iter().skip(1).product();
                (0..self.len()).map(|e| e / per.max(1)).collect()
            }
            (Layout::Conv { dims, group }, Side::In) => {
                let o = dims.first().copied().unwrap_or(0);
                let cg = dims.get(1).copied().unwrap_or(0);
                let taps: usize = dims.iter().skip(2).product();
                let per_group_out = (o / (*group).max(1)).max(1);
                (0..self.len())
                    .map(|e| {
                        let out = e / (cg * taps).max(1);
                        let local = (e / taps.max(1)) % cg.max(1);
                        (out / per_group_out) * cg + local
                    })
                    .collect()
            }
            (Layout::Rows { n, .. }, Side::Out) => (0..self.len()).map(|e| e % n).collect(),
            (Layout::Rows { n, .. }, Side::In) => (0..self.len()).map(|e| e / n).collect(),
            (Layout::Cols { k, .. }, Side::Out) => (0..self.len()).map(|e| e / k).collect(),
            (Layout::Cols { k, .. }, Side::In) => (0..self.len()).map(|e| e % k).collect(),
        }
    }
}

/// The largest absolute value of each of `channels` channels of `w` (`map` from
/// [`Layout::channel_map`]); NaN and infinities are skipped.
pub fn channel_abs_max(w: &[f32], map: &[usize], channels: usize) -> Vec<f32> {
    let mut r = vec![0.0f32; channels];
    for (v, &c) in w.iter().zip(map) {
        if v.is_finite() {
            r[c] = r[c].max(v.abs());
        }
    }
    r
}

/// The equalizing factors `s_i = √(r1_i / r2_i)` (1 where either range is zero or not
/// finite).
pub fn factors(r1: &[f32], r2: &[f32]) -> Vec<f32> {
    debug_assert_eq!(r1.len(), r2.len());
    r1.iter()
        .zip(r2)
        .map(|(&a, &b)| {
            if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() {
                ((a as f64 / b as f64).sqrt()) as f32
            } else {
                1.0
            }
        })
        .collect()
}

/// Multiplies each element of `w` by its channel's factor (`divide`: divides).
pub fn scale(w: &mut [f32], map: &[usize], s: &[f32], divide: bool) {
    for (v, &c) in w.iter_mut().zip(map) {
        if divide {
            *v /= s[c];
        } else {
            *v *= s[c];
        }
    }
}

/// The largest `|ln s_i|` of a set of factors: how far from converged a sweep was.
pub fn log_spread(s: &[f32]) -> f64 {
    s.iter().fold(0.0f64, |m, &f| m.max((f as f64).ln().abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_channels_follow_groups() {
        // 4 output channels, 2 groups of 2 input channels, 1 tap: [4, 2, 1, 1].
        let l = Layout::Conv {
            dims: vec![4, 2, 1, 1],
            group: 2,
        };
        assert_eq!(l.channels(Side::In), 4);
        assert_eq!(l.channel_map(Side::Out), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        // Outputs 0-1 read inputs 0-1, outputs 2-3 read inputs 2-3.
        assert_eq!(l.channel_map(Side::In), vec![0, 1, 0, 1, 2, 3, 2, 3]);
        // Depthwise with multiplier 2: [4, 1, 1, 1], group 2: outputs 2c, 2c+1 read c.
        let dw = Layout::Conv {
            dims: vec![4, 1, 1, 1],
            group: 2,
        };
        assert_eq!(dw.channel_map(Side::In), vec![0, 0, 1, 1]);
    }

    #[test]
    fn matrix_channels() {
        let r = Layout::Rows { k: 2, n: 3 };
        assert_eq!(r.channel_map(Side::Out), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(r.channel_map(Side::In), vec![0, 0, 0, 1, 1, 1]);
        let c = Layout::Cols { n: 3, k: 2 };
        assert_eq!(c.channel_map(Side::Out), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(c.channel_map(Side::In), vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn factors_equalize_both_ranges() {
        // W1 [2 out, 2 in] as a MatMul [K=2, N=2]; W2 [K=2, N=3].
        let l1 = Layout::Rows { k: 2, n: 2 };
        let l2 = Layout::Rows { k: 2, n: 3 };
        let mut w1 = vec![8.0, 0.1, -2.0, 0.05];
        let mut w2 = vec![0.5, -0.25, 0.1, 4.0, 1.0, -3.0];
        let (m1, m2) = (l1.channel_map(Side::Out), l2.channel_map(Side::In));
        let r1 = channel_abs_max(&w1, &m1, 2);
        let r2 = channel_abs_max(&w2, &m2, 2);
        assert_eq!((r1.clone(), r2.clone()), (vec![8.0, 0.1], vec![0.5, 4.0]));
        let s = factors(&r1, &r2);
        assert!((s[0] - 4.0).abs() < 1e-6 && (s[1] - 0.158_113_9).abs() < 1e-6);
        scale(&mut w1, &m1, &s, true);
        scale(&mut w2, &m2, &s, false);
        let (a, b) = (channel_abs_max(&w1, &m1, 2), channel_abs_max(&w2, &m2, 2));
        for i in 0..2 {
            assert!((a[i] - b[i]).abs() < 1e-5 * a[i], "{a:?} {b:?}");
            assert!((a[i] - (r1[i] * r2[i]).sqrt()).abs() < 1e-5, "{a:?}");
        }
        assert!(log_spread(&factors(&a, &b)) < 1e-6);
    }

    #[test]
    fn dead_channels_keep_factor_one() {
        assert_eq!(
            factors(&[0.0, 1.0, f32::NAN], &[1.0, 0.0, 1.0]),
            vec![1.0, 1.0, 1.0]
        );
    }
}
