//! Learned rounding of uniform weights (AdaRound: Nagel et al., "Up or Down? Adaptive
//! Rounding for Post-Training Quantization", 2020): each weight element is rounded down
//! or up to a neighbouring code of its own grid (the scale and zero point are those of
//! round-to-nearest; only the choice between floor and ceiling changes), chosen to
//! minimise the layer's output error on calibration inputs rather than each weight's own
//! error.
//!
//! The error is the paper's asymmetric reconstruction `‖W x_f − W̃ x‖²`: the target is the
//! float layer on its float input `x_f`, the prediction the rounded layer on the input `x`
//! the quantized model gives it (earlier layers rounded, activations through their Q/DQ),
//! so the rounding also answers the input's quantization noise `d = x_f − x`. With `d = 0`
//! it is the plain `‖W x − W̃ x‖²`.
//!
//! A problem is one linear layer (or one group of a grouped Conv) as a matrix `W`
//! `[rows, k]` (output channels × reduction) with the mean Gram matrix `H = E[x xᵀ]` of its
//! `N` input rows (Conv patches through [`im2col`]) and, when the input is noisy, the
//! cross moment `C = E[x dᵀ]` and the noise's own output energy `tr(W E[d dᵀ] Wᵀ)`: with
//! `ΔW = W̃ − W` the output error per output element is
//! `(tr(ΔW H ΔWᵀ) − 2 tr(ΔW C Wᵀ) + tr(W E[d dᵀ] Wᵀ)) / rows`, so the rows themselves are
//! never held. The relaxation: the code
//! of an element is `floor(w/s) + z + h(V)`, with the rectified sigmoid
//! `h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)` (ζ = 1.1, γ = −0.1), `V` initialised so that
//! `h(V)` is the fractional part of `w/s`; the loss is the output error relative to
//! round-to-nearest's rounding term `tr(ΔW H ΔWᵀ)` plus `λ · mean(1 − |2h − 1|^β)` after a
//! warm-up, β annealed from 20 to 2, which drives every `h` to 0 or 1. Gradients are
//! written out: `∂rec/∂W̃ = 2 (ΔW H − W Cᵀ) / rows`, times `s` where the code is inside the
//! grid, times `h'(V)`; Adam steps `V`. The result rounds up where `h(V) ≥ 0.5`.
//!
//! Nothing is random: `V` starts from the weights and the iterations visit the same
//! moments in the same order, so every run gives the same codes. A problem whose
//! learned rounding does not lower the measured error (in f64) keeps round-to-nearest.

use ndarray::{Array2, Zip};

const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

/// One rounding problem.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Float weights `[rows, k]`.
    pub w: Array2<f32>,
    /// Scale of each element's grid (same shape as `w`).
    pub scale: Array2<f32>,
    /// Zero point of each element's grid (same shape as `w`).
    pub zero_point: Array2<f32>,
    /// The code range (inclusive).
    pub qmin: f32,
    pub qmax: f32,
    /// Mean Gram matrix of the layer's input rows, `[k, k]`: `E[x xᵀ]`.
    pub gram: Array2<f32>,
    /// The input's quantization noise against the float model's input, when the rows
    /// are the quantized model's; `None`: the target is the same input (no noise).
    pub noise: Option<Noise>,
}

/// The quantization noise `d = x_f − x` of a layer's input `x` (the quantized model's)
/// against its float input `x_f`, as the error needs it.
#[derive(Clone, Debug)]
pub struct Noise {
    /// `C = E[x dᵀ]`, `[k, k]`.
    pub cross: Array2<f64>,
    /// `tr(W E[d dᵀ] Wᵀ) / rows`: the output error of the float weights on the noisy input.
    pub energy: f64,
}

/// The optimisation's budget and constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub iters: usize,
    /// Adam's step size on `V`.
    pub lr: f32,
    /// Weight of the rounding regulariser.
    pub lambda: f32,
    /// Share of the iterations before the regulariser starts.
    pub warmup: f32,
    /// β at the regulariser's start and end.
    pub beta: (f32, f32),
}

