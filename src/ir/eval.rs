//! The op evaluator: computes ONNX ops on host [`Tensor`]s, for constant folding and for
//! shape inference that needs values (a `Reshape` target built from `Shape`, `Gather`,
//! `Concat`…).
//!
//! It covers the small integer and boolean computations exporters emit around shapes
//! (`Shape`, `Size`, `Gather`, `Slice`, `Concat`, `Unsqueeze`, `Equal`, `Not`, `Cast`,
//! `Where`, `Range`, …) and the elementwise arithmetic on small float constants. It is
//! not a runtime: ops it does not know give [`EvalError::Unsupported`], and every
//! output is checked against a size limit before it is allocated.
//!
//! Numerics: integers compute in wrapping `i64`, floats in `f64` and are rounded once to
//! the output type (exact for `+ - * /` on `f32`). Integer division truncates toward
//! zero and fails on a zero divisor; float division follows IEEE.

use super::graph::{AttrValue, Op};
use super::tensor::{DType, Tensor};
use ndarray::{ArrayD, Axis, IxDyn, Zip};

/// Why an op could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The op, an attribute form or an element type the evaluator does not handle.
    #[error("{op}: not supported by the evaluator ({what})")]
    Unsupported { op: String, what: String },
    /// The inputs or attributes break the op's contract (bad axis, index out of range…).
    #[error("{op}: {what}")]
    Invalid { op: String, what: String },
    /// The result would have more elements than the caller allows.
    #[error("{op}: result of {elems} elements is over the limit of {limit}")]
    TooLarge {
        op: String,
        elems: usize,
        limit: usize,
    },
}

/// Internal error before the op name is attached.
#[derive(Debug)]
enum E {
    Unsupported(String),
    Invalid(String),
    TooLarge(usize),
}

type R<T> = Result<T, E>;

fn invalid<T>(what: impl Into<String>) -> R<T> {
    Err(E::Invalid(what.into()))
}

fn unsupported<T>(what: impl Into<String>) -> R<T> {
    Err(E::Unsupported(what.into()))
}

/// Op types [`eval`] knows (default ONNX domain).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "Cast",
    "CastLike",
    "Ceil",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Div",
    "Equal",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "Less",
    "LessOrEqual",
    "Max",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "Range",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "Reshape",
    "Shape",
    "Sign",
    "Size",
    "Slice",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// True when [`eval`] knows `op_type` (default ONNX domain only).
pub fn supports(op: &Op) -> bool {
    op.domain_key().is_empty() && SUPPORTED.contains(&op.op_type.as_str())
}

/// Evaluates `op` on `inputs` (by slot; `None` = absent optional input) at `opset`
/// (the default domain's version). No output may have more than `limit` elements.
pub fn eval(
    op: &Op,
    inputs: &[Option<&Tensor>],
    opset: i64,
    limit: usize,
) -> Result<Vec<Tensor>, EvalError> {
    let name = format!("node '{}' ({})", op.display_name(), op.op_type);
    if !op.domain_key().is_empty() {
        return Err(EvalError::Unsupported {
            op: name,
            what: format!("domain '{}'", op.domain_key()),
        });
    }
    let cx = Cx {
        op,
        inputs,
        opset,
        limit,
    };
    let out = cx.run().map_err(|e| match e {
        E::Unsupported(what) => EvalError::Unsupported {
            op: name.clone(),
            what,
        },
        E::Invalid(what) => EvalError::Invalid {
            op: name.clone(),
            what,
        },
        E::TooLarge(elems) => EvalError::TooLarge {
            op: name.clone(),
            elems,
            limit,
        },
    })?;
    for t in &out {
        if t.len() > limit {
            return Err(EvalError::TooLarge {
                op: name,
                elems: t.len(),
                limit,
            });
        }
    }
    Ok(out)
}

/// The value of a `Constant` node (any of its attribute forms).
pub fn constant_value(op: &Op) -> Result<Tensor, EvalError> {
    let name = format!("node '{}' (Constant)", op.display_name());
    constant_of(op).map_err(|e| match e {
        E::Unsupported(what) => EvalError::Unsupported { op: name, what },
        E::Invalid(what) => EvalError::Invalid { op: name, what },
        E::TooLarge(elems) => EvalError::Invalid {
            op: name,
            what: format!("{elems} elements"),
        },
    })
}

/// `Shape` (with its `start`/`end` attributes) or `Size` of a value whose dims are
/// known: neither needs the value itself.
pub fn shape_from_dims(op: &Op, dims: &[i64]) -> Result<Tensor, EvalError> {
    let name = || format!("node '{}' ({})", op.display_name(), op.op_type);
    match op.op_type.as_str() {
        "Shape" => {
            let (s, e) = shape_range(op, dims.len());
            let v: Vec<i64> = dims[s..e].to_vec();
            reshape_vec(v.clone(), &[v.len()])
                .map(Tensor::I64)
                .map_err(|_| EvalError::Invalid {
                    op: name(),
                    what: "bad dims".into(),
                })
        }
        "Size" => match dims.iter().try_fold(1i64, |a, &d| a.checked_mul(d)) {
            Some(n) => Ok(Tensor::I64(ArrayD::from_elem(IxDyn(&[]), n))),
            None => Err(EvalError::Invalid {
                op: name(),
                what: format!("element count of {dims:?} overflows"),
            }),
        },
        _ => Err(EvalError::Unsupported {
            op: name(),
            what: "not Shape or Size".into(),
        }),
    }
}

/// The `[start, end)` range of dims `Shape` returns for a rank (attributes clamped).
pub fn shape_range(op: &Op, rank: usize) -> (usize, usize) {
    let r = rank as i64;
    let c = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let s = c(op.attr_int("start").unwrap_or(0));
    let e = c(op.attr_int("end").unwrap_or(r));
    (s, e.max(s))
}

/// Converts `t` to element type `to` with ONNX `Cast` semantics (float → int truncates
/// and saturates, anything → bool is `!= 0`).
pub fn cast(t: &Tensor, to: DType) -> Result<Tensor, EvalError> {
    cast_to(t, to).map_err(|e| EvalError::Unsupported {
        op: "Cast".into(),
        what: match e {
            E::Unsupported(w) | E::Invalid(w) => w,
            E::TooLarge(n) => format!("{n} elements"),
        },
    })
}

/// Numpy broadcasting of two shapes, `None` when they are incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Normalises a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

// ---------------------------------------------------------------------------
// Element access
// ---------------------------------------------------------------------------

/// An element type with a [`Tensor`] variant.
trait Elem: Clone + 'static {
    fn view(t: &Tensor) -> Option<&ArrayD<Self>>;
    fn wrap(a: ArrayD<Self>, dtype: DType) -> Tensor;
}

macro_rules! elem {
    ($ty:ty, $($var:ident => $dt:ident),+) => {
        impl Elem for $ty {
            fn view(t: &Tensor) -> Option<&ArrayD<Self>> {
                match t {
                    $(Tensor::$var(a) => Some(a),)+
                    _ => None,
                }
            }
            fn wrap(a: ArrayD<Self>, dtype: DType) -> Tensor {
                match dtype {
                    $(DType::$dt => Tensor::$var(a),)+
                    _ => unreachable!("Elem::wrap called with a dtype of another element type"),
                }
            }
        }
    };
}

