//! Loader tests on small files generated in temporary directories.

use super::*;
use crate::onnx::proto::TensorProto;
use ndarray::{arr1, ArrayD, IxDyn};
use prost::Message;
use std::io::Write;

fn f32s(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::F32(
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|v| v as f32 * 0.5).collect()).unwrap(),
    )
}

fn spec(name: &str, dtype: DType, shape: &[Option<usize>]) -> InputSpec {
    InputSpec::new(name, dtype, Some(shape.to_vec()))
}

fn npz(dir: &Path, arrays: Vec<(&str, Tensor)>) -> PathBuf {
    let path = dir.join("data.npz");
    let map = arrays
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    write_npz(&path, &map).unwrap();
    path
}

fn err_text(r: Result<Dataset, DataError>) -> String {
    let e = r.expect_err("expected an error");
    let text = e.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

#[test]
fn npz_splits_samples_and_keeps_extras() {
    let dir = tempfile::tempdir().unwrap();
    let label = Tensor::I64(arr1(&[0i64, 1, 1, 0]).into_dyn());
    let note = Tensor::Str(arr1(&["a", "b", "c", "d"].map(String::from)).into_dyn());
    let path = npz(
        dir.path(),
        vec![
            ("x", f32s(&[4, 1, 3])),
            ("label", label.clone()),
            ("meta_note", note),
        ],
    );
    let ds = load(&path, &[spec("x", DType::F32, &[Some(1), Some(3)])]).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.source, path);
    let s2 = &ds.get(2).unwrap()["x"];
    assert_eq!(s2.shape(), vec![1, 3]);
    assert_eq!(s2.to_f64_vec().unwrap(), vec![3.0, 3.5, 4.0]);
    assert_eq!(ds.extra.get("label"), Some(&label));
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].0, "meta_note");
    assert!(ds.skipped[0].1.contains("string"));
}

#[test]
fn dynamic_dims_and_unknown_rank_accept_any_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(dir.path(), vec![("x", f32s(&[2, 5, 3]))]);
    let ds = load(&path, &[spec("x", DType::F32, &[None, Some(3)])]).unwrap();
    assert_eq!(ds.get(1).unwrap()["x"].shape(), vec![5, 3]);
    let ds = load(&path, &[InputSpec::new("x", DType::F32, None)]).unwrap();
    assert_eq!(ds.len(), 2);
}

#[test]
fn every_common_dtype_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        Tensor::F32(ArrayD::zeros(IxDyn(&[2, 1]))),
        Tensor::F64(ArrayD::zeros(IxDyn(&[2, 1]))),
        Tensor::F16(ArrayD::from_elem(IxDyn(&[2, 1]), half::f16::from_f32(1.5))),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[2]), 16000)),
        Tensor::I32(ArrayD::zeros(IxDyn(&[2, 1]))),
        Tensor::U8(ArrayD::zeros(IxDyn(&[2, 1]))),
        Tensor::I8(ArrayD::zeros(IxDyn(&[2, 1]))),
        Tensor::Bool(ArrayD::from_elem(IxDyn(&[2, 1]), true)),
    ];
    for t in cases {
        let dtype = t.dtype();
        let sample_shape: Vec<Option<usize>> = t.shape()[1..].iter().map(|&d| Some(d)).collect();
        let path = npz(dir.path(), vec![("in", t.clone())]);
        let ds = load(&path, &[spec("in", dtype, &sample_shape)]).unwrap();
        assert_eq!(ds.len(), 2, "{dtype}");
        assert_eq!(ds.get(1).unwrap()["in"].dtype(), dtype);
        assert_eq!(
            stack(&ds.read_all().unwrap()).unwrap()["in"],
            t,
            "{dtype} round trip"
        );
    }
}

