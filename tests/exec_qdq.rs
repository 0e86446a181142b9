//! Exactness of the quantization ops' execution against ONNX Runtime.
//!
//! Every case in `fixtures/qdq/` (made by `fixtures/gen/qdq_cases.py`) and `fixtures/lowbit/`
//! (made by `fixtures/gen/lowbit_cases.py`) holds a model, its inputs and ONNX Runtime's outputs;
//! the session must reproduce them bit for bit, or as a case's `meta.json` states. The other
//! tests cover session behaviour: notes, taps, errors naming the node, dynamic input shapes.

use prost::Message;
use qrange::exec::{ExecError, Session, SessionOptions};
use qrange::ir::tensor::{DType, Tensor};
use qrange::onnx::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qdq")
}

fn load_model(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelProto::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads a TensorProto (.pb) into a host tensor, through the decoder models use.
fn read_tensor(path: &Path) -> (String, Tensor) {
    qrange::data::read_tensor_pb(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Tensors `<prefix>_<i>.pb` of a test data set, in index order.
fn read_set(dir: &Path, prefix: &str) -> Vec<(String, Tensor)> {
    (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.pb")))
        .take_while(|p| p.exists())
        .map(|p| read_tensor(&p))
        .collect()
}

/// Bit-exact equality (floats compared by their bits, so -0.0 != 0.0 and NaN == same NaN).
fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => {
            x.shape() == y.shape()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (Tensor::F16(x), Tensor::F16(y)) => {
            x.shape() == y.shape()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        }
        _ => a == b,
    }
}

fn mismatches(a: &Tensor, b: &Tensor) -> String {
    match (a.to_f64_vec(), b.to_f64_vec()) {
        (Some(x), Some(y)) if x.len() == y.len() => {
            let bad: Vec<_> = x
                .iter()
                .zip(&y)
                .enumerate()
                .filter(|(_, (p, q))| p.to_bits() != q.to_bits())
                .collect();
            let first: Vec<String> = bad
                .iter()
                .take(5)
                .map(|(i, (p, q))| format!("[{i}] got {p} want {q}"))
                .collect();
            format!("{} of {} differ: {}", bad.len(), x.len(), first.join(", "))
        }
        _ => format!(
            "got {} {:?}, want {} {:?}",
            a.dtype(),
            a.shape(),
            b.dtype(),
            b.shape()
        ),
    }
}

/// How an output is compared with ONNX Runtime's (a case's `meta.json`, see
/// `fixtures/gen/lowbit_cases.py`; bits when not listed).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Compare {
    /// Equal bits.
    Bits,
    /// Equal bits, +0.0 and -0.0 equal.
    ZeroSign,
    /// `|got - want| <= atol`.
    Atol(f64),
}

fn compare_modes(case: &Path) -> BTreeMap<String, Compare> {
    let Ok(text) = std::fs::read_to_string(case.join("meta.json")) else {
        return BTreeMap::new();
    };
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    meta["compare"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, c)| {
            let mode = match c["mode"].as_str().unwrap() {
                "zero_sign" => Compare::ZeroSign,
                "atol" => Compare::Atol(c["atol"].as_f64().unwrap()),
                other => panic!("{}: unknown compare mode {other}", case.display()),
            };
            (name.clone(), mode)
        })
        .collect()
}

fn agrees(got: &Tensor, want: &Tensor, mode: Compare) -> bool {
    match mode {
        Compare::Bits => bit_equal(got, want),
        Compare::ZeroSign | Compare::Atol(_) => {
            let (Some(g), Some(w)) = (got.to_f64_vec(), want.to_f64_vec()) else {
                return false;
            };
            let tol = match mode {
                Compare::Atol(a) => a,
                _ => 0.0,
            };
            got.dtype() == want.dtype()
                && got.shape() == want.shape()
                && g.iter()
                    .zip(&w)
                    .all(|(a, b)| (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol)
        }
    }
}

/// `<domain> <op>` of every quantization op of the model's main graph.
fn quantization_ops(model: &ModelProto) -> std::collections::BTreeSet<String> {
    model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| {
            matches!(
                n.op_type(),
                "QuantizeLinear"
                    | "DequantizeLinear"
                    | "DynamicQuantizeLinear"
                    | "MatMulInteger"
                    | "ConvInteger"
                    | "MatMulIntegerToFloat"
                    | "DynamicQuantizeMatMul"
                    | "MatMulNBits"
                    | "GatherBlockQuantized"
            )
        })
        .map(|n| {
            let domain = match n.domain() {
                "" => "ai.onnx",
                d => d,
            };
            format!("{domain} {}", n.op_type())
        })
        .collect()
}

/// Runs every case under `fixtures/<dir>` and compares its outputs with ONNX Runtime's; returns
/// the failures and the number of outputs compared.
fn check_cases(dir: &str, required: &[&str]) -> (Vec<String>, usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    let names: Vec<String> = cases
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in required {
        assert!(
            names.iter().any(|n| n == required),
            "fixture {dir}/{required} is missing"
        );
    }
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let model = load_model(&case.join("model.onnx"));
        let data = case.join("test_data_set_0");
        let inputs: BTreeMap<String, Tensor> = read_set(&data, "input").into_iter().collect();
        let expected = read_set(&data, "output");
        assert!(!expected.is_empty(), "{name}: no expected outputs");
        let modes = compare_modes(case);
        let session = match Session::new(&model, Some(case), &inputs, &SessionOptions::default()) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let notes = session.notes();
        for op in quantization_ops(&model) {
            assert!(
                notes.iter().any(|n| n.starts_with(&format!("{op} x"))),
                "{name}: no note says how {op} runs: {notes:?}"
            );
        }
        let got = match session.run(&inputs) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for (out, want) in &expected {
            compared += 1;
            let mode = modes.get(out).copied().unwrap_or(Compare::Bits);
            match got.get(out) {
                None => failures.push(format!("{name}: output `{out}` missing")),
                Some(g) if !agrees(g, want, mode) => failures.push(format!(
                    "{name}: `{out}` ({mode:?}): {}",
                    mismatches(g, want)
                )),
                Some(_) => {}
            }
        }
    }
    (failures, compared)
}

