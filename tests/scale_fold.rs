//! A Div or Mul by a positive constant after a quantized op is folded into that op's
//! quantization: the range is the Div/Mul output's (scale `s`), the QuantizeLinear scale
//! becomes `s · c` (Div) or `s / c` (Mul), the DequantizeLinear keeps `s`, and the Div/Mul
//! disappears.

mod common;

use common::*;
use qrange::ir::Tensor;
use qrange::onnx::proto;
use std::path::{Path, PathBuf};

/// An f32[8,8] weight initializer, varied by `seed`.
fn weight(name: &str, seed: f32) -> proto::TensorProto {
    let vals: Vec<f32> = (0..64)
        .map(|i| (i as f32 * 0.37 + seed).sin() * 0.8)
        .collect();
    f32_init(name, &[8, 8], &vals)
}

/// `y = MatMul(x·x / 6 + 0.5 · MatMul(x, w1), w2)` on f32[1,8], and a Div whose input has
/// a second reader (not foldable).
fn model_with_scalings() -> proto::ModelProto {
    model(
        vec![
            node("Mul", "square", &["x", "x"], &["m"]),
            node("Div", "sixth", &["m", "six"], &["d"]),
            node("MatMul", "mm1", &["x", "w1"], &["t"]),
            node("Mul", "half", &["half_c", "t"], &["u"]),
            node("Add", "sum", &["d", "u"], &["v"]),
            node("MatMul", "mm2", &["v", "w2"], &["z"]),
            node("Div", "third", &["z", "three"], &["y"]),
            node("Relu", "relu", &["z"], &["r"]),
        ],
        vec![
            f32_init("six", &[], &[6.0]),
            f32_init("half_c", &[], &[0.5]),
            f32_init("three", &[], &[3.0]),
            weight("w1", 0.1),
            weight("w2", 1.7),
        ],
        vec![vi("x", 1, &[1, 8])],
        vec![vi("y", 1, &[1, 8]), vi("r", 1, &[1, 8])],
    )
}

fn samples(path: &Path, n: usize, seed: f32) {
    let vals: Vec<f32> = (0..n * 8)
        .map(|i| (i as f32 * 1.31 + seed).sin() * 2.0)
        .collect();
    let t = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n, 1, 8]), vals).unwrap());
    write_npz_arrays(path, vec![("x", t)]);
}

fn init_scalar(g: &proto::GraphProto, name: &str) -> f32 {
    let t = g
        .initializer
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no initializer {name}"));
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    if raw.len() == 4 {
        f32::from_le_bytes(raw.try_into().unwrap())
    } else {
        t.float_data[0]
    }
}

/// The (QuantizeLinear scale, DequantizeLinear scale) of the Q/DQ pair quantizing `value`.
fn pair_scales(g: &proto::GraphProto, value: &str) -> (f32, f32) {
    let q = g
        .node
        .iter()
        .find(|n| n.op_type() == "QuantizeLinear" && n.input[0] == value)
        .unwrap_or_else(|| panic!("{value} is not quantized"));
    let dq = g
        .node
        .iter()
        .find(|n| n.op_type() == "DequantizeLinear" && n.input[0] == q.output[0])
        .unwrap_or_else(|| panic!("{value}'s QuantizeLinear has no DequantizeLinear"));
    (init_scalar(g, &q.input[1]), init_scalar(g, &dq.input[1]))
}

/// A model quantized by [`quantize_model`], with its files.
struct Quantized {
    _dir: tempfile::TempDir,
    model: PathBuf,
    eval: PathBuf,
    out: PathBuf,
    /// The JSON summary.
    json: serde_json::Value,
}

/// Quantizes `m` with minmax ranges and validation on samples of its `x: f32[1,8]`.
fn quantize_model(m: &proto::ModelProto) -> Quantized {
    let dir = tempfile::tempdir().unwrap();
    let (model, calib, eval, out) = (
        dir.path().join("m.onnx"),
        dir.path().join("calib.npz"),
        dir.path().join("eval.npz"),
        dir.path().join("q.onnx"),
    );
    write_proto(&model, m);
    samples(&calib, 24, 0.0);
    samples(&eval, 8, 0.4);
    let json = quantize_json(&[
        &s(&model),
        "--calib",
        &s(&calib),
        "--eval",
        &s(&eval),
        "--method",
        "minmax",
        "-o",
        &s(&out),
    ]);
    Quantized {
        _dir: dir,
        model,
        eval,
        out,
        json,
    }
}

