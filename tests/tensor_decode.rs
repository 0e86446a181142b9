//! Tensor payloads decode one way, in a model or in a data file: a model initializer
//! whose values do not fit its dims or its element type is an error naming the tensor
//! (never a panic, never a wrapped or lossy value), as it is in a `.pb` data file.

use prost::Message;
use qrange::ir::{Model, Tensor};
use qrange::onnx::proto::{
    GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use std::path::Path;

fn tensor(name: &str, dtype: i32, dims: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype),
        dims: dims.to_vec(),
        ..Default::default()
    }
}

/// Writes a model whose graph holds only `init` to `dir/m.onnx` and reads it back.
fn read_with(dir: &Path, init: TensorProto) -> Result<Model, String> {
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            initializer: vec![init],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("m.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    qrange::onnx::read_model(&path).map_err(|e| e.to_string())
}

/// The values of the model's only initializer.
fn init_values(m: &Model) -> Result<Tensor, String> {
    let v = m.graph.initializers[0];
    let t = m.graph.tensor(m.graph.value(v).init.unwrap());
    t.to_tensor().map_err(|e| e.to_string())
}

/// The same tensor as a `.pb` data file.
fn pb_values(dir: &Path, t: &TensorProto) -> Result<Tensor, String> {
    let path = dir.join("input_0.pb");
    std::fs::write(&path, t.encode_to_vec()).unwrap();
    qrange::data::read_tensor_pb(&path)
        .map(|(_, t)| t)
        .map_err(|e| e.to_string())
}

/// Both routes, model initializer and data file, fail naming the tensor and saying `what`
/// (the model when it is read, for dims no tensor can have, or when its values are
/// decoded).
fn both_refuse(t: TensorProto, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = t.name.clone().unwrap();
    let e = match read_with(dir.path(), t.clone()) {
        Ok(m) => init_values(&m).unwrap_err(),
        Err(e) => e,
    };
    assert!(e.contains(&format!("'{name}'")) && e.contains(what), "{e}");
    let e = pb_values(dir.path(), &t).unwrap_err();
    assert!(e.contains(&format!("'{name}'")) && e.contains(what), "{e}");
}

#[test]
fn dims_whose_element_count_overflows_are_an_error() {
    let mut t = tensor("huge", 1, &[1 << 40, 1 << 40]);
    t.raw_data = Some(Vec::new());
    both_refuse(t, "more elements");
}

#[test]
fn external_data_with_overflowing_dims_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.bin"), [0u8; 8]).unwrap();
    let mut t = tensor("huge", 1, &[1 << 40, 1 << 40]);
    t.data_location = Some(1);
    t.external_data = vec![StringStringEntryProto {
        key: Some("location".into()),
        value: Some("w.bin".into()),
    }];
    let e = read_with(dir.path(), t).unwrap_err();
    assert!(e.contains("'huge'") && e.contains("byte size"), "{e}");
}

#[test]
fn typed_values_out_of_their_types_range_are_an_error() {
    let mut t = tensor("zp", 2, &[1]); // uint8
    t.int32_data = vec![300];
    both_refuse(t, "out of range for u8");
    let mut t = tensor("wide", 12, &[1]); // uint32
    t.uint64_data = vec![1 << 40];
    both_refuse(t, "out of range for u32");
}

#[test]
fn negative_dims_are_an_error() {
    let mut t = tensor("neg", 1, &[-1]);
    t.raw_data = Some(Vec::new());
    both_refuse(t, "negative dimension");
}

#[test]
fn strings_that_are_not_utf8_are_an_error() {
    let mut t = tensor("labels", 8, &[1]);
    t.string_data = vec![vec![0xff, 0xfe]];
    both_refuse(t, "UTF-8");
}
