//! Quantization inside subgraphs: If branches (tiny_if: a data-dependent condition),
//! Scan bodies (tiny_scan), and Loop bodies (tiny_loop and tiny_conv_loop: constant trip
//! counts; tiny_while: a trip count that follows the data).

mod common;

use common::*;
use qrange::calib::CalibrationFile;
use qrange::data::{self, InputSpec, Sample};
use qrange::ir::{DType, Graph, Model, Tensor};
use qrange::onnx::proto;
use qrange::passes::{Pass, PassCx};
use qrange::quant::params::QType;
use qrange::quant::plan::{self, QuantConfig};
use qrange::quant::rules::Target;
use std::collections::BTreeSet;

/// The plan `qrange quantize` makes with its defaults for ort-cpu, on the model as read
/// (after shape inference).
fn default_plan(rel: &str) -> plan::Plan {
    let mut m = qrange::onnx::read_model(&fixture(rel)).unwrap();
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
    plan::build(&m, &cfg)
}

/// One line per op and per value decision.
fn render(p: &plan::Plan) -> String {
    let q = |t: &QType| format!("{}[{},{}]", t.dtype, t.qmin, t.qmax);
    let mut out = String::new();
    for (k, st) in &p.ops {
        let line = match st {
            plan::OpState::Quantized { kernel } => {
                format!("quantized ({})", kernel.as_deref().unwrap_or("-"))
            }
            plan::OpState::Folded { into } => format!("folded into {into}"),
            plan::OpState::Float { reason } => format!("float: {reason}"),
        };
        out += &format!("op    {k}: {line}\n");
    }
    for (k, d) in &p.values {
        let line = match d {
            plan::Decision::Activation {
                qtype,
                share_with,
                range_from,
            } => {
                let mut l = format!("activation {}", q(qtype));
                if let Some(r) = share_with {
                    l += &format!(" share_with={r}");
                }
                if let Some(r) = range_from {
                    l += &format!(" range_from={r}");
                }
                l
            }
            plan::Decision::Weight { qtype, axis, .. } => match axis {
                Some(a) => format!("weight {} axis={a}", q(qtype)),
                None => format!("weight {}", q(qtype)),
            },
            plan::Decision::Bias { input, weight } => format!("bias of {input} x {weight}"),
        };
        out += &format!("value {k}: {line}\n");
    }
    out
}

/// The subgraph held by attribute `attr` of the first `op_type` node of a graph.
fn body<'a>(g: &'a proto::GraphProto, op_type: &str, attr: &str) -> &'a proto::GraphProto {
    let n = g
        .node
        .iter()
        .find(|n| n.op_type() == op_type)
        .unwrap_or_else(|| panic!("no {op_type} node"));
    n.attribute
        .iter()
        .find(|a| a.name() == attr)
        .and_then(|a| a.g.as_ref())
        .unwrap_or_else(|| panic!("no {attr}"))
}

fn op_types(g: &proto::GraphProto) -> Vec<&str> {
    g.node.iter().map(|n| n.op_type()).collect()
}

fn producer<'a>(g: &'a proto::GraphProto, value: &str) -> Option<&'a proto::NodeProto> {
    g.node.iter().find(|n| n.output.iter().any(|o| o == value))
}

/// Samples of a fixture's single input `x`.
fn samples(rel: &str) -> Vec<Sample> {
    let specs = vec![InputSpec::new("x", DType::F32, None)];
    data::load(&fixture(rel), &specs)
        .unwrap()
        .read_all()
        .unwrap()
}

fn f32s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

/// A constant of `g` as a row-major f64 matrix with its column count.
fn matrix(g: &Graph, name: &str) -> (Vec<f64>, usize) {
    let t = g
        .const_of(g.value_by_name(name).unwrap())
        .unwrap()
        .to_tensor()
        .unwrap();
    let cols = *t.shape().last().unwrap();
    (f32s(&t), cols)
}

