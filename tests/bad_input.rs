//! Malformed inputs. Each row of [`CASES`] builds a bad input in a temporary directory,
//! runs one `qrange` command on it and states the outcome: exit code 2 with a one-line
//! `error:` naming the culprit, no panic, nothing printed on stdout, the folder untouched
//! (no output or temporary file, no input changed, special files left as they are); or, for inputs
//! that are suspicious rather than wrong, exit code 0 with a `warning:` line. The table in
//! `tests/bad_input/README.md` is rendered from the rows and must match them (set
//! `QRANGE_WRITE_TABLE=1` to rewrite it after changing a row).

mod common;

use common::*;
use prost::Message;
use qrange::onnx::proto;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Case {
    name: &'static str,
    /// Builds the files in `dir` and returns the qrange arguments.
    setup: fn(&Path) -> Vec<String>,
    /// Expected exit code: 2 (an error) or 0 (a warning).
    code: i32,
    /// Text the error line (code 2) or one warning line (code 0) must contain.
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

fn quantize_tiny(dir: &Path, extra: &[&str]) -> Vec<String> {
    let (m, c, e) = tiny_cnn_in(dir);
    let mut v = vec![
        "quantize".into(),
        m,
        "--calib".into(),
        c,
        "--eval".into(),
        e,
    ];
    v.extend(extra.iter().map(|x| x.replace("{d}", &s(dir))));
    v
}

/// `a.onnx` whose initializer lives in `b.onnx.data`.
fn external_named_b(dir: &Path) -> PathBuf {
    let mut m = add_relu();
    let b = &mut m.graph.as_mut().unwrap().initializer[0];
    let raw = b.raw_data.take().unwrap();
    std::fs::write(dir.join("b.onnx.data"), &raw).unwrap();
    b.data_location = Some(1);
    b.external_data = vec![proto::StringStringEntryProto {
        key: Some("location".into()),
        value: Some("b.onnx.data".into()),
    }];
    let p = dir.join("a.onnx");
    write_proto(&p, &m);
    p
}

fn convert_to(dir: &Path, out: &str) -> Vec<String> {
    let (m, _, _) = tiny_cnn_in(dir);
    vec!["convert".into(), m, s(&dir.join(out))]
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

/// `add_relu` with its initializer `b` given `dims` (its four values unchanged).
fn add_relu_dims(dims: &[i64]) -> proto::ModelProto {
    let mut m = add_relu();
    m.graph.as_mut().unwrap().initializer[0].dims = dims.to_vec();
    m
}

/// Writes `m` as `dir/model.onnx` and an .npz of four add_relu samples as `dir/data.npz`;
/// returns the arguments of `cmd` on them (`inspect`, `lint`, `convert`, `run`, `quantize`,
/// `calibrate` or `compare`).
fn command_on(dir: &Path, m: &proto::ModelProto, cmd: &str) -> Vec<String> {
    let model = dir.join("model.onnx");
    write_proto(&model, m);
    let data = dir.join("data.npz");
    write_npz_arrays(&data, vec![("x", f32_filled(&[4, 1, 4], 0.25))]);
    let (model, data) = (s(&model), s(&data));
    let out = |name: &str| s(&dir.join(name));
    let v: Vec<String> = match cmd {
        "inspect" | "lint" => vec![cmd.into(), model],
        "convert" => vec![cmd.into(), model, out("out.onnx")],
        "run" => vec![
            cmd.into(),
            model,
            "--data".into(),
            data,
            "-o".into(),
            out("out.npz"),
        ],
        "quantize" => vec![
            cmd.into(),
            model,
            "--calib".into(),
            data,
            "-o".into(),
            out("out.onnx"),
        ],
        "calibrate" => vec![
            cmd.into(),
            model,
            "--calib".into(),
            data,
            "-o".into(),
            out("r.json"),
        ],
        "compare" => vec![cmd.into(), model.clone(), model, "--data".into(), data],
        other => panic!("no command {other}"),
    };
    v
}

fn with_args(mut v: Vec<String>, extra: &[&str]) -> Vec<String> {
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

/// `add_relu` whose initializer is stored in `dir/weights.bin` with `dims` declared.
fn ext_dims(dir: &Path, dims: &[i64]) -> proto::ModelProto {
    with_ext_data(dir, "weights.bin", 0, 16, true);
    let mut m = load(&dir.join("model.onnx"));
    m.graph.as_mut().unwrap().initializer[0].dims = dims.to_vec();
    m
}

/// A model folder `dir/m/` holding `sub/link`, a symbolic link to `dir` itself (outside the
/// model folder), and `dir/secret.bin`; the initializer's external data location is
/// `location`. Returns the model path.
fn linked_model(dir: &Path, location: &str) -> PathBuf {
    let mdir = dir.join("m");
    std::fs::create_dir_all(mdir.join("sub")).unwrap();
    std::os::unix::fs::symlink(dir, mdir.join("sub/link")).unwrap();
    std::fs::write(dir.join("secret.bin"), [7u8; 16]).unwrap();
    with_ext_data(&mdir, location, 0, 16, false);
    mdir.join("model.onnx")
}

/// `Relu(x)` on f32[1,4] preceded by `op` (one input `x`, output `t`, attributes `attrs`).
fn op_then_relu(op: &str, attrs: Vec<proto::AttributeProto>) -> proto::ModelProto {
    let mut n = node(op, "bad_op", &["x"], &["t"]);
    n.attribute = attrs;
    model(
        vec![n, node("Relu", "relu", &["t"], &["y"])],
        vec![],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 4])],
    )
}

