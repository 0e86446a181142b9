//! The fuzzed readers: their seeds (shipped fixtures), their structure-aware mutation, and
//! what one case runs.

use super::{mutate, Rng};
use prost::Message;
use qrange::data::InputSpec;
use qrange::ir::{AttrValue, DType, Graph, Model};
use qrange::onnx::proto::{self, StringStringEntryProto, TensorProto};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

pub const TARGETS: [&str; 6] = ["onnx", "npy", "npz", "pb", "png", "jpeg"];

/// In a child's working folder: the name of the case being run.
pub const CURRENT_NAME: &str = "current.name";
/// In a child's working folder: the index of the corpus input being replayed.
pub const CURRENT_INDEX: &str = "current.index";
/// In a child's working folder: the bytes of the case being run.
const CURRENT_BYTES: &str = "current.bytes";
/// Bytes beside every model and tensor file, for external data references to find.
const SIDE_FILE: &str = "weights.bin";

/// A starting input: a fixture's bytes and, for data files, the model inputs they are
/// checked against (kept with a saved failure as `<file>.inputs`).
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
    pub inputs: Vec<InputSpec>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ext(target: &str) -> &'static str {
    match target {
        "onnx" => "onnx",
        "npy" => "npy",
        "npz" => "npz",
        "pb" => "pb",
        "png" => "png",
        _ => "jpg",
    }
}

fn files(dir: &Path, pred: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, pred, out);
        } else if pred(&p) && std::fs::metadata(&p).unwrap().len() <= 16 << 10 {
            out.push(p);
        }
    }
}

fn has_ext(p: &Path, e: &str) -> bool {
    p.extension().is_some_and(|x| x == e)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root().join("fixtures"))
        .unwrap_or(p)
        .display()
        .to_string()
}

/// The model inputs a `.npy` payload fits: one, named `name`, of its dtype and sample shape.
fn npy_spec(name: &str, b: &[u8]) -> Option<InputSpec> {
    let (s, e) = mutate::npy_header(b)?;
    let text = String::from_utf8_lossy(&b[s..e]);
    let descr = text.split("'descr': '").nth(1)?.split('\'').next()?;
    let dtype = match &descr[1..] {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "i8" => DType::I64,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => return None,
    };
    let shape = text.split("'shape': (").nth(1)?.split(')').next()?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().ok())
        .collect::<Option<_>>()?;
    let sample = dims.get(1..)?.iter().map(|&d| Some(d)).collect();
    Some(InputSpec::new(name, dtype, Some(sample)))
}

/// The `.npy` members of an `.npz`, by array name (`None` when the archive does not read).
fn npz_members(b: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(b)).ok()?;
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).ok()?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).ok()?;
            Some((f.name().trim_end_matches(".npy").to_string(), v))
        })
        .collect()
}

