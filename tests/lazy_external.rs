//! External data is read only when values are needed: `inspect` and `convert` move no
//! tensor bytes into memory (`convert` streams them from the source side file into the new
//! one), while decoding a value reads exactly its span. Counted by `ir::external`'s
//! counters, which are process-wide: this file holds a single test so that nothing else
//! reads external data while it counts. `quantize` reads the weights once for the adaptive
//! selection's simulation and once for the written model, not once per compared range set.

mod common;

use common::*;
use qrange::ir::external::{bytes_read, bytes_streamed};
use qrange::ir::TensorData;
use qrange::onnx;
use std::path::Path;

fn cli(args: &[&Path]) {
    let mut argv = vec!["qrange".as_ref()];
    argv.extend(args.iter().map(|p| p.as_os_str()));
    let out = qrange::cli::main_with_args(argv).unwrap();
    assert!(matches!(out, qrange::cli::Outcome::Ok));
}

#[test]
fn inspect_and_convert_read_no_tensor_data() {
    let tmp = tempfile::tempdir().unwrap();
    let src = repo_root().join("fixtures/tiny/tiny_external");
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.onnx", "weights.bin"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let model = dir.join("model.onnx");
    let side_bytes = std::fs::metadata(dir.join("weights.bin")).unwrap().len();

    // Decoding, measuring and inspecting read nothing.
    let m = onnx::read_model(&model).unwrap();
    let externals: Vec<_> = m
        .graph
        .initializers
        .iter()
        .map(|v| m.graph.const_of(*v).unwrap())
        .filter(|t| matches!(t.data, TensorData::External(_)))
        .collect();
    assert_eq!(
        externals.len(),
        3,
        "every initializer stays in its side file"
    );
    assert!(onnx::encoded_size(&m) > side_bytes);
    cli(&["inspect".as_ref(), &model]);
    assert_eq!(
        bytes_read(),
        0,
        "decode, encoded_size or inspect read tensor data"
    );

    // convert streams every external tensor from file to file, reading none into memory.
    let out = tmp.path().join("out.onnx");
    cli(&["convert".as_ref(), &model, &out]);
    assert_eq!(bytes_read(), 0, "convert read tensor data into memory");
    assert_eq!(bytes_streamed(), side_bytes);
    assert_eq!(
        std::fs::read(tmp.path().join("out.onnx.data")).unwrap(),
        std::fs::read(dir.join("weights.bin")).unwrap()
    );

    // A value is read when asked for, exactly its span, and equals the written copy's.
    let w = externals[0];
    let before = w.to_tensor().unwrap();
    assert_eq!(bytes_read(), w.byte_size() as u64);
    let m2 = onnx::read_model(&out).unwrap();
    let v2 = m2.graph.value_by_name(w.name.as_deref().unwrap()).unwrap();
    assert_eq!(m2.graph.const_of(v2).unwrap().to_tensor().unwrap(), before);

    // convert --inline reads the values (they go into the model file).
    let inline = tmp.path().join("inline.onnx");
    let read = bytes_read();
    cli(&["convert".as_ref(), &model, &inline, "--inline".as_ref()]);
    assert_eq!(bytes_read() - read, side_bytes);

    // The adaptive selection quantizes the weights once, for the simulation it runs the
    // compared range sets in, not once per set: beyond what `--method minmax` (no selection)
    // reads, it reads each tensor at most once more.
    let calib = repo_root().join("fixtures/tiny/tiny_external.npz");
    let q = tmp.path().join("q.onnx");
    let quantize_reads = |method: &str| {
        let read = bytes_read();
        cli(&[
            "quantize".as_ref(),
            &model,
            "--calib".as_ref(),
            &calib,
            "--method".as_ref(),
            method.as_ref(),
            "-o".as_ref(),
            &q,
            "--no-validate".as_ref(),
        ]);
        std::fs::remove_file(&q).unwrap();
        std::fs::remove_file(q.with_extension("onnx.data")).unwrap();
        bytes_read() - read
    };
    let (minmax, adaptive) = (quantize_reads("minmax"), quantize_reads("adaptive"));
    assert!(
        adaptive > minmax && adaptive - minmax <= side_bytes,
        "the adaptive selection read {} bytes of the {side_bytes}-byte side file (minmax {minmax})",
        adaptive - minmax
    );

    // A side file cut short after the model was read: the error names the tensor and file.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("weights.bin"))
        .unwrap();
    f.set_len(100).unwrap();
    let e = w.to_tensor().unwrap_err().to_string();
    assert!(e.contains("'fc1.w'") && e.contains("weights.bin"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = onnx::write_model(
        &m,
        &tmp.path().join("cut.onnx"),
        &onnx::ExternalPolicy::Keep,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("'fc1.w'") && e.contains("weights.bin") && e.contains("holds 100 of"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["in", "inline.onnx", "out.onnx", "out.onnx.data"]);
}
