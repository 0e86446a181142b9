//! `quantize --mode weight-only`: 4/8-bit weights, activations float. RTN and clipping learn
//! nothing from data (every sample given validates; none is needed), GPTQ learns from the
//! calibration samples and validates on samples it did not see.

mod common;

use common::{fixture, qrange, quantize_json, s};

#[test]
fn weight_only_rounding_runs_without_data_and_says_it_did_not_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_mlp.onnx")),
        "--mode",
        "weight-only",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("(weight-only)"), "{}", r.stdout);
    assert!(r.stdout.contains("not validated: no data"), "{}", r.stdout);
    assert!(out.exists());
}

#[test]
fn weight_only_rounding_validates_on_every_calibration_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_mlp.onnx")),
        "--mode",
        "weight-only",
        "--calib",
        &s(&fixture("tiny/tiny_mlp.npz")),
        "-o",
        &s(&tmp.path().join("q.onnx")),
    ]);
    // Nothing is learnt from the 8 samples: none is held back from the validation.
    assert_eq!(j["eval_samples"], 8, "{j}");
    let v = j["validation"].as_object().unwrap();
    assert!(!v.is_empty(), "{j}");
}

#[test]
fn gptq_validates_on_samples_it_did_not_learn_from() {
    let tmp = tempfile::tempdir().unwrap();
    let j = quantize_json(&[
        &s(&fixture("tiny/tiny_mlp.onnx")),
        "--mode",
        "weight-only",
        "--weight-algo",
        "gptq",
        "--calib",
        &s(&fixture("tiny/tiny_mlp.npz")),
        "-o",
        &s(&tmp.path().join("q.onnx")),
    ]);
    // The last fifth (at least one) of the 8 samples is held back for the validation.
    assert_eq!(j["calibration_samples"], 7, "{j}");
    assert_eq!(j["eval_samples"], 1, "{j}");
}
