//! `TensorProto` → IR, for every tensor qrange reads: model initializers, tensor
//! attributes and standalone tensor files (`input_0.pb`).
//!
//! [`const_tensor`] keeps the storage form the file used (raw bytes or the typed list,
//! so that encoding is lossless); external data, relative to the directory of the file
//! that names it, is located and checked but stays in its side file until needed. [`host_tensor`] decodes a standalone tensor
//! into values with the IR's one payload decoder, [`ConstTensor::to_tensor`]: the same
//! bytes decode to the same values whether they sit in a model or in a data file.

use super::proto;
use super::OnnxError;
use crate::ir::{Carry, ConstTensor, DType, ExternalRef, Tensor, TensorData};
use prost::Message;
use std::path::Path;

/// The IR constant of `t`; external data (relative to `base_dir`) is located and checked
/// but left in its file. `origin` names the file in errors.
pub fn const_tensor(
    t: proto::TensorProto,
    base_dir: &Path,
    origin: &Path,
) -> Result<ConstTensor, OnnxError> {
    let name = t.name.clone();
    let external = t.data_location == Some(proto::tensor_proto::DataLocation::External as i32);
    let carry = proto::TensorProto {
        doc_string: t.doc_string.clone(),
        segment: t.segment,
        metadata_props: t.metadata_props.clone(),
        data_location: if external { None } else { t.data_location },
        ..Default::default()
    };
    let dtype = DType::from_onnx(t.data_type.unwrap_or(0));
    let data = if external {
        TensorData::External(locate_external(&t, dtype, base_dir, origin)?)
    } else if let Some(raw) = t.raw_data {
        TensorData::Raw(raw)
    } else if !t.float_data.is_empty() {
        TensorData::Floats(t.float_data)
    } else if !t.int32_data.is_empty() {
        TensorData::Int32s(t.int32_data)
    } else if !t.int64_data.is_empty() {
        TensorData::Int64s(t.int64_data)
    } else if !t.double_data.is_empty() {
        TensorData::Doubles(t.double_data)
    } else if !t.uint64_data.is_empty() {
        TensorData::Uint64s(t.uint64_data)
    } else if !t.string_data.is_empty() {
        TensorData::Strings(t.string_data)
    } else {
        TensorData::Empty
    };
    Ok(ConstTensor {
        name,
        dtype,
        dims: t.dims,
        data,
        was_external: external,
        carry: Carry(carry.encode_to_vec()),
    })
}

/// The values of a standalone tensor (external data read from `base_dir`). `origin` names
/// the file in errors, which also name the tensor when it has a name.
pub fn host_tensor(
    t: proto::TensorProto,
    base_dir: &Path,
    origin: &Path,
) -> Result<Tensor, OnnxError> {
    let decode_err = |what: String| OnnxError::Decode {
        path: origin.to_path_buf(),
        what,
    };
    if t.segment.is_some() {
        let name = t.name.clone().unwrap_or_default();
        return Err(decode_err(if name.is_empty() {
            "segmented tensors are not supported".into()
        } else {
            format!("tensor '{name}': segmented tensors are not supported")
        }));
    }
    let c = const_tensor(t, base_dir, origin)?;
    c.to_tensor().map_err(|e| decode_err(e.to_string()))
}

