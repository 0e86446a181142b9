//! SmoothQuant's migration factors: how much of an activation's per-channel range moves
//! into the weights that read it, and the two sides of the move on plain `f32` slices.
//!
//! For input channel `j` of a product `X · W` (`W` is `[K, N]`, row `j` multiplies channel
//! `j` of `X`): `s_j = max|X_j|^α / max|W_j|^(1−α)`, clamped to at least [`MIN_FACTOR`].
//! `X_j / s_j` times `W_j · s_j` is the same product, so the float model's outputs do not
//! change, while the channels of `X` that carry outliers shrink and the matching weight
//! rows grow: `α = 0` leaves `X` as it is (up to the weights' scaling), `α = 1` flattens
//! every channel of `X` to the same maximum. The weights are quantized per output column
//! and so absorb a row's growth far better than a per-tensor activation grid absorbs an
//! outlier channel. Channels that are never non-zero (in `X` or in every weight row that
//! reads them) keep factor 1: there is nothing to migrate.

/// The smallest factor (as the reference implementation clamps it): a channel is never
/// divided by a factor that would blow it up past float range.
pub const MIN_FACTOR: f32 = 1e-5;

/// Per-channel migration factors from the activation's per-channel absolute maxima
/// (`act_max`) and the largest absolute weight of each row (`w_max`, over every product
/// that reads the activation). `alpha` is in `[0, 1]`.
pub fn factors(act_max: &[f32], w_max: &[f32], alpha: f32) -> Vec<f32> {
    debug_assert_eq!(act_max.len(), w_max.len());
    act_max
        .iter()
        .zip(w_max)
        .map(|(&a, &w)| {
            if !(a > 0.0 && w > 0.0 && a.is_finite() && w.is_finite()) {
                return 1.0;
            }
            let s = (a as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
            (s as f32).max(MIN_FACTOR)
        })
        .collect()
}

/// The largest absolute value of each row of the row-major `[k, n]` matrix `w`.
pub fn row_abs_max(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    debug_assert_eq!(w.len(), k * n);
    (0..k)
        .map(|r| {
            w[r * n..(r + 1) * n]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()))
        })
        .collect()
}

/// Multiplies row `j` of the row-major `[s.len(), n]` matrix `w` by `s[j]` (the weight
/// side of the migration).
pub fn scale_rows(w: &mut [f32], s: &[f32]) {
    let n = w.len() / s.len().max(1);
    for (row, &f) in w.chunks_mut(n.max(1)).zip(s) {
        row.iter_mut().for_each(|v| *v *= f);
    }
}

/// Divides every element of `v` by the factor of its channel, the last axis (the
/// activation side of the migration: a LayerNormalization's scale and bias, or an
/// activation laid out `[…, channels]`).
pub fn divide_channels(v: &mut [f32], s: &[f32]) {
    let c = s.len().max(1);
    for (i, x) in v.iter_mut().enumerate() {
        *x /= s[i % c];
    }
}

/// Folds per-channel absolute maxima of `data` (laid out `[…, channels]`) into `acc`
/// (one entry per channel; NaN and infinities are skipped, as they are for ranges).
pub fn fold_channel_max(acc: &mut [f32], data: &[f32]) {
    let c = acc.len().max(1);
    for (i, x) in data.iter().enumerate() {
        if x.is_finite() {
            let m = &mut acc[i % c];
            *m = m.max(x.abs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x · w` for `x` `[m, k]` and `w` `[k, n]`, row-major.
    fn matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..k {
                for c in 0..n {
                    y[i * n + c] += x[i * k + j] * w[j * n + c];
                }
            }
        }
        y
    }

    #[test]
    fn factors_follow_the_formula() {
        let s = factors(&[4.0, 1.0, 9.0], &[1.0, 4.0, 1.0], 0.5);
        assert!((s[0] - 2.0).abs() < 1e-6);
        assert!((s[1] - 0.5).abs() < 1e-6);
        assert!((s[2] - 3.0).abs() < 1e-6);
        // α = 1: the activation's maximum itself; α = 0: the weight's reciprocal.
        assert_eq!(factors(&[8.0], &[2.0], 1.0), vec![8.0]);
        assert_eq!(factors(&[8.0], &[2.0], 0.0), vec![0.5]);
    }

    #[test]
    fn dead_channels_keep_factor_one_and_tiny_factors_are_clamped() {
        assert_eq!(factors(&[0.0, 3.0], &[1.0, 0.0], 0.5), vec![1.0, 1.0]);
        assert_eq!(factors(&[1e-30], &[1.0], 1.0), vec![MIN_FACTOR]);
        assert_eq!(factors(&[f32::NAN], &[1.0], 0.5), vec![1.0]);
    }

    #[test]
    fn migration_leaves_the_product_unchanged() {
        let (m, k, n) = (3, 4, 2);
        // Channel 2 carries an outlier.
        let x: Vec<f32> = vec![
            0.5, -1.0, 40.0, 0.25, //
            -0.75, 0.5, -35.0, 1.0, //
            0.1, 0.2, 20.0, -0.3,
        ];
        let w: Vec<f32> = vec![0.3, -0.2, 0.1, 0.4, -0.05, 0.02, 0.7, -0.6];
        let before = matmul(&x, &w, m, k, n);
        let mut amax = vec![0.0; k];
        fold_channel_max(&mut amax, &x);
        assert_eq!(amax, vec![0.75, 1.0, 40.0, 1.0]);
        let s = factors(&amax, &row_abs_max(&w, k, n), 0.5);
        let (mut xs, mut ws) = (x.clone(), w.clone());
        divide_channels(&mut xs, &s);
        scale_rows(&mut ws, &s);
        let after = matmul(&xs, &ws, m, k, n);
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        // The outlier channel shrank relative to the others.
        let mut smax = vec![0.0; k];
        fold_channel_max(&mut smax, &xs);
        let spread = |v: &[f32]| {
            v.iter().cloned().fold(0.0, f32::max) / v.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(spread(&smax) < spread(&amax) / 4.0, "{smax:?}");
    }
}
