//! `qrange lint` end to end: a fixture quantized by `qrange quantize`, linted as text and
//! JSON for each target, and the clean errors for inputs it cannot lint.

mod common;

use common::{fixture, qrange, write_proto};
use std::path::Path;

fn quantize(dir: &Path, extra: &[&str]) -> String {
    let out = dir.join("q.onnx");
    let model = fixture("tiny/tiny_cnn.onnx");
    let calib = fixture("tiny/tiny_cnn.npz");
    let mut args = vec![
        "quantize",
        model.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--no-validate",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = qrange(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // `quantize` prints the same coverage line as `lint`.
    assert!(
        r.stdout.contains("\nfusion     "),
        "quantize summary lacks the fusion line:\n{}",
        r.stdout
    );
    out.to_str().unwrap().to_string()
}

#[test]
fn lint_reports_every_unit_of_a_quantized_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantize(dir.path(), &[]);
    let r = qrange(&["lint", &q]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Conv, MaxPool, Conv, GlobalAveragePool, Flatten, Gemm: all integer on ONNX Runtime.
    for line in [
        "conv1    Conv               fused    QLinearConv",
        "pool1    MaxPool            dropped  Q/DQ pair dropped, runs on integers",
        "gap      GlobalAveragePool  fused    QLinearGlobalAveragePool",
        "fc       Gemm               fused    QGemm",
    ] {
        assert!(r.stdout.contains(line), "missing '{line}' in\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains(
            "fusion     6 of 6 node units run on integers (ort-cpu: 4 fused, 2 data-movement with Q/DQ dropped)"
        ),
        "{}",
        r.stdout
    );

    let j1 = qrange(&["lint", &q, "--json"]);
    let j2 = qrange(&["lint", &q, "--json"]);
    assert_eq!(j1.code, 0, "{}", j1.stderr);
    assert_eq!(j1.stdout, j2.stdout, "JSON output is not deterministic");
    let v: serde_json::Value = serde_json::from_str(&j1.stdout).unwrap();
    assert_eq!(v["target"], "ort-cpu");
    assert_eq!(v["platform"], "x86-64");
    assert_eq!(v["coverage"]["units"], 6);
    assert_eq!(v["coverage"]["fused"], 4);
    let units = v["units"].as_array().unwrap();
    let names: Vec<&str> = units.iter().map(|u| u["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["conv1", "pool1", "conv2", "gap", "flatten", "fc"]);
    assert_eq!(units[0]["kernel"], "QLinearConv");
    assert_eq!(units[1]["kind"], "data_movement");
    assert_eq!(units[1]["verdict"], "dropped");

    // The same u8 model for TensorRT: uint8 Q/DQ are not TensorRT types.
    let t = qrange(&["lint", &q, "--target", "tensorrt", "--json"]);
    assert_eq!(t.code, 0, "{}", t.stderr);
    let v: serde_json::Value = serde_json::from_str(&t.stdout).unwrap();
    let conv = &v["units"][0];
    assert_eq!(conv["verdict"], "float");
    assert_eq!(conv["reason_code"], "unsupported_type");
}

#[test]
fn lint_of_a_tensorrt_model() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantize(dir.path(), &["--target", "tensorrt"]);
    let t = qrange(&["lint", &q, "--target", "tensorrt"]);
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert!(
        t.stdout
            .contains("conv1    Conv               fused    int8 convolution"),
        "{}",
        t.stdout
    );
    // For ONNX Runtime on x86-64 the same model's int8 activations mostly stay float:
    // each quantized value feeds several readers, so the pairs are not turned into uint8.
    let o = qrange(&["lint", &q, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let codes: Vec<&str> = v["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["reason_code"].as_str())
        .collect();
    assert!(codes.contains(&"missing_output_q"), "{codes:?}");
    let arm = qrange(&["lint", &q, "--platform", "arm64", "--json"]);
    assert_eq!(arm.code, 0, "{}", arm.stderr);
}

#[test]
fn inputs_that_cannot_be_linted_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A float model: nothing to lint.
    let float = fixture("tiny/tiny_cnn.onnx");
    let r = qrange(&["lint", float.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no QuantizeLinear or DequantizeLinear"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    // Not a model.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a protobuf \xff\xff\xff").unwrap();
    let r = qrange(&["lint", junk.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    assert!(r.stderr.contains("junk.onnx"), "{}", r.stderr);
    // A graph with a cycle.
    let cyc = dir.path().join("cycle.onnx");
    let m = common::model(
        vec![
            common::node("Relu", "a", &["y"], &["z"]),
            common::node("Relu", "b", &["z"], &["y"]),
        ],
        vec![],
        vec![common::vi("x", 1, &[1])],
        vec![common::vi("y", 1, &[1])],
    );
    write_proto(&cyc, &m);
    let r = qrange(&["lint", cyc.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // A missing file and an unknown target.
    let r = qrange(&["lint", "/nonexistent/model.onnx"]);
    assert_eq!(r.code, 2);
    let q = quantize(dir.path(), &[]);
    let r = qrange(&["lint", &q, "--target", "nnapi"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}
