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
    /// The side file, resolved inside `base_dir` and checked to hold the span when the
    /// model was read.
    pub file: PathBuf,
    /// Where the tensor's bytes start in `file`, and how many there are.
    pub start: u64,
    pub len: u64,
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
    /// Stored in a side file, read only when the values are needed (`ir::external`).
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

fn bad(t: &ConstTensor, what: impl Into<String>) -> TensorDataError {
    TensorDataError::Bad {
        name: t.name.clone().unwrap_or_default(),
        what: what.into(),
    }
}

/// Number of elements of a tensor of `dims`: `None` when a dimension is negative or the
/// product does not fit in `usize`. Every size read from a file goes through a check like
/// this one before anything is allocated or multiplied further.
pub fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

/// Storage size in bytes of `count` elements of `bits` bits (packed below 8 bits), `None`
/// on overflow.
fn packed_bytes(count: usize, bits: usize) -> Option<usize> {
    count.checked_mul(bits).map(|b| b.div_ceil(8))
}

impl ConstTensor {
    /// Number of elements from `dims`. Saturates at `usize::MAX` for dims whose product
    /// does not fit (decoding refuses such tensors: see [`ConstTensor::check_size`]), so it
    /// never panics.
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// Number of elements from `dims`, `None` when a dimension is negative or the product
    /// overflows.
    pub fn checked_numel(&self) -> Option<usize> {
        element_count(&self.dims)
    }

    /// Storage size in bytes of the values (packed for sub-byte types), 0 for strings;
    /// saturates like [`ConstTensor::numel`].
    pub fn byte_size(&self) -> usize {
        self.checked_byte_size().unwrap_or(usize::MAX)
    }

    /// Storage size in bytes of the values, `None` when it does not fit in `usize`.
    pub fn checked_byte_size(&self) -> Option<usize> {
        match self.dtype.bits() {
            Some(b) => packed_bytes(self.checked_numel()?, b),
            None => self.checked_numel().map(|_| 0),
        }
    }