/// The reference to an external tensor's bytes, after checking that its dims have a byte
/// size and that its side file holds them.
fn locate_external(
    t: &proto::TensorProto,
    dtype: DType,
    base_dir: &Path,
    origin: &Path,
) -> Result<ExternalRef, OnnxError> {
    let tname = t.name.clone().unwrap_or_default();
    let mut r = ExternalRef {
        location: String::new(),
        offset: None,
        length: None,
        other: Vec::new(),
        base_dir: base_dir.to_path_buf(),
        file: Default::default(),
        start: 0,
        len: 0,
    };
    for kv in &t.external_data {
        let k = kv.key.clone().unwrap_or_default();
        let v = kv.value.clone().unwrap_or_default();
        let num = || {
            v.parse::<u64>().map_err(|_| OnnxError::Decode {
                path: origin.to_path_buf(),
                what: format!("tensor '{tname}': external data {k} '{v}' is not a number"),
            })
        };
        match k.as_str() {
            "location" => r.location = v.clone(),
            "offset" => r.offset = Some(num()?),
            "length" => r.length = Some(num()?),
            _ => r.other.push((k.clone(), v.clone())),
        }
    }
    // The length check below computes the byte size of the dims: it must exist.
    let bits = dtype.bits().unwrap_or(0);
    let sized = t
        .dims
        .iter()
        .try_fold(1usize, |a, &d| {
            a.checked_mul(usize::try_from(d.max(0)).ok()?)
        })
        .and_then(|n| n.checked_mul(bits));
    if sized.is_none() {
        return Err(OnnxError::ExternalData {
            path: origin.to_path_buf(),
            tensor: tname,
            what: format!(
                "dims {:?} of {dtype} have no byte size that fits memory",
                t.dims
            ),
        });
    }
    super::external::locate(&tname, dtype, &t.dims, r, origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::value::pack4;
    use crate::onnx::proto::{StringStringEntryProto, TensorProto};
    use half::{bf16, f16};
    use ndarray::{arr1, ArrayD, IxDyn};
    use std::path::Path;

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type: Some(dtype.onnx_code()),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    fn host_in(p: &TensorProto, dir: &Path) -> Result<Tensor, String> {
        host_tensor(p.clone(), dir, &dir.join("t.pb")).map_err(|e| e.to_string())
    }

    fn host(p: &TensorProto) -> Result<Tensor, String> {
        host_in(p, Path::new("."))
    }

    /// One tensor of every element type with a host form, with its extreme values.
    fn every_host_type() -> Vec<Tensor> {
        vec![
            Tensor::F32(arr1(&[1.5f32, -0.0, f32::MAX]).into_dyn()),
            Tensor::F64(arr1(&[-7.25f64, f64::MIN_POSITIVE]).into_dyn()),
            Tensor::F16(arr1(&[f16::from_f32(-1.5), f16::MAX, f16::NEG_INFINITY]).into_dyn()),
            Tensor::BF16(arr1(&[bf16::from_f32(3.0), bf16::MIN]).into_dyn()),
            Tensor::I8(arr1(&[-128i8, 0, 127]).into_dyn()),
            Tensor::U8(arr1(&[0u8, 255]).into_dyn()),
            Tensor::I16(arr1(&[i16::MIN, i16::MAX]).into_dyn()),
            Tensor::U16(arr1(&[0u16, u16::MAX]).into_dyn()),
            Tensor::I32(arr1(&[i32::MIN, -1, i32::MAX]).into_dyn()),
            Tensor::U32(arr1(&[0u32, u32::MAX]).into_dyn()),
            Tensor::I64(arr1(&[i64::MIN, i64::MAX]).into_dyn()),
            Tensor::U64(arr1(&[0u64, u64::MAX]).into_dyn()),
            Tensor::Bool(arr1(&[true, false, true]).into_dyn()),
            Tensor::Str(arr1(&["a".to_string(), "\u{fc}n\u{ef}".to_string()]).into_dyn()),
            Tensor::I4(arr1(&[-8i8, 7, -1]).into_dyn()),
            Tensor::U4(arr1(&[0u8, 15, 3]).into_dyn()),
        ]
    }

    /// `t` in the typed field ONNX keeps its element type in.
    fn typed(t: &Tensor) -> TensorProto {
        let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let mut p = proto(t.dtype(), &dims);
        match t {
            Tensor::F32(a) => p.float_data = a.iter().copied().collect(),
            Tensor::F64(a) => p.double_data = a.iter().copied().collect(),
            Tensor::F16(a) => p.int32_data = a.iter().map(|v| i32::from(v.to_bits())).collect(),
            Tensor::BF16(a) => p.int32_data = a.iter().map(|v| i32::from(v.to_bits())).collect(),
            Tensor::I8(a) => p.int32_data = a.iter().map(|&v| i32::from(v)).collect(),
            Tensor::U8(a) => p.int32_data = a.iter().map(|&v| i32::from(v)).collect(),
            Tensor::I16(a) => p.int32_data = a.iter().map(|&v| i32::from(v)).collect(),
            Tensor::U16(a) => p.int32_data = a.iter().map(|&v| i32::from(v)).collect(),
            Tensor::I32(a) => p.int32_data = a.iter().copied().collect(),
            Tensor::U32(a) => p.uint64_data = a.iter().map(|&v| u64::from(v)).collect(),
            Tensor::I64(a) => p.int64_data = a.iter().copied().collect(),
            Tensor::U64(a) => p.uint64_data = a.iter().copied().collect(),
            Tensor::Bool(a) => p.int32_data = a.iter().map(|&v| i32::from(v)).collect(),
            Tensor::Str(a) => p.string_data = a.iter().map(|s| s.as_bytes().to_vec()).collect(),
            Tensor::I4(a) => {
                p.int32_data = pack4(a.iter().map(|&v| v as u8))
                    .into_iter()
                    .map(i32::from)
                    .collect()
            }
            Tensor::U4(a) => {
                p.int32_data = pack4(a.iter().copied())
                    .into_iter()
                    .map(i32::from)
                    .collect()
            }
        }
        p
    }

    /// `t` as little-endian `raw_data` (None for strings, which have no raw form).
    fn raw(t: &Tensor) -> Option<TensorProto> {
        let TensorData::Raw(bytes) = ConstTensor::from_tensor(None, t).data else {
            return None;
        };
        let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let mut p = proto(t.dtype(), &dims);
        p.raw_data = Some(bytes);
        Some(p)
    }

    /// Equal values, floats compared by their bits (so -0.0 is not 0.0).
    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dtype() == b.dtype() && a.shape() == b.shape() && format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn every_host_type_decodes_alike_from_raw_data_typed_fields_and_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let cases = every_host_type();
        let mut graph = proto::GraphProto {
            name: Some("g".into()),
            ..Default::default()
        };
        for (i, t) in cases.iter().enumerate() {
            for (form, p) in [("typed", Some(typed(t))), ("raw", raw(t))] {
                let Some(mut p) = p else { continue };
                let got = host(&p).unwrap_or_else(|e| panic!("{} {form}: {e}", t.dtype()));
                assert!(same(&got, t), "{} {form}: {got:?} != {t:?}", t.dtype());
                p.name = Some(format!("t{i}_{form}"));
                graph.initializer.push(p);
            }
        }
        // The same protos as initializers of a model decode to the same values.
        let model = proto::ModelProto {
            ir_version: Some(8),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(graph),
            ..Default::default()
        };
        let path = dir.path().join("m.onnx");
        let m = crate::onnx::decode_model(&model.encode_to_vec(), dir.path(), &path).unwrap();
        let mut n = 0;
        for v in m.graph.initializers.iter() {
            let c = m.graph.tensor(m.graph.value(*v).init.unwrap());
            let i: usize = c.name.as_ref().unwrap()[1..]
                .split('_')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let got = c.to_tensor().unwrap();
            assert!(same(&got, &cases[i]), "{:?}: {got:?}", c.name);
            n += 1;
        }
        assert_eq!(n, 2 * cases.len() - 1, "every type twice, strings once");
    }

    #[test]
    fn every_other_type_is_an_error_naming_tensor_and_type() {
        let hosted: Vec<DType> = every_host_type().iter().map(|t| t.dtype()).collect();
        let mut others = 0;
        for d in DType::ALL
            .into_iter()
            .chain([DType::Other(0), DType::Other(99)])
        {
            if hosted.contains(&d) {
                continue;
            }
            let mut p = proto(d, &[1]);
            p.name = Some("w".into());
            p.raw_data = Some(vec![0; 16]);
            let e = host(&p).unwrap_err();
            assert!(e.contains("'w'") && e.contains(&d.to_string()), "{d}: {e}");
            others += 1;
        }
        assert_eq!(others + hosted.len(), DType::ALL.len() + 2);
    }

    #[test]
    fn sizes_that_overflow_are_errors_naming_the_tensor() {
        for dims in [vec![1i64 << 40, 1 << 40], vec![i64::MAX, 3]] {
            let mut p = proto(DType::F32, &dims);
            p.name = Some("huge".into());
            p.raw_data = Some(Vec::new());
            let e = host(&p).unwrap_err();
            assert!(e.contains("'huge'") && e.contains("more elements"), "{e}");
        }
        // Elements that fit but bytes that do not.
        let mut p = proto(DType::F64, &[1i64 << 62]);
        p.name = Some("wide".into());
        p.raw_data = Some(Vec::new());
        let e = host(&p).unwrap_err();
        assert!(
            e.contains("'wide'") && e.contains("raw_data holds 0 bytes"),
            "{e}"
        );
        // External data: checked before the side file's length is compared with the dims.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 8]).unwrap();
        let mut p = proto(DType::F32, &[1i64 << 40, 1 << 40]);
        p.name = Some("huge".into());
        p.data_location = Some(1);
        p.external_data = vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("w.bin".into()),
        }];
        let e = host_in(&p, dir.path()).unwrap_err();
        assert!(e.contains("'huge'") && e.contains("byte size"), "{e}");
    }

    #[test]
    fn segmented_tensors_are_refused() {
        let mut p = proto(DType::F32, &[1]);
        p.name = Some("s".into());
        p.float_data = vec![1.0];
        p.segment = Some(proto::tensor_proto::Segment {
            begin: Some(0),
            end: Some(1),
        });
        let e = host(&p).unwrap_err();
        assert!(e.contains("'s'") && e.contains("segmented"), "{e}");
    }

    #[test]
    fn empty_tensors_and_missing_values() {
        let p = proto(DType::F32, &[0, 3]);
        assert_eq!(
            host(&p).unwrap(),
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[0, 3]), vec![]).unwrap())
        );
        let p = proto(DType::String, &[0]);
        assert_eq!(host(&p).unwrap().shape(), [0]);
        let p = proto(DType::I64, &[2]);
        assert!(host(&p).unwrap_err().contains("no values stored"));
        let mut p = proto(DType::F32, &[1]);
        p.int64_data = vec![1];
        let e = host(&p).unwrap_err();
        assert!(e.contains("int64_data") && e.contains("f32"), "{e}");
        let mut p = proto(DType::String, &[1]);
        p.raw_data = Some(vec![b'a']);
        assert!(host(&p).unwrap_err().contains("raw_data"));
        let mut p = proto(DType::String, &[1]);
        p.string_data = vec![vec![0xff]];
        assert!(host(&p).unwrap_err().contains("UTF-8"));
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
            host(&p).unwrap(),
            Tensor::F32(arr1(&[1.5f32, -2.0]).into_dyn())
        );
        let mut p = proto(DType::I64, &[]);
        p.raw_data = Some(16000i64.to_le_bytes().to_vec());
        assert_eq!(
            host(&p).unwrap(),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 16000))
        );
        let mut p = proto(DType::Bool, &[3]);
        p.raw_data = Some(vec![1, 0, 2]);
        assert_eq!(
            host(&p).unwrap(),
            Tensor::Bool(arr1(&[true, false, true]).into_dyn())
        );
    }

    #[test]
    fn typed_fields_per_onnx_rules() {
        let mut p = proto(DType::F32, &[1, 2]);
        p.float_data = vec![0.25, 4.0];
        assert_eq!(host(&p).unwrap().to_f64_vec().unwrap(), [0.25, 4.0]);

        let mut p = proto(DType::F64, &[1]);
        p.double_data = vec![-7.5];
        assert_eq!(host(&p).unwrap().dtype(), DType::F64);

        let mut p = proto(DType::I8, &[2]);
        p.int32_data = vec![-128, 127];
        assert_eq!(
            host(&p).unwrap(),
            Tensor::I8(arr1(&[-128i8, 127]).into_dyn())
        );

        let mut p = proto(DType::U8, &[1]);
        p.int32_data = vec![300];
        assert!(host(&p).unwrap_err().contains("out of range"));

        let mut p = proto(DType::F16, &[1]);
        p.int32_data = vec![i32::from(half::f16::from_f32(-1.5).to_bits())];
        assert_eq!(
            host(&p).unwrap(),
            Tensor::F16(arr1(&[half::f16::from_f32(-1.5)]).into_dyn())
        );

        let mut p = proto(DType::I64, &[2]);
        p.int64_data = vec![i64::MAX, -1];
        assert_eq!(host(&p).unwrap().to_i64_vec().unwrap(), [i64::MAX, -1]);

        let mut p = proto(DType::U32, &[1]);
        p.uint64_data = vec![u64::from(u32::MAX)];
        assert_eq!(host(&p).unwrap(), Tensor::U32(arr1(&[u32::MAX]).into_dyn()));

        let mut p = proto(DType::Bool, &[2]);
        p.int32_data = vec![0, 1];
        assert_eq!(
            host(&p).unwrap(),
            Tensor::Bool(arr1(&[false, true]).into_dyn())
        );

        let mut p = proto(DType::String, &[2]);
        p.string_data = vec![b"a".to_vec(), b"bc".to_vec()];
        assert_eq!(
            host(&p).unwrap(),
            Tensor::Str(arr1(&["a".to_string(), "bc".to_string()]).into_dyn())
        );
    }

    #[test]
    fn four_bit_types_unpack_low_nibble_first() {
        let mut p = proto(DType::I4, &[3]);
        p.raw_data = Some(vec![0x8F, 0x07]); // -1, -8, 7
        assert_eq!(
            host(&p).unwrap(),
            Tensor::I4(arr1(&[-1i8, -8, 7]).into_dyn())
        );
        let mut p = proto(DType::U4, &[2]);
        p.int32_data = vec![0xF3];
        assert_eq!(host(&p).unwrap(), Tensor::U4(arr1(&[3u8, 15]).into_dyn()));
    }

    #[test]
    fn count_mismatches_and_odd_types_are_errors() {
        let mut p = proto(DType::F32, &[3]);
        p.float_data = vec![1.0];
        assert!(host(&p).unwrap_err().contains("need 3"));
        let mut p = proto(DType::F32, &[2]);
        p.raw_data = Some(vec![0; 7]);
        assert!(host(&p).is_err());
        let mut p = proto(DType::F32, &[-1]);
        p.raw_data = Some(vec![]);
        assert!(host(&p).unwrap_err().contains("negative"));
        let p = proto(DType::Complex64, &[1]);
        assert!(host(&p).unwrap_err().contains("c64"));
        let p = proto(DType::Other(0), &[1]);
        assert!(host(&p).is_err());
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
            host_in(&p, dir.path()).unwrap(),
            Tensor::I32(arr1(&[3, 4]).into_dyn())
        );
        p.external_data[2] = entry("length", "800");
        assert!(host_in(&p, dir.path())
            .unwrap_err()
            .contains("past the end"));
        p.external_data[0] = entry("location", "../w.bin");
        assert!(host_in(&p, dir.path())
            .unwrap_err()
            .contains("relative path inside"));
        // A link out of the tensor file's folder is not followed.
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(dir.path(), inner.join("link")).unwrap();
        p.external_data[0] = entry("location", "link/w.bin");
        p.external_data[2] = entry("length", "8");
        assert!(host_in(&p, &inner).unwrap_err().contains("outside"));
    }
}
