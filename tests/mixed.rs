//! Mixed precision end to end: `quantize --target-sqnr/--max-drop`, overrides files,
//! the sensitivity cache, and their errors.

mod common;

use common::*;
use prost::Message;
use qrange::onnx::proto;
use std::path::Path;

fn worst_sqnr(j: &serde_json::Value) -> f64 {
    j["validation"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| m["sqnr_db"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min)
}

/// Element types of the QuantizeLinear outputs, from their zero-point initializers.
fn quantize_types(p: &Path) -> Vec<i32> {
    let m = proto::ModelProto::decode(std::fs::read(p).unwrap().as_slice()).unwrap();
    let g = m.graph.unwrap();
    g.node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("QuantizeLinear"))
        .filter_map(|n| {
            let zp = n.input.get(2)?;
            g.initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(zp.as_str()))
                .and_then(|t| t.data_type)
        })
        .collect()
}

const UINT8: i32 = 2;
const UINT16: i32 = 4;

fn tiny(out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib".into(),
        s(&fixture("tiny/tiny_cnn.npz")),
        "--eval".into(),
        s(&fixture("tiny/tiny_cnn.eval.npz")),
        "-o".into(),
        s(out),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    quantize_json(&refs)
}

#[test]
fn ppocr_cls_reaches_30_db_with_most_weights_in_8_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cls.onnx");
    let j = quantize_json(&[
        &s(&fixture("ppocr_cls/model.onnx")),
        "--calib",
        &s(&fixture("ppocr_cls/calib.npz")),
        "--eval",
        &s(&fixture("ppocr_cls/eval.npz")),
        "--labels",
        "label",
        "--target-sqnr",
        "30",
        "--sensitivity-samples",
        "4",
        "-o",
        &s(&out),
    ]);
    let db = worst_sqnr(&j);
    assert!(db >= 30.0, "written model: {db} dB");
    let share = j["weight_8bit_share"].as_f64().unwrap();
    // measured 0.990; gate 0.98
    assert!(share >= 0.98, "only {share} of weights in 8 bits");
    let pr = &j["precision"];
    assert_eq!(pr["validated"].as_f64().unwrap(), db);
    let promoted = pr["promoted"].as_array().unwrap();
    assert!(!promoted.is_empty());
    for p in promoted {
        assert!(["a16", "float"].contains(&p["precision"].as_str().unwrap()));
        assert!(p["reason"].as_str().unwrap().contains("dB"));
    }
    // Mixed types in the written model; the baseline alone misses the goal.
    let types = quantize_types(&out);
    assert!(
        types.contains(&UINT8) && types.contains(&UINT16),
        "{types:?}"
    );
    assert!(pr["baseline"].as_f64().unwrap() < 30.0);

    // The overrides file replays the same model, byte for byte.
    let ov = tmp.path().join("cls.overrides.json");
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ov).unwrap()).unwrap();
    assert_eq!(o["format"], "qrange-overrides/1");
    assert_eq!(
        o["tensors"].as_object().unwrap().len(),
        promoted.len(),
        "one entry per promoted tensor"
    );
    let again = tmp.path().join("again.onnx");
    let j2 = quantize_json(&[
        &s(&fixture("ppocr_cls/model.onnx")),
        "--calib",
        &s(&fixture("ppocr_cls/calib.npz")),
        "--eval",
        &s(&fixture("ppocr_cls/eval.npz")),
        "--overrides",
        &s(&ov),
        "-o",
        &s(&again),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    assert_eq!(worst_sqnr(&j2), db);
}

#[test]
fn search_meets_a_goal_and_reuses_its_sensitivity_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.onnx");
    let base = tiny(&tmp.path().join("base.onnx"), &[]);
    let baseline = worst_sqnr(&base);
    let goal = format!("{:.1}", baseline + 5.0);
    let j = tiny(&out, &["--target-sqnr", &goal]);
    assert!(worst_sqnr(&j) >= baseline + 5.0);
    assert_eq!(j["precision"]["sensitivity_cached"], false);
    assert!(tmp.path().join("t.sensitivity.json").is_file());
    let first = std::fs::read(&out).unwrap();
    let j = tiny(&out, &["--target-sqnr", &goal]);
    assert_eq!(j["precision"]["sensitivity_cached"], true);
    assert_eq!(
        first,
        std::fs::read(&out).unwrap(),
        "same inputs, same bytes"
    );
    // Without a goal nothing changes: plain 8-bit.
    assert!(base.get("precision").is_none());
    assert!(!quantize_types(&tmp.path().join("base.onnx")).contains(&UINT16));
}

