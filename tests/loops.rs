//! Execution of `Loop`: unrolled when the trip count is a small constant, otherwise run in
//! stages with the body once per iteration (data-dependent trip counts and conditions,
//! nested loops, a Loop inside an If branch), with taps across the stages, the cap on
//! iterations and the errors for loops that cannot end.

mod common;

use common::*;
use qrange::data::{self, InputSpec, Sample};
use qrange::exec::{LoopLimits, ObservedError, Session, SessionOptions, TapValue};
use qrange::ir::{DType, Tensor};
use qrange::onnx::proto;
use qrange::passes::unroll_loop::UnrollLimits;
use std::collections::BTreeMap;

fn i64_init(name: &str, dims: &[i64], vals: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(7),
        int64_data: vals.to_vec(),
        ..Default::default()
    }
}

fn scalar(v: i64) -> Tensor {
    Tensor::I64(ndarray::arr0(v).into_dyn())
}

fn floats(v: &[f32]) -> Tensor {
    Tensor::F32(ndarray::arr1(v).into_dyn())
}

fn sample(items: &[(&str, Tensor)]) -> Sample {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn session(m: &proto::ModelProto, s: &Sample, opts: &SessionOptions) -> Session {
    Session::new(m, None, s, opts).unwrap_or_else(|e| panic!("{e}"))
}

fn fixture_samples(rel: &str) -> Vec<Sample> {
    let specs = vec![InputSpec::new("x", DType::F32, None)];
    data::load(&fixture(rel), &specs)
        .unwrap()
        .read_all()
        .unwrap()
}

fn fixture_proto(rel: &str) -> proto::ModelProto {
    load(&fixture(rel))
}

/// Options that unroll nothing: every Loop runs its body once per iteration.
fn per_iteration() -> SessionOptions {
    SessionOptions {
        loops: LoopLimits {
            unroll: UnrollLimits {
                max_trips: 0,
                ..UnrollLimits::default()
            },
            ..LoopLimits::default()
        },
        ..SessionOptions::default()
    }
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1.0),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// `Loop(M, "", x)` with `M` a graph input: the body adds 1 to the carried `v` (f32[2])
/// and yields the new value as a scan output; the condition is handed on unchanged.
fn counted_loop(trip_count: &str) -> proto::ModelProto {
    let body = proto::GraphProto {
        name: Some("body".into()),
        node: vec![
            node("Identity", "keep", &["c"], &["co"]),
            node("Add", "step", &["v", "one"], &["vo"]),
            node("Identity", "trace", &["vo"], &["s"]),
        ],
        initializer: vec![f32_init("one", &[2], &[1.0, 1.0])],
        input: vec![vi("it", 7, &[]), vi("c", 9, &[]), vi("v", 1, &[2])],
        output: vec![vi("co", 9, &[]), vi("vo", 1, &[2]), vi("s", 1, &[2])],
        ..Default::default()
    };
    let mut lp = node("Loop", "count", &[trip_count, "", "x"], &["y", "ys"]);
    lp.attribute = vec![graph_attr("body", body)];
    let mut inputs = vec![vi("x", 1, &[2])];
    if trip_count == "M" {
        inputs.push(vi("M", 7, &[]));
    }
    let inits = if trip_count == "big" {
        vec![i64_init("big", &[], &[1_000_000_000])]
    } else {
        vec![]
    };
    model(
        vec![lp],
        inits,
        inputs,
        vec![vi("y", 1, &[2]), vi("ys", 1, &[3, 2])],
    )
}

#[test]
fn a_trip_count_from_the_data_runs_that_many_iterations() {
    let m = counted_loop("M");
    let x = floats(&[0.5, -1.0]);
    let s = session(
        &m,
        &sample(&[("x", x.clone()), ("M", scalar(3))]),
        &SessionOptions::default(),
    );
    let out = s
        .run(&sample(&[("x", x.clone()), ("M", scalar(3))]))
        .unwrap();
    assert_close(&out["y"], &floats(&[3.5, 2.0]), "y");
    let ys = Tensor::F32(
        ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[3, 2]),
            vec![1.5, 0.0, 2.5, 1.0, 3.5, 2.0],
        )
        .unwrap(),
    );
    assert_close(&out["ys"], &ys, "ys");
    assert!(
        s.notes()
            .iter()
            .any(|n| n.contains("Loop node 'count' run on the host")),
        "{:?}",
        s.notes()
    );
    // No iteration (M = 0, or negative as ONNX Runtime reads it): the carried value passes
    // through and the scan output is empty, with the body's declared shape.
    for m_value in [0, -2] {
        let out = s
            .run(&sample(&[("x", x.clone()), ("M", scalar(m_value))]))
            .unwrap();
        assert_close(&out["y"], &x, "y");
        assert_eq!(out["ys"].shape(), vec![0, 2], "M = {m_value}");
        assert_eq!(out["ys"].dtype(), DType::F32);
    }
}

