//! Per-op type rules of `infer_shapes`: one function from input facts to output types.
//!
//! A rule returns `Ok` with as much as it can tell (an output it cannot type is
//! `None`; a shape it cannot tell is `None` inside the type) and `Err` only when the
//! inputs contradict the op (shapes that do not broadcast, a bad axis…).

use super::{Fact, SymVal};
use crate::ir::eval::{norm_axis, shape_range, slice_len};
use crate::ir::{AttrValue, DType, Dim, Op, ValueType};

type Shape = Vec<Dim>;
type Out = Result<Vec<Option<ValueType>>, String>;

/// Largest rank a shape input's length is taken for (a declared `i64[10^12]` shape
/// input must not make inference allocate).
const MAX_RANK: i64 = 1024;

/// Large enough to mean "to the end" in Slice ends.
const BIG: i64 = 1 << 62;

fn tt(dtype: Option<DType>, shape: Option<Shape>) -> Option<ValueType> {
    dtype.map(|dtype| ValueType::Tensor { dtype, shape })
}

fn known(v: &[i64]) -> Shape {
    v.iter().map(|&d| Dim::Known(d)).collect()
}

/// A dim from a user-given number: negative ones are not dims.
fn kd(d: i64) -> Dim {
    if d >= 0 {
        Dim::Known(d)
    } else {
        Dim::Unknown
    }
}

/// `dims` with negative known dims made unknown.
fn sane(dims: Shape) -> Shape {
    dims.into_iter()
        .map(|d| match d {
            Dim::Known(k) => kd(k),
            d => d,
        })
        .collect()
}

/// Applies checked arithmetic to a known dim; overflow, division by zero or a negative
/// result give an unknown dim (the op's attributes are user input).
fn dim_map(d: &Dim, f: impl Fn(i64) -> Option<i64>) -> Dim {
    match d {
        Dim::Known(k) => match f(*k) {
            Some(v) if v >= 0 => Dim::Known(v),
            _ => Dim::Unknown,
        },
        _ => Dim::Unknown,
    }
}

fn dim_product(dims: &[Dim]) -> Dim {
    let mut p = 1i64;
    for d in dims {
        match d {
            Dim::Known(k) => p = p.saturating_mul(*k),
            _ => {
                return if dims.len() == 1 {
                    d.clone()
                } else if dims.iter().filter(|x| !matches!(x, Dim::Known(1))).count() == 1 {
                    dims.iter()
                        .find(|x| !matches!(x, Dim::Known(1)))
                        .cloned()
                        .unwrap_or(Dim::Unknown)
                } else {
                    Dim::Unknown
                }
            }
        }
    }
    Dim::Known(p)
}

/// Numpy broadcasting of two symbolic shapes.
pub(crate) fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    let n = a.len().max(b.len());
    let one = Dim::Known(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i + a.len() >= n {
            &a[i + a.len() - n]
        } else {
            &one
        };
        let y = if i + b.len() >= n {
            &b[i + b.len() - n]
        } else {
            &one
        };
        out.push(match (x, y) {
            (Dim::Known(p), Dim::Known(q)) => {
                if p == q || *q == 1 {
                    Dim::Known(*p)
                } else if *p == 1 {
                    Dim::Known(*q)
                } else {
                    return Err(format!(
                        "shapes [{}] and [{}] do not broadcast",
                        show(a),
                        show(b)
                    ));
                }
            }
            (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
            (Dim::Known(p), _) | (_, Dim::Known(p)) => Dim::Known(*p),
            (Dim::Param(p), Dim::Param(q)) if p == q => Dim::Param(p.clone()),
            _ => Dim::Unknown,
        });
    }
    Ok(out)
}

fn show(d: &[Dim]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The type both branches of an `If` agree on: same element type; dims kept where
/// equal, unknown where they differ; no shape when the ranks differ.
pub(crate) fn agree(a: &ValueType, b: &ValueType) -> Option<ValueType> {
    match (a, b) {
        (
            ValueType::Tensor {
                dtype: d1,
                shape: s1,
            },
            ValueType::Tensor {
                dtype: d2,
                shape: s2,
            },
        ) if d1 == d2 => {
            let shape = match (s1, s2) {
                (Some(x), Some(y)) if x.len() == y.len() => Some(
                    x.iter()
                        .zip(y)
                        .map(|(p, q)| if p == q { p.clone() } else { Dim::Unknown })
                        .collect(),
                ),
                _ => None,
            };
            Some(ValueType::Tensor { dtype: *d1, shape })
        }
        _ => None,
    }
}

struct Cx<'a> {
    op: &'a Op,
    ins: &'a [Option<Fact>],
    opset: i64,
}

impl Cx<'_> {
    fn fact(&self, i: usize) -> Option<&Fact> {
        self.ins.get(i).and_then(|f| f.as_ref())
    }
    fn present(&self, i: usize) -> bool {
        self.fact(i).is_some()
    }
    fn ty(&self, i: usize) -> Option<&ValueType> {
        self.fact(i).and_then(|f| f.ty.as_ref())
    }
    fn dtype(&self, i: usize) -> Option<DType> {
        match self.ty(i) {
            Some(ValueType::Tensor { dtype, .. }) => Some(*dtype),
            _ => None,
        }
    }
    fn shape(&self, i: usize) -> Option<&Shape> {
        match self.ty(i) {
            Some(ValueType::Tensor { shape, .. }) => shape.as_ref(),
            _ => None,
        }
    }
    fn rank(&self, i: usize) -> Option<usize> {
        self.shape(i).map(Vec::len)
    }
    /// Constant integer values of input `i`.
    fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.fact(i)?.val.as_ref()?.to_i64_vec()
    }
    fn floats(&self, i: usize) -> Option<Vec<f64>> {
        self.fact(i)?.val.as_ref()?.to_f64_vec()
    }
    /// Input `i` as a list of dims: constant integers or a tracked shape value.
    fn dims_val(&self, i: usize) -> Option<Shape> {
        let f = self.fact(i)?;
        if let Some(s) = &f.sym {
            return Some(s.dims.clone());
        }
        f.val.as_ref()?.to_i64_vec().map(|v| known(&v))
    }
    /// Number of elements of a 1-D input, from its shape, when it can be a rank.
    fn len1(&self, i: usize) -> Option<usize> {
        match self.shape(i)?.as_slice() {
            [Dim::Known(k)] if (0..=MAX_RANK).contains(k) => Some(*k as usize),
            _ => None,
        }
    }
    fn ai(&self, name: &str, default: i64) -> i64 {
        self.op.attr_int(name).unwrap_or(default)
    }
    fn ais(&self, name: &str) -> Option<Vec<i64>> {
        self.op.attr_ints(name).map(<[i64]>::to_vec)
    }
    fn astr(&self, name: &str) -> Option<String> {
        match self.op.attr(name) {
            Some(AttrValue::String(s)) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }
    fn n_out(&self) -> usize {
        self.op.n_outputs
    }
    /// Same type as input `i` for output 0.
    fn same(&self, i: usize) -> Out {
        Ok(vec![self.ty(i).cloned()])
    }
    fn with_dtype(&self, i: usize, dtype: Option<DType>) -> Out {
        Ok(vec![tt(dtype, self.shape(i).cloned())])
    }
    fn axis(&self, a: i64, rank: usize) -> Result<usize, String> {
        norm_axis(a, rank).ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))
    }
    /// Axes by attribute before opset `from`, by input `slot` from then on.
    /// `Ok(None)` = not given; `Err(())` = given but not constant.
    fn axes_arg(&self, from: i64, slot: usize) -> Result<Option<Vec<i64>>, ()> {
        if self.opset >= from {
            if !self.present(slot) {
                return Ok(None);
            }
            self.ints(slot).map(Some).ok_or(())
        } else {
            Ok(self.ais("axes"))
        }
    }
}