impl Schedule {
    /// The published warm-up (20 %) and β annealing (20 to 2) with `iters` iterations.
    /// λ weighs the mean regulariser against the reconstruction error relative to
    /// round-to-nearest's (the published λ = 0.01 weighs a sum against an absolute error,
    /// which depends on the layer's scale); λ = 100 and the step 10⁻² were the best of
    /// λ ∈ {3 … 1000} × step ∈ {3·10⁻³ … 10⁻¹} on the unit test's layer.
    pub fn with_iters(iters: usize) -> Schedule {
        Schedule {
            iters,
            lr: 1e-2,
            lambda: 100.0,
            warmup: 0.2,
            beta: (20.0, 2.0),
        }
    }
}

/// What a problem learned.
#[derive(Clone, Debug, PartialEq)]
pub struct Rounded {
    /// Round up (ceiling) or down (floor), per element.
    pub up: Array2<bool>,
    /// `tr(ΔW H ΔWᵀ) / rows` with round-to-nearest.
    pub nearest_error: f64,
    /// The same with `up`.
    pub error: f64,
    /// The learned rounding did not lower the error: `up` is round-to-nearest.
    pub kept_nearest: bool,
}

/// `floor(w / s)` per element: the code below (before the zero point).
pub fn floor_codes(p: &Problem) -> Array2<f32> {
    Zip::from(&p.w)
        .and(&p.scale)
        .map_collect(|&w, &s| (w / s).floor())
}

/// The code of an element rounded up or down, clamped to the grid.
pub fn code(w: f32, s: f32, z: f32, up: bool, qmin: f32, qmax: f32) -> f32 {
    ((w / s).floor() + if up { 1.0 } else { 0.0 } + z).clamp(qmin, qmax)
}

/// Round-to-nearest (ties to even, as QuantizeLinear) as up/down choices.
pub fn nearest_up(p: &Problem) -> Array2<bool> {
    Zip::from(&p.w)
        .and(&p.scale)
        .map_collect(|&w, &s| (w / s).round_ties_even() > (w / s).floor())
}

/// `ΔW = W̃ − W` of the rounding `up`, in f64.
fn delta(p: &Problem, up: &Array2<bool>) -> Array2<f64> {
    let mut d = Array2::<f64>::zeros(p.w.raw_dim());
    Zip::from(&mut d)
        .and(&p.w)
        .and(&p.scale)
        .and(&p.zero_point)
        .and(up)
        .for_each(|d, &w, &s, &z, &u| {
            let c = code(w, s, z, u, p.qmin, p.qmax);
            *d = ((c - z) * s) as f64 - w as f64;
        });
    d
}

/// The rounding's own term `tr(ΔW H ΔWᵀ) / rows`, in f64: the whole error when the input
/// has no noise.
pub fn rounding_error(p: &Problem, up: &Array2<bool>) -> f64 {
    let d = delta(p, up);
    let h = p.gram.mapv(f64::from);
    let dh = d.dot(&h);
    (&dh * &d).sum() / p.w.nrows().max(1) as f64
}

/// The mean squared output error per output element `E‖W x_f − W̃ x‖² / rows` for the
/// rounding `up`, in f64, over the input rows the moments were made of.
pub fn error(p: &Problem, up: &Array2<bool>) -> f64 {
    let own = rounding_error(p, up);
    let Some(n) = &p.noise else {
        return own;
    };
    let d = delta(p, up);
    let w = p.w.mapv(f64::from);
    let cross = (&d.dot(&n.cross) * &w).sum() / p.w.nrows().max(1) as f64;
    own - 2.0 * cross + n.energy
}

/// Adam's state for `V`.
struct Adam {
    m: Array2<f32>,
    v: Array2<f32>,
    t: i32,
}

