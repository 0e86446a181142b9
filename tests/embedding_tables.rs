//! Embedding tables (a `Gather`'s constant float table) stored in 4 or 8 bits: the written
//! codes decode to the float table within half a step per element, in each written form
//! (com.microsoft GatherBlockQuantized, blocked or per-row DequantizeLinear), including a
//! width the block size does not divide; `--embedding-bits` is checked and obeyed.

mod common;

use common::{f32_init, fixture, model, node, qrange, quantize_json, s, vi, write_proto};
use qrange::ir::{Graph, Tensor};
use std::path::Path;

const ROWS: usize = 6;
/// Not a multiple of 32: the last block of each row is partial.
const WIDTH: usize = 40;

/// A table whose rows differ in range (as a trained table's do).
fn table() -> Vec<f32> {
    (0..ROWS * WIDTH)
        .map(|i| {
            let r = i / WIDTH;
            ((i * 37 % 101) as f32 - 47.0) / 50.0 * (1.0 + r as f32)
        })
        .collect()
}

/// `y = Gather(emb, ids)`, ids int64 `[1, 3]`.
fn write_lookup(dir: &Path) -> String {
    let m = model(
        vec![node("Gather", "lookup", &["emb", "ids"], &["y"])],
        vec![f32_init("emb", &[ROWS as i64, WIDTH as i64], &table())],
        vec![vi("ids", 7, &[1, 3])],
        vec![vi("y", 1, &[1, 3, WIDTH as i64])],
    );
    let p = dir.join("lookup.onnx");
    write_proto(&p, &m);
    s(&p)
}

fn ints(t: &Tensor) -> Vec<i32> {
    match t {
        Tensor::I4(a) | Tensor::I8(a) => a.iter().map(|&v| v as i32).collect(),
        Tensor::U4(a) | Tensor::U8(a) => a.iter().map(|&v| v as i32).collect(),
        other => panic!("not integer codes: {:?}", other.dtype()),
    }
}

fn konst(g: &Graph, o: qrange::ir::OpId, slot: usize) -> Option<Tensor> {
    let v = g.input(o, slot)?;
    Some(g.const_of(v).expect("a constant").to_tensor().unwrap())
}

/// The one op of `op_type` in the written model: its codes decoded against the float table,
/// each within half its step. Returns the block size (`None`: per row) and the codes' type.
fn decode_table(path: &Path, op_type: &str) -> (Option<usize>, qrange::ir::DType) {
    let m = qrange::onnx::read_model(path).unwrap();
    let g = &m.graph;
    let ops: Vec<_> = g.ops().filter(|&o| g.op(o).op_type == op_type).collect();
    assert_eq!(ops.len(), 1, "one {op_type} expected");
    let o = ops[0];
    let op = g.op(o);
    let codes = konst(g, o, 0).unwrap();
    assert_eq!(codes.shape(), vec![ROWS, WIDTH]);
    let scale_slot = if op_type == "GatherBlockQuantized" {
        2
    } else {
        1
    };
    let Tensor::F32(scales) = konst(g, o, scale_slot).unwrap() else {
        panic!("float scales")
    };
    let zp = konst(g, o, scale_slot + 1).map(|z| ints(&z));
    let block = op.attr_int("block_size").map(|b| b as usize);
    match block {
        Some(b) => {
            assert_eq!(scales.shape(), [ROWS, WIDTH.div_ceil(b)]);
            assert_eq!(
                op.attr_int(if op_type == "GatherBlockQuantized" {
                    "quantize_axis"
                } else {
                    "axis"
                }),
                Some(1)
            );
        }
        None => {
            assert_eq!(scales.shape(), [ROWS]);
            assert_eq!(op.attr_int("axis"), Some(0));
        }
    }
    let scales: Vec<f32> = scales.iter().copied().collect();
    let q = ints(&codes);
    let float = table();
    let per_row = scales.len() / ROWS;
    for (i, (&w, &c)) in float.iter().zip(&q).enumerate() {
        let p = (i / WIDTH) * per_row + block.map_or(0, |b| (i % WIDTH) / b);
        let z = zp.as_ref().map_or(0, |z| z[p]);
        let d = (c - z) as f32 * scales[p];
        assert!(
            (d - w).abs() <= scales[p] * 0.5 * (1.0 + 1e-5),
            "element {i}: {w} decodes to {d} (step {})",
            scales[p]
        );
    }
    (block, codes.dtype())
}

fn weight_only(model: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let out = s(out);
    let mut args = vec![model, "--mode", "weight-only"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", &out]);
    quantize_json(&args)
}

#[test]
fn weight_only_int4_table_on_ort_cpu_is_gather_block_quantized_with_a_partial_last_block() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_lookup(tmp.path());
    let out = tmp.path().join("q.onnx");
    let j = weight_only(&m, &out, &[]);
    assert_eq!(j["tables"][0]["written_as"], "GatherBlockQuantized", "{j}");
    assert_eq!(j["tables"][0]["block_size"], 32, "{j}");
    let (block, dtype) = decode_table(&out, "GatherBlockQuantized");
    assert_eq!((block, dtype), (Some(32), qrange::ir::DType::U4));
    assert!(!common::op_counts(&out).contains_key("Gather"));
}

