//! A MatMul on a rank-2 input whose one reader is a bias Add (a classifier head) runs in
//! ONNX Runtime as the Gemm its MatMulAddFusion makes of the pair. When nothing quantizes
//! the Add's output that Gemm stays float, so the plan names it: the MatMul's input stays
//! float, its weight is stored int8 per output column on all of int8's grid and
//! dequantized; the written model and the ort-cpu lint of it say the same.

mod common;

use common::*;
use qrange::ir::DType;
use qrange::passes::{Pass, PassCx};
use qrange::quant::params::QType;
use qrange::quant::plan::{self, Decision, OpState, QuantConfig};
use qrange::quant::rules::Target;
use std::collections::BTreeSet;

/// x[1,8] → MatMul(w1) → Add(b1) → Relu → Tanh → MatMul(w2) → Add(b2) → Softmax → y[1,4]:
/// a hidden layer whose Add output the Relu quantizes (folded), then, behind a float Tanh,
/// a head nothing quantizes after.
fn head_model() -> qrange::onnx::proto::ModelProto {
    let w = |n: usize, k: usize, s: f32| -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * s)
            .collect()
    };
    model(
        vec![
            node("MatMul", "mm1", &["x", "w1"], &["h"]),
            node("Add", "add1", &["h", "b1"], &["hb"]),
            node("Relu", "relu", &["hb"], &["h2"]),
            node("Tanh", "tanh", &["h2"], &["r"]),
            node("MatMul", "mm2", &["r", "w2"], &["z"]),
            node("Add", "add2", &["z", "b2"], &["logits"]),
            node("Softmax", "softmax", &["logits"], &["y"]),
        ],
        vec![
            f32_init("w1", &[8, 8], &w(8, 8, 0.1)),
            f32_init("b1", &[8], &[0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.05]),
            f32_init("w2", &[8, 4], &w(8, 4, 0.07)),
            f32_init("b2", &[4], &[0.3, -0.3, 0.1, 0.0]),
        ],
        vec![vi("x", 1, &[1, 8])],
        vec![vi("y", 1, &[1, 4])],
    )
}

#[test]
fn a_head_fused_into_a_float_gemm_is_planned_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.onnx");
    write_proto(&path, &head_model());
    let mut m = qrange::onnx::read_model(&path).unwrap();
    qrange::passes::infer_shapes::InferShapes
        .run(&mut m, &mut PassCx::default())
        .unwrap();
    let cfg = QuantConfig {
        target: Target::OrtCpu,
        activation: QType::new(DType::U8, false, false).unwrap(),
        weight: QType::new(DType::I8, true, true).unwrap(),
        weight_mse: false,
        weight_grid: Default::default(),
        per_channel: true,
        exclude_nodes: BTreeSet::new(),
        exclude_op_types: BTreeSet::new(),
        op_types: None,
        tables: None,
        table_block: None,
    };
    let p = plan::build(&m, &cfg);
    match &p.ops["mm2"] {
        OpState::Quantized { kernel: Some(k) } => assert!(
            k.starts_with("MatMulNBits, 8 bits, with bias Add 'add2'"),
            "head kernel: {k}"
        ),
        other => panic!("head planned as {other:?}"),
    }
    // Its input stays float; the weight is int8 on [-127, 127], one scale per column.
    assert!(
        !p.values.contains_key("r"),
        "head input quantized: {:?}",
        p.values.get("r")
    );
    match &p.values["w2"] {
        Decision::Weight { qtype, axis, .. } => {
            assert_eq!(
                (qtype.dtype, qtype.qmin, qtype.qmax),
                (DType::I8, -127, 127)
            );
            assert_eq!(*axis, Some(1));
        }
        other => panic!("head weight planned as {other:?}"),
    }
    // The hidden layer, whose bias Add's output the Relu quantizes, keeps its input
    // quantized and its 7-bit weight.
    assert!(matches!(
        p.values.get("x"),
        Some(Decision::Activation { .. })
    ));
    assert!(matches!(
        &p.values["w1"],
        Decision::Weight { qtype, .. } if qtype.qmax < 127
    ));
    // Other targets do not model ONNX Runtime's fusion.
    let generic = plan::build(
        &m,
        &QuantConfig {
            target: Target::Generic,
            ..cfg
        },
    );
    assert!(matches!(
        generic.values.get("r"),
        Some(Decision::Activation { .. })
    ));
}

#[test]
fn the_written_head_and_its_lint_agree_with_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.onnx");
    let out = dir.path().join("head.q.onnx");
    write_proto(&path, &head_model());
    let r = qrange(&[
        "quantize",
        &s(&path),
        "--calib",
        "random:8",
        "--no-validate",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let q = load(&out);
    let g = q.graph.as_ref().unwrap();
    let producer = |v: &str| {
        g.node
            .iter()
            .find(|n| n.output.iter().any(|o| o == v))
            .map(|n| n.op_type.clone().unwrap_or_default())
    };
    let mm2 = g
        .node
        .iter()
        .find(|n| n.name.as_deref() == Some("mm2"))
        .expect("head MatMul written");
    assert_eq!(producer(&mm2.input[0]).as_deref(), Some("Tanh"), "{mm2:?}");
    assert_eq!(
        producer(&mm2.input[1]).as_deref(),
        Some("DequantizeLinear"),
        "{mm2:?}"
    );
    let lint = qrange(&["lint", &s(&out), "--json"]);
    assert_eq!(lint.code, 0, "{}", lint.stderr);
    let j: serde_json::Value = serde_json::from_str(&lint.stdout).unwrap();
    let unit = j["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["node"] == "mm2/MatMulAddFusion")
        .unwrap_or_else(|| panic!("no fused head unit: {}", lint.stdout));
    assert_eq!(unit["verdict"], "fused", "{unit}");
    assert_eq!(unit["kernel"], "MatMulNBits", "{unit}");
}
