//! The one decoder of constant payloads: a [`ConstTensor`]'s stored values into a host
//! [`Tensor`]. Model initializers, tensor attributes and standalone tensor files all come
//! here: `onnx` turns their `TensorProto` into a `ConstTensor` (external data left in its
//! side file), and [`ConstTensor::to_tensor`] decodes it, reading external data then.
//!
//! The rules are ONNX's. Raw bytes win when present: little endian, sub-byte types packed
//! two per byte, low nibble first. Otherwise the typed list the element type lives in:
//! `float_data` for f32; `int32_data` for i8/u8/i16/u16/i32, bool, the bit patterns of
//! f16/bf16 and packed 4-bit pairs; `int64_data` for i64; `uint64_data` for u32/u64;
//! `double_data` for f64; `string_data` (UTF-8) for strings. A list entry outside its
//! element type's range is an error, never wrapped. Sizes use checked arithmetic: a
//! negative dimension, or dims whose element count or byte size overflows, is an error
//! naming the tensor, never a panic.

use super::tensor::{DType, Tensor};
use super::value::{ConstTensor, TensorData, TensorDataError};
use ndarray::{ArrayD, IxDyn};
use std::fmt::Display;

impl ConstTensor {
    /// Decodes the values into a host tensor, reading external data from its side file
    /// (a file that no longer holds it is an error naming the tensor and the file).
    pub fn to_tensor(&self) -> Result<Tensor, TensorDataError> {
        let bad = |what: String| TensorDataError::Bad {
            name: self.name.clone().unwrap_or_default(),
            what,
        };
        let (shape, count) = checked_shape(&self.dims).map_err(bad)?;
        let loaded;
        let data = match &self.data {
            // Fixed-width values are decoded from the side file chunk by chunk.
            TensorData::External(r)
                if matches!(self.dtype, DType::I4 | DType::U4 | DType::String) =>
            {
                loaded = TensorData::Raw(r.read().map_err(bad)?);
                &loaded
            }
            d => d,
        };
        let p = Payload {
            dtype: self.dtype,
            data,
            shape: &shape,
            count,
        };
        p.decode().map_err(bad)
    }
}

/// Dims as array sizes and their element count. A negative dimension, or dims whose
/// element count does not fit a `usize`, is an error.
fn checked_shape(dims: &[i64]) -> Result<(Vec<usize>, usize), String> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("dims {dims:?} hold more elements than memory can address"))?;
    Ok((shape, count))
}

/// One constant's stored values with the shape they must fill.
struct Payload<'a> {
    dtype: DType,
    data: &'a TensorData,
    shape: &'a [usize],
    count: usize,
}