/// `row · m` for a row vector and a row-major matrix.
fn vecmat(row: &[f64], m: &(Vec<f64>, usize)) -> Vec<f64> {
    let (vals, cols) = m;
    (0..*cols)
        .map(|j| {
            row.iter()
                .enumerate()
                .map(|(i, r)| r * vals[i * cols + j])
                .sum()
        })
        .collect()
}

fn subgraph<'a>(m: &'a Model, op_type: &str, attr: &str) -> &'a Graph {
    let g = &m.graph;
    let o = g.ops().find(|o| g.op(*o).op_type == op_type).unwrap();
    g.op(o)
        .subgraphs()
        .into_iter()
        .find(|(a, _)| *a == attr)
        .unwrap()
        .1
}

/// Min, max and count of a set of values.
fn stats_of(v: &[f64]) -> (f64, f64, u64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        v.len() as u64,
    )
}

fn assert_stats(file: &CalibrationFile, key: &str, expect: (f64, f64, u64)) {
    let st = file
        .tensors
        .get(key)
        .unwrap_or_else(|| panic!("no statistics for '{key}'"));
    let (lo, hi, n) = expect;
    assert_eq!(st.count(), n, "{key}: count");
    let (a, b) = (st.min().unwrap() as f64, st.max().unwrap() as f64);
    let tol = |x: f64| 1e-5 * x.abs().max(1.0);
    assert!((a - lo).abs() <= tol(lo), "{key}: min {a} vs expected {lo}");
    assert!((b - hi).abs() <= tol(hi), "{key}: max {b} vs expected {hi}");
}

#[test]
fn tiny_if_plan_reaches_into_both_branches() {
    let p = default_plan("tiny/tiny_if.onnx");
    // Ops inside the branches are listed under where they live.
    for k in [
        "if/then_branch/then_matmul",
        "if/then_branch/then_add",
        "if/else_branch/else_matmul",
        "if/else_branch/else_sigmoid",
        "if/else_branch/else_mul",
    ] {
        assert!(
            matches!(p.ops.get(k), Some(plan::OpState::Quantized { .. })),
            "{k}: {:?}",
            p.ops.get(k)
        );
    }
    // The outer value both branches read is calibrated where it is computed.
    assert!(p.calibration_values().contains(&"h".to_string()));
    insta::assert_snapshot!("tiny_if_plan", render(&p));
}

#[test]
fn tiny_if_branches_come_out_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_if.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_if.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_if.eval.npz")),
        "--method",
        "minmax",
        "-o",
        &s(&out),
    ]);
    // outer Mul + head MatMul, then: MatMul + Add (Relu folded), else: MatMul + Sigmoid + Mul
    assert_eq!(j["quantized_ops"], 7, "{j}");
    assert_eq!(j["folded_ops"], 1, "{j}");
    let sqnr = j["validation"]["y"]["sqnr_db"].as_f64().unwrap();
    // measured 14.1 dB; gate 13
    assert!(sqnr > 13.0, "SQNR {sqnr} dB: {j}");
    assert_eq!(j["eval_samples"], 16);
    let m = load(&out);
    let g = m.graph.as_ref().unwrap();
    let outer_q = producer(g, "h.q").expect("h is quantized in the outer graph");
    assert_eq!(outer_q.op_type(), "QuantizeLinear");
    for (attr, mm, w) in [
        ("then_branch", "t_mm", "then.w.q"),
        ("else_branch", "e_mm", "else.w.q"),
    ] {
        let b = body(g, "If", attr);
        let ops = op_types(b);
        assert!(ops.contains(&"QuantizeLinear"), "{attr}: {ops:?}");
        assert!(ops.contains(&"DequantizeLinear"), "{attr}: {ops:?}");
        // The branch MatMul reads `h` through a DequantizeLinear of the outer Q output
        // that lives in the branch, and its int8 weight is the branch's own initializer.
        let matmul = producer(b, mm).expect("branch MatMul");
        let dq_h = producer(b, &matmul.input[0]).unwrap();
        assert_eq!(dq_h.op_type(), "DequantizeLinear");
        assert_eq!(dq_h.input[0], "h.q");
        assert!(b.initializer.iter().any(|t| t.name() == dq_h.input[1]));
        let dq_w = producer(b, &matmul.input[1]).unwrap();
        assert_eq!(dq_w.input[0], w);
        let wq = b.initializer.iter().find(|t| t.name() == w).unwrap();
        assert_eq!(wq.data_type, Some(3), "{w} is int8");
    }
    let qm = qrange::onnx::read_model(&out).unwrap();
    insta::assert_snapshot!("tiny_if_qdq", qrange::ir::dump::dump_model(&qm));
}