#[test]
fn max_drop_on_top1_agreement() {
    let tmp = tempfile::tempdir().unwrap();
    let j = tiny(&tmp.path().join("t.onnx"), &["--max-drop", "0"]);
    for m in j["validation"].as_object().unwrap().values() {
        if let Some(a) = m["top1_agreement"].as_f64() {
            assert_eq!(a, 1.0);
        }
    }
}

#[test]
fn hand_written_node_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let ov = tmp.path().join("o.json");
    std::fs::write(
        &ov,
        r#"{"format": "qrange-overrides/1", "nodes": {"conv1": "a16", "fc": "float"}}"#,
    )
    .unwrap();
    let out = tmp.path().join("t.onnx");
    let j = tiny(&out, &["--overrides", &s(&ov)]);
    let types = quantize_types(&out);
    assert!(types.contains(&UINT16), "{types:?}");
    let reasons = j["float_reasons"].as_object().unwrap();
    assert!(
        reasons
            .iter()
            .any(|(_, ops)| ops.as_array().unwrap().iter().any(|o| o == "fc")),
        "{reasons:?}"
    );
}

#[test]
fn unreachable_goal_says_the_best_reachable_value() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "--target-sqnr",
        "200",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("best reachable is"), "{line}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn bad_overrides_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.onnx");
    for (text, needle) in [
        (
            r#"{"format": "qrange-overrides/1", "nodes": {"nope": "a16"}}"#,
            "'nope'",
        ),
        (
            r#"{"format": "qrange-overrides/1", "tensors": {"ghost": "float"}}"#,
            "'ghost'",
        ),
        (
            r#"{"format": "qrange-overrides/1", "nodes": {"conv1": "a12"}}"#,
            "not an overrides file",
        ),
        (r#"{"format": "other/1"}"#, "format 'other/1'"),
    ] {
        let ov = tmp.path().join("o.json");
        std::fs::write(&ov, text).unwrap();
        let r = qrange(&[
            "quantize",
            &s(&fixture("tiny/tiny_cnn.onnx")),
            "--calib",
            &s(&fixture("tiny/tiny_cnn.npz")),
            "--overrides",
            &s(&ov),
            "-o",
            &s(&out),
        ]);
        assert_eq!(r.code, 2, "{text}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(needle), "{text}: {}", r.stderr);
        assert!(r.stderr.contains("o.json"), "{}", r.stderr);
        assert!(!out.exists());
    }
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--target-sqnr",
        "30",
        "--no-validate",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--no-validate"));
}

#[test]
fn size_budget_puts_the_weights_that_cost_least_error_per_byte_on_4_bits() {
    let tmp = tempfile::tempdir().unwrap();
    // The all-8-bit model as a budget writes it (compact): a budget above it keeps 8 bits.
    let base = tiny(&tmp.path().join("base.onnx"), &["--size-budget", "1"]);
    assert_eq!(base["weight_4bit_share"].as_f64().unwrap(), 0.0);
    let size8 = base["size_after"].as_u64().unwrap();
    let budget = (size8 - 100) as f64 / 1e6;
    let out = tmp.path().join("t.onnx");
    let j = tiny(&out, &["--size-budget", &format!("{budget}")]);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size as f64 <= budget * 1e6, "{size} bytes over {budget} MB");
    assert!(j["weight_4bit_share"].as_f64().unwrap() > 0.0);
    let stored = j["size_budget"]["weights"].as_array().unwrap();
    assert!(stored.iter().any(|w| w["storage"] == "w4"), "{stored:?}");
    const INT4: i32 = 22;
    let m = proto::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let g = m.graph.unwrap();
    assert!(g.initializer.iter().any(|t| t.data_type == Some(INT4)));
    // The overrides file replays it.
    let ov = tmp.path().join("t.overrides.json");
    let again = tmp.path().join("again.onnx");
    tiny(&again, &["--overrides", &s(&ov)]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());

    // Below what 4-bit weights reach: exit 1, nothing written.
    let none = tmp.path().join("none.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--size-budget",
        "0.0001",
        "--no-validate",
        "-o",
        &s(&none),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("smallest model"), "{}", r.stderr);
    assert!(!none.exists());
}

