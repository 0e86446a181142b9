//! Saved work is reusable: statistics from `qrange calibrate` and `qrange merge` feed every
//! quantize mode (mixed precision and 16-bit or 4-bit overrides raise the opset, which
//! does not change the statistics), and an overrides file written by a mixed-precision
//! run replays it byte for byte, whatever it promotes.

mod common;

use common::*;
use qrange::data::{self, InputSpec};
use qrange::ir::DType;
use std::path::{Path, PathBuf};

/// The opset the written model imports for the default domain.
fn opset(p: &Path) -> i64 {
    load(p)
        .opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version)
        .unwrap()
}

/// Splits the calibration file of tiny_cnn in two shards (samples 0..3 and 3..), written
/// in `dir` with qrange's own writer.
fn shards(dir: &Path) -> [PathBuf; 2] {
    let specs = [InputSpec::new("x", DType::F32, None)];
    let ds = data::load(&fixture("tiny/tiny_cnn.npz"), &specs).unwrap();
    let all = ds.read_all().unwrap();
    assert_eq!(all.len(), 8);
    let (a, b) = all.split_at(3);
    let mut out = Vec::new();
    for (i, part) in [a, b].into_iter().enumerate() {
        let p = dir.join(format!("part{i}.npz"));
        qrange::data::write_npz(&p, &data::stack(part).unwrap()).unwrap();
        out.push(p);
    }
    [out[0].clone(), out[1].clone()]
}