/// Learns the rounding of `p` on `s`'s budget; `tick(i)` is called every 64 iterations
/// and at the end with the iterations done.
pub fn learn(p: &Problem, s: &Schedule, tick: &mut dyn FnMut(usize)) -> Rounded {
    let (rows, _) = p.w.dim();
    let base = floor_codes(p);
    // h(V) = frac(w/s) at the start.
    let mut v = Zip::from(&p.w)
        .and(&p.scale)
        .and(&base)
        .map_collect(|&w, &sc, &b| {
            let frac = (w / sc - b).clamp(0.0, 1.0);
            let q = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1.0 - 1e-4);
            (q / (1.0 - q)).ln()
        });
    let mut adam = Adam {
        m: Array2::zeros(v.raw_dim()),
        v: Array2::zeros(v.raw_dim()),
        t: 0,
    };
    let mut h = Array2::<f32>::zeros(v.raw_dim());
    let mut hp = Array2::<f32>::zeros(v.raw_dim());
    let mut dw = Array2::<f32>::zeros(v.raw_dim());
    let mut dv = Array2::<f32>::zeros(v.raw_dim());
    let warm = (s.warmup * s.iters as f32) as usize;
    // The reconstruction term is measured against round-to-nearest's error and the
    // regulariser averaged over the elements, so that λ means the same on every layer
    // whatever the scale of its weights and inputs.
    let near = nearest_up(p);
    let nearest_error = error(p, &near);
    let n = p.w.len().max(1) as f32;
    // Relative to nearest's rounding term: the noise's own energy, which no rounding
    // removes, does not weaken the reconstruction against the regulariser.
    let own = rounding_error(p, &near);
    let k = 2.0 / (rows.max(1) as f64 * own.max(f64::MIN_POSITIVE)) as f32;
    // −W Cᵀ: the pull of the input's noise on ∂rec/∂W̃ (zero without noise).
    let pull = p.noise.as_ref().map(|c| {
        let w = p.w.mapv(f64::from);
        w.dot(&c.cross.t()).mapv(|v| -v as f32)
    });
    let lambda = s.lambda / n;
    for it in 0..s.iters {
        // h(V) and h'(V).
        Zip::from(&mut h)
            .and(&mut hp)
            .and(&v)
            .for_each(|h, hp, &v| {
                let sig = 1.0 / (1.0 + (-v).exp());
                let hs = sig * (ZETA - GAMMA) + GAMMA;
                *h = hs.clamp(0.0, 1.0);
                *hp = if hs > 0.0 && hs < 1.0 {
                    (ZETA - GAMMA) * sig * (1.0 - sig)
                } else {
                    0.0
                };
            });
        // ΔW of the soft codes; dv holds ∂W̃/∂V (zero where the grid clamps the code).
        Zip::from(&mut dw)
            .and(&mut dv)
            .and(&h)
            .and(&hp)
            .and(&base)
            .and(&p.zero_point)
            .for_each(|dw, dv, &h, &hp, &b, &z| {
                let c = b + h + z;
                *dv = if c < p.qmin || c > p.qmax { 0.0 } else { hp };
                *dw = c.clamp(p.qmin, p.qmax) - z;
            });
        Zip::from(&mut dw)
            .and(&mut dv)
            .and(&p.w)
            .and(&p.scale)
            .for_each(|dw, dv, &w, &sc| {
                *dw = *dw * sc - w;
                *dv *= sc;
            });
        // ∂rec/∂W̃ = 2 (ΔW H − W Cᵀ) / rows, through the relaxation; then the regulariser's
        // ∂/∂V (1 − |2h − 1|^β) = −2β |2h − 1|^(β−1) sign(2h − 1) h'(V).
        let mut grad = dw.dot(&p.gram);
        if let Some(pull) = &pull {
            grad += pull;
        }
        let beta = (it >= warm).then(|| {
            let rel = (it - warm) as f32 / (s.iters - warm).max(1) as f32;
            s.beta.1 + (s.beta.0 - s.beta.1) * (1.0 - rel).max(0.0)
        });
        Zip::from(&mut grad)
            .and(&dv)
            .and(&h)
            .and(&hp)
            .for_each(|gr, &dv, &h, &hp| {
                let mut x = *gr * k * dv;
                if let Some(beta) = beta {
                    let t = 2.0 * h - 1.0;
                    x -= lambda * 2.0 * beta * t.abs().powf(beta - 1.0) * t.signum() * hp;
                }
                *gr = x;
            });
        adam_step(&mut adam, &mut v, &grad, s.lr);
        if (it + 1) % 64 == 0 {
            tick(it + 1);
        }
    }
    tick(s.iters);
    let up = v.mapv(|v| v >= 0.0);
    let learned = error(p, &up);
    if learned < nearest_error {
        Rounded {
            up,
            nearest_error,
            error: learned,
            kept_nearest: false,
        }
    } else {
        Rounded {
            up: near,
            nearest_error,
            error: nearest_error,
            kept_nearest: true,
        }
    }
}

