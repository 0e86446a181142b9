//! `--size-budget`: every weight's storage (8-bit, int4 per channel or in blocks, k-means
//! 4/3/2-bit) chosen to fit, as written in the model, replayed by the overrides file, and
//! the unreachable budget.

mod common;

use common::*;
use std::path::Path;

const INT8: i32 = 3;
const UINT8: i32 = 2;
const INT4: i32 = 22;
const UINT4: i32 = 21;

fn cls(out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        s(&fixture("ppocr_cls/model.onnx")),
        "--calib".into(),
        s(&fixture("ppocr_cls/calib.npz")),
        "--no-validate".into(),
        "-o".into(),
        s(out),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    quantize_json(&refs)
}

/// The written initializer `name`: element type and dims.
fn init(m: &qrange::onnx::proto::ModelProto, name: &str) -> Option<(i32, Vec<i64>)> {
    let g = m.graph.as_ref().unwrap();
    g.initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .map(|t| (t.data_type.unwrap_or(0), t.dims.clone()))
}

#[test]
fn each_weight_gets_the_storage_the_budget_chose_and_the_model_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let float = std::fs::metadata(fixture("ppocr_cls/model.onnx"))
        .unwrap()
        .len();
    // Written compact, the all-8-bit model fits 0.42× (0.379×): 0.30× makes weights move.
    let mb = format!("{}", 0.30 * float as f64 / 1e6);
    let out = tmp.path().join("cls.onnx");
    let j = cls(&out, &["--size-budget", &mb]);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size as f64 <= 0.30 * float as f64,
        "{size} bytes over 0.30 × {float}"
    );
    let weights = j["size_budget"]["weights"].as_array().unwrap();
    let m = load(&out);
    let mut kinds = std::collections::BTreeSet::new();
    for w in weights {
        let name = w["weight"].as_str().unwrap();
        let storage = w["storage"].as_str().unwrap();
        kinds.insert(storage.to_string());
        match storage {
            "w8" => assert_eq!(init(&m, &format!("{name}.q")).unwrap().0, INT8, "{name}"),
            "w4" => assert_eq!(init(&m, &format!("{name}.q")).unwrap().0, INT4, "{name}"),
            k if k.starts_with("w4b") => {
                assert_eq!(init(&m, &format!("{name}.q")).unwrap().0, INT4, "{name}")
            }
            k => {
                let bits: u32 = k.strip_prefix("kmeans").unwrap().parse().unwrap();
                let (ty, dims) = init(&m, &format!("{name}.codebook")).unwrap();
                assert_eq!(ty, INT8, "{name}");
                assert_eq!(dims[1], 1 << bits, "{name}: {dims:?}");
                let (ty, dims) = init(&m, &format!("{name}.index")).unwrap();
                let elements = w["elements"].as_u64().unwrap() as i64;
                if bits == 4 {
                    assert_eq!((ty, dims[0] * dims[1]), (UINT4, elements), "{name}");
                } else {
                    // Packed: bits per index, whole bytes per channel.
                    let per_channel = elements / dims[0];
                    let bytes = (per_channel * bits as i64 + 7) / 8;
                    assert_eq!((ty, dims[1]), (UINT8, bytes), "{name}");
                }
            }
        }
    }
    assert!(
        kinds.len() >= 2 && kinds.iter().any(|k| k.starts_with("kmeans")),
        "{kinds:?}"
    );
    // The summary's shares by stored width agree with the chosen storage: a codebook
    // weight counts at its index width, not as the int8 of its levels.
    let mut elements = std::collections::BTreeMap::<u32, f64>::new();
    for w in weights {
        let bits = match w["storage"].as_str().unwrap() {
            "w8" => 8,
            k if k.starts_with("w4") => 4,
            k => k.strip_prefix("kmeans").unwrap().parse().unwrap(),
        };
        *elements.entry(bits).or_default() += w["elements"].as_f64().unwrap();
    }
    let shares = j["weight_bits_share"].as_object().unwrap();
    let share = |b: u32| {
        shares
            .get(&b.to_string())
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    };
    let (&widest, &n_widest) = elements.iter().next_back().unwrap();
    for (&b, &n) in &elements {
        let (got, want) = (share(b) / share(widest), n / n_widest);
        assert!(
            (got - want).abs() < 1e-9,
            "{b} bits: {got} vs {want}: {shares:?}"
        );
    }
    assert_eq!(j["weight_8bit_share"].as_f64().unwrap(), share(8));
    // Same bytes again, and the overrides file replays them.
    let again = tmp.path().join("again.onnx");
    cls(&again, &["--size-budget", &mb]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    let replay = tmp.path().join("replay.onnx");
    let ov = tmp.path().join("cls.overrides.json");
    cls(&replay, &["--overrides", &s(&ov)]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&replay).unwrap()
    );
}

