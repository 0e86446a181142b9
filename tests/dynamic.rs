//! `quantize --mode dynamic`: int8 weights, activations quantized at run time
//! (DynamicQuantizeLinear → MatMulInteger/ConvInteger), no calibration data needed.

mod common;

use common::{fixture, op_counts, qrange, quantize_json, s};

#[test]
fn dynamic_mode_writes_integer_ops_and_validates_against_the_float_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_crnn.onnx")),
        "--mode",
        "dynamic",
        "--eval",
        &s(&fixture("tiny/tiny_crnn.eval.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(j["mode"], "dynamic");
    // Two Conv, the LSTM (ONNX Runtime's DynamicQuantizeLSTM on the default target ort-cpu)
    // and the MatMul after it.
    assert_eq!(j["quantized_ops"], 4, "{j}");
    let reasons = j["float_reasons"].as_object().unwrap();
    assert!(!reasons.keys().any(|k| k.contains("LSTM")), "{reasons:?}");
    assert_eq!(j["calibration_samples"], 0);
    let v = j["validation"].as_object().unwrap();
    assert!(!v.is_empty());
    for (name, m) in v {
        let db = m["sqnr_db"].as_f64().unwrap();
        assert!(db > 25.0, "{name}: {db} dB");
    }
    let ops = op_counts(&out);
    assert_eq!(ops.get("ConvInteger"), Some(&2), "{ops:?}");
    assert_eq!(ops.get("MatMulInteger"), Some(&1), "{ops:?}");
    assert_eq!(ops.get("DynamicQuantizeLSTM"), Some(&1), "{ops:?}");
    assert!(!ops.contains_key("LSTM"), "{ops:?}");
    assert!(ops.get("DynamicQuantizeLinear") >= Some(&2), "{ops:?}");
    assert!(!ops.contains_key("QuantizeLinear"), "{ops:?}");
    assert!(
        !ops.contains_key("Conv") && !ops.contains_key("MatMul"),
        "{ops:?}"
    );
    // The summary says what the engine ran exactly.
    let notes = j["notes"].as_array().unwrap();
    for op in ["DynamicQuantizeLinear", "DynamicQuantizeLSTM"] {
        assert!(
            notes.iter().any(|n| n.as_str().unwrap().contains(op)),
            "{op}: {notes:?}"
        );
    }
    // The LSTM's weights are int8, transposed, one scale per gate column; com.microsoft is
    // imported.
    let m = qrange::onnx::read_model(&out).unwrap();
    assert!(m.opset("com.microsoft").is_some());
    let g = &m.graph;
    let o = g
        .ops()
        .find(|&o| g.op(o).op_type == "DynamicQuantizeLSTM")
        .unwrap();
    assert_eq!(g.op(o).domain.as_deref(), Some("com.microsoft"));
    let hidden = g.op(o).attr_int("hidden_size").unwrap() as usize;
    let x_dims = |slot: usize| g.const_of(g.input(o, slot).unwrap()).unwrap().dims.clone();
    let (w, r, ws, wz) = (x_dims(1), x_dims(2), x_dims(8), x_dims(9));
    assert_eq!(&w[2..], &[4 * hidden as i64], "{w:?}");
    assert_eq!(r, vec![w[0], hidden as i64, 4 * hidden as i64]);
    assert_eq!(ws, vec![w[0], 4 * hidden as i64]);
    assert_eq!(wz, ws);
    // The integer products' weights are uint8 with one zero point of 128 (symmetric codes
    // 1..=255: uint8 × uint8 products, summed exactly by ONNX Runtime on every x86 CPU).
    let mut products = 0;
    for o in g.ops() {
        if !matches!(g.op(o).op_type.as_str(), "MatMulInteger" | "ConvInteger") {
            continue;
        }
        products += 1;
        let w = g
            .const_of(g.input(o, 1).unwrap())
            .unwrap()
            .to_tensor()
            .unwrap();
        let z = g
            .const_of(g.input(o, 3).unwrap())
            .unwrap()
            .to_tensor()
            .unwrap();
        assert_eq!(
            w.dtype(),
            qrange::ir::DType::U8,
            "{}",
            g.op(o).display_name()
        );
        assert_eq!(z.dtype(), qrange::ir::DType::U8);
        assert_eq!(z.to_f64_vec().unwrap(), vec![128.0]);
        assert!(
            w.to_f64_vec().unwrap().iter().all(|&c| c >= 1.0),
            "code 0 is off the grid"
        );
    }
    assert_eq!(products, 3);
}

/// Off ONNX Runtime, LSTM weights stay float with their reason (DynamicQuantizeLSTM is a
/// com.microsoft op); GRU stays float on every target.
#[test]
fn dynamic_mode_keeps_lstm_float_off_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_crnn.onnx")),
        "--mode",
        "dynamic",
        "--target",
        "generic",
        "-o",
        &s(&out),
    ]);
    assert_eq!(j["quantized_ops"], 3, "{j}");
    let reasons = j["float_reasons"].as_object().unwrap();
    assert!(
        reasons
            .keys()
            .any(|k| k.contains("LSTM") && k.contains("target generic")),
        "{reasons:?}"
    );
    let ops = op_counts(&out);
    assert_eq!(ops.get("LSTM"), Some(&1), "{ops:?}");
    assert!(!ops.contains_key("DynamicQuantizeLSTM"), "{ops:?}");
}