/// `qrange calibrate` on two shards, then `qrange merge`: the merged statistics file.
fn merged_statistics(dir: &Path) -> PathBuf {
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let parts = shards(dir);
    let mut files = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let f = dir.join(format!("stats{i}.json"));
        let r = qrange(&["calibrate", &model, "--calib", &s(part), "-o", &s(&f)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        files.push(f);
    }
    let all = dir.join("all.json");
    let r = qrange(&["merge", &s(&files[0]), &s(&files[1]), "-o", &s(&all)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    all
}

/// `qrange quantize tiny_cnn` with `source` (`--calib DATA` or `--ranges FILE`), the
/// evaluation set, `--method auto` (what `adaptive` gives without samples) and `extra`,
/// written to `out`.
fn quantize_cnn(source: [&str; 2], out: &Path, extra: &[&str]) -> serde_json::Value {
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let eval = s(&fixture("tiny/tiny_cnn.eval.npz"));
    let o = s(out);
    let mut args = vec![
        model.as_str(),
        source[0],
        source[1],
        "--eval",
        &eval,
        "--method",
        "auto",
        "-o",
        &o,
    ];
    args.extend_from_slice(extra);
    quantize_json(&args)
}

#[test]
fn merged_shard_statistics_feed_every_quantize_mode_with_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = merged_statistics(tmp.path());
    let stats = s(&stats);
    let calib = s(&fixture("tiny/tiny_cnn.npz"));
    let a16 = tmp.path().join("a16.json");
    std::fs::write(
        &a16,
        r#"{"format": "qrange-overrides/1", "nodes": {"conv1": "a16"}}"#,
    )
    .unwrap();
    let a16 = s(&a16);
    let modes: [(&str, Vec<&str>); 4] = [
        ("plain", vec![]),
        ("sqnr", vec!["--target-sqnr", "25"]),
        ("budget", vec!["--size-budget", "0.0036"]),
        ("a16", vec!["--overrides", &a16]),
    ];
    for (label, extra) in modes {
        let once = tmp.path().join(format!("{label}.once.onnx"));
        let from_stats = tmp.path().join(format!("{label}.stats.onnx"));
        quantize_cnn(["--calib", &calib], &once, &extra);
        let j = quantize_cnn(["--ranges", &stats], &from_stats, &extra);
        assert_eq!(j["calibration_samples"], 8, "{label}");
        assert_eq!(
            std::fs::read(&once).unwrap(),
            std::fs::read(&from_stats).unwrap(),
            "{label}: the merged statistics give the one-shot command's bytes"
        );
        if label != "plain" {
            assert_eq!(opset(&from_stats), 21, "{label}");
        }
    }
}

#[test]
fn statistics_of_another_model_are_still_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("mlp.json");
    let r = qrange(&[
        "calibrate",
        &s(&fixture("tiny/tiny_mlp.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_mlp.npz")),
        "-o",
        &s(&stats),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = tmp.path().join("q.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--ranges",
        &s(&stats),
        "--target-sqnr",
        "25",
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("made for another model"), "{}", r.stderr);
    assert!(!out.exists());
}

/// Runs `qrange quantize MODEL --calib … --eval … EXTRA -o DIR/LABEL.onnx` on a tiny
/// fixture and returns the written model's path.
fn quantize_tiny(dir: &Path, fixture_name: &str, label: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{label}.onnx"));
    let model = s(&fixture(&format!("tiny/{fixture_name}.onnx")));
    let calib = s(&fixture(&format!("tiny/{fixture_name}.npz")));
    let eval = s(&fixture(&format!("tiny/{fixture_name}.eval.npz")));
    let o = s(&out);
    let mut args = vec![model.as_str(), "--calib", &calib, "--eval", &eval, "-o", &o];
    args.extend_from_slice(extra);
    quantize_json(&args);
    out
}

/// A mixed-precision run on `fixture_name` with `extra`, then its overrides file replayed:
/// both models' bytes, and the overrides file.
fn run_and_replay(fixture_name: &str, extra: &[&str]) -> (Vec<u8>, Vec<u8>, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let first = quantize_tiny(tmp.path(), fixture_name, "first", extra);
    let ov = tmp.path().join("first.overrides.json");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ov).unwrap()).unwrap();
    let again = quantize_tiny(tmp.path(), fixture_name, "again", &["--overrides", &s(&ov)]);
    assert_eq!(opset(&first), 21);
    (
        std::fs::read(&first).unwrap(),
        std::fs::read(&again).unwrap(),
        file,
    )
}

/// The precisions an overrides file gives its tensors.
fn promotions(file: &serde_json::Value) -> Vec<String> {
    file["tensors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_overrides_file_of_float_promotions_only_replays_byte_for_byte() {
    // On tiny_broken_layer the weights limit the SQNR: 16-bit activations do not reach
    // 14.5 dB, floating activations does, and the search keeps float promotions only.
    let (first, again, file) = run_and_replay("tiny_broken_layer", &["--target-sqnr", "14.5"]);
    let p = promotions(&file);
    assert!(!p.is_empty() && p.iter().all(|p| p == "float"), "{file}");
    assert!(
        first == again,
        "the replay differs from the run that wrote it"
    );
}

#[test]
fn an_overrides_file_of_16_bit_promotions_replays_byte_for_byte() {
    let (first, again, file) = run_and_replay("tiny_cnn", &["--target-sqnr", "25"]);
    assert!(promotions(&file).iter().any(|p| p == "a16"), "{file}");
    assert!(
        first == again,
        "the replay differs from the run that wrote it"
    );
}

#[test]
fn an_overrides_file_that_promotes_nothing_replays_byte_for_byte() {
    // The 8-bit model already meets 1 dB: the file lists nothing, the run was at opset 21.
    let (first, again, file) = run_and_replay("tiny_cnn", &["--target-sqnr", "1"]);
    assert!(promotions(&file).is_empty(), "{file}");
    assert!(
        first == again,
        "the replay differs from the run that wrote it"
    );
}

#[test]
fn an_overrides_file_of_4_bit_weights_replays_byte_for_byte() {
    let (first, again, file) = run_and_replay("tiny_cnn", &["--size-budget", "0.0024"]);
    assert!(
        file["weights"]
            .as_object()
            .is_some_and(|w| w.values().any(|v| v == "w4")),
        "{file}"
    );
    assert!(
        first == again,
        "the replay differs from the run that wrote it"
    );
}