#[test]
fn branch_ranges_come_from_the_samples_that_take_the_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &s(&fixture("tiny/tiny_if.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_if.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = CalibrationFile::read(&stats).unwrap();
    // The branch values, by hand from the model's weights and the samples.
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_if.onnx")).unwrap();
    let w = matrix(&m.graph, "w").0;
    let then_w = matrix(subgraph(&m, "If", "then_branch"), "then.w");
    let else_w = matrix(subgraph(&m, "If", "else_branch"), "else.w");
    let (mut t_relu, mut then_out, mut e_mm, mut e_sig, mut else_out) =
        (vec![], vec![], vec![], vec![], vec![]);
    // What the then-branch formula gives over every sample, taken or not.
    let mut t_relu_everywhere = vec![];
    let all = samples("tiny/tiny_if.npz");
    for smp in &all {
        let x = f32s(&smp["x"]);
        let h: Vec<f64> = x.iter().zip(&w).map(|(a, b)| a * b).collect();
        let relu: Vec<f64> = vecmat(&h, &then_w).iter().map(|v| v.max(0.0)).collect();
        t_relu_everywhere.extend(&relu);
        if x.iter().sum::<f64>() > 0.0 {
            then_out.extend(relu.iter().map(|v| v + 0.5));
            t_relu.extend(relu);
        } else {
            let mm = vecmat(&h, &else_w);
            let sig: Vec<f64> = mm.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            else_out.extend(sig.iter().zip(&w).map(|(a, b)| a * b));
            e_mm.extend(mm);
            e_sig.extend(sig);
        }
    }
    // Both branches are taken, and the then-branch statistics would differ if the
    // other samples leaked into them.
    assert!(!t_relu.is_empty() && !e_mm.is_empty());
    assert_ne!(stats_of(&t_relu), stats_of(&t_relu_everywhere));
    assert_stats(&file, "t_relu", stats_of(&t_relu));
    assert_stats(&file, "then_out", stats_of(&then_out));
    assert_stats(&file, "e_mm", stats_of(&e_mm));
    assert_stats(&file, "e_sig", stats_of(&e_sig));
    assert_stats(&file, "else_out", stats_of(&else_out));
    // The outer value the branches read is seen on every sample.
    assert_eq!(file.tensors["h"].count(), 4 * all.len() as u64);
}

#[test]
fn a_branch_no_sample_takes_stays_float() {
    let tmp = tempfile::tempdir().unwrap();
    // only the samples whose sum is positive: the else branch never runs
    let xs: Vec<Tensor> = samples("tiny/tiny_if.npz")
        .into_iter()
        .map(|smp| smp["x"].clone())
        .filter(|x| f32s(x).iter().sum::<f64>() > 0.0)
        .collect();
    assert_eq!(xs.len(), 4);
    let vals: Vec<f32> = xs.iter().flat_map(f32s).map(|v| v as f32).collect();
    let x = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 1, 4]), vals).unwrap());
    let calib = tmp.path().join("then_only.npz");
    write_npz_arrays(&calib, vec![("x", x)]);
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_if.onnx")),
        "--calib",
        &s(&calib),
        "--eval",
        &s(&calib),
        "-o",
        &s(&out),
    ]);
    let listed: Vec<&str> = j["float_reasons"][plan::UNREACHED]
        .as_array()
        .unwrap_or_else(|| panic!("{j}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "if/else_branch/else_matmul",
            "if/else_branch/else_mul",
            "if/else_branch/else_sigmoid"
        ]
    );
    let q = load(&out);
    let g = q.graph.as_ref().unwrap();
    assert!(op_types(body(g, "If", "then_branch")).contains(&"QuantizeLinear"));
    assert!(!op_types(body(g, "If", "else_branch")).contains(&"QuantizeLinear"));
    // measured 37.1 dB; gate 36
    assert!(
        j["validation"]["y"]["sqnr_db"].as_f64().unwrap() > 36.0,
        "{j}"
    );
}

