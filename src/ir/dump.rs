//! The stable text dump of a model: one value or op per line, deterministic, diff-friendly.
//!
//! ```text
//! graph "tiny_cnn" opset ai.onnx=17
//! input  %x: f32[1,3,8,8]
//! const  %w: f32[4,3,3,3] = tensor(sha=9c1e04d2, min=-1.0000e0, max=1.0000e0)
//! %y = Conv(%x, %w) {kernel_shape=[3,3]} : f32[1,4,8,8]
//! output %y
//! ```
//! Ops come in the graph's deterministic topological order, attributes sorted by name,
//! computed floats in `{:.4e}`, constants with more than 8 elements as hash + stats.
//! Subgraphs follow their op, indented. An optional annotator adds `; note` to values.

use super::graph::{AttrValue, Graph, ValueId};
use super::tensor::Tensor;
use super::value::{ConstTensor, TensorData};
use super::Model;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Extra per-value text (e.g. a calibrated range) appended as `; text`.
pub type Annotator<'a> = &'a dyn Fn(&Graph, ValueId) -> Option<String>;

/// Dumps a whole model.
pub fn dump_model(m: &Model) -> String {
    dump_model_with(m, &|_, _| None)
}

/// Dumps a whole model with annotations.
pub fn dump_model_with(m: &Model, ann: Annotator) -> String {
    let mut opsets: Vec<String> = m
        .opsets
        .iter()
        .map(|o| {
            let d = if o.domain.is_empty() {
                "ai.onnx"
            } else {
                &o.domain
            };
            format!("{d}={}", o.version)
        })
        .collect();
    opsets.sort();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "graph \"{}\" opset {}",
        m.graph.name.clone().unwrap_or_default(),
        opsets.join(" ")
    );
    dump_graph_body(&m.graph, 0, ann, &mut out);
    out
}

fn pad(depth: usize) -> String {
    "  ".repeat(depth)
}

fn dump_graph_body(g: &Graph, depth: usize, ann: Annotator, out: &mut String) {
    let p = pad(depth);
    let note = |v: ValueId| ann(g, v).map(|s| format!("  ; {s}")).unwrap_or_default();
    let ty = |v: ValueId| {
        g.value(v)
            .ty
            .as_ref()
            .map(|t| t.display())
            .unwrap_or_else(|| "?".into())
    };
    for v in &g.inputs {
        if g.value(*v).init.is_none() {
            let _ = writeln!(
                out,
                "{p}input  %{}: {}{}",
                g.value(*v).name,
                ty(*v),
                note(*v)
            );
        }
    }
    for v in &g.initializers {
        let t = g.const_of(*v).expect("initializer");
        let _ = writeln!(
            out,
            "{p}const  %{}: {} = {}{}",
            g.value(*v).name,
            const_type(t),
            const_summary(t),
            note(*v)
        );
    }
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(out, "{p}; graph is not a DAG: {e}");
            return;
        }
    };
    for o in order {
        let op = g.op(o);
        let outs: Vec<String> = g
            .outputs_of(o)
            .into_iter()
            .map(|v| {
                v.map(|v| format!("%{}", g.value(v).name))
                    .unwrap_or("_".into())
            })
            .collect();
        let ins: Vec<String> = g
            .inputs_of(o)
            .into_iter()
            .map(|v| {
                v.map(|v| format!("%{}", g.value(v).name))
                    .unwrap_or("_".into())
            })
            .collect();
        let mut attrs: Vec<_> = op.attrs.iter().collect();
        attrs.sort_by(|a, b| a.name.cmp(&b.name));
        let attr_text: Vec<String> = attrs
            .iter()
            .map(|a| format!("{}={}", a.name, attr_summary(&a.value)))
            .collect();
        let domain = match op.domain_key() {
            "" => String::new(),
            d => format!("{d}."),
        };
        let types: Vec<String> = g.outputs_of(o).into_iter().flatten().map(&ty).collect();
        let notes: String = g.outputs_of(o).into_iter().flatten().map(note).collect();
        let _ = writeln!(
            out,
            "{p}{} = {domain}{}({}){} : {}{}",
            outs.join(", "),
            op.op_type,
            ins.join(", "),
            if attr_text.is_empty() {
                String::new()
            } else {
                format!(" {{{}}}", attr_text.join(", "))
            },
            types.join(", "),
            notes
        );
        for a in attrs {
            let subs: Vec<&Graph> = match &a.value {
                AttrValue::Graph(sg) => vec![&**sg],
                AttrValue::Graphs(gs) => gs.iter().collect(),
                _ => continue,
            };
            for sg in subs {
                let _ = writeln!(
                    out,
                    "{p}  {} \"{}\" {{",
                    a.name,
                    sg.name.clone().unwrap_or_default()
                );
                dump_graph_body(sg, depth + 2, ann, out);
                let _ = writeln!(out, "{p}  }}");
            }
        }
    }
    for v in &g.outputs {
        let _ = writeln!(out, "{p}output %{}: {}", g.value(*v).name, ty(*v));
    }
}