fn write_npz(members: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .last_modified_time(zip::DateTime::default());
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Arrays of rank 2 or more are the model inputs (a sample axis and the input's own
/// shape); the others (labels) are extra arrays.
fn npz_specs(members: &[(String, Vec<u8>)]) -> Vec<InputSpec> {
    members
        .iter()
        .filter_map(|(n, b)| npy_spec(n, b))
        .filter(|s| s.shape.as_ref().is_some_and(|d| !d.is_empty()))
        .collect()
}

/// The starting inputs of `target`: the small fixtures of its format.
pub fn seeds(target: &str) -> Vec<Seed> {
    let fx = root().join("fixtures");
    let mut paths = Vec::new();
    let seed = |p: &Path, inputs| Seed {
        name: rel(p),
        bytes: std::fs::read(p).unwrap(),
        inputs,
    };
    match target {
        "onnx" => {
            files(&fx, &|p| has_ext(p, "onnx"), &mut paths);
            paths.iter().map(|p| seed(p, Vec::new())).collect()
        }
        "npy" | "npz" => {
            files(&fx.join("tiny"), &|p| has_ext(p, "npz"), &mut paths);
            let mut out = Vec::new();
            for p in &paths {
                let s = seed(p, Vec::new());
                let members = npz_members(&s.bytes).expect("a readable fixture");
                if target == "npz" {
                    let inputs = npz_specs(&members);
                    out.push(Seed {
                        name: format!("{}(deflated)", s.name),
                        bytes: write_npz(&members, true),
                        inputs: inputs.clone(),
                    });
                    out.push(Seed { inputs, ..s });
                } else {
                    for (n, b) in members {
                        let Some(spec) = npy_spec("x", &b) else {
                            continue;
                        };
                        out.push(Seed {
                            name: format!("{}/{n}.npy", s.name),
                            bytes: b,
                            inputs: vec![spec],
                        });
                    }
                }
            }
            out
        }
        "pb" => {
            files(&fx, &|p| has_ext(p, "pb"), &mut paths);
            paths
                .iter()
                .map(|p| {
                    let b = std::fs::read(p).unwrap();
                    let t = TensorProto::decode(b.as_slice()).unwrap();
                    let name = t.name.clone().filter(|n| !n.is_empty());
                    let spec = InputSpec::new(
                        name.unwrap_or_else(|| "x".into()),
                        DType::from_onnx(t.data_type.unwrap_or(0)),
                        Some(t.dims.iter().map(|&d| usize::try_from(d).ok()).collect()),
                    );
                    seed(p, vec![spec])
                })
                .collect()
        }
        "png" => {
            files(&fx, &|p| has_ext(p, "png"), &mut paths);
            paths.iter().map(|p| seed(p, Vec::new())).collect()
        }
        _ => {
            files(&fx, &|p| has_ext(p, "jpg"), &mut paths);
            paths.iter().map(|p| seed(p, Vec::new())).collect()
        }
    }
}

/// Every `TensorProto` of a graph, its subgraphs' included.
fn graph_tensors<'a>(g: &'a mut proto::GraphProto, out: &mut Vec<&'a mut TensorProto>) {
    out.extend(g.initializer.iter_mut());
    for s in &mut g.sparse_initializer {
        out.extend(s.values.as_mut());
        out.extend(s.indices.as_mut());
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            out.extend(a.t.as_mut());
            out.extend(a.tensors.iter_mut());
            if let Some(sg) = a.g.as_mut() {
                graph_tensors(sg, out);
            }
            for sg in &mut a.graphs {
                graph_tensors(sg, out);
            }
        }
    }
}

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

fn interesting_i64(rng: &mut Rng) -> i64 {
    *rng.pick(&[
        0,
        1,
        3,
        -1,
        i64::MIN,
        i64::MAX,
        1 << 31,
        1 << 32,
        1 << 40,
        1 << 61,
        1 << 62,
        (1 << 62) + 1,
    ])
}

/// One edit of a tensor as a typed message: dims, element type, raw data length, typed
/// lists, segment, external data (location, offset, length).
fn tensor(rng: &mut Rng, t: &mut TensorProto) {
    match rng.below(8) {
        0 | 1 => match rng.below(4) {
            0 if !t.dims.is_empty() => {
                let i = rng.below(t.dims.len());
                t.dims[i] = interesting_i64(rng);
            }
            1 => t.dims.push(interesting_i64(rng)),
            2 => t.dims = vec![1 << 40, 1 << 40],
            _ => {
                t.dims.pop();
            }
        },
        2 => {
            t.data_type =
                Some(*rng.pick(&[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 13, 16, 21, 22, 23, 99, -1]))
        }
        3 => {
            let raw = t.raw_data.get_or_insert_with(Vec::new);
            match rng.below(3) {
                0 => raw.truncate(rng.below(raw.len() + 1)),
                1 => raw.extend((0..1 + rng.below(16)).map(|_| rng.next_u64() as u8)),
                _ => {
                    t.raw_data = None;
                }
            }
        }
        4 => match rng.below(5) {
            0 => t.float_data.push(f32::NAN),
            1 => t
                .int32_data
                .push(*rng.pick(&[i32::MIN, -1, 256, 70000, i32::MAX])),
            2 => t.int64_data.push(interesting_i64(rng)),
            3 => t.string_data.push(vec![0xff, 0xfe, 0]),
            _ => t.uint64_data.push(u64::MAX),
        },
        5 => {
            t.segment = Some(proto::tensor_proto::Segment {
                begin: Some(interesting_i64(rng)),
                end: Some(interesting_i64(rng)),
            })
        }
        _ => {
            t.data_location = Some(*rng.pick(&[1, 1, 1, 0, 2]));
            let location = *rng.pick(&[
                SIDE_FILE,
                SIDE_FILE,
                "missing.bin",
                "../weights.bin",
                "/etc/hostname",
                "",
                "./weights.bin",
                ".",
                "sub/../weights.bin",
            ]);
            let num = |rng: &mut Rng| -> String {
                match rng.below(4) {
                    0 => rng
                        .pick(&["-1", "abc", "", "18446744073709551616"])
                        .to_string(),
                    1 => rng.pick(&mutate::INTERESTING).to_string(),
                    _ => (rng.below(1100)).to_string(),
                }
            };
            let mut kv = vec![entry("location", location)];
            if rng.chance(2) {
                kv.push(entry("offset", &num(rng)));
            }
            if rng.chance(2) {
                kv.push(entry("length", &num(rng)));
            }
            if rng.chance(4) {
                kv.push(entry("checksum", "0"));
            }
            t.external_data = kv;
        }
    }
}

