//! com.microsoft **DynamicQuantizeLSTM**, computed as ONNX Runtime 1.32's CPU kernel computes it.
//!
//! # Semantics
//! The op is ONNX LSTM (opset 7–14 semantics, `layout` 0: gates in the order i, o, f, c) with
//! 8-bit weights stored **transposed**: `W` is `[num_directions, input_size, 4·hidden]`, `R` is
//! `[num_directions, hidden, 4·hidden]` (int8 or uint8 each), with scales and zero points per
//! direction (`[num_directions]`) or per output column (`[num_directions, 4·hidden]`). Inputs
//! 0–7 are LSTM's (`X, W, R, B, sequence_lens, initial_h, initial_c, P`), then `W_scale,
//! W_zero_point, R_scale, R_zero_point`; outputs `Y, Y_h, Y_c`.
//!
//! Per direction (the reverse one reads each sequence back to front, as LSTM does):
//! - **Input product, once for the whole sequence.** The first `max(sequence_lens)` steps of
//!   `X` (every batch row) are quantized to uint8 together, with DynamicQuantizeLinear's
//!   parameters (`[min(0, min), max(0, max)]` over those values, scale `(max − min) / 255`,
//!   zero point rounded half to even, true division; [`super::integer`]). Then, per row and
//!   column `n`, `G = f32(Σₖ (x_q − x_zp)·(w − w_zp)) · f32(x_scale · w_scale[n])` (int32 sum,
//!   each float step rounded on its own).
//! - **Recurrent product, every step.** The hidden state the step reads (`initial_h` or zeros at
//!   step 0, then the previous step's output rows, all batch rows together) is quantized the
//!   same way, and `G += f32(Σ (h_q − h_zp)·(r − r_zp)) · f32(h_scale · r_scale[n])`, the
//!   product rounded before the sum. Rows whose sequence has ended read zeros when `Y` is an
//!   output of the node, and their last hidden state when it is not (ONNX Runtime writes those
//!   rows to different buffers), so the quantization, hence every row, depends on which outputs
//!   the node has.
//! - **Gates** in float32, in ONNX Runtime's order of operations: peephole `G += C·P` (product
//!   rounded, then the sum), bias `x = G + (Wb + Rb)` (the two biases summed first), clip
//!   `max(−clip, min(clip, x))` (`clip` defaults to the largest float: no clip), then the
//!   activation: `i = σ(·)`, `f = σ(·)` (or `1 − i` with `input_forget`), `c = tanh(·)`,
//!   `C = C_prev·f + i·c` (two products, then the sum), `o = σ(·)` with the peephole on the new
//!   `C`, `H = tanh(C)·o`.
//! - **σ and tanh** are ONNX Runtime's MLAS kernels on x86-64 CPUs with FMA3, bit for bit:
//!   Eigen's rational approximations evaluated with fused multiply-adds — σ on `x` clamped to
//!   [−18, 18], `p/q + 0.5` with negative results raised to 0; tanh on `x` clamped to [−9, 9],
//!   `p/q`. (CPUs without FMA3 run them unfused and differ in the last bits.) Only the default
//!   activations (Sigmoid, Tanh, Tanh) are supported.
//!
//! # Where ONNX Runtime differs
//! - uint8 × int8 products: its x86 kernels without VNNI add pairs of products saturating to
//!   int16 (see [`super::integer`]); here the sums are exact int32 sums. Its uint8 × uint8
//!   kernels sum exactly: `quantize --mode dynamic` writes the weights as uint8 around a
//!   zero point of 128.
//! - With more than one intra-op thread, ONNX Runtime splits the batch into chunks of
//!   ⌈batch / threads⌉ rows (when batch > 4, or batch ≥ 2 and hidden ≤ 256) and quantizes each
//!   chunk's hidden state on its own; here the whole batch is one chunk, as with one thread.
//!   Batch 1 (silero_vad) is the same either way.
//! - A row whose sequence length is 0 when `Y` is not an output: ONNX Runtime reads that row's
//!   final-state buffer before writing it; here it reads zeros.

use crate::ir::tensor::Tensor;
use ndarray::{ArrayD, IxDyn};