#[test]
fn missing_input_names_file_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(dir.path(), vec![("x", f32s(&[2, 3]))]);
    let e = err_text(load(
        &path,
        &[
            spec("x", DType::F32, &[Some(3)]),
            spec("state", DType::F32, &[Some(3)]),
        ],
    ));
    assert!(
        e.contains("data.npz") && e.contains("'state'") && e.contains("found: x"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(
        dir.path(),
        vec![("x", Tensor::F64(ArrayD::zeros(IxDyn(&[2, 3]))))],
    );
    let e = err_text(load(&path, &[spec("x", DType::F32, &[Some(3)])]));
    assert!(
        e.contains("'x'") && e.contains("f64") && e.contains("f32"),
        "{e}"
    );
}

#[test]
fn wrong_rank_explains_the_sample_axis() {
    let dir = tempfile::tempdir().unwrap();
    // Forgot the sample axis: [1,3] read as 1 sample of shape [3].
    let path = npz(dir.path(), vec![("x", f32s(&[1, 3]))]);
    let e = err_text(load(&path, &[spec("x", DType::F32, &[Some(1), Some(3)])]));
    assert!(
        e.contains("rank 1") && e.contains("rank 2") && e.contains("sample axis"),
        "{e}"
    );
    assert!(e.contains("data.npz") && e.contains("'x'"), "{e}");
}

#[test]
fn fixed_dim_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(dir.path(), vec![("x", f32s(&[4, 1, 5]))]);
    let e = err_text(load(&path, &[spec("x", DType::F32, &[Some(1), Some(3)])]));
    assert!(
        e.contains("axis 1") && e.contains("[1,3]") && e.contains("[1, 5]"),
        "{e}"
    );
}

#[test]
fn inconsistent_sample_counts_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(dir.path(), vec![("a", f32s(&[4, 2])), ("b", f32s(&[5, 2]))]);
    let e = err_text(load(
        &path,
        &[
            spec("a", DType::F32, &[Some(2)]),
            spec("b", DType::F32, &[Some(2)]),
        ],
    ));
    assert!(
        e.contains("'b' has 5 samples") && e.contains("'a' has 4"),
        "{e}"
    );
}

#[test]
fn zero_samples_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(dir.path(), vec![("x", f32s(&[0, 3]))]);
    let e = err_text(load(&path, &[spec("x", DType::F32, &[Some(3)])]));
    assert!(e.contains("zero samples") && e.contains("data.npz"), "{e}");
}

#[test]
fn non_finite_values_name_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, kind) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "+Inf"),
        (f32::NEG_INFINITY, "-Inf"),
    ] {
        let mut t = ArrayD::<f32>::zeros(IxDyn(&[3, 1, 2]));
        t[[2, 0, 1]] = bad;
        let path = npz(dir.path(), vec![("x", Tensor::F32(t))]);
        // Found when the sample is read, not at load.
        let ds = load(&path, &[spec("x", DType::F32, &[Some(1), Some(2)])]).unwrap();
        assert!(ds.get(1).is_ok());
        let e = ds.get(2).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            e.contains("data.npz")
                && e.contains("'x'")
                && e.contains("sample 2")
                && e.contains(kind)
                && e.contains("element 1"),
            "{e}"
        );
        assert!(ds.read_all().is_err());
    }
}

#[test]
fn scalar_input_array_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(
        dir.path(),
        vec![("sr", Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 16000)))],
    );
    let e = err_text(load(&path, &[spec("sr", DType::I64, &[])]));
    assert!(e.contains("'sr'") && e.contains("sample axis"), "{e}");
}

#[test]
fn extras_with_other_lengths_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(
        dir.path(),
        vec![
            ("x", f32s(&[3, 2])),
            ("classes", Tensor::I64(arr1(&[1i64, 2]).into_dyn())),
            ("scale", Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 2.0))),
        ],
    );
    let ds = load(&path, &[spec("x", DType::F32, &[Some(2)])]).unwrap();
    assert!(ds.extra.is_empty());
    let reasons: BTreeMap<_, _> = ds.skipped.iter().cloned().collect();
    assert!(reasons["classes"].contains("2 entries") && reasons["classes"].contains("3 samples"));
    assert!(reasons["scale"].contains("scalar"));
}

/// An npz built by hand, for members `write_npz` does not produce.
fn raw_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    for (name, bytes) in members {
        z.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn npy_with_header(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn object_and_foreign_members_are_skipped_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.npz");
    let x = super::npy::encode(&f32s(&[2, 3])).unwrap();
    raw_npz(
        &path,
        &[
            ("x.npy", x),
            ("meta_obj.npy", npy_with_header("|O", "(2,)", &[0x80, 0x02])),
            ("readme.txt", b"hello".to_vec()),
        ],
    );
    let ds = load(&path, &[spec("x", DType::F32, &[Some(3)])]).unwrap();
    assert_eq!(ds.len(), 2);
    let reasons: BTreeMap<_, _> = ds.skipped.iter().cloned().collect();
    assert!(reasons["meta_obj"].contains("object"), "{reasons:?}");
    assert!(reasons["readme.txt"].contains("not a .npy"), "{reasons:?}");
}

#[test]
fn undecodable_input_array_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.npz");
    raw_npz(
        &path,
        &[("x.npy", npy_with_header("<U3", "(2,)", &[0; 24]))],
    );
    // `<U` decodes to strings, which are not the model's f32.
    let e = err_text(load(&path, &[spec("x", DType::F32, &[])]));
    assert!(e.contains("'x'") && e.contains("str"), "{e}");
    raw_npz(
        &path,
        &[("x.npy", npy_with_header("<c8", "(2,)", &[0; 16]))],
    );
    let e = err_text(load(&path, &[spec("x", DType::F32, &[])]));
    assert!(e.contains("array 'x'") && e.contains("complex"), "{e}");
}

