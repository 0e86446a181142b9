//! Unit tests: one small hand-built QDQ graph per rule, checked for the verdict and the
//! typed reason (`tests/conformance/lint_vs_ort.py` checks the same rules against ONNX
//! Runtime itself).

use super::*;
use crate::onnx::proto;
use crate::passes::testkit::{attr_f, attr_i, attr_ints, Builder};

const F32: i32 = 1;
const U8: i32 = 2;
const I8: i32 = 3;
const U16: i32 = 4;
const I32: i32 = 6;
const I64: i32 = 7;

fn raw(name: &str, dtype: i32, dims: &[i64], bytes: Vec<u8>) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(dtype),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

/// A scalar zero point of integer type `dtype`.
fn zp(name: &str, dtype: i32, v: i64) -> proto::TensorProto {
    let bytes = match dtype {
        U8 | I8 => vec![v as u8],
        U16 => (v as u16).to_le_bytes().to_vec(),
        I32 => (v as i32).to_le_bytes().to_vec(),
        _ => unreachable!("test zero-point type"),
    };
    raw(name, dtype, &[], bytes)
}

fn scalar(name: &str, v: f32) -> proto::TensorProto {
    raw(name, F32, &[], v.to_le_bytes().to_vec())
}

fn floats(name: &str, vals: &[f32]) -> proto::TensorProto {
    raw(
        name,
        F32,
        &[vals.len() as i64],
        vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// A small graph under construction, in the proto form the decoder reads.
struct Qdq {
    b: Builder,
}

impl Qdq {
    fn new(opset: i64) -> Qdq {
        let mut b = Builder::new(opset);
        b.input("x", F32, Some(&[1, 4, 6, 6]));
        Qdq { b }
    }

    /// `x → Q → DQ` with scale `s` and zero point `z` of type `dtype`; returns the DQ output.
    fn qdq(&mut self, x: &str, pre: &str, s: f32, dtype: i32, z: i64) -> String {
        self.b.tensor(scalar(&format!("{pre}.s"), s));
        self.b.tensor(zp(&format!("{pre}.z"), dtype, z));
        let (sn, zn) = (format!("{pre}.s"), format!("{pre}.z"));
        let (q, dq) = (format!("{pre}.q"), format!("{pre}.dq"));
        self.b.node(
            "QuantizeLinear",
            &format!("{pre}.Q"),
            &[x, &sn, &zn],
            &[&q],
            vec![],
        );
        self.b.node(
            "DequantizeLinear",
            &format!("{pre}.DQ"),
            &[&q, &sn, &zn],
            &[&dq],
            vec![],
        );
        dq
    }

    /// A constant integer tensor of zeros behind a DequantizeLinear (weights, biases).
    fn const_dq(
        &mut self,
        name: &str,
        dtype: i32,
        dims: &[i64],
        scales: &[f32],
        axis: Option<i64>,
    ) -> String {
        let n: i64 = dims.iter().product();
        let width = if dtype == I32 { 4 } else { 1 };
        self.b
            .tensor(raw(name, dtype, dims, vec![0; (n * width) as usize]));
        let sn = format!("{name}.s");
        if scales.len() == 1 {
            self.b.tensor(scalar(&sn, scales[0]));
        } else {
            self.b.tensor(floats(&sn, scales));
        }
        let zn = format!("{name}.z");
        let zdims: Vec<i64> = if scales.len() == 1 {
            vec![]
        } else {
            vec![scales.len() as i64]
        };
        let zn_bytes = vec![0; scales.len() * width as usize];
        self.b.tensor(raw(&zn, dtype, &zdims, zn_bytes));
        let out = format!("{name}.dq");
        let attrs = axis.map(|a| vec![attr_i("axis", a)]).unwrap_or_default();
        self.b.node(
            "DequantizeLinear",
            &format!("{name}.DQ"),
            &[name, &sn, &zn],
            &[&out],
            attrs,
        );
        out
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        ins: &[&str],
        out: &str,
        attrs: Vec<proto::AttributeProto>,
    ) -> String {
        self.b.node(op, name, ins, &[out], attrs);
        out.to_string()
    }

    /// A float reader, so that `v` is not a graph output.
    fn sink(&mut self, v: &str) {
        let out = format!("{v}.sink");
        self.b
            .node("Sigmoid", &format!("{v}.Sink"), &[v], &[&out], vec![]);
        self.b.output(&out, F32, None);
    }

    fn lint(&self, platform: Platform) -> FusionReport {
        lint(
            &self.b.model(),
            &LintOptions {
                target: Target::OrtCpu,
                platform,
            },
        )
        .unwrap()
    }
}

fn unit<'a>(r: &'a FusionReport, node: &str) -> &'a Unit {
    r.units.iter().find(|u| u.node == node).unwrap_or_else(|| {
        panic!(
            "no unit '{node}' in {:?}",
            r.units.iter().map(|u| &u.node).collect::<Vec<_>>()
        )
    })
}

