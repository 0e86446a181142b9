//! Specialising real models: silero_vad (25 nested If nodes) with `sr` pinned and the
//! input shapes given, checked against ONNX Runtime reference outputs in the project's
//! engine; and fixtures the engine loads before and after, which must agree.

mod ir_build;

use ir_build::count_ops;
use qrange::data::{self, InputSpec};
use qrange::exec::{Session, SessionOptions};
use qrange::ir::{DType, Graph, Model, Tensor};
use qrange::onnx::{encode_model, read_model, ExternalPolicy};
use qrange::passes::{Flow, PassCx, Phase, Runner};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn all_ops(g: &Graph) -> usize {
    g.ops()
        .map(|o| {
            1 + g
                .op(o)
                .subgraphs()
                .iter()
                .map(|(_, s)| all_ops(s))
                .sum::<usize>()
        })
        .sum()
}

/// Runs the quantize pipeline's passes up to the plan (default settings), checking the IR
/// after every step.
fn pipeline(m: &mut Model, cx: &mut PassCx) {
    cx.quant = Some(
        qrange::pipeline::options::Settings::default()
            .config()
            .unwrap(),
    );
    let mut runner = Runner::new();
    for phase in [Phase::Specialise, Phase::Prepare] {
        runner
            .run_phase(phase, m, cx, &mut |step, m| {
                m.verify()
                    .unwrap_or_else(|e| panic!("after {}: {e}", step.label));
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(cx.plan.is_some());
}

fn session(m: &Model, sample: &BTreeMap<String, Tensor>) -> Session {
    let (proto, _) = encode_model(m, &ExternalPolicy::Inline, "").unwrap();
    Session::new(&proto, None, sample, &SessionOptions::default()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (x, y) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    x.iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
}

/// Row `i` of a stacked array (axis 0 = sample).
fn row(t: &Tensor, i: usize) -> Tensor {
    match t {
        Tensor::F32(a) => Tensor::F32(a.index_axis(ndarray::Axis(0), i).to_owned()),
        _ => panic!("expected f32"),
    }
}

#[test]
fn silero_vad_folds_to_an_if_free_model_that_matches_onnx_runtime() {
    let mut m = read_model(&repo("fixtures/silero_vad/model.onnx")).unwrap();
    let before_ops = all_ops(&m.graph);
    assert_eq!(count_ops(&m.graph, "If"), 25);
    assert_eq!(count_ops(&m.graph, "LSTM"), 4);
    let mut cx = PassCx::default();
    cx.pinned
        .insert("sr".into(), Tensor::I64(ndarray::arr0(16000i64).into_dyn()));
    cx.input_shapes.insert("input".into(), vec![1, 576]);
    cx.input_shapes.insert("state".into(), vec![2, 1, 128]);
    pipeline(&mut m, &mut cx);
    assert!(cx.diagnostics.is_empty(), "{:?}", cx.diagnostics);

    // No If anywhere, one LSTM (16 kHz branch, 2-D input), no subgraph left.
    assert_eq!(count_ops(&m.graph, "If"), 0);
    assert_eq!(count_ops(&m.graph, "LSTM"), 1);
    assert_eq!(all_ops(&m.graph), m.graph.op_count());
    assert!(
        m.graph.op_count() < before_ops / 4,
        "{}",
        m.graph.op_count()
    );
    // Every value is typed with a fully known shape.
    for o in m.graph.ops() {
        for v in m.graph.outputs_of(o).into_iter().flatten() {
            let val = m.graph.value(v);
            assert!(
                val.ty.as_ref().and_then(|t| t.known_dims()).is_some(),
                "{} ({}) is not fully typed: {:?}",
                val.name,
                m.graph.op(o).op_type,
                val.ty
            );
        }
    }
    let inputs: Vec<&str> = m
        .graph
        .inputs
        .iter()
        .map(|v| m.graph.value(*v).name.as_str())
        .collect();
    assert_eq!(inputs, ["input", "state"]);

    // The ONNX Runtime reference (tests/ort/gen_silero_reference.py) on the original.
    let specs = [
        InputSpec::new("input", DType::F32, Some(vec![Some(1), Some(576)])),
        InputSpec::new("state", DType::F32, Some(vec![Some(2), Some(1), Some(128)])),
    ];
    let reference = data::load(&repo("tests/data/silero_vad_reference.npz"), &specs).unwrap();
    assert!(reference.len() >= 4);
    let s = session(&m, &reference.get(0).unwrap());
    for (i, sample) in reference.read_all().unwrap().iter().enumerate() {
        let out = s.run(sample).unwrap();
        let d_out = max_abs_diff(&out["output"], &row(&reference.extra["output"], i));
        let d_state = max_abs_diff(&out["stateN"], &row(&reference.extra["stateN"], i));
        assert!(
            d_out < 1e-5 && d_state < 1e-5,
            "sample {i}: {d_out:e} {d_state:e}"
        );
    }

    // For the ONNX Runtime check of tests/ort/compare_models.py.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("silero_vad_folded.onnx");
    qrange::onnx::write_model(&m, &out, &ExternalPolicy::Inline).unwrap();
}

/// Specialises a fixture for the shapes of its first sample; the engine must give the
/// same outputs before and after on every sample.
fn same_outputs_before_and_after(model: &str, data_file: &str, expect_ifs_after: usize) {
    let original = read_model(&repo(model)).unwrap();
    let specs: Vec<InputSpec> = original
        .graph
        .inputs
        .iter()
        .filter(|v| original.graph.value(**v).init.is_none())
        .map(|v| {
            let val = original.graph.value(*v);
            InputSpec::new(val.name.clone(), val.dtype().unwrap(), None)
        })
        .collect();
    let ds = data::load(&repo(data_file), &specs).unwrap();
    let mut m = original.clone();
    let mut cx = PassCx::default();
    for (k, t) in &ds.get(0).unwrap() {
        cx.input_shapes
            .insert(k.clone(), t.shape().iter().map(|&d| d as i64).collect());
    }
    pipeline(&mut m, &mut cx);
    assert!(cx.diagnostics.is_empty(), "{model}: {:?}", cx.diagnostics);
    assert_eq!(count_ops(&m.graph, "If"), expect_ifs_after, "{model}");
    let (a, b) = (
        session(&original, &ds.get(0).unwrap()),
        session(&m, &ds.get(0).unwrap()),
    );
    for (i, sample) in ds.read_all().unwrap().iter().enumerate() {
        let (x, y) = (a.run(sample).unwrap(), b.run(sample).unwrap());
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{model}"
        );
        for (k, t) in &x {
            let d = max_abs_diff(t, &y[k]);
            assert!(d <= 1e-5, "{model} sample {i} output {k}: {d:e}");
        }
    }
}

#[test]
fn tiny_shape_if_folds_once_the_batch_is_known() {
    same_outputs_before_and_after(
        "fixtures/tiny/tiny_shape_if.onnx",
        "fixtures/tiny/tiny_shape_if.npz",
        0,
    );
}

#[test]
fn a_data_dependent_if_stays() {
    same_outputs_before_and_after("fixtures/tiny/tiny_if.onnx", "fixtures/tiny/tiny_if.npz", 1);
}

#[test]
fn loops_and_their_bodies_survive() {
    for (model, data) in [
        (
            "fixtures/tiny/tiny_loop.onnx",
            "fixtures/tiny/tiny_loop.npz",
        ),
        (
            "fixtures/tiny/tiny_conv_loop.onnx",
            "fixtures/tiny/tiny_conv_loop.npz",
        ),
        (
            "fixtures/tiny/tiny_while.onnx",
            "fixtures/tiny/tiny_while.npz",
        ),
    ] {
        same_outputs_before_and_after(model, data, 0);
    }
    let mut m = read_model(&repo("fixtures/tiny/tiny_loop.onnx")).unwrap();
    let mut cx = PassCx::default();
    cx.input_shapes.insert("x".into(), vec![1, 4]);
    pipeline(&mut m, &mut cx);
    assert_eq!(count_ops(&m.graph, "Loop"), 1);
    let lp = m
        .graph
        .ops()
        .find(|o| m.graph.op(*o).op_type == "Loop")
        .unwrap();
    let body = m.graph.op(lp).subgraphs()[0].1;
    // The body still reads the outer weights, which therefore stay.
    for c in body.captures() {
        let v = m.graph.value_by_name(&c).unwrap();
        assert!(m.graph.const_of(v).is_some(), "{c}");
    }
    assert_eq!(count_ops(body, "Gemm"), 1);
}

#[test]
fn ppocr_cls_many_constants() {
    same_outputs_before_and_after(
        "fixtures/ppocr_cls/model.onnx",
        "fixtures/ppocr_cls/calib.npz",
        0,
    );
}

#[test]
fn magika_integer_input_and_shape_arithmetic() {
    same_outputs_before_and_after("fixtures/magika/model.onnx", "fixtures/magika/calib.npz", 0);
}