/// Output types of `op` (default domain) from the facts of its inputs.
pub(crate) fn infer(op: &Op, ins: &[Option<Fact>], opset: i64) -> Out {
    let c = Cx { op, ins, opset };
    let t = op.op_type.as_str();
    match t {
        // same type as the first input
        "Abs"
        | "Acos"
        | "Acosh"
        | "Asin"
        | "Asinh"
        | "Atan"
        | "Atanh"
        | "Ceil"
        | "Celu"
        | "Cos"
        | "Cosh"
        | "Elu"
        | "Erf"
        | "Exp"
        | "Floor"
        | "Gelu"
        | "HardSigmoid"
        | "HardSwish"
        | "Hardmax"
        | "Identity"
        | "LeakyRelu"
        | "Log"
        | "LogSoftmax"
        | "LpNormalization"
        | "LRN"
        | "MeanVarianceNormalization"
        | "Mish"
        | "Neg"
        | "Reciprocal"
        | "Relu"
        | "Round"
        | "Selu"
        | "Shrink"
        | "Sigmoid"
        | "Sign"
        | "Sin"
        | "Sinh"
        | "Softmax"
        | "Softplus"
        | "Softsign"
        | "Sqrt"
        | "Tan"
        | "Tanh"
        | "ThresholdedRelu"
        | "Clip"
        | "CumSum"
        | "InstanceNormalization"
        | "Trilu"
        | "ScatterElements"
        | "ScatterND"
        | "Scatter"
        | "ReverseSequence"
        | "BitwiseNot"
        | "GroupNormalization"
        | "FakeQuant" => c.same(0),
        "IsNaN" | "IsInf" | "Not" => c.with_dtype(0, Some(DType::Bool)),
        "PRelu" => match (c.shape(0), c.shape(1)) {
            (Some(a), Some(b)) => Ok(vec![tt(c.dtype(0), Some(broadcast(a, b)?))]),
            _ => c.same(0),
        },
        "Dropout" => Ok(vec![
            c.ty(0).cloned(),
            tt(Some(DType::Bool), c.shape(0).cloned()),
        ]),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "BitShift" | "BitwiseAnd" | "BitwiseOr"
        | "BitwiseXor" | "Max" | "Min" | "Sum" | "Mean" => elementwise(&c, c.dtype(0)),
        "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or" | "Xor" => {
            elementwise(&c, Some(DType::Bool))
        }
        "Where" => {
            let dt = c.dtype(1).or(c.dtype(2));
            elementwise(&c, dt)
        }
        "Cast" => {
            let to = c.op.attr_int("to").map(|v| DType::from_onnx(v as i32));
            c.with_dtype(0, to)
        }
        "CastLike" => c.with_dtype(0, c.dtype(1)),
        "Constant" => constant(&c),
        "ConstantOfShape" => {
            let dt = match op.attr("value") {
                Some(AttrValue::Tensor(t)) => t.dtype,
                _ => DType::F32,
            };
            let shape = c
                .dims_val(0)
                .map(sane)
                .or_else(|| c.len1(0).map(|n| vec![Dim::Unknown; n]));
            Ok(vec![tt(Some(dt), shape)])
        }
        "Shape" => {
            let shape = match c.rank(0) {
                Some(r) => {
                    let (s, e) = shape_range(op, r);
                    vec![Dim::Known((e - s) as i64)]
                }
                None => vec![Dim::Unknown],
            };
            Ok(vec![tt(Some(DType::I64), Some(shape))])
        }
        "Size" => Ok(vec![tt(Some(DType::I64), Some(vec![]))]),
        "BatchNormalization" => {
            let ch = c.shape(0).and_then(|s| s.get(1).cloned());
            let stat = tt(c.dtype(3).or(c.dtype(0)), ch.map(|d| vec![d]));
            let mut v = vec![c.ty(0).cloned()];
            for _ in 1..c.n_out() {
                v.push(stat.clone());
            }
            Ok(v)
        }
        "LayerNormalization" => {
            let mut v = vec![c.ty(0).cloned()];
            if c.n_out() > 1 {
                let stat = c.shape(0).map(|s| {
                    let r = s.len();
                    let ax = norm_axis(c.ai("axis", -1), r).unwrap_or(r);
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| if i >= ax { Dim::Known(1) } else { d.clone() })
                        .collect()
                });
                let dt = DType::from_onnx(c.ai("stash_type", 1) as i32);
                v.push(tt(Some(dt), stat.clone()));
                v.push(tt(Some(dt), stat));
            }
            Ok(v)
        }
        "QuantizeLinear" => {
            let dt = c.dtype(2).or_else(|| {
                let od = c.ai("output_dtype", 0);
                Some(if od != 0 {
                    DType::from_onnx(od as i32)
                } else {
                    DType::U8
                })
            });
            c.with_dtype(0, dt)
        }
        "DequantizeLinear" => {
            let od = c.ai("output_dtype", 0);
            let dt = if od != 0 {
                Some(DType::from_onnx(od as i32))
            } else {
                c.dtype(1).or(Some(DType::F32))
            };
            c.with_dtype(0, dt)
        }
        "DynamicQuantizeLinear" => Ok(vec![
            tt(Some(DType::U8), c.shape(0).cloned()),
            tt(Some(DType::F32), Some(vec![])),
            tt(Some(DType::U8), Some(vec![])),
        ]),
        "MatMul" => matmul(&c, c.dtype(0)),
        "MatMulInteger" => matmul(&c, Some(DType::I32)),
        "QLinearMatMul" => {
            let dt = c.dtype(7).or(c.dtype(0));
            let c2 = Cx {
                op,
                ins: &[c.fact(0).cloned(), c.fact(3).cloned()],
                opset,
            };
            matmul(&c2, dt)
        }
        "Gemm" => gemm(&c),
        "Conv" => conv(&c, 0, 1, c.dtype(0)),
        "ConvInteger" => conv(&c, 0, 1, Some(DType::I32)),
        "QLinearConv" => conv(&c, 0, 3, c.dtype(7).or(c.dtype(0))),
        "ConvTranspose" => conv_transpose(&c),
        "MaxPool" | "AveragePool" | "LpPool" => pool(&c),
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => Ok(vec![tt(
            c.dtype(0),
            c.shape(0).map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) })
                    .collect()
            }),
        )]),
        "Reshape" => reshape(&c),
        "Flatten" => Ok(vec![tt(
            c.dtype(0),
            match c.shape(0) {
                Some(s) => {
                    let ax = c.axis(c.ai("axis", 1), s.len() + 1)?;
                    Some(vec![dim_product(&s[..ax]), dim_product(&s[ax..])])
                }
                None => Some(vec![Dim::Unknown, Dim::Unknown]),
            },
        )]),
        "Transpose" => Ok(vec![tt(
            c.dtype(0),
            match c.shape(0) {
                Some(s) => {
                    let r = s.len();
                    let perm: Vec<usize> = match c.ais("perm") {
                        Some(p) => p.iter().map(|&a| c.axis(a, r)).collect::<Result<_, _>>()?,
                        None => (0..r).rev().collect(),
                    };
                    if perm.len() != r {
                        return Err(format!("perm has {} entries for rank {r}", perm.len()));
                    }
                    Some(perm.iter().map(|&p| s[p].clone()).collect())
                }
                None => None,
            },
        )]),
        "Concat" => concat(&c),
        "Squeeze" => squeeze(&c),
        "Unsqueeze" => unsqueeze(&c),
        "Gather" => gather(&c),
        "GatherElements" => Ok(vec![tt(c.dtype(0), c.shape(1).cloned())]),
        "GatherND" => {
            let b = c.ai("batch_dims", 0) as usize;
            let shape = match (c.shape(0), c.shape(1)) {
                (Some(d), Some(i)) => match i.last() {
                    Some(Dim::Known(k)) if b + (*k as usize) <= d.len() && !i.is_empty() => {
                        let mut s: Shape = i[..i.len() - 1].to_vec();
                        s.extend_from_slice(&d[b + *k as usize..]);
                        Some(s)
                    }
                    _ => None,
                },
                _ => None,
            };
            Ok(vec![tt(c.dtype(0), shape)])
        }
        "Slice" => slice(&c),
        "Split" => split(&c),
        "Pad" => pad(&c),
        "Expand" => {
            let shape = match (c.shape(0), c.dims_val(1)) {
                (Some(s), Some(t)) => Some(broadcast(s, &t)?),
                (Some(s), None) => c.len1(1).map(|n| vec![Dim::Unknown; n.max(s.len())]),
                _ => None,
            };
            Ok(vec![tt(c.dtype(0), shape)])
        }
        "Tile" => Ok(vec![tt(
            c.dtype(0),
            match (c.shape(0), c.ints(1)) {
                (Some(s), Some(r)) if r.len() == s.len() => Some(
                    s.iter()
                        .zip(&r)
                        .map(|(d, &k)| {
                            if k == 1 {
                                d.clone()
                            } else {
                                dim_map(d, |x| x.checked_mul(k))
                            }
                        })
                        .collect(),
                ),
                (Some(s), _) => Some(vec![Dim::Unknown; s.len()]),
                _ => None,
            },
        )]),
        "Range" => {
            let n = match (c.floats(0), c.floats(1), c.floats(2)) {
                (Some(a), Some(b), Some(d)) if a.len() == 1 && b.len() == 1 && d.len() == 1 => {
                    if d[0] == 0.0 {
                        return Err("Range delta is 0".into());
                    }
                    Dim::Known(((b[0] - a[0]) / d[0]).ceil().max(0.0) as i64)
                }
                _ => Dim::Unknown,
            };
            Ok(vec![tt(c.dtype(0), Some(vec![n]))])
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => reduce(&c),
        "ArgMax" | "ArgMin" => {
            let keep = c.ai("keepdims", 1) != 0;
            let shape = match c.shape(0) {
                Some(s) => {
                    let ax = c.axis(c.ai("axis", 0), s.len())?;
                    Some(reduce_dims(s, &[ax], keep))
                }
                None => None,
            };
            Ok(vec![tt(Some(DType::I64), shape)])
        }
        "TopK" => {
            let k = if opset >= 10 {
                c.ints(1).and_then(|v| v.first().copied())
            } else {
                c.op.attr_int("k")
            };
            let shape = match c.shape(0) {
                Some(s) => {
                    let ax = c.axis(c.ai("axis", -1), s.len())?;
                    let mut o = s.clone();
                    o[ax] = k.map(kd).unwrap_or(Dim::Unknown);
                    Some(o)
                }
                None => None,
            };
            Ok(vec![
                tt(c.dtype(0), shape.clone()),
                tt(Some(DType::I64), shape),
            ])
        }
        "NonZero" => Ok(vec![tt(
            Some(DType::I64),
            Some(vec![
                c.rank(0)
                    .map(|r| Dim::Known(r as i64))
                    .unwrap_or(Dim::Unknown),
                Dim::Unknown,
            ]),
        )]),
        "Resize" | "Upsample" => resize(&c),
        "DepthToSpace" | "SpaceToDepth" => {
            let b = c.ai("blocksize", 1);
            let shape = c.shape(0).and_then(|s| {
                if s.len() != 4 {
                    return None;
                }
                Some(if t == "DepthToSpace" {
                    vec![
                        s[0].clone(),
                        dim_map(&s[1], |x| x.checked_div(b.checked_mul(b)?)),
                        dim_map(&s[2], |x| x.checked_mul(b)),
                        dim_map(&s[3], |x| x.checked_mul(b)),
                    ]
                } else {
                    vec![
                        s[0].clone(),
                        dim_map(&s[1], |x| x.checked_mul(b)?.checked_mul(b)),
                        dim_map(&s[2], |x| x.checked_div(b)),
                        dim_map(&s[3], |x| x.checked_div(b)),
                    ]
                })
            });
            Ok(vec![tt(c.dtype(0), shape)])
        }
        "LSTM" | "GRU" | "RNN" => rnn(&c),
        "OneHot" => {
            let shape = match (c.shape(0), c.ints(1)) {
                (Some(s), depth) => {
                    let r = s.len() + 1;
                    let ax = c.axis(c.ai("axis", -1), r)?;
                    let mut o = s.clone();
                    o.insert(
                        ax,
                        depth
                            .and_then(|d| d.first().copied())
                            .map(kd)
                            .unwrap_or(Dim::Unknown),
                    );
                    Some(o)
                }
                _ => None,
            };
            Ok(vec![tt(c.dtype(2), shape)])
        }
        "EyeLike" => {
            let dt =
                c.op.attr_int("dtype")
                    .map(|d| DType::from_onnx(d as i32))
                    .or(c.dtype(0));
            c.with_dtype(0, dt)
        }
        "GridSample" => {
            let shape = match (c.shape(0), c.shape(1)) {
                (Some(x), Some(g)) if x.len() >= 3 && g.len() == x.len() => {
                    let mut o = vec![x[0].clone(), x[1].clone()];
                    o.extend_from_slice(&g[1..g.len() - 1]);
                    Some(o)
                }
                _ => None,
            };
            Ok(vec![tt(c.dtype(0), shape)])
        }
        _ => Ok(vec![None; c.n_out()]),
    }
}

