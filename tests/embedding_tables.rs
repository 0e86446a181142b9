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
    // Weights in blocks of 32 (the default), 4-bit tables in blocks of 16 (40 = 16 + 16 + 8).
    assert_eq!(j["tables"][0]["block_size"], 16, "{j}");
    assert_eq!(j["tables"][0]["algo"], "rtn", "{j}");
    let (block, dtype) = decode_table(&out, "GatherBlockQuantized");
    assert_eq!((block, dtype), (Some(16), qrange::ir::DType::U4));
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
    let j = weight_only(
        &m,
        &out,
        &["--target", "generic", "--embedding-block", "32"],
    );
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
    // The word table (ids from the input) in 4-bit blocks of 16; the position and token-type
    // tables (ids computed from the input's shape) int8 per row.
    for t in quantized["tables"].as_array().unwrap() {
        let name = t["table"].as_str().unwrap();
        let want = if name.contains("word_embeddings") {
            (4, serde_json::json!(16), "GatherBlockQuantized")
        } else {
            (8, serde_json::Value::Null, "DequantizeLinear")
        };
        assert_eq!(
            (
                t["bits"].as_u64().unwrap(),
                t["block_size"].clone(),
                t["written_as"].as_str().unwrap()
            ),
            (want.0, want.1, want.2),
            "{name}: {quantized}"
        );
    }
    // --embedding-bits 4 stores every table in 4 bits.
    let all4 = weight_only(&m, &tmp.path().join("q44.onnx"), &["--embedding-bits", "4"]);
    for t in all4["tables"].as_array().unwrap() {
        assert_eq!(t["bits"], 4, "{all4}");
    }
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
    // The summary lists the lookup as a quantized int4 table, not as a float op.
    let tables = j4["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{j4}");
    let word = &tables[0];
    assert_eq!(
        (
            &word["bits"],
            &word["block_size"],
            &word["written_as"],
            &word["algo"]
        ),
        (
            &serde_json::json!(4),
            &serde_json::json!(64),
            &serde_json::json!("GatherBlockQuantized"),
            &serde_json::json!("rtn")
        ),
        "{j4}"
    );
    assert!(word["sqnr_db"].as_f64().unwrap() > 10.0, "{j4}");
    let reasons = j4["float_reasons"].as_object().unwrap();
    assert!(!reasons.keys().any(|r| r.contains("int4")), "{reasons:?}");
    assert!(
        !reasons
            .values()
            .flat_map(|v| v.as_array().unwrap())
            .any(|k| k == &word["node"]),
        "{reasons:?}"
    );
    // int8 rows and int4 blocks: the same lookup quantized either way.
    assert_eq!(j4["quantized_ops"], j8["quantized_ops"], "{j8}\n{j4}");
    assert_eq!(j4["float_ops"], j8["float_ops"], "{j8}\n{j4}");
    assert!(j4["weight_bits_share"]["4"].as_f64().unwrap() > 0.0, "{j4}");
    assert!(j8.get("tables").is_none(), "{j8}");
}

#[test]
fn dynamic_embedding_bits_4_lists_the_tables_as_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&fixture("minilm_l3/model.onnx"));
    let out = tmp.path().join("q.onnx");
    let o = s(&out);
    let args = [
        "quantize",
        model.as_str(),
        "--mode",
        "dynamic",
        "--embedding-bits",
        "4",
        "--embedding-block",
        "16",
        "--no-validate",
        "-o",
        o.as_str(),
    ];
    let j = quantize_json(&args[1..]);
    let tables = j["tables"].as_array().unwrap();
    assert!(!tables.is_empty(), "{j}");
    assert!(
        tables
            .iter()
            .all(|t| t["block_size"] == 16 && t["bits"] == 4),
        "{j}"
    );
    let reasons = j["float_reasons"].as_object().unwrap();
    assert!(
        !reasons.keys().any(|r| r.contains("--embedding-bits")),
        "{reasons:?}"
    );
    assert!(j["weight_bits_share"]["4"].as_f64().unwrap() > 0.0, "{j}");
    let r = qrange(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("embedding tables quantized")
            && r.stdout.contains("int4 blocks of 16, rtn, SQNR"),
        "{}",
        r.stdout
    );
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

/// `y = Gather(emb, ids) @ w`: the table of [`write_lookup`], then a `[WIDTH, 24]` weight; and
/// 6 samples of ids `[1, 3]` (for GPTQ's calibration).
fn write_lookup_proj(dir: &Path) -> (String, String) {
    let w: Vec<f32> = (0..WIDTH * 24)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
        .collect();
    let m = model(
        vec![
            node("Gather", "lookup", &["emb", "ids"], &["e"]),
            node("MatMul", "proj", &["e", "w"], &["y"]),
        ],
        vec![
            f32_init("emb", &[ROWS as i64, WIDTH as i64], &table()),
            f32_init("w", &[WIDTH as i64, 24], &w),
        ],
        vec![vi("ids", 7, &[1, 3])],
        vec![vi("y", 1, &[1, 3, 24])],
    );
    let p = dir.join("lookup_proj.onnx");
    write_proto(&p, &m);
    let ids: Vec<i64> = (0..18).map(|i| (i * 5 % ROWS) as i64).collect();
    let data = dir.join("ids.npz");
    common::write_npz_arrays(
        &data,
        vec![(
            "ids",
            Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[6, 1, 3]), ids).unwrap()),
        )],
    );
    (s(&p), s(&data))
}