#[test]
fn corrupt_and_unknown_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = [spec("x", DType::F32, &[Some(3)])];
    let bad = dir.path().join("bad.npz");
    std::fs::write(&bad, b"PK\x03\x04 not really a zip").unwrap();
    let e = err_text(load(&bad, &x));
    assert!(e.contains("bad.npz") && e.contains("zip"), "{e}");
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, b"hello").unwrap();
    let e = err_text(load(&txt, &x));
    assert!(
        e.contains("notes.txt") && e.contains("expected .npz"),
        "{e}"
    );
    let e = err_text(load(&dir.path().join("absent.npz"), &x));
    assert!(e.contains("absent.npz"), "{e}");
}

#[test]
fn format_is_sniffed_without_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = npz(dir.path(), vec![("x", f32s(&[2, 3]))]);
    let plain = dir.path().join("calib");
    std::fs::rename(&path, &plain).unwrap();
    assert_eq!(
        load(&plain, &[spec("x", DType::F32, &[Some(3)])])
            .unwrap()
            .len(),
        2
    );
    let npy = dir.path().join("raw");
    std::fs::write(&npy, super::npy::encode(&f32s(&[2, 3])).unwrap()).unwrap();
    assert_eq!(
        load(&npy, &[spec("x", DType::F32, &[Some(3)])])
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn npy_is_for_single_input_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    std::fs::write(&path, super::npy::encode(&f32s(&[3, 1, 2])).unwrap()).unwrap();
    let ds = load(&path, &[spec("input", DType::F32, &[Some(1), Some(2)])]).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.get(0).unwrap()["input"].shape(), vec![1, 2]);
    let e = err_text(load(
        &path,
        &[
            spec("a", DType::F32, &[Some(1), Some(2)]),
            spec("b", DType::F32, &[]),
        ],
    ));
    assert!(e.contains("x.npy") && e.contains("2 inputs"), "{e}");
}

#[test]
fn write_npz_is_atomic_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.npz");
    let mut arrays = BTreeMap::new();
    arrays.insert("y".to_string(), f32s(&[2, 2]));
    arrays.insert("a".to_string(), Tensor::I64(arr1(&[1i64, 2]).into_dyn()));
    write_npz(&path, &arrays).unwrap();
    let first = std::fs::read(&path).unwrap();
    write_npz(&path, &arrays).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        first,
        "same bytes on rewrite"
    );

    // A failing write leaves the previous file untouched and no temporary behind.
    arrays.insert(
        "bf".to_string(),
        Tensor::BF16(arr1(&[half::bf16::ONE]).into_dyn()),
    );
    let e = write_npz(&path, &arrays).unwrap_err().to_string();
    assert!(e.contains("out.npz") && e.contains("'bf'"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), first);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["out.npz".to_string()]);
}

#[test]
fn stack_builds_sample_major_arrays() {
    let mut samples = Vec::new();
    for i in 0..3 {
        let mut s = Sample::new();
        s.insert(
            "out".to_string(),
            Tensor::F32(ArrayD::from_elem(IxDyn(&[1, 2]), i as f32)),
        );
        samples.push(s);
    }
    let stacked = stack(&samples).unwrap();
    let out = &stacked["out"];
    assert_eq!(out.shape(), vec![3, 1, 2]);
    assert_eq!(
        out.to_f64_vec().unwrap(),
        vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    );

    // Written and read back, the samples are the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outputs.npz");
    write_npz(&path, &stacked).unwrap();
    let ds = load(&path, &[spec("out", DType::F32, &[Some(1), Some(2)])]).unwrap();
    assert_eq!(ds.read_all().unwrap(), samples);
}