fn const_type(t: &ConstTensor) -> String {
    format!(
        "{}[{}]",
        t.dtype,
        t.dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn fmt_f(v: f64) -> String {
    format!("{v:.4e}")
}

/// One-line summary of a constant: its values when small, else hash and stats.
pub fn const_summary(t: &ConstTensor) -> String {
    if let TensorData::Sparse(_) = t.data {
        return "sparse".into();
    }
    let Ok(host) = t.to_tensor() else {
        return format!("tensor(undecodable {})", t.dtype);
    };
    let is_float = t.dtype.is_float();
    let vals = host.to_f64_vec();
    if host.len() <= 8 {
        return match (&host, vals) {
            (Tensor::Str(a), _) => format!("{:?}", a.iter().collect::<Vec<_>>()),
            (_, Some(v)) => format!(
                "[{}]",
                v.iter()
                    .map(|x| if is_float { fmt_f(*x) } else { format!("{x}") })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "?".into(),
        };
    }
    let bytes = canonical_bytes(&host);
    let sha = Sha256::digest(&bytes);
    let hex: String = sha.iter().take(4).map(|b| format!("{b:02x}")).collect();
    match vals {
        Some(v) => {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if is_float {
                format!("tensor(sha={hex}, min={}, max={})", fmt_f(min), fmt_f(max))
            } else {
                format!("tensor(sha={hex}, min={min}, max={max})")
            }
        }
        None => format!("tensor(sha={hex})"),
    }
}

fn canonical_bytes(t: &Tensor) -> Vec<u8> {
    match ConstTensor::from_tensor(None, t).data {
        TensorData::Raw(r) => r,
        TensorData::Strings(s) => s.concat(),
        _ => Vec::new(),
    }
}

fn attr_summary(v: &AttrValue) -> String {
    let list = |xs: Vec<String>| format!("[{}]", xs.join(","));
    match v {
        AttrValue::Float(f) => fmt_f(*f as f64),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        AttrValue::Tensor(t) => format!("{}:{}", const_type(t), const_summary(t)),
        AttrValue::Graph(g) => format!("@{}", g.name.clone().unwrap_or_default()),
        AttrValue::Floats(v) => list(v.iter().map(|f| fmt_f(*f as f64)).collect()),
        AttrValue::Ints(v) => list(v.iter().map(|i| i.to_string()).collect()),
        AttrValue::Strings(v) => list(
            v.iter()
                .map(|s| format!("{:?}", String::from_utf8_lossy(s)))
                .collect(),
        ),
        AttrValue::Tensors(ts) => list(ts.iter().map(const_type).collect()),
        AttrValue::Graphs(gs) => list(
            gs.iter()
                .map(|g| format!("@{}", g.name.clone().unwrap_or_default()))
                .collect(),
        ),
        AttrValue::Opaque(k) => format!("opaque(type={k})"),
    }
}