#[test]
fn a_loop_that_cannot_end_is_refused_before_it_runs() {
    let x = floats(&[0.0, 0.0]);
    for (trip_count, what) in [("", "no trip count"), ("big", "a trip count of 1000000000")] {
        let m = counted_loop(trip_count);
        let e = Session::new(
            &m,
            None,
            &sample(&[("x", x.clone())]),
            &SessionOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("Loop node 'count': "), "{e}");
        assert!(e.contains("never changes the condition"), "{e}");
        assert!(e.contains(what), "{e}");
        assert!(e.contains("cap of 100000 iterations"), "{e}");
    }
}

/// tiny_while by hand: limit = argmax(x) + 1 iterations of v <- Relu(v W + b) from
/// v = x in.w, then y = v head.w.
fn tiny_while_by_hand(x: &[f64]) -> (i64, Vec<f64>) {
    let m = qrange::onnx::read_model(&fixture("tiny/tiny_while.onnx")).unwrap();
    let g = &m.graph;
    let mat = |n: &str| {
        let t = g
            .const_of(g.value_by_name(n).unwrap())
            .unwrap()
            .to_tensor()
            .unwrap();
        (t.to_f64_vec().unwrap(), *t.shape().last().unwrap())
    };
    let vecmat = |row: &[f64], (vals, cols): &(Vec<f64>, usize)| -> Vec<f64> {
        (0..*cols)
            .map(|j| {
                row.iter()
                    .enumerate()
                    .map(|(i, r)| r * vals[i * cols + j])
                    .sum()
            })
            .collect()
    };
    let argmax = x
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > x[best] { i } else { best });
    let limit = argmax as i64 + 1;
    let (w, b) = (mat("loop.w"), mat("loop.b"));
    let mut v = vecmat(x, &mat("in.w"));
    for _ in 0..limit {
        v = vecmat(&v, &w)
            .iter()
            .zip(&b.0)
            .map(|(p, q)| (p + q).max(0.0))
            .collect();
    }
    (limit, vecmat(&v, &mat("head.w")))
}

#[test]
fn a_while_loop_follows_the_data() {
    let m = fixture_proto("tiny/tiny_while.onnx");
    let samples = fixture_samples("tiny/tiny_while.npz");
    let s = session(&m, &samples[0], &SessionOptions::default());
    let mut counts = Vec::new();
    for smp in &samples {
        let out = s.run(smp).unwrap();
        let (k, y) = tiny_while_by_hand(&smp["x"].to_f64_vec().unwrap());
        assert_eq!(out["k"].to_i64_vec().unwrap(), vec![k]);
        let got = out["y"].to_f64_vec().unwrap();
        for (a, b) in got.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{got:?} vs {y:?}");
        }
        counts.push(k);
    }
    // The samples do not all take the same number of iterations.
    counts.sort();
    counts.dedup();
    assert!(counts.len() >= 4, "{counts:?}");
}

#[test]
fn the_iteration_cap_is_an_error_naming_the_loop() {
    let m = fixture_proto("tiny/tiny_while.onnx");
    let samples = fixture_samples("tiny/tiny_while.npz");
    let iterations = |smp: &Sample| tiny_while_by_hand(&smp["x"].to_f64_vec().unwrap()).0;
    let short = samples.iter().find(|s| iterations(s) <= 3).unwrap();
    let long = samples.iter().find(|s| iterations(s) > 3).unwrap();
    let opts = SessionOptions {
        loops: LoopLimits {
            max_iterations: 3,
            ..LoopLimits::default()
        },
        ..SessionOptions::default()
    };
    let s = session(&m, short, &opts);
    assert!(s.run(short).is_ok());
    let e = s.run(long).unwrap_err().to_string();
    assert!(
        e.starts_with("Loop node 'repeat': still running after 3 iterations, the cap"),
        "{e}"
    );
    assert!(
        e.contains("trip count not given, condition still true"),
        "{e}"
    );
}

