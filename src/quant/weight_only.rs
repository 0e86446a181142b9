//! Weight-only quantization numerics: a float weight to integer codes with one scale (and zero
//! point) per output channel, or per block of the reduction axis, by round-to-nearest (RTN), a
//! per-group clipping search, or GPTQ. Activations stay float; nothing here knows the graph.
//!
//! # Layout
//! A weight is seen as `W [rows, cols]`: one row per output channel, `cols` along the reduction
//! axis (a MatMul's `[K, N]` weight is its transpose). Groups are `group` consecutive columns of
//! a row (the last one partial when `group` does not divide `cols`); per channel, one group
//! spans the row. [`Quantized`] holds the codes `[rows, cols]`, scales and zero points
//! `[rows, groups]`; it dequantizes as `(q − zp) · scale` in float32, as DequantizeLinear and
//! MatMulNBits do.
//!
//! # Grid ([`Grid`])
//! `bits` 4 or 8. Asymmetric: codes `[0, 2^bits − 1]`, the range always includes zero,
//! `scale = (max − min) / (2^bits − 1)` (f64, stored f32), `zp = round_half_even(−min / scale)`
//! clamped (ONNX Runtime's rule for MatMulNBits and DequantizeLinear weights). Symmetric: codes
//! `[−(2^(bits−1) − 1), 2^(bits−1) − 1]` (int8 `[−127, 127]`, int4 `[−7, 7]`: the narrow range,
//! so every scale is positive), `scale = max|w| / (2^(bits−1) − 1)`, zero point 0. An all-zero
//! group gets scale 1. A code is `clamp(round_half_even(w / scale) + zp)`.
//!
//! # Algorithms ([`Algo`])
//! - **RTN**: each group's min/max grid, each weight rounded to the nearest code.
//! - **Clip**: per group, a plain grid search over range shrink factors `1, 0.975, …, 0.525`
//!   (20 candidates, the range `[α·min, α·max]`): the factor whose RTN codes give the least
//!   squared weight error `Σ (w − ŵ)²` is kept (the first of equals, so the widest). Not HQQ:
//!   zero points stay integers and only the range moves.
//! - **GPTQ** ([`gptq`]): with `H = 2·XᵀX / n` from the layer's inputs ([`Hessian`], rows
//!   streamed, never all at once), columns that never see a non-zero input (`H_ii = 0`) get
//!   `H_ii = 1` and weight 0; optionally the columns are visited by descending `H_ii`
//!   (act-order); `H += λI` with `λ = 1 %` of the mean diagonal; `U` is the upper Cholesky factor
//!   of `H⁻¹`. Column by column in blocks of 128, a column is quantized, its error divided by
//!   `U_ii` is pushed onto the block's later columns through row `i` of `U`, and after the block
//!   onto all later columns at once. With groups, a group's grid is fitted on the *current*
//!   (compensated) weights when its first column comes up; with act-order, on the original
//!   weights before any column is visited (static groups, so the written model needs no column
//!   order). Everything is float64 except the codes' dequantization, which is float32 like the
//!   runtime's. The linear algebra (Cholesky, inverse of a triangular matrix) is written here.
//!
//! GPTQ with a diagonal `H` pushes no error anywhere (`U` is diagonal): it gives RTN's codes
//! exactly. Results are deterministic (fixed summation order, no threads).

use ndarray::{s, Array2, ArrayView2};

/// How the codes are chosen (`--weight-algo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// Round to nearest on each group's min/max grid.
    Rtn,
    /// Per-group range shrink chosen by least squared weight error.
    Clip,
    /// Hessian-based error compensation from calibration inputs.
    Gptq {
        /// Visit columns by descending `H_ii`.
        act_order: bool,
    },
}

/// The integer grid of a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// 4 or 8.
    pub bits: u32,
    pub symmetric: bool,
}

impl Grid {
    /// Smallest and largest code.
    pub fn code_range(&self) -> (i32, i32) {
        if self.symmetric {
            let m = (1i32 << (self.bits - 1)) - 1;
            (-m, m)
        } else {
            (0, (1i32 << self.bits) - 1)
        }
    }

    /// Scale and zero point of the range `[lo, hi]` (widened to include zero).
    pub fn params(&self, lo: f32, hi: f32) -> (f32, i32) {
        let (lo, hi) = (lo.min(0.0) as f64, hi.max(0.0) as f64);
        let (qmin, qmax) = self.code_range();
        let scale = if self.symmetric {
            lo.abs().max(hi) / qmax as f64
        } else {
            (hi - lo) / (qmax - qmin) as f64
        } as f32;
        if !(scale.is_finite() && scale >= f32::MIN_POSITIVE) {
            // An all-zero range: every code is the zero point, 0.
            return (1.0, 0);
        }
        let zp = if self.symmetric {
            0
        } else {
            ((-lo / scale as f64).round_ties_even() as i64).clamp(qmin as i64, qmax as i64) as i32
        };
        (scale, zp)
    }