#[test]
fn nested_branches_see_only_their_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &s(&fixture("tiny/tiny_nested_if.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_nested_if.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = CalibrationFile::read(&stats).unwrap();
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_nested_if.onnx")).unwrap();
    let w = matrix(&m.graph, "w").0;
    let then_g = subgraph(&m, "If", "then_branch");
    let a_w = matrix(then_g, "a.w");
    let inner = |attr: &str| {
        let o = then_g
            .ops()
            .find(|o| then_g.op(*o).op_type == "If")
            .unwrap();
        then_g
            .op(o)
            .subgraphs()
            .into_iter()
            .find(|(a, _)| *a == attr)
            .unwrap()
            .1
    };
    let it_w = matrix(inner("then_branch"), "it.w");
    let ie_w = matrix(inner("else_branch"), "ie.w");
    let e_w = matrix(subgraph(&m, "If", "else_branch"), "e.w");
    let (mut it_out, mut ie_out, mut else_out, mut a_all) = (vec![], vec![], vec![], vec![]);
    for smp in samples("tiny/tiny_nested_if.npz") {
        let x = f32s(&smp["x"]);
        let h: Vec<f64> = x.iter().zip(&w).map(|(p, q)| p * q).collect();
        if x.iter().sum::<f64>() > 0.0 {
            let a = vecmat(&h, &a_w);
            if a.iter().sum::<f64>() > 0.0 {
                // reads `a` from one scope out and `h` from two scopes out
                let mm = vecmat(&a, &it_w);
                it_out.extend(mm.iter().zip(&h).map(|(p, q)| p + q));
            } else {
                let mm = vecmat(&a, &ie_w);
                ie_out.extend(mm.iter().zip(&a).map(|(p, q)| p + q));
            }
            a_all.extend(a);
        } else {
            let mm = vecmat(&h, &e_w);
            else_out.extend(mm.iter().zip(&h).map(|(p, q)| p + q));
        }
    }
    // the fixture's samples take all three paths
    assert_eq!(
        (it_out.len(), ie_out.len(), else_out.len()),
        (8, 8, 16),
        "paths taken"
    );
    assert_stats(&file, "it_out", stats_of(&it_out));
    assert_stats(&file, "ie_out", stats_of(&ie_out));
    assert_stats(&file, "else_out", stats_of(&else_out));
    assert_stats(&file, "a", stats_of(&a_all));
}

#[test]
fn scan_bodies_are_calibrated_step_by_step_and_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &s(&fixture("tiny/tiny_scan.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_scan.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = CalibrationFile::read(&stats).unwrap();
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_scan.onnx")).unwrap();
    let ws = matrix(&m.graph, "scan.ws");
    let wx = matrix(subgraph(&m, "Scan", "body"), "scan.wx");
    let (mut step_x, mut step_s, mut step_pre) = (vec![], vec![], vec![]);
    for smp in samples("tiny/tiny_scan.npz") {
        let x = f32s(&smp["x"]); // [1, 5, 4]
        let row = |t: usize| x[t * 4..t * 4 + 4].to_vec();
        let mut state: Vec<f64> = (0..4)
            .map(|c| (0..5).map(|t| x[t * 4 + c]).sum::<f64>() / 5.0)
            .collect();
        for t in 0..5 {
            let a = vecmat(&row(t), &wx);
            let b = vecmat(&state, &ws);
            let pre: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
            state = pre.iter().map(|v| v.max(0.0)).collect();
            step_x.extend(a);
            step_s.extend(b);
            step_pre.extend(pre);
        }
    }
    assert_stats(&file, "step_x", stats_of(&step_x));
    assert_stats(&file, "step_s", stats_of(&step_s));
    assert_stats(&file, "step_pre", stats_of(&step_pre));

    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_scan.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_scan.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_scan.eval.npz")),
        "-o",
        &s(&out),
    ]);
    // measured 33.9 dB (y) and 31.9 dB (ys); gates 32.5 and 30.5
    for (o, gate) in [("y", 32.5), ("ys", 30.5)] {
        let sqnr = j["validation"][o]["sqnr_db"].as_f64().unwrap();
        assert!(sqnr > gate, "{o}: SQNR {sqnr} dB: {j}");
    }
    let q = load(&out);
    let b = body(q.graph.as_ref().unwrap(), "Scan", "body");
    let ops = op_types(b);
    assert_eq!(
        ops.iter().filter(|o| **o == "QuantizeLinear").count(),
        6, // s_in, x_t, step_x, step_s, step_pre, y_t
        "{ops:?}"
    );
    // the outer weight the body reads is stored once, as int8, in the outer graph
    let outer = q.graph.as_ref().unwrap();
    let ws_q = outer
        .initializer
        .iter()
        .find(|t| t.name() == "scan.ws.q")
        .expect("outer int8 weight");
    assert_eq!(ws_q.data_type, Some(3));
    assert!(outer.initializer.iter().all(|t| t.name() != "scan.ws"));
}