fn ints_attr(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// `y = Sqrt(x - 0.5) + 0.5`: NaN wherever an input value is below 0.5.
fn sqrt_model() -> proto::ModelProto {
    model(
        vec![
            node("Sub", "sub", &["x", "c"], &["d"]),
            node("Sqrt", "sqrt", &["d"], &["r"]),
            node("Add", "add", &["r", "c"], &["y"]),
        ],
        vec![f32_init("c", &[1, 4], &[0.5; 4])],
        vec![vi("x", 1, &[1, 4])],
        vec![vi("y", 1, &[1, 4])],
    )
}

/// `cmd` (`quantize` or `calibrate`) of [`sqrt_model`] on ten samples of 0.75, two values of
/// which (samples 2 and 4) are below 0.5.
fn nan_activation_case(dir: &Path, cmd: &str) -> Vec<String> {
    let m = dir.join("model.onnx");
    write_proto(&m, &sqrt_model());
    let mut t = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&[10, 1, 4]), 0.75);
    t[[2, 0, 1]] = 0.25;
    t[[4, 0, 3]] = 0.1;
    let data = dir.join("calib.npz");
    write_npz_arrays(&data, vec![("x", qrange::ir::Tensor::F32(t))]);
    let out = if cmd == "quantize" {
        "out.onnx"
    } else {
        "r.json"
    };
    vec![
        cmd.into(),
        s(&m),
        "--calib".into(),
        s(&data),
        "-o".into(),
        s(&dir.join(out)),
    ]
}

/// `qrange run` of add_relu on `dir/data.npz` holding x = 0.25 (two samples), rewritten
/// by `damage` (which gets the archive's bytes).
fn damaged_npz_case(dir: &Path, damage: fn(Vec<u8>) -> Vec<u8>) -> Vec<String> {
    let args = run_case(dir, vec![("x", f32_filled(&[2, 1, 4], 0.25))]);
    let data = dir.join("data.npz");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, damage(bytes)).unwrap();
    args
}

/// Changes one byte of the first 0.25 (f32) in the archive: 0.25 becomes 0.2519…, still
/// finite, so only the CRC can tell.
fn flip_data_byte(mut b: Vec<u8>) -> Vec<u8> {
    let at = b
        .windows(4)
        .position(|w| w == 0.25f32.to_le_bytes())
        .expect("a 0.25 in the archive");
    b[at + 2] ^= 1;
    b
}

/// The archive's members rewritten deflated, then the CRC of member `x.npy` replaced in
/// both its local and its central header.
fn deflated_with_bad_crc(b: Vec<u8>) -> Vec<u8> {
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(b)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    let mut crc = 0;
    for i in 0..zin.len() {
        let mut e = zin.by_index(i).unwrap();
        let name = e.name().to_string();
        let mut payload = Vec::new();
        e.read_to_end(&mut payload).unwrap();
        if name == "x.npy" {
            crc = crc32fast::hash(&payload);
        }
        out.start_file(name, opts).unwrap();
        out.write_all(&payload).unwrap();
    }
    let mut bytes = out.finish().unwrap().into_inner();
    let (old, new) = (crc.to_le_bytes(), (!crc).to_le_bytes());
    let mut patched = 0;
    for i in 0..bytes.len() - 3 {
        if bytes[i..i + 4] == old {
            bytes[i..i + 4].copy_from_slice(&new);
            patched += 1;
        }
    }
    assert_eq!(
        patched, 2,
        "the CRC sits in the local and the central header"
    );
    bytes
}

/// A PNG whose header declares `width` x `height` RGB pixels, with a few bytes of image data.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc32fast::hash(&body).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0; 64]).unwrap();
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The fixture's first JPEG with the frame header's size set to `width` x `height`.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut b = std::fs::read(fixture("ppocr_cls/images_jpeg/sample_00.jpg")).unwrap();
    let sof = b
        .windows(2)
        .position(|w| w[0] == 0xff && matches!(w[1], 0xc0..=0xc2))
        .expect("a frame header");
    b[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    b
}

/// `qrange run` of a Relu model on 8x8 RGB over an image folder holding `file` = `bytes`.
fn big_image_case(dir: &Path, file: &str, bytes: Vec<u8>) -> Vec<String> {
    let args = image_case(dir, &[1, 3, 8, 8], "resize=8x8,scale=255", |_| {});
    std::fs::write(dir.join("imgs").join(file), bytes).unwrap();
    args
}

/// add_relu importing ai.onnx at `version`.
fn add_relu_opset(version: i64) -> proto::ModelProto {
    let mut m = add_relu();
    m.opset_import[0].version = Some(version);
    m
}

/// A model folder whose `test_data_set_0/input_0.pb` keeps its data at `location`
/// (beside it: a folder `sub/link` linking to `dir`, outside the data folder).
fn linked_pb_case(dir: &Path, location: &str) -> Vec<String> {
    let set = dir.join("td").join("test_data_set_0");
    std::fs::create_dir_all(set.join("sub")).unwrap();
    std::os::unix::fs::symlink(dir, set.join("sub/link")).unwrap();
    std::fs::write(dir.join("secret.bin"), 0.5f32.to_le_bytes().repeat(4)).unwrap();
    let kv = |k: &str, v: &str| proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let t = proto::TensorProto {
        name: Some("x".into()),
        dims: vec![1, 4],
        data_type: Some(1),
        data_location: Some(1),
        external_data: vec![kv("location", location)],
        ..Default::default()
    };
    std::fs::write(set.join("input_0.pb"), t.encode_to_vec()).unwrap();
    let m = dir.join("model.onnx");
    write_proto(&m, &add_relu());
    vec![
        "run".into(),
        s(&m),
        "--data".into(),
        s(&dir.join("td")),
        "-o".into(),
        s(&dir.join("out.npz")),
    ]
}

const H: i64 = 1 << 40;

/// `qrange quantize --mode weight-only` of add_relu with `extra` flags.
fn weight_only_case(dir: &Path, extra: &[&str]) -> Vec<String> {
    let m = dir.join("model.onnx");
    write_proto(&m, &add_relu());
    let mut args = vec!["quantize".into(), s(&m)];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["-o".to_string(), s(&dir.join("out.onnx"))]);
    args
}

/// `quantize` of the test CNN with its calibration data and `extra`.
fn static_grid_case(dir: &Path, extra: &[&str]) -> Vec<String> {
    let (m, c, _) = tiny_cnn_in(dir);
    let mut args = vec!["quantize".into(), m, "--calib".into(), c];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["-o".to_string(), s(&dir.join("out.onnx"))]);
    args
}

