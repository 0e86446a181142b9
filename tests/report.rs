//! `qrange quantize --report FILE`: one self-contained, deterministic HTML page with a
//! histogram and range markers per calibrated tensor.

mod common;

use common::*;
use std::path::Path;

/// Quantizes tiny_cnn with `--report` (and `--json`); returns the page and the number of
/// calibrated tensors the summary counts.
fn cnn_report(dir: &Path, name: &str) -> (String, u64) {
    let report = dir.join(name);
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--eval",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "--labels",
        "label",
        "-o",
        &s(&dir.join("q.onnx")),
        "--report",
        &s(&report),
        "--json",
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json still prints JSON");
    let tensors: u64 = j["methods"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    (std::fs::read_to_string(&report).unwrap(), tensors)
}

/// The value of attribute `attr` in the first tag of `s` (after `from`).
fn attr<'a>(s: &'a str, from: &str, attr: &str) -> &'a str {
    let at = s.find(from).unwrap_or_else(|| panic!("no {from}"));
    let tag = &s[at..at + s[at..].find('>').unwrap()];
    let key = format!("{attr}=\"");
    let v = &tag[tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} in {tag}"))
        + key.len()..];
    &v[..v.find('"').unwrap()]
}

#[test]
fn report_is_one_self_contained_page_with_a_plot_per_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let (html, n) = cnn_report(tmp.path(), "r.html");
    assert!(n >= 3, "tiny_cnn calibrates several tensors, got {n}");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<html").count(), 1);
    assert_eq!(html.matches("</html>").count(), 1);
    assert!(html.trim_end().ends_with("</html>"));
    // Nothing is loaded from elsewhere and nothing runs.
    for bad in [
        "http://", "https://", "<script", "src=", "<link", "@import", "url(",
    ] {
        assert!(!html.contains(bad), "report contains {bad:?}");
    }
    // One histogram per calibrated tensor, each with a marker per method and the chosen range.
    let n = n as usize;
    assert_eq!(html.matches("<details class=\"tensor\"").count(), n);
    let plots: Vec<&str> = html.split("<svg class=\"hist\"").skip(1).collect();
    assert_eq!(plots.len(), n);
    for p in &plots {
        let p = &p[..p.find("</svg>").unwrap()];
        for m in ["minmax", "percentile", "entropy", "mse"] {
            assert_eq!(
                p.matches(&format!("class=\"marker m-{m}")).count(),
                1,
                "{m}"
            );
        }
        // The chosen method's marker and the chosen bounds agree.
        assert_eq!(p.matches(" chosen\" data-method=").count(), 1);
        let chosen = &p[p.find(" chosen\" data-method=").unwrap()..];
        let bounds = &p[p.find("class=\"range-chosen\"").unwrap()..];
        assert_eq!(
            attr(chosen, "data-lo", "data-lo"),
            attr(bounds, "data-lo", "data-lo")
        );
        assert_eq!(
            attr(chosen, "data-hi", "data-hi"),
            attr(bounds, "data-hi", "data-hi")
        );
        // The histogram itself: filled polygons.
        assert!(p.contains("<polygon"));
    }
    // Sections of a validated run with a plan.
    for id in ["accuracy", "tensors", "precision"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    assert!(html.contains("QLinearConv"), "precision names the kernels");
    assert!(html.contains("accuracy before → after"));
}

#[test]
fn two_runs_write_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = cnn_report(tmp.path(), "a.html");
    let (b, _) = cnn_report(tmp.path(), "b.html");
    assert!(a == b, "reports differ");
}

#[test]
fn names_are_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.onnx");
    let h = "h<b>&\"'";
    let m = common::model(
        vec![
            node("MatMul", "mm<i>", &["x", "w"], &[h]),
            // A second MatMul quantizes `h` as its input (a MatMul's own output is float).
            node("MatMul", "mm2&", &[h, "w"], &["y"]),
        ],
        vec![f32_init(
            "w",
            &[4, 4],
            &(0..16).map(|i| i as f32 / 8.0 - 1.0).collect::<Vec<_>>(),
        )],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 4])],
    );
    write_proto(&model, &m);
    let report = tmp.path().join("r.html");
    let r = qrange(&[
        "quantize",
        &s(&model),
        "--calib",
        "random:6",
        "--no-validate",
        "--target",
        "generic",
        "-o",
        &s(&tmp.path().join("q.onnx")),
        "--report",
        &s(&report),
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("h&lt;b&gt;&amp;&quot;&#39;"),
        "escaped value name"
    );
    assert!(html.contains("mm&lt;i&gt;"), "escaped node name");
    assert!(html.contains("mm2&amp;"), "escaped node name");
    for raw in [h, "h<b>", "mm<i>", "mm2&<"] {
        assert!(!html.contains(raw), "unescaped {raw:?}");
    }
    assert!(html.contains("Validation was skipped"));
}

#[test]
fn bad_report_paths_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let base = [
        s(&fixture("tiny/tiny_mlp.onnx")),
        "--calib".into(),
        s(&fixture("tiny/tiny_mlp.npz")),
        "--no-validate".into(),
        "-o".into(),
        s(&out),
        "--report".into(),
    ];
    let missing = tmp.path().join("no/such/dir/r.html");
    for (report, want) in [
        (s(&missing), "report '"),
        (s(&out), "is also where -o goes"),
        (s(&fixture("tiny/tiny_mlp.onnx")), "refusing to overwrite"),
    ] {
        let mut args: Vec<&str> = vec!["quantize"];
        args.extend(base.iter().map(String::as_str));
        args.push(&report);
        let r = qrange(&args);
        assert_eq!(r.code, 2, "{report}: {}", r.stderr);
        let first = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or("");
        assert!(first.contains(want), "{report}: {}", r.stderr);
        // Refused before the run: the model was not written either.
        assert!(!out.exists(), "{report}: the model was written");
    }
    assert!(!missing.exists());
}

#[test]
fn report_has_per_layer_fusion_and_precision_sections() {
    let tmp = tempfile::tempdir().unwrap();
    let (html, _) = cnn_report(tmp.path(), "r.html");
    for id in ["layers", "fusion", "precision", "accuracy"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    // The per-layer chart names a layer of the model; the fusion table names a kernel.
    let layers = &html[html.find("id=\"layers\"").unwrap()..];
    assert!(layers.contains("conv1"), "per-layer section lists conv1");
    let fusion = &html[html.find("id=\"fusion\"").unwrap()..];
    assert!(
        fusion.contains("QLinearConv"),
        "fusion section shows QLinearConv"
    );
}

#[test]
fn compare_writes_a_report_with_the_per_layer_chart() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        "--calib",
        &s(&fixture("tiny/tiny_cnn.npz")),
        "--no-validate",
        "-o",
        &s(&q),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let page = tmp.path().join("c.html");
    let r = qrange(&[
        "compare",
        &s(&fixture("tiny/tiny_cnn.onnx")),
        &s(&q),
        "--data",
        &s(&fixture("tiny/tiny_cnn.eval.npz")),
        "--per-tensor",
        "--report",
        &s(&page),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    for id in ["layers", "fusion", "accuracy"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    assert!(!html.contains("<script"));
}