elem!(f32, F32 => F32);
elem!(f64, F64 => F64);
elem!(half::f16, F16 => F16);
elem!(half::bf16, BF16 => BF16);
elem!(i8, I8 => I8, I4 => I4);
elem!(u8, U8 => U8, U4 => U4);
elem!(i16, I16 => I16);
elem!(u16, U16 => U16);
elem!(i32, I32 => I32);
elem!(u32, U32 => U32);
elem!(i64, I64 => I64);
elem!(u64, U64 => U64);
elem!(bool, Bool => Bool);
elem!(String, Str => String);

/// Calls the generic function `$f::<T>(args)` for the element type of `$dt`.
macro_rules! by_dtype {
    ($dt:expr, $f:ident ( $($arg:expr),* )) => {
        match $dt {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::I8 | DType::I4 => $f::<i8>($($arg),*),
            DType::U8 | DType::U4 => $f::<u8>($($arg),*),
            DType::I16 => $f::<i16>($($arg),*),
            DType::U16 => $f::<u16>($($arg),*),
            DType::I32 => $f::<i32>($($arg),*),
            DType::U32 => $f::<u32>($($arg),*),
            DType::I64 => $f::<i64>($($arg),*),
            DType::U64 => $f::<u64>($($arg),*),
            DType::Bool => $f::<bool>($($arg),*),
            DType::String => $f::<String>($($arg),*),
            other => unsupported(format!("element type {other}")),
        }
    };
}

fn arr<T: Elem>(t: &Tensor) -> R<&ArrayD<T>> {
    match T::view(t) {
        Some(a) => Ok(a),
        None => invalid(format!("unexpected element type {}", t.dtype())),
    }
}

fn reshape_vec<T: Clone>(v: Vec<T>, shape: &[usize]) -> R<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).or_else(|_| invalid("element count mismatch"))
}

fn to_shape<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> R<ArrayD<T>> {
    reshape_vec(a.iter().cloned().collect(), shape)
}

/// The size check for a shape built from user values: `Err` when its element count is
/// over `limit`, or when any dim is (a `[huge, 0]` shape holds nothing but still cannot
/// be allocated).
fn check_size(shape: &[usize], limit: usize) -> R<()> {
    let n = numel(shape);
    if n > limit {
        return Err(E::TooLarge(n));
    }
    if let Some(&d) = shape.iter().find(|&&d| d > limit) {
        return Err(E::TooLarge(d));
    }
    Ok(())
}