#[test]
fn every_fixture_matches_onnx_runtime_bit_for_bit() {
    let (failures, compared) = check_cases(
        "qdq",
        &[
            "q_ties_s0p02",
            "q_ties_s0p1",
            "q_ties_s0p007",
            "q_saturation",
            "qdq_per_axis_activation",
            "conv_per_axis_int8_weights",
            "dq_int32_bias",
            "dq_softmax_q",
            "qdq_int16_uint16_opset21",
            "qdq_int4_uint4_opset21",
            "qdq_blocked_opset21",
            "qdq_blocked_every_type",
            "qdq_blocked_4bit_runtime",
            "ms_qdq_opset13",
            "qdq_float16_opset21",
            "qdq_float16_opset23",
            "corpus_quantizelinear",
            "corpus_dequantizelinear_int4",
            "corpus_quantizelinear_int4",
            "corpus_quantizelinear_blocked_asymmetric",
        ],
    );
    assert!(compared >= 50, "only {compared} outputs compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// MatMulNBits, GatherBlockQuantized, DynamicQuantizeLinear, MatMulInteger, ConvInteger,
/// MatMulIntegerToFloat, DynamicQuantizeMatMul, DynamicQuantizeLSTM and ONNX Runtime's dynamic
/// quantization graphs (its LSTMs too) against ONNX Runtime: bit for bit, except MatMulNBits products (float sums in another order,
/// within the case's stated tolerance; its dequantized weights, read back through an identity
/// matrix, bit for bit up to the sign of zero).
#[test]
fn every_lowbit_fixture_matches_onnx_runtime() {
    let (failures, compared) = check_cases(
        "lowbit",
        &[
            "matmulnbits_bits2",
            "matmulnbits_bits4",
            "matmulnbits_bits8",
            "matmulnbits_exact_sums",
            "matmulnbits_float16",
            "matmulnbits_ort_layout",
            "gather_block_quantized_4bit",
            "gather_block_quantized_uint8",
            "dynamic_quantize_linear",
            "matmul_integer",
            "conv_integer",
            "matmul_integer_to_float",
            "dynamic_quantize_matmul",
            "quantize_dynamic_per_tensor",
            "quantize_dynamic_per_tensor_fused",
            "quantize_dynamic_per_channel",
            "quantize_dynamic_per_channel_fused",
            "dynamic_quantize_lstm",
            "quantize_dynamic_lstm_per_tensor",
            "quantize_dynamic_lstm_per_channel",
        ],
    );
    assert!(compared >= 100, "only {compared} outputs compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn com_microsoft_and_4bit_notes() {
    let case = fixtures().join("ms_qdq_opset13");
    let model = load_model(&case.join("model.onnx"));
    let inputs: BTreeMap<_, _> = read_set(&case.join("test_data_set_0"), "input")
        .into_iter()
        .collect();
    let s = Session::new(&model, None, &inputs, &SessionOptions::default()).unwrap();
    let notes = s.notes();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("com.microsoft QuantizeLinear x2")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("com.microsoft DequantizeLinear x2")),
        "{notes:?}"
    );

    let case = fixtures().join("qdq_int4_uint4_opset21");
    let model = load_model(&case.join("model.onnx"));
    let inputs: BTreeMap<_, _> = read_set(&case.join("test_data_set_0"), "input")
        .into_iter()
        .collect();
    let s = Session::new(
        &model,
        None,
        &inputs,
        &SessionOptions {
            taps: vec!["x_i4".into(), "x_u4".into(), "w_i4".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        s.notes().iter().any(|n| n.contains("int4/uint4")),
        "{:?}",
        s.notes()
    );
    let out = s.run(&inputs).unwrap();
    // 4-bit values come back with their ONNX type, inside the 4-bit range
    let Tensor::I4(q) = &out["x_i4"] else {
        panic!("x_i4 is {}", out["x_i4"].dtype())
    };
    assert!(q.iter().all(|&v| (-8..=7).contains(&v)));
    // the inputs lie around -9.5..-3.5 quantization steps: the low end saturates
    assert!(q.iter().any(|&v| v == -8), "saturation expected: {q:?}");
    let Tensor::U4(q) = &out["x_u4"] else {
        panic!("x_u4 is {}", out["x_u4"].dtype())
    };
    assert!(
        q.iter().all(|&v| v <= 15) && q.iter().any(|&v| v == 0),
        "{q:?}"
    );
    assert_eq!(out["w_i4"].dtype(), DType::I4);
}

#[test]
fn taps_return_intermediate_values_by_onnx_name() {
    let case = fixtures().join("conv_per_axis_int8_weights");
    let model = load_model(&case.join("model.onnx"));
    let inputs: BTreeMap<_, _> = read_set(&case.join("test_data_set_0"), "input")
        .into_iter()
        .collect();
    let opts = SessionOptions {
        taps: vec!["xq".into(), "conv".into(), "bdq".into(), "y".into()],
        ..Default::default()
    };
    let s = Session::new(&model, Some(&case), &inputs, &opts).unwrap();
    assert_eq!(s.output_names(), ["yq", "y", "xq", "conv", "bdq"]);
    let out = s.run(&inputs).unwrap();
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        ["bdq", "conv", "xq", "y", "yq"]
    );
    // the tapped activation is the exact quantization of the input
    let xq = qrange::quant::quantize_linear(
        &inputs["x"],
        &Tensor::F32(ndarray::arr0(2f32.powi(-5)).into_dyn()),
        Some(&Tensor::U8(ndarray::arr0(128u8).into_dyn())),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(out["xq"], xq);
    assert_eq!(out["conv"].shape(), vec![1, 4, 6, 6]);
    assert_eq!(out["bdq"].dtype(), DType::F32);

    let err = Session::new(
        &model,
        None,
        &inputs,
        &SessionOptions {
            taps: vec!["no_such_value".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExecError::UnknownTap(ref t) if t == "no_such_value"),
        "{err}"
    );
}

fn value(name: &str, elem: DType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem.onnx_code()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn small_model(nodes: Vec<NodeProto>) -> ModelProto {
    let scale = TensorProto {
        name: Some("s".into()),
        data_type: Some(DType::F32.onnx_code()),
        float_data: vec![0.1],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: vec![scale],
            input: vec![value("x", DType::F32, &[None, Some(3)])],
            output: vec![value("y", DType::F32, &[None, Some(3)])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sample(rows: usize) -> BTreeMap<String, Tensor> {
    let x = ndarray::Array::from_shape_fn(vec![rows, 3], |i| (i[0] * 3 + i[1]) as f32 * 0.05 - 0.2);
    BTreeMap::from([("x".to_string(), Tensor::F32(x.into_dyn()))])
}

#[test]
fn unknown_operator_is_a_one_line_error_naming_the_node() {
    let model = small_model(vec![
        node("Relu", "relu_1", &["x"], &["r"]),
        node("FancyOp", "fancy_7", &["r"], &["y"]),
    ]);
    let err = Session::new(&model, None, &sample(2), &SessionOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ExecError::UnsupportedOp { .. }), "{msg}");
    assert!(msg.contains("fancy_7") && msg.contains("FancyOp"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn dynamic_dimensions_take_the_sample_shape_and_new_shapes_get_a_plan() {
    let model = small_model(vec![
        node("QuantizeLinear", "q", &["x", "s"], &["xq"]),
        node("DequantizeLinear", "dq", &["xq", "s"], &["y"]),
    ]);
    let s = Session::new(&model, None, &sample(2), &SessionOptions::default()).unwrap();
    assert_eq!(s.input_names(), ["x"]);
    for rows in [2, 5] {
        let input = sample(rows);
        let out = s.run(&input).unwrap();
        let want = qrange::quant::fake_quantize(
            &input["x"],
            &Tensor::F32(ndarray::arr0(0.1f32).into_dyn()),
            None,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(out["y"], want, "rows {rows}");
    }
    let mut wrong = sample(2);
    wrong.insert("extra".into(), Tensor::F32(ndarray::arr0(1f32).into_dyn()));
    assert!(matches!(s.run(&wrong), Err(ExecError::UnknownInput(ref n)) if n == "extra"));
    assert!(matches!(
        s.run(&BTreeMap::new()),
        Err(ExecError::MissingInput(ref n)) if n == "x"
    ));
}

#[test]
fn session_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Session>();
}

fn external(
    name: &str,
    dtype: DType,
    dims: Vec<i64>,
    location: &str,
    offset: usize,
    len: usize,
) -> TensorProto {
    let entry = |k: &str, v: String| qrange::onnx::proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype.onnx_code()),
        dims,
        data_location: Some(qrange::onnx::proto::tensor_proto::DataLocation::External as i32),
        external_data: vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", len.to_string()),
        ],
        ..Default::default()
    }
}

#[test]
fn external_data_is_read_from_the_base_directory() {
    let dir = tempfile::tempdir().unwrap();
    // 16 bytes of padding, then w = [0.5, -1.0, 2.0] (f32), then packed int4 [1, -2, 7]
    let mut bytes = vec![0u8; 16];
    for v in [0.5f32, -1.0, 2.0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&[0xe1, 0x07]);
    std::fs::write(dir.path().join("weights.bin"), &bytes).unwrap();
    let make = |location: &str| {
        let mut m = small_model(vec![
            node("Add", "add", &["x", "w"], &["y"]),
            node("DequantizeLinear", "dq", &["w4", "s"], &["w4_dq"]),
        ]);
        let g = m.graph.as_mut().unwrap();
        g.initializer
            .push(external("w", DType::F32, vec![3], location, 16, 12));
        g.initializer
            .push(external("w4", DType::I4, vec![3], location, 28, 2));
        g.output.push(value("w4_dq", DType::F32, &[Some(3)]));
        m
    };
    let s = Session::new(
        &make("weights.bin"),
        Some(dir.path()),
        &sample(2),
        &SessionOptions::default(),
    )
    .unwrap();
    let out = s.run(&sample(2)).unwrap();
    let x = sample(2)["x"].to_f64_vec().unwrap();
    let y = out["y"].to_f64_vec().unwrap();
    let w = [0.5, -1.0, 2.0];
    for (i, (a, b)) in x.iter().zip(&y).enumerate() {
        assert_eq!((*a as f32 + w[i % 3] as f32) as f64, *b);
    }
    assert_eq!(
        out["w4_dq"].to_f64_vec().unwrap(),
        vec![
            (0.1f32 * 1.0) as f64,
            (0.1f32 * -2.0) as f64,
            (0.1f32 * 7.0) as f64
        ]
    );

    let err = Session::new(
        &make("../weights.bin"),
        Some(dir.path()),
        &sample(2),
        &SessionOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("w4") && err.to_string().contains("relative"),
        "{err}"
    );
    let err = Session::new(
        &make("weights.bin"),
        None,
        &sample(2),
        &SessionOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no base directory"), "{err}");
}

/// A case of `fixtures/lowbit`: its model, inputs and ONNX Runtime's outputs.
fn lowbit_case(name: &str) -> (ModelProto, BTreeMap<String, Tensor>, Vec<(String, Tensor)>) {
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lowbit")
        .join(name);
    let data = case.join("test_data_set_0");
    (
        load_model(&case.join("model.onnx")),
        read_set(&data, "input").into_iter().collect(),
        read_set(&data, "output"),
    )
}

fn attr_int(name: &str, i: i64) -> qrange::onnx::proto::AttributeProto {
    qrange::onnx::proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(i),
        ..Default::default()
    }
}

/// Sets integer attribute `attr` of the node named `node`.
fn set_attr(model: &mut ModelProto, node: &str, attr: &str, value: i64) {
    let n = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.name() == node)
        .unwrap_or_else(|| panic!("no node {node}"));
    n.attribute.retain(|a| a.name() != attr);
    n.attribute.push(attr_int(attr, value));
}

#[test]
fn matmulnbits_accuracy_level_4_runs_the_float_path_and_says_so() {
    let (mut model, inputs, _) = lowbit_case("matmulnbits_bits4");
    let plain = Session::new(&model, None, &inputs, &SessionOptions::default()).unwrap();
    assert!(
        !plain.notes().iter().any(|n| n.contains("accuracy_level")),
        "{:?}",
        plain.notes()
    );
    let want = plain.run(&inputs).unwrap();
    set_attr(&mut model, "n2_y", "accuracy_level", 4);
    set_attr(&mut model, "n4_y", "accuracy_level", 4);
    let s = Session::new(&model, None, &inputs, &SessionOptions::default()).unwrap();
    let notes = s.notes();
    assert!(
        notes.iter().any(|n| n.starts_with(
            "MatMulNBits x2 with accuracy_level 4 (first: 'n2_y'): ONNX Runtime's CPU kernel \
             quantizes A to int8"
        ) && n.contains("qrange computes the float32 path")),
        "{notes:?}"
    );
    assert_eq!(s.run(&inputs).unwrap(), want);
    // 2-bit weights: ONNX Runtime keeps the float path at level 4, nothing to say
    let (mut model, inputs, _) = lowbit_case("matmulnbits_bits2");
    set_attr(&mut model, "n2_y", "accuracy_level", 4);
    let s = Session::new(&model, None, &inputs, &SessionOptions::default()).unwrap();
    assert!(
        !s.notes().iter().any(|n| n.contains("accuracy_level")),
        "{:?}",
        s.notes()
    );
}

#[test]
fn malformed_lowbit_nodes_are_one_line_errors_naming_the_node() {
    let (base, inputs, _) = lowbit_case("matmulnbits_bits4");
    let load = |m: &ModelProto| {
        Session::new(m, None, &inputs, &SessionOptions::default())
            .unwrap_err()
            .to_string()
    };
    for (attr, value, needle) in [
        ("bits", 3, "bits must be 2, 4 or 8, got 3"),
        ("block_size", 24, "block_size must be a power of 2"),
        ("K", 80, "B has shape [8, 4, 8], expected [8, 5, 8]"),
        ("weight_prepacked", 1, "prepacked"),
    ] {
        let mut m = base.clone();
        set_attr(&mut m, "n1_y", attr, value);
        let msg = load(&m);
        assert!(
            msg.contains("MatMulNBits node 'n1_y'") && msg.contains(needle) && !msg.contains('\n'),
            "{attr}={value}: {msg}"
        );
    }
    let mut m = base.clone();
    let node = m.graph.as_mut().unwrap().node.iter_mut();
    let n1 = node.into_iter().find(|n| n.name() == "n1_y").unwrap();
    n1.input.extend(["".to_string(), "n1.scales".to_string()]);
    let msg = load(&m);
    assert!(msg.contains("'n1_y'") && msg.contains("g_idx"), "{msg}");
    // a com.microsoft op in the ONNX domain is no operator at all
    let mut m = base.clone();
    let n1 = m.graph.as_mut().unwrap().node.iter_mut();
    n1.into_iter().find(|n| n.name() == "n1_y").unwrap().domain = Some(String::new());
    let err = Session::new(&m, None, &inputs, &SessionOptions::default()).unwrap_err();
    assert!(
        matches!(err, ExecError::UnsupportedOp { ref node, .. } if node == "n1_y"),
        "{err}"
    );

    let (mut m, inputs, _) = lowbit_case("gather_block_quantized_4bit");
    set_attr(&mut m, "i4_y", "block_size", 8);
    let msg = Session::new(&m, None, &inputs, &SessionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("GatherBlockQuantized node 'i4_y'") && msg.contains("block_size"),
        "{msg}"
    );
}

#[test]
fn integer_product_notes_say_where_onnx_runtime_differs() {
    let (model, inputs, _) = lowbit_case("quantize_dynamic_per_tensor_fused");
    let s = Session::new(&model, None, &inputs, &SessionOptions::default()).unwrap();
    let notes = s.notes();
    for want in [
        "com.microsoft DynamicQuantizeMatMul x2 run by qrange's exact kernels",
        "ai.onnx DynamicQuantizeLinear x1 run by qrange's exact kernels",
        "ai.onnx ConvInteger x1 run by the engine's integer convolution",
        "uint8 x int8 integer products are exact int32 sums",
    ] {
        assert!(
            notes.iter().any(|n| n.starts_with(want)),
            "{want}: {notes:?}"
        );
    }
}

/// ConvInteger (the engine's own) against an int64 reference, for what ONNX Runtime cannot
/// run: per-output-channel weight zero points, full-range int8 weights, groups.
#[test]
fn conv_integer_matches_an_int64_reference() {
    let (n, c, h, w) = (1usize, 4usize, 6usize, 7usize);
    let (m, group, kh, kw) = (6usize, 2usize, 3usize, 2usize);
    let (pads, strides, dilations) = ([1usize, 0, 2, 1], [2usize, 1], [1usize, 2]);
    let cg = c / group;
    let x: Vec<u8> = (0..n * c * h * w).map(|i| (i * 37 % 256) as u8).collect();
    let wv: Vec<i8> = (0..m * cg * kh * kw)
        .map(|i| ((i * 53 + 7) % 256) as u8 as i8)
        .collect();
    let wz: Vec<i8> = vec![-128, 127, 0, 5, -7, 100];
    let xz = 201u8;
    let tensor = |name: &str, dtype: DType, dims: &[usize], raw: Vec<u8>| TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype.onnx_code()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data: Some(raw),
        ..Default::default()
    };
    let ints = |name: &str, v: &[usize]| qrange::onnx::proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.iter().map(|&d| d as i64).collect(),
        ..Default::default()
    };
    let mut conv = node("ConvInteger", "conv", &["x", "w", "xz", "wz"], &["y"]);
    conv.attribute = vec![
        ints("pads", &pads),
        ints("strides", &strides),
        ints("dilations", &dilations),
        attr_int("group", group as i64),
    ];
    let oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) / strides[0] + 1;
    let ow = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) / strides[1] + 1;
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![conv],
            initializer: vec![
                tensor(
                    "w",
                    DType::I8,
                    &[m, cg, kh, kw],
                    wv.iter().map(|&v| v as u8).collect(),
                ),
                tensor("wz", DType::I8, &[m], wz.iter().map(|&v| v as u8).collect()),
            ],
            input: vec![
                value("x", DType::U8, &[Some(1), Some(4), Some(6), Some(7)]),
                value("xz", DType::U8, &[]),
            ],
            output: vec![value(
                "y",
                DType::I32,
                &[Some(1), Some(6), Some(oh as i64), Some(ow as i64)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    let sample = BTreeMap::from([
        (
            "x".to_string(),
            Tensor::U8(ndarray::Array::from_shape_vec(vec![n, c, h, w], x.clone()).unwrap()),
        ),
        ("xz".to_string(), Tensor::U8(ndarray::arr0(xz).into_dyn())),
    ]);
    let s = Session::new(&model, None, &sample, &SessionOptions::default()).unwrap();
    let y = s.run(&sample).unwrap()["y"].to_i64_vec().unwrap();
    let mut want = Vec::new();
    for oc in 0..m {
        let g = oc / (m / group);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i64;
                for ic in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * strides[0] + ky * dilations[0]) as i64 - pads[0] as i64;
                            let ix = (ox * strides[1] + kx * dilations[1]) as i64 - pads[1] as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue; // padding holds the zero point: (xz - xz) = 0
                            }
                            let xv = x[((g * cg + ic) * h + iy as usize) * w + ix as usize];
                            let wvv = wv[((oc * cg + ic) * kh + ky) * kw + kx];
                            acc += (xv as i64 - xz as i64) * (wvv as i64 - wz[oc] as i64);
                        }
                    }
                }
                want.push(acc);
            }
        }
    }
    assert_eq!(y, want);
}