    /// The code of `w`.
    pub fn code(&self, w: f32, scale: f32, zp: i32) -> i32 {
        let (qmin, qmax) = self.code_range();
        ((w / scale).round_ties_even() as f64 + zp as f64).clamp(qmin as f64, qmax as f64) as i32
    }
}

/// The float32 value a code stands for: `(q − zp) · scale`.
pub fn dequantize(q: i32, scale: f32, zp: i32) -> f32 {
    (q - zp) as f32 * scale
}

/// A quantized weight (see the module doc for the layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub rows: usize,
    pub cols: usize,
    /// Columns per group (`cols` per channel).
    pub group: usize,
    /// `[rows, cols]`, row-major.
    pub codes: Vec<i32>,
    /// `[rows, groups]`.
    pub scales: Vec<f32>,
    /// `[rows, groups]`.
    pub zero_points: Vec<i32>,
}

impl Quantized {
    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.cols.div_ceil(self.group)
    }

    /// The dequantized weight `[rows, cols]`.
    pub fn dequantize(&self) -> Array2<f32> {
        let g = self.groups();
        Array2::from_shape_fn((self.rows, self.cols), |(r, c)| {
            let p = r * g + c / self.group;
            dequantize(
                self.codes[r * self.cols + c],
                self.scales[p],
                self.zero_points[p],
            )
        })
    }
}

/// Range shrink factors the clipping search tries, widest first.
fn clip_factors() -> impl Iterator<Item = f32> {
    (0..20).map(|k| 1.0 - 0.025 * k as f32)
}

fn min_max(vals: &[f32]) -> (f32, f32) {
    vals.iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Scale and zero point of one group of weights by `algo` (RTN's grid for GPTQ).
pub fn group_params(vals: &[f32], grid: Grid, algo: Algo) -> (f32, i32) {
    let (lo, hi) = min_max(vals);
    if algo != Algo::Clip {
        return grid.params(lo, hi);
    }
    let mut best = (f64::INFINITY, grid.params(lo, hi));
    for a in clip_factors() {
        let (scale, zp) = grid.params(a * lo, a * hi);
        let err: f64 = vals
            .iter()
            .map(|&w| {
                let d = w as f64 - dequantize(grid.code(w, scale, zp), scale, zp) as f64;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, (scale, zp));
        }
    }
    best.1
}

/// RTN or clipping: every group's grid from its own weights, each weight rounded.
pub fn quantize_groups(w: ArrayView2<f32>, group: usize, grid: Grid, algo: Algo) -> Quantized {
    let (rows, cols) = w.dim();
    let group = group.clamp(1, cols.max(1));
    let groups = cols.div_ceil(group);
    let mut out = Quantized {
        rows,
        cols,
        group,
        codes: Vec::with_capacity(rows * cols),
        scales: Vec::with_capacity(rows * groups),
        zero_points: Vec::with_capacity(rows * groups),
    };
    for row in w.rows() {
        let row: Vec<f32> = row.iter().copied().collect();
        for chunk in row.chunks(group) {
            let (scale, zp) = group_params(chunk, grid, algo);
            out.scales.push(scale);
            out.zero_points.push(zp);
            out.codes
                .extend(chunk.iter().map(|&v| grid.code(v, scale, zp)));
        }
    }
    out
}

/// `H = 2·XᵀX / n` over the rows `x` of a layer's input, accumulated a batch of rows at a time.
#[derive(Clone, Debug)]
pub struct Hessian {
    sum: Array2<f64>,
    rows: u64,
}

impl Hessian {
    /// An empty accumulator for inputs of `k` features.
    pub fn new(k: usize) -> Hessian {
        Hessian {
            sum: Array2::zeros((k, k)),
            rows: 0,
        }
    }

    /// Features per row.
    pub fn k(&self) -> usize {
        self.sum.nrows()
    }

    /// Rows seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds the rows of `x` (row-major, a multiple of `k` values).
    pub fn add(&mut self, x: &[f32]) {
        let k = self.k();
        if k == 0 || x.is_empty() {
            return;
        }
        let m = x.len() / k;
        let xa = Array2::from_shape_fn((m, k), |(i, j)| x[i * k + j] as f64);
        ndarray::linalg::general_mat_mul(2.0, &xa.t(), &xa, 1.0, &mut self.sum);
        self.rows += m as u64;
    }

    /// The mean `H` (zero when no row was seen).
    pub fn finish(&self) -> Array2<f64> {
        if self.rows == 0 {
            return self.sum.clone();
        }
        &self.sum / self.rows as f64
    }
}

/// Why GPTQ could not run on a layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    #[error("the Hessian is {got}x{got}, the weight has {want} input columns")]
    Shape { got: usize, want: usize },
    #[error("the damped Hessian is not positive definite (pivot {0}): the inputs hold non-finite values or the weight is degenerate")]
    NotPositiveDefinite(usize),
}

/// GPTQ's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Damping as a fraction of the mean diagonal (0.01).
    pub damp: f64,
    /// Columns updated lazily together (128).
    pub block: usize,
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> GptqOptions {
        GptqOptions {
            damp: 0.01,
            block: 128,
            act_order: false,
        }
    }
}