/// 20 calibration samples from tiny_cnn's 8: sample 5 scaled by `outlier` (its largest
/// activations no other sample shows), the others, the last 4 among them, ordinary.
fn calib_with_outliers(path: &Path, outlier: f32) {
    use qrange::data::InputSpec;
    use qrange::ir::{DType, Tensor};
    let ds = qrange::data::load(
        &fixture("tiny/tiny_cnn.npz"),
        &[InputSpec::new("x", DType::F32, None)],
    )
    .unwrap();
    let mut vals = Vec::new();
    for i in 0..20 {
        let x = ds.get(i % ds.len()).unwrap().remove("x").unwrap();
        let k = if i == 5 { outlier } else { 1.0 };
        vals.extend(x.to_f64_vec().unwrap().into_iter().map(|v| v * k as f64));
    }
    let t = Tensor::from_f64(DType::F32, &[20, 1, 3, 8, 8], &vals).unwrap();
    write_npz_arrays(path, vec![("x", t)]);
}

fn tiny_calib_only(calib: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib".into(),
        s(calib),
        "-o".into(),
        s(out),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    quantize_json(&refs)
}

#[test]
fn goal_without_eval_is_judged_out_of_fold_on_every_calibration_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib.npz");
    calib_with_outliers(&calib, 1.0);
    let j = tiny_calib_only(&calib, &tmp.path().join("t.onnx"), &["--target-sqnr", "20"]);
    // No sample is held back: all 20 calibrate the written model and are judged.
    assert_eq!(j["calibration_samples"], 20);
    let pr = &j["precision"];
    assert_eq!(pr["folds"], 8);
    let e = &pr["estimate"];
    assert_eq!(e["samples"], 20, "{e}");
    assert_eq!(e["level"], 0.9);
    let (lo, fig, hi) = (
        e["lower"].as_f64().unwrap(),
        e["figure"].as_f64().unwrap(),
        e["upper"].as_f64().unwrap(),
    );
    assert!(lo <= fig && fig <= hi && lo < hi, "{e}");
    // The goal is judged on the lower bound.
    assert!(lo >= 20.0, "{e}");
    assert_eq!(pr["searched"].as_f64().unwrap(), lo);
}

#[test]
fn a_goal_the_held_back_samples_meet_is_refused_by_the_lower_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib.npz");
    calib_with_outliers(&calib, 4.0);
    // Without a goal, the last 4 (ordinary) samples are held back and validated on.
    let plain = tiny_calib_only(&calib, &tmp.path().join("plain.onnx"), &[]);
    let held_back = worst_sqnr(&plain);
    assert_eq!(plain["eval_samples"], 4);
    // A goal those 4 samples say the 8-bit model meets.
    let goal = format!("{:.1}", held_back - 1.0);
    let j = tiny_calib_only(
        &calib,
        &tmp.path().join("t.onnx"),
        &["--target-sqnr", &goal],
    );
    let pr = &j["precision"];
    let goal: f64 = goal.parse().unwrap();
    // Out of fold, the outlier's clipping shows: the all-8-bit lower bound misses it, so
    // the search promotes (or says the samples cannot support the goal).
    assert!(pr["baseline"].as_f64().unwrap() < goal, "{pr}");
    let promoted = pr["promoted"].as_array().unwrap();
    assert!(
        !promoted.is_empty() || pr["samples_needed"].is_u64(),
        "{pr}"
    );
}