const CASES: &[Case] = &[
    Case {
        name: "npz with a wrong dtype",
        setup: |d| {
            let t = qrange::ir::Tensor::I32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 1, 4])));
            run_case(d, vec![("x", t)])
        },
        code: 2,
        expect: &["data.npz", "'x'", "i32", "f32"],
    },
    Case {
        name: "npz with a wrong shape",
        setup: |d| run_case(d, vec![("x", f32_filled(&[2, 1, 5], 1.0))]),
        code: 2,
        expect: &["data.npz", "'x'"],
    },
    Case {
        name: "npz missing the model input",
        setup: |d| run_case(d, vec![("label", f32_filled(&[2], 1.0))]),
        code: 2,
        expect: &["data.npz", "'x'"],
    },
    Case {
        name: "npz with NaN",
        setup: |d| run_case(d, vec![("x", f32_filled(&[1, 1, 4], f32::NAN))]),
        code: 2,
        expect: &["data.npz", "'x'", "NaN"],
    },
    Case {
        name: "quantize: NaN in a calibration sample",
        setup: |d| quantize_nan_case(d, 3),
        code: 2,
        expect: &["calib.npz", "'x'", "sample 3", "NaN"],
    },
    Case {
        name: "quantize: NaN in a held-back validation sample",
        setup: |d| quantize_nan_case(d, 9),
        code: 2,
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
        code: 2,
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
        code: 2,
        expect: &["'relu'", "FancyRelu"],
    },
    Case {
        name: "pin of an input that does not exist",
        setup: |d| {
            let mut a = run_case(d, vec![("x", f32_filled(&[1, 1, 4], 1.0))]);
            a.extend(["--pin".into(), "sr=16000".into()]);
            a
        },
        code: 2,
        expect: &["--pin", "'sr'"],
    },
    Case {
        name: "missing model file",
        setup: |d| convert_args(d, &d.join("nope.onnx")),
        code: 2,
        expect: &["nope.onnx", "No such file"],
    },
    Case {
        name: "empty file",
        setup: |d| {
            let p = d.join("empty.onnx");
            std::fs::write(&p, b"").unwrap();
            convert_args(d, &p)
        },
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
        expect: &["dup.onnx", "'y'", "'relu'", "'relu2'"],
    },
    Case {
        name: "missing external data file",
        setup: |d| {
            let p = with_ext_data(d, "weights.bin", 0, 16, false);
            convert_args(d, &p)
        },
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "weights.bin"],
    },
    Case {
        name: "external data offset past end",
        setup: |d| {
            let p = with_ext_data(d, "weights.bin", 4096, 16, true);
            convert_args(d, &p)
        },
        code: 2,
        expect: &["tensor 'b'", "offset 4096", "past the end"],
    },
    Case {
        name: "external data length past end",
        setup: |d| {
            let p = with_ext_data(d, "weights.bin", 8, 16, true);
            convert_args(d, &p)
        },
        code: 2,
        expect: &["tensor 'b'", "past the end"],
    },
    Case {
        name: "external data outside the model directory",
        setup: |d| {
            let p = with_ext_data(d, "../weights.bin", 0, 16, true);
            convert_args(d, &p)
        },
        code: 2,
        expect: &["tensor 'b'", "relative path inside"],
    },
    Case {
        name: "output in a missing directory",
        setup: |d| {
            let p = d.join("ok.onnx");
            write_proto(&p, &add_relu());
            vec!["convert".into(), s(&p), s(&d.join("no/such/dir/out.onnx"))]
        },
        code: 2,
        expect: &["no/such/dir", "does not exist"],
    },
    Case {
        name: "output path equal to input",
        setup: |d| {
            let p = d.join("same.onnx");
            write_proto(&p, &add_relu());
            vec!["convert".into(), s(&p), s(&p)]
        },
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
        expect: &["different inputs", "'x'", "b.onnx"],
    },
    Case {
        name: "compare: test model with another input type",
        setup: |d| {
            let mut m = add_relu();
            m.graph.as_mut().unwrap().input[0] = vi("x", 11, &[1, 4]);
            compare_case(d, &m, vec![("x", f32_filled(&[2, 1, 4], 1.0))], &[])
        },
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
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
        code: 2,
        expect: &["bad.png", "cannot decode PNG"],
    },
    Case {
        name: "file named .png that is no image",
        setup: |d| {
            image_case(d, &[1, 3, 2, 2], "scale=255", |imgs| {
                std::fs::write(imgs.join("fake.png"), b"hello").unwrap();
            })
        },
        code: 2,
        expect: &["fake.png", "not a PNG or JPEG"],
    },
    Case {
        name: "RGB preprocessing for a one-channel model input",
        setup: |d| image_case(d, &[1, 1, 2, 2], "scale=255", |_| {}),
        code: 2,
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
        code: 2,
        expect: &["wide.png", "'x'", "3x2", "add resize"],
    },
    Case {
        name: "resize against a fixed model size",
        setup: |d| image_case(d, &[1, 3, 2, 2], "resize=4x2", |_| {}),
        code: 2,
        expect: &["'x'", "resize=4x2", "width 4", "expects 2"],
    },
    Case {
        name: "bad --preprocess syntax",
        setup: |d| image_case(d, &[1, 3, 2, 2], "resize=2,scale=255", |_| {}),
        code: 2,
        expect: &[
            "--preprocess 'resize=2,scale=255'",
            "resize wants WIDTHxHEIGHT",
        ],
    },
    Case {
        name: "unknown --preprocess key",
        setup: |d| image_case(d, &[1, 3, 2, 2], "scale=255,norm=1", |_| {}),
        code: 2,
        expect: &["--preprocess", "unknown key 'norm'"],
    },
    Case {
        name: "--preprocess for data that is not an image folder",
        setup: |d| {
            let mut a = run_case(d, vec![("x", f32_filled(&[2, 1, 4], 1.0))]);
            a.extend(["--preprocess".into(), "scale=255".into()]);
            a
        },
        code: 2,
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
        code: 2,
        expect: &["imgs", "2 inputs", "'x', 'z'", "input=NAME"],
    },
    Case {
        name: "initializer dims whose product overflows (inspect)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "inspect"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "initializer dims whose product overflows (lint)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "lint"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "initializer dims whose product overflows (convert)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "convert"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "initializer dims whose product overflows (run)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "run"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "initializer dims whose product overflows (quantize)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "quantize"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "initializer dims whose product overflows (calibrate)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "calibrate"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "initializer dims whose product overflows (compare)",
        setup: |d| command_on(d, &add_relu_dims(&[H, H]), "compare"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "[1099511627776, 1099511627776]", "more elements than memory can address"],
    },
    Case {
        name: "external initializer dims whose product overflows (convert)",
        setup: |d| {
            let m = ext_dims(d, &[H, H]);
            command_on(d, &m, "convert")
        },
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "no byte size"],
    },
    Case {
        name: "external initializer dims whose product overflows (quantize)",
        setup: |d| {
            let m = ext_dims(d, &[H, H]);
            command_on(d, &m, "quantize")
        },
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "no byte size"],
    },
    Case {
        name: "initializer with a negative dimension",
        setup: |d| command_on(d, &add_relu_dims(&[-1, -4]), "convert"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "negative dimension"],
    },
    Case {
        name: "raw_data shorter than the dims (convert)",
        setup: |d| command_on(d, &add_relu_dims(&[1, 5]), "convert"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "raw_data holds 16 bytes", "need 20"],
    },
    Case {
        name: "raw_data shorter than the dims (quantize: calibration path)",
        setup: |d| command_on(d, &add_relu_dims(&[1, 5]), "quantize"),
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "raw_data holds 16 bytes", "need 20"],
    },
    Case {
        name: "int4 initializer with too few int32_data entries",
        setup: |d| {
            let mut m = add_relu();
            m.graph.as_mut().unwrap().initializer.push(proto::TensorProto {
                name: Some("w4".into()),
                dims: vec![8],
                data_type: Some(22),
                int32_data: vec![1],
                ..Default::default()
            });
            command_on(d, &m, "inspect")
        },
        code: 2,
        expect: &["model.onnx", "tensor 'w4'", "int32_data holds 1 entries", "need 4"],
    },
    Case {
        name: "external data through a symbolic link out of the model folder (convert --inline)",
        setup: |d| {
            let m = linked_model(d, "sub/link/secret.bin");
            vec!["convert".into(), s(&m), s(&d.join("out.onnx")), "--inline".into()]
        },
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "'sub/link/secret.bin'", "outside"],
    },
    Case {
        name: "external data through a symbolic link out of the model folder (run)",
        setup: |d| {
            let m = linked_model(d, "sub/link/secret.bin");
            let data = d.join("data.npz");
            write_npz_arrays(&data, vec![("x", f32_filled(&[1, 1, 4], 0.25))]);
            vec!["run".into(), s(&m), "--data".into(), s(&data), "-o".into(), s(&d.join("out.npz"))]
        },
        code: 2,
        expect: &["model.onnx", "tensor 'b'", "'sub/link/secret.bin'", "outside"],
    },
    Case {
        name: "external data at an absolute location",
        setup: |d| {
            let p = with_ext_data(d, &s(&d.join("weights.bin")), 0, 16, true);
            convert_args(d, &p)
        },
        code: 2,
        expect: &["tensor 'b'", "relative path inside"],
    },
    Case {
        name: "external data location naming a folder",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            let p = with_ext_data(d, "sub", 0, 16, false);
            convert_args(d, &p)
        },
        code: 2,
        expect: &["tensor 'b'", "'sub'", "not a regular file"],
    },
    Case {
        name: "test_data_set tensor whose external data goes through a symbolic link out of its folder",
        setup: |d| linked_pb_case(d, "sub/link/secret.bin"),
        code: 2,
        expect: &["input_0.pb", "'sub/link/secret.bin'", "outside"],
    },
    Case {
        name: "PNG header declaring 100000x100000 pixels",
        setup: |d| big_image_case(d, "huge.png", png_header_only(100_000, 100_000)),
        code: 2,
        expect: &["huge.png", "100000x100000", "larger than qrange decodes", "64 megapixels"],
    },
    Case {
        name: "JPEG header declaring 16000x16000 pixels",
        setup: |d| big_image_case(d, "big.jpg", jpeg_declaring(16_000, 16_000)),
        code: 2,
        expect: &["big.jpg", "16000x16000", "larger than qrange decodes"],
    },
    Case {
        name: ".npz stored member with a damaged byte (bad CRC)",
        setup: |d| damaged_npz_case(d, flip_data_byte),
        code: 2,
        expect: &["data.npz", "'x'", "x.npy", "CRC-32"],
    },
    Case {
        name: ".npz deflated member with a bad CRC",
        setup: |d| damaged_npz_case(d, deflated_with_bad_crc),
        code: 2,
        expect: &["data.npz", "'x'", "x.npy", "CRC-32"],
    },
    Case {
        name: ".npz deflated member with a bad CRC (quantize, read by worker threads)",
        setup: |d| {
            let mut a = quantize_nan_case(d, 0);
            let data = d.join("calib.npz");
            write_npz_arrays(&data, vec![("x", f32_filled(&[10, 1, 4], 0.25))]);
            let bytes = std::fs::read(&data).unwrap();
            std::fs::write(&data, deflated_with_bad_crc(bytes)).unwrap();
            a.push("--no-validate".into());
            a
        },
        code: 2,
        expect: &["calib.npz", "'x'", "CRC-32"],
    },
    Case {
        name: ".npz labels member (read whole) with a bad CRC",
        setup: |d| {
            let a = compare_case(
                d,
                &add_relu(),
                vec![("x", f32_filled(&[2, 1, 4], 0.25)), ("label", labels(&[7, 9]))],
                &["--labels", "label"],
            );
            let data = d.join("data.npz");
            let mut b = std::fs::read(&data).unwrap();
            let seven_nine: Vec<u8> = [7i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
            let at = b.windows(16).position(|w| w == seven_nine).unwrap();
            b[at + 8] = 8;
            std::fs::write(&data, b).unwrap();
            a
        },
        code: 2,
        expect: &["data.npz", "'label'", "CRC-32"],
    },
    Case {
        name: "opset 99 (convert)",
        setup: |d| command_on(d, &add_relu_opset(99), "convert"),
        code: 2,
        expect: &["model.onnx", "ai.onnx opset 99", "newest opset qrange knows (28"],
    },
    Case {
        name: "opset 99 (quantize)",
        setup: |d| command_on(d, &add_relu_opset(99), "quantize"),
        code: 2,
        expect: &["model.onnx", "ai.onnx opset 99"],
    },
    Case {
        name: "opset 99 in a model-local function",
        setup: |d| {
            let mut m = add_relu();
            m.functions.push(proto::FunctionProto {
                name: Some("f".into()),
                domain: Some("local".into()),
                opset_import: vec![proto::OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(99),
                }],
                ..Default::default()
            });
            command_on(d, &m, "convert")
        },
        code: 2,
        expect: &["model.onnx", "opset 99", "local function 'f'"],
    },
    Case {
        name: "--exclude-nodes naming no node (quantize)",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--exclude-nodes", "relu,relu_1"]),
        code: 2,
        expect: &["model.onnx", "--exclude-nodes", "'relu_1'"],
    },
    Case {
        name: "--exclude-nodes naming no node (calibrate)",
        setup: |d| with_args(command_on(d, &add_relu(), "calibrate"), &["--exclude-nodes", "Add"]),
        code: 2,
        expect: &["model.onnx", "--exclude-nodes", "'Add'"],
    },
    Case {
        name: "--exclude-op-types naming an op type the model does not use",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--exclude-op-types", "Conv"]),
        code: 2,
        expect: &["--exclude-op-types", "'Conv'", "Add, Relu"],
    },
    Case {
        name: "--op-types naming an op type the model does not use",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--op-types", "Add,add"]),
        code: 2,
        expect: &["--op-types", "'add'"],
    },
    Case {
        name: "--dump-after naming no pass",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--dump-after", "plann"]),
        code: 2,
        expect: &["--dump-after", "'plann'", "valid names: pin_inputs"],
    },
    Case {
        name: "NaN in an intermediate activation (quantize)",
        setup: |d| nan_activation_case(d, "quantize"),
        code: 0,
        expect: &["tensor 'r'", "2 of 32", "2 NaN", "finite values only"],
    },
    Case {
        name: "NaN in an intermediate activation (calibrate)",
        setup: |d| nan_activation_case(d, "calibrate"),
        code: 0,
        expect: &["tensor 'r'", "2 of 40", "2 NaN", "finite values only"],
    },
    Case {
        name: "unknown op on the calibration path (quantize)",
        setup: |d| {
            let mut m = add_relu();
            let g = m.graph.as_mut().unwrap();
            g.node[1].op_type = Some("FancyRelu".into());
            g.node[1].domain = Some("com.example".into());
            m.opset_import.push(proto::OperatorSetIdProto {
                domain: Some("com.example".into()),
                version: Some(1),
            });
            command_on(d, &m, "quantize")
        },
        code: 2,
        expect: &["model.onnx", "calibration", "'relu'", "FancyRelu"],
    },
    Case {
        name: "unknown op on the calibration path (calibrate)",
        setup: |d| {
            let mut m = add_relu();
            let g = m.graph.as_mut().unwrap();
            g.node[1].op_type = Some("FancyRelu".into());
            g.node[1].domain = Some("com.example".into());
            m.opset_import.push(proto::OperatorSetIdProto {
                domain: Some("com.example".into()),
                version: Some(1),
            });
            command_on(d, &m, "calibrate")
        },
        code: 2,
        expect: &["model.onnx", "'relu'", "FancyRelu"],
    },
    Case {
        name: "--mode dynamic with a goal (nothing is searched)",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--mode", "dynamic", "--target-sqnr", "20"]),
        code: 2,
        expect: &["--target-sqnr", "--mode dynamic", "run time"],
    },
    Case {
        name: "--mode dynamic with a ranges file (nothing is calibrated)",
        setup: |d| {
            let mut v = command_on(d, &add_relu(), "quantize");
            v.drain(2..4);
            with_args(v, &["--mode", "dynamic", "--ranges", "r.json"])
        },
        code: 2,
        expect: &["--ranges", "--mode dynamic"],
    },
    Case {
        name: "--mode dynamic for TensorRT (no integer ops there)",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--mode", "dynamic", "--target", "tensorrt"]),
        code: 2,
        expect: &["--mode dynamic", "--target tensorrt", "DynamicQuantizeLinear"],
    },
    Case {
        name: "--mode with an unknown value",
        setup: |d| with_args(command_on(d, &add_relu(), "quantize"), &["--mode", "qat"]),
        code: 2,
        expect: &["--mode", "'qat'"],
    },
    Case {
        name: "missing required attribute (Cast without 'to', quantize)",
        setup: |d| command_on(d, &op_then_relu("Cast", vec![]), "quantize"),
        code: 2,
        expect: &["model.onnx", "bad_op", "'to'"],
    },
    Case {
        name: "Transpose permutation naming a missing axis (the engine would panic)",
        setup: |d| command_on(d, &op_then_relu("Transpose", vec![ints_attr("perm", &[5, 0])]), "run"),
        code: 2,
        expect: &["model.onnx", "cannot handle this model", "index out of bounds"],
    },
    Case {
        name: "MaxPool with a zero kernel (the engine would panic)",
        setup: |d| {
            let mut m = op_then_relu("MaxPool", vec![ints_attr("kernel_shape", &[0, 0])]);
            let g = m.graph.as_mut().unwrap();
            g.input[0] = vi("x", 1, &[1, 1, 2, 2]);
            g.output[0] = vi("y", 1, &[1, 1, 2, 2]);
            let data = d.join("data.npz");
            let a = command_on(d, &m, "quantize");
            write_npz_arrays(&data, vec![("x", f32_filled(&[4, 1, 1, 2, 2], 0.25))]);
            a
        },
        code: 2,
        expect: &["model.onnx", "cannot handle this model"],
    },
    Case {
        name: "--save-overrides onto the input model",
        setup: |d| {
            quantize_tiny(
                d,
                &[
                    "-o",
                    "{d}/out.onnx",
                    "--target-sqnr",
                    "20",
                    "--save-overrides",
                    "{d}/tiny_cnn.onnx",
                ],
            )
        },
        code: 2,
        expect: &["--save-overrides", "is the model", "refusing to overwrite"],
    },
    Case {
        name: "--sensitivity-cache onto the input model",
        setup: |d| {
            quantize_tiny(
                d,
                &[
                    "-o",
                    "{d}/out.onnx",
                    "--target-sqnr",
                    "20",
                    "--sensitivity-cache",
                    "{d}/tiny_cnn.onnx",
                ],
            )
        },
        code: 2,
        expect: &["--sensitivity-cache", "is the model"],
    },
    Case {
        name: "-o onto the calibration data",
        setup: |d| quantize_tiny(d, &["-o", "{d}/tiny_cnn.npz"]),
        code: 2,
        expect: &["-o", "is the --calib data"],
    },
    Case {
        name: "--report onto the evaluation data",
        setup: |d| {
            quantize_tiny(
                d,
                &["-o", "{d}/out.onnx", "--report", "{d}/tiny_cnn.eval.npz"],
            )
        },
        code: 2,
        expect: &["--report", "is the --eval data"],
    },
    Case {
        name: "--save-overrides onto the evaluation data through another spelling",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            quantize_tiny(
                d,
                &[
                    "-o",
                    "{d}/out.onnx",
                    "--max-drop",
                    "1",
                    "--save-overrides",
                    "{d}/./sub/../tiny_cnn.eval.npz",
                ],
            )
        },
        code: 2,
        expect: &["--save-overrides", "is the --eval data"],
    },
    Case {
        name: "--save-overrides X -o X",
        setup: |d| {
            quantize_tiny(
                d,
                &[
                    "-o",
                    "{d}/out.onnx",
                    "--target-sqnr",
                    "20",
                    "--save-overrides",
                    "{d}/out.onnx",
                ],
            )
        },
        code: 2,
        expect: &["--save-overrides", "is also where -o goes"],
    },
    Case {
        name: "--report onto -o",
        setup: |d| quantize_tiny(d, &["-o", "{d}/out.onnx", "--report", "{d}/out.onnx"]),
        code: 2,
        expect: &["--report", "is also where -o goes"],
    },
    Case {
        name: "--report onto the default overrides sidecar",
        setup: |d| {
            quantize_tiny(
                d,
                &[
                    "-o",
                    "{d}/out.onnx",
                    "--target-sqnr",
                    "20",
                    "--report",
                    "{d}/out.overrides.json",
                ],
            )
        },
        code: 2,
        expect: &["is also where --report goes"],
    },
    Case {
        name: "--report into a missing folder",
        setup: |d| quantize_tiny(d, &["-o", "{d}/out.onnx", "--report", "{d}/missing/r.html"]),
        code: 2,
        expect: &["--report", "does not exist"],
    },
    Case {
        name: "--report onto a folder",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            quantize_tiny(d, &["-o", "{d}/out.onnx", "--report", "{d}/sub"])
        },
        code: 2,
        expect: &["--report", "is a folder"],
    },
    Case {
        name: "--save-overrides without a goal",
        setup: |d| quantize_tiny(d, &["-o", "{d}/out.onnx", "--save-overrides", "{d}/o.json"]),
        code: 2,
        expect: &["--save-overrides", "needs --target-sqnr"],
    },
    Case {
        name: "-o into a missing folder",
        setup: |d| quantize_tiny(d, &["-o", "{d}/missing/out.onnx"]),
        code: 2,
        expect: &["-o", "does not exist"],
    },
    Case {
        name: "-o onto a FIFO",
        setup: |d| {
            let st = Command::new("mkfifo").arg(d.join("fifo")).status().unwrap();
            assert!(st.success());
            convert_to(d, "fifo")
        },
        code: 2,
        expect: &["is a FIFO"],
    },
    Case {
        name: "-o onto a character device through a symbolic link",
        setup: |d| {
            std::os::unix::fs::symlink("/dev/null", d.join("null.onnx")).unwrap();
            quantize_tiny(d, &["-o", "{d}/null.onnx"])
        },
        code: 2,
        expect: &["is a character device"],
    },
    Case {
        name: "-o onto a folder",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            convert_to(d, "sub")
        },
        code: 2,
        expect: &["is a folder"],
    },
    Case {
        name: "-o onto a hard link of the input model",
        setup: |d| {
            let (m, _, _) = tiny_cnn_in(d);
            std::fs::hard_link(&m, d.join("same.onnx")).unwrap();
            convert_to(d, "same.onnx")
        },
        code: 2,
        expect: &["is the input model"],
    },
    Case {
        name: "convert: b.onnx next to a.onnx whose external data is b.onnx.data",
        setup: |d| {
            let a = external_named_b(d);
            vec!["convert".into(), s(&a), s(&d.join("b.onnx"))]
        },
        code: 2,
        expect: &["b.onnx.data", "external data of the input model"],
    },
    Case {
        name: "quantize: -o b.onnx next to a.onnx whose external data is b.onnx.data",
        setup: |d| {
            let a = external_named_b(d);
            vec![
                "quantize".into(),
                s(&a),
                "--calib".into(),
                "random:4".into(),
                "-o".into(),
                s(&d.join("b.onnx")),
            ]
        },
        code: 2,
        expect: &["b.onnx.data", "external data of the model"],
    },
    Case {
        name: "run: -o onto the data",
        setup: |d| {
            let (m, c, _) = tiny_cnn_in(d);
            vec!["run".into(), m, "--data".into(), c.clone(), "-o".into(), c]
        },
        code: 2,
        expect: &["is the --data"],
    },
    Case {
        name: "calibrate: -o onto the model's external data",
        setup: |d| {
            let a = external_named_b(d);
            vec![
                "calibrate".into(),
                s(&a),
                "--calib".into(),
                "random:2".into(),
                "-o".into(),
                s(&d.join("b.onnx.data")),
            ]
        },
        code: 2,
        expect: &["is external data of the model"],
    },
    Case {
        name: "merge: -o onto one of the merged files",
        setup: |d| {
            std::fs::write(d.join("s1.json"), "{}").unwrap();
            std::fs::write(d.join("s2.json"), "{}").unwrap();
            vec![
                "merge".into(),
                s(&d.join("s1.json")),
                s(&d.join("s2.json")),
                "-o".into(),
                s(&d.join("s2.json")),
            ]
        },
        code: 2,
        expect: &["is a merged statistics file"],
    },
    Case {
        name: "compare: --report onto the test model",
        setup: |d| {
            let (m, c, _) = tiny_cnn_in(d);
            vec![
                "compare".into(),
                m.clone(),
                m.clone(),
                "--data".into(),
                c,
                "--report".into(),
                m,
            ]
        },
        code: 2,
        expect: &["--report", "is the reference model"],
    },
    Case {
        name: "weight-only: block size not a power of two",
        setup: |d| weight_only_case(d, &["--mode", "weight-only", "--block-size", "24"]),
        code: 2,
        expect: &["--block-size 24", "power of two"],
    },
    Case {
        name: "weight-only: block size below 16",
        setup: |d| weight_only_case(d, &["--mode", "weight-only", "--block-size", "8"]),
        code: 2,
        expect: &["--block-size 8", "at least 16"],
    },
    Case {
        name: "weight-only: 3-bit weights",
        setup: |d| weight_only_case(d, &["--mode", "weight-only", "--weight-bits", "3"]),
        code: 2,
        expect: &["--weight-bits 3", "4 or 8"],
    },
    Case {
        name: "weight-only: GPTQ without calibration data",
        setup: |d| weight_only_case(d, &["--mode", "weight-only", "--weight-algo", "gptq"]),
        code: 2,
        expect: &["--weight-algo gptq", "--calib"],
    },
    Case {
        name: "weight-only: zero points for TensorRT",
        setup: |d| {
            weight_only_case(d, &["--mode", "weight-only", "--target", "tensorrt"])
        },
        code: 2,
        expect: &["--target tensorrt", "--weight-symmetric"],
    },
    Case {
        name: "weight-only flag without --mode weight-only",
        setup: |d| weight_only_case(d, &["--weight-algo", "clip"]),
        code: 2,
        expect: &["--weight-algo", "--mode weight-only"],
    },
    Case {
        name: "static: 9-bit weights",
        setup: |d| static_grid_case(d, &["--weight-bits", "9"]),
        code: 2,
        expect: &["--weight-bits 9", "2 to 8"],
    },
    Case {
        name: "static: 1-bit k-means codebook",
        setup: |d| static_grid_case(d, &["--weight-grid", "kmeans", "--weight-bits", "1"]),
        code: 2,
        expect: &["--weight-bits 1", "2 to 8"],
    },
    Case {
        name: "static: power-of-two levels beyond the int8 grid",
        setup: |d| static_grid_case(d, &["--weight-grid", "pow2", "--weight-bits", "5"]),
        code: 2,
        expect: &["--weight-grid pow2", "2 to 4", "not 5"],
    },
    Case {
        name: "static: a codebook per tensor",
        setup: |d| static_grid_case(d, &["--weight-grid", "kmeans", "--weight-bits", "4", "--per-tensor"]),
        code: 2,
        expect: &["--weight-grid kmeans", "--per-tensor"],
    },
    Case {
        name: "adaround budget without --rounding adaround",
        setup: |d| static_grid_case(d, &["--adaround-iters", "10"]),
        code: 2,
        expect: &["--adaround-iters", "--rounding adaround"],
    },
    Case {
        name: "adaround on a codebook grid",
        setup: |d| static_grid_case(d, &["--rounding", "adaround", "--weight-grid", "kmeans", "--weight-bits", "4"]),
        code: 2,
        expect: &["--rounding adaround", "--weight-grid kmeans"],
    },
    Case {
        name: "adaround with no iterations",
        setup: |d| static_grid_case(d, &["--rounding", "adaround", "--adaround-iters", "0"]),
        code: 2,
        expect: &["--adaround-iters", "at least 1"],
    },
    Case {
        name: "adaround with no passes",
        setup: |d| static_grid_case(d, &["--rounding", "adaround", "--adaround-passes", "0"]),
        code: 2,
        expect: &["--adaround-passes", "at least 1"],
    },
    Case {
        name: "adaround with a size budget",
        setup: |d| static_grid_case(d, &["--rounding", "adaround", "--size-budget", "0.01"]),
        code: 2,
        expect: &["--rounding adaround", "--size-budget"],
    },
    Case {
        name: "adaround outside the static mode",
        setup: |d| weight_only_case(d, &["--mode", "dynamic", "--rounding", "adaround"]),
        code: 2,
        expect: &["--rounding adaround", "--mode static"],
    },
    Case {
        name: "codebook weights in dynamic mode",
        setup: |d| weight_only_case(d, &["--mode", "dynamic", "--weight-grid", "kmeans"]),
        code: 2,
        expect: &["--weight-grid", "static mode"],
    },
    Case {
        name: "codebook weights in weight-only mode",
        setup: |d| weight_only_case(d, &["--mode", "weight-only", "--weight-grid", "pow2"]),
        code: 2,
        expect: &["--weight-grid", "static mode"],
    },
    Case {
        name: "smoothing strength above 1",
        setup: |d| weight_only_case(d, &["--smooth", "1.5", "--calib", "random:2"]),
        code: 2,
        expect: &["--smooth 1.5", "[0, 1]"],
    },
    Case {
        name: "smoothing strength not a number",
        setup: |d| weight_only_case(d, &["--smooth", "strong", "--calib", "random:2"]),
        code: 2,
        expect: &["--smooth strong", "`off`"],
    },
    Case {
        name: "smoothing with --mode dynamic",
        setup: |d| weight_only_case(d, &["--mode", "dynamic", "--smooth", "0.5"]),
        code: 2,
        expect: &["--smooth", "--mode static"],
    },
    Case {
        name: "equalization with --mode dynamic",
        setup: |d| weight_only_case(d, &["--mode", "dynamic", "--equalize", "on"]),
        code: 2,
        expect: &["--equalize", "--mode static"],
    },
    Case {
        name: "equalization with a ranges file",
        setup: |d| weight_only_case(d, &["--ranges", "r.json", "--equalize", "on"]),
        code: 2,
        expect: &["--equalize", "--ranges"],
    },
    Case {
        name: "bias correction with --mode weight-only",
        setup: |d| weight_only_case(d, &["--mode", "weight-only", "--bias-correction"]),
        code: 2,
        expect: &["--bias-correction", "--mode static"],
    },
    Case {
        name: "bias correction with a ranges file",
        setup: |d| weight_only_case(d, &["--ranges", "r.json", "--bias-correction"]),
        code: 2,
        expect: &["--bias-correction", "--calib DATA"],
    },
];