/// `qrange calibrate` on a tiny fixture: its statistics file.
fn calibrated(rel_model: &str, rel_data: &str) -> CalibrationFile {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &s(&fixture(rel_model)),
        "--calib",
        &s(&fixture(rel_data)),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    CalibrationFile::read(&stats).unwrap()
}

/// The ops of a quantized Loop body that read a DequantizeLinear output, by op type.
fn reading_dequantized(b: &proto::GraphProto) -> Vec<&str> {
    b.node
        .iter()
        .filter(|n| {
            n.input
                .iter()
                .any(|i| producer(b, i).is_some_and(|p| p.op_type() == "DequantizeLinear"))
        })
        .map(|n| n.op_type())
        .collect()
}

#[test]
fn tiny_loop_body_is_calibrated_per_iteration_quantized_and_validated() {
    // By hand: three iterations of v <- Relu(v W + b) from v = x, W and b outer constants.
    let file = calibrated("tiny/tiny_loop.onnx", "tiny/tiny_loop.npz");
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_loop.onnx")).unwrap();
    let (w, b) = (matrix(&m.graph, "loop.w"), matrix(&m.graph, "loop.b"));
    let (mut v_in, mut mm_all) = (vec![], vec![]);
    for smp in samples("tiny/tiny_loop.npz") {
        let mut v = f32s(&smp["x"]);
        for _ in 0..3 {
            let mm = vecmat(&v, &w);
            v_in.extend(v.iter().copied());
            v = mm.iter().zip(&b.0).map(|(p, q)| (p + q).max(0.0)).collect();
            mm_all.extend(mm);
        }
    }
    assert_stats(&file, "v_in", stats_of(&v_in));
    assert_stats(&file, "mm", stats_of(&mm_all));

    // Quantized inside the body, then validated through the same Loop execution (the
    // last calibration sample held back).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_loop.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_loop.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(j["eval_samples"], 1, "{j}");
    // Measured 37.8 (trace) and 38.3 dB (y); gated 3 dB below.
    for (o, gate) in [("trace", 34.8), ("y", 35.3)] {
        let sqnr = j["validation"][o]["sqnr_db"].as_f64().unwrap();
        assert!(sqnr >= gate, "{o}: SQNR {sqnr} dB: {j}");
    }
    assert!(j["quantized_ops"].as_u64().unwrap() >= 2, "{j}");
    let notes = j["notes"].to_string();
    assert!(
        notes.contains("Loop node 'loop': unrolled into 3 copies"),
        "{notes}"
    );
    let q = load(&out);
    let b = body(q.graph.as_ref().unwrap(), "Loop", "body");
    let ops = op_types(b);
    assert!(
        ops.iter().filter(|o| **o == "QuantizeLinear").count() >= 2,
        "{ops:?}"
    );
    assert!(reading_dequantized(b).contains(&"Gemm"), "{ops:?}");
    // The outer weight the body reads is stored once, as int8, in the outer graph.
    let outer = q.graph.as_ref().unwrap();
    assert!(outer.initializer.iter().any(|t| t.name() == "loop.w.q"));
    assert!(outer.initializer.iter().all(|t| t.name() != "loop.w"));
}

