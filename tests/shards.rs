//! Calibration as an array job: `calibrate --shard INDEX/COUNT` in several processes at once
//! (as the tasks of a Slurm job array or a Kubernetes indexed Job run), `merge`, then
//! `quantize --ranges` give the bytes of one run on all the data.

mod common;

use common::{fixture, qrange, s};
use std::process::Command;

#[test]
fn shards_calibrated_in_parallel_processes_merge_into_the_one_run() {
    let d = tempfile::tempdir().unwrap();
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let data = s(&fixture("tiny/tiny_cnn.npz"));
    // Three tasks at once, each told its index and the count as an array job's would be.
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_qrange"))
                .args(["calibrate", &model, "--calib", &data, "--shard"])
                .arg(format!("{i}/3"))
                .arg("-o")
                .arg(d.path().join(format!("part{i}.json")))
                .output()
                .unwrap()
        })
        .collect();
    let mut samples = 0;
    for (i, t) in tasks.iter().enumerate() {
        assert!(
            t.status.success(),
            "task {i}: {}",
            String::from_utf8_lossy(&t.stderr)
        );
        let text = std::fs::read_to_string(d.path().join(format!("part{i}.json"))).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        samples += j["samples"].as_u64().unwrap();
    }
    // Each of tiny_cnn's 8 samples in exactly one shard.
    assert_eq!(samples, 8);
    let parts: Vec<String> = (0..3)
        .map(|i| s(&d.path().join(format!("part{i}.json"))))
        .collect();
    let merged = s(&d.path().join("merged.json"));
    let mut args = vec!["merge"];
    args.extend(parts.iter().map(String::as_str));
    args.extend(["-o", &merged]);
    assert_eq!(qrange(&args).code, 0);
    let whole = s(&d.path().join("whole.json"));
    let r = qrange(&["calibrate", &model, "--calib", &data, "-o", &whole]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&whole).unwrap(),
        "the merged shards differ from one run on all the data"
    );
    // And so does the model quantized from them.
    let q = |ranges: &str, out: &str| {
        let out = s(&d.path().join(out));
        let r = qrange(&[
            "quantize",
            &model,
            "--ranges",
            ranges,
            "--no-validate",
            "-o",
            &out,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::fs::read(out).unwrap()
    };
    assert_eq!(q(&merged, "a.onnx"), q(&whole, "b.onnx"));
}

#[test]
fn an_impossible_shard_is_refused_in_one_line_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let model = s(&fixture("tiny/tiny_cnn.onnx"));
    let data = s(&fixture("tiny/tiny_cnn.npz"));
    let out = d.path().join("p.json");
    for (shard, says) in [
        ("3/3", "0 <= INDEX < COUNT"),
        ("0/0", "0 <= INDEX < COUNT"),
        ("a/3", "0 <= INDEX < COUNT"),
        // 8 samples cut in 20 parts: the parts from 8 on are empty.
        ("12/20", "fewer than 20 shards"),
    ] {
        let r = qrange(&[
            "calibrate",
            &model,
            "--calib",
            &data,
            "--shard",
            shard,
            "-o",
            &s(&out),
        ]);
        assert_eq!(r.code, 2, "{shard}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{shard}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(!out.exists(), "{shard}");
    }
}