fn elementwise(c: &Cx, dtype: Option<DType>) -> Out {
    let mut shape: Option<Shape> = Some(Vec::new());
    for i in 0..c.ins.len() {
        if !c.present(i) {
            continue;
        }
        shape = match (shape, c.shape(i)) {
            (Some(a), Some(b)) => Some(broadcast(&a, b)?),
            _ => None,
        };
    }
    Ok(vec![tt(dtype, shape)])
}

fn constant(c: &Cx) -> Out {
    let ty = match c.op.attrs.first().map(|a| (a.name.as_str(), &a.value)) {
        Some(("value", AttrValue::Tensor(t))) => tt(Some(t.dtype), Some(known(&t.dims))),
        Some(("value_float", _)) => tt(Some(DType::F32), Some(vec![])),
        Some(("value_floats", AttrValue::Floats(v))) => {
            tt(Some(DType::F32), Some(known(&[v.len() as i64])))
        }
        Some(("value_int", _)) => tt(Some(DType::I64), Some(vec![])),
        Some(("value_ints", AttrValue::Ints(v))) => {
            tt(Some(DType::I64), Some(known(&[v.len() as i64])))
        }
        Some(("value_string", _)) => tt(Some(DType::String), Some(vec![])),
        Some(("value_strings", AttrValue::Strings(v))) => {
            tt(Some(DType::String), Some(known(&[v.len() as i64])))
        }
        _ => None,
    };
    Ok(vec![ty])
}

