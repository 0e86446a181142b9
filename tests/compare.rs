//! `qrange compare`: output metrics of two models on the same data, and the per-tensor
//! comparison that points at the layer quantization broke.

mod common;

use common::*;
use qrange::onnx::proto;
use std::path::Path;

/// Quantizes `fixtures/tiny/<name>.onnx` with qrange (calibration on `<name>.npz`) into
/// `dir/q.onnx`.
fn quantize_fixture(dir: &Path, name: &str) -> std::path::PathBuf {
    let out = dir.join("q.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture(&format!("tiny/{name}.onnx"))),
        "--calib",
        &s(&fixture(&format!("tiny/{name}.npz"))),
        "--no-validate",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    out
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let r = qrange(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn layer<'a>(j: &'a serde_json::Value, value: &str) -> &'a serde_json::Value {
    j["per_tensor"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["value"] == value)
        .unwrap_or_else(|| panic!("no layer '{value}' in {j}"))
}

#[test]
fn the_broken_layer_is_ranked_worst() {
    let tmp = tempfile::tempdir().unwrap();
    let q = quantize_fixture(tmp.path(), "tiny_broken_layer");
    let reference = fixture("tiny/tiny_broken_layer.onnx");
    let data = fixture("tiny/tiny_broken_layer.eval.npz");
    let args = [
        "compare",
        &s(&reference),
        &s(&q),
        "--data",
        &s(&data),
        "--labels",
        "label",
        "--per-tensor",
    ];

    let j = json(&args);
    let layers = j["per_tensor"]["layers"].as_array().unwrap();
    // The branch MatMul: every int8 weight but the outlier row rounds to zero.
    assert_eq!(layers[0]["value"], "br", "{j:#}");
    assert_eq!(layers[0]["producer"], "branch");
    assert_eq!(layers[0]["op_type"], "MatMul");
    let worst = layers[0]["metrics"]["sqnr_db"].as_f64().unwrap();
    assert!(worst.abs() < 0.5, "{worst}");
    // Everything else keeps clearly more signal than noise.
    for l in &layers[1..] {
        let sqnr = |m: &serde_json::Value| m["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(sqnr(&l["metrics"]) > worst + 3.0, "{l}");
        if !l["dequantized"].is_null() {
            assert!(sqnr(&l["dequantized"]["metrics"]) > worst + 3.0, "{l}");
        }
    }
    // Sorted worst first.
    let key = |l: &serde_json::Value| {
        let raw = l["metrics"]["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        let dq = l["dequantized"]["metrics"]["sqnr_db"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        raw.min(dq)
    };
    assert!(layers.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
    // The folded Relu: the next op reads r1 in the float model, a1's dequantized value in
    // the quantized one.
    let a1 = layer(&j, "a1");
    assert_eq!(a1["dequantized"]["value"], "a1.dq");
    assert_eq!(a1["dequantized"]["reference"], "r1");
    assert_eq!(
        j["per_tensor"]["unmatched"],
        serde_json::json!([{"reason": "not_in_test", "value": "r1"}])
    );
    // The graph output is fc2's bias Add, which stays float behind the MatMul's float
    // output: compared as it is, with no dequantized value.
    let y = layer(&j, "y");
    assert_eq!(y["test_value"], "y");
    assert!(y["dequantized"].is_null(), "{y}");
    // The input is quantized too; the residual Add reads the broken branch.
    assert_eq!(layer(&j, "x")["index"], 0);
    assert!(layer(&j, "x")["producer"].is_null());
    let residual_in = layer(&j, "s")["input_sqnr_db"].as_f64().unwrap();
    assert!(
        (residual_in - worst).abs() < 1e-9,
        "{residual_in} vs {worst}"
    );
    // Output metrics with the labels.
    let out = &j["outputs"]["y"];
    assert_eq!(out["samples"], 16);
    assert_eq!(out["accuracy_ref"], 1.0);
    assert!(out["top1_agreement"].as_f64().is_some());

    let r = qrange(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = r
        .stdout
        .replace(&s(&reference), "fixtures/tiny/tiny_broken_layer.onnx")
        .replace(&s(&q), "<tmp>/q.onnx");
    insta::assert_snapshot!("tiny_broken_layer_per_tensor", text);
}

#[test]
fn small_memory_budget_gives_the_same_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let q = quantize_fixture(tmp.path(), "tiny_outlier");
    let reference = s(&fixture("tiny/tiny_outlier.onnx"));
    let data = s(&fixture("tiny/tiny_outlier.eval.npz"));
    let base = [
        "compare",
        &reference,
        &s(&q),
        "--data",
        &data,
        "--per-tensor",
        "--samples",
        "5",
    ];
    let one = json(&base);
    let mut small = base.to_vec();
    small.extend(["--memory-budget", "0"]);
    let many = json(&small);
    assert_eq!(one["per_tensor"]["groups"], 1);
    let n = many["per_tensor"]["layers"].as_array().unwrap().len();
    assert!(n >= 6, "{many}");
    // One value (with its dequantized form) per group.
    assert_eq!(many["per_tensor"]["groups"], n);
    assert_eq!(one["per_tensor"]["layers"], many["per_tensor"]["layers"]);
    assert_eq!(one["samples"], 5);
    assert_eq!(one["per_tensor"]["samples"], 5);
}

fn u8_init(name: &str, v: u8) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: vec![],
        data_type: Some(2),
        raw_data: Some(vec![v]),
        ..Default::default()
    }
}

/// add_relu quantized the way ONNX Runtime's quantizer writes it: `X_QuantizeLinear_Output`
/// / `X_DequantizeLinear_Output` names, the Relu fused into the Add's quantized range, and
/// the graph output's name kept on the final DequantizeLinear (the Add writes
/// `y_QuantizeLinear_Input`).
fn add_relu_ort_style() -> proto::ModelProto {
    // ONNX Runtime's names for the Q/DQ pair of value `v`.
    let qdq = |op: &str, v: &str, x: &str, out: &str| {
        node(
            &format!("{op}Linear"),
            &format!("{v}_{op}Linear"),
            &[x, &format!("{v}_scale"), &format!("{v}_zero_point")],
            &[out],
        )
    };
    model(
        vec![
            qdq("Quantize", "x", "x", "x_QuantizeLinear_Output"),
            qdq(
                "Dequantize",
                "x",
                "x_QuantizeLinear_Output",
                "x_DequantizeLinear_Output",
            ),
            node(
                "Add",
                "add",
                &["x_DequantizeLinear_Output", "b"],
                &["y_QuantizeLinear_Input"],
            ),
            qdq(
                "Quantize",
                "y",
                "y_QuantizeLinear_Input",
                "y_QuantizeLinear_Output",
            ),
            qdq("Dequantize", "y", "y_QuantizeLinear_Output", "y"),
        ],
        vec![
            f32_init("b", &[1, 4], &[0.5, -1.0, 2.0, 0.0]),
            f32_init("x_scale", &[], &[0.02]),
            u8_init("x_zero_point", 128),
            f32_init("y_scale", &[], &[0.02]),
            u8_init("y_zero_point", 0),
        ],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 4])],
    )
}

