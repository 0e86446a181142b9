//! `qrange quantize`, `calibrate` and `merge` end to end on fixtures.

mod common;

use common::*;
use qrange::onnx::proto;
use std::path::Path;

#[test]
fn tiny_cnn_is_quantized_and_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "--labels",
        "label",
        "-o",
        &s(&out),
    ]);
    assert!(j["quantized_ops"].as_u64().unwrap() >= 4, "{j}");
    let v = &j["validation"]["y"];
    // measured 15.5 dB and 14 of 16 samples; gates 14.5 dB and 13 of 16
    assert!(v["sqnr_db"].as_f64().unwrap() > 14.5, "{j}");
    assert!(v["top1_agreement"].as_f64().unwrap() >= 13.0 / 16.0, "{j}");
    assert_eq!(j["eval_samples"], 16);
    let m = load(&out);
    let g = m.graph.as_ref().unwrap();
    // weights are int8 initializers read through DequantizeLinear with an axis; no float copy
    let w = g
        .initializer
        .iter()
        .find(|t| t.name() == "conv1.w.q")
        .expect("int8 weight");
    assert_eq!(w.data_type, Some(3));
    assert!(
        g.initializer.iter().all(|t| t.name() != "conv1.w"),
        "float weight left behind"
    );
    let dq = g
        .node
        .iter()
        .find(|n| n.input.first().map(String::as_str) == Some("conv1.w.q"))
        .unwrap();
    assert_eq!(dq.op_type(), "DequantizeLinear");
    assert!(dq
        .attribute
        .iter()
        .any(|a| a.name() == "axis" && a.i == Some(0)));
    // the bias is int32 with zero point 0
    let b = g
        .initializer
        .iter()
        .find(|t| t.name() == "conv1.b.q")
        .expect("int32 bias");
    assert_eq!(b.data_type, Some(6));
    // the graph output keeps its name
    assert_eq!(g.output[0].name(), "y");
    // the quantized model runs in the engine through qrange run
    let r = qrange(&[
        "run",
        &s(&out),
        "--data",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "-o",
        &s(&tmp.path().join("o.npz")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("exact kernels"), "{}", r.stdout);
}

#[test]
fn output_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for i in 0..2 {
        let out = tmp.path().join(format!("q{i}.onnx"));
        quantize_json(&[
            &s(&fixture("tiny/tiny_mlp.onnx")),
            "--calib",
            &s(&fixture("tiny/tiny_mlp.npz")),
            "--no-validate",
            "-o",
            &s(&out),
        ]);
        outs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn sharded_calibration_merges_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny/tiny_cnn.onnx");
    // split the 8 calibration samples into two shards
    let specs = vec![qrange::data::InputSpec::new(
        "x",
        qrange::ir::DType::F32,
        Some(vec![Some(1), Some(3), Some(8), Some(8)]),
    )];
    let ds = qrange::data::load(&fixture("tiny/tiny_cnn.npz"), &specs).unwrap();
    let all = ds.read_all().unwrap();
    let (a, b) = all.split_at(3);
    let sa = tmp.path().join("a.npz");
    let sb = tmp.path().join("b.npz");
    qrange::data::write_npz(&sa, &qrange::data::stack(a).unwrap()).unwrap();
    qrange::data::write_npz(&sb, &qrange::data::stack(b).unwrap()).unwrap();
    for (d, o) in [(&sa, "a.json"), (&sb, "b.json")] {
        let r = qrange(&[
            "calibrate",
            &s(&model),
            "--calib",
            &s(d),
            "-o",
            &s(&tmp.path().join(o)),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let merged = tmp.path().join("ab.json");
    let r = qrange(&[
        "merge",
        &s(&tmp.path().join("a.json")),
        &s(&tmp.path().join("b.json")),
        "-o",
        &s(&merged),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let whole = tmp.path().join("whole.json");
    let r = qrange(&[
        "calibrate",
        &s(&model),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "-o",
        &s(&whole),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    // quantizing from the merged ranges gives the same model as calibrating in one go
    let q1 = tmp.path().join("q1.onnx");
    let q2 = tmp.path().join("q2.onnx");
    // (`--method auto`: adaptive selection needs calibration samples, a ranges file has none.)
    quantize_json(&[
        &s(&model),
        "--ranges",
        &s(&merged),
        "--no-validate",
        "--method",
        "auto",
        "-o",
        &s(&q1),
    ]);
    quantize_json(&[
        &s(&model),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--no-validate",
        "--method",
        "auto",
        "-o",
        &s(&q2),
    ]);
    assert_eq!(std::fs::read(&q1).unwrap(), std::fs::read(&q2).unwrap());
}

#[test]
fn silero_vad_comes_out_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("vad.onnx");
    let j = quantize_json(&[
        &s(&fixture("silero_vad/model.onnx")),
        "--calib",
        &s(&fixture("silero_vad/calib.npz")),
        "--eval",
        &s(&fixture("silero_vad/eval.npz")),
        "--pin",
        "sr=16000",
        "-o",
        &s(&out),
    ]);
    assert!(j["quantized_ops"].as_u64().unwrap() >= 10, "{j}");
    let m = load(&out);
    let g = m.graph.as_ref().unwrap();
    assert!(g.node.iter().all(|n| n.op_type() != "If"));
    let q = g
        .node
        .iter()
        .filter(|n| n.op_type() == "QuantizeLinear")
        .count();
    assert!(q >= 10, "{q} QuantizeLinear");
    // measured 36.4 dB; gate 35
    assert!(
        j["validation"]["output"]["sqnr_db"].as_f64().unwrap() > 35.0,
        "{j}"
    );
}

#[test]
fn bad_quantize_inputs_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cnn = s(&fixture("tiny/tiny_cnn.onnx"));
    let mlp = s(&fixture("tiny/tiny_mlp.onnx"));
    let stats = tmp.path().join("mlp.json");
    let r = qrange(&[
        "calibrate",
        &mlp,
        "--calib",
        &s(&fixture("tiny/tiny_mlp.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = tmp.path().join("q.onnx");
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            vec![
                cnn.clone(),
                "--ranges".into(),
                s(&stats),
                "--no-validate".into(),
            ],
            &["ranges file", "another model"],
        ),
        (
            vec![
                cnn.clone(),
                "--calib".into(),
                s(&fixture("tiny/tiny_mlp.npz")),
            ],
            &["tiny_mlp.npz", "'x'"],
        ),
        (
            vec![cnn.clone(), "--calib".into(), "random:0".into()],
            &["random:0", "positive"],
        ),
        (
            vec![
                cnn.clone(),
                "--calib".into(),
                s(&fixture("tiny/tiny_cnn.npz")),
                "--percentile".into(),
                "0".into(),
            ],
            &["--percentile"],
        ),
        (
            vec![
                cnn.clone(),
                "--calib".into(),
                s(&fixture("tiny/tiny_cnn.npz")),
                "--target".into(),
                "tensorrt".into(),
                "--activation-type".into(),
                "u8".into(),
            ],
            &["tensorrt", "symmetric"],
        ),
        (
            vec![
                cnn.clone(),
                "--calib".into(),
                s(&fixture("tiny/tiny_cnn.npz")),
                "--labels".into(),
                "nope".into(),
            ],
            &["'nope'", "label"],
        ),
        (vec![cnn.clone()], &["--calib"]),
    ];
    for (mut args, expect) in cases {
        args.insert(0, "quantize".into());
        args.extend(["-o".into(), s(&out)]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = qrange(&argv);
        let first = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or("");
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        for e in expect {
            assert!(first.contains(e), "{args:?}: {first:?} lacks {e:?}");
        }
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(!out.exists(), "{args:?} wrote an output");
    }
}

#[test]
fn tiny_cnn_quantized_dump_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    quantize_json(&[
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--method",
        "minmax",
        "--no-validate",
        "-o",
        &s(&out),
    ]);
    let m = qrange::onnx::read_model(&out).unwrap();
    insta::assert_snapshot!("tiny_cnn_qdq", qrange::ir::dump::dump_model(&m));
}

/// Calibration statistics of a real model are the same bytes whatever the thread count.
#[test]
fn calibration_does_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("ppocr_cls/model.onnx");
    let calib = fixture("ppocr_cls/calib.npz");
    let mut files = Vec::new();
    for threads in ["1", "3"] {
        let out = tmp.path().join(format!("t{threads}.json"));
        let r = qrange(&[
            "calibrate",
            &s(&model),
            "--calib",
            &s(&calib),
            "--threads",
            threads,
            "-o",
            &s(&out),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[0].len() > 10_000);
    assert_eq!(files[0], files[1]);
}

#[test]
fn adaptive_writes_the_set_it_reports_best() {
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&fixture("ppocr_cls/model.onnx"));
    let calib = s(&fixture("ppocr_cls/calib.npz"));
    let out = tmp.path().join("adaptive.onnx");
    let j = quantize_json(&[&model, "--calib", &calib, "--no-validate", "-o", &s(&out)]);
    let sel = &j["selection"];
    assert!(sel["skipped"].is_null(), "{sel}");
    assert!(sel["samples"].as_u64().unwrap() >= 1, "{sel}");
    let rows = sel["sqnr_db"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(names, ["auto", "minmax", "percentile", "entropy", "mse"]);
    let chosen = sel["chosen"].as_str().unwrap();
    let figure = |m: &str| {
        rows.iter().find(|r| r[0] == m).unwrap()[1]
            .as_f64()
            .unwrap_or(f64::INFINITY)
    };
    let best = names
        .iter()
        .map(|m| figure(m))
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(figure(chosen), best, "{sel}");
    // The sets really differ here (else there is nothing to choose).
    assert!(names.iter().any(|m| figure(m) < best), "{sel}");
    // What is written is that method's model, byte for byte.
    let fixed = tmp.path().join("fixed.onnx");
    let k = quantize_json(&[
        &model,
        "--calib",
        &calib,
        "--no-validate",
        "--method",
        chosen,
        "-o",
        &s(&fixed),
    ]);
    assert!(k.get("selection").is_none(), "{k}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fixed).unwrap());
}

#[test]
fn adaptive_without_samples_says_it_keeps_auto() {
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let stats = tmp.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &model,
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = quantize_json(&[
        &model,
        "--ranges",
        &s(&stats),
        "--no-validate",
        "-o",
        &s(&tmp.path().join("q.onnx")),
    ]);
    assert_eq!(j["selection"]["chosen"], "auto", "{j}");
    assert!(
        j["selection"]["skipped"]
            .as_str()
            .unwrap()
            .contains("ranges come from a file"),
        "{j}"
    );
    let r = qrange(&[
        "quantize",
        &model,
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--select-samples",
        "0",
        "-o",
        &s(&tmp.path().join("z.onnx")),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--select-samples"), "{}", r.stderr);
    assert!(!tmp.path().join("z.onnx").exists());
}

/// `qrange quantize` of the ppocr_cls fixture on its calibration data, without validation,
/// with `extra` options, written to `dir/name`: the JSON summary and the written model.
fn quantize_cls(dir: &Path, name: &str, extra: &[&str]) -> (serde_json::Value, proto::ModelProto) {
    let (model, calib) = (
        s(&fixture("ppocr_cls/model.onnx")),
        s(&fixture("ppocr_cls/calib.npz")),
    );
    let out = dir.join(name);
    let o = s(&out);
    let mut args = vec![model.as_str(), "--calib", calib.as_str(), "--no-validate"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", &o]);
    (quantize_json(&args), load(&out))
}

/// Per-channel scales of weight `w` in a written model.
fn weight_scales(m: &proto::ModelProto, w: &str) -> Vec<f32> {
    let g = m.graph.as_ref().unwrap();
    let t = g
        .initializer
        .iter()
        .find(|t| t.name() == format!("{w}.scale"))
        .unwrap_or_else(|| panic!("no scale for '{w}'"));
    if !t.float_data.is_empty() {
        return t.float_data.clone();
    }
    t.raw_data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn mse_weight_ranges_clip_some_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let (jm, minmax) = quantize_cls(tmp.path(), "minmax.onnx", &["--method", "minmax"]);
    let (je, mse) = quantize_cls(
        tmp.path(),
        "mse.onnx",
        &["--method", "minmax", "--weight-method", "mse"],
    );
    assert!(!jm["weight"].as_str().unwrap().contains("mse"), "{jm}");
    assert!(je["weight"].as_str().unwrap().contains("mse"), "{je}");
    // Every channel's range is at most min/max's, at least half of it, and some are clipped.
    let g = minmax.graph.as_ref().unwrap();
    let mut clipped = 0;
    // Weights: int8 initializers of rank 2 or more, stored as `<name>.q`.
    let mut weights = 0;
    for t in g
        .initializer
        .iter()
        .filter(|t| t.data_type == Some(3) && t.dims.len() >= 2)
    {
        weights += 1;
        let w = t.name().trim_end_matches(".q");
        let (a, b) = (weight_scales(&minmax, w), weight_scales(&mse, w));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(*y <= *x && *y >= 0.5 * x * (1.0 - 1e-6), "{w}: {y} vs {x}");
            clipped += usize::from(y < x);
        }
    }
    assert!(weights > 10, "{weights} weights found");
    assert!(clipped > 0, "no channel clipped");
}

#[test]
fn every_quantized_conv_gets_an_int32_bias_even_after_a_folded_relu() {
    // ppocr_cls: 14 Convs read the output of a Relu folded into its producer; their
    // biases must be quantized with that producer's scale like every other Conv's (ONNX
    // Runtime quantizes a float bias there itself, so a float one would make the model it
    // runs differ from the one validated).
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = quantize_cls(tmp.path(), "q.onnx", &["--method", "auto"]);
    let g = m.graph.as_ref().unwrap();
    let producer = |v: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == v));
    let is_dq = |v: &str| producer(v).is_some_and(|n| n.op_type() == "DequantizeLinear");
    let mut convs = 0;
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv" && n.input.len() == 3)
    {
        if is_dq(&n.input[0]) && is_dq(&n.input[1]) {
            convs += 1;
            assert!(is_dq(&n.input[2]), "Conv '{}' keeps a float bias", n.name());
        }
    }
    assert!(convs >= 50, "{convs} quantized Convs");
}

#[test]
fn seven_bit_weights_spare_depthwise_convolutions() {
    // By default (`--target ort-cpu`) weights use 7 bits, against the u8 x s8 byte-pair
    // saturation of ONNX Runtime's x86 kernels without VNNI; its depthwise kernels widen
    // both operands first, so depthwise Conv weights keep all 8 bits.
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = quantize_cls(tmp.path(), "q.onnx", &["--method", "auto"]);
    let g = m.graph.as_ref().unwrap();
    let init = |name: &str| g.initializer.iter().find(|t| t.name() == name);
    let (mut depthwise, mut other) = (0, 0);
    for n in g.node.iter().filter(|n| n.op_type() == "Conv") {
        let Some(dq) = g.node.iter().find(|d| d.output.first() == n.input.get(1)) else {
            continue;
        };
        let Some(w) = dq.input.first().and_then(|q| init(q)) else {
            continue;
        };
        assert_eq!(w.data_type, Some(3), "{}: int8 weights", n.name());
        let peak = w
            .raw_data()
            .iter()
            .map(|&b| (b as i8).unsigned_abs())
            .max()
            .unwrap();
        let group = n
            .attribute
            .iter()
            .find(|a| a.name() == "group")
            .and_then(|a| a.i)
            .unwrap_or(1);
        if group > 1 && w.dims[1] == 1 && group == w.dims[0] {
            depthwise += 1;
            assert_eq!(peak, 127, "depthwise Conv '{}' on the full grid", n.name());
        } else {
            other += 1;
            assert!(peak <= 64, "Conv '{}' reaches {peak}", n.name());
        }
    }
    assert!(
        depthwise >= 5 && other >= 5,
        "{depthwise} depthwise, {other} other"
    );
}
