//! The quantized model is a drop-in replacement of the float model, whatever the export
//! got wrong: declared shapes that contradict the graph, values computed from constants
//! only (a transformer's position ids and masks).

mod common;
mod ir_build;

use common::*;
use ir_build::{f32s, tensor_attr, B};
use qrange::ir::DType;
use qrange::passes::{InferShapes, Pass, PassCx};
use qrange::quant::params::QType;
use qrange::quant::plan::{self, OpState, QuantConfig};
use qrange::quant::rules::Target;

/// Diagnostics of `infer_shapes` on the model at `p` that say a declared shape
/// contradicts the graph.
fn contradictions(p: &std::path::Path) -> Vec<String> {
    let mut m = qrange::onnx::read_model(p).unwrap();
    let mut cx = PassCx::default();
    InferShapes.run(&mut m, &mut cx).unwrap();
    cx.diagnostics
        .iter()
        .filter(|d| d.what.contains("contradicts") || d.what.contains("the model says"))
        .map(|d| d.what.clone())
        .collect()
}

#[test]
fn a_declared_output_shape_that_contradicts_the_graph_is_relaxed() {
    // tiny_crnn declares its output f32[1,seqlen]; its last Reshape gives [12,1,10].
    let model = fixture("tiny/tiny_crnn.onnx");
    assert!(
        !contradictions(&model).is_empty(),
        "the fixture must contradict itself"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&model),
        "--calib",
        &s(&fixture("tiny/tiny_crnn.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_crnn.eval.npz")),
        "-o",
        &s(&out),
    ]);
    // Validated in the engine, which refuses contradicting shapes.
    let sqnr = j["validation"]["y"]["sqnr_db"].as_f64().unwrap();
    // measured 39.7 dB; gate 38.5
    assert!(sqnr > 38.5, "{j}");
    // The summary names the value and says what was done.
    let notes: Vec<&str> = j["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("graph output 'y'")
            && n.contains("declared shape f32[1,seqlen] contradicts the graph")
            && n.contains("relaxed")),
        "{notes:?}"
    );
    // The written model says what the graph computes, and nothing contradicts it.
    let m = load(&out);
    let y = &m.graph.as_ref().unwrap().output[0];
    assert_eq!(y.name(), "y");
    let rank = match y.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(qrange::onnx::proto::type_proto::Value::TensorType(t)) => {
            t.shape.as_ref().map(|s| s.dim.len())
        }
        _ => None,
    };
    assert_eq!(rank, Some(3));
    assert_eq!(contradictions(&out), Vec::<String>::new());
}

/// Names listed under a float reason of a quantize summary that contains `part`.
fn floated_for(j: &serde_json::Value, part: &str) -> Vec<String> {
    j["float_reasons"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(reason, _)| reason.contains(part))
        .flat_map(|(_, ops)| ops.as_array().unwrap().iter())
        .map(|o| o.as_str().unwrap().to_string())
        .collect()
}

const POSITION_GATHER: &str = "/model/model.0/auto_model/embeddings/position_embeddings/Gather";
const EMBEDDING_SUM: &str = "/model/model.0/auto_model/embeddings/Add_1";