/// Element count, saturating (shapes built from user values can overflow).
fn numel(shape: &[usize]) -> usize {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// Numeric view of a tensor: floats as f64, integers as i64, booleans as bool.
#[derive(Clone, Debug)]
enum Num {
    F(ArrayD<f64>),
    I(ArrayD<i64>),
    B(ArrayD<bool>),
}

fn to_num(t: &Tensor) -> R<Num> {
    Ok(match t {
        Tensor::F32(a) => Num::F(a.mapv(|v| v as f64)),
        Tensor::F64(a) => Num::F(a.clone()),
        Tensor::F16(a) => Num::F(a.mapv(|v| v.to_f64())),
        Tensor::BF16(a) => Num::F(a.mapv(|v| v.to_f64())),
        Tensor::I8(a) | Tensor::I4(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::U8(a) | Tensor::U4(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::I16(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::U16(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::I32(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::U32(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::I64(a) => Num::I(a.clone()),
        Tensor::U64(a) => Num::I(a.mapv(|v| v as i64)),
        Tensor::Bool(a) => Num::B(a.clone()),
        Tensor::Str(_) => return unsupported("string tensors in arithmetic"),
    })
}

fn from_f64(a: &ArrayD<f64>, to: DType) -> R<Tensor> {
    Ok(match to {
        DType::F32 => Tensor::F32(a.mapv(|v| v as f32)),
        DType::F64 => Tensor::F64(a.clone()),
        DType::F16 => Tensor::F16(a.mapv(half::f16::from_f64)),
        DType::BF16 => Tensor::BF16(a.mapv(half::bf16::from_f64)),
        DType::I8 => Tensor::I8(a.mapv(|v| v as i8)),
        DType::U8 => Tensor::U8(a.mapv(|v| v as u8)),
        DType::I16 => Tensor::I16(a.mapv(|v| v as i16)),
        DType::U16 => Tensor::U16(a.mapv(|v| v as u16)),
        DType::I32 => Tensor::I32(a.mapv(|v| v as i32)),
        DType::U32 => Tensor::U32(a.mapv(|v| v as u32)),
        DType::I64 => Tensor::I64(a.mapv(|v| v as i64)),
        DType::U64 => Tensor::U64(a.mapv(|v| v as u64)),
        DType::Bool => Tensor::Bool(a.mapv(|v| v != 0.0)),
        other => return unsupported(format!("cast to {other}")),
    })
}

fn from_i64(a: &ArrayD<i64>, to: DType) -> R<Tensor> {
    Ok(match to {
        DType::F32 => Tensor::F32(a.mapv(|v| v as f32)),
        DType::F64 => Tensor::F64(a.mapv(|v| v as f64)),
        DType::F16 => Tensor::F16(a.mapv(|v| half::f16::from_f64(v as f64))),
        DType::BF16 => Tensor::BF16(a.mapv(|v| half::bf16::from_f64(v as f64))),
        DType::I8 => Tensor::I8(a.mapv(|v| v as i8)),
        DType::U8 => Tensor::U8(a.mapv(|v| v as u8)),
        DType::I16 => Tensor::I16(a.mapv(|v| v as i16)),
        DType::U16 => Tensor::U16(a.mapv(|v| v as u16)),
        DType::I32 => Tensor::I32(a.mapv(|v| v as i32)),
        DType::U32 => Tensor::U32(a.mapv(|v| v as u32)),
        DType::I64 => Tensor::I64(a.clone()),
        DType::U64 => Tensor::U64(a.mapv(|v| v as u64)),
        DType::Bool => Tensor::Bool(a.mapv(|v| v != 0)),
        other => return unsupported(format!("cast to {other}")),
    })
}

fn from_num(n: &Num, to: DType) -> R<Tensor> {
    match n {
        Num::F(a) => from_f64(a, to),
        Num::I(a) => from_i64(a, to),
        Num::B(a) => from_i64(&a.mapv(|v| v as i64), to),
    }
}

fn cast_to(t: &Tensor, to: DType) -> R<Tensor> {
    if t.dtype() == to {
        return Ok(t.clone());
    }
    if matches!(to, DType::I4 | DType::U4) {
        return unsupported(format!("cast to {to}"));
    }
    if let Tensor::Str(_) = t {
        return unsupported("cast from string");
    }
    from_num(&to_num(t)?, to)
}

/// Integer values of a tensor (ints and bools).
fn ints(t: &Tensor) -> R<Vec<i64>> {
    match t.to_i64_vec() {
        Some(v) => Ok(v),
        None => invalid(format!("expected integers, got {}", t.dtype())),
    }
}

/// Applies `f` elementwise with numpy broadcasting; `f` returning `None` is an error.
fn bcast2<A, B, C: Default>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    limit: usize,
    mut f: impl FnMut(&A, &B) -> Option<C>,
) -> R<ArrayD<C>> {
    let Some(shape) = broadcast_shapes(a.shape(), b.shape()) else {
        return invalid(format!(
            "shapes {:?} and {:?} do not broadcast",
            a.shape(),
            b.shape()
        ));
    };
    check_size(&shape, limit)?;
    let (Some(va), Some(vb)) = (a.broadcast(IxDyn(&shape)), b.broadcast(IxDyn(&shape))) else {
        return invalid("broadcast failed");
    };
    let mut bad = false;
    let out = Zip::from(&va).and(&vb).map_collect(|x, y| match f(x, y) {
        Some(v) => v,
        None => {
            bad = true;
            C::default()
        }
    });
    if bad {
        return invalid("arithmetic error (integer division by zero or overflow)");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Generic data movement
// ---------------------------------------------------------------------------

fn gather_t<T: Elem>(data: &Tensor, idx: &[usize], ishape: &[usize], axis: usize) -> R<Tensor> {
    let a = arr::<T>(data)?;
    let sel = a.select(Axis(axis), idx);
    let mut shape: Vec<usize> = a.shape()[..axis].to_vec();
    shape.extend_from_slice(ishape);
    shape.extend_from_slice(&a.shape()[axis + 1..]);
    Ok(T::wrap(to_shape(&sel, &shape)?, data.dtype()))
}

fn concat_t<T: Elem>(ts: &[&Tensor], axis: usize) -> R<Tensor> {
    let arrs: Vec<_> = ts
        .iter()
        .map(|t| arr::<T>(t).map(|a| a.view()))
        .collect::<R<_>>()?;
    match ndarray::concatenate(Axis(axis), &arrs) {
        Ok(a) => Ok(T::wrap(a, ts[0].dtype())),
        Err(_) => invalid("inputs have different shapes outside the concatenation axis"),
    }
}

fn reshape_t<T: Elem>(t: &Tensor, shape: &[usize]) -> R<Tensor> {
    Ok(T::wrap(to_shape(arr::<T>(t)?, shape)?, t.dtype()))
}

fn select_t<T: Elem>(t: &Tensor, picks: &[Vec<usize>]) -> R<Tensor> {
    let mut a = arr::<T>(t)?.clone();
    for (ax, idx) in picks.iter().enumerate() {
        if idx.len() != a.shape()[ax] || idx.iter().enumerate().any(|(i, &j)| i != j) {
            a = a.select(Axis(ax), idx);
        }
    }
    let shape = a.shape().to_vec();
    Ok(T::wrap(to_shape(&a, &shape)?, t.dtype()))
}

fn transpose_t<T: Elem>(t: &Tensor, perm: &[usize]) -> R<Tensor> {
    let a = arr::<T>(t)?;
    let p = a.view().permuted_axes(IxDyn(perm));
    let shape = p.shape().to_vec();
    Ok(T::wrap(
        reshape_vec(p.iter().cloned().collect(), &shape)?,
        t.dtype(),
    ))
}

fn expand_t<T: Elem>(t: &Tensor, shape: &[usize]) -> R<Tensor> {
    let a = arr::<T>(t)?;
    match a.broadcast(IxDyn(shape)) {
        Some(b) => Ok(T::wrap(
            reshape_vec(b.iter().cloned().collect(), shape)?,
            t.dtype(),
        )),
        None => invalid(format!("cannot expand {:?} to {:?}", a.shape(), shape)),
    }
}

fn where_t<T: Elem>(c: &ArrayD<bool>, x: &Tensor, y: &Tensor, limit: usize) -> R<Tensor> {
    let (a, b) = (arr::<T>(x)?, arr::<T>(y)?);
    let Some(s1) = broadcast_shapes(c.shape(), a.shape()) else {
        return invalid("Where inputs do not broadcast");
    };
    let Some(shape) = broadcast_shapes(&s1, b.shape()) else {
        return invalid("Where inputs do not broadcast");
    };
    check_size(&shape, limit)?;
    let d = IxDyn(&shape);
    let (Some(vc), Some(va), Some(vb)) = (
        c.broadcast(d.clone()),
        a.broadcast(d.clone()),
        b.broadcast(d),
    ) else {
        return invalid("Where inputs do not broadcast");
    };
    let out = Zip::from(&vc)
        .and(&va)
        .and(&vb)
        .map_collect(|&k, p, q| if k { p.clone() } else { q.clone() });
    Ok(T::wrap(out, x.dtype()))
}

fn fill_t<T: Elem>(value: &Tensor, shape: &[usize]) -> R<Tensor> {
    let a = arr::<T>(value)?;
    let Some(v) = a.iter().next() else {
        return invalid("value attribute is empty");
    };
    Ok(T::wrap(
        ArrayD::from_elem(IxDyn(shape), v.clone()),
        value.dtype(),
    ))
}

// ---------------------------------------------------------------------------
// The evaluator
// ---------------------------------------------------------------------------

struct Cx<'a> {
    op: &'a Op,
    inputs: &'a [Option<&'a Tensor>],
    opset: i64,
    limit: usize,
}

fn constant_of(op: &Op) -> R<Tensor> {
    let Some(a) = op.attrs.first() else {
        return invalid("Constant has no value attribute");
    };
    Ok(match (&a.name[..], &a.value) {
        ("value", AttrValue::Tensor(t)) => match t.to_tensor() {
            Ok(x) => x,
            Err(e) => return invalid(e.to_string()),
        },
        ("value_float", AttrValue::Float(f)) => Tensor::F32(ArrayD::from_elem(IxDyn(&[]), *f)),
        ("value_floats", AttrValue::Floats(v)) => Tensor::F32(reshape_vec(v.clone(), &[v.len()])?),
        ("value_int", AttrValue::Int(i)) => Tensor::I64(ArrayD::from_elem(IxDyn(&[]), *i)),
        ("value_ints", AttrValue::Ints(v)) => Tensor::I64(reshape_vec(v.clone(), &[v.len()])?),
        ("value_string", AttrValue::String(s)) => Tensor::Str(ArrayD::from_elem(
            IxDyn(&[]),
            String::from_utf8_lossy(s).into_owned(),
        )),
        ("value_strings", AttrValue::Strings(v)) => Tensor::Str(reshape_vec(
            v.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            &[v.len()],
        )?),
        (n, _) => return unsupported(format!("Constant attribute '{n}'")),
    })
}

impl Cx<'_> {
    fn input(&self, i: usize) -> R<&Tensor> {
        match self.inputs.get(i).copied().flatten() {
            Some(t) => Ok(t),
            None => invalid(format!("input {i} is missing")),
        }
    }

    fn opt(&self, i: usize) -> Option<&Tensor> {
        self.inputs.get(i).copied().flatten()
    }

    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.op.attr_int(name).unwrap_or(default)
    }

    /// Axes given by attribute before `input_from` opset, by input `slot` from then on.
    fn axes(&self, input_from: i64, slot: usize) -> R<Option<Vec<i64>>> {
        if self.opset >= input_from {
            match self.opt(slot) {
                Some(t) => Ok(Some(ints(t)?)),
                None => Ok(None),
            }
        } else {
            Ok(self.op.attr_ints("axes").map(<[i64]>::to_vec))
        }
    }

    fn run(&self) -> R<Vec<Tensor>> {
        let one = |t: Tensor| Ok(vec![t]);
        match self.op.op_type.as_str() {
            "Constant" => one(constant_of(self.op)?),
            "Identity" => one(self.input(0)?.clone()),
            "Shape" | "Size" => {
                let dims: Vec<i64> = self.input(0)?.shape().iter().map(|&d| d as i64).collect();
                match shape_from_dims(self.op, &dims) {
                    Ok(t) => one(t),
                    Err(e) => invalid(e.to_string()),
                }
            }
            "Cast" => {
                let Some(to) = self.op.attr_int("to") else {
                    return invalid("Cast has no 'to' attribute");
                };
                one(cast_to(self.input(0)?, DType::from_onnx(to as i32))?)
            }
            "CastLike" => one(cast_to(self.input(0)?, self.input(1)?.dtype())?),
            "Gather" => self.gather(),
            "Concat" => self.concat(),
            "Reshape" => self.reshape(),
            "Flatten" => {
                let x = self.input(0)?;
                let s = x.shape();
                let Some(ax) = norm_axis(self.attr_i("axis", 1), s.len() + 1) else {
                    return invalid("axis out of range");
                };
                let shape = [numel(&s[..ax]), numel(&s[ax..])];
                one(by_dtype!(x.dtype(), reshape_t(x, &shape))?)
            }
            "Squeeze" => self.squeeze(),
            "Unsqueeze" => self.unsqueeze(),
            "Slice" => self.slice(),
            "Transpose" => {
                let x = self.input(0)?;
                let r = x.shape().len();
                let perm: Vec<usize> = match self.op.attr_ints("perm") {
                    Some(p) => p
                        .iter()
                        .map(|&a| norm_axis(a, r))
                        .collect::<Option<_>>()
                        .unwrap_or_default(),
                    None => (0..r).rev().collect(),
                };
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..r).collect::<Vec<_>>() {
                    return invalid(format!("perm {perm:?} is not a permutation of rank {r}"));
                }
                one(by_dtype!(x.dtype(), transpose_t(x, &perm))?)
            }
            "Expand" => {
                let x = self.input(0)?;
                let target = ints(self.input(1)?)?;
                let tdims: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
                let Some(shape) = broadcast_shapes(&x.shape(), &tdims) else {
                    return invalid(format!("cannot expand {:?} to {target:?}", x.shape()));
                };
                check_size(&shape, self.limit)?;
                one(by_dtype!(x.dtype(), expand_t(x, &shape))?)
            }
            "Where" => {
                let c = self.input(0)?;
                let Tensor::Bool(c) = c else {
                    return invalid("condition is not bool");
                };
                let (x, y) = (self.input(1)?, self.input(2)?);
                if x.dtype() != y.dtype() {
                    return invalid("X and Y have different element types");
                }
                one(by_dtype!(x.dtype(), where_t(c, x, y, self.limit))?)
            }
            "ConstantOfShape" => {
                let dims = ints(self.input(0)?)?;
                if dims.iter().any(|&d| d < 0) {
                    return invalid(format!("negative dimension in {dims:?}"));
                }
                let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
                check_size(&shape, self.limit)?;
                let value = match self.op.attr("value") {
                    Some(AttrValue::Tensor(t)) => match t.to_tensor() {
                        Ok(v) => v,
                        Err(e) => return invalid(e.to_string()),
                    },
                    _ => Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 0.0)),
                };
                one(by_dtype!(value.dtype(), fill_t(&value, &shape))?)
            }
            "Range" => self.range(),
            "Split" => self.split(),
            "Not" => match self.input(0)? {
                Tensor::Bool(a) => one(Tensor::Bool(a.mapv(|v| !v))),
                _ => invalid("Not needs a bool input"),
            },
            "And" | "Or" | "Xor" => {
                let (Tensor::Bool(a), Tensor::Bool(b)) = (self.input(0)?, self.input(1)?) else {
                    return invalid("needs bool inputs");
                };
                let f = match self.op.op_type.as_str() {
                    "And" => |x: &bool, y: &bool| Some(*x && *y),
                    "Or" => |x: &bool, y: &bool| Some(*x || *y),
                    _ => |x: &bool, y: &bool| Some(*x != *y),
                };
                one(Tensor::Bool(bcast2(a, b, self.limit, f)?))
            }
            "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" => self.compare(),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" => {
                let (a, b) = (self.input(0)?, self.input(1)?);
                let out = self.arith(&self.op.op_type, a, b)?;
                one(out)
            }
            "Min" | "Max" | "Sum" => {
                let ins: Vec<&Tensor> = self.inputs.iter().flatten().copied().collect();
                let Some(first) = ins.first() else {
                    return invalid("no inputs");
                };
                let mut acc = (*first).clone();
                for t in &ins[1..] {
                    acc = self.arith(&self.op.op_type, &acc, t)?;
                }
                one(acc)
            }
            "Neg" | "Abs" | "Sqrt" | "Floor" | "Ceil" | "Sign" => self.unary(),
            "ReduceProd" | "ReduceSum" | "ReduceMax" | "ReduceMin" => self.reduce(),
            other => unsupported(format!("op {other}")),
        }
    }

    fn gather(&self) -> R<Vec<Tensor>> {
        let (data, it) = (self.input(0)?, self.input(1)?);
        let shape = data.shape();
        let Some(axis) = norm_axis(self.attr_i("axis", 0), shape.len()) else {
            return invalid("axis out of range");
        };
        let dim = shape[axis] as i64;
        let idx = ints(it)?
            .into_iter()
            .map(|i| {
                let j = if i < 0 { i + dim } else { i };
                if (0..dim).contains(&j) {
                    Ok(j as usize)
                } else {
                    invalid(format!("index {i} out of range for dimension {dim}"))
                }
            })
            .collect::<R<Vec<_>>>()?;
        Ok(vec![by_dtype!(
            data.dtype(),
            gather_t(data, &idx, &it.shape(), axis)
        )?])
    }

    fn concat(&self) -> R<Vec<Tensor>> {
        let ins: Vec<&Tensor> = self.inputs.iter().flatten().copied().collect();
        let Some(first) = ins.first() else {
            return invalid("no inputs");
        };
        if ins.iter().any(|t| t.dtype() != first.dtype()) {
            return invalid("inputs have different element types");
        }
        let rank = first.shape().len();
        let Some(axis) = self.op.attr_int("axis").and_then(|a| norm_axis(a, rank)) else {
            return invalid("missing or out-of-range axis");
        };
        if ins.iter().any(|t| t.shape().len() != rank) {
            return invalid("inputs have different ranks");
        }
        Ok(vec![by_dtype!(first.dtype(), concat_t(&ins, axis))?])
    }

    fn reshape(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let target = if self.opset >= 5 {
            ints(self.input(1)?)?
        } else {
            match self.op.attr_ints("shape") {
                Some(s) => s.to_vec(),
                None => return invalid("no shape"),
            }
        };
        let allowzero = self.attr_i("allowzero", 0) != 0;
        let shape = match reshape_dims(&x.shape(), &target, allowzero) {
            Ok(s) => s,
            Err(w) => return invalid(w),
        };
        check_size(&shape, self.limit)?;
        Ok(vec![by_dtype!(x.dtype(), reshape_t(x, &shape))?])
    }

    fn squeeze(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let s = x.shape();
        let axes = self.axes(13, 1)?;
        let drop: Vec<usize> = match axes {
            Some(ax) => ax
                .iter()
                .map(|&a| match norm_axis(a, s.len()) {
                    Some(a) if s[a] == 1 => Ok(a),
                    _ => invalid(format!("cannot squeeze axis {a} of {s:?}")),
                })
                .collect::<R<_>>()?,
            None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
        };
        let shape: Vec<usize> = (0..s.len())
            .filter(|i| !drop.contains(i))
            .map(|i| s[i])
            .collect();
        Ok(vec![by_dtype!(x.dtype(), reshape_t(x, &shape))?])
    }

    fn unsqueeze(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let Some(axes) = self.axes(13, 1)? else {
            return invalid("no axes");
        };
        let s = x.shape();
        let Some(shape) = unsqueeze_dims(&s, &axes) else {
            return invalid(format!("bad axes {axes:?} for rank {}", s.len()));
        };
        Ok(vec![by_dtype!(x.dtype(), reshape_t(x, &shape))?])
    }

    fn slice(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let s = x.shape();
        let (starts, ends, axes, steps) = if self.opset >= 10 {
            (
                ints(self.input(1)?)?,
                ints(self.input(2)?)?,
                self.opt(3).map(ints).transpose()?,
                self.opt(4).map(ints).transpose()?,
            )
        } else {
            let get = |n: &str| self.op.attr_ints(n).map(<[i64]>::to_vec);
            match (get("starts"), get("ends")) {
                (Some(a), Some(b)) => (a, b, get("axes"), None),
                _ => return invalid("missing starts/ends"),
            }
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return invalid("starts, ends, axes and steps differ in length");
        }
        let mut picks: Vec<Vec<usize>> = s.iter().map(|&d| (0..d).collect()).collect();
        for i in 0..starts.len() {
            let Some(ax) = norm_axis(axes[i], s.len()) else {
                return invalid(format!("axis {} out of range", axes[i]));
            };
            let Some(r) = slice_range(s[ax] as i64, starts[i], ends[i], steps[i]) else {
                return invalid("slice step is 0");
            };
            picks[ax] = r.into_iter().map(|v| v as usize).collect();
        }
        Ok(vec![by_dtype!(x.dtype(), select_t(x, &picks))?])
    }

    fn split(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let s = x.shape();
        let Some(axis) = norm_axis(self.attr_i("axis", 0), s.len()) else {
            return invalid("axis out of range");
        };
        let n = self.op.n_outputs;
        let sizes: Vec<usize> = match self.split_sizes()? {
            Some(v) => v.iter().map(|&d| d.max(0) as usize).collect(),
            None => {
                let parts = self.attr_i("num_outputs", n as i64);
                if parts != n as i64 || n == 0 {
                    return invalid(format!("num_outputs {parts} for {n} outputs"));
                }
                let parts = n;
                let chunk = s[axis].div_ceil(parts);
                (0..parts)
                    .map(|i| chunk.min(s[axis].saturating_sub(i * chunk)))
                    .collect()
            }
        };
        if sizes.iter().fold(0usize, |a, &x| a.saturating_add(x)) != s[axis] {
            return invalid(format!(
                "split sizes {sizes:?} do not add up to {}",
                s[axis]
            ));
        }
        let mut out = Vec::new();
        let mut at = 0;
        for sz in sizes {
            let mut picks: Vec<Vec<usize>> = s.iter().map(|&d| (0..d).collect()).collect();
            picks[axis] = (at..at + sz).collect();
            out.push(by_dtype!(x.dtype(), select_t(x, &picks))?);
            at += sz;
        }
        Ok(out)
    }

    fn split_sizes(&self) -> R<Option<Vec<i64>>> {
        if self.opset >= 13 {
            self.opt(1).map(ints).transpose()
        } else {
            Ok(self.op.attr_ints("split").map(<[i64]>::to_vec))
        }
    }

    fn range(&self) -> R<Vec<Tensor>> {
        let (s, l, d) = (self.input(0)?, self.input(1)?, self.input(2)?);
        let dt = s.dtype();
        let scalar = |t: &Tensor| -> R<Num> {
            if t.len() != 1 {
                return invalid("Range inputs must be scalars");
            }
            to_num(t)
        };
        match (scalar(s)?, scalar(l)?, scalar(d)?) {
            (Num::I(a), Num::I(b), Num::I(c)) => {
                let (a, b, c) = (a.iter().next(), b.iter().next(), c.iter().next());
                let (Some(&a), Some(&b), Some(&c)) = (a, b, c) else {
                    return invalid("empty");
                };
                if c == 0 {
                    return invalid("delta is 0");
                }
                let n = ((b as i128 - a as i128 + c as i128 - c.signum() as i128) / c as i128)
                    .max(0) as usize;
                if n > self.limit {
                    return Err(E::TooLarge(n));
                }
                let v: Vec<i64> = match (0..n as i128)
                    .map(|i| i64::try_from(a as i128 + i * c as i128))
                    .collect::<Result<_, _>>()
                {
                    Ok(v) => v,
                    Err(_) => return invalid("range leaves the int64 range"),
                };
                Ok(vec![from_i64(&reshape_vec(v, &[n])?, dt)?])
            }
            (Num::F(a), Num::F(b), Num::F(c)) => {
                let (a, b, c) = (a.iter().next(), b.iter().next(), c.iter().next());
                let (Some(&a), Some(&b), Some(&c)) = (a, b, c) else {
                    return invalid("empty");
                };
                if c == 0.0 || !c.is_finite() {
                    return invalid("delta is 0 or not finite");
                }
                let n = ((b - a) / c).ceil().max(0.0);
                if !n.is_finite() || n > self.limit as f64 {
                    return Err(E::TooLarge(usize::MAX));
                }
                let n = n as usize;
                let v: Vec<f64> = (0..n).map(|i| a + i as f64 * c).collect();
                Ok(vec![from_f64(&reshape_vec(v, &[n])?, dt)?])
            }
            _ => invalid("Range inputs have different element types"),
        }
    }

    fn compare(&self) -> R<Vec<Tensor>> {
        let (a, b) = (self.input(0)?, self.input(1)?);
        let op = self.op.op_type.as_str();
        if let (Tensor::Str(x), Tensor::Str(y)) = (a, b) {
            if op == "Equal" {
                return Ok(vec![Tensor::Bool(bcast2(x, y, self.limit, |p, q| {
                    Some(p == q)
                })?)]);
            }
            return unsupported("string comparison");
        }
        fn cmp<T: PartialOrd>(op: &str, x: &T, y: &T) -> bool {
            match op {
                "Equal" => x == y,
                "Greater" => x > y,
                "Less" => x < y,
                "GreaterOrEqual" => x >= y,
                _ => x <= y,
            }
        }
        let out = match (to_num(a)?, to_num(b)?) {
            (Num::F(x), Num::F(y)) => bcast2(&x, &y, self.limit, |p, q| Some(cmp(op, p, q)))?,
            (Num::I(x), Num::I(y)) => bcast2(&x, &y, self.limit, |p, q| Some(cmp(op, p, q)))?,
            (Num::B(x), Num::B(y)) => bcast2(&x, &y, self.limit, |p, q| Some(cmp(op, p, q)))?,
            _ => return invalid("inputs have different element types"),
        };
        Ok(vec![Tensor::Bool(out)])
    }

    fn arith(&self, op: &str, a: &Tensor, b: &Tensor) -> R<Tensor> {
        let out_dt = a.dtype();
        if op != "Pow" && a.dtype() != b.dtype() {
            return invalid(format!(
                "inputs have different element types ({} and {})",
                a.dtype(),
                b.dtype()
            ));
        }
        let fmod = self.attr_i("fmod", 0) != 0;
        let l = self.limit;
        let res = match (to_num(a)?, to_num(b)?) {
            (Num::I(x), Num::I(y)) => Num::I(bcast2(&x, &y, l, |&p, &q| match op {
                "Add" | "Sum" => Some(p.wrapping_add(q)),
                "Sub" => Some(p.wrapping_sub(q)),
                "Mul" => Some(p.wrapping_mul(q)),
                "Div" => p.checked_div(q),
                "Mod" => {
                    let r = p.checked_rem(q)?;
                    Some(if !fmod && r != 0 && (r < 0) != (q < 0) {
                        r + q
                    } else {
                        r
                    })
                }
                "Pow" => u32::try_from(q).ok().map(|e| p.wrapping_pow(e)),
                "Min" => Some(p.min(q)),
                "Max" => Some(p.max(q)),
                _ => None,
            })?),
            (x, y) => {
                let fx = match x {
                    Num::F(v) => v,
                    Num::I(v) => v.mapv(|e| e as f64),
                    Num::B(_) => return invalid("arithmetic on bool"),
                };
                let fy = match y {
                    Num::F(v) => v,
                    Num::I(v) => v.mapv(|e| e as f64),
                    Num::B(_) => return invalid("arithmetic on bool"),
                };
                Num::F(bcast2(&fx, &fy, l, |&p, &q| match op {
                    "Add" | "Sum" => Some(p + q),
                    "Sub" => Some(p - q),
                    "Mul" => Some(p * q),
                    "Div" => Some(p / q),
                    "Mod" => Some(if fmod {
                        p % q
                    } else {
                        let r = p % q;
                        if r != 0.0 && (r < 0.0) != (q < 0.0) {
                            r + q
                        } else {
                            r
                        }
                    }),
                    "Pow" => Some(p.powf(q)),
                    "Min" => Some(if p.is_nan() || q.is_nan() {
                        f64::NAN
                    } else {
                        p.min(q)
                    }),
                    "Max" => Some(if p.is_nan() || q.is_nan() {
                        f64::NAN
                    } else {
                        p.max(q)
                    }),
                    _ => None,
                })?)
            }
        };
        from_num(&res, out_dt)
    }

    fn unary(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let op = self.op.op_type.as_str();
        let out = match to_num(x)? {
            Num::I(a) => Num::I(a.mapv(|v| match op {
                "Neg" => v.wrapping_neg(),
                "Abs" => v.wrapping_abs(),
                "Sign" => v.signum(),
                _ => v,
            })),
            Num::F(a) => Num::F(a.mapv(|v| match op {
                "Neg" => -v,
                "Abs" => v.abs(),
                "Sqrt" => v.sqrt(),
                "Floor" => v.floor(),
                "Ceil" => v.ceil(),
                _ => {
                    if v == 0.0 || v.is_nan() {
                        v
                    } else {
                        v.signum()
                    }
                }
            })),
            Num::B(_) => return invalid("arithmetic on bool"),
        };
        if matches!(out, Num::I(_)) && matches!(op, "Sqrt" | "Floor" | "Ceil") {
            return unsupported(format!("{op} on integers"));
        }
        Ok(vec![from_num(&out, x.dtype())?])
    }

    fn reduce(&self) -> R<Vec<Tensor>> {
        let x = self.input(0)?;
        let op = self.op.op_type.as_str();
        let input_from = if op == "ReduceSum" { 13 } else { 18 };
        let axes = self.axes(input_from, 1)?;
        let keep = self.attr_i("keepdims", 1) != 0;
        let noop = self.attr_i("noop_with_empty_axes", 0) != 0;
        let s = x.shape();
        let axes: Vec<usize> = match axes {
            Some(a) if !a.is_empty() => {
                let mut v = a
                    .iter()
                    .map(|&i| norm_axis(i, s.len()))
                    .collect::<Option<Vec<_>>>()
                    .map_or_else(|| invalid("axis out of range"), Ok)?;
                v.sort_unstable();
                v.dedup();
                v
            }
            _ if noop => return Ok(vec![x.clone()]),
            _ => (0..s.len()).collect(),
        };
        let mut n = to_num(x)?;
        for &ax in axes.iter().rev() {
            n = match n {
                Num::I(a) => {
                    Num::I(a.fold_axis(Axis(ax), init_i(op), |&acc, &v| fold_i(op, acc, v)))
                }
                Num::F(a) => {
                    Num::F(a.fold_axis(Axis(ax), init_f(op), |&acc, &v| fold_f(op, acc, v)))
                }
                Num::B(_) => return invalid("reduction of bool"),
            };
            if keep {
                n = match n {
                    Num::I(a) => Num::I(a.insert_axis(Axis(ax))),
                    Num::F(a) => Num::F(a.insert_axis(Axis(ax))),
                    b => b,
                };
            }
        }
        Ok(vec![from_num(&n, x.dtype())?])
    }
}