/// The lower Cholesky factor `L` of a symmetric positive definite `a` (`a = L·Lᵀ`); the index
/// of the first non-positive pivot otherwise.
pub fn cholesky(a: &Array2<f64>) -> Result<Array2<f64>, usize> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (l.row(i), l.row(j));
            let dot: f64 = ri
                .slice(s![..j])
                .iter()
                .zip(rj.slice(s![..j]))
                .map(|(a, b)| a * b)
                .sum();
            let v = a[[i, j]] - dot;
            if i == j {
                if !(v.is_finite() && v > 0.0) {
                    return Err(i);
                }
                l[[i, i]] = v.sqrt();
            } else {
                l[[i, j]] = v / l[[j, j]];
            }
        }
    }
    Ok(l)
}

/// The inverse of a lower-triangular `l` with a non-zero diagonal (lower-triangular too).
pub fn invert_lower(l: &Array2<f64>) -> Array2<f64> {
    let n = l.nrows();
    let mut x = Array2::<f64>::zeros((n, n));
    // Row i of X: (e_i − Σ_{k<i} L_ik · X_k) / L_ii.
    for i in 0..n {
        let mut row = ndarray::Array1::<f64>::zeros(n);
        row[i] = 1.0;
        for k in 0..i {
            let c = l[[i, k]];
            if c != 0.0 {
                row.scaled_add(-c, &x.row(k));
            }
        }
        row /= l[[i, i]];
        x.row_mut(i).assign(&row);
    }
    x
}