#[test]
fn a_while_loop_is_calibrated_on_every_iteration_and_quantized() {
    // By hand: argmax(x) + 1 iterations of v <- Relu(v W + b) from v0 = x in.w.
    let file = calibrated("tiny/tiny_while.onnx", "tiny/tiny_while.npz");
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_while.onnx")).unwrap();
    let g = &m.graph;
    let (w_in, w, b) = (matrix(g, "in.w"), matrix(g, "loop.w"), matrix(g, "loop.b"));
    let (mut v0_all, mut v_in, mut step_mm, mut v_last) = (vec![], vec![], vec![], vec![]);
    let mut iterations = 0;
    for smp in samples("tiny/tiny_while.npz") {
        let x = f32s(&smp["x"]);
        let argmax = (0..x.len()).fold(0, |a, i| if x[i] > x[a] { i } else { a });
        let mut v = vecmat(&x, &w_in);
        v0_all.extend(v.iter().copied());
        for _ in 0..=argmax {
            let mm = vecmat(&v, &w);
            v_in.extend(v.iter().copied());
            v = mm.iter().zip(&b.0).map(|(p, q)| (p + q).max(0.0)).collect();
            step_mm.extend(mm);
            iterations += 1;
        }
        v_last.extend(v);
    }
    assert_eq!(
        iterations, 31,
        "the fixture's samples take 31 iterations in all"
    );
    assert_stats(&file, "v0", stats_of(&v0_all));
    assert_stats(&file, "v_in", stats_of(&v_in));
    assert_stats(&file, "step_mm", stats_of(&step_mm));
    // The Loop's output, read by the head after it.
    assert_stats(&file, "v", stats_of(&v_last));

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_while.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_while.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_while.eval.npz")),
        "-o",
        &s(&out),
    ]);
    // Every evaluation sample takes as many iterations quantized as in float.
    assert_eq!(j["validation"]["k"]["max_abs"], 0.0, "{j}");
    // Measured 19.4 dB; gated 1.5 dB below.
    let sqnr = j["validation"]["y"]["sqnr_db"].as_f64().unwrap();
    assert!(sqnr >= 17.9, "y: SQNR {sqnr} dB: {j}");
    let notes = j["notes"].to_string();
    assert!(
        notes.contains("Loop node 'repeat' run on the host"),
        "{notes}"
    );
    let q = load(&out);
    let b = body(q.graph.as_ref().unwrap(), "Loop", "body");
    let quantized: Vec<&str> = b
        .node
        .iter()
        .filter(|n| n.op_type() == "QuantizeLinear")
        .map(|n| n.input[0].as_str())
        .collect();
    for v in ["v_in", "step_mm"] {
        assert!(quantized.contains(&v), "{v}: {quantized:?}");
    }
}