use super::integer::dynamic_quantize_params;

/// Why the op refused its inputs: one line naming the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LstmError(pub String);

fn bad(what: impl Into<String>) -> LstmError {
    LstmError(what.into())
}

/// `direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Forward,
    Reverse,
    Bidirectional,
}

impl Direction {
    /// From the attribute's text.
    pub fn parse(s: &str) -> Result<Direction, LstmError> {
        match s {
            "forward" => Ok(Direction::Forward),
            "reverse" => Ok(Direction::Reverse),
            "bidirectional" => Ok(Direction::Bidirectional),
            other => Err(bad(format!(
                "direction '{other}' is none of forward, reverse, bidirectional"
            ))),
        }
    }

    /// How many directions the op computes.
    pub fn count(self) -> usize {
        match self {
            Direction::Bidirectional => 2,
            _ => 1,
        }
    }
}

/// The op's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QLstmAttrs {
    pub direction: Direction,
    pub hidden_size: usize,
    /// `clip` as float32 bits (`f32::MAX` when absent).
    pub clip_bits: u32,
    pub input_forget: bool,
}

impl QLstmAttrs {
    /// The cell clip threshold.
    pub fn clip(&self) -> f32 {
        f32::from_bits(self.clip_bits)
    }

    /// Checks attributes against what the kernel computes: `hidden_size > 0`, `clip > 0`, and
    /// the default activations only (`activations` lower-cased, empty for the default).
    pub fn check(&self, activations: &[String]) -> Result<(), LstmError> {
        if self.hidden_size == 0 {
            return Err(bad("hidden_size must be positive"));
        }
        if self.clip().is_nan() || self.clip() <= 0.0 {
            return Err(bad(format!("clip {} must be positive", self.clip())));
        }
        let default = ["sigmoid", "tanh", "tanh"];
        if !activations.is_empty() {
            let ok = activations.len() == 3 * self.direction.count()
                && activations
                    .iter()
                    .enumerate()
                    .all(|(i, a)| a.eq_ignore_ascii_case(default[i % 3]));
            if !ok {
                return Err(bad(format!(
                    "activations {activations:?} are not supported (only Sigmoid, Tanh, Tanh)"
                )));
            }
        }
        Ok(())
    }
}

/// The op's inputs (ONNX slots 0–11; the optional ones may be absent).
#[derive(Debug, Clone, Copy)]
pub struct QLstmInputs<'a> {
    pub x: &'a Tensor,
    pub w: &'a Tensor,
    pub r: &'a Tensor,
    pub b: Option<&'a Tensor>,
    pub sequence_lens: Option<&'a Tensor>,
    pub initial_h: Option<&'a Tensor>,
    pub initial_c: Option<&'a Tensor>,
    pub p: Option<&'a Tensor>,
    pub w_scale: &'a Tensor,
    pub w_zero_point: &'a Tensor,
    pub r_scale: &'a Tensor,
    pub r_zero_point: &'a Tensor,
}

/// `Y` `[seq, num_directions, batch, hidden]`, `Y_h` and `Y_c` `[num_directions, batch,
/// hidden]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QLstmOutputs {
    pub y: Tensor,
    pub y_h: Tensor,
    pub y_c: Tensor,
}

// Eigen's coefficients, as MLAS writes them (float literals, rounded to float32).
#[allow(clippy::excessive_precision)]
const LOGISTIC: [f32; 11] = [
    4.37031012579801e-11,
    1.15627324459942e-07,
    6.08574864600143e-05,
    8.51377133304701e-03,
    2.48287947061529e-01,
    6.10247389755681e-13,
    5.76102136993427e-09,
    6.29106785017040e-06,
    1.70198817374094e-03,
    1.16817656904453e-01,
    9.93151921023180e-01,
];

#[allow(clippy::excessive_precision)]
const TANH: [f32; 11] = [
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
    1.19825839466702e-06,
    1.18534705686654e-04,
    2.26843463243900e-03,
    4.89352518554385e-03,
];