#[test]
fn stack_errors() {
    assert!(stack(&[]).is_err());
    let mut a = Sample::new();
    a.insert("o".to_string(), f32s(&[2]));
    let mut b = Sample::new();
    b.insert("o".to_string(), f32s(&[3]));
    let e = stack(&[a.clone(), b]).unwrap_err().to_string();
    assert!(e.contains("'o'") && e.contains("[3]"), "{e}");
    let mut c = Sample::new();
    c.insert("o".to_string(), Tensor::I32(ArrayD::zeros(IxDyn(&[2]))));
    let e = stack(&[a.clone(), c]).unwrap_err().to_string();
    assert!(e.contains("i32") && e.contains("f32"), "{e}");
    let mut d = a.clone();
    d.insert("p".to_string(), f32s(&[2]));
    let e = stack(&[a.clone(), d.clone()]).unwrap_err().to_string();
    assert!(e.contains("'p'"), "{e}");
    let e = stack(&[d, a]).unwrap_err().to_string();
    assert!(
        e.contains("'p'") && e.contains("missing from sample 1"),
        "{e}"
    );
}

// ---- ONNX test_data_set layout ----

fn write_pb(path: &Path, name: Option<&str>, t: &Tensor) {
    let mut p = TensorProto {
        name: name.map(String::from),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        ..Default::default()
    };
    match t {
        Tensor::F32(a) => {
            p.data_type = Some(1);
            p.raw_data = Some(a.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
        Tensor::I64(a) => {
            p.data_type = Some(7);
            p.int64_data = a.iter().copied().collect();
        }
        other => panic!("test helper does not write {:?}", other.dtype()),
    }
    std::fs::write(path, p.encode_to_vec()).unwrap();
}

fn two_inputs() -> Vec<InputSpec> {
    vec![
        spec("a", DType::F32, &[Some(1), Some(2)]),
        spec("b", DType::I64, &[]),
    ]
}

/// model/test_data_set_{0,1}: input_0 unnamed, input_1 named `b`, output_0 named `y`.
fn pb_tree(root: &Path, sets: usize) {
    for i in 0..sets {
        let set = root.join(format!("test_data_set_{i}"));
        std::fs::create_dir_all(&set).unwrap();
        let a = Tensor::F32(ArrayD::from_elem(IxDyn(&[1, 2]), i as f32));
        write_pb(&set.join("input_0.pb"), None, &a);
        let b = Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 16000 + i as i64));
        write_pb(&set.join("input_1.pb"), Some("b"), &b);
        let y = Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 10.0 + i as f32));
        write_pb(&set.join("output_0.pb"), Some("y"), &y);
    }
}

#[test]
fn pb_directory_of_sets() {
    let dir = tempfile::tempdir().unwrap();
    pb_tree(dir.path(), 2);
    std::fs::write(dir.path().join("model.onnx"), b"ignored").unwrap();
    let ds = load(dir.path(), &two_inputs()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(
        ds.get(1).unwrap()["a"].to_f64_vec().unwrap(),
        vec![1.0, 1.0]
    );
    assert_eq!(ds.get(1).unwrap()["b"].to_i64_vec().unwrap(), vec![16001]);
    assert_eq!(ds.extra["y"].shape(), vec![2, 1]);
    assert_eq!(ds.extra["y"].to_f64_vec().unwrap(), vec![10.0, 11.0]);
    assert!(ds.skipped.is_empty());

    // One set folder on its own is one sample.
    let one = load(&dir.path().join("test_data_set_1"), &two_inputs()).unwrap();
    assert_eq!(one.read_all().unwrap(), vec![ds.get(1).unwrap()]);
}

#[test]
fn pb_names_win_over_positions() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("test_data_set_0");
    std::fs::create_dir_all(&set).unwrap();
    write_pb(
        &set.join("input_0.pb"),
        Some("b"),
        &Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 8000)),
    );
    write_pb(&set.join("input_1.pb"), Some("a"), &f32s(&[1, 2]));
    let ds = load(dir.path(), &two_inputs()).unwrap();
    assert_eq!(ds.get(0).unwrap()["b"].to_i64_vec().unwrap(), vec![8000]);
    assert_eq!(ds.get(0).unwrap()["a"].shape(), vec![1, 2]);
}

#[test]
fn pb_sets_are_ordered_numerically() {
    let dir = tempfile::tempdir().unwrap();
    for i in [10usize, 2] {
        let set = dir.path().join(format!("test_data_set_{i}"));
        std::fs::create_dir_all(&set).unwrap();
        write_pb(
            &set.join("input_0.pb"),
            None,
            &Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), i as f32)),
        );
    }
    let ds = load(dir.path(), &[spec("x", DType::F32, &[Some(1)])]).unwrap();
    let firsts: Vec<f64> = ds
        .read_all()
        .unwrap()
        .iter()
        .map(|s| s["x"].to_f64_vec().unwrap()[0])
        .collect();
    assert_eq!(firsts, vec![2.0, 10.0]);
}

