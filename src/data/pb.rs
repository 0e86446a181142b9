//! ONNX `TensorProto` files (`input_0.pb`) and the `test_data_set_N/` directory layout.
//!
//! A file's tensor is decoded by `onnx::tensor::host_tensor`, the decoder model
//! initializers go through too (raw data, typed fields, every element type, external data
//! read relative to the `.pb` file's directory).

use super::DataError;
use crate::ir::tensor::Tensor;
use crate::onnx::proto::TensorProto;
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
    let base = path.parent().unwrap_or(Path::new("."));
    let tensor = crate::onnx::tensor::host_tensor(proto, base, path)?;
    Ok((name, tensor))
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
    use crate::ir::DType;
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
    fn external_data_is_read_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("test_data_set_0");
        std::fs::create_dir(&set).unwrap();
        std::fs::write(set.join("x.bin"), 7i64.to_le_bytes()).unwrap();
        let entry = |k: &str, v: &str| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        let mut p = proto(DType::I64, &[1]);
        p.name = Some("x".into());
        p.data_location = Some(1);
        p.external_data = vec![entry("location", "x.bin")];
        let path = set.join("input_0.pb");
        std::fs::write(&path, p.encode_to_vec()).unwrap();
        assert_eq!(
            read_tensor_pb(&path).unwrap().1,
            Tensor::I64(arr1(&[7i64]).into_dyn())
        );
        p.external_data = vec![entry("location", "../x.bin")];
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