fn reason<'a>(r: &'a FusionReport, node: &str) -> &'a Reason {
    match &unit(r, node).verdict {
        Verdict::Float { reason } => reason,
        v => panic!("unit '{node}' is {v:?}, not float"),
    }
}

fn kernel(r: &FusionReport, node: &str) -> String {
    match &unit(r, node).verdict {
        Verdict::Fused { kernel } => kernel.clone(),
        v => panic!("unit '{node}' is {v:?}, not fused"),
    }
}

/// `DQ(x) → Conv(w, b) → Q → DQ → sink` with the given activation type.
fn conv(act: i32, zp_act: i64, bias_dtype: i32, opset: i64) -> Qdq {
    let mut m = Qdq::new(opset);
    let x = m.qdq("x", "a", 0.1, act, zp_act);
    let w = m.const_dq("w", I8, &[4, 4, 3, 3], &[0.01], None);
    let b = m.const_dq("b", bias_dtype, &[4], &[0.001], None);
    let y = m.node(
        "Conv",
        "conv",
        &[&x, &w, &b],
        "y",
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let o = m.qdq(&y, "o", 0.1, act, zp_act);
    m.sink(&o);
    m
}

#[test]
fn conv_unit_fuses_and_the_coverage_line_counts_it() {
    let r = conv(U8, 128, I32, 17).lint(Platform::X86_64);
    assert_eq!(kernel(&r, "conv"), "QLinearConv");
    assert!(
        unit(&r, "conv").warnings.is_empty(),
        "{:?}",
        unit(&r, "conv").warnings
    );
    let c = r.coverage();
    assert_eq!((c.units, c.fused, c.float), (2, 1, 1), "{c:?}");
    assert!(
        c.line
            .starts_with("fusion     1 of 2 node units run on integers (ort-cpu"),
        "{}",
        c.line
    );
    assert!(
        c.line.contains("1 stay float: 1 output not quantized"),
        "{}",
        c.line
    );
}

#[test]
fn graph_output_blocks_fusion() {
    let mut m = conv(U8, 128, I32, 17);
    m.b.output("y", F32, None);
    let r = m.lint(Platform::X86_64);
    assert_eq!(
        reason(&r, "conv"),
        &Reason::GraphOutput { value: "y".into() }
    );
}

#[test]
fn sixteen_bit_activations_stay_float() {
    let r = conv(U16, 30000, I32, 21).lint(Platform::X86_64);
    assert_eq!(
        reason(&r, "conv"),
        &Reason::SixteenBit { dtype: DType::U16 }
    );
}

#[test]
fn bias_must_be_int32() {
    let r = conv(U8, 128, I8, 17).lint(Platform::X86_64);
    assert!(
        matches!(reason(&r, "conv"), Reason::BiasNotInt32 { bias, dtype: DType::I8 } if bias == "b"),
        "{:?}",
        reason(&r, "conv")
    );
}

#[test]
fn int8_activations_fuse_when_the_pair_converts_and_not_when_shared() {
    // A single Q → DQ pair is turned into uint8 on x86-64.
    let r = conv(I8, 0, I32, 17).lint(Platform::X86_64);
    assert_eq!(kernel(&r, "conv"), "QLinearConv");
    // A second reader of the int8 DQ keeps the pair int8: no s8s8 kernels on x86-64.
    let mut m = conv(I8, 0, I32, 17);
    m.sink("a.dq");
    let r = m.lint(Platform::X86_64);
    match reason(&r, "conv") {
        Reason::Int8Activation { value, detail } => {
            assert_eq!(value, "a.q");
            assert!(detail.contains("'a.Q' feeds 2"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let note = &unit(&r, "conv").notes;
    assert!(
        note.iter().any(|n| n.contains("'a.DQ' is shared")),
        "{note:?}"
    );
    // arm64 runs s8 x s8.
    assert_eq!(kernel(&m.lint(Platform::Arm64), "conv"), "QLinearConv");
}

#[test]
fn float_input_and_missing_output_q() {
    let mut m = Qdq::new(17);
    let w = m.const_dq("w", I8, &[4, 4, 3, 3], &[0.01], None);
    let y = m.node(
        "Conv",
        "conv",
        &["x", &w],
        "y",
        vec![attr_ints("kernel_shape", &[3, 3])],
    );
    let o = m.qdq(&y, "o", 0.1, U8, 128);
    m.sink(&o);
    let x = m.qdq("x", "a", 0.1, U8, 128);
    let w2 = m.const_dq("w2", I8, &[4, 4, 3, 3], &[0.01], None);
    let y2 = m.node(
        "Conv",
        "conv2",
        &[&x, &w2],
        "y2",
        vec![attr_ints("kernel_shape", &[3, 3])],
    );
    m.sink(&y2);
    let r = m.lint(Platform::X86_64);
    assert!(
        matches!(reason(&r, "conv"), Reason::MissingInputDq { slot: 0, value, .. } if value == "x"),
        "{:?}",
        reason(&r, "conv")
    );
    assert!(
        matches!(reason(&r, "conv2"), Reason::MissingOutputQ { value, .. } if value == "y2"),
        "{:?}",
        reason(&r, "conv2")
    );
}

#[test]
fn float_bias_is_quantized_by_the_runtime() {
    let mut m = Qdq::new(17);
    let x = m.qdq("x", "a", 0.1, U8, 128);
    let w = m.const_dq("w", I8, &[4, 4, 3, 3], &[0.01], None);
    m.b.tensor(floats("b", &[0.0; 4]));
    let y = m.node(
        "Conv",
        "conv",
        &[&x, &w, "b"],
        "y",
        vec![attr_ints("kernel_shape", &[3, 3])],
    );
    let o = m.qdq(&y, "o", 0.1, U8, 128);
    m.sink(&o);
    let r = m.lint(Platform::X86_64);
    assert_eq!(kernel(&r, "conv"), "QLinearConv");
    assert!(unit(&r, "conv")
        .notes
        .iter()
        .any(|n| n.contains("float bias 'b'")));
}

#[test]
fn relu_before_q_is_removed_only_when_q_clips_at_zero() {
    for (zp_out, removed) in [(0, true), (10, false)] {
        let mut m = Qdq::new(17);
        let x = m.qdq("x", "a", 0.1, U8, 128);
        let w = m.const_dq("w", I8, &[4, 4, 3, 3], &[0.01], None);
        let y = m.node(
            "Conv",
            "conv",
            &[&x, &w],
            "y",
            vec![attr_ints("kernel_shape", &[3, 3])],
        );
        let r = m.node("Relu", "relu", &[&y], "r", vec![]);
        let o = m.qdq(&r, "o", 0.1, U8, zp_out);
        m.sink(&o);
        let rep = m.lint(Platform::X86_64);
        if removed {
            assert!(matches!(
                unit(&rep, "relu").verdict,
                Verdict::Removed { .. }
            ));
            assert_eq!(kernel(&rep, "conv"), "QLinearConv");
        } else {
            assert_eq!(
                reason(&rep, "conv"),
                &Reason::ActivationBetween {
                    node: "relu".into(),
                    op_type: "Relu".into()
                }
            );
            assert!(matches!(reason(&rep, "relu"), Reason::NoKernel { .. }));
        }
    }
}

/// `DQ → op → Q → DQ → sink` for a data-movement op.
fn data_movement(
    op: &str,
    s: (f32, f32),
    z: (i64, i64),
    extra: &[(&str, proto::TensorProto)],
    attrs: Vec<proto::AttributeProto>,
) -> FusionReport {
    let mut m = Qdq::new(17);
    let x = m.qdq("x", "a", s.0, U8, z.0);
    let mut ins = vec![x.as_str()];
    for (n, t) in extra {
        m.b.tensor(t.clone());
        ins.push(n);
    }
    let y = m.node(op, "target", &ins, "y", attrs);
    let o = m.qdq(&y, "o", s.1, U8, z.1);
    m.sink(&o);
    m.lint(Platform::X86_64)
}

#[test]
fn data_movement_drops_its_pair_only_with_equal_parameters() {
    let shape = raw(
        "shape",
        I64,
        &[2],
        [1i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let r = data_movement(
        "Reshape",
        (0.1, 0.1),
        (128, 128),
        &[("shape", shape.clone())],
        vec![],
    );
    assert_eq!(unit(&r, "target").verdict, Verdict::Dropped);
    assert_eq!(unit(&r, "target").kind, UnitKind::DataMovement);
    let r = data_movement(
        "Reshape",
        (0.1, 0.2),
        (128, 128),
        &[("shape", shape)],
        vec![],
    );
    assert!(matches!(reason(&r, "target"), Reason::QParamsDiffer { .. }));
    let r = data_movement(
        "MaxPool",
        (-0.1, -0.1),
        (128, 128),
        &[],
        vec![attr_ints("kernel_shape", &[2, 2])],
    );
    assert_eq!(
        reason(&r, "target"),
        &Reason::NonPositiveScale {
            scale: -0.10000000149011612
        }
    );
    let r = data_movement("Pad", (0.1, 0.1), (128, 128), &[], vec![]);
    assert!(matches!(reason(&r, "target"), Reason::NoKernel { op_type, .. } if op_type == "Pad"));
}

#[test]
fn dq_is_propagated_forward_through_transpose() {
    let mut m = Qdq::new(17);
    let x = m.qdq("x", "a", 0.1, U8, 128);
    let t = m.node(
        "Transpose",
        "transpose",
        &[&x],
        "t",
        vec![attr_ints("perm", &[0, 2, 3, 1])],
    );
    m.sink(&t);
    let r = m.lint(Platform::X86_64);
    let u = unit(&r, "transpose");
    assert_eq!(u.verdict, Verdict::Dropped);
    assert!(
        u.notes
            .iter()
            .any(|n| n.contains("inserts a Q/DQ pair after it")),
        "{:?}",
        u.notes
    );
    // The sink now reads a DequantizeLinear the runtime inserted, and stays float.
    assert!(
        matches!(reason(&r, "t.Sink"), Reason::MissingOutputQ { value, .. } if value == "t.sink")
    );
}

/// `DQ → Gemm(w, b) → [Q → DQ] → sink`.
fn gemm(attrs: Vec<proto::AttributeProto>, with_q: bool) -> FusionReport {
    let mut m = Qdq::new(17);
    let x = m.qdq("x", "a", 0.1, U8, 128);
    let w = m.const_dq("w", I8, &[4, 8], &[0.01, 0.02, 0.01, 0.02], Some(0));
    let b = m.const_dq("b", I32, &[4], &[0.001, 0.002, 0.001, 0.002], Some(0));
    let mut a = vec![attr_i("transB", 1)];
    a.extend(attrs);
    let y = m.node("Gemm", "gemm", &[&x, &w, &b], "y", a);
    if with_q {
        let o = m.qdq(&y, "o", 0.1, U8, 128);
        m.sink(&o);
    } else {
        m.sink(&y);
    }
    m.lint(Platform::X86_64)
}

#[test]
fn gemm_rules() {
    let r = gemm(vec![], true);
    assert_eq!(kernel(&r, "gemm"), "QGemm");
    assert!(
        unit(&r, "gemm").warnings.is_empty(),
        "{:?}",
        unit(&r, "gemm").warnings
    );
    assert_eq!(kernel(&gemm(vec![], false), "gemm"), "QGemm");
    assert_eq!(
        reason(&gemm(vec![attr_f("beta", 0.5)], true), "gemm"),
        &Reason::GemmBeta { beta: 0.5 }
    );
    assert_eq!(
        reason(&gemm(vec![attr_f("alpha", 2.0)], true), "gemm"),
        &Reason::GemmAlpha { alpha: 2.0 }
    );
}

#[test]
fn matmul_without_q_fuses_to_matmul_integer_to_float() {
    let mut m = Qdq::new(17);
    let x = m.qdq("x", "a", 0.1, U8, 128);
    let w = m.const_dq("w", I8, &[6, 3], &[0.01], None);
    let y = m.node("MatMul", "mm", &[&x, &w], "y", vec![]);
    m.b.output(&y, F32, None);
    let r = m.lint(Platform::X86_64);
    assert_eq!(kernel(&r, "mm"), "MatMulIntegerToFloat");
}

#[test]
fn warnings_for_bias_scale_and_weight_axis() {
    let mut m = Qdq::new(17);
    let x = m.qdq("x", "a", 0.1, U8, 128);
    // Per-channel scales on axis 1 (input channels) and a bias scale that is not s_x · s_w.
    let w = m.const_dq("w", I8, &[4, 4, 3, 3], &[0.01, 0.02, 0.03, 0.04], Some(1));
    let b = m.const_dq("b", I32, &[4], &[0.5, 0.5, 0.5, 0.5], Some(0));
    let y = m.node(
        "Conv",
        "conv",
        &[&x, &w, &b],
        "y",
        vec![attr_ints("kernel_shape", &[3, 3])],
    );
    let o = m.qdq(&y, "o", 0.1, U8, 128);
    m.sink(&o);
    let r = m.lint(Platform::X86_64);
    assert_eq!(kernel(&r, "conv"), "QLinearConv");
    let w = &unit(&r, "conv").warnings;
    assert!(
        w.contains(&Warning::WeightAxis {
            weight: "w".into(),
            axis: 1,
            expected: 0
        }),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|x| matches!(x, Warning::BiasScale { bias, channel: 0, .. } if bias == "b")),
        "{w:?}"
    );
}

#[test]
fn json_flattens_the_verdict() {
    let r = conv(U16, 30000, I32, 21).lint(Platform::X86_64);
    let j = serde_json::to_value(unit(&r, "conv")).unwrap();
    assert_eq!(j["verdict"], "float");
    assert_eq!(j["reason_code"], "sixteen_bit");
    assert_eq!(j["kind"], "compute");
    assert!(j["reason"].as_str().unwrap().contains("u16"));
    let j = serde_json::to_value(conv(U8, 128, I32, 17).lint(Platform::X86_64)).unwrap();
    assert_eq!(j["units"][0]["kernel"], "QLinearConv");
    assert_eq!(j["platform"], "x86-64");
    assert_eq!(j["target"], "ort-cpu");
}

#[test]
fn other_targets() {
    let m = conv(U8, 128, I32, 17).b.model();
    let r = lint(&m, &LintOptions::new(Target::Generic)).unwrap();
    assert!(!r.fusion_model && r.units.is_empty() && r.has_qdq());
    assert!(
        r.coverage().line.contains("no fusion model"),
        "{}",
        r.coverage().line
    );
    // TensorRT: uint8 is not a TensorRT type.
    let r = lint(&m, &LintOptions::new(Target::Tensorrt)).unwrap();
    assert!(
        matches!(
            reason(&r, "conv"),
            Reason::UnsupportedType {
                dtype: DType::U8,
                ..
            }
        ),
        "{:?}",
        reason(&r, "conv")
    );
    // Symmetric int8 with a float bias runs as an int8 convolution.
    let mut q = Qdq::new(17);
    let x = q.qdq("x", "a", 0.1, I8, 0);
    let w = q.const_dq("w", I8, &[4, 4, 3, 3], &[0.01, 0.02, 0.03, 0.04], Some(0));
    q.b.tensor(floats("b", &[0.0; 4]));
    let y = q.node(
        "Conv",
        "conv",
        &[&x, &w, "b"],
        "y",
        vec![attr_ints("kernel_shape", &[3, 3])],
    );
    q.sink(&y);
    q.sink(&x);
    let r = lint(&q.b.model(), &LintOptions::new(Target::Tensorrt)).unwrap();
    assert_eq!(kernel(&r, "conv"), "int8 convolution");
    assert!(matches!(
        reason(&r, "a.dq.Sink"),
        Reason::HigherPrecision { .. }
    ));
}

#[test]
fn identity_into_a_graph_output_is_removed() {
    // ONNX Runtime removes an Identity writing a graph output when its input has no other
    // reader; a DequantizeLinear read twice is first made unique per reader, so the
    // Identity goes in both cases.
    for other_reader in [false, true] {
        let mut m = Qdq::new(17);
        let x = m.qdq("x", "a", 0.1, U8, 128);
        m.node("Identity", "id", &[&x], "y", vec![]);
        m.b.output("y", F32, None);
        if other_reader {
            m.sink(&x);
        }
        let r = m.lint(Platform::X86_64);
        let v = &unit(&r, "id").verdict;
        assert!(
            matches!(v, Verdict::Removed { why } if why.contains("Identity")),
            "{other_reader}: {v:?}"
        );
    }
}

#[test]
fn a_gather_from_a_dequantized_table_runs_in_float_behind_the_dequantization() {
    // An embedding table stored int8 per row: ONNX Runtime keeps the DequantizeLinear
    // (it folds none) and runs the Gather on its float output.
    let mut m = Qdq::new(17);
    m.b.input("ids", I64, Some(&[1, 3]));
    let t = m.const_dq("table", I8, &[4, 6], &[0.1, 0.2, 0.3, 0.4], Some(0));
    let y = m.node("Gather", "lookup", &[&t, "ids"], "e", vec![]);
    m.sink(&y);
    m.sink("x");
    let r = m.lint(Platform::X86_64);
    match reason(&r, "lookup") {
        Reason::DequantizedTable { table } => assert_eq!(table, "table"),
        other => panic!("{other:?}"),
    }
    assert_eq!(reason(&r, "lookup").code(), "dequantized_table");
}

/// A graph with float input `x` of `dims`.
fn with_input(opset: i64, dims: &[i64]) -> Qdq {
    let mut b = Builder::new(opset);
    b.input("x", F32, Some(dims));
    Qdq { b }
}

fn ints(name: &str, vals: &[i64]) -> proto::TensorProto {
    raw(
        name,
        I64,
        &[vals.len() as i64],
        vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// `DQ(x) → MatMul(DQ w) → Add(float bias)`, with a Q after when `with_q`.
fn matmul_bias_add(act: i32, zp_act: i64, opset: i64, with_q: bool) -> FusionReport {
    let mut m = with_input(opset, &[2, 8]);
    let x = m.qdq("x", "a", 0.1, act, zp_act);
    let w = m.const_dq("w", I8, &[8, 4], &[0.01, 0.02, 0.01, 0.02], Some(1));
    m.b.tensor(floats("b", &[0.5, -0.5, 0.25, 0.0]));
    let y = m.node("MatMul", "mm", &[&x, &w], "y", vec![]);
    let z = m.node("Add", "add", &[&y, "b"], "z", vec![]);
    if with_q {
        let o = m.qdq(&z, "o", 0.1, act, zp_act);
        m.sink(&o);
    } else {
        m.sink(&z);
    }
    m.lint(Platform::X86_64)
}

#[test]
fn a_matmul_and_its_bias_add_are_judged_as_the_gemm_the_runtime_makes_of_them() {
    let r = matmul_bias_add(U8, 128, 17, true);
    assert_eq!(kernel(&r, "mm/MatMulAddFusion"), "QGemm");
    assert!(r.units.iter().all(|u| u.node != "mm" && u.node != "add"));
    assert_eq!(
        unit(&r, "mm/MatMulAddFusion").outputs,
        vec!["z".to_string()]
    );
    // No Q after: the runtime leaves the float bias, so the Gemm stays float.
    let r = matmul_bias_add(U8, 128, 17, false);
    assert!(matches!(
        reason(&r, "mm/MatMulAddFusion"),
        Reason::MissingInputDq { slot: 2, .. }
    ));
    // 16-bit activations: the weight makes the Gemm MatMulNBits.
    let r = matmul_bias_add(U16, 300, 21, false);
    assert_eq!(kernel(&r, "mm/MatMulAddFusion"), "MatMulNBits");
}

#[test]
fn a_reshape_whose_shape_reads_its_input_lets_the_q_after_it_propagate_back() {
    // Dims unknown, so `Shape` does not fold to a constant on its own.
    let mut b = Builder::new(17);
    b.input("x", F32, None);
    let mut m = Qdq { b };
    let v = m.node("Sigmoid", "act", &["x"], "v", vec![]);
    m.b.tensor(ints("zero", &[0]));
    m.b.tensor(ints("two", &[2]));
    m.b.tensor(ints("four", &[4]));
    m.b.tensor(raw("i0", I64, &[], 0i64.to_le_bytes().to_vec()));
    m.b.tensor(raw("i1", I64, &[], 1i64.to_le_bytes().to_vec()));
    let mut dims = Vec::new();
    for k in 0..2 {
        let s = m.node(
            "Shape",
            &format!("shape{k}"),
            &[&v],
            &format!("s{k}"),
            vec![],
        );
        let g = m.node(
            "Gather",
            &format!("gather{k}"),
            &[&s, &format!("i{k}")],
            &format!("g{k}"),
            vec![attr_i("axis", 0)],
        );
        dims.push(m.node(
            "Unsqueeze",
            &format!("unsqueeze{k}"),
            &[&g, "zero"],
            &format!("u{k}"),
            vec![],
        ));
    }
    let c = m.node(
        "Concat",
        "concat",
        &[&dims[0], &dims[1], "two", "four"],
        "shape",
        vec![attr_i("axis", 0)],
    );
    let r = m.node("Reshape", "reshape", &[&v, &c], "r", vec![]);
    let o = m.qdq(&r, "o", 0.1, U8, 128);
    m.sink(&o);
    let rep = m.lint(Platform::X86_64);
    assert_eq!(unit(&rep, "reshape").verdict, Verdict::Dropped);
}