#[test]
fn pb_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    pb_tree(dir.path(), 2);
    // A set without input_1.
    std::fs::remove_file(dir.path().join("test_data_set_1/input_1.pb")).unwrap();
    let e = err_text(load(dir.path(), &two_inputs()));
    assert!(
        e.contains("test_data_set_1") && e.contains("'b'") && e.contains("input_0.pb"),
        "{e}"
    );

    // Wrong dtype: the model wants i32 for `b`.
    pb_tree(dir.path(), 2);
    let mut inputs = two_inputs();
    inputs[1].dtype = DType::I32;
    let e = err_text(load(dir.path(), &inputs));
    assert!(
        e.contains("input_1.pb") && e.contains("i64") && e.contains("i32"),
        "{e}"
    );

    // More files than inputs.
    let e = err_text(load(dir.path(), &two_inputs()[..1]));
    assert!(
        e.contains("input_1.pb") && e.contains("no matching model input"),
        "{e}"
    );

    // Two files for one input.
    let set = dir.path().join("test_data_set_0");
    write_pb(&set.join("input_1.pb"), Some("a"), &f32s(&[1, 2]));
    let e = err_text(load(dir.path(), &two_inputs()));
    assert!(
        e.contains("input_1.pb") && e.contains("'a'") && e.contains("already"),
        "{e}"
    );

    // NaN in a float input.
    let mut t = ArrayD::<f32>::zeros(IxDyn(&[1, 2]));
    t[[0, 1]] = f32::NAN;
    pb_tree(dir.path(), 2);
    write_pb(
        &dir.path().join("test_data_set_1/input_0.pb"),
        None,
        &Tensor::F32(t),
    );
    let e = err_text(load(dir.path(), &two_inputs()));
    assert!(
        e.contains("test_data_set_1") && e.contains("sample 1") && e.contains("NaN"),
        "{e}"
    );

    // An empty directory.
    let empty = tempfile::tempdir().unwrap();
    let e = err_text(load(empty.path(), &two_inputs()));
    assert!(
        e.contains("zero samples") && e.contains("test_data_set"),
        "{e}"
    );
}

#[test]
fn pb_outputs_that_do_not_stack_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    pb_tree(dir.path(), 2);
    let set1 = dir.path().join("test_data_set_1");
    write_pb(&set1.join("output_0.pb"), Some("y"), &f32s(&[3]));
    write_pb(&set1.join("output_1.pb"), None, &f32s(&[3]));
    let ds = load(dir.path(), &two_inputs()).unwrap();
    assert!(ds.extra.is_empty());
    let reasons: BTreeMap<_, _> = ds.skipped.iter().cloned().collect();
    assert!(reasons["y"].contains("shape"), "{reasons:?}");
    assert!(reasons["output_1"].contains("1 of 2"), "{reasons:?}");
}

#[test]
fn labels_are_checked_against_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let label = Tensor::I64(arr1(&[2i64, 0, 1]).into_dyn());
    let score = Tensor::F32(arr1(&[0.5f32, 0.25, 0.0]).into_dyn());
    let p = npz(
        dir.path(),
        vec![("x", f32s(&[3, 2])), ("label", label), ("score", score)],
    );
    let mut ds = load(&p, &[spec("x", DType::F32, &[Some(2)])]).unwrap();
    assert_eq!(ds.labels("label").unwrap(), vec![2, 0, 1]);
    let e = ds.labels("nope").unwrap_err().to_string();
    assert!(e.contains("'nope'") && e.contains("label, score"), "{e}");
    let e = ds.labels("score").unwrap_err().to_string();
    assert!(e.contains("'score'") && e.contains("f32"), "{e}");
    // A narrower view narrows the extras with it.
    let mut head = ds.clone();
    head.truncate(2);
    assert_eq!(head.labels("label").unwrap(), vec![2, 0]);
    assert_eq!(ds.split_off(1).labels("label").unwrap(), vec![0, 1]);
    assert_eq!(ds.labels("label").unwrap(), vec![2]);
    ds.extra.insert(
        "label".into(),
        Tensor::I64(ndarray::arr1(&[1i64, 2]).into_dyn()),
    );
    let e = ds.labels("label").unwrap_err().to_string();
    assert!(e.contains("2 entries for 1 samples"), "{e}");
}

