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

/// The values of initializer `name` of the written model as f64 (int8 codes, float scales),
/// and its dims.
fn init_values(m: &qrange::onnx::proto::ModelProto, name: &str) -> (Vec<f64>, Vec<i64>) {
    let t = m
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer {name}"));
    let vals = match (t.data_type.unwrap(), &t.raw_data) {
        (1, Some(raw)) => raw
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        (1, None) => t.float_data.iter().map(|&v| v as f64).collect(),
        (3, Some(raw)) => raw.iter().map(|&b| b as i8 as f64).collect(),
        (3, None) => t.int32_data.iter().map(|&v| v as f64).collect(),
        (ty, _) => panic!("{name}: element type {ty}"),
    };
    (vals, t.dims.clone())
}

/// Per weight drawn in the report: its name and the `<g class="levels">` group.
fn weight_levels(html: &str) -> Vec<(String, &str)> {
    html.split("<details class=\"tensor weight\"")
        .skip(1)
        .map(|d| {
            let name = &d[d.find("<summary>").unwrap() + 9..];
            let name = name[..name.find(" <span").unwrap()].to_string();
            let g = &d[d.find("<g class=\"levels\"").unwrap()..];
            (name, &g[..g.find("</g>").unwrap()])
        })
        .collect()
}

/// `(code, value)` of every level line of a group.
fn level_lines(g: &str) -> Vec<(i64, f32)> {
    g.split("<line class=\"level\"")
        .skip(1)
        .map(|l| {
            (
                attr(l, "data-code", "data-code").parse().unwrap(),
                attr(l, "data-code", "data-value").parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn codebook_weights_are_drawn_with_the_levels_written() {
    let tmp = tempfile::tempdir().unwrap();
    for grid in [["kmeans", "4"], ["pow2", "3"]] {
        let (out, report) = (tmp.path().join("q.onnx"), tmp.path().join("r.html"));
        let r = qrange(&[
            "quantize",
            &s(&fixture("tiny/tiny_cnn.onnx")),
            "--calib",
            &s(&fixture("tiny/tiny_cnn.npz")),
            "--no-validate",
            "--weight-grid",
            grid[0],
            "--weight-bits",
            grid[1],
            "-o",
            &s(&out),
            "--report",
            &s(&report),
        ]);
        assert_eq!(r.code, 0, "stderr: {}", r.stderr);
        let html = std::fs::read_to_string(&report).unwrap();
        let m = load(&out);
        let tables = m
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .filter(|t| t.name.as_deref().unwrap_or("").ends_with(".codebook"))
            .count();
        let drawn = weight_levels(&html);
        assert!(tables >= 3, "{grid:?}: tiny_cnn writes 3 codebook weights");
        assert_eq!(drawn.len(), tables, "{grid:?}: one drawing per codebook");
        for (name, g) in drawn {
            assert_eq!(attr(g, "<g", "data-kind"), "codebook", "{name}");
            let c: usize = attr(g, "<g", "data-channel").parse().unwrap();
            let scale: f32 = attr(g, "<g", "data-scale").parse().unwrap();
            let (table, dims) = init_values(&m, &format!("{name}.codebook"));
            let (scales, _) = init_values(&m, &format!("{name}.scale"));
            assert_eq!(scale, scales[c] as f32, "{name}: channel {c}'s scale");
            // The channel's row of the level table: its levels, then zero padding.
            let width = dims[1] as usize;
            let row = &table[c * width..(c + 1) * width];
            let lines = level_lines(g);
            assert!(!lines.is_empty(), "{name}");
            for (k, &(code, value)) in lines.iter().enumerate() {
                assert_eq!(code as f64, row[k], "{name}: level {k} of channel {c}");
                assert_eq!(value, code as f32 * scale, "{name}: level {k}");
            }
            assert!(lines.windows(2).all(|w| w[0].0 < w[1].0), "{name}");
            assert!(row[lines.len()..].iter().all(|&v| v == 0.0), "{name}");
        }
    }
}

#[test]
fn uniform_weights_are_drawn_with_their_grid_ticks() {
    let tmp = tempfile::tempdir().unwrap();
    let (html, _) = cnn_report(tmp.path(), "r.html");
    let m = load(&tmp.path().join("q.onnx"));
    let drawn = weight_levels(&html);
    assert_eq!(drawn.len(), 3, "tiny_cnn quantizes three weights");
    for (name, g) in drawn {
        assert_eq!(attr(g, "<g", "data-kind"), "uniform", "{name}");
        let c: usize = attr(g, "<g", "data-channel").parse().unwrap();
        let step: i64 = attr(g, "<g", "data-step").parse().unwrap();
        let scale: f32 = attr(g, "<g", "data-scale").parse().unwrap();
        let zp: i64 = attr(g, "<g", "data-zero-point").parse().unwrap();
        let (scales, _) = init_values(&m, &format!("{name}.scale"));
        let (zps, _) = init_values(&m, &format!("{name}.zp"));
        assert_eq!((scale, zp), (scales[c] as f32, zps[c] as i64), "{name}");
        let lines = level_lines(g);
        // Evenly spaced ticks through the zero point, at the dequantized codes.
        assert!(lines.iter().any(|&(q, _)| q == zp), "{name}");
        assert!(lines.windows(2).all(|w| w[1].0 - w[0].0 == step), "{name}");
        for &(q, v) in &lines {
            assert_eq!(v, (q - zp) as f32 * scale, "{name}: code {q}");
        }
        // The ticks span the grid the codes were written on.
        let (codes, _) = init_values(&m, &format!("{name}.q"));
        let (lo, hi) = (lines[0].0, lines[lines.len() - 1].0);
        for q in codes {
            assert!(
                (lo - step) as f64 <= q && q <= (hi + step) as f64,
                "{name}: code {q} beyond the ticks [{lo}, {hi}] (step {step})"
            );
        }
    }
}
