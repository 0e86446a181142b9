//! The quantized model takes the float model's inputs: a pinned input stays declared
//! (unused) unless `--drop-pinned-inputs` asks otherwise; the dims the calibration data
//! fixed stay as declared (symbolic), unless the quantized model is valid for those shapes
//! only, which the summary says, or `--shape` fixed them.

mod common;

use common::*;

fn inputs(p: &std::path::Path) -> Vec<(String, i32, usize)> {
    let m = load(p);
    let g = m.graph.unwrap();
    let inits: Vec<_> = g.initializer.iter().map(|t| t.name.clone()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(&i.name))
        .map(|i| {
            use qrange::onnx::proto::type_proto::Value;
            let Some(Value::TensorType(t)) = i.r#type.as_ref().and_then(|t| t.value.clone()) else {
                panic!("input {:?} is not a tensor", i.name)
            };
            let rank = t.shape.map_or(usize::MAX, |s| s.dim.len());
            (i.name.clone().unwrap(), t.elem_type.unwrap(), rank)
        })
        .collect()
}

#[test]
fn a_pinned_input_stays_declared_in_the_float_models_order() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture("silero_vad/model.onnx");
    let (calib, eval) = (
        fixture("silero_vad/calib.npz"),
        fixture("silero_vad/eval.npz"),
    );
    let out = d.path().join("q.onnx");
    let args = [
        s(&model),
        "--calib".into(),
        s(&calib),
        "--eval".into(),
        s(&eval),
        "--pin".into(),
        "sr=16000".into(),
        "-o".into(),
        s(&out),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let j = quantize_json(&argv);
    let float: Vec<_> = inputs(&model).into_iter().map(|(n, t, _)| (n, t)).collect();
    let written: Vec<_> = inputs(&out).into_iter().map(|(n, t, _)| (n, t)).collect();
    assert_eq!(
        written.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["input", "state", "sr"]
    );
    assert_eq!(written, float);
    let sr = inputs(&out).into_iter().find(|i| i.0 == "sr").unwrap();
    assert_eq!((sr.1, sr.2), (7, 0), "sr stays an int64 scalar");
    let notes = j["notes"].to_string();
    assert!(
        notes.contains("specialised for the pinned value of input 'sr'"),
        "{notes}"
    );
    // The written model runs in the engine fed like the float model (sr included).
    let r = qrange(&[
        "run",
        &s(&out),
        "--data",
        &s(&eval),
        "-o",
        &s(&d.path().join("o.npz")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let dropped = d.path().join("dropped.onnx");
    let mut args = args.to_vec();
    args[8] = s(&dropped);
    args.push("--drop-pinned-inputs".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    quantize_json(&argv);
    assert_eq!(
        inputs(&dropped)
            .into_iter()
            .map(|i| i.0)
            .collect::<Vec<_>>(),
        ["input", "state"]
    );
}

/// Dims of a declared value as text: a number, a symbol, or `?`.
fn dims_of(v: &qrange::onnx::proto::ValueInfoProto) -> Vec<String> {
    use qrange::onnx::proto::tensor_shape_proto::dimension::Value as D;
    use qrange::onnx::proto::type_proto::Value;
    let Some(Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.clone()) else {
        panic!("{:?} is not a tensor", v.name)
    };
    t.shape
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(D::DimValue(k)) => k.to_string(),
                    Some(D::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Inputs (initializers aside) and outputs of the model at `p`, with their dims.
fn interface(p: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let g = load(p).graph.unwrap();
    let inits: Vec<_> = g.initializer.iter().map(|t| t.name.clone()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(&i.name))
        .chain(&g.output)
        .map(|v| (v.name.clone().unwrap(), dims_of(v)))
        .collect()
}

fn notes(j: &serde_json::Value) -> Vec<String> {
    j["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_written_model_keeps_the_declared_symbolic_dims_of_a_transformer() {
    // minilm_l3 declares [batch_size, sequence_length]; the calibration data is [1,48].
    // Its attention reshapes and masks are computed from Shape of the inputs.
    let d = tempfile::tempdir().unwrap();
    let model = fixture("minilm_l3/model.onnx");
    let out = d.path().join("q.onnx");
    let j = quantize_minilm(&out, &[]);
    let written = interface(&out);
    assert_eq!(written, interface(&model), "{:?}", notes(&j));
    assert_eq!(
        written[0],
        (
            "input_ids".into(),
            vec!["batch_size".into(), "sequence_length".into()]
        )
    );
    assert!(
        !notes(&j).iter().any(|n| n.contains("first sample's shape")),
        "{:?}",
        notes(&j)
    );
    // The token type embeddings are a constant only for the calibration shape: the plan
    // leaves their sum float instead of storing them as a [1,48,384] weight.
    let shaped = j["float_reasons"]
        .as_object()
        .unwrap()
        .keys()
        .any(|r| r.contains("token_type_embeddings") && r.contains("input shapes only"));
    assert!(shaped, "{j}");
    // No value in the written model keeps the calibration length.
    let g = load(&out).graph.unwrap();
    assert!(
        g.value_info
            .iter()
            .all(|v| !dims_of(v).contains(&"48".to_string())),
        "a value of the written model keeps the calibration length"
    );
    // The written model runs in the engine on data of another length and batch size.
    runs_at_batch_2_length_20(&out, d.path());
}

/// `qrange run` of the transformer fixture's quantized model `out` on two sentences of 20
/// tokens (its calibration data has one of 48) succeeds.
fn runs_at_batch_2_length_20(out: &std::path::Path, dir: &std::path::Path) {
    let data = dir.join("other.npz");
    let ids: Vec<i64> = (0..2 * 20).map(|i| (7 * i) % 200).collect();
    write_npz_arrays(
        &data,
        vec![
            (
                "input_ids",
                qrange::ir::Tensor::I64(
                    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 20]), ids).unwrap(),
                ),
            ),
            (
                "attention_mask",
                qrange::ir::Tensor::I64(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, 2, 20]), 1)),
            ),
        ],
    );
    let r = qrange(&[
        "run",
        &s(out),
        "--data",
        &s(&data),
        "-o",
        &s(&dir.join("o.npz")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn the_dynamic_mode_keeps_the_declared_dims_too() {
    // Dynamic quantization does not depend on the data: given data to validate on, the
    // written model is still the one with the declared dims.
    let d = tempfile::tempdir().unwrap();
    let model = fixture("minilm_l3/model.onnx");
    let out = d.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&model),
        "--mode",
        "dynamic",
        "--calib",
        &s(&fixture("minilm_l3/eval.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(interface(&out), interface(&model), "{:?}", notes(&j));
    assert!(
        !notes(&j).iter().any(|n| n.contains("first sample's shape")),
        "{:?}",
        notes(&j)
    );
    runs_at_batch_2_length_20(&out, d.path());
}

#[test]
fn a_batch_dim_stays_symbolic() {
    // tiny_mlp declares x: [N,16]; its data is [1,16] per sample.
    let d = tempfile::tempdir().unwrap();
    let model = fixture("tiny/tiny_mlp.onnx");
    let out = d.path().join("q.onnx");
    quantize_json(&[
        &s(&model),
        "--calib",
        &s(&fixture("tiny/tiny_mlp.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(
        interface(&out),
        vec![
            ("x".to_string(), vec!["N".to_string(), "16".to_string()]),
            ("y".to_string(), vec!["N".to_string(), "10".to_string()]),
        ]
    );
}

#[test]
fn a_model_valid_for_the_calibration_shape_only_keeps_it_and_says_why() {
    // tiny_shape_if branches on Shape(x)[0] == 1: the If folds once the shape is fixed.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_shape_if.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_shape_if.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(
        interface(&out)[0],
        ("x".into(), vec!["1".into(), "8".into()])
    );
    let n = notes(&j);
    let line: Vec<_> = n
        .iter()
        .filter(|n| n.contains("input 'x' [1,8] keeps the first sample's shape"))
        .collect();
    assert_eq!(line.len(), 1, "{n:?}");
    assert!(line[0].contains("If node 'if_single'"), "{n:?}");
}

#[test]
fn a_shape_given_on_the_command_line_is_the_written_one_and_said() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("q.onnx");
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_mlp.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_mlp.npz")),
        "--shape",
        "x=1,16",
        "-o",
        &s(&out),
    ]);
    assert_eq!(
        interface(&out)[0],
        ("x".into(), vec!["1".into(), "16".into()])
    );
    assert!(
        notes(&j)
            .iter()
            .any(|n| n == "input 'x' has the shape [1,16] given by --shape in the written model"),
        "{:?}",
        notes(&j)
    );
}