#[test]
fn a_budget_below_the_smallest_storage_is_one_line_naming_the_minimum() {
    let tmp = tempfile::tempdir().unwrap();
    let none = tmp.path().join("none.onnx");
    let r = qrange(&[
        "quantize",
        &s(&fixture("ppocr_cls/model.onnx")),
        "--calib",
        &s(&fixture("ppocr_cls/calib.npz")),
        "--size-budget",
        "0.01",
        "--no-validate",
        "-o",
        &s(&none),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let first = r.stderr.lines().next().unwrap();
    assert!(
        first.starts_with("error: --size-budget 0.01 MB: unreachable; the smallest model qrange writes here is 0."),
        "{}",
        r.stderr
    );
    assert!(!none.exists());
}

#[test]
fn the_output_cost_measures_every_weight_fits_and_replays_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let float = std::fs::metadata(fixture("ppocr_cls/model.onnx"))
        .unwrap()
        .len();
    let mb = format!("{}", 0.30 * float as f64 / 1e6);
    let out = tmp.path().join("cls.onnx");
    let args = ["--size-budget", &mb, "--size-budget-cost", "output"];
    let j = cls(&out, &args);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size as f64 <= 0.30 * float as f64, "{size} bytes");
    let a = &j["size_budget"];
    assert_eq!(a["cost"], "output", "{a}");
    assert!(a["sensitivity_samples"].as_u64().unwrap() >= 1, "{a}");
    for w in a["weights"].as_array().unwrap() {
        let f = w["sensitivity"].as_f64().unwrap();
        assert!(f.is_finite() && f > 0.0, "{w}");
    }
    // The layer cost (the default) chooses without the simulation.
    let layer = cls(&tmp.path().join("layer.onnx"), &["--size-budget", &mb]);
    assert_eq!(layer["size_budget"]["cost"], "layer");
    assert_eq!(layer["size_budget"]["sensitivity_samples"], 0);
    assert!(layer["size_budget"]["weights"][0]["sensitivity"].is_null());
    // Same bytes again; the overrides file replays them without measuring.
    let again = tmp.path().join("again.onnx");
    cls(&again, &args);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    let replay = tmp.path().join("replay.onnx");
    let ov = tmp.path().join("cls.overrides.json");
    cls(&replay, &["--overrides", &s(&ov)]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&replay).unwrap()
    );
}

/// The DequantizeLinear node of weight `name` (the one reading its codes, `<name>.q`) in a
/// written model (a budget writes compact: added nodes carry no names).
fn dequantize_of<'a>(
    m: &'a qrange::onnx::proto::ModelProto,
    name: &str,
) -> &'a qrange::onnx::proto::NodeProto {
    let want = format!("{name}.q");
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| {
            n.op_type.as_deref() == Some("DequantizeLinear") && n.input.first() == Some(&want)
        })
        .unwrap_or_else(|| panic!("no DequantizeLinear of {want}"))
}

