//! `qrange convert --opset N`: upgrades before writing, reports what changed, refuses with a
//! one-line error naming the node.

mod common;

use common::*;
use qrange::onnx::proto;

#[test]
fn ppocr_cls_to_opset_13() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("up.onnx");
    let r = qrange(&[
        "convert",
        fixture("ppocr_cls/model.onnx").to_str().unwrap(),
        out.to_str().unwrap(),
        "--opset",
        "13",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("opset: ai.onnx 11 -> 13, ir_version 7 -> 7"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("converted    1 x Softmax (changed at 13)"),
        "{}",
        r.stdout
    );
    let m = qrange::onnx::read_model(&out).unwrap();
    assert_eq!(m.opset(""), Some(13));
    // already there: written unchanged
    let out2 = dir.path().join("again.onnx");
    let r = qrange(&[
        "convert",
        out.to_str().unwrap(),
        out2.to_str().unwrap(),
        "--opset",
        "13",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("nothing to upgrade"), "{}", r.stdout);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn refusal_is_one_error_line_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("drop.onnx");
    let mut m = model(
        vec![node("Dropout", "drop1", &["x"], &["y", "mask"])],
        vec![],
        vec![vi("x", 1, &[2])],
        vec![vi("y", 1, &[2]), vi("mask", 1, &[2])],
    );
    m.ir_version = Some(3);
    m.opset_import = vec![proto::OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(7),
    }];
    write_proto(&src, &m);
    let out = dir.path().join("out.onnx");
    let r = qrange(&[
        "convert",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--opset",
        "13",
    ]);
    assert_eq!(r.code, 2);
    let first = r.stderr.lines().next().unwrap();
    assert!(
        first.starts_with("error: ") && first.contains("node 'drop1' (Dropout)"),
        "{first}"
    );
    assert!(!out.exists());
    let r = qrange(&[
        "convert",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--opset",
        "30",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("7..=21"), "{}", r.stderr);
}