/// ONNX Runtime's logistic function on x86-64 with FMA3 (MLAS), bit for bit.
pub fn mlas_logistic(x: f32) -> f32 {
    let [a9, a7, a5, a3, a1, b10, b8, b6, b4, b2, b0] = LOGISTIC;
    // maxps/minps keep a NaN input
    let x = x.clamp(-18.0, 18.0);
    let x2 = x * x;
    let mut p = x2.mul_add(a9, a7);
    for c in [a5, a3, a1] {
        p = x2.mul_add(p, c);
    }
    let p = x * p;
    let mut q = x2.mul_add(b10, b8);
    for c in [b6, b4, b2, b0] {
        q = x2.mul_add(q, c);
    }
    let r = p / q + 0.5;
    if 0.0 > r {
        0.0
    } else {
        r
    }
}

/// ONNX Runtime's hyperbolic tangent on x86-64 with FMA3 (MLAS), bit for bit.
pub fn mlas_tanh(x: f32) -> f32 {
    let [a13, a11, a9, a7, a5, a3, a1, b6, b4, b2, b0] = TANH;
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let mut p = x2.mul_add(a13, a11);
    for c in [a9, a7, a5, a3, a1] {
        p = x2.mul_add(p, c);
    }
    let p = x * p;
    let mut q = x2.mul_add(b6, b4);
    for c in [b2, b0] {
        q = x2.mul_add(q, c);
    }
    p / q
}

/// A float32 tensor's values with its shape, or an error naming the input.
fn floats<'a>(t: &'a Tensor, role: &str) -> Result<(Vec<f32>, &'a [usize]), LstmError> {
    match t {
        Tensor::F32(a) => Ok((a.iter().copied().collect(), a.shape())),
        other => Err(bad(format!(
            "{role} is {}, float32 expected",
            other.dtype()
        ))),
    }
}

fn check_shape(role: &str, got: &[usize], want: &[usize]) -> Result<(), LstmError> {
    if got != want {
        return Err(bad(format!("{role} has shape {got:?}, {want:?} expected")));
    }
    Ok(())
}

/// One direction's 8-bit weight: values as int32, `[k, 4·hidden]` row-major per direction.
struct QWeight {
    values: Vec<i32>,
    /// Zero point per direction.
    zero_points: Vec<i32>,
    /// Scale per direction and column (`[dirs][4·hidden]`; one value repeated when per
    /// tensor).
    scales: Vec<Vec<f32>>,
}

fn qweight(
    w: &Tensor,
    scale: &Tensor,
    zp: &Tensor,
    role: &str,
    shape: &[usize],
) -> Result<QWeight, LstmError> {
    let (values, signed): (Vec<i32>, bool) = match w {
        Tensor::I8(a) => (a.iter().map(|&v| v as i32).collect(), true),
        Tensor::U8(a) => (a.iter().map(|&v| v as i32).collect(), false),
        other => {
            return Err(bad(format!(
                "{role} is {}, int8 or uint8 expected",
                other.dtype()
            )))
        }
    };
    check_shape(role, &w.shape(), shape)?;
    let (dirs, cols) = (shape[0], shape[2]);
    let (s, sshape) = floats(scale, &format!("{role}_scale"))?;
    let per_column = match sshape {
        [d] if *d == dirs => false,
        [d, c] if *d == dirs && *c == cols => true,
        _ => {
            return Err(bad(format!(
                "{role}_scale has shape {sshape:?}, [{dirs}] or [{dirs}, {cols}] expected"
            )))
        }
    };
    let (z, zshape): (Vec<i32>, Vec<usize>) = match (zp, signed) {
        (Tensor::I8(a), true) => (a.iter().map(|&v| v as i32).collect(), a.shape().to_vec()),
        (Tensor::U8(a), false) => (a.iter().map(|&v| v as i32).collect(), a.shape().to_vec()),
        (other, _) => {
            return Err(bad(format!(
                "{role}_zero_point is {}, {} expected (the type of {role})",
                other.dtype(),
                w.dtype()
            )))
        }
    };
    if zshape != sshape {
        return Err(bad(format!(
            "{role}_zero_point has shape {zshape:?}, the shape of {role}_scale {sshape:?} expected"
        )));
    }
    if per_column {
        // ONNX Runtime: int8 zero points all 0, uint8 ones all equal
        if signed && z.iter().any(|&v| v != 0) {
            return Err(bad(format!(
                "{role}_zero_point: per-column int8 zero points must be 0"
            )));
        }
        if !signed && z.iter().any(|&v| v != z[0]) {
            return Err(bad(format!(
                "{role}_zero_point: per-column uint8 zero points must all be equal"
            )));
        }
    }
    let per = if per_column { cols } else { 1 };
    let zero_points = (0..dirs).map(|d| z[d * per]).collect();
    let scales = (0..dirs)
        .map(|d| {
            if per_column {
                s[d * cols..(d + 1) * cols].to_vec()
            } else {
                vec![s[d]; cols]
            }
        })
        .collect();
    Ok(QWeight {
        values,
        zero_points,
        scales,
    })
}

