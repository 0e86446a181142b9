//! Layer-wise calibration from the command line: `calibrate` and `quantize` with a
//! `--memory-budget` below the model's weights (or `--layerwise`) run the model block by
//! block and write the same bytes as the whole-model run; spilled activations leave no file.

mod common;

use common::{fixture, qrange, s};
use std::path::Path;
use std::process::Command;

/// Runs qrange with TMPDIR set to `tmp` (where spilled activations go); exit code and stderr.
fn run_in(tmp: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qrange"))
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

/// `calibrate` whole, and block by block (by the budget, spilling everything; and by
/// `--layerwise` under the default budget): the three statistics files are equal.
fn calibrate_three_ways(model: &str, data: &str) {
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (s(&fixture(model)), s(&fixture(data)));
    let out = |n: &str| s(&d.path().join(n));
    let base = ["calibrate", &model, "--calib", &data, "-o"];
    let whole = out("whole.json");
    let r = qrange(&[&base[..], &[&whole]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (name, extra) in [
        ("budget.json", &["--memory-budget", "0"][..]),
        ("forced.json", &["--layerwise"][..]),
    ] {
        let o = out(name);
        let (code, err) = run_in(tmp.path(), &[&base[..], &[&o], extra].concat());
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert_eq!(
            std::fs::read(&o).unwrap(),
            std::fs::read(&whole).unwrap(),
            "{model} {extra:?}: statistics differ from the whole-model run"
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn a_cnn_calibrated_layer_by_layer_writes_the_whole_runs_statistics() {
    calibrate_three_ways("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz");
}

#[test]
fn a_transformer_calibrated_layer_by_layer_writes_the_whole_runs_statistics() {
    calibrate_three_ways("minilm_l3/model.onnx", "minilm_l3/calib.npz");
}

#[test]
fn quantize_under_a_small_budget_writes_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let data = s(&fixture("tiny/tiny_cnn.npz"));
    let q = |out: &str, extra: &[&str]| {
        let out = s(&d.path().join(out));
        let args = [
            &["quantize", &model, "--calib", &data, "-o", &out][..],
            extra,
        ]
        .concat();
        let (code, err) = run_in(tmp.path(), &args);
        assert_eq!(code, 0, "{extra:?}: {err}");
        std::fs::read(out).unwrap()
    };
    // The default method compares candidate ranges on held-out samples: the kept samples'
    // outputs and the other samples' statistics come from the layer-wise run too.
    assert_eq!(
        q("a.onnx", &[]),
        q("b.onnx", &["--memory-budget", "0"]),
        "the model quantized layer by layer differs"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn layerwise_refuses_values_inside_subgraphs_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("s.json");
    let r = qrange(&[
        "calibrate",
        &s(&fixture("tiny/tiny_scan.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_scan.npz")),
        "--layerwise",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let first = r.stderr.lines().next().unwrap();
    assert!(first.starts_with("error: "), "{}", r.stderr);
    assert!(
        first.contains("layer-wise") && first.contains("subgraph"),
        "{first}"
    );
    assert!(!out.exists());
    // Without --layerwise, a budget below its weights runs it whole, as before.
    let r = qrange(&[
        "calibrate",
        &s(&fixture("tiny/tiny_scan.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_scan.npz")),
        "--memory-budget",
        "0",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
