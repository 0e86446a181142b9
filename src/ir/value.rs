//! Value types (element type + shape) and constant tensors as the IR stores them.
//!
//! A [`ConstTensor`] keeps the storage form it was read in (raw bytes, typed lists,
//! external file reference or an encoded sparse tensor) so that writing it back is
//! lossless; [`ConstTensor::to_tensor`] decodes it into a host [`Tensor`] and
//! [`ConstTensor::from_tensor`] builds one from values.

use super::graph::Carry;
use super::tensor::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};
use std::fmt;
use std::path::PathBuf;

/// One dimension of a tensor shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    Param(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(d) => write!(f, "{d}"),
            Dim::Param(p) => f.write_str(p),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Type of a value.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueType {
    /// A dense tensor; `shape` is `None` when the rank is unknown.
    Tensor {
        dtype: DType,
        shape: Option<Vec<Dim>>,
    },
    /// Any other type (sequence, map, optional, sparse, or a tensor type with
    /// denotations): the encoded `TypeProto`, kept as is.
    Opaque(Carry),
}

impl ValueType {
    /// A tensor type with a fully known shape.
    pub fn tensor(dtype: DType, dims: &[i64]) -> ValueType {
        ValueType::Tensor {
            dtype,
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
        }
    }

    /// Concrete dims when every dimension is known.
    pub fn known_dims(&self) -> Option<Vec<i64>> {
        match self {
            ValueType::Tensor {
                shape: Some(dims), ..
            } => dims
                .iter()
                .map(|d| match d {
                    Dim::Known(k) => Some(*k),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Text form used in dumps: `f32[1,3,N,?]`, `f32[*]` for unknown rank.
    pub fn display(&self) -> String {
        match self {
            ValueType::Tensor { dtype, shape } => match shape {
                Some(d) => format!(
                    "{}[{}]",
                    dtype,
                    d.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                None => format!("{dtype}[*]"),
            },
            ValueType::Opaque(_) => "opaque".to_string(),
        }
    }
}

/// Where external tensor data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRef {
    /// `location` key, relative to the model file's directory.
    pub location: String,
    pub offset: Option<u64>,
    pub length: Option<u64>,
    /// Other keys (e.g. `checksum`), in file order.
    pub other: Vec<(String, String)>,
    /// Directory the location is relative to.
    pub base_dir: PathBuf,
}

/// Storage of a constant tensor's values.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `raw_data`: little-endian packed bytes.
    Raw(Vec<u8>),
    Floats(Vec<f32>),
    Int32s(Vec<i32>),
    Int64s(Vec<i64>),
    Doubles(Vec<f64>),
    Uint64s(Vec<u64>),
    Strings(Vec<Vec<u8>>),
    /// Stored in a side file, not yet read.
    External(ExternalRef),
    /// An encoded `SparseTensorProto`, kept as is.
    Sparse(Carry),
    /// No data field set (an empty tensor).
    Empty,
}

/// A constant tensor (initializer or tensor attribute).
#[derive(Clone, Debug, PartialEq)]
pub struct ConstTensor {
    pub name: Option<String>,
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub data: TensorData,
    /// True when the tensor was read from external data (the writer keeps it there by default).
    pub was_external: bool,
    /// Unmodelled `TensorProto` fields (doc string, segment, metadata).
    pub carry: Carry,
}

/// Failure to decode a constant's values.
#[derive(Debug, thiserror::Error)]
pub enum TensorDataError {
    #[error("tensor '{name}': {what}")]
    Bad { name: String, what: String },
}

fn bad(t: &ConstTensor, what: impl Into<String>) -> TensorDataError {
    TensorDataError::Bad {
        name: t.name.clone().unwrap_or_default(),
        what: what.into(),
    }
}

impl ConstTensor {
    /// Number of elements from `dims`.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Storage size in bytes of the values (packed for sub-byte types), 0 for strings.
    pub fn byte_size(&self) -> usize {
        self.dtype
            .bits()
            .map(|b| (self.numel() * b).div_ceil(8))
            .unwrap_or(0)
    }

    /// Builds a raw-data constant from host values.
    pub fn from_tensor(name: Option<String>, t: &Tensor) -> ConstTensor {
        let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let mut raw = Vec::new();
        let data = match t {
            Tensor::F32(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::F64(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::F16(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::BF16(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::I8(a) => TensorData::Raw(a.iter().map(|&v| v as u8).collect()),
            Tensor::U8(a) => TensorData::Raw(a.iter().copied().collect()),
            Tensor::I16(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::U16(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::I32(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::U32(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::I64(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::U64(a) => {
                a.iter().for_each(|v| raw.extend(v.to_le_bytes()));
                TensorData::Raw(raw)
            }
            Tensor::Bool(a) => TensorData::Raw(a.iter().map(|&v| v as u8).collect()),
            Tensor::Str(a) => {
                TensorData::Strings(a.iter().map(|s| s.as_bytes().to_vec()).collect())
            }
            Tensor::I4(a) => TensorData::Raw(pack4(a.iter().map(|&v| v as u8))),
            Tensor::U4(a) => TensorData::Raw(pack4(a.iter().copied())),
        };
        ConstTensor {
            name,
            dtype: t.dtype(),
            dims,
            data,
            was_external: false,
            carry: Carry::default(),
        }
    }

    /// Decodes the values into a host tensor. External data must have been loaded first.
    pub fn to_tensor(&self) -> Result<Tensor, TensorDataError> {
        let shape: Vec<usize> = self.dims.iter().map(|&d| d.max(0) as usize).collect();
        let n = self.numel();
        fn mk_in<T>(
            t: &ConstTensor,
            shape: &[usize],
            v: Vec<T>,
        ) -> Result<ArrayD<T>, TensorDataError> {
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .map_err(|_| bad(t, "element count does not match dims"))
        }
        macro_rules! mk {
            ($v:expr) => {
                mk_in(self, &shape, $v)
            };
        }
        macro_rules! raw_le {
            ($ty:ty, $bytes:expr) => {{
                let w = std::mem::size_of::<$ty>();
                let b: &[u8] = $bytes;
                if b.len() != n * w {
                    return Err(bad(
                        self,
                        format!("raw_data has {} bytes, dims need {}", b.len(), n * w),
                    ));
                }
                b.chunks_exact(w)
                    .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk width")))
                    .collect::<Vec<$ty>>()
            }};
        }
        let d = &self.data;
        let empty: &[u8] = &[];
        let raw: Option<&[u8]> = match d {
            TensorData::Raw(r) => Some(r),
            TensorData::Empty => Some(empty),
            _ => None,
        };
        let wrong = || {
            bad(
                self,
                format!("storage {} does not fit dtype {}", kind(d), self.dtype),
            )
        };
        Ok(match self.dtype {
            DType::F32 => Tensor::F32(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(f32, r),
                (_, TensorData::Floats(v)) => v.clone(),
                _ => return Err(wrong()),
            })?),
            DType::F64 => Tensor::F64(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(f64, r),
                (_, TensorData::Doubles(v)) => v.clone(),
                _ => return Err(wrong()),
            })?),
            DType::F16 => Tensor::F16(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u16, r)
                    .into_iter()
                    .map(half::f16::from_bits)
                    .collect(),
                (_, TensorData::Int32s(v)) =>
                    v.iter().map(|&x| half::f16::from_bits(x as u16)).collect(),
                _ => return Err(wrong()),
            })?),
            DType::BF16 => Tensor::BF16(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u16, r)
                    .into_iter()
                    .map(half::bf16::from_bits)
                    .collect(),
                (_, TensorData::Int32s(v)) =>
                    v.iter().map(|&x| half::bf16::from_bits(x as u16)).collect(),
                _ => return Err(wrong()),
            })?),
            DType::I8 => Tensor::I8(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(i8, r),
                (_, TensorData::Int32s(v)) => v.iter().map(|&x| x as i8).collect(),
                _ => return Err(wrong()),
            })?),
            DType::U8 => Tensor::U8(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u8, r),
                (_, TensorData::Int32s(v)) => v.iter().map(|&x| x as u8).collect(),
                _ => return Err(wrong()),
            })?),
            DType::Bool => Tensor::Bool(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u8, r).into_iter().map(|x| x != 0).collect(),
                (_, TensorData::Int32s(v)) => v.iter().map(|&x| x != 0).collect(),
                _ => return Err(wrong()),
            })?),
            DType::I16 => Tensor::I16(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(i16, r),
                (_, TensorData::Int32s(v)) => v.iter().map(|&x| x as i16).collect(),
                _ => return Err(wrong()),
            })?),
            DType::U16 => Tensor::U16(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u16, r),
                (_, TensorData::Int32s(v)) => v.iter().map(|&x| x as u16).collect(),
                _ => return Err(wrong()),
            })?),
            DType::I32 => Tensor::I32(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(i32, r),
                (_, TensorData::Int32s(v)) => v.clone(),
                _ => return Err(wrong()),
            })?),
            DType::U32 => Tensor::U32(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u32, r),
                (_, TensorData::Uint64s(v)) => v.iter().map(|&x| x as u32).collect(),
                _ => return Err(wrong()),
            })?),
            DType::I64 => Tensor::I64(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(i64, r),
                (_, TensorData::Int64s(v)) => v.clone(),
                _ => return Err(wrong()),
            })?),
            DType::U64 => Tensor::U64(mk!(match (raw, d) {
                (Some(r), _) => raw_le!(u64, r),
                (_, TensorData::Uint64s(v)) => v.clone(),
                _ => return Err(wrong()),
            })?),
            DType::String => Tensor::Str(mk!(match d {
                TensorData::Strings(v) => v
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
                TensorData::Empty => Vec::new(),
                _ => return Err(wrong()),
            })?),
            DType::I4 | DType::U4 => {
                let vals: Vec<u8> = match (raw, d) {
                    (Some(r), _) => {
                        if r.len() != n.div_ceil(2) {
                            return Err(bad(
                                self,
                                "raw_data size does not fit a packed 4-bit tensor",
                            ));
                        }
                        unpack4(r, n)
                    }
                    (_, TensorData::Int32s(v)) => {
                        let packed: Vec<u8> = v.iter().map(|&x| x as u8).collect();
                        unpack4(&packed, n)
                    }
                    _ => return Err(wrong()),
                };
                if self.dtype == DType::I4 {
                    Tensor::I4(mk!(vals
                        .into_iter()
                        .map(|x| ((x << 4) as i8) >> 4)
                        .collect())?)
                } else {
                    Tensor::U4(mk!(vals)?)
                }
            }
            other => {
                return Err(bad(
                    self,
                    format!("element type {other} has no host representation"),
                ))
            }
        })
    }
}