/// A file system node: its path, kind and content (files only).
type Entry = (PathBuf, String, Vec<u8>);

/// Every node in `dir` (recursively, links not followed): its kind and content.
fn snapshot_dir(dir: &Path) -> Vec<Entry> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::symlink_metadata(&p).unwrap().file_type();
        if t.is_dir() {
            v.push((p.clone(), "dir".into(), Vec::new()));
            v.extend(snapshot_dir(&p));
        } else if t.is_file() {
            v.push((p.clone(), "file".into(), std::fs::read(&p).unwrap()));
        } else {
            v.push((p, format!("{t:?}"), Vec::new()));
        }
    }
    v.sort();
    v
}

/// What is wrong with the outcome of case `c` (empty when it is as stated).
fn judge(c: &Case, r: &Run, before: &[Entry], after: &[Entry]) -> Vec<String> {
    let lines: Vec<&str> = r.stderr.lines().collect();
    let mut why = Vec::new();
    if r.code != c.code {
        why.push(format!("exit code {} (want {})", r.code, c.code));
    }
    if r.stderr.contains("panicked") {
        why.push("panicked".into());
    }
    let has_all = |l: &str| c.expect.iter().all(|e| l.contains(e));
    if c.code == 2 {
        let first = lines.first().copied().unwrap_or("");
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
        if !r.stdout.is_empty() {
            why.push(format!("printed a result: {:?}", r.stdout));
        }
        if before != after {
            why.push("files in the directory changed (partial output or input modified)".into());
        }
    } else {
        if !lines
            .iter()
            .any(|l| l.starts_with("warning: ") && has_all(l))
        {
            why.push(format!("no warning line holds all of {:?}", c.expect));
        }
        let kept = before
            .iter()
            .all(|(p, k, b)| after.iter().any(|(q, j, a)| p == q && k == j && a == b));
        if !kept {
            why.push("an input file changed".into());
        }
    }
    why
}

