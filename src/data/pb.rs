//! ONNX `TensorProto` files (`input_0.pb`) and the `test_data_set_N/` directory layout.
//!
//! Decoding follows the ONNX rules: `raw_data` (little endian, sub-byte types packed two per
//! byte, low nibble first) wins when present; otherwise the typed field for the element type
//! (`float_data`, `int32_data` for ≤32-bit integers, bool and the bit patterns of f16/bf16,
//! `int64_data`, `uint64_data` for u32/u64, `double_data`, `string_data`). External data is
//! read relative to the `.pb` file's directory.

use super::DataError;
use crate::ir::tensor::{DType, Tensor};
use crate::onnx::proto::TensorProto;
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use std::path::{Path, PathBuf};

/// Reads one serialized `TensorProto`; returns its name (empty if unnamed) and its value.
pub fn read_tensor_pb(path: &Path) -> Result<(String, Tensor), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let proto = TensorProto::decode(bytes.as_slice()).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        msg: format!("not a serialized TensorProto: {e}"),
    })?;
    let name = proto.name.clone().unwrap_or_default();
    let tensor = tensor_from_proto(&proto, path.parent()).map_err(|msg| DataError::Format {
        path: path.to_path_buf(),
        msg: if name.is_empty() {
            msg
        } else {
            format!("tensor '{name}': {msg}")
        },
    })?;
    Ok((name, tensor))
}