fn matmul(c: &Cx, dtype: Option<DType>) -> Out {
    let (Some(a), Some(b)) = (c.shape(0), c.shape(1)) else {
        return Ok(vec![tt(dtype, None)]);
    };
    if a.is_empty() || b.is_empty() {
        return Err("MatMul inputs must have rank 1 or more".into());
    }
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    if a.len() == 1 {
        a2.insert(0, Dim::Known(1));
    }
    if b.len() == 1 {
        b2.push(Dim::Known(1));
    }
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(format!("inner dims differ: [{}] x [{}]", show(a), show(b)));
        }
    }
    let batch = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Ok(vec![tt(dtype, Some(out))])
}

fn gemm(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let (Some(a), Some(b)) = (c.shape(0), c.shape(1)) else {
        return Ok(vec![tt(dt, Some(vec![Dim::Unknown, Dim::Unknown]))]);
    };
    if a.len() != 2 || b.len() != 2 {
        return Err(format!(
            "Gemm needs 2-D inputs, got [{}] and [{}]",
            show(a),
            show(b)
        ));
    }
    let m = if c.ai("transA", 0) != 0 { &a[1] } else { &a[0] };
    let n = if c.ai("transB", 0) != 0 { &b[0] } else { &b[1] };
    Ok(vec![tt(dt, Some(vec![m.clone(), n.clone()]))])
}

/// Explicit pads (begin…, end…) of a conv/pool with `k` spatial dims.
fn pads_of(c: &Cx, k: usize) -> Vec<i64> {
    match c.ais("pads") {
        Some(p) if p.len() == 2 * k => p,
        _ => vec![0; 2 * k],
    }
}

fn auto_pad(c: &Cx) -> String {
    c.astr("auto_pad").unwrap_or_else(|| "NOTSET".into())
}

/// A sliding window along one spatial axis: kernel size, stride, dilation, padding at the
/// beginning and at the end, `auto_pad`, and `ceil_mode`.
struct Window<'a> {
    kernel: i64,
    stride: i64,
    dil: i64,
    pb: i64,
    pe: i64,
    ap: &'a str,
    ceil: bool,
}

/// Output length of a sliding window over `input` (all arithmetic checked).
fn window_out(input: &Dim, w: Window) -> Dim {
    let Window {
        kernel,
        stride,
        dil,
        pb,
        pe,
        ap,
        ceil,
    } = w;
    if kernel < 1 || stride < 1 || dil < 1 {
        return Dim::Unknown;
    }
    let Some(eff) = dil.checked_mul(kernel - 1).and_then(|v| v.checked_add(1)) else {
        return Dim::Unknown;
    };
    match ap {
        "SAME_UPPER" | "SAME_LOWER" => {
            if stride == 1 {
                return input.clone();
            }
            dim_map(input, |x| Some(x.checked_add(stride - 1)? / stride))
        }
        "VALID" => dim_map(input, |x| {
            Some(if x >= eff { (x - eff) / stride + 1 } else { 0 })
        }),
        _ => {
            if stride == 1 && pb.checked_add(pe) == Some(eff - 1) {
                return input.clone();
            }
            dim_map(input, |x| {
                let span = x.checked_add(pb)?.checked_add(pe)?.checked_sub(eff)?;
                if span < 0 {
                    return Some(0);
                }
                let mut o = if ceil {
                    span.checked_add(stride - 1)? / stride + 1
                } else {
                    span / stride + 1
                };
                // A window that would start in the end padding is dropped.
                if ceil && (o - 1).checked_mul(stride)? >= x.checked_add(pb)? {
                    o -= 1;
                }
                Some(o)
            })
        }
    }
}

