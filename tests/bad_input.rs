//! Malformed inputs: each gives a one-line `error:` naming the culprit, exit code 2,
//! no panic, no output file, and leaves the input untouched.

mod common;

use common::*;
use prost::Message;
use qrange::onnx::proto;
use std::path::{Path, PathBuf};

struct Case {
    name: &'static str,
    /// Builds the files in `dir` and returns the qrange arguments.
    setup: fn(&Path) -> Vec<String>,
    /// Text the first stderr line must contain.
    expect: &'static [&'static str],
}

fn convert_args(dir: &Path, model: &Path) -> Vec<String> {
    vec!["convert".into(), s(model), s(&dir.join("out.onnx"))]
}

fn with_ext_data(
    dir: &Path,
    location: &str,
    offset: u64,
    length: u64,
    write_file: bool,
) -> PathBuf {
    let mut m = add_relu();
    let g = m.graph.as_mut().unwrap();
    let b = &mut g.initializer[0];
    let raw = b.raw_data.take().unwrap();
    b.data_location = Some(1);
    let kv = |k: &str, v: String| proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    b.external_data = vec![
        kv("location", location.into()),
        kv("offset", offset.to_string()),
        kv("length", length.to_string()),
    ];
    if write_file {
        std::fs::write(dir.join("weights.bin"), &raw).unwrap();
    }
    let p = dir.join("model.onnx");
    write_proto(&p, &m);
    p
}

/// Writes the add_relu model and an .npz of `arrays`.
fn run_case(dir: &Path, arrays: Vec<(&str, qrange::ir::Tensor)>) -> Vec<String> {
    let m = dir.join("model.onnx");
    write_proto(&m, &add_relu());
    let data = dir.join("data.npz");
    write_npz_arrays(&data, arrays);
    vec![
        "run".into(),
        s(&m),
        "--data".into(),
        s(&data),
        "-o".into(),
        s(&dir.join("out.npz")),
    ]
}

/// `qrange quantize` of add_relu on 10 calibration samples with a NaN in sample `bad`
/// (the last two samples are held back for validation).
fn quantize_nan_case(dir: &Path, bad: usize) -> Vec<String> {
    let m = dir.join("model.onnx");
    write_proto(&m, &add_relu());
    let mut t = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&[10, 1, 4]), 0.25);
    t[[bad, 0, 1]] = f32::NAN;
    let data = dir.join("calib.npz");
    write_npz_arrays(&data, vec![("x", qrange::ir::Tensor::F32(t))]);
    vec![
        "quantize".into(),
        s(&m),
        "--calib".into(),
        s(&data),
        "-o".into(),
        s(&dir.join("out.onnx")),
    ]
}

/// `qrange compare` of add_relu (reference) with `test` on an .npz of `arrays`, with
/// `extra` arguments.
fn compare_case(
    dir: &Path,
    test: &proto::ModelProto,
    arrays: Vec<(&str, qrange::ir::Tensor)>,
    extra: &[&str],
) -> Vec<String> {
    let a = dir.join("a.onnx");
    let b = dir.join("b.onnx");
    write_proto(&a, &add_relu());
    write_proto(&b, test);
    let data = dir.join("data.npz");
    write_npz_arrays(&data, arrays);
    let mut args = vec!["compare".into(), s(&a), s(&b), "--data".into(), s(&data)];
    args.extend(extra.iter().map(|x| x.to_string()));
    args
}

fn labels(v: &[i64]) -> qrange::ir::Tensor {
    qrange::ir::Tensor::I64(ndarray::Array1::from(v.to_vec()).into_dyn())
}

/// A model `y = Relu(x)` on `dims`, an `imgs/` folder with a 2x2 RGB `good.png` and
/// whatever `extra` writes, and `qrange run` arguments with `--preprocess SPEC`.
fn image_case(dir: &Path, dims: &[i64], spec: &str, extra: fn(&Path)) -> Vec<String> {
    let m = dir.join("model.onnx");
    write_proto(&m, &relu_model(dims));
    let imgs = dir.join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    write_png(&imgs.join("good.png"), 2, 2, 3, &[10; 12]);
    extra(&imgs);
    vec![
        "run".into(),
        s(&m),
        "--data".into(),
        s(&imgs),
        "--preprocess".into(),
        spec.into(),
        "-o".into(),
        s(&dir.join("out.npz")),
    ]
}