fn adam_step(a: &mut Adam, v: &mut Array2<f32>, g: &Array2<f32>, lr: f32) {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    a.t += 1;
    let c1 = 1.0 - B1.powi(a.t);
    let c2 = 1.0 - B2.powi(a.t);
    Zip::from(v)
        .and(&mut a.m)
        .and(&mut a.v)
        .and(g)
        .for_each(|v, m, s, &g| {
            *m = B1 * *m + (1.0 - B1) * g;
            *s = B2 * *s + (1.0 - B2) * g * g;
            *v -= lr * (*m / c1) / ((*s / c2).sqrt() + 1e-8);
        });
}

/// A Conv's geometry for [`im2col`]: one or two spatial dimensions (a 1-D Conv is a
/// 2-D one of height 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input `[n, c, h, w]`.
    pub input: [usize; 4],
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Padding at the start of each spatial axis.
    pub pads_begin: [usize; 2],
    /// Output `[oh, ow]`.
    pub output: [usize; 2],
    pub groups: usize,
}

impl ConvGeom {
    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.input[1] / self.groups.max(1)
    }

    /// Reduction length per group: `cin_g · kh · kw`.
    pub fn k(&self) -> usize {
        self.cin_g() * self.kernel[0] * self.kernel[1]
    }

    /// Patches (output positions) of the whole batch.
    pub fn patches(&self) -> usize {
        self.input[0] * self.output[0] * self.output[1]
    }
}

/// The patch of group `group` at output position `pos` (batch-major, then row, column)
/// of the input `x` (`[n, c, h, w]`, row-major), in the weight's order (input channel,
/// kernel row, kernel column); taps in the padding are zero.
pub fn im2col(x: &[f32], geo: &ConvGeom, group: usize, pos: usize, out: &mut [f32]) {
    let [_, c, h, w] = geo.input;
    let [oh, ow] = geo.output;
    let [kh, kw] = geo.kernel;
    let (n, oy, ox) = (pos / (oh * ow), (pos / ow) % oh, pos % ow);
    let cin_g = geo.cin_g();
    let mut i = 0;
    for ic in 0..cin_g {
        let ch = group * cin_g + ic;
        let plane = (n * c + ch) * h * w;
        for ky in 0..kh {
            let iy =
                (oy * geo.strides[0] + ky * geo.dilations[0]) as isize - geo.pads_begin[0] as isize;
            for kx in 0..kw {
                let ix = (ox * geo.strides[1] + kx * geo.dilations[1]) as isize
                    - geo.pads_begin[1] as isize;
                out[i] = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    x[plane + iy as usize * w + ix as usize]
                } else {
                    0.0
                };
                i += 1;
            }
        }
    }
}