fn init_i(op: &str) -> i64 {
    match op {
        "ReduceProd" => 1,
        "ReduceMax" => i64::MIN,
        "ReduceMin" => i64::MAX,
        _ => 0,
    }
}

fn fold_i(op: &str, acc: i64, v: i64) -> i64 {
    match op {
        "ReduceProd" => acc.wrapping_mul(v),
        "ReduceMax" => acc.max(v),
        "ReduceMin" => acc.min(v),
        _ => acc.wrapping_add(v),
    }
}

fn init_f(op: &str) -> f64 {
    match op {
        "ReduceProd" => 1.0,
        "ReduceMax" => f64::NEG_INFINITY,
        "ReduceMin" => f64::INFINITY,
        _ => 0.0,
    }
}

fn fold_f(op: &str, acc: f64, v: f64) -> f64 {
    match op {
        "ReduceProd" => acc * v,
        "ReduceMax" => acc.max(v),
        "ReduceMin" => acc.min(v),
        _ => acc + v,
    }
}

/// Output dims of `Reshape` (ONNX rules for `0` and `-1`), or why they are invalid.
pub fn reshape_dims(
    input: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => match input.get(i) {
                Some(&k) => out.push(k),
                None => return Err(format!("0 at position {i} has no input dimension to copy")),
            },
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("bad target shape {target:?}")),
        }
    }
    let total = numel(input);
    if let Some(i) = infer {
        let rest = numel(&out);
        if rest == 0 || !total.is_multiple_of(rest) {
            return Err(format!("cannot reshape {input:?} to {target:?}"));
        }
        out[i] = total / rest;
    }
    if numel(&out) != total {
        return Err(format!("cannot reshape {input:?} to {target:?}"));
    }
    Ok(out)
}