#[test]
fn out_of_fold_goal_runs_write_the_same_bytes_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib.npz");
    calib_with_outliers(&calib, 4.0);
    let mut outs = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(format!("{name}.onnx"));
        let j = tiny_calib_only(&calib, &out, &["--target-sqnr", "30"]);
        // The bootstrap behind the estimate is seeded: its bounds repeat too.
        assert!(j["precision"]["estimate"]["lower"].is_f64(), "{j}");
        let ov = tmp.path().join(format!("{name}.overrides.json"));
        outs.push((
            std::fs::read(&out).unwrap(),
            std::fs::read(&ov).unwrap(),
            j["precision"]["estimate"].to_string(),
        ));
    }
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn demotions_are_screened_on_the_probe_samples_and_the_choice_judged_on_all() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib.npz");
    calib_with_outliers(&calib, 4.0);
    let mut outs = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(format!("{name}.onnx"));
        let j = tiny_calib_only(
            &calib,
            &out,
            &["--target-sqnr", "30", "--sensitivity-samples", "4"],
        );
        let pr = &j["precision"];
        assert_eq!(pr["probe_samples"], 4, "{pr}");
        // Demotions were tried on the 4 probe samples first...
        assert!(pr["screened"].as_u64().unwrap_or(0) > 0, "{pr}");
        // ...but the configuration chosen is judged on all 20, by its lower bound.
        let e = &pr["estimate"];
        assert_eq!(e["samples"], 20, "{e}");
        assert_eq!(
            pr["searched"].as_f64().unwrap(),
            e["lower"].as_f64().unwrap()
        );
        assert!(e["lower"].as_f64().unwrap() >= 30.0, "{e}");
        outs.push((std::fs::read(&out).unwrap(), pr["screened"].clone()));
    }
    // The probe samples are the same evenly spaced ones each time: the same bytes.
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn an_unreachable_goal_is_found_without_a_sensitivity_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib.npz");
    calib_with_outliers(&calib, 4.0);
    let out = tmp.path().join("t.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&calib),
        "--target-sqnr",
        "60",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // All 8-bit, all 16-bit, all float: no order of promotions can do better than the
    // last two, so the goal is known unreachable without probing any unit alone.
    let line = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("; 3 configurations judged)"), "{line}");
    assert!(!out.exists());
}

#[test]
fn a_state_fed_back_whose_range_clips_what_calibration_saw_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let r = qrange(&[
        "quantize",
        &s(&fixture("silero_vad/model.onnx")),
        "--calib",
        &s(&fixture("silero_vad/calib.npz")),
        "--pin",
        "sr=16000",
        "--target-sqnr",
        "10",
        "-o",
        &s(&tmp.path().join("v.onnx")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("as a state fed back from run to run"))
        .unwrap_or_else(|| panic!("no warning on the fed-back state:\n{}", r.stderr));
    assert!(
        line.starts_with("warning: output 'stateN' has the type and shape of input 'state'"),
        "{line}"
    );
    assert!(
        line.contains("clips values calibration saw ('stateN' in ["),
        "{line}"
    );
    // A model without such a pair says nothing of the kind.
    let calib = tmp.path().join("calib.npz");
    calib_with_outliers(&calib, 4.0);
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&calib),
        "--target-sqnr",
        "20",
        "-o",
        &s(&tmp.path().join("t.onnx")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("fed back"), "{}", r.stderr);
}