/// `out[m, n] (=|+=) f32(Σₖ (a_q[m,k] − a_zp)·(w[k,n] − w_zp)) · f32(a_scale · w_scale[n])` with
/// `a` quantized to uint8 as DynamicQuantizeLinear does, as ONNX Runtime's quantized GEMM.
#[allow(clippy::too_many_arguments)]
fn qgemm(
    a: &[f32],
    rows: usize,
    k: usize,
    w: &[i32],
    w_zp: i32,
    w_scale: &[f32],
    out: &mut [f32],
    accumulate: bool,
) {
    let n = w_scale.len();
    let (scale, zp) = dynamic_quantize_params(a);
    let zpf = zp as f32;
    let aq: Vec<i32> = a
        .iter()
        .map(|&x| {
            let v = x / scale;
            let v = if v.is_nan() {
                -zpf
            } else {
                v.clamp(-zpf, 255.0 - zpf)
            };
            (v.round_ties_even() + zpf) as i32 - zp as i32
        })
        .collect();
    let multipliers: Vec<f32> = w_scale.iter().map(|&s| scale * s).collect();
    let wc: Vec<i32> = w.iter().map(|&v| v - w_zp).collect();
    let mut acc = vec![0i32; n];
    for m in 0..rows {
        acc.iter_mut().for_each(|v| *v = 0);
        for (kk, &av) in aq[m * k..(m + 1) * k].iter().enumerate() {
            if av == 0 {
                continue;
            }
            let wrow = &wc[kk * n..(kk + 1) * n];
            for (c, &wv) in acc.iter_mut().zip(wrow) {
                *c = c.wrapping_add(av.wrapping_mul(wv));
            }
        }
        let orow = &mut out[m * n..(m + 1) * n];
        for ((o, &c), &mul) in orow.iter_mut().zip(&acc).zip(&multipliers) {
            let v = c as f32 * mul;
            *o = if accumulate { v + *o } else { v };
        }
    }
}

/// `x + bias` (when given) clipped to [−clip, clip], in ONNX Runtime's order.
fn clip_bias(x: &mut [f32], bias: Option<&[f32]>, clip: f32) {
    match bias {
        Some(b) => {
            for (v, &bv) in x.iter_mut().zip(b) {
                let s = *v + bv;
                let s = if s < clip { s } else { clip };
                *v = if -clip < s { s } else { -clip };
            }
        }
        None => {
            for v in x.iter_mut() {
                if *v > clip {
                    *v = clip;
                } else if *v < -clip {
                    *v = -clip;
                }
            }
        }
    }
}

fn peephole(g: &mut [f32], c: &[f32], p: Option<&[f32]>) {
    if let Some(p) = p {
        for ((gv, &cv), &pv) in g.iter_mut().zip(c).zip(p) {
            *gv += cv * pv;
        }
    }
}

