//! `pin_inputs`: pinned values become initializers, given shapes replace declared dims,
//! and every mismatch is an error naming the input.

mod ir_build;

use ir_build::*;
use qrange::ir::{DType, Model, Tensor};
use qrange::passes::{Changed, Pass, PassCx, PinInputs};

fn model() -> Model {
    let mut b = B::new("m");
    b.input("x", DType::F32, "N,?,8")
        .input("sr", DType::I64, "")
        .input("flags", DType::Bool, "2");
    b.op("Relu", &["x"], &["y"], vec![]);
    b.op("Not", &["flags"], &["nf"], vec![]);
    b.op("Identity", &["sr"], &["sr2"], vec![]);
    b.output("y").output("nf").output("sr2");
    b.model(17)
}

fn run(m: &mut Model, cx: &mut PassCx) -> Result<Changed, String> {
    let r = PinInputs.run(m, cx).map_err(|e| e.to_string());
    m.verify().unwrap();
    r
}

#[test]
fn pins_and_shapes_apply_and_a_second_run_changes_nothing() {
    let mut m = model();
    let mut cx = PassCx::default();
    // A float given for an int64 input converts when exact.
    cx.pinned
        .insert("sr".into(), Tensor::F64(ndarray::arr0(16000.0).into_dyn()));
    cx.input_shapes.insert("x".into(), vec![1, 5, 8]);
    assert_eq!(run(&mut m, &mut cx).unwrap(), Changed::Yes);
    let inputs: Vec<&str> = m
        .graph
        .inputs
        .iter()
        .map(|v| m.graph.value(*v).name.as_str())
        .collect();
    assert_eq!(inputs, ["x", "flags"]);
    assert_eq!(type_of(&m, "x"), "f32[1,5,8]");
    let sr = m.graph.value_by_name("sr").unwrap();
    assert_eq!(
        m.graph.const_of(sr).unwrap().to_tensor().unwrap(),
        i64_scalar(16000)
    );
    assert_eq!(type_of(&m, "sr"), "i64[]");
    assert_eq!(run(&mut m, &mut cx).unwrap(), Changed::No);
}

#[test]
fn mismatches_are_errors_naming_the_input() {
    let cases: Vec<(PassCx, &str)> = vec![
        (
            {
                let mut cx = PassCx::default();
                cx.pinned.insert("rate".into(), i64_scalar(1));
                cx
            },
            "no input of that name (inputs: x, sr, flags)",
        ),
        (
            {
                let mut cx = PassCx::default();
                cx.pinned
                    .insert("sr".into(), Tensor::F64(ndarray::arr0(16000.5).into_dyn()));
                cx
            },
            "'sr': its value does not convert exactly from f64 to the declared i64",
        ),
        (
            {
                let mut cx = PassCx::default();
                cx.pinned.insert("flags".into(), bool_scalar(true));
                cx
            },
            "'flags': shape [] does not fit the declared [2]",
        ),
        (
            {
                let mut cx = PassCx::default();
                cx.input_shapes.insert("x".into(), vec![1, 5]);
                cx
            },
            "'x': shape [1, 5] does not fit the declared [N,?,8]",
        ),
        (
            {
                let mut cx = PassCx::default();
                cx.input_shapes.insert("x".into(), vec![1, 5, 9]);
                cx
            },
            "'x': shape [1, 5, 9] does not fit the declared [N,?,8]",
        ),
        (
            {
                let mut cx = PassCx::default();
                cx.input_shapes.insert("y".into(), vec![1]);
                cx
            },
            "cannot set the shape of 'y': the model has no input of that name",
        ),
    ];
    for (mut cx, want) in cases {
        let mut m = model();
        let e = run(&mut m, &mut cx).unwrap_err();
        assert!(e.starts_with("pass pin_inputs: "), "{e}");
        assert!(e.contains(want), "{e}\n  wanted: {want}");
    }
}

#[test]
fn snapshot_pin() {
    let mut m = model();
    let mut cx = PassCx::default();
    cx.pinned.insert("sr".into(), i64_scalar(8000));
    cx.input_shapes.insert("x".into(), vec![1, 5, 8]);
    let text = run_and_diff(&PinInputs, &mut m, &mut cx);
    insta::assert_snapshot!("pin", text);
}