/// `block_size` of the op of `op_type` that reads the codes of the float model's constant
/// `input` (`<input>.q`, `<input>.nbits`) at slot 0 or 1.
fn block_of(path: &Path, op_type: &str, input: &str) -> Option<i64> {
    let m = qrange::onnx::read_model(path).unwrap();
    let g = &m.graph;
    let o = g
        .ops()
        .find(|&o| {
            g.op(o).op_type == op_type
                && (0..2).any(|slot| {
                    g.input(o, slot)
                        .is_some_and(|v| g.value(v).name.starts_with(&format!("{input}.")))
                })
        })
        .unwrap_or_else(|| panic!("no {op_type} reads '{input}'"));
    g.op(o).attr_int("block_size")
}

#[test]
fn embedding_block_sets_the_table_blocks_apart_from_the_weights_in_both_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = write_lookup_proj(tmp.path());
    for (target, table_op, weight_op) in [
        ("ort-cpu", "GatherBlockQuantized", "MatMulNBits"),
        ("generic", "DequantizeLinear", "DequantizeLinear"),
    ] {
        for (weights, tables) in [("32", "16"), ("16", "32")] {
            let out = tmp
                .path()
                .join(format!("q-{target}-{weights}-{tables}.onnx"));
            let j = weight_only(
                &m,
                &out,
                &[
                    "--target",
                    target,
                    "--block-size",
                    weights,
                    "--embedding-block",
                    tables,
                ],
            );
            let want: i64 = tables.parse().unwrap();
            assert_eq!(j["block_size"], weights.parse::<i64>().unwrap(), "{j}");
            assert_eq!(j["tables"][0]["block_size"], want, "{j}");
            assert_eq!(j["tables"][0]["written_as"], table_op, "{j}");
            assert_eq!(block_of(&out, table_op, "emb"), Some(want), "{target}");
            assert_eq!(
                block_of(&out, weight_op, "w"),
                Some(weights.parse().unwrap()),
                "{target}"
            );
        }
    }
}

#[test]
fn tables_get_the_clipping_search_when_the_weights_use_gptq_or_clip() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, calib) = write_lookup_proj(tmp.path());
    let rtn = weight_only(&m, &tmp.path().join("rtn.onnx"), &[]);
    let clip = weight_only(
        &m,
        &tmp.path().join("clip.onnx"),
        &["--weight-algo", "clip"],
    );
    let gptq = weight_only(
        &m,
        &tmp.path().join("gptq.onnx"),
        &["--weight-algo", "gptq", "--calib", &calib],
    );
    assert_eq!(rtn["tables"][0]["algo"], "rtn", "{rtn}");
    assert_eq!(clip["tables"][0]["algo"], "clip", "{clip}");
    assert_eq!(gptq["tables"][0]["algo"], "clip", "{gptq}");
    // The search keeps min/max's grid when nothing better is found: never worse.
    let db = |j: &serde_json::Value| j["tables"][0]["sqnr_db"].as_f64().unwrap();
    assert!(
        db(&clip) >= db(&rtn),
        "clip {} dB, rtn {} dB",
        db(&clip),
        db(&rtn)
    );
    assert_eq!(db(&clip), db(&gptq));
    // The tables' codes differ: the clipping search moved some block's grid.
    let codes = |p: &Path| {
        let m = qrange::onnx::read_model(p).unwrap();
        let g = &m.graph;
        let o = g
            .ops()
            .find(|&o| g.op(o).op_type == "GatherBlockQuantized")
            .unwrap();
        ints(&konst(g, o, 0).unwrap())
    };
    assert_ne!(
        codes(&tmp.path().join("rtn.onnx")),
        codes(&tmp.path().join("clip.onnx"))
    );
}

#[test]
fn embedding_block_must_be_a_power_of_two_of_at_least_16_and_fit_the_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = write_lookup_proj(tmp.path());
    let out = tmp.path().join("q.onnx");
    let o = s(&out);
    for (extra, msg) in [
        (
            vec!["--mode", "weight-only", "--embedding-block", "24"],
            "--embedding-block 24 must be a power of two of at least 16",
        ),
        (
            vec!["--mode", "weight-only", "--embedding-block", "8"],
            "--embedding-block 8 must be a power of two of at least 16",
        ),
        (
            vec!["--mode", "weight-only", "--embedding-block", "x"],
            "--embedding-block x must be a power of two of at least 16",
        ),
        (
            vec![
                "--mode",
                "weight-only",
                "--embedding-bits",
                "float",
                "--embedding-block",
                "16",
            ],
            "--embedding-block sets the blocks of quantized tables",
        ),
        (
            vec!["--mode", "dynamic", "--embedding-block", "32"],
            "--embedding-block applies to --embedding-bits 4 tables",
        ),
        (
            vec![
                "--mode",
                "dynamic",
                "--embedding-bits",
                "4",
                "--embedding-block",
                "32",
                "--block-size",
                "32",
            ],
            "--block-size and --embedding-block both set",
        ),
    ] {
        let mut args = vec!["quantize", m.as_str()];
        args.extend(extra);
        args.extend(["-o", o.as_str()]);
        let r = qrange(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{}", r.stderr);
        assert!(first.contains(msg), "{args:?}: {}", r.stderr);
        assert!(!out.exists());
    }
}

#[test]
fn pipeline_refuses_a_bad_embedding_block_naming_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = write_lookup_proj(tmp.path());
    let mut o = qrange::pipeline::options::QuantizeOptions::new(
        &m,
        qrange::pipeline::options::CalibSource::None,
        tmp.path().join("q.onnx"),
    );
    o.mode = qrange::pipeline::options::Mode::WeightOnly;
    o.common.settings.embedding_block = Some(48);
    let e = qrange::pipeline::weight_only::check(&o).unwrap_err();
    assert!(e.to_string().contains("--embedding-block 48"), "{e}");
    o.common.settings.embedding_block = Some(64);
    qrange::pipeline::weight_only::check(&o).unwrap();
}