#[test]
fn div_and_mul_by_constants_fold_into_the_quantization() {
    let q = quantize_model(&model_with_scalings());
    let (mp, eval, out, j) = (&q.model, &q.eval, &q.out, &q.json);
    let m = load(out);
    let g = m.graph.as_ref().unwrap();
    insta::assert_snapshot!(
        "scale_fold_qdq",
        qrange::ir::dump::dump_model(&qrange::onnx::read_model(out).unwrap())
    );
    // The two foldable ops are gone; the Div whose input is also read by the Relu stays.
    let ops = |t: &str| g.node.iter().filter(|n| n.op_type() == t).count();
    assert_eq!(ops("Div"), 1, "{j}");
    assert!(g.node.iter().any(|n| n.name() == "third"), "{j}");
    assert!(!g
        .node
        .iter()
        .any(|n| n.name() == "sixth" || n.name() == "half"));
    assert_eq!(j["folded_ops"], 2, "{j}");
    // Quantize with s·6 (s/0.5), dequantize with s: the integers of the op's output.
    let (qs, s_d) = pair_scales(g, "m");
    assert_eq!(qs.to_bits(), (s_d * 6.0).to_bits(), "{qs} vs {s_d}");
    let (qs, s_u) = pair_scales(g, "t");
    assert_eq!(qs.to_bits(), (s_u / 0.5).to_bits(), "{qs} vs {s_u}");
    // s is the scale of the folded op's output range: x·x / 6 of values in [-2, 2] stays
    // within [0, 4/6], so its u8 scale is at most (4/6) / 255.
    assert!(s_d > 0.0 && s_d <= (4.0f32 / 6.0) / 255.0 * 1.0001, "{s_d}");
    // The quantized model computes the float model's outputs (a missing or doubled scaling
    // would put them off by a factor: SQNR near or below 0 dB).
    // measured 23.5 dB (y) and 26.1 dB (r); gates 22.5 and 25
    for (out, gate) in [("y", 22.5), ("r", 25.0)] {
        let db = j["validation"][out]["sqnr_db"].as_f64().unwrap();
        assert!(db > gate, "{out}: {db} dB\n{j}");
    }
    // The per-tensor comparison sets each dequantized value against the folded op's output,
    // what the next op reads in the float model.
    let r = qrange(&[
        "compare",
        &s(mp),
        &s(out),
        "--data",
        &s(eval),
        "--per-tensor",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let layers = c["per_tensor"]["layers"].as_array().unwrap();
    // measured 44.9 dB (m) and 29.2 dB (t); gates 43.5 and 28
    for (value, folded_output, gate) in [("m", "d", 43.5), ("t", "u", 28.0)] {
        let l = layers
            .iter()
            .find(|l| l["value"] == value)
            .unwrap_or_else(|| panic!("{value} not compared: {c}"));
        let dq = &l["dequantized"];
        assert_eq!(dq["reference"], folded_output, "{l}");
        let db = dq["metrics"]["sqnr_db"].as_f64().unwrap();
        assert!(db > gate, "{value}: {db} dB against {folded_output}: {l}");
    }
}

#[test]
fn a_constant_that_broadcasts_to_a_higher_rank_is_not_folded() {
    // Div by a [1,1,1] constant turns t: [1,8] into u: [1,1,8]; removing it would change
    // the shape every later value has.
    let m = model(
        vec![
            node("MatMul", "mm1", &["x", "w1"], &["t"]),
            node("Div", "scale", &["t", "c3"], &["u"]),
            node("MatMul", "mm2", &["u", "w2"], &["y"]),
        ],
        vec![
            f32_init("c3", &[1, 1, 1], &[4.0]),
            weight("w1", 0.1),
            weight("w2", 1.7),
        ],
        vec![vi("x", 1, &[1, 8])],
        vec![vi("y", 1, &[1, 1, 8])],
    );
    let q = quantize_model(&m);
    let (j, written) = (&q.json, load(&q.out));
    let g = written.graph.as_ref().unwrap();
    assert!(g.node.iter().any(|n| n.name() == "scale"), "{j}");
    assert_eq!(j["folded_ops"], 0, "{j}");
    // measured 20.2 dB; gate 19
    assert!(
        j["validation"]["y"]["sqnr_db"].as_f64().unwrap() > 19.0,
        "{j}"
    );
}

#[test]
fn a_constant_of_an_enclosing_graph_is_not_folded() {
    // Inside an If branch, Mul(c, t) with `c` a main-graph initializer: the branch keeps
    // its Mul and computes what the float model computes.
    let branch = |name: &str, scaled: bool| {
        let mut nodes = vec![node(
            "MatMul",
            &format!("{name}_mm1"),
            &["x", "w1"],
            &[&format!("{name}_t")],
        )];
        let mid = if scaled {
            nodes.push(node(
                "Mul",
                &format!("{name}_scale"),
                &["c", &format!("{name}_t")],
                &[&format!("{name}_u")],
            ));
            format!("{name}_u")
        } else {
            format!("{name}_t")
        };
        nodes.push(node(
            "MatMul",
            &format!("{name}_mm2"),
            &[&mid, "w2"],
            &[&format!("{name}_y")],
        ));
        proto::GraphProto {
            name: Some(name.into()),
            node: nodes,
            output: vec![vi(&format!("{name}_y"), 1, &[1, 8])],
            ..Default::default()
        }
    };
    let mut iff = node("If", "if", &["cond"], &["y"]);
    iff.attribute = vec![
        graph_attr("else_branch", branch("else", false)),
        graph_attr("then_branch", branch("then", true)),
    ];
    let mut sum = node("ReduceSum", "sum", &["x"], &["s"]);
    sum.attribute = vec![int_attr("keepdims", 0)];
    let m = model(
        vec![
            sum,
            node("Greater", "positive", &["s", "zero"], &["cond"]),
            iff,
        ],
        vec![
            f32_init("zero", &[], &[0.0]),
            f32_init("c", &[], &[0.25]),
            weight("w1", 0.1),
            weight("w2", 1.7),
        ],
        vec![vi("x", 1, &[1, 8])],
        vec![vi("y", 1, &[1, 8])],
    );
    let q = quantize_model(&m);
    let (j, written) = (&q.json, load(&q.out));
    let g = written.graph.as_ref().unwrap();
    let iff = g
        .node
        .iter()
        .find(|n| n.op_type() == "If")
        .expect("the If stays");
    let then = iff
        .attribute
        .iter()
        .find(|a| a.name() == "then_branch")
        .and_then(|a| a.g.as_ref())
        .unwrap();
    assert!(then.node.iter().any(|n| n.name() == "then_scale"), "{j}");
    // measured 17.9 dB; gate 16.5
    assert!(
        j["validation"]["y"]["sqnr_db"].as_f64().unwrap() > 16.5,
        "{j}"
    );
}
