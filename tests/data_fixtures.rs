//! Loads every committed fixture data file (written by numpy and the onnx package, not by
//! qrange) with the input specs of its model, checking sample counts, shapes and extras.

use qrange::data::{load, InputSpec};
use qrange::ir::tensor::DType;
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn f32_input(name: &str, shape: &[Option<usize>]) -> InputSpec {
    InputSpec::new(name, DType::F32, Some(shape.to_vec()))
}

/// Loads `rel`, checks `n` samples whose input `first` has `shape`, and the extras.
fn check(rel: &str, inputs: &[InputSpec], n: usize, shape: &[usize], meta: Option<&str>) {
    let ds = load(&fixture(rel), inputs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ds.len(), n, "{rel}");
    for s in &ds.read_all().unwrap() {
        assert_eq!(s.len(), inputs.len(), "{rel}");
        assert_eq!(s[&inputs[0].name].shape(), shape, "{rel}");
    }
    if let Some(label) = ds.extra.get("label") {
        assert_eq!(label.shape(), vec![n], "{rel}");
        assert_eq!(label.dtype(), DType::I64, "{rel}");
    }
    match meta {
        Some(key) => {
            assert_eq!(ds.skipped.len(), 1, "{rel}: {:?}", ds.skipped);
            assert_eq!(ds.skipped[0].0, key, "{rel}");
        }
        None => assert!(ds.skipped.is_empty(), "{rel}: {:?}", ds.skipped),
    }
}

#[test]
fn tiny_fixture_data_loads() {
    let chw = [Some(1), Some(3), Some(8), Some(8)];
    type Case = (&'static str, Vec<Option<usize>>, Vec<usize>);
    let cases: Vec<Case> = vec![
        ("tiny_cnn", chw.to_vec(), vec![1, 3, 8, 8]),
        ("tiny_bn", chw.to_vec(), vec![1, 3, 8, 8]),
        ("tiny_mlp", vec![None, Some(16)], vec![1, 16]),
        ("tiny_if", vec![Some(1), Some(4)], vec![1, 4]),
        ("tiny_nested_if", vec![Some(1), Some(4)], vec![1, 4]),
        ("tiny_shape_if", vec![None, Some(8)], vec![1, 8]),
        ("tiny_loop", vec![Some(1), Some(4)], vec![1, 4]),
        ("tiny_conv_loop", chw.to_vec(), vec![1, 3, 8, 8]),
        ("tiny_while", vec![Some(1), Some(8)], vec![1, 8]),
        ("tiny_scan", vec![Some(1), Some(5), Some(4)], vec![1, 5, 4]),
        ("tiny_external", vec![Some(1), Some(8)], vec![1, 8]),
        ("tiny_outlier", vec![Some(1), Some(16)], vec![1, 16]),
        ("tiny_all_attrs", vec![Some(1), Some(4)], vec![1, 4]),
    ];
    for (name, spec, shape) in cases {
        let inputs = [f32_input("x", &spec)];
        check(
            &format!("tiny/{name}.npz"),
            &inputs,
            8,
            &shape,
            Some("meta_note"),
        );
        let eval = format!("tiny/{name}.eval.npz");
        if fixture(&eval).exists() {
            check(&eval, &inputs, 16, &shape, Some("meta_note"));
        }
    }
}

#[test]
fn onnx_test_data_layout_matches_the_npz() {
    let inputs = [f32_input("x", &[None, Some(16)])];
    let pb = load(&fixture("tiny/tiny_mlp_testdata"), &inputs).unwrap();
    let npz = load(&fixture("tiny/tiny_mlp.npz"), &inputs).unwrap();
    assert_eq!(pb.len(), 2);
    // Set 0 is stored as raw_data, set 1 in float_data: both equal the npz samples.
    assert_eq!(pb.read_all().unwrap()[..], npz.read_all().unwrap()[..2]);
    let y = &pb.extra["output_0"];
    assert_eq!(y.shape(), vec![2, 1, 10]);
    let sums: Vec<f64> = y
        .to_f64_vec()
        .unwrap()
        .chunks(10)
        .map(|c| c.iter().sum())
        .collect();
    for s in sums {
        assert!((s - 1.0).abs() < 1e-5, "softmax rows sum to 1, got {s}");
    }
}

#[test]
fn real_model_data_loads() {
    let ppocr = [f32_input("x", &[None, Some(3), None, None])];
    check("ppocr_cls/calib.npz", &ppocr, 8, &[1, 3, 48, 192], None);
    check("ppocr_cls/eval.npz", &ppocr, 16, &[1, 3, 48, 192], None);
    check("ppocr_det/calib.npz", &ppocr, 2, &[1, 3, 640, 640], None);
    check("ppocr_det/eval.npz", &ppocr, 2, &[1, 3, 640, 640], None);

    let magika = [InputSpec::new(
        "bytes",
        DType::I32,
        Some(vec![None, Some(2048)]),
    )];
    check(
        "magika/calib.npz",
        &magika,
        8,
        &[1, 2048],
        Some("meta_path"),
    );
    check(
        "magika/eval.npz",
        &magika,
        16,
        &[1, 2048],
        Some("meta_path"),
    );

    // silero_vad_ifless lists its inputs in another order; data is keyed by name.
    let silero = [
        f32_input("input", &[None, None]),
        f32_input("state", &[Some(2), None, Some(128)]),
        InputSpec::new("sr", DType::I64, Some(vec![])),
    ];
    let ifless = [silero[0].clone(), silero[2].clone(), silero[1].clone()];
    for inputs in [&silero[..], &ifless[..]] {
        check("silero_vad/calib.npz", inputs, 16, &[1, 576], None);
        check("silero_vad/eval.npz", inputs, 32, &[1, 576], None);
    }
    let ds = load(&fixture("silero_vad/calib.npz"), &silero).unwrap();
    assert_eq!(ds.get(0).unwrap()["sr"].to_i64_vec().unwrap(), vec![16000]);
    assert_eq!(ds.get(0).unwrap()["state"].shape(), vec![2, 1, 128]);
}

#[test]
fn wrong_specs_fail_on_real_data() {
    // magika's bytes are i32; claiming f32 must fail, naming file and input.
    let e = load(
        &fixture("magika/calib.npz"),
        &[f32_input("bytes", &[None, Some(2048)])],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("calib.npz") && e.contains("'bytes'") && e.contains("i32"),
        "{e}"
    );
    // silero needs `sr`, which ppocr's data lacks.
    let e = load(
        &fixture("ppocr_cls/calib.npz"),
        &[
            f32_input("x", &[None, Some(3), None, None]),
            InputSpec::new("sr", DType::I64, Some(vec![])),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("'sr'") && e.contains("found: x, label"), "{e}");
}