// ---- Sample-at-a-time reading ----

/// A zip holding `members` (name, bytes), each stored or deflated.
fn zip_npz(path: &Path, members: &[(&str, &[u8])], method: zip::CompressionMethod) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    for (name, bytes) in members {
        z.start_file(
            *name,
            zip::write::SimpleFileOptions::default().compression_method(method),
        )
        .unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// A one-member zip written field by field, so that the member's recorded size can claim
/// more than its data holds. `method` 8 is deflate; the CRC is left zero.
fn zip_by_hand(path: &Path, name: &str, method: u16, data: &[u8], size: u32) {
    let mut out = Vec::new();
    let le16 = |o: &mut Vec<u8>, v: u16| o.extend_from_slice(&v.to_le_bytes());
    let le32 = |o: &mut Vec<u8>, v: u32| o.extend_from_slice(&v.to_le_bytes());
    le32(&mut out, 0x0403_4b50);
    for v in [20u16, 0, method, 0, 0] {
        le16(&mut out, v);
    }
    for v in [0u32, data.len() as u32, size] {
        le32(&mut out, v);
    }
    le16(&mut out, name.len() as u16);
    le16(&mut out, 0);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    let central = out.len() as u32;
    le32(&mut out, 0x0201_4b50);
    for v in [20u16, 20, 0, method, 0, 0] {
        le16(&mut out, v);
    }
    for v in [0u32, data.len() as u32, size] {
        le32(&mut out, v);
    }
    for v in [name.len() as u16, 0, 0, 0, 0] {
        le16(&mut out, v);
    }
    le32(&mut out, 0);
    le32(&mut out, 0);
    out.extend_from_slice(name.as_bytes());
    let central_len = out.len() as u32 - central;
    le32(&mut out, 0x0605_4b50);
    for v in [0u16, 0, 1, 1] {
        le16(&mut out, v);
    }
    le32(&mut out, central_len);
    le32(&mut out, central);
    le16(&mut out, 0);
    std::fs::write(path, out).unwrap();
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Which way the arrays of `ds` are read, by input name.
fn codings(ds: &Dataset) -> BTreeMap<String, String> {
    match &*ds.store {
        Store::Memory(_) => BTreeMap::new(),
        Store::Arrays { arrays, .. } => arrays
            .iter()
            .map(|(n, a)| {
                let how = match a {
                    Array::Loaded(_) => "loaded".to_string(),
                    Array::Streamed(s) => format!("{s:?}"),
                };
                (n.clone(), how)
            })
            .collect(),
    }
}

fn two_arrays() -> (Tensor, Tensor) {
    let x = f32s(&[9, 1, 5]);
    let y = Tensor::I64(
        ArrayD::from_shape_vec(IxDyn(&[9, 2]), (0..18).map(|v| v * 7 - 40).collect()).unwrap(),
    );
    (x, y)
}

#[test]
fn stored_and_deflated_members_stream_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = two_arrays();
    let label = Tensor::I64(arr1(&[3i64, 1, 4, 1, 5, 9, 2, 6, 5]).into_dyn());
    let specs = [
        spec("x", DType::F32, &[Some(1), Some(5)]),
        spec("y", DType::I64, &[Some(2)]),
    ];
    for (method, coding) in [
        (zip::CompressionMethod::Stored, "Stored"),
        (zip::CompressionMethod::Deflated, "Deflate"),
    ] {
        let path = dir.path().join(format!("{coding}.npz"));
        let members: Vec<(&str, Vec<u8>)> = vec![
            ("x.npy", npy::encode(&x).unwrap()),
            ("label.npy", npy::encode(&label).unwrap()),
            ("y.npy", npy::encode(&y).unwrap()),
        ];
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (*n, &b[..])).collect();
        zip_npz(&path, &refs, method);
        let ds = load(&path, &specs).unwrap();
        let how = codings(&ds);
        assert!(
            how["x"].contains(coding) && how["y"].contains(coding),
            "{how:?}"
        );
        assert_eq!(ds.len(), 9);
        assert_eq!(ds.labels("label").unwrap(), vec![3, 1, 4, 1, 5, 9, 2, 6, 5]);
        // Forward, backward, repeated and skipping reads all equal the whole decode.
        for i in [5usize, 2, 8, 0, 3, 3, 1, 4, 7, 6, 0, 8] {
            let s = ds.get(i).unwrap();
            assert_eq!(s["x"], index0(&x, i), "{coding} sample {i}");
            assert_eq!(s["y"], index0(&y, i), "{coding} sample {i}");
        }
        // Threads taking indices in turn, as the calibration workers do.
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= ds.len() {
                        break;
                    }
                    assert_eq!(ds.get(i).unwrap()["x"], index0(&x, i));
                });
            }
        });
        // Reading a view's first sample (for shapes), then the whole view in order, starts
        // the inflate stream once.
        if let Store::Arrays { arrays, .. } = &*ds.store {
            if let (Array::Streamed(s), true) = (&arrays[0].1, coding == "Deflate") {
                let before = s.stream_starts();
                let tail = ds.clone().split_off(4);
                tail.first().unwrap();
                tail.read_all().unwrap();
                assert_eq!(s.stream_starts(), before + 1, "one start for the tail");
            }
        }
        // A held-back tail is a view of the same file, with its labels.
        let mut head = ds.clone();
        let tail = head.split_off(7);
        assert_eq!((head.len(), tail.len()), (7, 2));
        assert_eq!(tail.get(1).unwrap()["y"], index0(&y, 8));
        assert_eq!(tail.labels("label").unwrap(), vec![6, 5]);
        assert!(tail.get(2).is_err());
    }
}