/// One typed edit of a model: one of its tensors, an opset, an attribute's declared type,
/// a node's inputs or outputs, a declared dim, a node or initializer removed.
fn model(rng: &mut Rng, m: &mut proto::ModelProto) {
    let Some(g) = m.graph.as_mut() else {
        return;
    };
    match rng.below(10) {
        0..=4 => {
            let mut all = Vec::new();
            graph_tensors(g, &mut all);
            if !all.is_empty() {
                let i = rng.below(all.len());
                tensor(rng, all.swap_remove(i));
            }
        }
        5 => {
            if let Some(o) = m.opset_import.first_mut() {
                o.version = Some(interesting_i64(rng));
            }
        }
        6 if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            let n = &mut g.node[i];
            if let Some(a) = n.attribute.first_mut() {
                a.r#type = Some(rng.below(16) as i32);
            }
        }
        7 if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            let names: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
            let n = &mut g.node[i];
            let new = rng.pick(&names).clone();
            match rng.below(3) {
                0 => n.input.push(new),
                1 => n.output.push(new),
                _ => n.op_type = Some(String::new()),
            }
        }
        8 => {
            let v = g.input.iter_mut().chain(g.output.iter_mut()).next();
            if let Some(proto::type_proto::Value::TensorType(tt)) = v
                .and_then(|v| v.r#type.as_mut())
                .and_then(|t| t.value.as_mut())
            {
                if let Some(d) = tt.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                    d.value = Some(proto::tensor_shape_proto::dimension::Value::DimValue(
                        interesting_i64(rng),
                    ));
                }
            }
        }
        _ => {
            if rng.chance(2) && !g.node.is_empty() {
                g.node.remove(rng.below(g.node.len()));
            } else if !g.initializer.is_empty() {
                g.initializer.remove(rng.below(g.initializer.len()));
            }
        }
    }
}

/// One edit of `b` as `target`'s format.
fn edit(target: &str, rng: &mut Rng, b: &mut Vec<u8>) {
    let roll = rng.below(10);
    match target {
        "onnx" | "pb" if roll < 5 => {
            if target == "onnx" {
                if let Ok(mut m) = proto::ModelProto::decode(b.as_slice()) {
                    model(rng, &mut m);
                    *b = m.encode_to_vec();
                    return;
                }
            } else if let Ok(mut t) = TensorProto::decode(b.as_slice()) {
                tensor(rng, &mut t);
                *b = t.encode_to_vec();
                return;
            }
            mutate::protobuf(rng, b)
        }
        "onnx" | "pb" if roll < 8 => mutate::protobuf(rng, b),
        "npy" if roll < 7 => mutate::npy(rng, b),
        "npz" if roll < 4 => {
            // Rebuilt from members, one of them edited as a `.npy`, stored or deflated.
            let Some(mut members) = npz_members(b) else {
                return mutate::zip(rng, b);
            };
            if !members.is_empty() {
                let i = rng.below(members.len());
                mutate::npy(rng, &mut members[i].1);
            }
            *b = write_npz(&members, rng.chance(2));
        }
        "npz" if roll < 7 => mutate::zip(rng, b),
        "png" if roll < 7 => mutate::png(rng, b),
        "jpeg" if roll < 7 => mutate::jpeg(rng, b),
        _ => mutate::bytes(rng, b),
    }
}

/// Case `i` of a run: a seed picked and edited one to four times. Its name says which.
pub fn case(target: &str, seeds: &[Seed], seed: u64, i: u64) -> (String, Vec<u8>) {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let s = rng.pick(seeds);
    let mut b = s.bytes.clone();
    for _ in 0..1 + rng.below(4) {
        edit(target, &mut rng, &mut b);
    }
    (format!("{}#seed{seed:x}-case{i}", s.name), b)
}