fn kind(d: &TensorData) -> &'static str {
    match d {
        TensorData::Raw(_) => "raw_data",
        TensorData::Floats(_) => "float_data",
        TensorData::Int32s(_) => "int32_data",
        TensorData::Int64s(_) => "int64_data",
        TensorData::Doubles(_) => "double_data",
        TensorData::Uint64s(_) => "uint64_data",
        TensorData::Strings(_) => "string_data",
        TensorData::External(_) => "external data (not loaded)",
        TensorData::Sparse(_) => "sparse",
        TensorData::Empty => "empty",
    }
}

/// Packs 4-bit values two per byte, low nibble first (ONNX order).
pub fn pack4(vals: impl Iterator<Item = u8>) -> Vec<u8> {
    let v: Vec<u8> = vals.collect();
    v.chunks(2)
        .map(|c| (c[0] & 0x0f) | (c.get(1).copied().unwrap_or(0) & 0x0f) << 4)
        .collect()
}

/// Unpacks `n` 4-bit values (low nibble first) into one byte each.
pub fn unpack4(packed: &[u8], n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let b = packed[i / 2];
            if i % 2 == 0 {
                b & 0x0f
            } else {
                b >> 4
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_raw() {
        let cases = vec![
            Tensor::F32(ndarray::arr2(&[[1.5f32, -2.0], [0.0, 3.25]]).into_dyn()),
            Tensor::I64(ndarray::arr1(&[1i64, -7, 9]).into_dyn()),
            Tensor::I4(ndarray::arr1(&[-8i8, 7, -1]).into_dyn()),
            Tensor::U4(ndarray::arr1(&[0u8, 15, 3, 4]).into_dyn()),
            Tensor::Bool(ndarray::arr1(&[true, false]).into_dyn()),
        ];
        for t in cases {
            let c = ConstTensor::from_tensor(Some("t".into()), &t);
            assert_eq!(c.to_tensor().unwrap(), t);
        }
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let c = ConstTensor {
            name: Some("w".into()),
            dtype: DType::F32,
            dims: vec![3],
            data: TensorData::Raw(vec![0; 8]),
            was_external: false,
            carry: Carry::default(),
        };
        let e = c.to_tensor().unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("8 bytes"), "{e}");
    }
}