/// The command of a case as a user would type it: `$DIR` for its temporary folder,
/// paths of the repository relative to it.
fn command_text(args: &[String], dir: &Path) -> String {
    let root = format!("{}/", repo_root().display());
    let words: Vec<String> = std::iter::once("qrange".to_string())
        .chain(args.iter().map(|a| {
            a.replace(&dir.display().to_string(), "$DIR")
                .replace(&root, "")
        }))
        .collect();
    words.join(" ")
}

/// The Markdown table of every case (see `tests/bad_input/README.md`).
fn table(rows: &[(&Case, String)]) -> String {
    let mut t = String::from(
        "# Bad inputs\n\n\
         Every bad input `tests/bad_input.rs` tries, generated in a temporary folder (`$DIR`) by the\n\
         test, with the command run on it, the exit code it must give and the text its `error:` line\n\
         (exit 2) or one `warning:` line (exit 0) must contain. An error is always one line on\n\
         stderr, with no panic, no output file left and inputs untouched. The test renders this\n\
         table from its rows and fails when the two differ (`QRANGE_WRITE_TABLE=1 cargo test --test\n\
         bad_input` rewrites it).\n\n\
         | # | bad input | command | exit | message contains |\n\
         |---|---|---|---|---|\n",
    );
    for (i, (c, cmd)) in rows.iter().enumerate() {
        let expect: Vec<String> = c
            .expect
            .iter()
            .map(|e| format!("`{}`", e.replace('|', "\\|")))
            .collect();
        t.push_str(&format!(
            "| {} | {} | `{}` | {} | {} |\n",
            i + 1,
            c.name.replace('|', "\\|"),
            cmd.replace('|', "\\|"),
            c.code,
            expect.join(" ")
        ));
    }
    t
}