fn conv(c: &Cx, xi: usize, wi: usize, dtype: Option<DType>) -> Out {
    let Some(x) = c.shape(xi) else {
        return Ok(vec![tt(dtype, None)]);
    };
    if x.len() < 3 {
        return Err(format!("input [{}] has rank < 3", show(x)));
    }
    let k = x.len() - 2;
    let w = c.shape(wi);
    let kernel: Option<Vec<i64>> = c.ais("kernel_shape").or_else(|| {
        w.and_then(|w| {
            w.get(2..)?
                .iter()
                .map(|d| match d {
                    Dim::Known(v) => Some(*v),
                    _ => None,
                })
                .collect()
        })
    });
    let m = w.and_then(|w| w.first().cloned()).unwrap_or(Dim::Unknown);
    let mut out = vec![x[0].clone(), m];
    let strides = c.ais("strides").unwrap_or_else(|| vec![1; k]);
    let dil = c.ais("dilations").unwrap_or_else(|| vec![1; k]);
    let pads = pads_of(c, k);
    let ap = auto_pad(c);
    for i in 0..k {
        out.push(match &kernel {
            Some(ks) if ks.len() == k && strides.len() == k && dil.len() == k => window_out(
                &x[2 + i],
                Window {
                    kernel: ks[i],
                    stride: strides[i],
                    dil: dil[i],
                    pb: pads[i],
                    pe: pads[i + k],
                    ap: &ap,
                    ceil: false,
                },
            ),
            _ => Dim::Unknown,
        });
    }
    Ok(vec![tt(dtype, Some(out))])
}

fn conv_transpose(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let Some(x) = c.shape(0) else {
        return Ok(vec![tt(dt, None)]);
    };
    if x.len() < 3 {
        return Err(format!("input [{}] has rank < 3", show(x)));
    }
    let k = x.len() - 2;
    let w = c.shape(1);
    let group = c.ai("group", 1);
    let m = w
        .and_then(|w| w.get(1).cloned())
        .map(|d| dim_map(&d, |v| v.checked_mul(group)))
        .unwrap_or(Dim::Unknown);
    let kernel: Option<Vec<i64>> = c.ais("kernel_shape").or_else(|| {
        w.and_then(|w| {
            w.get(2..)?
                .iter()
                .map(|d| match d {
                    Dim::Known(v) => Some(*v),
                    _ => None,
                })
                .collect()
        })
    });
    let mut out = vec![x[0].clone(), m];
    if let Some(os) = c.ais("output_shape") {
        let os = &os[os.len().saturating_sub(k)..];
        out.extend(os.iter().map(|&d| kd(d)));
        return Ok(vec![tt(dt, Some(out))]);
    }
    let strides = c.ais("strides").unwrap_or_else(|| vec![1; k]);
    let dil = c.ais("dilations").unwrap_or_else(|| vec![1; k]);
    let opad = c.ais("output_padding").unwrap_or_else(|| vec![0; k]);
    let pads = pads_of(c, k);
    let ap = auto_pad(c);
    for i in 0..k {
        let (Some(ks), true) = (
            &kernel,
            strides.len() == k && dil.len() == k && opad.len() == k,
        ) else {
            out.push(Dim::Unknown);
            continue;
        };
        let Some(&kk) = ks.get(i) else {
            out.push(Dim::Unknown);
            continue;
        };
        let s = strides[i];
        out.push(match ap.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => dim_map(&x[2 + i], |v| v.checked_mul(s)),
            _ => dim_map(&x[2 + i], |v| {
                s.checked_mul(v - 1)?
                    .checked_add(opad[i])?
                    .checked_add(kk.checked_sub(1)?.checked_mul(dil[i])?)?
                    .checked_add(1)?
                    .checked_sub(pads[i])?
                    .checked_sub(pads[i + k])
            }),
        });
    }
    Ok(vec![tt(dt, Some(out))])
}

fn pool(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let Some(x) = c.shape(0) else {
        return Ok(vec![tt(dt, None), tt(Some(DType::I64), None)]);
    };
    if x.len() < 3 {
        return Err(format!("input [{}] has rank < 3", show(x)));
    }
    let k = x.len() - 2;
    let Some(ks) = c.ais("kernel_shape").filter(|v| v.len() == k) else {
        return Err("kernel_shape is missing or has the wrong length".into());
    };
    let strides = c.ais("strides").unwrap_or_else(|| vec![1; k]);
    let dil = c.ais("dilations").unwrap_or_else(|| vec![1; k]);
    if strides.len() != k || dil.len() != k {
        return Err("strides or dilations have the wrong length".into());
    }
    let pads = pads_of(c, k);
    let ap = auto_pad(c);
    let ceil = c.ai("ceil_mode", 0) != 0;
    let mut out = vec![x[0].clone(), x[1].clone()];
    for i in 0..k {
        out.push(window_out(
            &x[2 + i],
            Window {
                kernel: ks[i],
                stride: strides[i],
                dil: dil[i],
                pb: pads[i],
                pe: pads[i + k],
                ap: &ap,
                ceil,
            },
        ));
    }
    Ok(vec![
        tt(dt, Some(out.clone())),
        tt(Some(DType::I64), Some(out)),
    ])
}