/// A failure to report: an empty error, or one whose text breaks the line. A line break
/// inside a quoted name ('...') is the file's own (the command line prints errors on one
/// line), not the reader's.
fn check_error(e: String) -> Result<(), String> {
    let mut quoted = false;
    let breaks = e.chars().any(|c| {
        quoted ^= c == '\'';
        !quoted && (c == '\n' || c == '\r')
    });
    if e.trim().is_empty() || breaks {
        return Err(format!("error is not one line: {e:?}"));
    }
    Ok(())
}

/// What `qrange inspect` and every command that loads a model do with it: decode (external
/// data read), sizes of every constant, the text dump, values of every constant, encode.
fn run_onnx(path: &Path) -> Result<(), String> {
    fn walk(g: &Graph, total: &mut u64) -> Result<(), String> {
        for v in &g.initializers {
            let t = g.const_of(*v).expect("initializer");
            *total = total.wrapping_add(t.numel() as u64 + t.byte_size() as u64);
            if let Err(e) = t.to_tensor() {
                check_error(e.to_string())?;
            }
        }
        for o in g.ops() {
            for a in &g.op(o).attrs {
                match &a.value {
                    AttrValue::Graph(sg) => walk(sg, total)?,
                    AttrValue::Graphs(gs) => {
                        for sg in gs {
                            walk(sg, total)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
    let m: Model = match qrange::onnx::read_model(path) {
        Ok(m) => m,
        Err(e) => return check_error(e.to_string()),
    };
    let mut total = 0;
    walk(&m.graph, &mut total)?;
    let _ = qrange::onnx::model_info(&m);
    let _ = qrange::ir::dump::dump_model(&m);
    match qrange::onnx::model_to_bytes(&m) {
        Ok(bytes) => {
            let again = qrange::onnx::decode_model(&bytes, path.parent().unwrap(), path);
            again.map(|_| ()).or_else(|e| check_error(e.to_string()))
        }
        Err(e) => check_error(e.to_string()),
    }
}

/// Loads a data file or folder as calibration does, and reads every sample (at most 64).
fn run_data(path: &Path, inputs: &[InputSpec]) -> Result<(), String> {
    let ds = match qrange::data::load(path, inputs) {
        Ok(ds) => ds,
        Err(e) => return check_error(e.to_string()),
    };
    for i in 0..ds.len().min(64) {
        if let Err(e) = ds.get(i) {
            check_error(e.to_string())?;
        }
    }
    if let Err(e) = ds.labels("label") {
        check_error(e.to_string())?;
    }
    Ok(())
}

/// Runs one case of `target` on `bytes`, with the files it needs laid out in `work`.
fn run(target: &str, bytes: &[u8], inputs: &[InputSpec], work: &Path) -> Result<(), String> {
    let side: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    match target {
        "onnx" => {
            let p = work.join("model.onnx");
            std::fs::write(work.join(SIDE_FILE), &side).unwrap();
            std::fs::write(&p, bytes).unwrap();
            run_onnx(&p)
        }
        "npy" | "npz" => {
            let p = work.join(format!("data.{target}"));
            std::fs::write(&p, bytes).unwrap();
            run_data(&p, inputs)
        }
        "pb" => {
            let set = work.join("test_data_set_0");
            std::fs::create_dir_all(&set).unwrap();
            std::fs::write(set.join(SIDE_FILE), &side).unwrap();
            let p = set.join("input_0.pb");
            std::fs::write(&p, bytes).unwrap();
            if let Err(e) = qrange::data::read_tensor_pb(&p) {
                check_error(e.to_string())?;
            }
            run_data(&set, inputs)
        }
        _ => match qrange::data::decode_image(bytes) {
            Ok(px) if px.data.len() != px.width * px.height * px.channels => Err(format!(
                "{} bytes of pixels for {}x{}x{}",
                px.data.len(),
                px.width,
                px.height,
                px.channels
            )),
            Ok(_) => Ok(()),
            Err(e) => check_error(e),
        },
    }
}

fn render_inputs(inputs: &[InputSpec]) -> String {
    inputs
        .iter()
        .map(|s| {
            let dims = match &s.shape {
                None => "*".to_string(),
                Some(d) => d
                    .iter()
                    .map(|x| x.map_or("?".into(), |v| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            format!("{} {} {dims}\n", s.name, s.dtype.onnx_code())
        })
        .collect()
}

fn parse_inputs(text: &str) -> Vec<InputSpec> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (name, code, dims) = (it.next()?, it.next()?, it.next().unwrap_or(""));
            let shape = match dims {
                "*" => None,
                "" => Some(Vec::new()),
                d => Some(d.split(',').map(|x| x.parse().ok()).collect()),
            };
            Some(InputSpec::new(
                name,
                DType::from_onnx(code.parse().ok()?),
                shape,
            ))
        })
        .collect()
}

/// Runs one case under `catch_unwind`: `Err` describes a panic or an unclean error.
fn guarded(
    target: &str,
    name: &str,
    bytes: &[u8],
    inputs: &[InputSpec],
    work: &Path,
) -> Result<(), String> {
    std::fs::write(work.join(CURRENT_BYTES), bytes).unwrap();
    std::fs::write(
        work.join(format!("{CURRENT_BYTES}.inputs")),
        render_inputs(inputs),
    )
    .unwrap();
    std::fs::write(work.join(CURRENT_NAME), name).unwrap();
    match catch_unwind(AssertUnwindSafe(|| run(target, bytes, inputs, work))) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "panic: {}",
            PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone()
        )),
    }
}

static PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        // Where in qrange it happened, when the panic itself is in a library.
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        let ours = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
        let at = trace
            .lines()
            .filter_map(|l| l.trim().strip_prefix("at "))
            .find_map(|l| l.strip_prefix(ours).or_else(|| l.strip_prefix("./src/")))
            .map(|l| format!(" (from src/{l})"))
            .unwrap_or_default();
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("{}{at}", info.to_string().replace('\n', " "));
    }));
}