#[test]
fn per_iteration_execution_equals_the_unrolled_loop() {
    for (rel, data) in [
        ("tiny/tiny_conv_loop.onnx", "tiny/tiny_conv_loop.npz"),
        ("tiny/tiny_loop.onnx", "tiny/tiny_loop.npz"),
    ] {
        let m = fixture_proto(rel);
        let samples = fixture_samples(data);
        let unrolled = session(&m, &samples[0], &SessionOptions::default());
        let stepped = session(&m, &samples[0], &per_iteration());
        assert!(
            unrolled
                .notes()
                .iter()
                .any(|n| n.contains("unrolled into 3 copies")),
            "{rel}: {:?}",
            unrolled.notes()
        );
        assert!(
            stepped
                .notes()
                .iter()
                .any(|n| n.contains("run on the host")),
            "{rel}: {:?}",
            stepped.notes()
        );
        for smp in &samples {
            let (a, b) = (unrolled.run(smp).unwrap(), stepped.run(smp).unwrap());
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            for (name, t) in &a {
                assert_close(t, &b[name], &format!("{rel}: {name}"));
            }
        }
    }
}

#[test]
fn taps_across_the_stages_are_returned_and_streamed_once() {
    let m = fixture_proto("tiny/tiny_while.onnx");
    let samples = fixture_samples("tiny/tiny_while.npz");
    // An input, a constant, values of the part before the Loop, the Loop's outputs and a
    // value of the part after it.
    let taps: Vec<String> = ["x", "in.w", "v0", "limit", "v", "k", "y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let plain = session(
        &m,
        &samples[0],
        &SessionOptions {
            taps: taps.clone(),
            ..SessionOptions::default()
        },
    );
    let streamed = session(
        &m,
        &samples[0],
        &SessionOptions {
            taps: taps.clone(),
            stream_taps: true,
            ..SessionOptions::default()
        },
    );
    for smp in &samples {
        let out = plain.run(smp).unwrap();
        let mut seen: BTreeMap<String, Tensor> = BTreeMap::new();
        let kept = streamed
            .run_observed(smp, true, |name, v| {
                let t = match v {
                    TapValue::F32(s) => floats(s),
                    TapValue::Host(t) => t,
                };
                match seen.insert(name.to_string(), t) {
                    None => Ok(()),
                    Some(_) => Err(format!("'{name}' observed twice")),
                }
            })
            .unwrap()
            .unwrap();
        assert_eq!(seen.keys().collect::<Vec<_>>(), {
            let mut t: Vec<&String> = taps.iter().collect();
            t.sort();
            t
        });
        for (name, t) in &seen {
            let expect = &out[name];
            assert_eq!(t.to_f64_vec(), expect.to_f64_vec(), "{name}");
        }
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["k", "y"]);
        assert_eq!(kept["y"], out["y"]);
    }
    // An observer's error stops the run and comes back as it is.
    let e = streamed
        .run_observed(&samples[0], false, |name, _| {
            if name == "v" {
                Err("stop")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(e, ObservedError::Observer("stop")), "{e:?}");
}

/// An outer Loop whose trip count `M` is a graph input; its body runs an inner Loop of
/// `it` iterations (the outer iteration number) that adds 1 to a carried total each
/// time, so the total after `M` outer iterations is M(M-1)/2. Inside an If on `flag`:
/// the else branch returns `t0` unchanged.
fn nested_loops_in_an_if() -> proto::ModelProto {
    let inner = proto::GraphProto {
        name: Some("inner".into()),
        node: vec![
            node("Identity", "inner_keep", &["ic"], &["ico"]),
            node("Add", "inner_add", &["t", "unit"], &["to"]),
        ],
        input: vec![vi("ii", 7, &[]), vi("ic", 9, &[]), vi("t", 1, &[1])],
        output: vec![vi("ico", 9, &[]), vi("to", 1, &[1])],
        ..Default::default()
    };
    let mut inner_loop = node("Loop", "inner", &["oi", "", "ot"], &["ot_next"]);
    inner_loop.attribute = vec![graph_attr("body", inner)];
    let outer = proto::GraphProto {
        name: Some("outer".into()),
        node: vec![
            node("Identity", "outer_keep", &["oc"], &["oco"]),
            inner_loop,
        ],
        input: vec![vi("oi", 7, &[]), vi("oc", 9, &[]), vi("ot", 1, &[1])],
        output: vec![vi("oco", 9, &[]), vi("ot_next", 1, &[1])],
        ..Default::default()
    };
    let mut outer_loop = node("Loop", "outer", &["M", "", "t0"], &["total"]);
    outer_loop.attribute = vec![graph_attr("body", outer)];
    let then_branch = proto::GraphProto {
        name: Some("then".into()),
        node: vec![outer_loop],
        output: vec![vi("total", 1, &[1])],
        ..Default::default()
    };
    let else_branch = proto::GraphProto {
        name: Some("else".into()),
        node: vec![node("Identity", "pass", &["t0"], &["same"])],
        output: vec![vi("same", 1, &[1])],
        ..Default::default()
    };
    let mut iff = node("If", "choose", &["flag"], &["r"]);
    iff.attribute = vec![
        graph_attr("then_branch", then_branch),
        graph_attr("else_branch", else_branch),
    ];
    model(
        vec![node("Relu", "start", &["x"], &["t0"]), iff],
        vec![f32_init("unit", &[1], &[1.0])],
        vec![vi("x", 1, &[1]), vi("M", 7, &[]), vi("flag", 9, &[])],
        vec![vi("r", 1, &[1])],
    )
}

#[test]
fn loops_nest_and_run_inside_if_branches() {
    let m = nested_loops_in_an_if();
    let flag = |b: bool| Tensor::Bool(ndarray::arr0(b).into_dyn());
    let first = sample(&[
        ("x", floats(&[0.25])),
        ("M", scalar(4)),
        ("flag", flag(true)),
    ]);
    let s = session(&m, &first, &SessionOptions::default());
    for (mv, f, expect) in [
        (4, true, 0.25 + 6.0),
        (6, true, 0.25 + 15.0),
        (0, true, 0.25),
        (4, false, 0.25),
    ] {
        let out = s
            .run(&sample(&[
                ("x", floats(&[0.25])),
                ("M", scalar(mv)),
                ("flag", flag(f)),
            ]))
            .unwrap();
        assert_close(
            &out["r"],
            &floats(&[expect as f32]),
            &format!("M = {mv}, flag {f}"),
        );
    }
}

#[test]
fn a_loop_in_a_scan_body_that_cannot_be_unrolled_is_refused_naming_the_scan() {
    let mut lp = node("Loop", "inner", &["M", "", "s_in"], &["s_out"]);
    let body = proto::GraphProto {
        name: Some("lb".into()),
        node: vec![
            node("Identity", "k", &["c"], &["co"]),
            node("Relu", "r", &["v"], &["vo"]),
        ],
        input: vec![vi("i", 7, &[]), vi("c", 9, &[]), vi("v", 1, &[2])],
        output: vec![vi("co", 9, &[]), vi("vo", 1, &[2])],
        ..Default::default()
    };
    lp.attribute = vec![graph_attr("body", body)];
    let scan_body = proto::GraphProto {
        name: Some("sb".into()),
        node: vec![lp, node("Identity", "y", &["x_t"], &["y_t"])],
        input: vec![vi("s_in", 1, &[2]), vi("x_t", 1, &[2])],
        output: vec![vi("s_out", 1, &[2]), vi("y_t", 1, &[2])],
        ..Default::default()
    };
    let mut scan = node("Scan", "scan", &["s0", "xs"], &["s_last", "ys"]);
    scan.attribute = vec![
        graph_attr("body", scan_body),
        int_attr("num_scan_inputs", 1),
    ];
    let m = model(
        vec![scan],
        vec![],
        vec![vi("s0", 1, &[2]), vi("xs", 1, &[3, 2]), vi("M", 7, &[])],
        vec![vi("s_last", 1, &[2]), vi("ys", 1, &[3, 2])],
    );
    let smp = sample(&[
        ("s0", floats(&[1.0, 2.0])),
        (
            "xs",
            Tensor::F32(ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[3, 2]))),
        ),
        ("M", scalar(2)),
    ]);
    let e = Session::new(&m, None, &smp, &SessionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("Scan node 'scan': a subgraph holds a Loop"),
        "{e}"
    );
}