/// Output dims of Reshape with symbolic input and target.
fn reshape_sym(input: Option<&Shape>, target: &[Dim], allowzero: bool) -> Result<Shape, String> {
    let mut out: Shape = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, d) in target.iter().enumerate() {
        match d {
            Dim::Known(-1) => {
                if infer_at.is_some() {
                    return Err("more than one -1 in the target shape".into());
                }
                infer_at = Some(i);
                out.push(Dim::Unknown);
            }
            Dim::Known(0) if !allowzero => {
                out.push(
                    input
                        .and_then(|s| s.get(i).cloned())
                        .unwrap_or(Dim::Unknown),
                );
            }
            Dim::Known(k) if *k < -1 => return Err(format!("bad target dim {k}")),
            d => out.push(d.clone()),
        }
    }
    if let (Some(i), Some(inp)) = (infer_at, input) {
        // Cancel equal factors between the input and the rest of the target.
        let split = |ds: &[Dim]| -> Option<(i64, Vec<String>)> {
            let mut k = 1i64;
            let mut ps = Vec::new();
            for d in ds {
                match d {
                    Dim::Known(v) => k = k.saturating_mul(*v),
                    Dim::Param(p) => ps.push(p.clone()),
                    Dim::Unknown => return None,
                }
            }
            Some((k, ps))
        };
        let rest: Shape = out
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, d)| d.clone())
            .collect();
        if let (Some((ki, mut pi)), Some((kt, pt))) = (split(inp), split(&rest)) {
            let mut ok = true;
            for p in &pt {
                match pi.iter().position(|q| q == p) {
                    Some(j) => {
                        pi.remove(j);
                    }
                    None => ok = false,
                }
            }
            if ok && kt != 0 {
                if pi.is_empty() && ki % kt == 0 {
                    out[i] = Dim::Known(ki / kt);
                } else if pi.is_empty() {
                    return Err(format!(
                        "cannot reshape [{}] to [{}]",
                        show(inp),
                        show(target)
                    ));
                } else if pi.len() == 1 && ki == kt {
                    out[i] = Dim::Param(pi[0].clone());
                }
            }
        }
    } else if let (None, Some(inp)) = (infer_at, input) {
        if let (Some(a), Some(b)) = (known_product(inp), known_product(&out)) {
            if a != b {
                return Err(format!(
                    "cannot reshape [{}] to [{}]",
                    show(inp),
                    show(target)
                ));
            }
        }
    }
    Ok(out)
}

fn known_product(d: &[Dim]) -> Option<i64> {
    d.iter().try_fold(1i64, |a, x| match x {
        Dim::Known(v) => Some(a.saturating_mul(*v)),
        _ => None,
    })
}

fn reshape(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let target = if c.opset >= 5 {
        c.dims_val(1)
    } else {
        c.ais("shape").map(|v| known(&v))
    };
    let allowzero = c.ai("allowzero", 0) != 0;
    let shape = match target {
        Some(t) => Some(reshape_sym(c.shape(0), &t, allowzero)?),
        None => c.len1(1).map(|n| vec![Dim::Unknown; n]),
    };
    Ok(vec![tt(dt, shape)])
}

fn concat(c: &Cx) -> Out {
    let dt = (0..c.ins.len()).find_map(|i| c.dtype(i));
    let shapes: Option<Vec<&Shape>> = (0..c.ins.len())
        .filter(|&i| c.present(i))
        .map(|i| c.shape(i))
        .collect();
    let Some(shapes) = shapes.filter(|s| !s.is_empty()) else {
        let rank = (0..c.ins.len()).find_map(|i| c.rank(i));
        return Ok(vec![tt(dt, rank.map(|r| vec![Dim::Unknown; r]))]);
    };
    let r = shapes[0].len();
    if shapes.iter().any(|s| s.len() != r) {
        return Err("inputs have different ranks".into());
    }
    let ax = c.axis(c.ai("axis", 0), r)?;
    let mut out = shapes[0].clone();
    for s in &shapes[1..] {
        for (i, d) in s.iter().enumerate() {
            if i == ax {
                continue;
            }
            out[i] = match (&out[i], d) {
                (Dim::Known(p), Dim::Known(q)) if p != q => {
                    return Err(format!("inputs differ in dim {i}: {p} and {q}"))
                }
                (Dim::Known(p), _) | (_, Dim::Known(p)) => Dim::Known(*p),
                (a, b) if a == b => a.clone(),
                (Dim::Param(p), _) | (_, Dim::Param(p)) => Dim::Param(p.clone()),
                _ => Dim::Unknown,
            };
        }
    }
    let axis_dims: Vec<Dim> = shapes.iter().map(|s| s[ax].clone()).collect();
    let mut sum = 0i64;
    let mut all = true;
    for d in &axis_dims {
        match d {
            Dim::Known(v) => sum = sum.saturating_add(*v),
            _ => all = false,
        }
    }
    let non_zero: Vec<&Dim> = axis_dims
        .iter()
        .filter(|d| !matches!(d, Dim::Known(0)))
        .collect();
    out[ax] = if all {
        Dim::Known(sum)
    } else if non_zero.len() == 1 {
        non_zero[0].clone()
    } else {
        Dim::Unknown
    };
    Ok(vec![tt(dt, Some(out))])
}

fn squeeze(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let Some(s) = c.shape(0) else {
        return Ok(vec![tt(dt, None)]);
    };
    let axes = match c.axes_arg(13, 1) {
        Ok(a) => a,
        Err(()) => return Ok(vec![tt(dt, None)]),
    };
    let shape = match axes {
        Some(ax) => {
            let ax: Vec<usize> = ax
                .iter()
                .map(|&a| c.axis(a, s.len()))
                .collect::<Result<_, _>>()?;
            for &a in &ax {
                if let Dim::Known(d) = s[a] {
                    if d != 1 {
                        return Err(format!("cannot squeeze axis {a} of [{}]", show(s)));
                    }
                }
            }
            Some(
                s.iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(i))
                    .map(|(_, d)| d.clone())
                    .collect(),
            )
        }
        None => {
            if s.iter().all(|d| matches!(d, Dim::Known(_))) {
                Some(
                    s.iter()
                        .filter(|d| !matches!(d, Dim::Known(1)))
                        .cloned()
                        .collect(),
                )
            } else {
                None
            }
        }
    };
    Ok(vec![tt(dt, shape)])
}

fn unsqueeze(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let (Some(s), Ok(Some(ax))) = (c.shape(0), c.axes_arg(13, 1)) else {
        return Ok(vec![tt(dt, None)]);
    };
    let r = s.len() + ax.len();
    let mut axes: Vec<usize> = ax.iter().map(|&a| c.axis(a, r)).collect::<Result<_, _>>()?;
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("repeated axes {ax:?}"));
    }
    let mut it = s.iter();
    let out: Shape = (0..r)
        .map(|i| {
            if axes.binary_search(&i).is_ok() {
                Dim::Known(1)
            } else {
                it.next().cloned().unwrap_or(Dim::Unknown)
            }
        })
        .collect();
    Ok(vec![tt(dt, Some(out))])
}

fn gather(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let (Some(d), Some(i)) = (c.shape(0), c.shape(1)) else {
        return Ok(vec![tt(dt, None)]);
    };
    if d.is_empty() {
        return Err("Gather data has rank 0".into());
    }
    let ax = c.axis(c.ai("axis", 0), d.len())?;
    let mut out: Shape = d[..ax].to_vec();
    out.extend_from_slice(i);
    out.extend_from_slice(&d[ax + 1..]);
    Ok(vec![tt(dt, Some(out))])
}

