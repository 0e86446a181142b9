//! Value types (element type + shape) and constant tensors as the IR stores them.
//!
//! A [`ConstTensor`] keeps the storage form it was read in (raw bytes, typed lists,
//! external file reference or an encoded sparse tensor) so that writing it back is
//! lossless; [`ConstTensor::from_tensor`] builds one from values, and
//! [`ConstTensor::to_tensor`] (in [`super::payload`], the one decoder of stored values)
//! turns one into a host [`Tensor`].

use super::graph::Carry;
use super::tensor::{DType, Tensor};
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
    /// `name` is empty for an unnamed tensor.
    #[error("{}{what}", if name.is_empty() { String::new() } else { format!("tensor '{name}': ") })]
    Bad { name: String, what: String },
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
