//! SmoothQuant (`quantize --smooth ALPHA`): the migration leaves the float model's outputs
//! unchanged (folded into a LayerNormalization, or through a Mul beside a residual
//! reader), and on the reduced MiniLM it makes the static model more accurate than the
//! same command without it.

mod common;
mod ir_build;

use common::*;
use ir_build::{f32s, B};
use qrange::exec::{Session, SessionOptions};
use qrange::ir::{DType, Model, Tensor};
use qrange::onnx::{encode_model, ExternalPolicy};
use qrange::passes::{Flow, PassCx, Phase, Runner};
use qrange::pipeline::smooth;
use std::collections::BTreeMap;

/// Two LayerNormalizations over 4 channels: `h` feeds two MatMuls and a residual Add (the
/// Mul case), `h2` feeds one MatMul only (the fold case).
fn model() -> Model {
    let w = |k: f32| -> Vec<f32> {
        (0..16)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1 * k)
            .collect()
    };
    let mut b = B::new("smooth");
    b.input("x", DType::F32, "3,4")
        .init("g1", &f32s(&[1.0, 0.5, 4.0, 1.5], &[4]))
        .init("b1", &f32s(&[0.1, -0.2, 3.0, 0.0], &[4]))
        .init("g2", &f32s(&[2.0, 0.3, 1.0, 6.0], &[4]))
        .init("b2", &f32s(&[0.0, 0.5, -0.1, 2.0], &[4]))
        .init("w1", &f32s(&w(1.0), &[4, 4]))
        .init("w2", &f32s(&w(-0.5), &[4, 4]))
        .init("w3", &f32s(&w(2.0), &[4, 4]));
    b.op("LayerNormalization", &["x", "g1", "b1"], &["h"], vec![]);
    b.op("MatMul", &["h", "w1"], &["a"], vec![]);
    b.op("MatMul", &["h", "w2"], &["c"], vec![]);
    b.op("Add", &["h", "a"], &["r"], vec![]);
    b.op("LayerNormalization", &["x", "g2", "b2"], &["h2"], vec![]);
    b.op("MatMul", &["h2", "w3"], &["d"], vec![]);
    b.output("r").output("c").output("d");
    let mut m = b.model(17);
    let mut cx = PassCx {
        input_shapes: [("x".to_string(), vec![3, 4])].into_iter().collect(),
        ..PassCx::default()
    };
    let mut runner = Runner::new();
    runner
        .run_phase(Phase::Specialise, &mut m, &mut cx, &mut |_, _| {
            Flow::Continue
        })
        .unwrap();
    m
}

fn run(m: &Model, x: &Tensor) -> BTreeMap<String, Tensor> {
    let (proto, _) = encode_model(m, &ExternalPolicy::Inline, "").unwrap();
    let sample: BTreeMap<String, Tensor> = [("x".to_string(), x.clone())].into_iter().collect();
    let s = Session::new(&proto, None, &sample, &SessionOptions::default()).unwrap();
    s.run(&sample).unwrap()
}

#[test]
fn the_migration_leaves_the_float_outputs_unchanged() {
    let m = model();
    let groups = smooth::groups(&m);
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0].value, "h");
    assert_eq!(groups[0].matmuls.len(), 2);
    assert!(!groups[0].fold, "the residual Add reads h too");
    assert_eq!(groups[1].value, "h2");
    assert!(groups[1].fold, "h2's MatMul is its only reader");
    // Channel maxima as a calibration run would give them (one outlier channel each).
    let maxima: BTreeMap<String, Vec<f32>> = [
        ("h".to_string(), vec![1.0, 0.5, 9.0, 1.5]),
        ("h2".to_string(), vec![2.0, 0.3, 1.0, 12.0]),
    ]
    .into_iter()
    .collect();
    let f = smooth::factors(&m, &groups, &maxima, 0.5).unwrap();
    // The outlier channels (2 of h, 3 of h2) get the largest factors.
    assert!(f[0][2] > 3.0 * f[0][1] && f[1][3] > 2.0 * f[1][1], "{f:?}");
    let mut sm = m.clone();
    smooth::apply(&mut sm, &groups, &f).unwrap();
    sm.graph.verify(&[]).unwrap();
    let muls = sm
        .graph
        .ops()
        .filter(|&o| sm.graph.op(o).op_type == "Mul")
        .count();
    assert_eq!(muls, 1, "one Mul for h, none for the folded h2");
    let x = f32s(
        &[
            0.3, -1.2, 2.5, 0.7, -0.4, 0.9, -2.0, 1.1, 1.5, 0.2, 0.0, -0.8,
        ],
        &[3, 4],
    );
    let (before, after) = (run(&m, &x), run(&sm, &x));
    for name in ["r", "c", "d"] {
        let (Tensor::F32(a), Tensor::F32(b)) = (&before[name], &after[name]) else {
            panic!("float outputs");
        };
        for (u, v) in a.iter().zip(b.iter()) {
            assert!(
                (u - v).abs() <= 1e-5 * u.abs().max(1.0),
                "{name}: {u} vs {v}"
            );
        }
    }
    // The weights did change: the migration is not a no-op.
    let w3 = |m: &Model| {
        m.graph
            .const_of(m.graph.value_by_name("w3").unwrap())
            .unwrap()
            .to_tensor()
            .unwrap()
    };
    assert_ne!(w3(&m), w3(&sm));
}

fn minilm_sqnr(extra: &[&str]) -> (f64, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let model = fixture("minilm_l3/model.onnx");
    let mut args = vec![
        s(&model),
        "--calib".into(),
        s(&fixture("minilm_l3/calib.npz")),
        "--eval".into(),
        s(&fixture("minilm_l3/eval.npz")),
        "-o".into(),
        s(&out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let j = quantize_json(&refs);
    (j["validation"]["461"]["sqnr_db"].as_f64().unwrap(), j)
}

#[test]
fn smoothing_by_default_makes_the_reduced_minilm_more_accurate() {
    let (plain, _) = minilm_sqnr(&["--smooth", "off"]);
    // The default command smooths with alpha 0.5.
    let (smoothed, j) = minilm_sqnr(&[]);
    // measured 23.1 dB without, 27.3 dB with alpha 0.5 on the 16 evaluation samples
    assert!(smoothed > plain + 2.5, "{plain} dB → {smoothed} dB: {j}");
    let notes = j["notes"].to_string();
    assert!(notes.contains("smooth: alpha 0.5"), "{notes}");
}

/// A model without a LayerNormalization feeding a MatMul (a CNN) has nothing to smooth: the
/// default command says nothing about smoothing, in the printed summary or in `--json`.
#[test]
fn nothing_is_said_about_smoothing_a_cnn() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "quantize".to_string(),
        s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib".into(),
        s(&fixture("tiny/tiny_cnn.npz")),
        "--no-validate".into(),
        "-o".into(),
        s(&tmp.path().join("q.onnx")),
    ];
    let args: Vec<&str> = base.iter().map(String::as_str).collect();
    let r = qrange(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = format!("{}{}", r.stdout, r.stderr);
    assert!(summary.contains("ops        6 quantized"), "{summary}");
    assert!(!summary.contains("smooth:"), "{summary}");
    let j = quantize_json(&args[1..]);
    let notes = j["notes"].to_string();
    assert!(!notes.contains("smooth"), "{notes}");
}
