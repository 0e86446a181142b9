//! No command damages a file: every output path is checked against every input and every
//! other output before any work, special files are refused, outputs get the umask's mode
//! (a replaced file keeps its own), symbolic links are written through, and SIGINT/SIGTERM
//! leave neither a temporary file nor a partial output.

mod common;

use common::*;
use prost::Message;
use qrange::onnx::proto;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A refused command: what it is, how to set it up, what the one error line says.
struct Case {
    name: &'static str,
    /// Builds the files in `dir` and returns the qrange arguments.
    setup: fn(&Path) -> Vec<String>,
    expect: &'static [&'static str],
}

/// tiny_cnn and its calibration/evaluation data in `dir`.
fn tiny(dir: &Path) -> (String, String, String) {
    for f in ["tiny_cnn.onnx", "tiny_cnn.npz", "tiny_cnn.eval.npz"] {
        std::fs::copy(fixture(&format!("tiny/{f}")), dir.join(f)).unwrap();
    }
    (
        s(&dir.join("tiny_cnn.onnx")),
        s(&dir.join("tiny_cnn.npz")),
        s(&dir.join("tiny_cnn.eval.npz")),
    )
}

fn quantize(dir: &Path, extra: &[&str]) -> Vec<String> {
    let (m, c, e) = tiny(dir);
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
    let (m, _, _) = tiny(dir);
    vec!["convert".into(), m, s(&dir.join(out))]
}

