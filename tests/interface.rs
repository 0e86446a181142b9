//! The quantized model takes the float model's inputs: a pinned input stays declared
//! (unused) unless `--drop-pinned-inputs` asks otherwise.

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