const CASES: &[Case] = &[
    Case {
        name: "npz with a wrong dtype",
        setup: |d| {
            let t = qrange::ir::Tensor::I32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 1, 4])));
            run_case(d, vec![("x", t)])
        },
        expect: &["data.npz", "'x'", "i32", "f32"],
    },
    Case {
        name: "npz with a wrong shape",
        setup: |d| run_case(d, vec![("x", f32_filled(&[2, 1, 5], 1.0))]),
        expect: &["data.npz", "'x'"],
    },
    Case {
        name: "npz missing the model input",
        setup: |d| run_case(d, vec![("label", f32_filled(&[2], 1.0))]),
        expect: &["data.npz", "'x'"],
    },
    Case {
        name: "npz with NaN",
        setup: |d| run_case(d, vec![("x", f32_filled(&[1, 1, 4], f32::NAN))]),
        expect: &["data.npz", "'x'", "NaN"],
    },
    Case {
        name: "quantize: NaN in a calibration sample",
        setup: |d| quantize_nan_case(d, 3),
        expect: &["calib.npz", "'x'", "sample 3", "NaN"],
    },
    Case {
        name: "quantize: NaN in a held-back validation sample",
        setup: |d| quantize_nan_case(d, 9),
        expect: &["calib.npz", "'x'", "sample 9", "NaN"],
    },
    Case {
        name: "calibrate: NaN in a calibration sample",
        setup: |d| {
            let mut args = quantize_nan_case(d, 6);
            args[0] = "calibrate".into();
            args[5] = s(&d.join("ranges.json"));
            args
        },
        expect: &["calib.npz", "'x'", "sample 6", "NaN"],
    },
    Case {
        name: "unknown op at run time",
        setup: |d| {
            let mut m = add_relu();
            let g = m.graph.as_mut().unwrap();
            g.node[1].op_type = Some("FancyRelu".into());
            g.node[1].domain = Some("com.example".into());
            m.opset_import.push(proto::OperatorSetIdProto {
                domain: Some("com.example".into()),
                version: Some(1),
            });
            let p = d.join("model.onnx");
            write_proto(&p, &m);
            let data = d.join("data.npz");
            write_npz_arrays(&data, vec![("x", f32_filled(&[1, 1, 4], 1.0))]);
            vec![
                "run".into(),
                s(&p),
                "--data".into(),
                s(&data),
                "-o".into(),
                s(&d.join("out.npz")),
            ]
        },
        expect: &["'relu'", "FancyRelu"],
    },
    Case {
        name: "pin of an input that does not exist",
        setup: |d| {
            let mut a = run_case(d, vec![("x", f32_filled(&[1, 1, 4], 1.0))]);
            a.extend(["--pin".into(), "sr=16000".into()]);
            a
        },
        expect: &["--pin", "'sr'"],
    },
    Case {
        name: "missing model file",
        setup: |d| convert_args(d, &d.join("nope.onnx")),
        expect: &["nope.onnx", "No such file"],
    },
    Case {
        name: "empty file",
        setup: |d| {
            let p = d.join("empty.onnx");
            std::fs::write(&p, b"").unwrap();
            convert_args(d, &p)
        },
        expect: &["empty.onnx", "empty"],
    },
    Case {
        name: "truncated protobuf",
        setup: |d| {
            let bytes = add_relu().encode_to_vec();
            let p = d.join("trunc.onnx");
            std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
            convert_args(d, &p)
        },
        expect: &["trunc.onnx", "not a valid ONNX protobuf"],
    },
    Case {
        name: "random bytes",
        setup: |d| {
            let mut x: u64 = 0x9e3779b97f4a7c15;
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let p = d.join("random.onnx");
            std::fs::write(&p, bytes).unwrap();
            convert_args(d, &p)
        },
        expect: &["random.onnx"],
    },
    Case {
        name: "wrong magic (a zip file)",
        setup: |d| {
            let p = d.join("zip.onnx");
            std::fs::write(
                &p,
                b"PK\x03\x04\x14\x00\x00\x00\x08\x00garbage-after-zip-header",
            )
            .unwrap();
            convert_args(d, &p)
        },
        expect: &["zip.onnx"],
    },
    Case {
        name: "model without graph",
        setup: |d| {
            let mut m = add_relu();
            m.graph = None;
            let p = d.join("nograph.onnx");
            write_proto(&p, &m);
            convert_args(d, &p)
        },
        expect: &["nograph.onnx", "no graph"],
    },
    Case {
        name: "dangling value name",
        setup: |d| {
            let mut m = add_relu();
            m.graph.as_mut().unwrap().node[1].input[0] = "ghost".into();
            let p = d.join("dangling.onnx");
            write_proto(&p, &m);
            convert_args(d, &p)
        },
        expect: &["dangling.onnx", "'relu'", "'ghost'"],
    },
    Case {
        name: "cycle",
        setup: |d| {
            let m = model(
                vec![
                    node("Add", "a1", &["x", "t2"], &["t1"]),
                    node("Relu", "r2", &["t1"], &["t2"]),
                ],
                vec![],
                vec![vi("x", 1, &[1])],
                vec![vi("t2", 1, &[1])],
            );
            let p = d.join("cycle.onnx");
            write_proto(&p, &m);
            convert_args(d, &p)
        },
        expect: &["cycle.onnx", "cycle"],
    },
    Case {
        name: "duplicate producers",
        setup: |d| {
            let mut m = add_relu();
            m.graph
                .as_mut()
                .unwrap()
                .node
                .push(node("Relu", "relu2", &["x"], &["y"]));
            let p = d.join("dup.onnx");
            write_proto(&p, &m);
            convert_args(d, &p)
        },
        expect: &["dup.onnx", "'y'", "'relu'", "'relu2'"],
    },
    Case {
        name: "missing external data file",
        setup: |d| {
            let p = with_ext_data(d, "weights.bin", 0, 16, false);
            convert_args(d, &p)
        },
        expect: &["model.onnx", "tensor 'b'", "weights.bin"],
    },
    Case {
        name: "external data offset past end",
        setup: |d| {
            let p = with_ext_data(d, "weights.bin", 4096, 16, true);
            convert_args(d, &p)
        },
        expect: &["tensor 'b'", "offset 4096", "past the end"],
    },
    Case {
        name: "external data length past end",
        setup: |d| {
            let p = with_ext_data(d, "weights.bin", 8, 16, true);
            convert_args(d, &p)
        },
        expect: &["tensor 'b'", "past the end"],
    },
    Case {
        name: "external data outside the model directory",
        setup: |d| {
            let p = with_ext_data(d, "../weights.bin", 0, 16, true);
            convert_args(d, &p)
        },
        expect: &["tensor 'b'", "relative path inside"],
    },
    Case {
        name: "output in a missing directory",
        setup: |d| {
            let p = d.join("ok.onnx");
            write_proto(&p, &add_relu());
            vec!["convert".into(), s(&p), s(&d.join("no/such/dir/out.onnx"))]
        },
        expect: &["no/such/dir", "does not exist"],
    },
    Case {
        name: "output path equal to input",
        setup: |d| {
            let p = d.join("same.onnx");
            write_proto(&p, &add_relu());
            vec!["convert".into(), s(&p), s(&p)]
        },
        expect: &["same.onnx", "refusing to overwrite"],
    },
    Case {
        name: "output path equal to input through another spelling",
        setup: |d| {
            let p = d.join("same2.onnx");
            write_proto(&p, &add_relu());
            let other = d.join(".").join("same2.onnx");
            vec!["convert".into(), s(&p), s(&other)]
        },
        expect: &["same2.onnx", "refusing to overwrite"],
    },
    Case {
        name: "node without op_type",
        setup: |d| {
            let mut m = add_relu();
            m.graph.as_mut().unwrap().node[0].op_type = None;
            let p = d.join("noop.onnx");
            write_proto(&p, &m);
            convert_args(d, &p)
        },
        expect: &["noop.onnx", "'add'", "no op_type"],
    },
    Case {
        name: "impossible options",
        setup: |d| {
            let p = d.join("ok.onnx");
            write_proto(&p, &add_relu());
            vec![
                "convert".into(),
                s(&p),
                s(&d.join("out.onnx")),
                "--inline".into(),
                "--external-data".into(),
                "10".into(),
            ]
        },
        expect: &["--inline", "--external-data"],
    },
    Case {
        name: "compare: labels key missing",
        setup: |d| {
            compare_case(
                d,
                &add_relu(),
                vec![("x", f32_filled(&[2, 1, 4], 1.0)), ("cls", labels(&[0, 1]))],
                &["--labels", "label"],
            )
        },
        expect: &["data.npz", "'label'", "cls"],
    },
    Case {
        name: "compare: labels of another length",
        setup: |d| {
            compare_case(
                d,
                &add_relu(),
                vec![
                    ("x", f32_filled(&[2, 1, 4], 1.0)),
                    ("label", labels(&[0, 1, 1])),
                ],
                &["--labels", "label", "--per-tensor"],
            )
        },
        expect: &["data.npz", "'label'", "3 entries", "2 samples"],
    },
    Case {
        name: "compare: test model with another input name",
        setup: |d| {
            let mut m = add_relu();
            let g = m.graph.as_mut().unwrap();
            g.input[0].name = Some("z".into());
            g.node[0].input[0] = "z".into();
            compare_case(d, &m, vec![("x", f32_filled(&[2, 1, 4], 1.0))], &[])
        },
        expect: &["different inputs", "'x'", "b.onnx"],
    },
    Case {
        name: "compare: test model with another input type",
        setup: |d| {
            let mut m = add_relu();
            m.graph.as_mut().unwrap().input[0] = vi("x", 11, &[1, 4]);
            compare_case(d, &m, vec![("x", f32_filled(&[2, 1, 4], 1.0))], &[])
        },
        expect: &["different inputs", "'x'", "f32", "f64"],
    },
    Case {
        name: "compare: missing test model",
        setup: |d| {
            let mut a = compare_case(
                d,
                &add_relu(),
                vec![("x", f32_filled(&[2, 1, 4], 1.0))],
                &[],
            );
            a[2] = s(&d.join("nope.onnx"));
            a
        },
        expect: &["nope.onnx", "No such file"],
    },
    Case {
        name: "compare: missing reference model",
        setup: |d| {
            let mut a = compare_case(
                d,
                &add_relu(),
                vec![("x", f32_filled(&[2, 1, 4], 1.0))],
                &[],
            );
            a[1] = s(&d.join("nope.onnx"));
            a
        },
        expect: &["nope.onnx", "No such file"],
    },
    Case {
        name: "compare: missing data file",
        setup: |d| {
            let mut a = compare_case(
                d,
                &add_relu(),
                vec![("x", f32_filled(&[2, 1, 4], 1.0))],
                &[],
            );
            a[4] = s(&d.join("nope.npz"));
            a
        },
        expect: &["nope.npz", "No such file"],
    },
    Case {
        name: "image folder without --preprocess",
        setup: |d| {
            vec![
                "quantize".into(),
                s(&fixture("ppocr_cls/model.onnx")),
                "--calib".into(),
                s(&fixture("ppocr_cls/images")),
                "-o".into(),
                s(&d.join("out.onnx")),
            ]
        },
        expect: &[
            "--calib",
            "ppocr_cls/images",
            "holds images",
            "give --preprocess",
        ],
    },
    Case {
        name: "corrupt PNG in an image folder",
        setup: |d| {
            image_case(d, &[1, 3, 2, 2], "scale=255", |imgs| {
                let good = std::fs::read(imgs.join("good.png")).unwrap();
                std::fs::write(imgs.join("bad.png"), &good[..good.len() / 2]).unwrap();
            })
        },
        expect: &["bad.png", "cannot decode PNG"],
    },
    Case {
        name: "file named .png that is no image",
        setup: |d| {
            image_case(d, &[1, 3, 2, 2], "scale=255", |imgs| {
                std::fs::write(imgs.join("fake.png"), b"hello").unwrap();
            })
        },
        expect: &["fake.png", "not a PNG or JPEG"],
    },
    Case {
        name: "RGB preprocessing for a one-channel model input",
        setup: |d| image_case(d, &[1, 1, 2, 2], "scale=255", |_| {}),
        expect: &[
            "imgs",
            "'x'",
            "1 channel",
            "color=rgb gives 3",
            "color=gray",
        ],
    },
    Case {
        name: "image size differs from the model's without resize",
        setup: |d| {
            image_case(d, &[1, 3, 2, 2], "scale=255", |imgs| {
                write_png(&imgs.join("wide.png"), 3, 2, 3, &[0; 18]);
            })
        },
        expect: &["wide.png", "'x'", "3x2", "add resize"],
    },
    Case {
        name: "resize against a fixed model size",
        setup: |d| image_case(d, &[1, 3, 2, 2], "resize=4x2", |_| {}),
        expect: &["'x'", "resize=4x2", "width 4", "expects 2"],
    },
    Case {
        name: "bad --preprocess syntax",
        setup: |d| image_case(d, &[1, 3, 2, 2], "resize=2,scale=255", |_| {}),
        expect: &[
            "--preprocess 'resize=2,scale=255'",
            "resize wants WIDTHxHEIGHT",
        ],
    },
    Case {
        name: "unknown --preprocess key",
        setup: |d| image_case(d, &[1, 3, 2, 2], "scale=255,norm=1", |_| {}),
        expect: &["--preprocess", "unknown key 'norm'"],
    },
    Case {
        name: "--preprocess for data that is not an image folder",
        setup: |d| {
            let mut a = run_case(d, vec![("x", f32_filled(&[2, 1, 4], 1.0))]);
            a.extend(["--preprocess".into(), "scale=255".into()]);
            a
        },
        expect: &[
            "--preprocess 'scale=255'",
            "--data",
            "data.npz",
            "not an image folder",
        ],
    },
    Case {
        name: "image folder for a model with two inputs, none named",
        setup: |d| {
            let args = image_case(d, &[1, 3, 2, 2], "scale=255", |_| {});
            let m = model(
                vec![node("Add", "add", &["x", "z"], &["y"])],
                vec![],
                vec![vi("x", 1, &[1, 3, 2, 2]), vi("z", 1, &[1, 3, 2, 2])],
                vec![vi("y", 1, &[1, 3, 2, 2])],
            );
            write_proto(&d.join("model.onnx"), &m);
            args
        },
        expect: &["imgs", "2 inputs", "'x', 'z'", "input=NAME"],
    },
];

fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_bad_input_is_a_clean_error() {
    let mut failures = Vec::new();
    for c in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let args = (c.setup)(tmp.path());
        let before = snapshot_dir(tmp.path());
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let r = qrange(&argv);
        let after = snapshot_dir(tmp.path());
        let lines: Vec<&str> = r.stderr.lines().collect();
        let first = lines.first().copied().unwrap_or("");
        let mut why = Vec::new();
        if r.code != 2 {
            why.push(format!("exit code {} (want 2)", r.code));
        }
        if !first.starts_with("error: ") {
            why.push(format!("first stderr line is not an error: {first:?}"));
        }
        if lines.len() != 1 {
            why.push(format!("stderr has {} lines, want 1", lines.len()));
        }
        for e in c.expect {
            if !first.contains(e) {
                why.push(format!("error line lacks {e:?}"));
            }
        }
        if r.stderr.contains("panicked") {
            why.push("panicked".into());
        }
        if before != after {
            why.push("files in the directory changed (partial output or input modified)".into());
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {} — stderr: {}",
                c.name,
                why.join("; "),
                r.stderr.trim()
            ));
        }
    }
    assert!(CASES.len() >= 15);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
