//! Lossless decode/encode: real fixtures and hand-built models with every kind of field.

mod common;

use common::*;
use prost::Message;
use qrange::onnx::{self, proto, ExternalPolicy};
use std::path::Path;

fn roundtrip_bytes(bytes: &[u8], base: &Path) -> (qrange::ir::Model, Vec<u8>) {
    let m = onnx::decode_model(bytes, base, Path::new("mem.onnx")).unwrap();
    let out = onnx::model_to_bytes(&m).unwrap();
    (m, out)
}

#[test]
fn real_fixtures_round_trip_byte_identical() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("fixtures")).unwrap() {
        let p = entry.unwrap().path().join("model.onnx");
        if !p.exists() {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&p).unwrap();
        let (m, out) = roundtrip_bytes(&bytes, p.parent().unwrap());
        // Files written by onnx.save encode fields in number order, as prost does.
        assert_eq!(out, bytes, "{} is not byte-identical", p.display());
        let m2 = onnx::decode_model(&out, p.parent().unwrap(), &p).unwrap();
        assert!(
            m == m2,
            "{}: decode(encode(decode(x))) != decode(x)",
            p.display()
        );
    }
    assert!(seen >= 1, "no real fixtures found");
}

#[test]
fn opset_imports_keep_their_bytes_until_they_change() {
    // A PyTorch export writes its default-domain import without the domain field; onnx's
    // helpers write it empty. Both mean the same import and both come back as written.
    for domain in [None, Some(String::new())] {
        let mut m = add_relu();
        m.opset_import = vec![proto::OperatorSetIdProto {
            domain: domain.clone(),
            version: Some(17),
        }];
        let bytes = m.encode_to_vec();
        let (mut ir, out) = roundtrip_bytes(&bytes, Path::new("."));
        assert_eq!(out, bytes, "domain {domain:?}");
        assert_eq!(ir.opset(""), Some(17));
        // A changed list is written from the IR.
        ir.opsets[0].version = 21;
        let changed =
            proto::ModelProto::decode(onnx::model_to_bytes(&ir).unwrap().as_slice()).unwrap();
        assert_eq!(changed.opset_import.len(), 1);
        assert_eq!(changed.opset_import[0].version, Some(21));
        assert_eq!(changed.opset_import[0].domain.as_deref().unwrap_or(""), "");
    }
}

#[test]
fn every_field_kind_survives() {
    let mut m = add_relu();
    m.doc_string = Some("model doc".into());
    m.metadata_props.push(proto::StringStringEntryProto {
        key: Some("k".into()),
        value: Some("v".into()),
    });
    m.functions.push(proto::FunctionProto {
        name: Some("F".into()),
        domain: Some("local".into()),
        input: vec!["a".into()],
        output: vec!["b".into()],
        node: vec![node("Relu", "fr", &["a"], &["b"])],
        ..Default::default()
    });
    m.training_info.push(proto::TrainingInfoProto::default());
    let g = m.graph.as_mut().unwrap();
    g.doc_string = Some("graph doc".into());
    g.value_info.push(vi("s", 1, &[1, 4]));
    g.sparse_initializer.push(proto::SparseTensorProto {
        values: Some(proto::TensorProto {
            name: Some("sp".into()),
            data_type: Some(1),
            dims: vec![2],
            float_data: vec![1.0, 2.0],
            ..Default::default()
        }),
        indices: Some(proto::TensorProto {
            data_type: Some(7),
            dims: vec![2],
            int64_data: vec![0, 3],
            ..Default::default()
        }),
        dims: vec![4],
    });
    let mut n = node("Clip", "clip", &["y", "", ""], &["z"]);
    n.doc_string = Some("node doc".into());
    n.overload = Some("ov".into());
    use proto::attribute_proto::AttributeType as T;
    let attr = |name: &str, t: T| proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(t as i32),
        ..Default::default()
    };
    let mut a = attr("f", T::Float);
    a.f = Some(0.25);
    n.attribute.push(a);
    let mut a = attr("i", T::Int);
    a.i = Some(-3);
    n.attribute.push(a);
    let mut a = attr("s", T::String);
    a.s = Some(b"hi".to_vec());
    n.attribute.push(a);
    let mut a = attr("t", T::Tensor);
    a.t = Some(f32_init("", &[2], &[1.0, 2.0]));
    n.attribute.push(a);
    let mut a = attr("fs", T::Floats);
    a.floats = vec![1.0, 2.5];
    n.attribute.push(a);
    let mut a = attr("is", T::Ints);
    a.ints = vec![1, 2, 3];
    n.attribute.push(a);
    let mut a = attr("ss", T::Strings);
    a.strings = vec![b"a".to_vec(), b"b".to_vec()];
    n.attribute.push(a);
    let mut a = attr("ts", T::Tensors);
    a.tensors = vec![f32_init("", &[1], &[3.0])];
    n.attribute.push(a);
    let mut a = attr("sp", T::SparseTensor);
    a.sparse_tensor = Some(proto::SparseTensorProto::default());
    n.attribute.push(a);
    let mut a = attr("tp", T::TypeProto);
    a.tp = Some(vi("q", 1, &[1]).r#type.unwrap());
    n.attribute.push(a);
    let mut a = proto::AttributeProto {
        name: Some("untyped_int".into()),
        ..Default::default()
    };
    a.i = Some(7);
    n.attribute.push(a);
    let sub = proto::GraphProto {
        name: Some("body".into()),
        node: vec![node("Identity", "inner", &["x"], &["o"])],
        output: vec![vi("o", 1, &[1, 4])],
        ..Default::default()
    };
    let mut a = attr("g", T::Graph);
    a.g = Some(sub.clone());
    n.attribute.push(a);
    let mut a = attr("gs", T::Graphs);
    a.graphs = vec![sub.clone(), sub];
    n.attribute.push(a);
    g.node.push(n);
    g.output.push(vi("z", 1, &[1, 4]));

    let bytes = m.encode_to_vec();
    let (ir, out) = roundtrip_bytes(&bytes, Path::new("."));
    assert_eq!(proto::ModelProto::decode(out.as_slice()).unwrap(), m);
    assert_eq!(out, bytes);
    let ir2 = onnx::decode_model(&out, Path::new("."), Path::new("mem.onnx")).unwrap();
    assert!(ir == ir2);
}

