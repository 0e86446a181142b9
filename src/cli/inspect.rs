//! `qrange inspect`: what a model holds.

use super::Outcome;
use crate::ir::{dump, AttrValue, Graph, Model};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Show a model's IR version, opsets, producer, inputs and outputs, op histogram,
/// parameters per dtype and subgraphs.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  qrange inspect model.onnx\n  qrange inspect model.onnx --graph\n  qrange inspect model.onnx --json"
)]
pub struct Args {
    /// The model file.
    model: PathBuf,
    /// Print the whole graph in qrange's text format.
    #[arg(long)]
    graph: bool,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct Io {
    name: String,
    r#type: String,
}

#[derive(Serialize, Default)]
struct DtypeStats {
    tensors: usize,
    elements: u64,
    bytes: u64,
}

#[derive(Serialize, Default)]
struct Summary {
    file: String,
    ir_version: Option<i64>,
    opsets: BTreeMap<String, i64>,
    producer: String,
    inputs: Vec<Io>,
    outputs: Vec<Io>,
    nodes: usize,
    op_histogram: BTreeMap<String, usize>,
    parameters: BTreeMap<String, DtypeStats>,
    parameter_count: u64,
    parameter_bytes: u64,
    subgraphs: usize,
    functions: Vec<String>,
    metadata: BTreeMap<String, String>,
}

fn walk(g: &Graph, s: &mut Summary) {
    for o in g.ops() {
        let op = g.op(o);
        s.nodes += 1;
        let key = match op.domain_key() {
            "" => op.op_type.clone(),
            d => format!("{d}.{}", op.op_type),
        };
        *s.op_histogram.entry(key).or_default() += 1;
        for a in &op.attrs {
            match &a.value {
                AttrValue::Graph(sg) => {
                    s.subgraphs += 1;
                    walk(sg, s);
                }
                AttrValue::Graphs(gs) => {
                    for sg in gs {
                        s.subgraphs += 1;
                        walk(sg, s);
                    }
                }
                _ => {}
            }
        }
    }
    for v in &g.initializers {
        let t = g.const_of(*v).expect("initializer");
        let e = s.parameters.entry(t.dtype.name()).or_default();
        e.tensors += 1;
        e.elements += t.numel() as u64;
        e.bytes += t.byte_size() as u64;
        s.parameter_count += t.numel() as u64;
        s.parameter_bytes += t.byte_size() as u64;
    }
}

fn summarize(path: &std::path::Path, m: &Model) -> Summary {
    let info = crate::onnx::model_info(m);
    let mut s = Summary {
        file: path.display().to_string(),
        ir_version: m.ir_version,
        opsets: m
            .opsets
            .iter()
            .map(|o| {
                let d = if o.domain.is_empty() {
                    "ai.onnx".into()
                } else {
                    o.domain.clone()
                };
                (d, o.version)
            })
            .collect(),
        producer: format!("{} {}", info.producer_name, info.producer_version)
            .trim()
            .to_string(),
        functions: info.functions,
        metadata: info.metadata.into_iter().collect(),
        ..Summary::default()
    };
    let g = &m.graph;
    let io = |v| Io {
        name: g.value(v).name.clone(),
        r#type: g
            .value(v)
            .ty
            .as_ref()
            .map(|t| t.display())
            .unwrap_or_else(|| "?".into()),
    };
    s.inputs = g
        .inputs
        .iter()
        .filter(|v| g.value(**v).init.is_none())
        .map(|v| io(*v))
        .collect();
    s.outputs = g.outputs.iter().map(|v| io(*v)).collect();
    walk(g, &mut s);
    s
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let m = crate::onnx::read_model(&a.model)?;
    if a.graph && !a.json {
        print!("{}", dump::dump_model(&m));
        return Ok(Outcome::Ok);
    }
    let s = summarize(&a.model, &m);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(Outcome::Ok);
    }
    println!("model      {}", s.file);
    println!(
        "ir         {}   opsets {}",
        s.ir_version.map(|v| v.to_string()).unwrap_or("?".into()),
        s.opsets
            .iter()
            .map(|(d, v)| format!("{d}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !s.producer.is_empty() {
        println!("producer   {}", s.producer);
    }
    for i in &s.inputs {
        println!("input      {}: {}", i.name, i.r#type);
    }
    for o in &s.outputs {
        println!("output     {}: {}", o.name, o.r#type);
    }
    println!(
        "nodes      {} ({} subgraphs{})",
        s.nodes,
        s.subgraphs,
        if s.functions.is_empty() {
            String::new()
        } else {
            format!(", {} local functions", s.functions.len())
        }
    );
    println!(
        "parameters {} ({} bytes)",
        s.parameter_count, s.parameter_bytes
    );
    for (d, st) in &s.parameters {
        println!(
            "  {d:<8} {:>6} tensors {:>12} elements {:>12} bytes",
            st.tensors, st.elements, st.bytes
        );
    }
    println!("ops");
    let mut hist: Vec<_> = s.op_histogram.iter().collect();
    hist.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in hist {
        println!("  {op:<28} {n:>5}");
    }
    Ok(Outcome::Ok)
}