/// Output dims of `Unsqueeze` with `axes` (relative to the output rank).
pub fn unsqueeze_dims<T: Clone + From<u8>>(input: &[T], axes: &[i64]) -> Option<Vec<T>> {
    let r = input.len() + axes.len();
    let mut ax: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, r))
        .collect::<Option<_>>()?;
    ax.sort_unstable();
    if ax.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut it = input.iter();
    (0..r)
        .map(|i| {
            if ax.binary_search(&i).is_ok() {
                Some(T::from(1u8))
            } else {
                it.next().cloned()
            }
        })
        .collect()
}

/// The indices an ONNX `Slice` picks on an axis of length `dim`, `None` when `step` is 0.
pub fn slice_range(dim: i64, start: i64, end: i64, step: i64) -> Option<Vec<i64>> {
    if step == 0 {
        return None;
    }
    let adj = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
    let (s, e) = (adj(start), adj(end));
    let mut out = Vec::new();
    if step > 0 {
        let (s, e) = (s.clamp(0, dim), e.clamp(0, dim));
        let mut i = s;
        while i < e {
            out.push(i);
            i = i.saturating_add(step);
        }
    } else {
        let (s, e) = (s.clamp(-1, dim - 1), e.clamp(-1, dim - 1));
        let mut i = s;
        while i > e {
            out.push(i);
            i = i.saturating_add(step);
        }
    }
    Some(out)
}