/// Saves the case in `work` under the failures folder; returns its path.
pub fn save_current(work: &Path, target: &str, name: &str) -> PathBuf {
    let dir = super::failures_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let to = dir.join(format!("{file}.{}", ext(target)));
    let _ = std::fs::copy(work.join(CURRENT_BYTES), &to);
    let inputs = work.join(format!("{CURRENT_BYTES}.inputs"));
    if std::fs::metadata(&inputs).is_ok_and(|m| m.len() > 0) {
        let _ = std::fs::copy(inputs, to.with_extension(format!("{}.inputs", ext(target))));
    }
    to
}

/// The fuzz loop of a child: `iters` cases from `seed`. Returns the number of failures.
pub fn fuzz(target: &str, work: &Path, seed: u64, iters: u64) -> usize {
    quiet_panics();
    let seeds = seeds(target);
    let mut failed = 0;
    for i in 0..iters {
        let (name, bytes) = case(target, &seeds, seed, i);
        let s = seeds
            .iter()
            .find(|s| name.starts_with(&format!("{}#", s.name)))
            .unwrap();
        if let Err(why) = guarded(target, &name, &bytes, &s.inputs, work) {
            let saved = save_current(work, target, &name);
            println!("FAIL {name}: {why} (saved as {})", saved.display());
            failed += 1;
        }
    }
    println!(
        "fuzz {target}: {iters} cases from seed {seed:#x} over {} fixtures, {failed} failed",
        seeds.len()
    );
    failed
}

/// Replays `tests/fuzz_corpus/<target>/*` (each with its `.inputs` file, if any), from the
/// `from`-th in name order.
pub fn replay(target: &str, work: &Path, from: usize) -> usize {
    quiet_panics();
    let dir = root().join("tests/fuzz_corpus").join(target);
    let mut paths = Vec::new();
    files(
        &dir,
        &|p| !p.to_string_lossy().ends_with(".inputs"),
        &mut paths,
    );
    let mut failed = 0;
    for (i, p) in paths.iter().enumerate().skip(from) {
        std::fs::write(work.join(CURRENT_INDEX), i.to_string()).unwrap();
        let bytes = std::fs::read(p).unwrap();
        let spec = PathBuf::from(format!("{}.inputs", p.display()));
        let inputs = parse_inputs(&std::fs::read_to_string(spec).unwrap_or_default());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(why) = guarded(target, &name, &bytes, &inputs, work) {
            println!("FAIL {}: {why}", p.display());
            failed += 1;
        }
    }
    println!(
        "fuzz {target}: replayed {} corpus inputs, {failed} failed",
        paths.len().saturating_sub(from)
    );
    failed
}