/// GPTQ (see the module doc) of `w` `[rows, cols]` with the Hessian `h` `[cols, cols]`.
pub fn gptq(
    w: ArrayView2<f32>,
    h: &Array2<f64>,
    group: usize,
    grid: Grid,
    opts: GptqOptions,
) -> Result<Quantized, GptqError> {
    let (rows, cols) = w.dim();
    if h.dim() != (cols, cols) {
        return Err(GptqError::Shape {
            got: h.nrows(),
            want: cols,
        });
    }
    let group = group.clamp(1, cols.max(1));
    let groups = cols.div_ceil(group);
    let mut h = h.clone();
    let mut wf = w.mapv(|v| v as f64);
    for i in 0..cols {
        if h[[i, i]] == 0.0 {
            h[[i, i]] = 1.0;
            wf.column_mut(i).fill(0.0);
        }
    }
    // Column visiting order: natural, or by descending H_ii (ties by index).
    let mut perm: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| h[[b, b]].total_cmp(&h[[a, a]]).then(a.cmp(&b)));
    }
    let static_groups = opts.act_order;
    let mut scales = vec![0f32; rows * groups];
    let mut zps = vec![0i32; rows * groups];
    let fit = |wf: &Array2<f64>, r: usize, g: usize, scales: &mut [f32], zps: &mut [i32]| {
        let end = ((g + 1) * group).min(cols);
        let vals: Vec<f32> = (g * group..end).map(|c| wf[[r, c]] as f32).collect();
        let (s, z) = group_params(&vals, grid, Algo::Rtn);
        scales[r * groups + g] = s;
        zps[r * groups + g] = z;
    };
    if static_groups {
        for r in 0..rows {
            for g in 0..groups {
                fit(&wf, r, g, &mut scales, &mut zps);
            }
        }
    }
    // Permute W's columns and H into the visiting order.
    let wp = Array2::from_shape_fn((rows, cols), |(r, c)| wf[[r, perm[c]]]);
    let hp = Array2::from_shape_fn((cols, cols), |(a, b)| h[[perm[a], perm[b]]]);
    let mean_diag = hp.diag().sum() / cols.max(1) as f64;
    let mut hd = hp;
    for i in 0..cols {
        hd[[i, i]] += opts.damp * mean_diag;
    }
    let l = cholesky(&hd).map_err(GptqError::NotPositiveDefinite)?;
    let linv = invert_lower(&l);
    let hinv = linv.t().dot(&linv);
    let u = cholesky(&hinv)
        .map_err(GptqError::NotPositiveDefinite)?
        .reversed_axes();
    let mut wq = wp;
    let mut codes = vec![0i32; rows * cols];
    let block = opts.block.max(1);
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let mut err = Array2::<f64>::zeros((rows, i2 - i1));
        for i in i1..i2 {
            let c = perm[i];
            let g = c / group;
            if !static_groups && c.is_multiple_of(group) {
                // Natural order: the group's columns are i..i+group of the current weights.
                for r in 0..rows {
                    let end = (i + group).min(cols);
                    let vals: Vec<f32> = (i..end).map(|j| wq[[r, j]] as f32).collect();
                    let (s, z) = group_params(&vals, grid, Algo::Rtn);
                    scales[r * groups + g] = s;
                    zps[r * groups + g] = z;
                }
            }
            let d = u[[i, i]];
            for r in 0..rows {
                let p = r * groups + g;
                let v = wq[[r, i]];
                let q = grid.code(v as f32, scales[p], zps[p]);
                codes[r * cols + c] = q;
                let e = (v - dequantize(q, scales[p], zps[p]) as f64) / d;
                err[[r, i - i1]] = e;
                for j in i + 1..i2 {
                    let uij = u[[i, j]];
                    if uij != 0.0 {
                        wq[[r, j]] -= e * uij;
                    }
                }
            }
        }
        if i2 < cols {
            let upd = err.dot(&u.slice(s![i1..i2, i2..]));
            let mut rest = wq.slice_mut(s![.., i2..]);
            rest -= &upd;
        }
        i1 = i2;
    }
    Ok(Quantized {
        rows,
        cols,
        group,
        codes,
        scales,
        zero_points: zps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, Array2};

    const INT4_ASYM: Grid = Grid {
        bits: 4,
        symmetric: false,
    };
    const INT4_SYM: Grid = Grid {
        bits: 4,
        symmetric: true,
    };

    /// A small case computed by hand: one row, two blocks of 4.
    #[test]
    fn rtn_matches_a_hand_computed_case() {
        let w = arr2(&[[-1.5f32, 0.0, 0.75, 3.0, 0.2, 0.1, 0.0, 0.3]]);
        let q = quantize_groups(w.view(), 4, INT4_ASYM, Algo::Rtn);
        // Block 0: range [-1.5, 3], scale 4.5 / 15 = 0.3, zp round(1.5 / 0.3) = 5;
        // -1.5 → -5 + 5 = 0, 0 → 5, 0.75 → 2.4999999 → 2 → 7, 3 → 10 + 5 = 15.
        // Block 1: range [0, 0.3] → scale 0.3f32 / 15 (0.020000001 in float32), zp 0;
        // 0.2 → 10, 0.1 → 5, 0 → 0, 0.3 → 15.
        assert_eq!(q.scales, vec![0.3, (0.3f32 as f64 / 15.0) as f32]);
        assert_eq!(q.zero_points, vec![5, 0]);
        assert_eq!(q.codes, vec![0, 5, 7, 15, 10, 5, 0, 15]);
        // Symmetric: block 0 scale 3 / 7, codes in [-7, 7]; -1.5 / (3/7) = -3.5 → -4 (even).
        let q = quantize_groups(w.view(), 4, INT4_SYM, Algo::Rtn);
        assert_eq!(q.scales[0], (3.0f64 / 7.0) as f32);
        assert_eq!(q.zero_points, vec![0, 0]);
        assert_eq!(&q.codes[..4], &[-4, 0, 2, 7]);
        // A partial last block and an all-zero block (scale 1).
        let w = arr2(&[[0.0f32, 0.0, 0.0, 0.0, 1.0]]);
        let q = quantize_groups(w.view(), 4, INT4_ASYM, Algo::Rtn);
        assert_eq!(q.groups(), 2);
        assert_eq!(q.scales, vec![1.0, (1.0f64 / 15.0) as f32]);
        assert_eq!(q.codes, vec![0, 0, 0, 0, 15]);
    }

    #[test]
    fn clipping_never_does_worse_than_rtn_and_shrinks_outlier_groups() {
        // Heavy tails: most weights near zero, a few large.
        let vals: Vec<f32> = (0..32)
            .map(|i| ((i * 37 % 32) as f32 / 16.0 - 1.0).powi(3))
            .collect();
        let w = Array2::from_shape_vec((1, 32), vals).unwrap();
        let sse = |q: &Quantized| -> f64 {
            let d = q.dequantize();
            w.iter()
                .zip(d.iter())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        };
        let rtn = quantize_groups(w.view(), 32, INT4_ASYM, Algo::Rtn);
        let clip = quantize_groups(w.view(), 32, INT4_ASYM, Algo::Clip);
        assert!(clip.scales[0] < rtn.scales[0], "{clip:?}");
        assert!(sse(&clip) < sse(&rtn), "{} vs {}", sse(&clip), sse(&rtn));
    }

    #[test]
    fn cholesky_and_triangular_inverse() {
        let a = arr2(&[[4.0, 2.0, 0.4], [2.0, 5.0, 1.0], [0.4, 1.0, 3.0]]);
        let l = cholesky(&a).unwrap();
        let back = l.dot(&l.t());
        for (x, y) in back.iter().zip(a.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
        let li = invert_lower(&l);
        let id = l.dot(&li);
        for ((i, j), v) in id.indexed_iter() {
            assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{id}");
        }
        assert_eq!(cholesky(&arr2(&[[1.0, 2.0], [2.0, 1.0]])), Err(1));
    }

    /// A deterministic pseudo-random stream in [-1, 1).
    fn stream(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        }
    }

    /// Correlated inputs `X [n, k]` (mixed features) and a weight `[rows, k]`.
    fn layer(n: usize, k: usize, rows: usize) -> (Array2<f32>, Array2<f32>) {
        let mut r = stream(0x9e37_79b9_7f4a_7c15);
        let z = Array2::from_shape_fn((n, k), |_| r());
        let mix = Array2::from_shape_fn((k, k), |(i, j)| if i == j { 1.0 } else { 0.6 * r() });
        let x = z.dot(&mix);
        let w = Array2::from_shape_fn((rows, k), |_| r() * 0.5);
        (x, w)
    }

    fn output_error(x: &Array2<f32>, w: &Array2<f32>, q: &Quantized) -> f64 {
        let y = x.dot(&w.t());
        let yq = x.dot(&q.dequantize().t());
        y.iter()
            .zip(yq.iter())
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum()
    }

    #[test]
    fn gptq_reduces_the_layer_output_error() {
        let (x, w) = layer(256, 64, 16);
        let mut h = Hessian::new(64);
        for chunk in x.as_slice().unwrap().chunks(64 * 32) {
            h.add(chunk);
        }
        assert_eq!(h.rows(), 256);
        let h = h.finish();
        for (group, grid, act_order) in [
            (16, INT4_ASYM, false),
            (64, INT4_SYM, false),
            (16, INT4_ASYM, true),
        ] {
            let rtn = quantize_groups(w.view(), group, grid, Algo::Rtn);
            let opts = GptqOptions {
                act_order,
                block: 24,
                ..Default::default()
            };
            let g = gptq(w.view(), &h, group, grid, opts).unwrap();
            let (e_rtn, e_g) = (output_error(&x, &w, &rtn), output_error(&x, &w, &g));
            assert!(
                e_g < 0.8 * e_rtn,
                "group {group} act-order {act_order}: GPTQ {e_g} vs RTN {e_rtn}"
            );
        }
    }

    #[test]
    fn gptq_with_a_diagonal_hessian_is_rtn() {
        let (_, w) = layer(4, 40, 6);
        let h = Array2::from_shape_fn(
            (40, 40),
            |(i, j)| {
                if i == j {
                    1.0 + (i % 7) as f64
                } else {
                    0.0
                }
            },
        );
        for (group, grid) in [(16, INT4_ASYM), (40, INT4_SYM)] {
            let rtn = quantize_groups(w.view(), group, grid, Algo::Rtn);
            let opts = GptqOptions {
                block: 16,
                ..Default::default()
            };
            assert_eq!(gptq(w.view(), &h, group, grid, opts).unwrap(), rtn);
        }
    }

    #[test]
    fn gptq_zeroes_dead_inputs_and_checks_the_shape() {
        let (_, w) = layer(4, 8, 2);
        let mut h = Array2::<f64>::eye(8);
        h[[3, 3]] = 0.0;
        let q = gptq(w.view(), &h, 8, INT4_ASYM, GptqOptions::default()).unwrap();
        let d = q.dequantize();
        assert_eq!(d[[0, 3]], 0.0);
        assert_eq!(d[[1, 3]], 0.0);
        let err = gptq(
            w.view(),
            &Array2::eye(7),
            8,
            INT4_ASYM,
            GptqOptions::default(),
        );
        assert!(matches!(err, Err(GptqError::Shape { .. })));
    }
}