/// Converts a `TensorProto` into a host tensor.
///
/// `base_dir` is where relative external-data locations are resolved; `None` rejects
/// external data. Errors are plain messages; callers add the file or tensor name.
pub fn tensor_from_proto(p: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, String> {
    if p.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let shape = p
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("element count overflows")?;
    let dtype = DType::from_onnx(p.data_type.unwrap_or(0));

    let external;
    let raw: Option<&[u8]> = if p.data_location == Some(1) {
        external = read_external(p, base_dir)?;
        Some(&external)
    } else {
        p.raw_data.as_deref()
    };

    fn arr<T>(shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>, String> {
        ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| format!("shape {shape:?}: {e}"))
    }
    let check = |n: usize, field: &str| {
        if n == count {
            Ok(())
        } else {
            Err(format!(
                "{field} holds {n} values but dims {shape:?} need {count}"
            ))
        }
    };

    /// Fixed-width little-endian elements of `raw`, checked against the element count.
    fn le<T, const N: usize>(
        raw: &[u8],
        count: usize,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, String> {
        if count.checked_mul(N) != Some(raw.len()) {
            return Err(format!(
                "raw_data holds {} bytes but dims need {count} elements of {N} bytes",
                raw.len()
            ));
        }
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                conv(b)
            })
            .collect())
    }
    macro_rules! from_raw {
        ($raw:expr, $t:ty, $n:expr) => {
            le::<$t, $n>($raw, count, <$t>::from_le_bytes)?
        };
    }
    macro_rules! typed {
        ($field:ident, $name:literal, $conv:expr) => {{
            check(p.$field.len(), $name)?;
            p.$field
                .iter()
                .map($conv)
                .collect::<Result<Vec<_>, String>>()?
        }};
    }
    fn narrow<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T, String> {
        T::try_from(v).map_err(|_| format!("value {v} out of range for {what}"))
    }

    Ok(match dtype {
        DType::F32 => Tensor::F32(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, f32, 4),
                None => typed!(float_data, "float_data", |&v| Ok(v)),
            },
        )?),
        DType::F64 => Tensor::F64(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, f64, 8),
                None => typed!(double_data, "double_data", |&v| Ok(v)),
            },
        )?),
        DType::F16 => Tensor::F16(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u16, 2)
                    .into_iter()
                    .map(half::f16::from_bits)
                    .collect(),
                None => typed!(int32_data, "int32_data", |&v| Ok(half::f16::from_bits(
                    narrow::<u16>(i64::from(v) & 0xffff, "f16 bits")?
                ))),
            },
        )?),
        DType::BF16 => Tensor::BF16(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u16, 2)
                    .into_iter()
                    .map(half::bf16::from_bits)
                    .collect(),
                None => typed!(int32_data, "int32_data", |&v| Ok(half::bf16::from_bits(
                    narrow::<u16>(i64::from(v) & 0xffff, "bf16 bits")?
                ))),
            },
        )?),
        DType::I8 => Tensor::I8(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, i8, 1),
                None => typed!(int32_data, "int32_data", |&v| narrow(v.into(), "i8")),
            },
        )?),
        DType::U8 => Tensor::U8(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u8, 1),
                None => typed!(int32_data, "int32_data", |&v| narrow(v.into(), "u8")),
            },
        )?),
        DType::I16 => Tensor::I16(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, i16, 2),
                None => typed!(int32_data, "int32_data", |&v| narrow(v.into(), "i16")),
            },
        )?),
        DType::U16 => Tensor::U16(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u16, 2),
                None => typed!(int32_data, "int32_data", |&v| narrow(v.into(), "u16")),
            },
        )?),
        DType::I32 => Tensor::I32(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, i32, 4),
                None => typed!(int32_data, "int32_data", |&v| Ok(v)),
            },
        )?),
        DType::U32 => Tensor::U32(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u32, 4),
                None => typed!(uint64_data, "uint64_data", |&v| u32::try_from(v)
                    .map_err(|_| format!("value {v} out of range for u32"))),
            },
        )?),
        DType::I64 => Tensor::I64(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, i64, 8),
                None => typed!(int64_data, "int64_data", |&v| Ok(v)),
            },
        )?),
        DType::U64 => Tensor::U64(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u64, 8),
                None => typed!(uint64_data, "uint64_data", |&v| Ok(v)),
            },
        )?),
        DType::Bool => Tensor::Bool(arr(
            &shape,
            match raw {
                Some(r) => from_raw!(r, u8, 1).into_iter().map(|b| b != 0).collect(),
                None => typed!(int32_data, "int32_data", |&v| Ok(v != 0)),
            },
        )?),
        DType::I4 | DType::U4 => {
            // Two elements per byte (raw) or per int32_data entry, first in the low nibble.
            let packed: Vec<u8> = match raw {
                Some(r) => r.to_vec(),
                None => p.int32_data.iter().map(|&v| (v & 0xff) as u8).collect(),
            };
            let need = count.div_ceil(2);
            if packed.len() != need {
                return Err(format!(
                    "packed 4-bit data holds {} bytes but dims {shape:?} need {need}",
                    packed.len()
                ));
            }
            let nibbles = packed.iter().flat_map(|&b| [b & 0x0f, b >> 4]).take(count);
            if dtype == DType::U4 {
                Tensor::U4(arr(&shape, nibbles.collect())?)
            } else {
                // Sign-extend the 4-bit two's complement value.
                Tensor::I4(arr(
                    &shape,
                    nibbles.map(|n| ((n << 4) as i8) >> 4).collect(),
                )?)
            }
        }
        DType::String => {
            if raw.is_some() {
                return Err("string tensors cannot use raw_data".into());
            }
            Tensor::Str(arr(
                &shape,
                typed!(string_data, "string_data", |b| String::from_utf8(b.clone())
                    .map_err(|_| "string_data entry is not UTF-8".to_string())),
            )?)
        }
        other => return Err(format!("element type {other} has no host tensor form")),
    })
}

fn read_external(p: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let base = base_dir.ok_or("external data without a base directory")?;
    let get = |k: &str| {
        p.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(k))
            .and_then(|e| e.value.clone())
    };
    let location = get("location").ok_or("external data without a location")?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "external data location '{location}' leaves the tensor's directory"
        ));
    }
    let parse = |k: &str| -> Result<Option<usize>, String> {
        get(k)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("external data {k} '{v}' is not a number"))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    let file = base.join(rel);
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let end = match length {
        Some(l) => offset.checked_add(l),
        None => Some(bytes.len()),
    }
    .filter(|&e| e <= bytes.len() && offset <= e)
    .ok_or_else(|| {
        format!(
            "external data range (offset {offset}, length {length:?}) exceeds {} ({} bytes)",
            file.display(),
            bytes.len()
        )
    })?;
    Ok(bytes[offset..end].to_vec())
}