fn int_attr_of(n: &qrange::onnx::proto::NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

#[test]
fn a_transformer_budget_blocks_matmul_weights_and_the_embedding_table_along_their_reduction_axis() {
    let tmp = tempfile::tempdir().unwrap();
    let float = std::fs::metadata(fixture("minilm_l3/model.onnx"))
        .unwrap()
        .len();
    let mb = format!("{}", 0.2 * float as f64 / 1e6);
    let out = tmp.path().join("minilm.onnx");
    let report = tmp.path().join("minilm.html");
    let j = quantize_minilm(&out, &["--size-budget", &mb, "--report", &s(&report)]);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size as f64 <= 0.2 * float as f64,
        "{size} bytes over 0.2 × {float}"
    );
    // The report's precision table gives each op's activation precision and weight storage.
    let html = std::fs::read_to_string(&report).unwrap();
    let precision = &html[html.find("id=\"precision\"").unwrap()..];
    assert!(
        precision.contains("a8 (u8 asymmetric)"),
        "activation precision"
    );
    assert!(
        precision.contains("i4 symmetric [-7, 7] in blocks of"),
        "blocked weights named with their blocks"
    );
    let m = load(&out);
    let weights = j["size_budget"]["weights"].as_array().unwrap();
    // The word-embedding table (read by a Gather) is a candidate with the MatMul weights.
    let float_model = load(&fixture("minilm_l3/model.onnx"));
    let gathered: std::collections::BTreeSet<String> = float_model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Gather"))
        .map(|n| n.input[0].clone())
        .collect();
    assert!(
        weights
            .iter()
            .any(|w| gathered.contains(w["weight"].as_str().unwrap())),
        "no embedding table among {weights:?}"
    );
    let mut blocked = 0;
    for w in weights {
        let name = w["weight"].as_str().unwrap();
        let storage = w["storage"].as_str().unwrap();
        let Some(size) = storage.strip_prefix("w4b") else {
            continue;
        };
        blocked += 1;
        let size: i64 = size.parse().unwrap();
        let dq = dequantize_of(&m, name);
        assert_eq!(int_attr_of(dq, "block_size"), Some(size), "{name}");
        // Symmetric blocks: codes and scales, no zero point (absent or the empty name).
        assert!(
            dq.input.get(2).is_none_or(|z| z.is_empty()),
            "{name}: {:?}",
            dq.input
        );
        let (ty, dims) = init(&m, &dq.input[0]).unwrap();
        assert_eq!(ty, INT4, "{name}");
        let (_, sdims) = init(&m, &dq.input[1]).unwrap();
        let axis = int_attr_of(dq, "axis").unwrap() as usize;
        assert_eq!(
            sdims[axis] * size,
            dims[axis],
            "{name}: {sdims:?} of {dims:?}"
        );
        assert_eq!(sdims[1 - axis], dims[1 - axis], "{name}");
        // Along the reduction axis: a MatMul weight's rows, a table's width.
        let reader = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .find(|n| n.input.iter().any(|i| i == &dq.output[0]))
            .unwrap();
        let want = match reader.op_type.as_deref() {
            Some("MatMul") => 0,
            Some("Gather") => 1,
            other => panic!("{name} read by {other:?}"),
        };
        assert_eq!(axis, want, "{name}");
    }
    assert!(blocked > 0, "nothing blocked: {weights:?}");
    assert_eq!(
        m.opset_import
            .iter()
            .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
            .unwrap()
            .version,
        Some(21)
    );
    // The summary lists each layer's activation precision and weight storage, as chosen.
    let layers = j["layers"].as_array().unwrap();
    for w in weights {
        let name = w["weight"].as_str().unwrap();
        let reader = float_model
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .find(|n| n.input.iter().any(|i| i == name))
            .unwrap();
        let key = reader.name.clone().unwrap();
        let l = layers
            .iter()
            .find(|l| l["node"] == key.as_str())
            .unwrap_or_else(|| panic!("{key} not in {layers:?}"));
        assert_eq!(l["weight"], w["storage"], "{l}");
        let want_act = if reader.op_type.as_deref() == Some("Gather") {
            "float"
        } else {
            "a8"
        };
        assert_eq!(l["activation"], want_act, "{l}");
    }
    // The validation ran in tract on the evaluation data, and the overrides file replays
    // the same bytes.
    assert!(
        j["validation"].as_object().is_some_and(|v| !v.is_empty()),
        "{j}"
    );
    let replay = tmp.path().join("replay.onnx");
    let ov = tmp.path().join("minilm.overrides.json");
    let text = std::fs::read_to_string(&ov).unwrap();
    assert!(text.contains("\"w4b"), "{text}");
    quantize_minilm(&replay, &["--overrides", &s(&ov)]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&replay).unwrap()
    );
}