#[test]
fn conv_then_loop_is_quantized_inside_the_body_and_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_conv_loop.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_conv_loop.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_conv_loop.eval.npz")),
        "-o",
        &s(&out),
    ]);
    // Measured 19.0 (y) and 38.3 dB (steps); gated 1.5 dB below.
    for (o, gate) in [("y", 17.5), ("steps", 36.8)] {
        let sqnr = j["validation"][o]["sqnr_db"].as_f64().unwrap();
        assert!(sqnr >= gate, "{o}: SQNR {sqnr} dB: {j}");
    }
    // The body's Conv and the ops around the Loop are quantized: none is left float.
    let float: Vec<&str> = j["float_reasons"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v.as_array().unwrap().iter().map(|x| x.as_str().unwrap()))
        .collect();
    for op in [
        "conv1",
        "refine/body/step_conv",
        "refine/body/step_residual",
        "gap",
        "fc",
    ] {
        assert!(!float.contains(&op), "{op} left float: {j}");
    }
    let q = load(&out);
    let b = body(q.graph.as_ref().unwrap(), "Loop", "body");
    let conv = b.node.iter().find(|n| n.op_type() == "Conv").unwrap();
    for input in &conv.input[..2] {
        let p = producer(b, input).unwrap_or_else(|| panic!("{input}"));
        assert_eq!(p.op_type(), "DequantizeLinear", "{input}");
    }
    // The body's own weight stays a body initializer, stored as int8.
    let w = b
        .initializer
        .iter()
        .find(|t| t.name() == "loop.conv.w.q")
        .expect("int8 body weight");
    assert_eq!(w.data_type, Some(3));
}

/// An If whose two branches each define `mm` and `out` (legal: siblings do not see
/// each other): `mm` quantized (the second MatMul reads it), `out` float (a MatMul's
/// output, read by the head MatMul after the If).
fn clash_model() -> proto::ModelProto {
    let branch = |name: &str, w: f32| proto::GraphProto {
        name: Some(name.into()),
        node: vec![
            node(
                "MatMul",
                &format!("{name}_mm"),
                &["x", &format!("{name}.w")],
                &["mm"],
            ),
            // a second MatMul quantizes `mm` (a MatMul's own output stays float)
            node(
                "MatMul",
                &format!("{name}_mm2"),
                &["mm", &format!("{name}.w")],
                &["out"],
            ),
        ],
        initializer: vec![f32_init(
            &format!("{name}.w"),
            &[4, 4],
            &(0..16)
                .map(|i| w * ((i % 5) as f32 - 2.0))
                .collect::<Vec<_>>(),
        )],
        output: vec![vi("out", 1, &[1, 4])],
        ..Default::default()
    };
    let mut iff = node("If", "if", &["cond"], &["branch"]);
    iff.attribute = vec![
        graph_attr("else_branch", branch("else", -0.3)),
        graph_attr("then_branch", branch("then", 0.2)),
    ];
    let mut sum = node("ReduceSum", "sum", &["x"], &["s"]);
    sum.attribute = vec![int_attr("keepdims", 0)];
    model(
        vec![
            sum,
            node("Greater", "positive", &["s", "zero"], &["cond"]),
            iff,
            node("MatMul", "head", &["branch", "head.w"], &["y"]),
        ],
        vec![
            f32_init("zero", &[], &[0.0]),
            f32_init(
                "head.w",
                &[4, 2],
                &[0.5, -0.25, 0.75, 0.1, -0.6, 0.3, 0.2, 0.9],
            ),
        ],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 2])],
    )
}