#[test]
fn other_tools_quantized_models_are_followed_by_structure() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.onnx");
    let b = tmp.path().join("b.onnx");
    write_proto(&a, &add_relu());
    write_proto(&b, &add_relu_ort_style());
    let data = tmp.path().join("data.npz");
    let x: Vec<f32> = (0..24)
        .map(|i| ((i * 7 % 24) as f32 - 12.0) / 6.0)
        .collect();
    write_npz_arrays(
        &data,
        vec![(
            "x",
            qrange::ir::Tensor::F32(ndarray::ArrayD::from_shape_vec(vec![6, 1, 4], x).unwrap()),
        )],
    );
    let j = json(&[
        "compare",
        &s(&a),
        &s(&b),
        "--data",
        &s(&data),
        "--per-tensor",
    ]);
    let layers = j["per_tensor"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{j:#}");
    // The Add's output is found on the Add, whatever its name; what the next reader sees
    // (the graph output) is compared with the float model's Relu output.
    let sum = layer(&j, "s");
    assert_eq!(sum["test_value"], "y_QuantizeLinear_Input");
    // It reads the dequantized input: its error is the input's.
    let raw = sum["metrics"]["sqnr_db"].as_f64().unwrap();
    // measured 49.2 dB; gate 48
    assert!(raw > 48.0, "{sum}");
    assert_eq!(
        sum["input_sqnr_db"],
        layer(&j, "x")["dequantized"]["metrics"]["sqnr_db"]
    );
    assert_eq!(sum["dequantized"]["value"], "y");
    assert_eq!(sum["dequantized"]["reference"], "y");
    // Step 0.02 on values of about 1: measured 49.6 dB (gate 48). Compared with the Add's
    // output instead of the Relu's, the negative entries would bring it under 10 dB.
    let dq = sum["dequantized"]["metrics"]["sqnr_db"].as_f64().unwrap();
    assert!(dq > 48.0, "{dq}");
    let x = layer(&j, "x");
    assert_eq!(x["dequantized"]["value"], "x_DequantizeLinear_Output");
    // measured 46.5 dB; gate 45
    let x_db = x["dequantized"]["metrics"]["sqnr_db"].as_f64().unwrap();
    assert!(x_db > 45.0, "{x_db}");
    assert_eq!(
        j["per_tensor"]["unmatched"],
        serde_json::json!([{"reason": "produced_elsewhere", "value": "y", "producer": "add"}])
    );
    // The output: quantized Add+Relu against float Add+Relu.
    // measured 49.6 dB; gate 48
    let y_db = j["outputs"]["y"]["sqnr_db"].as_f64().unwrap();
    assert!(y_db > 48.0, "{y_db}");
}

#[test]
fn identical_models_compare_exactly_without_per_tensor() {
    let cnn = s(&fixture("tiny/tiny_cnn.onnx"));
    let j = json(&[
        "compare",
        &cnn,
        &cnn,
        "--data",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "--labels",
        "label",
    ]);
    let y = j["outputs"].as_object().unwrap();
    assert_eq!(y.len(), 1);
    let m = y.values().next().unwrap();
    assert_eq!(m["sqnr_db"], serde_json::Value::Null, "infinite: {m}");
    assert_eq!(m["max_abs"], 0.0);
    assert_eq!(m["top1_agreement"], 1.0);
    assert_eq!(m["accuracy_ref"], m["accuracy_test"]);
    assert!(j["per_tensor"].is_null());
}

#[test]
fn per_tensor_library_call() {
    use qrange::report::layers::{per_tensor, PerTensorError};
    let tmp = tempfile::tempdir().unwrap();
    let q = quantize_fixture(tmp.path(), "tiny_broken_layer");
    let a = qrange::onnx::read_model(&fixture("tiny/tiny_broken_layer.onnx")).unwrap();
    let b = qrange::onnx::read_model(&q).unwrap();
    let specs = vec![qrange::data::InputSpec::new(
        "x",
        qrange::ir::DType::F32,
        Some(vec![Some(1), Some(16)]),
    )];
    let ds = qrange::data::load(&fixture("tiny/tiny_broken_layer.eval.npz"), &specs).unwrap();
    let mut calls = Vec::new();
    let r = per_tensor(
        &a,
        &b,
        &ds.read_all().unwrap()[..4],
        1 << 30,
        |done, total| calls.push((done, total)),
    )
    .unwrap();
    assert_eq!(r.layers[0].value, "br");
    assert_eq!(r.layers[0].producer.as_deref(), Some("branch"));
    assert_eq!(r.layers[0].shape, vec![1, 16]);
    assert_eq!(r.samples, 4);
    assert_eq!(calls, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert!(matches!(
        per_tensor(
            &a,
            &b,
            &Vec::<qrange::data::Sample>::new(),
            1 << 30,
            |_, _| {}
        ),
        Err(PerTensorError::NoSamples)
    ));
}

/// Conv without bias, a per-channel Add and a Relu, then a pooling head: qrange folds the
/// Add into the Conv's bias (the Conv keeps its output name) and the Relu into the
/// quantized range.
fn conv_bias_relu() -> proto::ModelProto {
    let w: Vec<f32> = (0..54)
        .map(|i| ((i * 5 % 17) as f32 - 8.0) / 20.0)
        .collect();
    model(
        vec![
            node("Conv", "conv", &["x", "w"], &["c"]),
            node("Add", "bias", &["c", "b"], &["cb"]),
            node("Relu", "relu", &["cb"], &["r"]),
            node("GlobalAveragePool", "pool", &["r"], &["y"]),
        ],
        vec![
            f32_init("w", &[3, 2, 3, 3], &w),
            f32_init("b", &[1, 3, 1, 1], &[0.5, -0.25, 0.1]),
        ],
        vec![vi("x", 1, &[1, 2, 4, 4])],
        vec![vi("y", 1, &[1, 3, 1, 1])],
    )
}

#[test]
fn an_op_that_absorbed_the_next_is_compared_with_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.onnx");
    let q = tmp.path().join("q.onnx");
    write_proto(&a, &conv_bias_relu());
    let data = tmp.path().join("data.npz");
    let x: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    write_npz_arrays(
        &data,
        vec![(
            "x",
            qrange::ir::Tensor::F32(
                ndarray::ArrayD::from_shape_vec(vec![8, 1, 2, 4, 4], x).unwrap(),
            ),
        )],
    );
    let r = qrange(&[
        "quantize",
        &s(&a),
        "--calib",
        &s(&data),
        "--no-validate",
        "-o",
        &s(&q),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = json(&[
        "compare",
        &s(&a),
        &s(&q),
        "--data",
        &s(&data),
        "--per-tensor",
    ]);
    // The quantized Conv computes `cb`: compared with it, not with `c`.
    let cb = layer(&j, "cb");
    assert_eq!(cb["test_value"], "c", "{j:#}");
    assert_eq!(cb["producer"], "bias");
    assert_eq!(cb["dequantized"]["reference"], "r");
    // measured 47.0 and 45.6 dB; gates 46 and 44.5
    assert!(cb["metrics"]["sqnr_db"].as_f64().unwrap() > 46.0, "{cb}");
    assert!(
        cb["dequantized"]["metrics"]["sqnr_db"].as_f64().unwrap() > 44.5,
        "{cb}"
    );
    assert_eq!(
        j["per_tensor"]["unmatched"],
        serde_json::json!([
            {"reason": "absorbed", "value": "c", "into": "cb"},
            {"reason": "not_in_test", "value": "r"},
        ])
    );
}

#[test]
fn a_pin_applies_to_the_model_that_still_has_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let float = s(&fixture("silero_vad/model.onnx"));
    let q = tmp.path().join("vad.onnx");
    let r = qrange(&[
        "quantize",
        &float,
        "--calib",
        &s(&fixture("silero_vad/calib.npz")),
        "--pin",
        "sr=16000",
        "--no-validate",
        "-o",
        &s(&q),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let data = s(&fixture("silero_vad/eval.npz"));
    // Both models take `sr` (the quantized one keeps it declared, unused); the pin
    // applies to both.
    let j = json(&[
        "compare",
        &float,
        &s(&q),
        "--data",
        &data,
        "--pin",
        "sr=16000",
        "--labels",
        "label",
        "--samples",
        "4",
        "--per-tensor",
    ]);
    let outs = j["outputs"].as_object().unwrap();
    assert_eq!(outs.keys().collect::<Vec<_>>(), ["output", "stateN"]);
    // measured 18.5 dB on 4 samples; gate 17.5
    assert!(outs["output"]["sqnr_db"].as_f64().unwrap() > 17.5, "{j:#}");
    assert!(j["notes"].as_array().unwrap().iter().any(|n| n
        .as_str()
        .unwrap()
        .starts_with("--labels: no shared output")));
    assert!(j["per_tensor"]["layers"].as_array().unwrap().len() > 10);
    // The inputs are the same, so only the engine's refusal to load the float model
    // without the pin (its `If` nodes need it) stops a comparison without it.
    let r = qrange(&["compare", &float, &s(&q), "--data", &data]);
    assert_eq!(r.code, 2);
    assert!(
        !r.stderr.contains("different inputs") && r.stderr.contains("model.onnx"),
        "{}",
        r.stderr
    );
}