impl Payload<'_> {
    /// The host tensor, by element type: raw bytes of the type's width, else its typed list.
    fn decode(&self) -> Result<Tensor, String> {
        Ok(match self.dtype {
            DType::F32 => Tensor::F32(self.values(f32::from_le_bytes, || self.floats())?),
            DType::F64 => Tensor::F64(self.values(f64::from_le_bytes, || self.doubles())?),
            DType::F16 => Tensor::F16(self.values(half::f16::from_le_bytes, || {
                self.int32s(|v| Ok(half::f16::from_bits(bits16(v))))
            })?),
            DType::BF16 => Tensor::BF16(self.values(half::bf16::from_le_bytes, || {
                self.int32s(|v| Ok(half::bf16::from_bits(bits16(v))))
            })?),
            DType::I8 => Tensor::I8(self.values(i8::from_le_bytes, || self.int32s(narrow))?),
            DType::U8 => Tensor::U8(self.values(u8::from_le_bytes, || self.int32s(narrow))?),
            DType::I16 => Tensor::I16(self.values(i16::from_le_bytes, || self.int32s(narrow))?),
            DType::U16 => Tensor::U16(self.values(u16::from_le_bytes, || self.int32s(narrow))?),
            DType::I32 => Tensor::I32(self.values(i32::from_le_bytes, || self.int32s(Ok))?),
            DType::U32 => Tensor::U32(self.values(u32::from_le_bytes, || self.uint64s(narrow))?),
            DType::I64 => Tensor::I64(self.values(i64::from_le_bytes, || self.int64s())?),
            DType::U64 => Tensor::U64(self.values(u64::from_le_bytes, || self.uint64s(Ok))?),
            DType::Bool => {
                Tensor::Bool(self.values(|[b]: [u8; 1]| b != 0, || self.int32s(|v| Ok(v != 0)))?)
            }
            DType::String => Tensor::Str(self.strings()?),
            DType::I4 => Tensor::I4(
                self.array(
                    self.nibbles()?
                        .into_iter()
                        // Sign-extend the 4-bit two's complement value.
                        .map(|n| ((n << 4) as i8) >> 4)
                        .collect(),
                )?,
            ),
            DType::U4 => Tensor::U4(self.array(self.nibbles()?)?),
            other => return Err(format!("element type {other} has no host tensor form")),
        })
    }

    /// Values of `N` little-endian bytes each from raw data, or from the typed list
    /// `typed` returns (`None` when the values are stored in a list that does not fit).
    fn values<T, const N: usize>(
        &self,
        from_le: impl Fn([u8; N]) -> T,
        typed: impl FnOnce() -> Option<Result<Vec<T>, String>>,
    ) -> Result<ArrayD<T>, String> {
        self.some_stored()?;
        let v = match self.raw() {
            Some(raw) => {
                if self.count.checked_mul(N) != Some(raw.len()) {
                    return Err(format!(
                        "raw_data holds {} bytes but dims {:?} need {} elements of {N} bytes",
                        raw.len(),
                        self.shape,
                        self.count
                    ));
                }
                raw.chunks_exact(N)
                    .map(|c| from_le(c.try_into().expect("chunks of N bytes")))
                    .collect()
            }
            None => match self.data {
                TensorData::External(r) => {
                    if self.count.checked_mul(N).map(|n| n as u64) != Some(r.len) {
                        return Err(format!(
                            "external data holds {} bytes but dims {:?} need {} elements of {N} bytes",
                            r.len, self.shape, self.count
                        ));
                    }
                    let mut v = Vec::new();
                    v.try_reserve_exact(self.count).map_err(|_| {
                        format!("cannot allocate {} values for external data", self.count)
                    })?;
                    r.read_chunks(N, |chunk| {
                        v.extend(
                            chunk
                                .chunks_exact(N)
                                .map(|c| from_le(c.try_into().expect("chunks of N bytes"))),
                        )
                    })?;
                    v
                }
                _ => typed().ok_or_else(|| self.wrong_storage())??,
            },
        };
        self.array(v)
    }

    /// Nothing stored is fine for no elements only.
    fn some_stored(&self) -> Result<(), String> {
        if matches!(self.data, TensorData::Empty) && self.count != 0 {
            return Err(format!(
                "no values stored but dims {:?} need {}",
                self.shape, self.count
            ));
        }
        Ok(())
    }

    /// The raw bytes, when the values are stored raw (nothing stored reads as no bytes).
    fn raw(&self) -> Option<&[u8]> {
        match self.data {
            TensorData::Raw(r) => Some(r),
            TensorData::Empty => Some(&[]),
            _ => None,
        }
    }

    fn array<T>(&self, v: Vec<T>) -> Result<ArrayD<T>, String> {
        ArrayD::from_shape_vec(IxDyn(self.shape), v)
            .map_err(|e| format!("dims {:?}: {e}", self.shape))
    }

    fn wrong_storage(&self) -> String {
        format!(
            "values stored as {} do not fit element type {}",
            storage_name(self.data),
            self.dtype
        )
    }

    /// Every entry of typed list `field`, converted; it must hold one entry per element.
    fn list<S, T>(
        &self,
        v: &[S],
        field: &str,
        conv: impl Fn(&S) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        if v.len() != self.count {
            return Err(format!(
                "{field} holds {} values but dims {:?} need {}",
                v.len(),
                self.shape,
                self.count
            ));
        }
        v.iter().map(conv).collect()
    }

    fn floats(&self) -> Option<Result<Vec<f32>, String>> {
        match self.data {
            TensorData::Floats(v) => Some(self.list(v, "float_data", |&x| Ok(x))),
            _ => None,
        }
    }

    fn doubles(&self) -> Option<Result<Vec<f64>, String>> {
        match self.data {
            TensorData::Doubles(v) => Some(self.list(v, "double_data", |&x| Ok(x))),
            _ => None,
        }
    }

    fn int32s<T>(&self, conv: impl Fn(i32) -> Result<T, String>) -> Option<Result<Vec<T>, String>> {
        match self.data {
            TensorData::Int32s(v) => Some(self.list(v, "int32_data", |&x| conv(x))),
            _ => None,
        }
    }

    fn int64s(&self) -> Option<Result<Vec<i64>, String>> {
        match self.data {
            TensorData::Int64s(v) => Some(self.list(v, "int64_data", |&x| Ok(x))),
            _ => None,
        }
    }

    fn uint64s<T>(
        &self,
        conv: impl Fn(u64) -> Result<T, String>,
    ) -> Option<Result<Vec<T>, String>> {
        match self.data {
            TensorData::Uint64s(v) => Some(self.list(v, "uint64_data", |&x| conv(x))),
            _ => None,
        }
    }

    /// Strings: `string_data` only (UTF-8); raw bytes cannot hold them.
    fn strings(&self) -> Result<ArrayD<String>, String> {
        self.some_stored()?;
        let v = match self.data {
            TensorData::Strings(v) => self.list(v, "string_data", |b| {
                String::from_utf8(b.clone())
                    .map_err(|_| "string_data entry is not UTF-8".to_string())
            })?,
            TensorData::Empty => Vec::new(),
            TensorData::Raw(_) => return Err("string tensors cannot use raw_data".into()),
            _ => return Err(self.wrong_storage()),
        };
        self.array(v)
    }

    /// 4-bit values, one per byte, from raw bytes or `int32_data` entries holding one
    /// packed byte each (two values, the first in the low nibble).
    fn nibbles(&self) -> Result<Vec<u8>, String> {
        self.some_stored()?;
        let packed: Vec<u8> = match (self.raw(), self.data) {
            (Some(raw), _) => raw.to_vec(),
            (None, TensorData::Int32s(v)) => v.iter().map(|&x| (x & 0xff) as u8).collect(),
            _ => return Err(self.wrong_storage()),
        };
        let need = self.count.div_ceil(2);
        if packed.len() != need {
            return Err(format!(
                "packed 4-bit data holds {} bytes but dims {:?} need {need}",
                packed.len(),
                self.shape
            ));
        }
        Ok(packed
            .iter()
            .flat_map(|&b| [b & 0x0f, b >> 4])
            .take(self.count)
            .collect())
    }
}

/// The 16-bit pattern of an f16/bf16 `int32_data` entry (its low half, as ONNX stores it).
fn bits16(v: i32) -> u16 {
    (v & 0xffff) as u16
}

/// A typed-list entry as a narrower integer type; out of range is an error.
fn narrow<S: Copy + Display, T: TryFrom<S>>(v: S) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("value {v} out of range for {}", std::any::type_name::<T>()))
}

/// The name of a storage form, for messages (the `TensorProto` field that holds the
/// values).
pub(crate) fn storage_name(d: &TensorData) -> &'static str {
    match d {
        TensorData::Raw(_) => "raw_data",
        TensorData::Floats(_) => "float_data",
        TensorData::Int32s(_) => "int32_data",
        TensorData::Int64s(_) => "int64_data",
        TensorData::Doubles(_) => "double_data",
        TensorData::Uint64s(_) => "uint64_data",
        TensorData::Strings(_) => "string_data",
        TensorData::External(_) => "external data",
        TensorData::Sparse(_) => "a sparse tensor",
        TensorData::Empty => "nothing",
    }
}