const CASES: &[Case] = &[
    Case {
        name: "--save-overrides onto the input model",
        setup: |d| {
            quantize(
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
        expect: &["--save-overrides", "is the model", "refusing to overwrite"],
    },
    Case {
        name: "--sensitivity-cache onto the input model",
        setup: |d| {
            quantize(
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
        expect: &["--sensitivity-cache", "is the model"],
    },
    Case {
        name: "-o onto the calibration data",
        setup: |d| quantize(d, &["-o", "{d}/tiny_cnn.npz"]),
        expect: &["-o", "is the --calib data"],
    },
    Case {
        name: "--report onto the evaluation data",
        setup: |d| {
            quantize(
                d,
                &["-o", "{d}/out.onnx", "--report", "{d}/tiny_cnn.eval.npz"],
            )
        },
        expect: &["--report", "is the --eval data"],
    },
    Case {
        name: "--save-overrides onto the evaluation data through another spelling",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            quantize(
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
        expect: &["--save-overrides", "is the --eval data"],
    },
    Case {
        name: "--save-overrides X -o X",
        setup: |d| {
            quantize(
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
        expect: &["--save-overrides", "is also where -o goes"],
    },
    Case {
        name: "--report onto -o",
        setup: |d| quantize(d, &["-o", "{d}/out.onnx", "--report", "{d}/out.onnx"]),
        expect: &["--report", "is also where -o goes"],
    },
    Case {
        name: "--report onto the default overrides sidecar",
        setup: |d| {
            quantize(
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
        expect: &["is also where --report goes"],
    },
    Case {
        name: "--report into a missing folder",
        setup: |d| quantize(d, &["-o", "{d}/out.onnx", "--report", "{d}/missing/r.html"]),
        expect: &["--report", "does not exist"],
    },
    Case {
        name: "--report onto a folder",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            quantize(d, &["-o", "{d}/out.onnx", "--report", "{d}/sub"])
        },
        expect: &["--report", "is a folder"],
    },
    Case {
        name: "--save-overrides without a goal",
        setup: |d| quantize(d, &["-o", "{d}/out.onnx", "--save-overrides", "{d}/o.json"]),
        expect: &["--save-overrides", "needs --target-sqnr"],
    },
    Case {
        name: "-o into a missing folder",
        setup: |d| quantize(d, &["-o", "{d}/missing/out.onnx"]),
        expect: &["-o", "does not exist"],
    },
    Case {
        name: "-o onto a FIFO",
        setup: |d| {
            let st = Command::new("mkfifo").arg(d.join("fifo")).status().unwrap();
            assert!(st.success());
            convert_to(d, "fifo")
        },
        expect: &["is a FIFO"],
    },
    Case {
        name: "-o onto a character device through a symbolic link",
        setup: |d| {
            std::os::unix::fs::symlink("/dev/null", d.join("null.onnx")).unwrap();
            quantize(d, &["-o", "{d}/null.onnx"])
        },
        expect: &["is a character device"],
    },
    Case {
        name: "-o onto a folder",
        setup: |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            convert_to(d, "sub")
        },
        expect: &["is a folder"],
    },
    Case {
        name: "-o onto a hard link of the input model",
        setup: |d| {
            let (m, _, _) = tiny(d);
            std::fs::hard_link(&m, d.join("same.onnx")).unwrap();
            convert_to(d, "same.onnx")
        },
        expect: &["is the input model"],
    },
    Case {
        name: "convert: b.onnx next to a.onnx whose external data is b.onnx.data",
        setup: |d| {
            let a = external_named_b(d);
            vec!["convert".into(), s(&a), s(&d.join("b.onnx"))]
        },
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
        expect: &["b.onnx.data", "external data of the model"],
    },
    Case {
        name: "run: -o onto the data",
        setup: |d| {
            let (m, c, _) = tiny(d);
            vec!["run".into(), m, "--data".into(), c.clone(), "-o".into(), c]
        },
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
        expect: &["is a merged statistics file"],
    },
    Case {
        name: "compare: --report onto the test model",
        setup: |d| {
            let (m, c, _) = tiny(d);
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
        expect: &["--report", "is the reference model"],
    },
];

/// Every node in `dir` (recursively, links not followed): its kind and content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::symlink_metadata(&p).unwrap().file_type();
        if t.is_dir() {
            v.push((p.clone(), "dir".into(), Vec::new()));
            v.extend(snapshot(&p));
        } else if t.is_file() {
            v.push((p.clone(), "file".into(), std::fs::read(&p).unwrap()));
        } else {
            v.push((p, format!("{t:?}"), Vec::new()));
        }
    }
    v.sort();
    v
}

#[test]
fn every_refused_output_is_a_clean_error_before_any_work() {
    let mut failures = Vec::new();
    for c in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let args = (c.setup)(tmp.path());
        let before = snapshot(tmp.path());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        let r = qrange(&argv);
        let took = t.elapsed();
        let after = snapshot(tmp.path());
        let lines: Vec<&str> = r.stderr.lines().collect();
        let first = lines.first().copied().unwrap_or("");
        let mut why = Vec::new();
        if r.code != 2 {
            why.push(format!("exit code {} (want 2)", r.code));
        }
        if lines.len() != 1 || !first.starts_with("error: ") {
            why.push(format!("stderr is not one error line: {:?}", r.stderr));
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
            why.push("files in the directory changed".into());
        }
        if !std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
        {
            why.push("/dev/null is no longer a character device".into());
        }
        if !why.is_empty() {
            failures.push(format!(
                "{} ({took:?}): {} — stderr: {}",
                c.name,
                why.join("; "),
                r.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `qrange ARGS` under `umask`.
fn qrange_umask(umask: &str, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_qrange"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn outputs_get_the_umask_mode_and_replaced_files_keep_theirs() {
    let d = tempfile::tempdir().unwrap();
    let (m, c, e) = tiny(d.path());
    let out = d.path().join("out.onnx");
    let npz = d.path().join("out.npz");
    let stats = d.path().join("s.json");
    let runs: [Vec<&str>; 3] = [
        vec!["convert", &m, out.to_str().unwrap()],
        vec!["run", &m, "--data", &e, "-o", npz.to_str().unwrap()],
        vec![
            "calibrate",
            &m,
            "--calib",
            &c,
            "-o",
            stats.to_str().unwrap(),
        ],
    ];
    for args in &runs {
        let r = qrange_umask("027", args);
        assert!(r.status.success(), "{args:?}: {r:?}");
    }
    for p in [&out, &npz, &stats] {
        assert_eq!(mode(p), 0o640, "{}", p.display());
    }
    // Replaced: the files keep their own modes, whatever the umask.
    for p in [&out, &npz, &stats] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o604)).unwrap();
    }
    for args in &runs {
        let r = qrange_umask("077", args);
        assert!(r.status.success(), "{args:?}: {r:?}");
    }
    for p in [&out, &npz, &stats] {
        assert_eq!(mode(p), 0o604, "{}", p.display());
    }
}

#[test]
fn an_output_through_a_symbolic_link_replaces_the_target_and_keeps_the_link() {
    let d = tempfile::tempdir().unwrap();
    let (m, c, e) = tiny(d.path());
    std::fs::create_dir(d.path().join("models")).unwrap();
    let real = d.path().join("models/real.onnx");
    std::fs::write(&real, b"old").unwrap();
    let link = d.path().join("link.onnx");
    std::os::unix::fs::symlink("models/real.onnx", &link).unwrap();
    let r = qrange(&["quantize", &m, "--calib", &c, "--eval", &e, "-o", &s(&link)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let q = load(&real);
    assert!(q
        .graph
        .unwrap()
        .node
        .iter()
        .any(|n| n.op_type.as_deref() == Some("QuantizeLinear")));
}

/// Files in `dir` whose names are not in `keep`.
fn extra_files(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn sigterm_while_a_large_model_is_written_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    // y = x + b with a 256 MiB b: the write takes long enough to be caught in the act.
    let n = 64 << 20;
    let mut m = model(
        vec![node("Add", "add", &["x", "b"], &["y"])],
        vec![],
        vec![vi("x", 1, &[n])],
        vec![vi("y", 1, &[n])],
    );
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(proto::TensorProto {
            name: Some("b".into()),
            dims: vec![n],
            data_type: Some(1),
            raw_data: Some(vec![0x3f; (n as usize) * 4]),
            ..Default::default()
        });
    let input = d.path().join("big.onnx");
    std::fs::write(&input, m.encode_to_vec()).unwrap();
    drop(m);
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrange"))
        .args(["convert", &s(&input), &s(&d.path().join("out.onnx"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut signalled = false;
    while t.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if !extra_files(d.path(), &["big.onnx"]).is_empty() {
            signal(child.id(), "-TERM");
            signalled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = child.wait().unwrap();
    assert!(signalled, "the write was never seen under way: {status:?}");
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert_eq!(extra_files(d.path(), &["big.onnx"]), Vec::<String>::new());
}

#[test]
fn sigint_while_quantizing_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "calib.npz"] {
        std::fs::copy(fixture(&format!("ppocr_cls/{f}")), d.path().join(f)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrange"))
        .current_dir(d.path())
        .args([
            "quantize",
            "model.onnx",
            "--calib",
            "calib.npz",
            "-o",
            "out.onnx",
        ])
        .args(["--target-sqnr", "30", "--report", "r.html"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "quantize ended before it was interrupted"
    );
    signal(child.id(), "-INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(
        extra_files(d.path(), &["model.onnx", "calib.npz"]),
        Vec::<String>::new()
    );
}

#[test]
fn an_unreachable_goal_writes_nothing_and_the_sidecars_are_named_as_the_help_says() {
    let d = tempfile::tempdir().unwrap();
    let (m, c, e) = tiny(d.path());
    let out = s(&d.path().join("out.onnx"));
    let r = qrange(&[
        "quantize",
        &m,
        "--calib",
        &c,
        "--eval",
        &e,
        "-o",
        &out,
        "--target-sqnr",
        "300",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let inputs = ["tiny_cnn.onnx", "tiny_cnn.npz", "tiny_cnn.eval.npz"];
    assert_eq!(extra_files(d.path(), &inputs), Vec::<String>::new());

    let r = qrange(&[
        "quantize",
        &m,
        "--calib",
        &c,
        "--eval",
        &e,
        "-o",
        &out,
        "--target-sqnr",
        "20",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        extra_files(d.path(), &inputs),
        ["out.onnx", "out.overrides.json", "out.sensitivity.json"]
    );
    let help = qrange(&["quantize", "--help"]).stdout;
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for name in [
        "`<output stem>.overrides.json`",
        "`<output stem>.sensitivity.json`",
    ] {
        assert!(help.contains(name), "help lacks {name}: {help}");
    }
}