/// Slice parameters: (starts, ends, axes, steps) when constant.
type SliceArgs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>);

fn slice_args(c: &Cx) -> Option<SliceArgs> {
    if c.opset >= 10 {
        let axes = if c.present(3) { Some(c.ints(3)?) } else { None };
        let steps = if c.present(4) { Some(c.ints(4)?) } else { None };
        Some((c.ints(1)?, c.ints(2)?, axes, steps))
    } else {
        Some((c.ais("starts")?, c.ais("ends")?, c.ais("axes"), None))
    }
}

fn slice(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let Some(s) = c.shape(0) else {
        return Ok(vec![tt(dt, None)]);
    };
    let r = s.len();
    let Some((starts, ends, axes, steps)) = slice_args(c) else {
        // Unknown bounds: the rank stays, the sliced axes become unknown.
        let axes = if c.opset >= 10 && c.present(3) {
            c.ints(3)
        } else if c.opset >= 10 {
            c.len1(1).map(|n| (0..n as i64).collect())
        } else {
            c.ais("axes")
        };
        let out = match axes {
            Some(ax) => {
                let mut o = s.clone();
                for a in ax {
                    o[c.axis(a, r)?] = Dim::Unknown;
                }
                o
            }
            None => vec![Dim::Unknown; r],
        };
        return Ok(vec![tt(dt, Some(out))]);
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut out = s.clone();
    for i in 0..n {
        let a = c.axis(axes[i], r)?;
        out[a] = match &s[a] {
            Dim::Known(d) => match slice_len(*d, starts[i], ends[i], steps[i]) {
                Some(l) => Dim::Known(l),
                None => return Err("slice step is 0".into()),
            },
            d if starts[i] == 0 && ends[i] >= BIG && steps[i] == 1 => d.clone(),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![tt(dt, Some(out))])
}

fn split(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let n = c.n_out();
    let Some(s) = c.shape(0) else {
        return Ok(vec![tt(dt, None); n]);
    };
    let ax = c.axis(c.ai("axis", 0), s.len())?;
    let sizes: Option<Vec<i64>> = if c.opset >= 13 {
        if c.present(1) {
            match c.ints(1) {
                Some(v) => Some(v),
                None => {
                    let mut o = s.clone();
                    o[ax] = Dim::Unknown;
                    return Ok(vec![tt(dt, Some(o)); n]);
                }
            }
        } else {
            None
        }
    } else {
        c.ais("split")
    };
    let sizes: Vec<Dim> = match sizes {
        Some(v) => {
            if v.len() != n {
                return Err(format!("{} split sizes for {n} outputs", v.len()));
            }
            if let Dim::Known(d) = s[ax] {
                if v.iter().fold(0i64, |a, &x| a.saturating_add(x)) != d {
                    return Err(format!("split sizes {v:?} do not add up to {d}"));
                }
            }
            sane(known(&v))
        }
        None => {
            let parts = c.op.attr_int("num_outputs").unwrap_or(n as i64).max(1);
            match s[ax] {
                Dim::Known(d) => {
                    let chunk = d.saturating_add(parts - 1) / parts;
                    (0..n as i64)
                        .map(|i| {
                            Dim::Known(chunk.min(d.saturating_sub(i.saturating_mul(chunk)).max(0)))
                        })
                        .collect()
                }
                _ => vec![Dim::Unknown; n],
            }
        }
    };
    Ok(sizes
        .into_iter()
        .map(|d| {
            let mut o = s.clone();
            o[ax] = d;
            tt(dt, Some(o))
        })
        .collect())
}

fn pad(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let Some(s) = c.shape(0) else {
        return Ok(vec![tt(dt, None)]);
    };
    let r = s.len();
    let pads = if c.opset >= 11 {
        c.ints(1)
    } else {
        c.ais("pads").or_else(|| c.ais("paddings"))
    };
    let Some(pads) = pads else {
        return Ok(vec![tt(dt, Some(vec![Dim::Unknown; r]))]);
    };
    let axes: Vec<usize> = if c.opset >= 18 && c.present(3) {
        match c.ints(3) {
            Some(a) => a.iter().map(|&x| c.axis(x, r)).collect::<Result<_, _>>()?,
            None => return Ok(vec![tt(dt, Some(vec![Dim::Unknown; r]))]),
        }
    } else {
        (0..r).collect()
    };
    let k = axes.len();
    if pads.len() != 2 * k {
        return Err(format!("{} pads for {k} axes", pads.len()));
    }
    let mut out = s.clone();
    for (i, &a) in axes.iter().enumerate() {
        let add = pads[i].saturating_add(pads[i + k]);
        if add != 0 {
            out[a] = dim_map(&s[a], |v| v.checked_add(add));
        }
    }
    Ok(vec![tt(dt, Some(out))])
}

fn reduce_dims(s: &[Dim], axes: &[usize], keep: bool) -> Shape {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                keep.then_some(Dim::Known(1))
            } else {
                Some(d.clone())
            }
        })
        .collect()
}

fn reduce(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let keep = c.ai("keepdims", 1) != 0;
    let from = if c.op.op_type == "ReduceSum" { 13 } else { 18 };
    let Some(s) = c.shape(0) else {
        return Ok(vec![tt(dt, None)]);
    };
    let r = s.len();
    let axes = match c.axes_arg(from, 1) {
        Ok(a) => a,
        Err(()) => {
            return Ok(vec![tt(
                dt,
                if keep {
                    Some(vec![Dim::Unknown; r])
                } else {
                    None
                },
            )])
        }
    };
    let axes: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => a.iter().map(|&x| c.axis(x, r)).collect::<Result<_, _>>()?,
        _ if c.ai("noop_with_empty_axes", 0) != 0 => return c.same(0),
        _ => (0..r).collect(),
    };
    Ok(vec![tt(dt, Some(reduce_dims(s, &axes, keep)))])
}