#[test]
fn a_transformer_export_quantizes_end_to_end() {
    // The export's position embeddings are a Gather from a 512-row table at positions
    // sliced from a constant buffer up to the sequence length: computed from constants
    // only. Planned as an activation, it had no statistics and quantize stopped.
    let tmp = tempfile::tempdir().unwrap();
    for method in ["adaptive", "minmax"] {
        let out = tmp.path().join(format!("{method}.onnx"));
        let j = quantize_minilm(&out, &["--method", method]);
        let constant = floated_for(&j, "is computed from constants only");
        assert!(
            constant.iter().any(|o| o == POSITION_GATHER)
                && constant.iter().any(|o| o == EMBEDDING_SUM),
            "{j}"
        );
        // The encoder's 8 MatMuls and the word-embedding lookup are quantized (the Adds,
        // LayerNormalizations and GELU between them stay float).
        assert!(j["quantized_ops"].as_u64().unwrap() >= 9, "{j}");
        let sqnr = j["validation"]["461"]["sqnr_db"].as_f64().unwrap();
        // measured 10.6 dB (adaptive) and 7.5 dB (minmax) on the 16 samples; gates 1 dB below
        let gate = if method == "adaptive" { 9.6 } else { 6.5 };
        assert!(sqnr > gate, "{method}: {j}");
        // The written model is read back and runs.
        let r = qrange(&[
            "run",
            &s(&out),
            "--data",
            &s(&fixture("minilm_l3/eval.npz")),
            "-o",
            &s(&tmp.path().join("o.npz")),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
}

#[test]
fn a_value_missing_from_the_statistics_leaves_its_ops_float() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("s.json");
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let r = qrange(&[
        "calibrate",
        &model,
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Drop the statistics of the second Conv's output.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(file["tensors"]
        .as_object_mut()
        .unwrap()
        .remove("c2")
        .is_some());
    std::fs::write(&stats, serde_json::to_string(&file).unwrap()).unwrap();
    let j = quantize_json(&[
        &model,
        "--ranges",
        &s(&stats),
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "-o",
        &s(&tmp.path().join("q.onnx")),
    ]);
    let floated = floated_for(&j, "no calibration statistics for 'c2'");
    assert_eq!(floated, ["conv2", "gap"], "{j}");
    // Once they are float, the head reads 'flat' as an activation of its own, which the
    // file lacks too: the plan is fitted again.
    let floated = floated_for(&j, "no calibration statistics for 'flat'");
    assert_eq!(floated, ["fc", "flatten"], "{j}");
    // What precedes is quantized as usual (conv1 with its Relu folded, the MaxPool).
    assert_eq!(j["quantized_ops"], 2, "{j}");
    assert_eq!(j["folded_ops"], 1, "{j}");
}

#[test]
fn a_value_computed_from_shapes_and_constants_is_not_planned() {
    // x: f32[N,4] with N symbolic: `ones` = ConstantOfShape(Shape(x)) depends on the
    // shape of x only, never on its values.
    let mut b = B::new("t");
    b.input("x", DType::F32, "N,4")
        .init("w", &f32s(&[0.5; 8], &[4, 2]));
    b.op("Shape", &["x"], &["s"], vec![]);
    b.op(
        "ConstantOfShape",
        &["s"],
        &["ones"],
        vec![("value", tensor_attr(&f32s(&[1.0], &[1])))],
    );
    b.op("Add", &["x", "ones"], &["y"], vec![]);
    b.op("MatMul", &["y", "w"], &["z"], vec![]);
    b.output("z");
    let mut m = b.model(17);
    InferShapes.run(&mut m, &mut PassCx::default()).unwrap();
    let cfg = QuantConfig {
        target: Target::OrtCpu,
        activation: QType::new(DType::U8, false, false).unwrap(),
        weight: QType::new(DType::I8, true, true).unwrap(),
        weight_mse: false,
        weight_grid: Default::default(),
        per_channel: true,
        exclude_nodes: Default::default(),
        exclude_op_types: Default::default(),
        op_types: None,
        tables: None,
        table_block: None,
    };
    let p = plan::build(&m, &cfg);
    let add = p.ops.iter().find(|(k, _)| k.starts_with("Add")).unwrap().1;
    assert_eq!(
        add,
        &OpState::Float {
            reason: "'ones' is computed from constants only: no sample changes it, so it is not calibrated".into()
        }
    );
    assert!(!p.calibration_values().contains(&"ones".to_string()));
    // The MatMul reading the Add's output still is quantized (its input calibrated).
    let mm = p
        .ops
        .iter()
        .find(|(k, _)| k.starts_with("MatMul"))
        .unwrap()
        .1;
    assert!(matches!(mm, OpState::Quantized { .. }), "{p:?}");
    assert!(p.calibration_values().contains(&"y".to_string()));
}
