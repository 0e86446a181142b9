//! Cross-layer equalization (`quantize --equalize`) and bias correction
//! (`--bias-correction`): equalization finds Conv→Relu→Conv chains (a depthwise Conv
//! between two others) and MatMul→Add→Relu→Gemm chains, leaves Clip(0, 6) pairs alone,
//! keeps the float outputs and leaves every pair's per-channel ranges equal; bias
//! correction brings the quantized model's mean output back to the float model's.

mod common;
mod ir_build;

use common::*;
use ir_build::{f32s, B};
use qrange::exec::{Session, SessionOptions};
use qrange::ir::{AttrValue, DType, Model, Tensor};
use qrange::onnx::{encode_model, ExternalPolicy};
use qrange::passes::{Flow, PassCx, Phase, Runner};
use qrange::pipeline::equalize;
use qrange::quant::equalize::{channel_abs_max, Layout, Side};
use std::collections::BTreeMap;

/// Deterministic values in [-1, 1), each channel of `per` values scaled by `scale(c)`.
fn values(n: usize, per: usize, seed: u64, scale: impl Fn(usize) -> f32) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((x >> 33) as f32) / (1u64 << 31) as f32 * 2.0 - 1.0;
            u * scale(i / per)
        })
        .collect()
}

fn ints(v: &[i64]) -> AttrValue {
    AttrValue::Ints(v.to_vec())
}

/// Channel ranges that differ by up to 50x.
fn spread(c: usize) -> f32 {
    [0.05, 2.5, 0.4, 1.0, 0.1, 1.7, 0.02, 0.8][c % 8]
}

fn specialise(mut m: Model, shapes: &[(&str, Vec<i64>)]) -> Model {
    let mut cx = PassCx {
        input_shapes: shapes
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect(),
        ..PassCx::default()
    };
    Runner::new()
        .run_phase(Phase::Specialise, &mut m, &mut cx, &mut |_, _| {
            Flow::Continue
        })
        .unwrap();
    m
}

/// x[1,3,6,6] → Conv 3→8 (3×3) → Relu → depthwise Conv 8 (3×3) → Relu → Conv 8→4 (1×1)
/// → `y`; x → Conv 3→4 → Clip(0, 6) → Conv 4→2 → `z` (not homogeneous: left alone);
/// m[2,4] → MatMul [4,6] → Add b[6] → Relu → Gemm (transB) [3,6] → `g`.
fn model() -> Model {
    let mut b = B::new("cle");
    b.input("x", DType::F32, "1,3,6,6")
        .input("m", DType::F32, "2,4")
        .init("w1", &f32s(&values(216, 27, 1, spread), &[8, 3, 3, 3]))
        .init("b1", &f32s(&values(8, 1, 2, |_| 0.5), &[8]))
        .init(
            "w2",
            &f32s(&values(72, 9, 3, |c| spread(c + 3)), &[8, 1, 3, 3]),
        )
        .init("b2", &f32s(&values(8, 1, 4, |_| 0.3), &[8]))
        .init("w3", &f32s(&values(32, 8, 5, |_| 1.0), &[4, 8, 1, 1]))
        .init("b3", &f32s(&values(4, 1, 6, |_| 0.2), &[4]))
        .init("w4", &f32s(&values(108, 27, 7, spread), &[4, 3, 3, 3]))
        .init("w5", &f32s(&values(8, 4, 8, |_| 1.0), &[2, 4, 1, 1]))
        .init("lo", &f32s(&[0.0], &[]))
        .init("hi", &f32s(&[6.0], &[]))
        .init("mw1", &f32s(&values(24, 1, 9, |c| spread(c % 6)), &[4, 6]))
        .init("mb1", &f32s(&values(6, 1, 10, |_| 0.4), &[6]))
        .init("mw2", &f32s(&values(18, 6, 11, |_| 1.0), &[3, 6]));
    let conv = |k: i64, group: i64| {
        vec![
            ("kernel_shape", ints(&[k, k])),
            ("pads", ints(&[k / 2; 4])),
            ("group", AttrValue::Int(group)),
        ]
    };
    b.op("Conv", &["x", "w1", "b1"], &["c1"], conv(3, 1));
    b.op("Relu", &["c1"], &["r1"], vec![]);
    b.op("Conv", &["r1", "w2", "b2"], &["c2"], conv(3, 8));
    b.op("Relu", &["c2"], &["r2"], vec![]);
    b.op("Conv", &["r2", "w3", "b3"], &["y"], conv(1, 1));
    b.op("Conv", &["x", "w4"], &["c4"], conv(3, 1));
    b.op("Clip", &["c4", "lo", "hi"], &["r4"], vec![]);
    b.op("Conv", &["r4", "w5"], &["z"], conv(1, 1));
    b.op("MatMul", &["m", "mw1"], &["mm"], vec![]);
    b.op("Add", &["mm", "mb1"], &["ma"], vec![]);
    b.op("Relu", &["ma"], &["mr"], vec![]);
    b.op(
        "Gemm",
        &["mr", "mw2"],
        &["g"],
        vec![("transB", AttrValue::Int(1))],
    );
    b.output("y").output("z").output("g");
    specialise(b.model(13), &[("x", vec![1, 3, 6, 6]), ("m", vec![2, 4])])
}