#[test]
fn qrange_run_and_compare_execute_a_while_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npz");
    let model = fixture("tiny/tiny_while.onnx");
    let data = fixture("tiny/tiny_while.npz");
    let r = qrange(&["run", &s(&model), "--data", &s(&data), "-o", &s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("Loop node 'repeat' run on the host"),
        "{}",
        r.stdout
    );
    let specs = vec![
        InputSpec::new("k", DType::I64, None),
        InputSpec::new("y", DType::F32, None),
    ];
    let written = data::load(&out, &specs).unwrap().read_all().unwrap();
    let samples = fixture_samples("tiny/tiny_while.npz");
    assert_eq!(written.len(), samples.len());
    for (w, smp) in written.iter().zip(&samples) {
        let (k, y) = tiny_while_by_hand(&smp["x"].to_f64_vec().unwrap());
        assert_eq!(w["k"].to_i64_vec().unwrap(), vec![k]);
        let got = w["y"].to_f64_vec().unwrap();
        for (a, b) in got.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{got:?} vs {y:?}");
        }
    }
    // compare runs both models through the same Loop execution (here the model with itself).
    let r = qrange(&[
        "compare",
        &s(&model),
        &s(&model),
        "--data",
        &s(&data),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["outputs"]["k"]["max_abs"], 0.0, "{j}");
    assert_eq!(j["outputs"]["y"]["max_abs"], 0.0, "{j}");
}