/// Length of `slice_range(dim, start, end, step)` without building it.
pub fn slice_len(dim: i64, start: i64, end: i64, step: i64) -> Option<i64> {
    if step == 0 {
        return None;
    }
    let (dim, step) = (dim as i128, step as i128);
    let adj = |v: i64| {
        let v = v as i128;
        if v < 0 {
            v + dim
        } else {
            v
        }
    };
    let (s, e) = (adj(start), adj(end));
    let n = if step > 0 {
        let (s, e) = (s.clamp(0, dim), e.clamp(0, dim));
        if e > s {
            (e - s - 1) / step + 1
        } else {
            0
        }
    } else {
        let (s, e) = (s.clamp(-1, dim - 1), e.clamp(-1, dim - 1));
        if s > e {
            (s - e - 1) / (-step) + 1
        } else {
            0
        }
    };
    i64::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ConstTensor;
    use ndarray::arr1;

    fn op(t: &str) -> Op {
        Op::new(t, "n")
    }

    fn i64s(v: &[i64], shape: &[usize]) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    fn f32s(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    fn run(o: &Op, ins: &[Option<&Tensor>], opset: i64) -> Result<Vec<Tensor>, EvalError> {
        eval(o, ins, opset, 1 << 16)
    }

    #[test]
    fn shape_gather_equal_not_cast_chain() {
        let x = f32s(&[0.0; 6], &[1, 2, 3]);
        let s = &run(&op("Shape"), &[Some(&x)], 17).unwrap()[0];
        assert_eq!(s, &i64s(&[1, 2, 3], &[3]));
        let idx = i64s(&[-1], &[1]);
        let g = &run(&op("Gather"), &[Some(s), Some(&idx)], 17).unwrap()[0];
        assert_eq!(g, &i64s(&[3], &[1]));
        let one = i64s(&[1], &[1]);
        let e = &run(&op("Equal"), &[Some(g), Some(&one)], 17).unwrap()[0];
        assert_eq!(e, &Tensor::Bool(arr1(&[false]).into_dyn()));
        let n = &run(&op("Not"), &[Some(e)], 17).unwrap()[0];
        let mut c = op("Cast");
        c.set_attr("to", AttrValue::Int(7));
        assert_eq!(
            run(&c, &[Some(n)], 17).unwrap()[0],
            i64s(&[1], &[1]),
            "true casts to 1"
        );
        let mut sh = op("Shape");
        sh.set_attr("start", AttrValue::Int(-2));
        assert_eq!(run(&sh, &[Some(&x)], 17).unwrap()[0], i64s(&[2, 3], &[2]));
    }

    #[test]
    fn scalar_gather_drops_the_axis() {
        let s = i64s(&[2, 1, 128], &[3]);
        let idx = i64s(&[0], &[]);
        let g = &run(&op("Gather"), &[Some(&s), Some(&idx)], 17).unwrap()[0];
        assert_eq!(g, &i64s(&[2], &[]));
        let bad = i64s(&[3], &[]);
        let e = run(&op("Gather"), &[Some(&s), Some(&bad)], 17).unwrap_err();
        assert!(matches!(e, EvalError::Invalid { .. }), "{e}");
    }

    #[test]
    fn slice_with_negative_steps_and_clamping() {
        let x = i64s(&[0, 1, 2, 3, 4, 5], &[6]);
        let st = i64s(&[-1], &[1]);
        let en = i64s(&[i64::MIN + 1], &[1]);
        let ax = i64s(&[0], &[1]);
        let sp = i64s(&[-2], &[1]);
        let r = &run(
            &op("Slice"),
            &[Some(&x), Some(&st), Some(&en), Some(&ax), Some(&sp)],
            13,
        )
        .unwrap()[0];
        assert_eq!(r, &i64s(&[5, 3, 1], &[3]));
        assert_eq!(slice_len(6, -1, i64::MIN + 1, -2), Some(3));
        assert_eq!(slice_len(6, 1, i64::MAX, 1), Some(5));
        assert_eq!(slice_range(6, 4, 2, 1), Some(vec![]));
        // opset 1 attribute form
        let mut s1 = op("Slice");
        s1.set_attr("starts", AttrValue::Ints(vec![1]));
        s1.set_attr("ends", AttrValue::Ints(vec![3]));
        let m = i64s(&[0, 1, 2, 3, 4, 5], &[2, 3]);
        s1.set_attr("axes", AttrValue::Ints(vec![1]));
        assert_eq!(
            run(&s1, &[Some(&m)], 9).unwrap()[0],
            i64s(&[1, 2, 4, 5], &[2, 2])
        );
    }

    #[test]
    fn reshape_zero_and_minus_one() {
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(reshape_dims(&[2, 0], &[0, 5], true).unwrap(), vec![0, 5]);
        assert!(reshape_dims(&[2, 0], &[0, -1], true).is_err());
        assert!(reshape_dims(&[2, 3], &[4, -1], false).is_err());
        let x = i64s(&[1, 2, 3, 4], &[4]);
        let t = i64s(&[-1, 2], &[2]);
        assert_eq!(
            run(&op("Reshape"), &[Some(&x), Some(&t)], 14).unwrap()[0],
            i64s(&[1, 2, 3, 4], &[2, 2])
        );
    }

    #[test]
    fn unsqueeze_squeeze_by_attr_and_input() {
        let x = i64s(&[7], &[]);
        let mut u = op("Unsqueeze");
        u.set_attr("axes", AttrValue::Ints(vec![0]));
        let a = &run(&u, &[Some(&x)], 11).unwrap()[0];
        assert_eq!(a, &i64s(&[7], &[1]));
        let ax = i64s(&[0, -1], &[2]);
        let b = &run(&op("Unsqueeze"), &[Some(&x), Some(&ax)], 13).unwrap()[0];
        assert_eq!(b.shape(), vec![1, 1]);
        let c = &run(&op("Squeeze"), &[Some(b)], 13).unwrap()[0];
        assert_eq!(c, &x);
        let bad = i64s(&[1, 2], &[2]);
        let one = i64s(&[0], &[1]);
        assert!(run(&op("Squeeze"), &[Some(&bad), Some(&one)], 13).is_err());
    }

    #[test]
    fn arithmetic_integer_and_float() {
        let a = i64s(&[7, -7], &[2]);
        let b = i64s(&[2], &[1]);
        assert_eq!(
            run(&op("Div"), &[Some(&a), Some(&b)], 14).unwrap()[0],
            i64s(&[3, -3], &[2])
        );
        assert_eq!(
            run(&op("Mod"), &[Some(&a), Some(&b)], 14).unwrap()[0],
            i64s(&[1, 1], &[2])
        );
        let z = i64s(&[0], &[]);
        assert!(run(&op("Div"), &[Some(&a), Some(&z)], 14).is_err());
        let x = f32s(&[1.0, 2.0], &[2, 1]);
        let y = f32s(&[10.0, 20.0, 30.0], &[3]);
        let s = &run(&op("Add"), &[Some(&x), Some(&y)], 14).unwrap()[0];
        assert_eq!(s, &f32s(&[11.0, 21.0, 31.0, 12.0, 22.0, 32.0], &[2, 3]));
        let p = &run(&op("Pow"), &[Some(&x), Some(&i64s(&[2], &[]))], 15).unwrap()[0];
        assert_eq!(p, &f32s(&[1.0, 4.0], &[2, 1]));
        let mx = &run(
            &op("Max"),
            &[Some(&a), Some(&b), Some(&i64s(&[5], &[]))],
            13,
        )
        .unwrap()[0];
        assert_eq!(mx, &i64s(&[7, 5], &[2]));
        let mixed = run(&op("Add"), &[Some(&a), Some(&x)], 14).unwrap_err();
        assert!(
            mixed.to_string().contains("different element types"),
            "{mixed}"
        );
    }

    #[test]
    fn range_where_constant_of_shape_reduce_prod() {
        let r = &run(
            &op("Range"),
            &[
                Some(&i64s(&[1], &[])),
                Some(&i64s(&[8], &[])),
                Some(&i64s(&[3], &[])),
            ],
            11,
        )
        .unwrap()[0];
        assert_eq!(r, &i64s(&[1, 4, 7], &[3]));
        let rf = &run(
            &op("Range"),
            &[
                Some(&f32s(&[0.0], &[])),
                Some(&f32s(&[1.0], &[])),
                Some(&f32s(&[0.25], &[])),
            ],
            11,
        )
        .unwrap()[0];
        assert_eq!(rf, &f32s(&[0.0, 0.25, 0.5, 0.75], &[4]));
        let c = Tensor::Bool(arr1(&[true, false]).into_dyn());
        let w = &run(
            &op("Where"),
            &[Some(&c), Some(&i64s(&[1, 2], &[2])), Some(&i64s(&[9], &[]))],
            16,
        )
        .unwrap()[0];
        assert_eq!(w, &i64s(&[1, 9], &[2]));
        let mut cos = op("ConstantOfShape");
        cos.set_attr(
            "value",
            AttrValue::Tensor(Box::new(ConstTensor::from_tensor(None, &i64s(&[4], &[1])))),
        );
        let f = &run(&cos, &[Some(&i64s(&[2, 2], &[2]))], 9).unwrap()[0];
        assert_eq!(f, &i64s(&[4, 4, 4, 4], &[2, 2]));
        let e = eval(&cos, &[Some(&i64s(&[1000, 1000], &[2]))], 9, 1000).unwrap_err();
        assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
        let mut rp = op("ReduceProd");
        rp.set_attr("keepdims", AttrValue::Int(0));
        let p = &run(&rp, &[Some(&i64s(&[2, 3, 4], &[3]))], 13).unwrap()[0];
        assert_eq!(p, &i64s(&[24], &[]));
        let mut rs = op("ReduceSum");
        rs.set_attr("keepdims", AttrValue::Int(1));
        let m = i64s(&[1, 2, 3, 4, 5, 6], &[2, 3]);
        let s = &run(&rs, &[Some(&m), Some(&i64s(&[1], &[1]))], 13).unwrap()[0];
        assert_eq!(s, &i64s(&[6, 15], &[2, 1]));
    }

    #[test]
    fn cast_truncates_and_saturates() {
        let x = f32s(&[1.7, -1.7, 1e10], &[3]);
        assert_eq!(
            cast(&x, DType::I32).unwrap(),
            Tensor::I32(arr1(&[1, -1, i32::MAX]).into_dyn())
        );
        assert_eq!(
            cast(&i64s(&[0, 2], &[2]), DType::Bool).unwrap(),
            Tensor::Bool(arr1(&[false, true]).into_dyn())
        );
    }

    #[test]
    fn concat_transpose_constant_split() {
        let a = i64s(&[1, 2], &[1, 2]);
        let b = i64s(&[3, 4, 5, 6], &[2, 2]);
        let mut c = op("Concat");
        c.set_attr("axis", AttrValue::Int(0));
        let cat = &run(&c, &[Some(&a), Some(&b)], 13).unwrap()[0];
        assert_eq!(cat, &i64s(&[1, 2, 3, 4, 5, 6], &[3, 2]));
        let t = &run(&op("Transpose"), &[Some(cat)], 13).unwrap()[0];
        assert_eq!(t, &i64s(&[1, 3, 5, 2, 4, 6], &[2, 3]));
        let mut k = op("Constant");
        k.set_attr("value_ints", AttrValue::Ints(vec![4, 5]));
        assert_eq!(constant_value(&k).unwrap(), i64s(&[4, 5], &[2]));
        let mut sp = op("Split");
        sp.n_outputs = 2;
        sp.set_attr("axis", AttrValue::Int(1));
        let parts = run(&sp, &[Some(t), Some(&i64s(&[1, 2], &[2]))], 13).unwrap();
        assert_eq!(parts[0], i64s(&[1, 2], &[2, 1]));
        assert_eq!(parts[1], i64s(&[3, 5, 4, 6], &[2, 2]));
    }

    #[test]
    fn unknown_op_is_unsupported() {
        let e = run(&op("Conv"), &[], 13).unwrap_err();
        assert!(matches!(e, EvalError::Unsupported { .. }));
        assert!(!supports(&op("Conv")) && supports(&op("Gather")));
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn weird() -> impl Strategy<Value = i64> {
            prop_oneof![-4i64..6, Just(i64::MAX), Just(i64::MIN), Just(1i64 << 40)]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn odd_inputs_and_attributes_give_errors_not_panics(
                op_idx in 0usize..SUPPORTED.len(),
                data in proptest::collection::vec(weird(), 0..7),
                b in proptest::collection::vec(weird(), 0..4),
                c in proptest::collection::vec(weird(), 0..4),
                attr in weird(),
                rank2 in proptest::bool::ANY,
                n_out in 1usize..3,
            ) {
                let mut o = op(SUPPORTED[op_idx]);
                o.n_outputs = n_out;
                for name in ["axis", "to", "start", "end", "keepdims", "num_outputs"] {
                    o.set_attr(name, AttrValue::Int(attr));
                }
                o.set_attr("perm", AttrValue::Ints(b.clone()));
                o.set_attr("axes", AttrValue::Ints(c.clone()));
                let x = if rank2 && data.len() % 2 == 0 && !data.is_empty() {
                    i64s(&data, &[2, data.len() / 2])
                } else {
                    i64s(&data, &[data.len()])
                };
                let (y, z) = (i64s(&b, &[b.len()]), i64s(&c, &[c.len()]));
                let f = f32s(&data.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[data.len()]);
                for ins in [
                    vec![Some(&x), Some(&y), Some(&z)],
                    vec![Some(&x), Some(&y)],
                    vec![Some(&f), Some(&f)],
                    vec![Some(&y), Some(&z), Some(&x), Some(&y), Some(&z)],
                    vec![Some(&x)],
                ] {
                    for opset in [9, 13, 18] {
                        let _ = eval(&o, &ins, opset, 1 << 12);
                    }
                }
            }
        }
    }
}
