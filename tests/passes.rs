//! The declared pass list: `qrange passes` prints what a quantize run executes,
//! `--dump-after`/`--stop-after` show the IR after a step, and before/after snapshots of
//! the passes that rewrite a quantized model's graph (the text dump).

mod common;

use common::*;
use qrange::onnx::proto;
use qrange::pipeline::options::{CalibSource, QuantizeOptions};
use qrange::pipeline::{Finish, Progress};
use std::path::Path;
use std::sync::Mutex;

/// The step labels `qrange passes` prints, in order.
fn listed_steps() -> Vec<String> {
    let r = qrange(&["passes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

/// The `passes` log of a `quantize --json` run with `extra` arguments.
fn run_log(extra: &[&str]) -> Vec<serde_json::Value> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let mut args = vec![
        s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib".into(),
        s(&fixture("tiny/tiny_cnn.npz")),
        "-o".into(),
        s(&out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let j = quantize_json(&argv);
    j["passes"].as_array().unwrap().clone()
}

#[test]
fn passes_prints_what_quantize_runs() {
    let listed = listed_steps();
    assert!(listed.contains(&"insert_qdq".to_string()), "{listed:?}");
    let log = run_log(&["--no-validate"]);
    let ran: Vec<&str> = log.iter().map(|p| p["step"].as_str().unwrap()).collect();
    assert_eq!(ran, listed);
    for p in &log {
        assert_eq!(p["runs"], 1, "{p}");
        // Dynamic quantization's step is one a static run skips; compact writing runs
        // only under a size budget.
        if p["step"] == "quantize_dynamic" {
            assert!(p["skipped"].as_str().unwrap().contains("static"), "{p}");
        } else if p["step"] == "compact" {
            assert!(
                p["skipped"].as_str().unwrap().contains("--size-budget"),
                "{p}"
            );
        } else {
            assert!(p.get("skipped").is_none(), "{p}");
        }
    }
    let changed = |step: &str| log.iter().find(|p| p["step"] == step).unwrap()["changed"].clone();
    assert_eq!(changed("insert_qdq"), true);
    assert_eq!(changed("plan"), false);
    assert_eq!(changed("pin_inputs"), false);
    // A dynamic run plans nothing and inserts no Q/DQ: quantize_dynamic rewrites the model.
    let log = run_log(&["--no-validate", "--mode", "dynamic"]);
    let step = |name: &str| log.iter().find(|p| p["step"] == name).unwrap().clone();
    for skipped in ["plan", "plan-upgraded", "insert_qdq"] {
        assert!(step(skipped).get("skipped").is_some(), "{}", step(skipped));
    }
    assert_eq!(step("quantize_dynamic")["changed"], true);
}

#[test]
fn skipped_passes_are_listed_and_say_why() {
    let log = run_log(&["--no-validate", "--target", "tensorrt"]);
    assert_eq!(log.len(), listed_steps().len());
    for step in ["fold_batchnorm", "fold_bias_add"] {
        let p = log.iter().find(|p| p["step"] == step).unwrap();
        assert_eq!(p["changed"], false, "{p}");
        let why = p["skipped"].as_str().unwrap_or_default();
        assert!(why.contains("tensorrt"), "{p}");
    }
}

#[test]
fn mixed_precision_materialises_with_the_same_steps() {
    let log = run_log(&[
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "--target-sqnr",
        "30",
    ]);
    let ran: Vec<&str> = log.iter().map(|p| p["step"].as_str().unwrap()).collect();
    assert_eq!(ran, listed_steps());
    let qdq = log.iter().find(|p| p["step"] == "insert_qdq").unwrap();
    assert!(qdq["runs"].as_u64().unwrap() >= 1, "{qdq}");
}

/// The text `quantize` prints on stdout for `extra` on tiny_cnn, its exit code, and
/// whether it wrote the model.
fn quantize_cnn(tmp: &Path, extra: &[&str]) -> (Run, bool) {
    let out = tmp.join("q.onnx");
    let mut args = vec![
        "quantize".to_string(),
        s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib".into(),
        s(&fixture("tiny/tiny_cnn.npz")),
        "--no-validate".into(),
        "-o".into(),
        s(&out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = qrange(&argv);
    let wrote = out.exists();
    (r, wrote)
}

#[test]
fn dump_after_insert_qdq_on_tiny_cnn() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, wrote) = quantize_cnn(tmp.path(), &["--dump-after", "insert_qdq", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(wrote);
    let (dump, json) = r.stdout.split_at(r.stdout.find("\n{").unwrap() + 1);
    assert!(dump.starts_with("; after pass insert_qdq\n"), "{dump}");
    let j: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(j["quantized_ops"].as_u64().unwrap() >= 4);
    insta::assert_snapshot!("tiny_cnn_dump_after_insert_qdq", dump);

    // --stop-after prints the same dump, exits 0 and writes nothing.
    let tmp = tempfile::tempdir().unwrap();
    let (stopped, wrote) = quantize_cnn(tmp.path(), &["--stop-after", "insert_qdq"]);
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert!(!wrote);
    assert_eq!(stopped.stdout, dump);
}

#[test]
fn a_pass_name_dumps_every_step_of_that_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, wrote) = quantize_cnn(
        tmp.path(),
        &[
            "--stop-after",
            "plan-upgraded",
            "--dump-after",
            "infer_shapes",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!wrote);
    let headers: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("; after pass"))
        .collect();
    assert_eq!(
        headers,
        [
            "; after pass infer_shapes",
            "; after pass infer_shapes-folded",
            "; after pass infer_shapes-upgraded",
            "; after pass plan-upgraded",
        ]
    );
}

#[test]
fn unknown_pass_names_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for flag in ["--dump-after", "--stop-after"] {
        let (r, wrote) = quantize_cnn(tmp.path(), &[flag, "fold_everything"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(!wrote);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        for want in [
            "error: ",
            "'fold_everything'",
            "insert_qdq",
            "infer_shapes-upgraded",
        ] {
            assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        }
    }
}

/// Collects the dumps a run hands out.
#[derive(Default)]
struct Dumps(Mutex<Vec<(String, String)>>);

impl Progress for Dumps {
    fn begin(&self, _: &str, _: u64) {}
    fn position(&self, _: u64, _: u64) {}
    fn step(&self) {}
    fn end(&self) {}
    fn message(&self, _: &str) {}
    fn warn(&self, _: &str) {}
    fn dump(&self, step: &str, text: &str) {
        self.0
            .lock()
            .unwrap()
            .push((step.to_string(), text.to_string()));
    }
}

/// The IR of `model` (calibrated on `calib`) after step `before` and after step `after`,
/// as the quantize pipeline runs them, in the `*.Pass.diff` habit: both dumps in one text.
fn before_after(model: &Path, calib: &Path, before: &str, after: &str) -> String {
    let mut o = QuantizeOptions::new(model, CalibSource::Data(calib.to_path_buf()), "unused.onnx");
    o.validate = false;
    o.method = qrange::calib::Method::MinMax;
    o.dump.after = vec![before.to_string()];
    o.dump.stop_after = Some(after.to_string());
    let dumps = Dumps::default();
    match qrange::pipeline::quantize(&o, &dumps).unwrap() {
        Finish::Stopped { after: stopped } => assert_eq!(stopped, after),
        _ => panic!("the run did not stop after {after}"),
    }
    let dumps = dumps.0.into_inner().unwrap();
    let labels: Vec<&str> = dumps.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, [before, after]);
    assert_ne!(dumps[0].1, dumps[1].1, "{after} changed nothing");
    format!(
        "before ({before}):\n{}\nafter ({after}):\n{}",
        dumps[0].1, dumps[1].1
    )
}

#[test]
fn fold_batchnorm_snapshot() {
    let text = before_after(
        &fixture("tiny/tiny_bn.onnx"),
        &fixture("tiny/tiny_bn.npz"),
        "fold_constants",
        "fold_batchnorm",
    );
    insta::assert_snapshot!("fold_batchnorm_tiny_bn", text);
}

/// Writes `m` and an .npz of 4 samples of `x: f32[dims]` into `dir`.
fn write_with_data(
    dir: &Path,
    m: &proto::ModelProto,
    dims: &[usize],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let model = dir.join("m.onnx");
    write_proto(&model, m);
    let mut shape = vec![4];
    shape.extend_from_slice(dims);
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let x = qrange::ir::Tensor::F32(ndarray::ArrayD::from_shape_vec(shape, vals).unwrap());
    let data = dir.join("d.npz");
    write_npz_arrays(&data, vec![("x", x)]);
    (model, data)
}

#[test]
fn fold_bias_add_snapshot() {
    // Conv without bias, then a per-channel constant Add, as PaddlePaddle exports them.
    let m = model(
        vec![
            {
                let mut n = node("Conv", "conv", &["x", "w"], &["c"]);
                n.attribute.push(ints_attr("kernel_shape", &[1, 1]));
                n
            },
            node("Add", "add", &["c", "k"], &["y"]),
            node("Relu", "relu", &["y"], &["r"]),
        ],
        vec![
            f32_init("w", &[2, 3, 1, 1], &[0.5, -0.25, 1.0, 0.75, 0.1, -0.5]),
            f32_init("k", &[1, 2, 1, 1], &[0.125, -0.375]),
        ],
        vec![vi("x", 1, &[1, 3, 2, 2])],
        vec![vi("r", 1, &[1, 2, 2, 2])],
    );
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = write_with_data(tmp.path(), &m, &[1, 3, 2, 2]);
    let text = before_after(&model, &data, "fold_batchnorm", "fold_bias_add");
    insta::assert_snapshot!("fold_bias_add_conv_add", text);
}

#[test]
fn upgrade_opset_snapshot() {
    // Opset 10: Clip bounds and ReduceSum axes are attributes (inputs from 11 and 13 on),
    // Softmax flattens from its axis (one axis from 13 on). Per-channel weights need 13.
    let mut m = model(
        vec![
            {
                let mut n = node("Gemm", "fc", &["x", "w", "b"], &["h"]);
                n.attribute.push(int_attr("transB", 1));
                n
            },
            {
                let mut n = node("Clip", "clip", &["h"], &["c"]);
                n.attribute.push(float_attr("min", 0.0));
                n.attribute.push(float_attr("max", 6.0));
                n
            },
            {
                let mut n = node("ReduceSum", "sum", &["c"], &["s"]);
                n.attribute.push(ints_attr("axes", &[1]));
                n
            },
            {
                let mut n = node("Softmax", "softmax", &["c"], &["y"]);
                n.attribute.push(int_attr("axis", 1));
                n
            },
        ],
        vec![
            f32_init(
                "w",
                &[3, 4],
                &[
                    0.5, -0.25, 1.0, 0.75, 0.1, -0.5, 0.3, 0.2, -0.1, 0.4, 0.6, -0.7,
                ],
            ),
            f32_init("b", &[3], &[0.1, 0.2, -0.3]),
        ],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 3]), vi("s", 1, &[1, 1])],
    );
    m.opset_import[0].version = Some(10);
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = write_with_data(tmp.path(), &m, &[1, 4]);
    let text = before_after(&model, &data, "plan", "upgrade_opset");
    insta::assert_snapshot!("upgrade_opset_opset10", text);
}

#[test]
fn insert_qdq_snapshot() {
    let text = before_after(
        &fixture("tiny/tiny_cnn.onnx"),
        &fixture("tiny/tiny_cnn.npz"),
        "plan-upgraded",
        "insert_qdq",
    );
    insta::assert_snapshot!("insert_qdq_tiny_cnn", text);
}
