//! Element types and host tensors.
//!
//! [`DType`] is the IR's element type (one variant per ONNX `TensorProto.DataType`).
//! [`Tensor`] is an owned, typed n-dimensional array used wherever real values move:
//! calibration and evaluation data, execution inputs and outputs, constant folding.
//! Neither knows about protobuf or tract; `onnx` and `exec` convert at their edges.

use ndarray::ArrayD;
use std::fmt;

/// Element type of a tensor, numbered exactly as ONNX's `TensorProto.DataType`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    Complex64,
    Complex128,
    BF16,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    U4,
    I4,
    F4E2M1,
    F8E8M0,
    U2,
    I2,
    F6E2M3,
    F6E3M2,
    /// A code this build does not know (kept so that decode → encode stays lossless).
    Other(i32),
}

impl DType {
    /// All known element types (not [`DType::Other`]).
    pub const ALL: [DType; 28] = [
        DType::F32,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::String,
        DType::Bool,
        DType::F16,
        DType::F64,
        DType::U32,
        DType::U64,
        DType::Complex64,
        DType::Complex128,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::U4,
        DType::I4,
        DType::F4E2M1,
        DType::F8E8M0,
        DType::U2,
        DType::I2,
        DType::F6E2M3,
        DType::F6E3M2,
    ];

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::String => 8,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::Complex64 => 14,
            DType::Complex128 => 15,
            DType::BF16 => 16,
            DType::F8E4M3FN => 17,
            DType::F8E4M3FNUZ => 18,
            DType::F8E5M2 => 19,
            DType::F8E5M2FNUZ => 20,
            DType::U4 => 21,
            DType::I4 => 22,
            DType::F4E2M1 => 23,
            DType::F8E8M0 => 24,
            DType::U2 => 25,
            DType::I2 => 26,
            DType::F6E2M3 => 27,
            DType::F6E3M2 => 28,
            DType::Other(c) => c,
        }
    }

    /// The element type of an ONNX `TensorProto.DataType` code (`0` = undefined gives `Other(0)`).
    pub fn from_onnx(code: i32) -> DType {
        DType::ALL
            .iter()
            .copied()
            .find(|d| d.onnx_code() == code)
            .unwrap_or(DType::Other(code))
    }

    /// Short name used in dumps and messages (`f32`, `u8`, `i4`, …).
    pub fn name(self) -> String {
        match self {
            DType::F32 => "f32".into(),
            DType::U8 => "u8".into(),
            DType::I8 => "i8".into(),
            DType::U16 => "u16".into(),
            DType::I16 => "i16".into(),
            DType::I32 => "i32".into(),
            DType::I64 => "i64".into(),
            DType::String => "str".into(),
            DType::Bool => "bool".into(),
            DType::F16 => "f16".into(),
            DType::F64 => "f64".into(),
            DType::U32 => "u32".into(),
            DType::U64 => "u64".into(),
            DType::Complex64 => "c64".into(),
            DType::Complex128 => "c128".into(),
            DType::BF16 => "bf16".into(),
            DType::F8E4M3FN => "f8e4m3fn".into(),
            DType::F8E4M3FNUZ => "f8e4m3fnuz".into(),
            DType::F8E5M2 => "f8e5m2".into(),
            DType::F8E5M2FNUZ => "f8e5m2fnuz".into(),
            DType::U4 => "u4".into(),
            DType::I4 => "i4".into(),
            DType::F4E2M1 => "f4e2m1".into(),
            DType::F8E8M0 => "f8e8m0".into(),
            DType::U2 => "u2".into(),
            DType::I2 => "i2".into(),
            DType::F6E2M3 => "f6e2m3".into(),
            DType::F6E3M2 => "f6e3m2".into(),
            DType::Other(c) => format!("dtype{c}"),
        }
    }

    /// Size in bits of one element, `None` for strings and unknown codes.
    pub fn bits(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 8,
            DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 | DType::U64 | DType::Complex64 => 64,
            DType::Complex128 => 128,
            DType::U4 | DType::I4 | DType::F4E2M1 => 4,
            DType::U2 | DType::I2 => 2,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::String | DType::Other(_) => return None,
        })
    }

    /// True for the floating-point types quantization reads ranges of.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// True for integer types (including sub-byte ones).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::U8
                | DType::I8
                | DType::U16
                | DType::I16
                | DType::I32
                | DType::I64
                | DType::U32
                | DType::U64
                | DType::U4
                | DType::I4
                | DType::U2
                | DType::I2
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// An owned host tensor with a concrete element type.
///
/// Sub-byte integer types (int4/uint4/int2/uint2) are held unpacked, one element per
/// `i8`/`u8`. Float8 and other exotic types have no host representation here.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<half::f16>),
    BF16(ArrayD<half::bf16>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    I16(ArrayD<i16>),
    U16(ArrayD<u16>),
    I32(ArrayD<i32>),
    U32(ArrayD<u32>),
    I64(ArrayD<i64>),
    U64(ArrayD<u64>),
    Bool(ArrayD<bool>),
    Str(ArrayD<String>),
    /// int4 values, one per byte, in [-8, 7].
    I4(ArrayD<i8>),
    /// uint4 values, one per byte, in [0, 15].
    U4(ArrayD<u8>),
}