#[test]
fn dynamic_mode_runs_without_data_and_says_it_did_not_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--mode",
        "dynamic",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("mode       dynamic"), "{}", r.stdout);
    assert!(r.stdout.contains("not validated: no data"), "{}", r.stdout);
    let ops = op_counts(&out);
    assert_eq!(ops.get("ConvInteger"), Some(&2), "{ops:?}");
    // Gemm (transB) becomes MatMulInteger on the transposed int8 weight, then its bias.
    assert_eq!(ops.get("MatMulInteger"), Some(&1), "{ops:?}");
    assert!(!ops.contains_key("Gemm"), "{ops:?}");
    // Without --calib, a static run still asks for data.
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "-o",
        &s(&tmp.path().join("s.onnx")),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no calibration data"), "{}", r.stderr);
}

/// Gemm with `transB` (tiny_cnn's classifier): the int8 weight is stored transposed for
/// MatMulInteger, its scales per output column; the model still computes the float one.
#[test]
fn dynamic_gemm_and_conv_follow_the_float_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--mode",
        "dynamic",
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(j["quantized_ops"], 3, "{j}");
    for (name, m) in j["validation"].as_object().unwrap() {
        let db = m["sqnr_db"].as_f64().unwrap();
        assert!(db > 25.0, "{name}: {db} dB");
    }
}

#[test]
fn dynamic_mode_is_deterministic_and_static_is_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&fixture("tiny/tiny_crnn.onnx"));
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "quantize",
            model.as_str(),
            "--calib",
            "",
            "--no-validate",
            "-o",
        ];
        let calib = s(&fixture("tiny/tiny_crnn.npz"));
        args[3] = &calib;
        let o = s(&out);
        args.push(&o);
        args.extend_from_slice(extra);
        let r = qrange(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::fs::read(&out).unwrap()
    };
    assert_eq!(
        run("d1.onnx", &["--mode", "dynamic"]),
        run("d2.onnx", &["--mode", "dynamic"])
    );
    assert_eq!(run("s1.onnx", &[]), run("s2.onnx", &["--mode", "static"]));
}

#[test]
fn dump_after_quantize_dynamic_on_tiny_crnn() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_crnn.onnx")),
        "--mode",
        "dynamic",
        "--stop-after",
        "quantize_dynamic",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!out.exists());
    assert!(
        r.stdout.starts_with("; after pass quantize_dynamic\n"),
        "{}",
        r.stdout
    );
    insta::assert_snapshot!("tiny_crnn_quantize_dynamic", r.stdout);
}

/// The transformer fixture: every MatMul with a weight and the word-embedding table
/// quantized; the attention MatMuls (two computed inputs) stay float.
#[test]
fn dynamic_mode_on_the_transformer_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("minilm_l3/model.onnx")),
        "--mode",
        "dynamic",
        "--calib",
        &s(&fixture("minilm_l3/eval.npz")),
        "-o",
        &s(&out),
    ]);
    let reasons = j["float_reasons"].as_object().unwrap();
    assert!(
        reasons
            .keys()
            .any(|k| k.contains("activation × activation")),
        "{reasons:?}"
    );
    let ops = op_counts(&out);
    assert_eq!(ops.get("MatMulInteger"), Some(&6), "{ops:?}");
    assert_eq!(ops.get("MatMul"), Some(&2), "{ops:?}");
    let size = j["size_after"].as_f64().unwrap() / j["size_before"].as_f64().unwrap();
    assert!(size < 0.3, "{size}");
    let e = &j["validation"]["461"];
    assert!(e["sqnr_db"].as_f64().unwrap() > 15.0, "{e}");
}
