//! Helpers shared by integration tests: building small ONNX models with the proto types
//! and running the `qrange` binary.
#![allow(dead_code)]

use prost::Message;
use qrange::onnx::proto;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("fixtures").join(rel)
}

/// A tensor value_info `name: f32[dims]`.
pub fn vi(name: &str, elem: i32, dims: &[i64]) -> proto::ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value as D, Dimension};
    proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            denotation: None,
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(elem),
                    shape: Some(proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                denotation: None,
                                value: Some(D::DimValue(d)),
                            })
                            .collect(),
                    }),
                },
            )),
        }),
        ..Default::default()
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> proto::NodeProto {
    proto::NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A graph attribute (an If branch, a Loop or Scan body).
pub fn graph_attr(name: &str, g: proto::GraphProto) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(5),
        g: Some(g),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int_attr(name: &str, i: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(i),
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints_attr(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub fn float_attr(name: &str, f: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(f),
        ..Default::default()
    }
}

pub fn f32_init(name: &str, dims: &[i64], vals: &[f32]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

pub fn model(
    nodes: Vec<proto::NodeProto>,
    inits: Vec<proto::TensorProto>,
    inputs: Vec<proto::ValueInfoProto>,
    outputs: Vec<proto::ValueInfoProto>,
) -> proto::ModelProto {
    proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("qrange-tests".into()),
        graph: Some(proto::GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `y = Relu(x + b)` on f32[1,4].
pub fn add_relu() -> proto::ModelProto {
    model(
        vec![
            node("Add", "add", &["x", "b"], &["s"]),
            node("Relu", "relu", &["s"], &["y"]),
        ],
        vec![f32_init("b", &[1, 4], &[0.5, -1.0, 2.0, 0.0])],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 4])],
    )
}

/// The plan configuration `qrange quantize` uses with its default settings (ort-cpu:
/// u8 asymmetric activations, int8 symmetric weights per channel on [-64, 64], uniform
/// grid, nothing excluded), taken from the command's own defaults so the tests follow them.
pub fn ort_cpu_config() -> qrange::quant::plan::QuantConfig {
    qrange::pipeline::options::Settings::default()
        .config()
        .expect("the default settings make a configuration")
}

pub fn write_proto(path: &Path, m: &proto::ModelProto) {
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn qrange(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_qrange"))
        .args(args)
        .output()
        .expect("run qrange");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes an .npz of the given arrays through qrange's own writer.
pub fn write_npz_arrays(path: &Path, arrays: Vec<(&str, qrange::ir::Tensor)>) {
    let m: std::collections::BTreeMap<String, qrange::ir::Tensor> = arrays
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    qrange::data::write_npz(path, &m).unwrap();
}

/// An f32 tensor of `shape` filled with `v`.
pub fn f32_filled(shape: &[usize], v: f32) -> qrange::ir::Tensor {
    qrange::ir::Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(shape), v))
}

/// Writes an 8-bit PNG: `channels` 1 (grey) or 3 (RGB), `data` interleaved row by row.
pub fn write_png(path: &Path, width: u32, height: u32, channels: usize, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(if channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    w.write_image_data(data).unwrap();
    w.finish().unwrap();
}

/// `y = Relu(x)` on an f32 input of `dims`: a stand-in image model.
pub fn relu_model(dims: &[i64]) -> proto::ModelProto {
    model(
        vec![node("Relu", "relu", &["x"], &["y"])],
        vec![],
        vec![vi("x", 1, dims)],
        vec![vi("y", 1, dims)],
    )
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `qrange quantize ARGS --json`, which must succeed: its JSON summary.
pub fn quantize_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["quantize"];
    all.extend_from_slice(args);
    all.push("--json");
    let r = qrange(&all);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// `qrange quantize` of the transformer fixture (`minilm_l3`) to `out`, calibrated on its
/// calibration data and validated on its evaluation data, with `extra` options before the
/// output: its JSON summary.
pub fn quantize_minilm(out: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, calib, eval) = (
        s(&fixture("minilm_l3/model.onnx")),
        s(&fixture("minilm_l3/calib.npz")),
        s(&fixture("minilm_l3/eval.npz")),
    );
    let out = s(out);
    let mut args = vec![model.as_str(), "--calib", &calib, "--eval", &eval];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", &out]);
    quantize_json(&args)
}

/// Op types of a written model's main graph, counted.
pub fn op_counts(path: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut c = std::collections::BTreeMap::new();
    for n in &load(path).graph.unwrap().node {
        *c.entry(n.op_type.clone().unwrap_or_default()).or_default() += 1;
    }
    c
}

/// A model file, decoded.
pub fn load(p: &Path) -> proto::ModelProto {
    proto::ModelProto::decode(std::fs::read(p).unwrap().as_slice()).unwrap()
}

/// tiny_cnn and its calibration/evaluation data in `dir`.
pub fn tiny_cnn_in(dir: &Path) -> (String, String, String) {
    for f in ["tiny_cnn.onnx", "tiny_cnn.npz", "tiny_cnn.eval.npz"] {
        std::fs::copy(fixture(&format!("tiny/{f}")), dir.join(f)).unwrap();
    }
    (
        s(&dir.join("tiny_cnn.onnx")),
        s(&dir.join("tiny_cnn.npz")),
        s(&dir.join("tiny_cnn.eval.npz")),
    )
}