#[test]
fn every_bad_input_is_a_clean_error() {
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for c in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let args = (c.setup)(&dir);
        let before = snapshot_dir(&dir);
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let r = qrange(&argv);
        let after = snapshot_dir(&dir);
        let why = judge(c, &r, &before, &after);
        if !why.is_empty() {
            failures.push(format!(
                "{}: {} — stderr: {}",
                c.name,
                why.join("; "),
                r.stderr.trim()
            ));
        }
        rows.push((c, command_text(&args, &dir)));
    }
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device(),
        "/dev/null is no longer a character device"
    );
    assert!(CASES.len() >= 100);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    let path = repo_root().join("tests/bad_input/README.md");
    let rendered = table(&rows);
    if std::env::var_os("QRANGE_WRITE_TABLE").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{} does not match the cases; rerun with QRANGE_WRITE_TABLE=1 to rewrite it",
        path.display()
    );
}

/// Standard output closed by its reader (`qrange inspect m.onnx | head -1`, `qrange passes |
/// head -1`) ends the command quietly instead of a panic. A `--dump-after` dump it cannot
/// take ends the dumps, not the run: the model is still written.
#[test]
fn closed_stdout_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let stopped = dir.path().join("stopped.onnx");
    let quantize = |o: &Path, extra: &[&str]| {
        let mut v = vec![
            "quantize".to_string(),
            s(&fixture("tiny/tiny_cnn.onnx")),
            "--calib".into(),
            s(&fixture("tiny/tiny_cnn.npz")),
            "--no-validate".into(),
            "-o".into(),
            s(o),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let runs: Vec<(Vec<String>, Option<&Path>)> = vec![
        (
            vec!["inspect".into(), s(&fixture("ppocr_cls/model.onnx"))],
            None,
        ),
        (vec!["passes".into()], None),
        (
            quantize(
                &out,
                &["--dump-after", "plan", "--dump-after", "insert_qdq"],
            ),
            Some(&out),
        ),
        (quantize(&stopped, &["--stop-after", "plan"]), None),
    ];
    for (args, writes) in runs {
        // The reading end is closed before the command starts: every write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_qrange"))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        assert_eq!(run.status.code(), Some(0), "{args:?}: {stderr}");
        if let Some(path) = writes {
            let m = qrange::onnx::read_model(path).unwrap();
            let g = &m.graph;
            assert!(
                g.ops().any(|o| g.op(o).op_type == "QuantizeLinear"),
                "{args:?}: the model written is not quantized"
            );
        }
    }
    assert!(!stopped.exists(), "--stop-after writes nothing");
}