/// The `test_data_set_N` folders under `dir` in numeric order, or `dir` itself when it is one set.
pub(super) fn list_sets(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut sets: Vec<(u64, PathBuf)> = Vec::new();
    let mut has_inputs = false;
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            if let Some(n) = numbered(&name, "test_data_set_", "") {
                sets.push((n, path));
            }
        } else if numbered(&name, "input_", ".pb").is_some() {
            has_inputs = true;
        }
    }
    sets.sort();
    if sets.is_empty() && has_inputs {
        return Ok(vec![dir.to_path_buf()]);
    }
    Ok(sets.into_iter().map(|(_, p)| p).collect())
}

/// One set's `input_K.pb` and `output_K.pb` files, each in numeric order of K.
pub(super) fn set_files(set: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for entry in std::fs::read_dir(set).map_err(|e| DataError::io(set, e))? {
        let entry = entry.map_err(|e| DataError::io(set, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(k) = numbered(&name, "input_", ".pb") {
            inputs.push((k, entry.path()));
        } else if let Some(k) = numbered(&name, "output_", ".pb") {
            outputs.push((k, entry.path()));
        }
    }
    inputs.sort();
    outputs.sort();
    Ok((
        inputs.into_iter().map(|(_, p)| p).collect(),
        outputs.into_iter().map(|(_, p)| p).collect(),
    ))
}

/// `K` from `{prefix}K{suffix}` when K is a decimal number.
pub(super) fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let mid = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if mid.is_empty() || !mid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    mid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::StringStringEntryProto;
    use ndarray::arr1;

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type: Some(dtype.onnx_code()),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_data_little_endian() {
        let mut p = proto(DType::F32, &[2]);
        p.raw_data = Some(
            [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::F32(arr1(&[1.5f32, -2.0]).into_dyn())
        );
        let mut p = proto(DType::I64, &[]);
        p.raw_data = Some(16000i64.to_le_bytes().to_vec());
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 16000))
        );
        let mut p = proto(DType::Bool, &[3]);
        p.raw_data = Some(vec![1, 0, 2]);
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::Bool(arr1(&[true, false, true]).into_dyn())
        );
    }

    #[test]
    fn typed_fields_per_onnx_rules() {
        let mut p = proto(DType::F32, &[1, 2]);
        p.float_data = vec![0.25, 4.0];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap().to_f64_vec().unwrap(),
            [0.25, 4.0]
        );

        let mut p = proto(DType::F64, &[1]);
        p.double_data = vec![-7.5];
        assert_eq!(tensor_from_proto(&p, None).unwrap().dtype(), DType::F64);

        let mut p = proto(DType::I8, &[2]);
        p.int32_data = vec![-128, 127];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::I8(arr1(&[-128i8, 127]).into_dyn())
        );

        let mut p = proto(DType::U8, &[1]);
        p.int32_data = vec![300];
        assert!(tensor_from_proto(&p, None)
            .unwrap_err()
            .contains("out of range"));

        let mut p = proto(DType::F16, &[1]);
        p.int32_data = vec![i32::from(half::f16::from_f32(-1.5).to_bits())];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::F16(arr1(&[half::f16::from_f32(-1.5)]).into_dyn())
        );

        let mut p = proto(DType::I64, &[2]);
        p.int64_data = vec![i64::MAX, -1];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap().to_i64_vec().unwrap(),
            [i64::MAX, -1]
        );

        let mut p = proto(DType::U32, &[1]);
        p.uint64_data = vec![u64::from(u32::MAX)];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::U32(arr1(&[u32::MAX]).into_dyn())
        );

        let mut p = proto(DType::Bool, &[2]);
        p.int32_data = vec![0, 1];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::Bool(arr1(&[false, true]).into_dyn())
        );

        let mut p = proto(DType::String, &[2]);
        p.string_data = vec![b"a".to_vec(), b"bc".to_vec()];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::Str(arr1(&["a".to_string(), "bc".to_string()]).into_dyn())
        );
    }

    #[test]
    fn four_bit_types_unpack_low_nibble_first() {
        let mut p = proto(DType::I4, &[3]);
        p.raw_data = Some(vec![0x8F, 0x07]); // -1, -8, 7
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::I4(arr1(&[-1i8, -8, 7]).into_dyn())
        );
        let mut p = proto(DType::U4, &[2]);
        p.int32_data = vec![0xF3];
        assert_eq!(
            tensor_from_proto(&p, None).unwrap(),
            Tensor::U4(arr1(&[3u8, 15]).into_dyn())
        );
    }

    #[test]
    fn count_mismatches_and_odd_types_are_errors() {
        let mut p = proto(DType::F32, &[3]);
        p.float_data = vec![1.0];
        assert!(tensor_from_proto(&p, None).unwrap_err().contains("need 3"));
        let mut p = proto(DType::F32, &[2]);
        p.raw_data = Some(vec![0; 7]);
        assert!(tensor_from_proto(&p, None).is_err());
        let mut p = proto(DType::F32, &[-1]);
        p.raw_data = Some(vec![]);
        assert!(tensor_from_proto(&p, None)
            .unwrap_err()
            .contains("negative"));
        let p = proto(DType::Complex64, &[1]);
        assert!(tensor_from_proto(&p, None).unwrap_err().contains("c64"));
        let p = proto(DType::Other(0), &[1]);
        assert!(tensor_from_proto(&p, None).is_err());
    }

    #[test]
    fn external_data_is_read_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut blob = vec![0u8; 4];
        blob.extend([3i32, 4].iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(dir.path().join("w.bin"), &blob).unwrap();
        let entry = |k: &str, v: &str| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        let mut p = proto(DType::I32, &[2]);
        p.data_location = Some(1);
        p.external_data = vec![
            entry("location", "w.bin"),
            entry("offset", "4"),
            entry("length", "8"),
        ];
        assert_eq!(
            tensor_from_proto(&p, Some(dir.path())).unwrap(),
            Tensor::I32(arr1(&[3, 4]).into_dyn())
        );
        p.external_data[2] = entry("length", "800");
        assert!(tensor_from_proto(&p, Some(dir.path()))
            .unwrap_err()
            .contains("exceeds"));
        p.external_data[0] = entry("location", "../w.bin");
        assert!(tensor_from_proto(&p, Some(dir.path()))
            .unwrap_err()
            .contains("leaves"));
    }

    #[test]
    fn read_tensor_pb_names_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input_0.pb");
        let mut p = proto(DType::F32, &[1]);
        p.name = Some("x".into());
        p.float_data = vec![2.0];
        std::fs::write(&path, p.encode_to_vec()).unwrap();
        let (name, t) = read_tensor_pb(&path).unwrap();
        assert_eq!(name, "x");
        assert_eq!(t, Tensor::F32(arr1(&[2.0f32]).into_dyn()));

        std::fs::write(&path, [0xff, 0xff, 0xff]).unwrap();
        let e = read_tensor_pb(&path).unwrap_err().to_string();
        assert!(e.contains("input_0.pb") && e.contains("TensorProto"), "{e}");

        p.float_data.clear();
        std::fs::write(&path, p.encode_to_vec()).unwrap();
        let e = read_tensor_pb(&path).unwrap_err().to_string();
        assert!(e.contains("input_0.pb") && e.contains("'x'"), "{e}");
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered("input_12.pb", "input_", ".pb"), Some(12));
        assert_eq!(numbered("input_.pb", "input_", ".pb"), None);
        assert_eq!(numbered("input_a.pb", "input_", ".pb"), None);
        assert_eq!(numbered("test_data_set_3", "test_data_set_", ""), Some(3));
    }
}
