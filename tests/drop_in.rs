//! The quantized model is a drop-in replacement of the float model, whatever the export
//! got wrong: declared shapes that contradict the graph, values computed from constants
//! only (a transformer's position ids and masks).

mod common;

use common::*;
use qrange::passes::{InferShapes, Pass, PassCx};

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
    // measured 39.7 dB; gate 36
    assert!(sqnr > 36.0, "{j}");
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