#[test]
fn npy_files_stream_and_other_layouts_load_whole() {
    let dir = tempfile::tempdir().unwrap();
    let x = f32s(&[6, 1, 4]);
    let path = dir.path().join("x.npy");
    std::fs::write(&path, npy::encode(&x).unwrap()).unwrap();
    let specs = [spec("x", DType::F32, &[Some(1), Some(4)])];
    let ds = load(&path, &specs).unwrap();
    assert!(codings(&ds)["x"].contains("Stored"));
    for i in [4usize, 1, 5, 0] {
        assert_eq!(ds.get(i).unwrap()["x"], index0(&x, i));
    }

    // Big-endian C order streams through the same decoder; Fortran order is loaded whole.
    let mut body = Vec::new();
    for v in 0..12i32 {
        body.extend_from_slice(&v.to_be_bytes());
    }
    let big = npy_with_header(">i4", "(3, 4)", &body);
    let expected = npy::decode(&big).unwrap();
    let header = "{'descr': '<i4', 'fortran_order': True, 'shape': (3, 4), }\n";
    let mut fortran = b"\x93NUMPY\x01\x00".to_vec();
    fortran.extend_from_slice(&(header.len() as u16).to_le_bytes());
    fortran.extend_from_slice(header.as_bytes());
    for v in 0..12i32 {
        fortran.extend_from_slice(&v.to_le_bytes());
    }
    let transposed = npy::decode(&fortran).unwrap();
    let npz_path = dir.path().join("layouts.npz");
    zip_npz(
        &npz_path,
        &[("b.npy", &big), ("f.npy", &fortran)],
        zip::CompressionMethod::Deflated,
    );
    let specs = [
        spec("b", DType::I32, &[Some(4)]),
        spec("f", DType::I32, &[Some(4)]),
    ];
    let ds = load(&npz_path, &specs).unwrap();
    let how = codings(&ds);
    assert!(
        how["b"].contains("Deflate") && how["f"] == "loaded",
        "{how:?}"
    );
    for i in [2usize, 0, 1] {
        let s = ds.get(i).unwrap();
        assert_eq!(s["b"], index0(&expected, i));
        assert_eq!(s["f"], index0(&transposed, i));
    }
}

#[test]
fn nan_in_a_deflated_member_is_found_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = ArrayD::<f32>::zeros(IxDyn(&[8, 1, 3]));
    t[[5, 0, 2]] = f32::NAN;
    let path = dir.path().join("calib.npz");
    let bytes = npy::encode(&Tensor::F32(t)).unwrap();
    zip_npz(
        &path,
        &[("x.npy", &bytes)],
        zip::CompressionMethod::Deflated,
    );
    let ds = load(&path, &[spec("x", DType::F32, &[Some(1), Some(3)])]).unwrap();
    assert!(codings(&ds)["x"].contains("Deflate"));
    for i in 0..5 {
        ds.get(i).unwrap();
    }
    let e = ds.get(5).unwrap_err();
    assert!(matches!(e, DataError::NonFinite { sample: 5, .. }), "{e:?}");
    let e = e.to_string();
    assert_eq!(
        e,
        format!(
            "{}: input 'x': sample 5 contains NaN at element 2",
            path.display()
        )
    );
    assert!(ds.get(6).is_ok() && ds.get(4).is_ok());
}