#[test]
fn external_data_is_read_and_written() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m.onnx");
    write_proto(&src, &add_relu());
    let m = onnx::read_model(&src).unwrap();
    // out: everything >= 1 byte external
    let ext = tmp.path().join("ext.onnx");
    let r = onnx::write_model(&m, &ext, &ExternalPolicy::Threshold(1)).unwrap();
    let (side, n) = r.external.clone().unwrap();
    assert_eq!(side, tmp.path().join("ext.onnx.data"));
    assert_eq!(n, 16);
    let p = proto::ModelProto::decode(std::fs::read(&ext).unwrap().as_slice()).unwrap();
    let b = &p.graph.as_ref().unwrap().initializer[0];
    assert_eq!(b.data_location, Some(1));
    assert!(b.raw_data.is_none());
    // read back: values identical; Keep keeps it external, Inline brings it back
    let m2 = onnx::read_model(&ext).unwrap();
    let v = m2.graph.value_by_name("b").unwrap();
    assert_eq!(
        m2.graph.const_of(v).unwrap().to_tensor().unwrap(),
        m.graph
            .const_of(m.graph.value_by_name("b").unwrap())
            .unwrap()
            .to_tensor()
            .unwrap()
    );
    let keep = tmp.path().join("keep.onnx");
    let r = onnx::write_model(&m2, &keep, &ExternalPolicy::Keep).unwrap();
    assert!(r.external.is_some());
    let inl = tmp.path().join("inline.onnx");
    let r = onnx::write_model(&m2, &inl, &ExternalPolicy::Inline).unwrap();
    assert!(r.external.is_none());
    assert_eq!(std::fs::read(&inl).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn cli_convert_round_trips_and_inspect_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m.onnx");
    write_proto(&src, &add_relu());
    let out = tmp.path().join("o.onnx");
    let r = qrange(&["convert", src.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    let r = qrange(&["inspect", out.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["op_histogram"]["Add"], 1);
    assert_eq!(j["op_histogram"]["Relu"], 1);
    assert_eq!(j["parameter_count"], 4);
    assert_eq!(j["inputs"][0]["type"], "f32[1,4]");
}

#[test]
fn attributes_set_by_passes_are_written_with_their_type() {
    use qrange::ir::AttrValue;
    let bytes = add_relu().encode_to_vec();
    let mut m = onnx::decode_model(&bytes, Path::new("."), Path::new("mem.onnx")).unwrap();
    let relu = m
        .graph
        .ops()
        .find(|o| m.graph.op(*o).op_type == "Relu")
        .unwrap();
    m.graph.op_mut(relu).set_attr("made", AttrValue::Float(0.5));
    m.graph
        .op_mut(relu)
        .set_attr("list", AttrValue::Ints(vec![1, 2]));
    let p = proto::ModelProto::decode(onnx::model_to_bytes(&m).unwrap().as_slice()).unwrap();
    let n = p
        .graph
        .unwrap()
        .node
        .into_iter()
        .find(|n| n.op_type.as_deref() == Some("Relu"))
        .unwrap();
    use proto::attribute_proto::AttributeType as T;
    let ty = |name: &str| {
        n.attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
            .unwrap()
            .r#type
    };
    assert_eq!(ty("made"), Some(T::Float as i32));
    assert_eq!(ty("list"), Some(T::Ints as i32));
}