    /// Checks that the dims describe an addressable tensor (no negative dimension, element
    /// count and byte size within `usize`) and that the stored data holds exactly what they
    /// need: `raw_data` bytes, or entries of the typed field the element type uses. Sparse
    /// and not yet loaded external data are only checked for their dims.
    pub fn check_size(&self) -> Result<(), TensorDataError> {
        if let Some(d) = self.dims.iter().find(|&&d| d < 0) {
            return Err(bad(
                self,
                format!("dims {:?} hold a negative dimension {d}", self.dims),
            ));
        }
        let Some(n) = self.checked_numel() else {
            return Err(bad(
                self,
                format!(
                    "dims {:?} hold more elements than memory can address",
                    self.dims
                ),
            ));
        };
        let Some(bytes) = self.checked_byte_size() else {
            return Err(bad(
                self,
                format!(
                    "dims {:?} of {} have no byte size that fits memory",
                    self.dims, self.dtype
                ),
            ));
        };
        // Entries of each typed field per element (sub-byte types pack several per entry).
        let per_entry = |field: &TensorData| -> Option<usize> {
            use DType as D;
            Some(match (self.dtype, field) {
                (D::F32, TensorData::Floats(_))
                | (D::F64, TensorData::Doubles(_))
                | (D::I64, TensorData::Int64s(_))
                | (D::U32 | D::U64, TensorData::Uint64s(_))
                | (D::String, TensorData::Strings(_)) => n,
                (D::Complex64, TensorData::Floats(_)) | (D::Complex128, TensorData::Doubles(_)) => {
                    n.checked_mul(2)?
                }
                (D::I4 | D::U4 | D::F4E2M1, TensorData::Int32s(_)) => n.div_ceil(2),
                (D::I2 | D::U2, TensorData::Int32s(_)) => n.div_ceil(4),
                (d, TensorData::Int32s(_)) if d.bits().is_some_and(|b| b == 8 || b == 16) => n,
                (D::I32, TensorData::Int32s(_)) => n,
                _ => return None,
            })
        };
        let found = match &self.data {
            TensorData::Raw(r) => {
                // Packing of the 6-bit float types is not checked here.
                let sized = self.dtype.bits().is_some_and(|b| b != 6);
                if sized && r.len() != bytes {
                    return Err(bad(
                        self,
                        format!(
                            "raw_data holds {} bytes but dims {:?} of {} need {bytes}",
                            r.len(),
                            self.dims,
                            self.dtype
                        ),
                    ));
                }
                return Ok(());
            }
            TensorData::Floats(v) => v.len(),
            TensorData::Int32s(v) => v.len(),
            TensorData::Int64s(v) => v.len(),
            TensorData::Doubles(v) => v.len(),
            TensorData::Uint64s(v) => v.len(),
            TensorData::Strings(v) => v.len(),
            TensorData::Empty if n > 0 => {
                return Err(bad(
                    self,
                    format!("holds no data but dims {:?} need {n} values", self.dims),
                ))
            }
            TensorData::Empty | TensorData::External(_) | TensorData::Sparse(_) => return Ok(()),
        };
        match per_entry(&self.data) {
            Some(want) if want != found => Err(bad(
                self,
                format!(
                    "{} holds {found} entries but dims {:?} of {} need {want}",
                    super::payload::storage_name(&self.data),
                    self.dims,
                    self.dtype
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Builds a raw-data constant from host values.
    pub fn from_tensor(name: Option<String>, t: &Tensor) -> ConstTensor {
        let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let data = match t {
            Tensor::F32(a) => TensorData::Raw(le_bytes(a, f32::to_le_bytes)),
            Tensor::F64(a) => TensorData::Raw(le_bytes(a, f64::to_le_bytes)),
            Tensor::F16(a) => TensorData::Raw(le_bytes(a, half::f16::to_le_bytes)),
            Tensor::BF16(a) => TensorData::Raw(le_bytes(a, half::bf16::to_le_bytes)),
            Tensor::I8(a) => TensorData::Raw(le_bytes(a, i8::to_le_bytes)),
            Tensor::U8(a) => TensorData::Raw(le_bytes(a, u8::to_le_bytes)),
            Tensor::I16(a) => TensorData::Raw(le_bytes(a, i16::to_le_bytes)),
            Tensor::U16(a) => TensorData::Raw(le_bytes(a, u16::to_le_bytes)),
            Tensor::I32(a) => TensorData::Raw(le_bytes(a, i32::to_le_bytes)),
            Tensor::U32(a) => TensorData::Raw(le_bytes(a, u32::to_le_bytes)),
            Tensor::I64(a) => TensorData::Raw(le_bytes(a, i64::to_le_bytes)),
            Tensor::U64(a) => TensorData::Raw(le_bytes(a, u64::to_le_bytes)),
            Tensor::Bool(a) => TensorData::Raw(le_bytes(a, |v| [v as u8])),
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

/// The little-endian bytes of every value in logical (row-major) order: a slice walk when
/// the values are contiguous in that order, so the loop compiles to plain stores.
fn le_bytes<T: Copy, const N: usize>(a: &ndarray::ArrayD<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut raw = vec![0u8; a.len() * N];
    match a.as_slice() {
        Some(s) => {
            for (out, &v) in raw.chunks_exact_mut(N).zip(s) {
                out.copy_from_slice(&f(v));
            }
        }
        None => {
            for (out, &v) in raw.chunks_exact_mut(N).zip(a.iter()) {
                out.copy_from_slice(&f(v));
            }
        }
    }
    raw
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

    fn raw(dims: Vec<i64>, dtype: DType, data: TensorData) -> ConstTensor {
        ConstTensor {
            name: Some("w".into()),
            dtype,
            dims,
            data,
            was_external: false,
            carry: Carry::default(),
        }
    }

    #[test]
    fn impossible_sizes_are_errors_not_panics() {
        let huge = raw(
            vec![1 << 40, 1 << 40],
            DType::F32,
            TensorData::Raw(vec![0; 16]),
        );
        assert_eq!(huge.checked_numel(), None);
        assert_eq!(huge.numel(), usize::MAX);
        assert_eq!(huge.byte_size(), usize::MAX);
        let e = huge.check_size().unwrap_err().to_string();
        assert!(
            e.contains("'w'") && e.contains("more elements than memory can address"),
            "{e}"
        );
        assert!(huge.to_tensor().is_err());
        // The element count fits, the byte count does not.
        let bytes = raw(vec![1 << 62], DType::F64, TensorData::Empty);
        assert!(bytes.checked_numel().is_some() && bytes.checked_byte_size().is_none());
        let e = bytes.check_size().unwrap_err().to_string();
        assert!(e.contains("no byte size"), "{e}");
        let neg = raw(vec![2, -3], DType::F32, TensorData::Floats(vec![]));
        assert!(neg
            .check_size()
            .unwrap_err()
            .to_string()
            .contains("negative"));
        // Typed fields hold one entry per element, sub-byte types a packed entry per two.
        let short = raw(vec![8], DType::I4, TensorData::Int32s(vec![1]));
        let e = short.check_size().unwrap_err().to_string();
        assert!(
            e.contains("int32_data holds 1 entries") && e.contains("need 4"),
            "{e}"
        );
        assert!(short.to_tensor().is_err());
        let ok = raw(vec![3], DType::U4, TensorData::Int32s(vec![0x21, 0x03]));
        ok.check_size().unwrap();
        assert_eq!(
            ok.to_tensor().unwrap(),
            Tensor::U4(ndarray::arr1(&[1u8, 2, 3]).into_dyn())
        );
        let floats = raw(vec![2, 2], DType::F32, TensorData::Floats(vec![1.0; 3]));
        assert!(floats.check_size().is_err());
        let empty = raw(vec![2], DType::F32, TensorData::Empty);
        assert!(empty
            .check_size()
            .unwrap_err()
            .to_string()
            .contains("no data"));
        raw(vec![0, 5], DType::F32, TensorData::Empty)
            .check_size()
            .unwrap();
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