#[test]
fn weight_only_symmetric_int4_table_is_int4_without_zero_points() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_lookup(tmp.path());
    let out = tmp.path().join("q.onnx");
    weight_only(&m, &out, &["--weight-symmetric", "--block-size", "16"]);
    let (block, dtype) = decode_table(&out, "GatherBlockQuantized");
    assert_eq!((block, dtype), (Some(16), qrange::ir::DType::I4));
}

#[test]
fn weight_only_table_for_any_runtime_is_blocked_dequantize_linear_at_opset_21() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_lookup(tmp.path());
    let out = tmp.path().join("q.onnx");
    let j = weight_only(&m, &out, &["--target", "generic"]);
    assert_eq!(j["tables"][0]["written_as"], "DequantizeLinear", "{j}");
    let (block, dtype) = decode_table(&out, "DequantizeLinear");
    assert_eq!((block, dtype), (Some(32), qrange::ir::DType::U4));
    let written = qrange::onnx::read_model(&out).unwrap();
    assert_eq!(written.opset(""), Some(21));
    assert_eq!(common::op_counts(&out)["Gather"], 1);
}

#[test]
fn embedding_bits_8_per_channel_stores_the_table_int8_per_row() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_lookup(tmp.path());
    let out = tmp.path().join("q.onnx");
    weight_only(
        &m,
        &out,
        &[
            "--embedding-bits",
            "8",
            "--block-size",
            "channel",
            "--weight-symmetric",
        ],
    );
    let (block, dtype) = decode_table(&out, "DequantizeLinear");
    assert_eq!((block, dtype), (None, qrange::ir::DType::I8));
}

#[test]
fn embedding_bits_float_leaves_the_tables_float_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let m = s(&fixture("minilm_l3/model.onnx"));
    let j = weight_only(&m, &out, &["--embedding-bits", "float"]);
    assert_eq!(j["tables"].as_array().unwrap().len(), 0, "{j}");
    assert_eq!(
        j["float_tables"]["--embedding-bits float"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{j}"
    );
    let quantized = weight_only(&m, &tmp.path().join("q4.onnx"), &[]);
    assert_eq!(
        quantized["tables"].as_array().unwrap().len(),
        3,
        "{quantized}"
    );
    assert!(
        quantized["size_after"].as_u64().unwrap() + 500_000 < j["size_after"].as_u64().unwrap(),
        "int4 tables: {quantized}\nfloat tables: {j}"
    );
}

#[test]
fn embedding_bits_other_than_8_4_float_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_lookup(tmp.path());
    let out = tmp.path().join("q.onnx");
    let r = qrange(&[
        "quantize",
        &m,
        "--mode",
        "weight-only",
        "--embedding-bits",
        "3",
        "-o",
        &s(&out),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--embedding-bits 3 must be 8, 4 or float"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn static_embedding_bits_4_stores_the_word_table_int4_in_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let (int8, int4) = (tmp.path().join("q8.onnx"), tmp.path().join("q4.onnx"));
    let j8 = common::quantize_minilm(&int8, &[]);
    let j4 = common::quantize_minilm(&int4, &["--embedding-bits", "4", "--block-size", "64"]);
    let ops = common::op_counts(&int4);
    assert_eq!(ops.get("GatherBlockQuantized"), Some(&1), "{ops:?}");
    let m = qrange::onnx::read_model(&int4).unwrap();
    let g = &m.graph;
    let gbq = g
        .ops()
        .find(|&o| g.op(o).op_type == "GatherBlockQuantized")
        .unwrap();
    assert_eq!(g.op(gbq).attr_int("block_size"), Some(64));
    assert_eq!(konst(g, gbq, 0).unwrap().dtype(), qrange::ir::DType::I4);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&int4) < size(&int8), "{j8}\n{j4}");
}

#[test]
fn block_size_for_tables_must_be_a_power_of_two_and_needs_embedding_bits_4() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    let (model, calib) = (
        s(&fixture("minilm_l3/model.onnx")),
        s(&fixture("minilm_l3/calib.npz")),
    );
    for (extra, msg) in [
        (
            vec!["--embedding-bits", "4", "--block-size", "24"],
            "--block-size 24 must be a power of two of at least 16",
        ),
        (
            vec!["--block-size", "32"],
            "--block-size applies to --mode weight-only",
        ),
    ] {
        let mut args = vec!["quantize", model.as_str(), "--calib", calib.as_str()];
        args.extend(extra);
        let o = s(&out);
        args.extend(["-o", o.as_str()]);
        let r = qrange(&args);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(msg), "{}", r.stderr);
        assert!(!out.exists());
    }
}