/// `take` indices evenly spread over `0..n` (all of them when `take ≥ n`).
pub fn spread(n: usize, take: usize) -> impl Iterator<Item = usize> {
    let t = take.min(n);
    (0..t).map(move |i| i * n / t.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Numbers in [-0.5, 0.5) from a fixed xorshift sequence.
    fn numbers(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// A layer whose inputs share a common factor: nearest rounding's errors add up in
    /// the output.
    pub(super) fn problem() -> Problem {
        let (rows, k, n) = (8, 32, 256);
        let w = Array2::from_shape_vec((rows, k), numbers(7, rows * k)).unwrap();
        let noise = numbers(11, n * k);
        let common = numbers(13, n);
        let x = Array2::from_shape_fn((n, k), |(r, j)| common[r] + 0.3 * noise[r * k + j]);
        let gram = x.t().dot(&x) / n as f32;
        let scale = Array2::from_shape_fn((rows, k), |(o, _)| {
            w.row(o).iter().fold(0f32, |m, v| m.max(v.abs())) / 7.0
        });
        Problem {
            scale,
            zero_point: Array2::zeros((rows, k)),
            qmin: -7.0,
            qmax: 7.0,
            w,
            gram,
            noise: None,
        }
    }

    #[test]
    fn learned_rounding_lowers_the_output_error_and_stays_on_floor_or_ceiling() {
        let p = problem();
        let r = learn(&p, &Schedule::with_iters(400), &mut |_| {});
        assert!(!r.kept_nearest);
        assert!(
            r.error < 0.6 * r.nearest_error,
            "{} vs {}",
            r.error,
            r.nearest_error
        );
        assert_eq!(r.error, error(&p, &r.up));
        for ((&w, &s), &u) in p.w.iter().zip(&p.scale).zip(&r.up) {
            let c = code(w, s, 0.0, u, p.qmin, p.qmax);
            assert!(c == (w / s).floor() || c == (w / s).ceil());
        }
    }

    /// A layer whose quantized input `x` is its float input `x_f` with a per-feature gain
    /// error (as rounded upstream weights give) on an activation grid: the rows of both,
    /// and the problem with the noise's moments made from them.
    fn noisy_problem() -> (Problem, Array2<f32>, Array2<f32>) {
        let clean = problem();
        let (rows, k, n) = (clean.w.nrows(), clean.w.ncols(), 256);
        let noise = numbers(11, n * k);
        let common = numbers(13, n);
        let gain = numbers(17, k);
        let xf = Array2::from_shape_fn((n, k), |(r, j)| common[r] + 0.3 * noise[r * k + j]);
        let x = Array2::from_shape_fn((n, k), |(r, j)| {
            (xf[[r, j]] * (1.0 + 0.3 * gain[j]) / 0.02).round() * 0.02
        });
        let (x64, xf64) = (x.mapv(f64::from), xf.mapv(f64::from));
        let d = &xf64 - &x64;
        let w = clean.w.mapv(f64::from);
        let dd = d.t().dot(&d) / n as f64;
        let p = Problem {
            gram: (x64.t().dot(&x64) / n as f64).mapv(|v| v as f32),
            noise: Some(Noise {
                cross: x64.t().dot(&d) / n as f64,
                energy: (&w.dot(&dd) * &w).sum() / rows as f64,
            }),
            ..clean
        };
        (p, xf, x)
    }

    /// `E‖W x_f − W̃ x‖² / rows` straight from the rows.
    fn direct_error(p: &Problem, up: &Array2<bool>, xf: &Array2<f32>, x: &Array2<f32>) -> f64 {
        let wq = Zip::from(&p.w)
            .and(&p.scale)
            .and(&p.zero_point)
            .and(up)
            .map_collect(|&w, &s, &z, &u| ((code(w, s, z, u, p.qmin, p.qmax) - z) * s) as f64);
        let target = xf.mapv(f64::from).dot(&p.w.mapv(f64::from).t());
        let got = x.mapv(f64::from).dot(&wq.t());
        (&target - &got).mapv(|v| v * v).sum() / (x.nrows() * p.w.nrows()) as f64
    }

    #[test]
    fn the_error_on_noisy_inputs_is_that_of_the_rows() {
        let (p, xf, x) = noisy_problem();
        let near = nearest_up(&p);
        let flipped = near.mapv(|u| !u);
        for up in [&near, &flipped] {
            let (a, b) = (error(&p, up), direct_error(&p, up, &xf, &x));
            assert!((a - b).abs() <= 1e-6 * b, "moments {a} vs rows {b}");
        }
    }

    #[test]
    fn rounding_learned_on_noisy_inputs_beats_nearest_and_the_noise_blind_rounding() {
        let (p, xf, x) = noisy_problem();
        let s = Schedule::with_iters(400);
        let r = learn(&p, &s, &mut |_| {});
        let blind = learn(
            &Problem {
                noise: None,
                ..p.clone()
            },
            &s,
            &mut |_| {},
        );
        let near = direct_error(&p, &nearest_up(&p), &xf, &x);
        let (learned, unaware) = (
            direct_error(&p, &r.up, &xf, &x),
            direct_error(&p, &blind.up, &xf, &x),
        );
        assert!(!r.kept_nearest);
        assert!(
            learned < 0.9 * near && learned < 0.9 * unaware,
            "learned {learned}, nearest {near}, learned without the noise {unaware}"
        );
    }

    #[test]
    fn im2col_pads_with_zeros_and_follows_the_weight_order() {
        let geo = ConvGeom {
            input: [1, 2, 3, 3],
            kernel: [2, 2],
            strides: [1, 1],
            dilations: [1, 1],
            pads_begin: [1, 1],
            output: [4, 4],
            groups: 1,
        };
        let x: Vec<f32> = (0..18).map(|v| v as f32 + 1.0).collect();
        let mut out = vec![0.0; geo.k()];
        im2col(&x, &geo, 0, 0, &mut out);
        assert_eq!(out, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 10.0]);
        im2col(&x, &geo, 0, 5, &mut out);
        assert_eq!(out, vec![1.0, 2.0, 4.0, 5.0, 10.0, 11.0, 13.0, 14.0]);
    }
}