#[test]
fn truncated_and_corrupt_members_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = f32s(&[8, 3]);
    let full = npy::encode(&x).unwrap();
    let header_len = npy::parse_header(&full).unwrap().data_offset;
    let specs = [spec("x", DType::F32, &[Some(3)])];
    let one_line = |e: DataError| {
        let e = e.to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };

    // The deflate stream ends after 3 samples although the member claims 8.
    let path = dir.path().join("short.npz");
    let cut = deflate(&full[..header_len + 3 * 12]);
    zip_by_hand(&path, "x.npy", 8, &cut, full.len() as u32);
    let ds = load(&path, &specs).unwrap();
    assert_eq!(ds.get(2).unwrap()["x"], index0(&x, 2));
    let e = one_line(ds.get(3).unwrap_err());
    assert!(
        e.contains("short.npz") && e.contains("'x'") && e.contains("sample 3"),
        "{e}"
    );
    assert!(e.contains("ends early"), "{e}");
    // After a failure the stream starts over.
    assert_eq!(ds.get(1).unwrap()["x"], index0(&x, 1));
    assert!(ds.get(7).is_err());

    // Not a deflate stream at all (0xFF starts a block of the reserved type).
    let path = dir.path().join("garbage.npz");
    zip_by_hand(&path, "x.npy", 8, &[0xFF; 64], full.len() as u32);
    let e = one_line(load(&path, &specs).unwrap_err());
    assert!(e.contains("garbage.npz") && e.contains("'x'"), "{e}");

    // Sizes that do not hold the announced samples are refused at load.
    let path = dir.path().join("small.npz");
    let short = deflate(&full[..header_len + 12]);
    zip_by_hand(&path, "x.npy", 8, &short, (header_len + 12) as u32);
    let e = one_line(load(&path, &specs).unwrap_err());
    assert!(
        e.contains("'x'") && e.contains("expected 96 data bytes"),
        "{e}"
    );
    let npy_path = dir.path().join("short.npy");
    std::fs::write(&npy_path, &full[..header_len + 20]).unwrap();
    let e = one_line(load(&npy_path, &specs).unwrap_err());
    assert!(e.contains("short.npy") && e.contains("found 20"), "{e}");
    std::fs::write(&npy_path, &full[..8]).unwrap();
    let e = one_line(load(&npy_path, &specs).unwrap_err());
    assert!(e.contains("short.npy"), "{e}");
}

#[test]
fn member_crcs_are_checked_when_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let x = f32s(&[6, 3]);
    let full = npy::encode(&x).unwrap();
    let specs = [spec("x", DType::F32, &[Some(3)])];

    // Stored: one byte of the last sample changed after the archive was written. The
    // member is read through once when opened, so the load itself fails.
    let path = dir.path().join("stored.npz");
    zip_npz(&path, &[("x.npy", &full)], zip::CompressionMethod::Stored);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = index0(&x, 5);
    let Tensor::F32(last) = last else { panic!() };
    let pattern = last.as_slice().unwrap()[2].to_le_bytes();
    let at = bytes.windows(4).rposition(|w| w == pattern).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = load(&path, &specs).unwrap_err().to_string();
    assert!(
        e.contains("stored.npz") && e.contains("'x.npy'") && e.contains("CRC-32"),
        "{e}"
    );

    // Deflated with a recorded CRC of 0: every sample but the last reads; the last one
    // ends the stream, where the CRC is compared.
    let path = dir.path().join("deflated.npz");
    zip_by_hand(&path, "x.npy", 8, &deflate(&full), full.len() as u32);
    let ds = load(&path, &specs).unwrap();
    assert!(codings(&ds)["x"].contains("Deflate"));
    for i in 0..5 {
        assert_eq!(ds.get(i).unwrap()["x"], index0(&x, i));
    }
    let e = ds.get(5).unwrap_err().to_string();
    assert!(
        e.contains("deflated.npz") && e.contains("'x.npy'") && e.contains("CRC-32"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // The same archive with the right CRC reads to the end, in any order.
    let path = dir.path().join("good.npz");
    zip_npz(&path, &[("x.npy", &full)], zip::CompressionMethod::Deflated);
    let ds = load(&path, &specs).unwrap();
    for i in [5usize, 0, 4, 5, 2] {
        assert_eq!(ds.get(i).unwrap()["x"], index0(&x, i));
    }
}