/// Applies `$body` to the array inside any [`Tensor`] variant.
#[macro_export]
macro_rules! for_each_tensor {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::ir::tensor::Tensor::F32($a) => $body,
            $crate::ir::tensor::Tensor::F64($a) => $body,
            $crate::ir::tensor::Tensor::F16($a) => $body,
            $crate::ir::tensor::Tensor::BF16($a) => $body,
            $crate::ir::tensor::Tensor::I8($a) => $body,
            $crate::ir::tensor::Tensor::U8($a) => $body,
            $crate::ir::tensor::Tensor::I16($a) => $body,
            $crate::ir::tensor::Tensor::U16($a) => $body,
            $crate::ir::tensor::Tensor::I32($a) => $body,
            $crate::ir::tensor::Tensor::U32($a) => $body,
            $crate::ir::tensor::Tensor::I64($a) => $body,
            $crate::ir::tensor::Tensor::U64($a) => $body,
            $crate::ir::tensor::Tensor::Bool($a) => $body,
            $crate::ir::tensor::Tensor::Str($a) => $body,
            $crate::ir::tensor::Tensor::I4($a) => $body,
            $crate::ir::tensor::Tensor::U4($a) => $body,
        }
    };
}

impl Tensor {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::F16(_) => DType::F16,
            Tensor::BF16(_) => DType::BF16,
            Tensor::I8(_) => DType::I8,
            Tensor::U8(_) => DType::U8,
            Tensor::I16(_) => DType::I16,
            Tensor::U16(_) => DType::U16,
            Tensor::I32(_) => DType::I32,
            Tensor::U32(_) => DType::U32,
            Tensor::I64(_) => DType::I64,
            Tensor::U64(_) => DType::U64,
            Tensor::Bool(_) => DType::Bool,
            Tensor::Str(_) => DType::String,
            Tensor::I4(_) => DType::I4,
            Tensor::U4(_) => DType::U4,
        }
    }

    /// Shape as `usize` dimensions.
    pub fn shape(&self) -> Vec<usize> {
        for_each_tensor!(self, a => a.shape().to_vec())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        for_each_tensor!(self, a => a.len())
    }

    /// True when the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values widened to f64 (strings give `None`).
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        Some(match self {
            Tensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::F64(a) => a.iter().copied().collect(),
            Tensor::F16(a) => a.iter().map(|v| v.to_f64()).collect(),
            Tensor::BF16(a) => a.iter().map(|v| v.to_f64()).collect(),
            Tensor::I8(a) | Tensor::I4(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::U8(a) | Tensor::U4(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::I16(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::U16(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::I32(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::U32(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::U64(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::Bool(a) => a.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect(),
            Tensor::Str(_) => return None,
        })
    }

    /// Builds a tensor of `dtype` from f64 values (integers must be whole and in range).
    pub fn from_f64(dtype: DType, shape: &[usize], vals: &[f64]) -> Result<Tensor, String> {
        let n: usize = shape.iter().product();
        if n != vals.len() {
            return Err(format!("{} values do not fill shape {shape:?}", vals.len()));
        }
        let sh = ndarray::IxDyn(shape);
        fn ints<T: TryFrom<i64>>(vals: &[f64], dtype: DType) -> Result<Vec<T>, String> {
            vals.iter()
                .map(|&v| {
                    if v.fract() != 0.0 || !v.is_finite() {
                        return Err(format!("{v} is not a whole number for {dtype}"));
                    }
                    T::try_from(v as i64).map_err(|_| format!("{v} is out of range for {dtype}"))
                })
                .collect()
        }
        let arr = |v| ArrayD::from_shape_vec(sh.clone(), v).map_err(|e| e.to_string());
        Ok(match dtype {
            DType::F32 => Tensor::F32(
                ArrayD::from_shape_vec(sh.clone(), vals.iter().map(|&v| v as f32).collect())
                    .map_err(|e| e.to_string())?,
            ),
            DType::F64 => Tensor::F64(arr(vals.to_vec())?),
            DType::I64 => Tensor::I64(
                ArrayD::from_shape_vec(sh.clone(), ints::<i64>(vals, dtype)?)
                    .map_err(|e| e.to_string())?,
            ),
            DType::I32 => Tensor::I32(
                ArrayD::from_shape_vec(sh.clone(), ints::<i32>(vals, dtype)?)
                    .map_err(|e| e.to_string())?,
            ),
            DType::I8 => Tensor::I8(
                ArrayD::from_shape_vec(sh.clone(), ints::<i8>(vals, dtype)?)
                    .map_err(|e| e.to_string())?,
            ),
            DType::U8 => Tensor::U8(
                ArrayD::from_shape_vec(sh.clone(), ints::<u8>(vals, dtype)?)
                    .map_err(|e| e.to_string())?,
            ),
            DType::Bool => Tensor::Bool(
                ArrayD::from_shape_vec(sh.clone(), vals.iter().map(|&v| v != 0.0).collect())
                    .map_err(|e| e.to_string())?,
            ),
            other => {
                return Err(format!(
                    "values of type {other} cannot be given on the command line"
                ))
            }
        })
    }

    /// Integer values widened to i64 (floats and strings give `None`).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Tensor::I8(a) | Tensor::I4(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::U8(a) | Tensor::U4(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::I16(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::U16(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::I32(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::U32(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::I64(a) => a.iter().copied().collect(),
            Tensor::U64(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::Bool(a) => a.iter().map(|&v| v as i64).collect(),
            _ => return None,
        })
    }

    /// The slice at index `i` along `axis`, with that axis removed (`None` when the axis
    /// or the index is out of range).
    pub fn index_axis(&self, axis: usize, i: usize) -> Option<Tensor> {
        let shape = self.shape();
        if axis >= shape.len() || i >= shape[axis] {
            return None;
        }
        macro_rules! slice {
            ($($v:ident),*) => {
                match self {
                    $(Tensor::$v(a) => Tensor::$v(a.index_axis(ndarray::Axis(axis), i).to_owned()),)*
                }
            };
        }
        Some(slice!(
            F32, F64, F16, BF16, I8, U8, I16, U16, I32, U32, I64, U64, Bool, Str, I4, U4
        ))
    }

    /// The tensors stacked along a new first axis (`None` when `parts` is empty or the
    /// parts differ in element type or shape).
    pub fn stack(parts: &[Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        let (dtype, shape) = (first.dtype(), first.shape());
        if parts
            .iter()
            .any(|p| p.dtype() != dtype || p.shape() != shape)
        {
            return None;
        }
        macro_rules! stack {
            ($($v:ident),*) => {
                match first {
                    $(Tensor::$v(_) => {
                        let views: Vec<_> = parts
                            .iter()
                            .map(|p| match p {
                                Tensor::$v(a) => a.view(),
                                _ => unreachable!("element types checked equal"),
                            })
                            .collect();
                        Tensor::$v(ndarray::stack(ndarray::Axis(0), &views).ok()?)
                    })*
                }
            };
        }
        Some(stack!(
            F32, F64, F16, BF16, I8, U8, I16, U16, I32, U32, I64, U64, Bool, Str, I4, U4
        ))
    }

    /// A tensor of `dtype` with no element, of shape `shape` (`None` when the shape holds
    /// elements or the type has no host form).
    pub fn empty(dtype: DType, shape: &[usize]) -> Option<Tensor> {
        if shape.iter().product::<usize>() != 0 {
            return None;
        }
        let sh = ndarray::IxDyn(shape);
        macro_rules! empty {
            ($($d:ident => $v:ident),*) => {
                match dtype {
                    $(DType::$d => Tensor::$v(ArrayD::from_shape_vec(sh, Vec::new()).ok()?),)*
                    _ => return None,
                }
            };
        }
        Some(empty!(
            F32 => F32, F64 => F64, F16 => F16, BF16 => BF16, I8 => I8, U8 => U8,
            I16 => I16, U16 => U16, I32 => I32, U32 => U32, I64 => I64, U64 => U64,
            Bool => Bool, String => Str, I4 => I4, U4 => U4
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_onnx(d.onnx_code()), d);
        }
        assert_eq!(DType::from_onnx(99), DType::Other(99));
        assert_eq!(DType::F32.onnx_code(), 1);
        assert_eq!(DType::I4.onnx_code(), 22);
    }

    #[test]
    fn widening() {
        let t = Tensor::I8(ndarray::arr1(&[-3i8, 4]).into_dyn());
        assert_eq!(t.to_f64_vec().unwrap(), vec![-3.0, 4.0]);
        assert_eq!(t.shape(), vec![2]);
        assert_eq!(t.dtype(), DType::I8);
    }

    #[test]
    fn slices_along_an_axis() {
        let t = Tensor::F32(
            ndarray::ArrayD::from_shape_vec(
                ndarray::IxDyn(&[2, 3]),
                (0..6).map(|v| v as f32).collect(),
            )
            .unwrap(),
        );
        let s = t.index_axis(1, 2).unwrap();
        assert_eq!(s.shape(), vec![2]);
        assert_eq!(s.to_f64_vec().unwrap(), vec![2.0, 5.0]);
        assert!(t.index_axis(1, 3).is_none());
        assert!(t.index_axis(2, 0).is_none());
    }

    #[test]
    fn stacks_along_a_new_axis_and_makes_empty_tensors() {
        let a = Tensor::I64(ndarray::arr1(&[1i64, 2]).into_dyn());
        let b = Tensor::I64(ndarray::arr1(&[3i64, 4]).into_dyn());
        let s = Tensor::stack(&[a.clone(), b]).unwrap();
        assert_eq!(s.shape(), vec![2, 2]);
        assert_eq!(s.to_i64_vec().unwrap(), vec![1, 2, 3, 4]);
        let short = Tensor::I64(ndarray::arr1(&[5i64]).into_dyn());
        assert!(
            Tensor::stack(&[a.clone(), short]).is_none(),
            "shapes differ"
        );
        let f = Tensor::F32(ndarray::arr1(&[1f32, 2.0]).into_dyn());
        assert!(Tensor::stack(&[a, f]).is_none(), "types differ");
        assert!(Tensor::stack(&[]).is_none());
        let e = Tensor::empty(DType::F32, &[0, 2, 3]).unwrap();
        assert_eq!((e.dtype(), e.shape()), (DType::F32, vec![0, 2, 3]));
        assert!(Tensor::empty(DType::F32, &[1, 2]).is_none());
    }
}