fn run(m: &Model, feeds: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let (proto, _) = encode_model(m, &ExternalPolicy::Inline, "").unwrap();
    let s = Session::new(&proto, None, feeds, &SessionOptions::default()).unwrap();
    s.run(feeds).unwrap()
}

fn weight(m: &Model, name: &str) -> Vec<f32> {
    let t = m
        .graph
        .const_of(m.graph.value_by_name(name).unwrap())
        .unwrap()
        .to_tensor()
        .unwrap();
    let Tensor::F32(a) = t else { panic!("f32") };
    a.iter().copied().collect()
}

/// Per-channel ranges of a weight on one side.
fn ranges(m: &Model, name: &str, layout: &Layout, side: Side) -> Vec<f32> {
    channel_abs_max(
        &weight(m, name),
        &layout.channel_map(side),
        layout.channels(side),
    )
}

/// `max_i |a_i / b_i − 1|`.
fn mismatch(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x / y - 1.0).abs()))
}

#[test]
fn equalization_keeps_the_float_outputs_and_equalizes_every_pair() {
    let m = model();
    let pairs = equalize::pairs(&m);
    let names: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.first.as_str(), p.second.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Conv_c1", "Conv_c2"),
            ("Conv_c2", "Conv_y"),
            ("MatMul_mm", "Gemm_g")
        ],
        "the Clip(0, 6) pair is not homogeneous"
    );
    assert_eq!(pairs[2].bias_add.as_deref(), Some("mb1"));
    let (f, sweeps, spread) = equalize::factors(&m, &pairs).unwrap();
    assert!(
        spread <= equalize::TOLERANCE && sweeps > 2,
        "{sweeps} {spread}"
    );
    let mut e = m.clone();
    equalize::apply(&mut e, &pairs, &f).unwrap();
    e.graph.verify(&[]).unwrap();

    let conv = |dims: &[usize], group| Layout::Conv {
        dims: dims.to_vec(),
        group,
    };
    let (l1, l2, l3) = (
        conv(&[8, 3, 3, 3], 1),
        conv(&[8, 1, 3, 3], 8),
        conv(&[4, 8, 1, 1], 1),
    );
    let (lm1, lm2) = (Layout::Rows { k: 4, n: 6 }, Layout::Cols { n: 3, k: 6 });
    // Before: the channel ranges of each pair's two sides differ widely.
    let before = mismatch(
        &ranges(&m, "w1", &l1, Side::Out),
        &ranges(&m, "w2", &l2, Side::In),
    );
    assert!(before > 5.0, "{before}");
    // After: every pair's two sides match channel by channel (the depthwise Conv's input
    // and output ranges are the same weights, so the chain agrees all along).
    for (a, la, b, lb) in [
        ("w1", &l1, "w2", &l2),
        ("w2", &l2, "w3", &l3),
        ("mw1", &lm1, "mw2", &lm2),
    ] {
        let (ra, rb) = (ranges(&e, a, la, Side::Out), ranges(&e, b, lb, Side::In));
        assert!(mismatch(&ra, &rb) < 1e-3, "{a} {ra:?} vs {b} {rb:?}");
    }
    // The Clip pair's weights are untouched.
    assert_eq!(weight(&m, "w4"), weight(&e, "w4"));
    assert_ne!(weight(&m, "w1"), weight(&e, "w1"));

    let feeds: BTreeMap<String, Tensor> = [
        (
            "x".to_string(),
            f32s(&values(108, 1, 20, |_| 2.0), &[1, 3, 6, 6]),
        ),
        ("m".to_string(), f32s(&values(8, 1, 21, |_| 2.0), &[2, 4])),
    ]
    .into_iter()
    .collect();
    let (a, b) = (run(&m, &feeds), run(&e, &feeds));
    for name in ["y", "z", "g"] {
        let (Tensor::F32(u), Tensor::F32(v)) = (&a[name], &b[name]) else {
            panic!("float outputs")
        };
        let scale = u.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.1, "{name}: a live output");
        for (p, q) in u.iter().zip(v.iter()) {
            assert!((p - q).abs() <= 1e-5 * scale, "{name}: {p} vs {q}");
        }
    }
}