fn resize(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let Some(s) = c.shape(0) else {
        return Ok(vec![tt(dt, None)]);
    };
    let r = s.len();
    let (scales, sizes) = if c.op.op_type == "Upsample" {
        let sc = if c.opset >= 9 {
            c.floats(1)
        } else {
            c.op.attr("scales").and_then(|a| match a {
                AttrValue::Floats(f) => Some(f.iter().map(|&x| x as f64).collect()),
                _ => None,
            })
        };
        (sc, None)
    } else if c.opset < 11 {
        (c.floats(1), None)
    } else {
        let sizes = if c.present(3) { c.ints(3) } else { None };
        let scales = if c.present(2) {
            c.floats(2).filter(|v| !v.is_empty())
        } else {
            None
        };
        (scales, sizes.filter(|v| !v.is_empty()))
    };
    let axes: Vec<usize> = match c.ais("axes") {
        Some(a) if c.opset >= 18 => a.iter().map(|&x| c.axis(x, r)).collect::<Result<_, _>>()?,
        _ => (0..r).collect(),
    };
    let policy = c
        .astr("keep_aspect_ratio_policy")
        .unwrap_or_else(|| "stretch".into());
    let mut out = s.clone();
    if let Some(sz) = sizes {
        if sz.len() != axes.len() {
            return Err(format!("{} sizes for {} axes", sz.len(), axes.len()));
        }
        for (i, &a) in axes.iter().enumerate() {
            out[a] = if policy == "stretch" {
                kd(sz[i])
            } else {
                Dim::Unknown
            };
        }
    } else if let Some(sc) = scales {
        if sc.len() != axes.len() {
            return Err(format!("{} scales for {} axes", sc.len(), axes.len()));
        }
        for (i, &a) in axes.iter().enumerate() {
            if sc[i] != 1.0 {
                out[a] = match &s[a] {
                    Dim::Known(d) => Dim::Known(((*d as f64) * sc[i]).floor() as i64),
                    _ => Dim::Unknown,
                };
            }
        }
    } else {
        out = vec![Dim::Unknown; r];
    }
    Ok(vec![tt(dt, Some(out))])
}

fn rnn(c: &Cx) -> Out {
    let dt = c.dtype(0);
    let dirs = match c.astr("direction").as_deref() {
        Some("bidirectional") => 2,
        _ => 1,
    };
    let hidden =
        c.op.attr_int("hidden_size")
            .map(kd)
            .or_else(|| c.shape(2).and_then(|r| r.get(2).cloned()))
            .unwrap_or(Dim::Unknown);
    let layout = c.ai("layout", 0);
    let nd = Dim::Known(dirs);
    let (y, yh) = match c.shape(0) {
        Some(x) if x.len() == 3 => {
            let (seq, batch) = if layout == 0 {
                (x[0].clone(), x[1].clone())
            } else {
                (x[1].clone(), x[0].clone())
            };
            if layout == 0 {
                (
                    Some(vec![seq, nd.clone(), batch.clone(), hidden.clone()]),
                    Some(vec![nd, batch, hidden]),
                )
            } else {
                (
                    Some(vec![batch.clone(), seq, nd.clone(), hidden.clone()]),
                    Some(vec![batch, nd, hidden]),
                )
            }
        }
        Some(x) => return Err(format!("input [{}] is not 3-D", show(x))),
        None => (None, None),
    };
    let mut v = vec![tt(dt, y), tt(dt, yh.clone())];
    if c.op.op_type == "LSTM" {
        v.push(tt(dt, yh));
    }
    v.truncate(c.n_out());
    Ok(v)
}

/// Shape values (1-D integer tensors of dims) of the outputs, tracked through the ops
/// exporters use to build shapes.
pub(crate) fn sym_values(op: &Op, ins: &[Option<Fact>], opset: i64) -> Vec<Option<SymVal>> {
    let c = Cx { op, ins, opset };
    let sym = |i: usize| c.fact(i).and_then(|f| f.sym.clone());
    let one = |s: Option<SymVal>| vec![s];
    match op.op_type.as_str() {
        "Shape" => one(c.shape(0).map(|s| {
            let (a, b) = shape_range(op, s.len());
            SymVal {
                scalar: false,
                dims: s[a..b].to_vec(),
            }
        })),
        "Identity" => one(sym(0)),
        "Cast" => {
            let to = op.attr_int("to").map(|v| DType::from_onnx(v as i32));
            one(sym(0).filter(|_| to.is_some_and(|d| d.is_integer())))
        }
        "Gather" => {
            let (Some(s), Some(idx)) = (sym(0), c.ints(1)) else {
                return vec![None];
            };
            if s.scalar || c.ai("axis", 0) != 0 && c.ai("axis", 0) != -1 {
                return vec![None];
            }
            let n = s.dims.len() as i64;
            let picked: Option<Vec<Dim>> = idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    s.dims.get(usize::try_from(j).ok()?).cloned()
                })
                .collect();
            let scalar = c.rank(1) == Some(0);
            one(picked.map(|dims| SymVal { scalar, dims }))
        }
        "Slice" => {
            let (Some(s), Some((st, en, ax, sp))) = (sym(0), slice_args(&c)) else {
                return vec![None];
            };
            if s.scalar || st.len() != 1 || en.len() != 1 {
                return vec![None];
            }
            if ax.as_ref().is_some_and(|a| a != &[0] && a != &[-1]) {
                return vec![None];
            }
            let step = sp.map(|v| v.first().copied().unwrap_or(1)).unwrap_or(1);
            let n = s.dims.len() as i64;
            let idx = crate::ir::eval::slice_range(n, st[0], en[0], step);
            one(idx.map(|ix| SymVal {
                scalar: false,
                dims: ix.iter().map(|&i| s.dims[i as usize].clone()).collect(),
            }))
        }
        "Concat" => {
            let mut dims = Vec::new();
            for i in 0..c.ins.len() {
                if !c.present(i) {
                    continue;
                }
                match sym(i) {
                    Some(s) if !s.scalar => dims.extend(s.dims),
                    _ => return vec![None],
                }
            }
            one(Some(SymVal {
                scalar: false,
                dims,
            }))
        }
        "Unsqueeze" => match (sym(0), c.axes_arg(13, 1)) {
            (Some(s), Ok(Some(ax))) if s.scalar && (ax == [0] || ax == [-1]) => one(Some(SymVal {
                scalar: false,
                dims: s.dims,
            })),
            _ => vec![None],
        },
        "Squeeze" => match (sym(0), c.axes_arg(13, 1)) {
            (Some(s), Ok(ax))
                if !s.scalar
                    && s.dims.len() == 1
                    && ax.as_ref().is_none_or(|a| a == &[0] || a == &[-1]) =>
            {
                one(Some(SymVal {
                    scalar: true,
                    dims: s.dims,
                }))
            }
            _ => vec![None],
        },
        _ => vec![None; op.n_outputs],
    }
}
