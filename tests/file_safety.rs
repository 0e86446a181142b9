//! No command damages a file: outputs get the umask's mode (a replaced file keeps its own),
//! symbolic links are written through, and SIGINT/SIGTERM leave neither a temporary file nor
//! a partial output. Outputs refused before any work (onto an input, another output, a
//! special file or a missing folder) are rows of the bad-input table (`tests/bad_input.rs`).

mod common;

use common::*;
use prost::Message;
use qrange::onnx::proto;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let (m, c, e) = tiny_cnn_in(d.path());
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
    let (m, c, e) = tiny_cnn_in(d.path());
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
    let (m, c, e) = tiny_cnn_in(d.path());
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

/// A model named by its bare file name, run from its own folder, finds its external data
/// there (the folder of `model.onnx` is `.`, not an empty path).
#[test]
fn a_bare_model_name_reads_its_external_data_from_the_working_folder() {
    let d = tempfile::tempdir().unwrap();
    let src = repo_root().join("fixtures/tiny/tiny_external");
    for f in ["model.onnx", "weights.bin"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    for args in [
        vec!["inspect", "model.onnx"],
        vec!["convert", "model.onnx", "out.onnx", "--inline"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_qrange"))
            .args(&args)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(d.path().join("out.onnx").exists());
}