/// com.microsoft DynamicQuantizeLSTM (see the module doc). `y_wanted`: whether `Y` is an output
/// of the node (it changes what finished rows feed the recurrent quantization).
pub fn dynamic_quantize_lstm(
    i: &QLstmInputs,
    attrs: &QLstmAttrs,
    y_wanted: bool,
) -> Result<QLstmOutputs, LstmError> {
    let (x, xshape) = floats(i.x, "X")?;
    let [seq, batch, input] = *xshape else {
        return Err(bad(format!(
            "X has shape {xshape:?}, [seq_length, batch_size, input_size] expected"
        )));
    };
    let dirs = attrs.direction.count();
    let h = attrs.hidden_size;
    let g4 = 4 * h;
    let w = qweight(i.w, i.w_scale, i.w_zero_point, "W", &[dirs, input, g4])?;
    let r = qweight(i.r, i.r_scale, i.r_zero_point, "R", &[dirs, h, g4])?;
    let opt = |t: Option<&Tensor>, role: &str, shape: &[usize]| -> Result<_, LstmError> {
        t.map(|t| {
            let (v, s) = floats(t, role)?;
            check_shape(role, s, shape)?;
            Ok(v)
        })
        .transpose()
    };
    let bias = opt(i.b, "B", &[dirs, 8 * h])?;
    let init_h = opt(i.initial_h, "initial_h", &[dirs, batch, h])?;
    let init_c = opt(i.initial_c, "initial_c", &[dirs, batch, h])?;
    let peep = opt(i.p, "P", &[dirs, 3 * h])?;
    let lens: Vec<usize> = match i.sequence_lens {
        None => vec![seq; batch],
        Some(Tensor::I32(a)) => {
            check_shape("sequence_lens", a.shape(), &[batch])?;
            a.iter()
                .map(|&l| {
                    usize::try_from(l)
                        .ok()
                        .filter(|&l| l <= seq)
                        .ok_or_else(|| {
                            bad(format!("sequence_lens value {l} is outside [0, {seq}]"))
                        })
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(bad(format!(
                "sequence_lens is {}, int32 expected",
                other.dtype()
            )))
        }
    };
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let min_len = lens.iter().copied().min().unwrap_or(0).min(seq);
    let clip = attrs.clip();

    let mut y = vec![0f32; seq * dirs * batch * h];
    let mut y_h = vec![0f32; dirs * batch * h];
    let mut y_c = vec![0f32; dirs * batch * h];
    for d in 0..dirs {
        let reverse = attrs.direction == Direction::Reverse || d == 1;
        // the steps this direction reads, each sequence back to front when reverse
        let mut xs = vec![0f32; max_len * batch * input];
        for t in 0..max_len {
            for b in 0..batch {
                let src = if reverse && t < lens[b] {
                    lens[b] - 1 - t
                } else {
                    t
                };
                let from = (src * batch + b) * input;
                xs[(t * batch + b) * input..][..input].copy_from_slice(&x[from..from + input]);
            }
        }
        let mut gates = vec![0f32; max_len * batch * g4];
        if max_len > 0 {
            let wd = &w.values[d * input * g4..(d + 1) * input * g4];
            qgemm(
                &xs,
                max_len * batch,
                input,
                wd,
                w.zero_points[d],
                &w.scales[d],
                &mut gates,
                false,
            );
        }
        let bias_d: Option<Vec<f32>> = bias.as_ref().map(|b| {
            let b = &b[d * 8 * h..(d + 1) * 8 * h];
            (0..g4).map(|j| b[j] + b[j + g4]).collect()
        });
        let peep_d = peep.as_ref().map(|p| &p[d * 3 * h..(d + 1) * 3 * h]);
        let rd = &r.values[d * h * g4..(d + 1) * h * g4];
        let mut prev: Vec<f32> = match &init_h {
            Some(v) => v[d * batch * h..(d + 1) * batch * h].to_vec(),
            None => vec![0.0; batch * h],
        };
        let mut cell: Vec<f32> = match &init_c {
            Some(v) => v[d * batch * h..(d + 1) * batch * h].to_vec(),
            None => vec![0.0; batch * h],
        };
        // this direction's outputs in its own step order
        let mut out = vec![0f32; max_len * batch * h];
        let mut final_h = vec![0f32; batch * h];
        let mut final_c = vec![0f32; batch * h];
        for step in 0..max_len {
            let g = &mut gates[step * batch * g4..(step + 1) * batch * g4];
            qgemm(&prev, batch, h, rd, r.zero_points[d], &r.scales[d], g, true);
            for b in 0..batch {
                if step >= min_len && step >= lens[b] {
                    continue;
                }
                let row = &mut g[b * g4..(b + 1) * g4];
                let (gi, rest) = row.split_at_mut(h);
                let (go, rest) = rest.split_at_mut(h);
                let (gf, gc) = rest.split_at_mut(h);
                let c = &mut cell[b * h..(b + 1) * h];
                let part = |k: usize| bias_d.as_ref().map(|v| &v[k * h..(k + 1) * h]);
                let peep_part = |k: usize| peep_d.map(|p| &p[k * h..(k + 1) * h]);
                peephole(gi, c, peep_part(0));
                clip_bias(gi, part(0), clip);
                gi.iter_mut().for_each(|v| *v = mlas_logistic(*v));
                if attrs.input_forget {
                    for (f, &iv) in gf.iter_mut().zip(gi.iter()) {
                        *f = 1.0 - iv;
                    }
                } else {
                    peephole(gf, c, peep_part(2));
                    clip_bias(gf, part(2), clip);
                    gf.iter_mut().for_each(|v| *v = mlas_logistic(*v));
                }
                clip_bias(gc, part(3), clip);
                gc.iter_mut().for_each(|v| *v = mlas_tanh(*v));
                for j in 0..h {
                    let a = c[j] * gf[j];
                    let bb = gi[j] * gc[j];
                    c[j] = a + bb;
                }
                peephole(go, c, peep_part(1));
                clip_bias(go, part(1), clip);
                go.iter_mut().for_each(|v| *v = mlas_logistic(*v));
                let dst = if y_wanted {
                    &mut out[(step * batch + b) * h..][..h]
                } else {
                    &mut final_h[b * h..(b + 1) * h]
                };
                for j in 0..h {
                    dst[j] = mlas_tanh(c[j]) * go[j];
                }
            }
            for b in 0..batch {
                if step + 1 == lens[b] {
                    final_c[b * h..(b + 1) * h].copy_from_slice(&cell[b * h..(b + 1) * h]);
                }
            }
            prev = if y_wanted {
                out[step * batch * h..(step + 1) * batch * h].to_vec()
            } else {
                final_h.clone()
            };
        }
        for b in 0..batch {
            let len = lens[b];
            let hd = &mut y_h[(d * batch + b) * h..][..h];
            if len == 0 {
                hd.fill(0.0);
            } else if y_wanted {
                hd.copy_from_slice(&out[((len - 1) * batch + b) * h..][..h]);
            } else {
                hd.copy_from_slice(&final_h[b * h..(b + 1) * h]);
            }
            y_c[(d * batch + b) * h..][..h].copy_from_slice(&final_c[b * h..(b + 1) * h]);
            if y_wanted {
                for t in 0..max_len {
                    let src = if reverse && t < len { len - 1 - t } else { t };
                    let to = ((t * dirs + d) * batch + b) * h;
                    y[to..to + h].copy_from_slice(&out[(src * batch + b) * h..][..h]);
                }
            }
        }
    }
    let arr = |v: Vec<f32>, s: &[usize]| {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(s), v).expect("one value per element"))
    };
    Ok(QLstmOutputs {
        y: arr(y, &[seq, dirs, batch, h]),
        y_h: arr(y_h, &[dirs, batch, h]),
        y_c: arr(y_c, &[dirs, batch, h]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_follow_the_functions() {
        for i in -400..=400 {
            let x = i as f32 / 20.0;
            let s = mlas_logistic(x);
            let t = mlas_tanh(x);
            let es = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((s as f64 - es).abs() < 2e-6, "sigmoid({x}) = {s}, {es}");
            assert!(
                (t as f64 - (x as f64).tanh()).abs() < 2e-6,
                "tanh({x}) = {t}"
            );
        }
        assert_eq!(mlas_logistic(0.0), 0.5);
        assert_eq!(mlas_tanh(0.0), 0.0);
        assert!(mlas_logistic(f32::NAN).is_nan() && mlas_tanh(f32::NAN).is_nan());
        assert_eq!(mlas_logistic(-1e30), mlas_logistic(-18.0));
        assert_eq!(mlas_tanh(1e30), mlas_tanh(9.0));
    }

    /// A small deterministic generator (no external state).
    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s % 2001) as f32 / 1000.0 - 1.0) * scale
            })
            .collect()
    }

    fn f32t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    fn i8t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::I8(
            ArrayD::from_shape_vec(IxDyn(shape), v.iter().map(|&x| x as i8).collect()).unwrap(),
        )
    }

    struct Case {
        x: Tensor,
        w: Tensor,
        r: Tensor,
        b: Tensor,
        ws: Tensor,
        wz: Tensor,
        rs: Tensor,
        rz: Tensor,
    }

    /// `dirs` directions sharing the same weights; hidden 3, input 4, batch 2, seq 5.
    fn case(dirs: usize) -> Case {
        let (h, i, b, s) = (3, 4, 2, 5);
        let rep = |v: Vec<f32>| -> Vec<f32> { (0..dirs).flat_map(|_| v.clone()).collect() };
        Case {
            x: f32t(&[s, b, i], values(s * b * i, 1, 2.0)),
            w: i8t(&[dirs, i, 4 * h], rep(values(i * 4 * h, 2, 127.0))),
            r: i8t(&[dirs, h, 4 * h], rep(values(h * 4 * h, 3, 127.0))),
            b: f32t(&[dirs, 8 * h], rep(values(8 * h, 4, 0.5))),
            ws: f32t(
                &[dirs, 4 * h],
                rep(values(4 * h, 5, 0.002)
                    .iter()
                    .map(|v| v.abs() + 0.004)
                    .collect()),
            ),
            wz: i8t(&[dirs, 4 * h], vec![0.0; dirs * 4 * h]),
            rs: f32t(&[dirs], vec![0.01; dirs]),
            rz: i8t(&[dirs], vec![0.0; dirs]),
        }
    }

    fn inputs(c: &Case) -> QLstmInputs<'_> {
        QLstmInputs {
            x: &c.x,
            w: &c.w,
            r: &c.r,
            b: Some(&c.b),
            sequence_lens: None,
            initial_h: None,
            initial_c: None,
            p: None,
            w_scale: &c.ws,
            w_zero_point: &c.wz,
            r_scale: &c.rs,
            r_zero_point: &c.rz,
        }
    }

    fn attrs(direction: Direction) -> QLstmAttrs {
        QLstmAttrs {
            direction,
            hidden_size: 3,
            clip_bits: f32::MAX.to_bits(),
            input_forget: false,
        }
    }

    fn arr(t: &Tensor) -> ArrayD<f32> {
        match t {
            Tensor::F32(a) => a.clone(),
            _ => panic!("float32 expected"),
        }
    }

    /// The reverse direction is the forward one on the sequence read back to front (same
    /// quantization: the same values), bit for bit; bidirectional is both, side by side.
    #[test]
    fn reverse_and_bidirectional_mirror_forward() {
        let one = case(1);
        let mut back = case(1);
        let x = arr(&one.x);
        back.x = Tensor::F32(x.slice(ndarray::s![..;-1, .., ..]).to_owned().into_dyn());
        let fwd = dynamic_quantize_lstm(&inputs(&back), &attrs(Direction::Forward), true).unwrap();
        let rev = dynamic_quantize_lstm(&inputs(&one), &attrs(Direction::Reverse), true).unwrap();
        let (yf, yr) = (arr(&fwd.y), arr(&rev.y));
        assert_eq!(
            yr,
            yf.slice(ndarray::s![..;-1, .., .., ..])
                .to_owned()
                .into_dyn()
        );
        assert_eq!(rev.y_h, fwd.y_h);
        assert_eq!(rev.y_c, fwd.y_c);
        let two = case(2);
        let bi =
            dynamic_quantize_lstm(&inputs(&two), &attrs(Direction::Bidirectional), true).unwrap();
        let f = dynamic_quantize_lstm(&inputs(&one), &attrs(Direction::Forward), true).unwrap();
        let yb = arr(&bi.y);
        assert_eq!(
            yb.slice(ndarray::s![.., 0..1, .., ..])
                .to_owned()
                .into_dyn(),
            arr(&f.y)
        );
        assert_eq!(
            yb.slice(ndarray::s![.., 1..2, .., ..])
                .to_owned()
                .into_dyn(),
            yr
        );
        // Y_h is the last step of each direction's own order
        let yh = arr(&bi.y_h);
        assert_eq!(
            yh.slice(ndarray::s![0, .., ..]),
            yb.slice(ndarray::s![4, 0, .., ..])
        );
        assert_eq!(
            yh.slice(ndarray::s![1, .., ..]),
            yb.slice(ndarray::s![0, 1, .., ..])
        );
    }

    /// The quantized op stays close to the float LSTM on the dequantized weights (computed in
    /// float64 with exact sigmoid and tanh): the input and state quantization are the only
    /// error, a few steps of the largest gate pre-activation.
    #[test]
    fn close_to_the_float_lstm() {
        let c = case(1);
        let got = arr(
            &dynamic_quantize_lstm(&inputs(&c), &attrs(Direction::Forward), true)
                .unwrap()
                .y,
        );
        let (h, n, bsz, seq) = (3usize, 4usize, 2usize, 5usize);
        let x = arr(&c.x);
        let w: Vec<f64> = match &c.w {
            Tensor::I8(a) => a.iter().map(|&v| v as f64).collect(),
            _ => unreachable!(),
        };
        let r: Vec<f64> = match &c.r {
            Tensor::I8(a) => a.iter().map(|&v| v as f64).collect(),
            _ => unreachable!(),
        };
        let ws = arr(&c.ws);
        let bias = arr(&c.b);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut worst = 0f64;
        for b in 0..bsz {
            let (mut hs, mut cs) = (vec![0f64; h], vec![0f64; h]);
            for t in 0..seq {
                let g: Vec<f64> = (0..4 * h)
                    .map(|j| {
                        let xw: f64 = (0..n).map(|k| x[[t, b, k]] as f64 * w[k * 4 * h + j]).sum();
                        let hr: f64 = (0..h).map(|k| hs[k] * r[k * 4 * h + j]).sum();
                        xw * ws[[0, j]] as f64
                            + hr * 0.01
                            + (bias[[0, j]] + bias[[0, j + 4 * h]]) as f64
                    })
                    .collect();
                for k in 0..h {
                    let (i, o, f, cc) = (
                        sig(g[k]),
                        sig(g[h + k]),
                        sig(g[2 * h + k]),
                        g[3 * h + k].tanh(),
                    );
                    cs[k] = cs[k] * f + i * cc;
                    hs[k] = cs[k].tanh() * o;
                    worst = worst.max((hs[k] - got[[t, 0, b, k]] as f64).abs());
                }
            }
        }
        assert!(
            worst < 0.05,
            "largest difference from the float LSTM {worst}"
        );
        assert!(worst > 0.0, "the quantization changed nothing");
    }

    #[test]
    fn bad_inputs_are_named() {
        let c = case(1);
        let mut i = inputs(&c);
        let wrong = i8t(&[1, 3, 12], vec![0.0; 36]);
        i.w = &wrong;
        let e = dynamic_quantize_lstm(&i, &attrs(Direction::Forward), true).unwrap_err();
        assert!(e.0.starts_with("W has shape [1, 3, 12]"), "{e}");
        let mut i = inputs(&c);
        let zp = i8t(&[1, 12], vec![1.0; 12]);
        i.w_zero_point = &zp;
        let e = dynamic_quantize_lstm(&i, &attrs(Direction::Forward), true).unwrap_err();
        assert!(e.0.contains("per-column int8 zero points must be 0"), "{e}");
        let mut i = inputs(&c);
        let lens = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![5, 6]).unwrap());
        i.sequence_lens = Some(&lens);
        let e = dynamic_quantize_lstm(&i, &attrs(Direction::Forward), true).unwrap_err();
        assert!(e.0.contains("sequence_lens value 6"), "{e}");
        let e = attrs(Direction::Forward)
            .check(&["Relu".into(), "Tanh".into(), "Tanh".into()])
            .unwrap_err();
        assert!(e.0.contains("not supported"), "{e}");
        assert!(attrs(Direction::Forward)
            .check(&["Sigmoid".into(), "Tanh".into(), "Tanh".into()])
            .is_ok());
    }
}