/// One Conv on a positive input (the mean input is far from zero, so weight rounding
/// shifts the output mean), quantized with 3-bit per-tensor weights: the mean of each
/// output channel over held-out samples, float against quantized.
fn mean_shift(extra: &[&str]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut b = B::new("bc");
    b.input("x", DType::F32, "1,4,8,8")
        .init("w", &f32s(&values(144, 36, 31, spread), &[4, 4, 3, 3]))
        .init("b", &f32s(&[0.1, -0.2, 0.3, 0.0], &[4]));
    b.op(
        "Conv",
        &["x", "w", "b"],
        &["y"],
        vec![("kernel_shape", ints(&[3, 3])), ("pads", ints(&[1; 4]))],
    );
    b.output("y");
    let m = b.model(13);
    let (proto, _) = encode_model(&m, &ExternalPolicy::Inline, "").unwrap();
    let model = dir.path().join("bc.onnx");
    std::fs::write(&model, prost::Message::encode_to_vec(&proto)).unwrap();
    let data = |seed: u64, n: usize| {
        let v: Vec<f32> = values(n * 256, 1, seed, |_| 1.0)
            .into_iter()
            .map(|u| u.abs() * 2.0 + 0.5)
            .collect();
        f32s(&v, &[n, 1, 4, 8, 8])
    };
    let (calib, eval) = (dir.path().join("c.npz"), dir.path().join("e.npz"));
    write_npz_arrays(&calib, vec![("x", data(40, 16))]);
    write_npz_arrays(&eval, vec![("x", data(41, 8))]);
    let out = dir.path().join("q.onnx");
    let mut args = vec![
        s(&model),
        "--calib".into(),
        s(&calib),
        "--eval".into(),
        s(&eval),
        "--per-tensor".into(),
        "--weight-bits".into(),
        "3".into(),
        "--equalize".into(),
        "off".into(),
        "-o".into(),
        s(&out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    quantize_json(&refs);
    let q = qrange::onnx::read_model(&out).unwrap();
    let Tensor::F32(ev) = data(41, 8) else {
        panic!()
    };
    let (mut fsum, mut qsum) = (vec![0.0f64; 4], vec![0.0f64; 4]);
    for i in 0..8 {
        let x = Tensor::F32(ev.index_axis(ndarray::Axis(0), i).to_owned());
        let feeds: BTreeMap<String, Tensor> = [("x".to_string(), x)].into_iter().collect();
        for (model, sum) in [(&m, &mut fsum), (&q, &mut qsum)] {
            let Tensor::F32(y) = &run(model, &feeds)["y"] else {
                panic!()
            };
            for (c, s) in sum.iter_mut().enumerate() {
                *s += y.index_axis(ndarray::Axis(1), c).sum() as f64;
            }
        }
    }
    fsum.iter()
        .zip(&qsum)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / (8.0 * 64.0)
}

#[test]
fn bias_correction_brings_the_quantized_mean_back_to_the_float_one() {
    let plain = mean_shift(&[]);
    let corrected = mean_shift(&["--bias-correction"]);
    assert!(plain > 0.02, "a visible shift to correct: {plain}");
    assert!(corrected < plain / 3.0, "{plain} → {corrected}");
}