#[test]
fn names_defined_by_both_branches_are_keyed_by_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("clash.onnx");
    write_proto(&mp, &clash_model());
    let n = 12;
    let vals: Vec<f32> = (0..n * 4)
        .map(|i| {
            let sign = if (i / 4) % 2 == 0 { 1.0 } else { -1.0 };
            sign * (0.2 + ((i * 7) % 11) as f32 / 10.0)
        })
        .collect();
    let x = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n, 1, 4]), vals).unwrap());
    let calib = tmp.path().join("calib.npz");
    write_npz_arrays(&calib, vec![("x", x)]);
    let stats = tmp.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &s(&mp),
        "--calib",
        &s(&calib),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = CalibrationFile::read(&stats).unwrap();
    // six samples take each branch: 6 x 4 values per branch value
    for k in ["if/then_branch/mm", "if/else_branch/mm"] {
        assert_eq!(file.tensors.get(k).map(|t| t.count()), Some(24), "{k}");
    }
    assert!(!file.tensors.contains_key("mm"));
    assert!(
        !file.tensors.keys().any(|k| k.ends_with("out")),
        "{:?}",
        file.tensors.keys()
    );
    assert_ne!(
        file.tensors["if/then_branch/mm"].max(),
        file.tensors["if/else_branch/mm"].max()
    );
    let out = tmp.path().join("q.onnx");
    // evaluated on the calibration samples: no value leaves its calibrated range
    let j = quantize_json(&[
        &s(&mp),
        "--calib",
        &s(&calib),
        "--eval",
        &s(&calib),
        "-o",
        &s(&out),
    ]);
    // measured 39.2 dB; gate 38
    assert!(
        j["validation"]["y"]["sqnr_db"].as_f64().unwrap() > 38.0,
        "{j}"
    );
    let q = load(&out);
    let g = q.graph.as_ref().unwrap();
    // each branch quantizes its own `mm` with its own parameters, under distinct names
    let mut scales = BTreeSet::new();
    for attr in ["then_branch", "else_branch"] {
        let b = body(g, "If", attr);
        let qn = producer(b, "mm.q")
            .or_else(|| producer(b, "mm.q.1"))
            .unwrap_or_else(|| panic!("{attr}: {:?}", op_types(b)));
        assert_eq!(qn.op_type(), "QuantizeLinear");
        scales.insert(qn.input[1].clone());
    }
    assert_eq!(scales.len(), 2, "{scales:?}");
}

#[test]
fn adaptive_keeps_auto_on_models_with_subgraphs_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_if.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_if.npz")),
        "--no-validate",
        "-o",
        &s(&tmp.path().join("q.onnx")),
    ]);
    let sel = &j["selection"];
    assert_eq!(sel["chosen"], "auto", "{j}");
    assert!(
        sel["skipped"].as_str().unwrap().contains("subgraphs"),
        "{j}"
    );
    assert_eq!(j["quantized_ops"], 7, "{j}");
}

/// Node names and op types given to exclude or select are checked against every graph of
/// the model: names inside If branches (plain or as plan keys) and op types used only
/// there are known; a misspelt one is an error listing it.
#[test]
fn exclusion_names_are_checked_against_subgraphs() {
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_if.onnx")).unwrap();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let cfg = |nodes: &[&str], excluded: &[&str], only: Option<&[&str]>| QuantConfig {
        target: Target::OrtCpu,
        activation: QType::new(DType::U8, false, false).unwrap(),
        weight: QType::new(DType::I8, true, true).unwrap(),
        weight_mse: false,
        weight_grid: Default::default(),
        per_channel: true,
        exclude_nodes: set(nodes),
        exclude_op_types: set(excluded),
        op_types: only.map(set),
        tables: None,
        table_block: None,
    };
    cfg(
        &["head", "then_relu", "if/else_branch/else_mul"],
        &["Sigmoid"],
        Some(&["MatMul", "Relu"]),
    )
    .check_names(&m)
    .unwrap();
    let e = cfg(&["then_relu", "then_relux", "Relu"], &[], None)
        .check_names(&m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--exclude-nodes")
            && e.contains("'Relu', 'then_relux'")
            && !e.contains("'then_relu'"),
        "{e}"
    );
    let e = cfg(&[], &["Conv"], Some(&["Matmul"]))
        .check_names(&m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--exclude-op-types")
            && e.contains("'Conv'")
            && e.contains("--op-types")
            && e.contains("'Matmul'"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}
