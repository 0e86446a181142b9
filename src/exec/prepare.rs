//! Proto-level preparation of a model before the engine sees it.
//!
//! Works on a copy of the [`ModelProto`]; the caller's model is never changed. Steps:
//! 1. refuse operators the engine does not implement, naming the node (one line, up front,
//!    instead of a failure deep in analysis);
//! 2. add the requested taps (intermediate values) as extra graph outputs, keeping ONNX names;
//! 3. widen 4-bit (int4/uint4) initializers, `Constant` values and declared types to 8-bit
//!    storage (values unchanged; the engine cannot load 4-bit tensors) and mark the Q/DQ and
//!    GatherBlockQuantized nodes whose quantized side is 4-bit with [`LOGICAL_DTYPE_ATTR`], so
//!    the exact kernels keep the 4-bit range;
//! 4. refuse other element types the engine cannot hold (bfloat16, float8, …), naming the tensor;
//! 5. forget the symbolic dims (`dim_param`) of intermediate values' declared types: the
//!    engine takes each for a name of its own, which concrete input facts cannot bind
//!    (`batch` of an intermediate value against the sample's 1), and infers every
//!    intermediate shape anyway.
//!
//! The notes say which quantization ops run on which kernels, and what differs from ONNX
//! Runtime where it does not compute the ONNX definition (uint8 × int8 products on CPUs
//! without VNNI, MatMulNBits with `accuracy_level` 4).

use super::qdq::LOGICAL_DTYPE_ATTR;
use super::ExecError;
use crate::ir::tensor::DType;
use crate::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Ops that move 4-bit values without changing them: their output keeps the input's 4-bit type.
const PASS_THROUGH: [&str; 6] = [
    "Identity",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
];

/// com.microsoft ops qrange runs, each with its exact kernel.
const CONTRIB: [&str; 7] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulNBits",
    "GatherBlockQuantized",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
];

/// The com.microsoft ops that are no ONNX operator: refused in the ONNX domains (the engine's
/// op register is keyed by op type alone).
const CONTRIB_ONLY: [&str; 5] = [
    "MatMulNBits",
    "GatherBlockQuantized",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
];

/// How each op the notes count is run, by op type.
fn how_run(op: &str) -> Option<&'static str> {
    Some(match op {
        "QuantizeLinear" | "DequantizeLinear" => {
            "run by qrange's exact kernels (ONNX semantics, true division, no lookup-table \
             folding) instead of the engine's own"
        }
        "DynamicQuantizeLinear" => {
            "run by qrange's exact kernels (ONNX Runtime's arithmetic: scale 1 for an all-zero \
             range, NaN outside the range and quantized to 0) instead of the engine's own"
        }
        "MatMulInteger" | "MatMulIntegerToFloat" | "DynamicQuantizeMatMul" => {
            "run by qrange's exact kernels (int32 sums, float steps rounded as ONNX Runtime \
             rounds them) instead of the engine's own"
        }
        "GatherBlockQuantized" => {
            "run by qrange's exact kernels (dequantized as ONNX Runtime does, zero slices for \
             indices out of range) instead of the engine's own"
        }
        "MatMulNBits" => {
            "run by qrange's exact kernels: weights dequantized exactly as ONNX Runtime does, \
             then a float32 product whose summation order is the engine's (not ONNX Runtime's)"
        }
        "ConvInteger" => "run by the engine's integer convolution (exact int32 sums)",
        "DynamicQuantizeLSTM" => {
            "run by qrange's exact kernel (ONNX Runtime's quantization of the input and hidden \
             state, int32 sums, float steps and its FMA3 sigmoid/tanh, bit for bit with one \
             intra-op thread or batch 1), an op the engine does not have"
        }
        _ => return None,
    })
}

/// The prepared copy and what was done to it.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub model: ModelProto,
    /// Graph inputs fed at run time (not backed by an initializer), in graph order.
    pub inputs: Vec<String>,
    /// Graph outputs then taps, in the engine's output order.
    pub outputs: Vec<String>,
    /// How many of `outputs` are the model's own (the rest are taps or tap sinks).
    pub graph_outputs: usize,
    /// Values of the main graph stored widened, with their logical 4-bit type.
    pub logical: BTreeMap<String, DType>,
    /// The quantization ops the notes describe (summed over the parts of a staged model).
    pub ops: OpCounts,
    /// The other notes.
    pub notes: Vec<String>,
}

/// A node's name for messages: its name, else its first output.
pub(crate) fn node_label(node: &NodeProto) -> String {
    match node.name() {
        "" => format!(
            "<unnamed {} producing '{}'>",
            node.op_type(),
            node.output.first().map(String::as_str).unwrap_or("")
        ),
        name => name.to_string(),
    }
}

/// Element types the engine can hold.
fn engine_dtype(code: i32) -> bool {
    matches!(
        DType::from_onnx(code),
        DType::F32
            | DType::F64
            | DType::F16
            | DType::U8
            | DType::I8
            | DType::U16
            | DType::I16
            | DType::U32
            | DType::I32
            | DType::U64
            | DType::I64
            | DType::Bool
            | DType::String
    )
}

fn is_4bit(code: i32) -> Option<DType> {
    match DType::from_onnx(code) {
        d @ (DType::I4 | DType::U4) => Some(d),
        _ => None,
    }
}

fn widened_code(d: DType) -> i32 {
    if d == DType::I4 {
        DType::I8.onnx_code()
    } else {
        DType::U8.onnx_code()
    }
}

fn subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute
        .iter()
        .flat_map(|a| a.g.iter().chain(a.graphs.iter()))
}

fn subgraphs_mut(node: &mut NodeProto) -> impl Iterator<Item = &mut GraphProto> {
    node.attribute
        .iter_mut()
        .flat_map(|a| a.g.iter_mut().chain(a.graphs.iter_mut()))
}

/// Step 1: every node (subgraphs included) must be an operator the engine implements.
fn check_ops(graph: &GraphProto, known: &dyn Fn(&str) -> bool) -> Result<(), ExecError> {
    for node in &graph.node {
        let op = node.op_type();
        let ok = match node.domain() {
            "" | "ai.onnx" | "ai.onnx.ml" => known(op) && !CONTRIB_ONLY.contains(&op),
            "com.microsoft" => CONTRIB.contains(&op),
            super::fake_quant::FAKE_QUANT_DOMAIN => op == super::fake_quant::FAKE_QUANT_OP,
            _ => false,
        };
        if !ok {
            return Err(ExecError::UnsupportedOp {
                node: node_label(node),
                op_type: op.to_string(),
                domain: node.domain().to_string(),
            });
        }
        for g in subgraphs(node) {
            check_ops(g, known)?;
        }
    }
    Ok(())
}

/// Step 2: adds each tap as a graph output (once; values already output are left alone).
fn add_taps(graph: &mut GraphProto, taps: &[String]) -> Result<usize, ExecError> {
    let mut defined: BTreeSet<&str> = graph.input.iter().map(ValueInfoProto::name).collect();
    defined.extend(graph.initializer.iter().map(TensorProto::name));
    defined.extend(
        graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str)),
    );
    defined.remove("");
    let mut present: BTreeSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let mut added = Vec::new();
    for tap in taps {
        if !defined.contains(tap.as_str()) {
            return Err(ExecError::UnknownTap(tap.clone()));
        }
        if present.insert(tap.clone()) {
            added.push(ValueInfoProto {
                name: Some(tap.clone()),
                ..Default::default()
            });
        }
    }
    let n = added.len();
    graph.output.extend(added);
    Ok(n)
}

/// Step 2, streamed: adds a sink node per tap ([`super::tap`]) whose empty output is a graph
/// output (once per tap, inputs and constants included).
fn add_tap_sinks(graph: &mut GraphProto, taps: &[String]) -> Result<usize, ExecError> {
    let mut names: BTreeSet<String> = graph.input.iter().map(|v| v.name().to_string()).collect();
    names.extend(graph.initializer.iter().map(|t| t.name().to_string()));
    names.extend(graph.node.iter().flat_map(|n| n.output.iter().cloned()));
    names.remove("");
    let mut seen = BTreeSet::new();
    let mut sinks = Vec::new();
    let mut outputs = Vec::new();
    for tap in taps {
        if !names.contains(tap.as_str()) {
            return Err(ExecError::UnknownTap(tap.clone()));
        }
        if !seen.insert(tap.clone()) {
            continue;
        }
        let mut out = format!("{}.{}", super::tap::TAP_DOMAIN, sinks.len());
        while names.contains(&out) {
            out.push('_');
        }
        sinks.push(NodeProto {
            name: Some(out.clone()),
            op_type: Some(super::tap::TAP_OP.to_string()),
            domain: Some(super::tap::TAP_DOMAIN.to_string()),
            input: vec![tap.clone()],
            output: vec![out.clone()],
            attribute: vec![AttributeProto {
                name: Some(super::tap::TAP_ATTR.to_string()),
                r#type: Some(AttributeType::String as i32),
                s: Some(tap.as_bytes().to_vec()),
                ..Default::default()
            }],
            ..Default::default()
        });
        outputs.push(ValueInfoProto {
            name: Some(out),
            ..Default::default()
        });
    }
    let n = sinks.len();
    graph.node.extend(sinks);
    graph.output.extend(outputs);
    Ok(n)
}

/// Reads the bytes of an externally stored tensor (relative path inside `base_dir`).
fn external_bytes(t: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, ExecError> {
    let err = |reason: String| ExecError::ExternalData {
        tensor: t.name().to_string(),
        reason,
    };
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value().to_string())
    };
    let dir = base_dir.ok_or_else(|| err("no base directory was given".into()))?;
    let location = entry("location").ok_or_else(|| err("no 'location' entry".into()))?;
    let parse = |key: &str| -> Result<Option<usize>, ExecError> {
        entry(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| err(format!("bad '{key}' value '{v}'")))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    let path = crate::onnx::external::resolve_location(dir, &location).map_err(err)?;
    let data = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let end = match length {
        Some(l) => offset.checked_add(l),
        None => Some(data.len()),
    };
    match end {
        Some(end) if offset <= end && end <= data.len() => Ok(data[offset..end].to_vec()),
        _ => Err(err(format!(
            "range {offset}..{end:?} is outside {} ({} bytes)",
            path.display(),
            data.len()
        ))),
    }
}

/// Unpacks a 4-bit tensor (two values per byte, low nibble first) into one byte per value.
fn widen_4bit_tensor(
    t: &mut TensorProto,
    d: DType,
    base_dir: Option<&Path>,
) -> Result<(), ExecError> {
    let bad = |reason: String| ExecError::TensorData {
        tensor: t.name().to_string(),
        reason,
    };
    let mut n: usize = 1;
    for &dim in &t.dims {
        let dim = usize::try_from(dim).map_err(|_| bad(format!("negative dimension {dim}")))?;
        n = n
            .checked_mul(dim)
            .ok_or_else(|| bad("too many elements".into()))?;
    }
    let packed: Vec<u8> = if t.data_location() == DataLocation::External {
        external_bytes(t, base_dir)?
    } else if let Some(raw) = &t.raw_data {
        raw.clone()
    } else {
        t.int32_data.iter().map(|&v| v as u8).collect()
    };
    if packed.len() < n.div_ceil(2) {
        return Err(bad(format!(
            "{} packed bytes hold fewer than the {n} {d} values its shape needs",
            packed.len()
        )));
    }
    let values: Vec<u8> = (0..n)
        .map(|i| {
            let nibble = (packed[i / 2] >> (4 * (i % 2))) & 0x0f;
            if d == DType::I4 && nibble >= 8 {
                nibble.wrapping_sub(16)
            } else {
                nibble
            }
        })
        .collect();
    t.data_type = Some(widened_code(d));
    t.raw_data = Some(values);
    t.int32_data.clear();
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

fn value_info_4bit(v: &mut ValueInfoProto) -> Option<DType> {
    let Some(type_proto::Value::TensorType(tt)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return None;
    };
    let d = is_4bit(tt.elem_type())?;
    tt.elem_type = Some(widened_code(d));
    Some(d)
}

/// Step 5: every `dim_param` of `graph`'s `value_info` becomes an unknown dim.
fn forget_symbolic_dims(graph: &mut GraphProto) {
    for v in &mut graph.value_info {
        let Some(type_proto::Value::TensorType(tt)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        for d in tt.shape.iter_mut().flat_map(|s| s.dim.iter_mut()) {
            if matches!(
                d.value,
                Some(tensor_shape_proto::dimension::Value::DimParam(_))
            ) {
                d.value = None;
            }
        }
    }
}

fn mark(node: &mut NodeProto, d: DType) {
    node.attribute.retain(|a| a.name() != LOGICAL_DTYPE_ATTR);
    node.attribute.push(AttributeProto {
        name: Some(LOGICAL_DTYPE_ATTR.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(d.onnx_code() as i64),
        ..Default::default()
    });
}

fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.i)
}

/// Step 3 on one graph (and its subgraphs). `logical` collects every 4-bit value by name.
fn widen_graph(
    graph: &mut GraphProto,
    base_dir: Option<&Path>,
    logical: &mut BTreeMap<String, DType>,
    widened: &mut usize,
) -> Result<(), ExecError> {
    for t in &mut graph.initializer {
        if let Some(d) = is_4bit(t.data_type()) {
            widen_4bit_tensor(t, d, base_dir)?;
            logical.insert(t.name().to_string(), d);
            *widened += 1;
        }
    }
    for v in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        if let Some(d) = value_info_4bit(v) {
            logical.insert(v.name().to_string(), d);
        }
    }
    for node in &mut graph.node {
        for a in &mut node.attribute {
            if let Some(t) = a.t.as_mut() {
                if let Some(d) = is_4bit(t.data_type()) {
                    widen_4bit_tensor(t, d, base_dir)?;
                    *widened += 1;
                    if node.op_type.as_deref() == Some("Constant") {
                        if let Some(out) = node.output.first() {
                            logical.insert(out.clone(), d);
                        }
                    }
                }
            }
        }
        let standard_or_ms = matches!(node.domain(), "" | "ai.onnx" | "com.microsoft");
        let (mark_with, out4) = {
            let input = |i: usize| node.input.get(i).and_then(|n| logical.get(n)).copied();
            match node.op_type() {
                "QuantizeLinear" if standard_or_ms => {
                    let d = int_attr(node, "output_dtype")
                        .and_then(|c| is_4bit(c as i32))
                        .or(input(2));
                    (d, d)
                }
                "DequantizeLinear" if standard_or_ms => (input(0).or(input(2)), None),
                "GatherBlockQuantized" if node.domain() == "com.microsoft" => {
                    (input(0).or(input(3)), None)
                }
                op if PASS_THROUGH.contains(&op) => (None, input(0)),
                _ => (None, None),
            }
        };
        if let Some(d) = mark_with {
            mark(node, d);
        }
        if let (Some(d), Some(out)) = (out4, node.output.first()) {
            logical.insert(out.clone(), d);
        }
        for g in subgraphs_mut(node) {
            widen_graph(g, base_dir, logical, widened)?;
        }
    }
    Ok(())
}

/// Step 4: initializers, `Constant` values and graph inputs of types the engine cannot hold.
fn check_dtypes(graph: &GraphProto) -> Result<(), ExecError> {
    let refuse = |name: &str, code: i32| ExecError::UnsupportedType {
        tensor: name.to_string(),
        dtype: DType::from_onnx(code),
    };
    for t in &graph.initializer {
        if !engine_dtype(t.data_type()) {
            return Err(refuse(t.name(), t.data_type()));
        }
    }
    for v in &graph.input {
        if let Some(type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            if !engine_dtype(tt.elem_type()) {
                return Err(refuse(v.name(), tt.elem_type()));
            }
        }
    }
    for node in &graph.node {
        for a in &node.attribute {
            if let Some(t) = &a.t {
                if !engine_dtype(t.data_type()) {
                    let name = match t.name() {
                        "" => node.output.first().map(String::as_str).unwrap_or(""),
                        n => n,
                    };
                    return Err(refuse(name, t.data_type()));
                }
            }
        }
        for g in subgraphs(node) {
            check_dtypes(g)?;
        }
    }
    Ok(())
}

/// What the notes say about the quantization ops of a graph (subgraphs included).
#[derive(Debug, Clone, Default)]
pub(crate) struct OpCounts {
    /// (domain, op type) of every op [`how_run`] describes.
    ops: BTreeMap<(String, String), usize>,
    /// MatMulNBits nodes with `accuracy_level` 4 and 4- or 8-bit weights: their names.
    accuracy4: Vec<String>,
}

impl OpCounts {
    /// Adds the counts of another part of the same model.
    pub(crate) fn merge(&mut self, other: &OpCounts) {
        for (k, v) in &other.ops {
            *self.ops.entry(k.clone()).or_default() += v;
        }
        self.accuracy4.extend(other.accuracy4.iter().cloned());
    }

    /// Counts `n` DequantizeLinear computed by qrange's kernel as the model loaded
    /// (`folded`): no longer nodes, still run by that kernel.
    pub(crate) fn add_folded_dequantize(&mut self, n: usize) {
        if n > 0 {
            *self
                .ops
                .entry(("ai.onnx".to_string(), "DequantizeLinear".to_string()))
                .or_default() += n;
        }
    }
}

fn count_ops(graph: &GraphProto, counts: &mut OpCounts) {
    for node in &graph.node {
        if how_run(node.op_type()).is_some() {
            let domain = match node.domain() {
                "" => "ai.onnx",
                d => d,
            };
            *counts
                .ops
                .entry((domain.to_string(), node.op_type().to_string()))
                .or_default() += 1;
        }
        if node.op_type() == "MatMulNBits"
            && int_attr(node, "accuracy_level") == Some(4)
            && matches!(int_attr(node, "bits").unwrap_or(4), 4 | 8)
        {
            counts.accuracy4.push(node_label(node));
        }
        for g in subgraphs(node) {
            count_ops(g, counts);
        }
    }
}

/// The notes on the ops counted.
pub(crate) fn op_notes(counts: &OpCounts) -> Vec<String> {
    let mut notes: Vec<String> = counts
        .ops
        .iter()
        .filter_map(|((domain, op), n)| Some(format!("{domain} {op} x{n} {}", how_run(op)?)))
        .collect();
    if counts.ops.keys().any(|(_, op)| {
        matches!(
            op.as_str(),
            "MatMulInteger"
                | "ConvInteger"
                | "MatMulIntegerToFloat"
                | "DynamicQuantizeMatMul"
                | "DynamicQuantizeLSTM"
        )
    }) {
        notes.push(
            "uint8 x int8 integer products are exact int32 sums (the ONNX definition); ONNX \
             Runtime on x86 CPUs without VNNI adds pairs of such products saturating to int16, \
             so it can differ there when a pair exceeds 32767"
                .to_string(),
        );
    }
    if let Some(first) = counts.accuracy4.first() {
        notes.push(format!(
            "MatMulNBits x{} with accuracy_level 4 (first: '{first}'): ONNX Runtime's CPU kernel \
             quantizes A to int8 per block for 4- and 8-bit weights on CPUs that have that \
             kernel; qrange computes the float32 path (accuracy_level 0), so the outputs differ \
             from ONNX Runtime's by that quantization of A",
            counts.accuracy4.len()
        ));
    }
    notes
}

/// Runs all preparation steps on a copy of `model`.
pub(crate) fn prepare(
    model: &ModelProto,
    base_dir: Option<&Path>,
    taps: &[String],
    stream_taps: bool,
    known_op: &dyn Fn(&str) -> bool,
) -> Result<Prepared, ExecError> {
    let mut model = model.clone();
    let graph = model.graph.as_mut().ok_or(ExecError::NoGraph)?;
    check_ops(graph, known_op)?;
    let graph_outputs = graph.output.len();
    let tapped = if stream_taps {
        add_tap_sinks(graph, taps)?
    } else {
        add_taps(graph, taps)?
    };
    let mut logical = BTreeMap::new();
    let mut widened = 0;
    widen_graph(graph, base_dir, &mut logical, &mut widened)?;
    check_dtypes(graph)?;
    forget_symbolic_dims(graph);

    let initialized: BTreeSet<&str> = graph.initializer.iter().map(TensorProto::name).collect();
    let inputs = graph
        .input
        .iter()
        .map(|v| v.name())
        .filter(|n| !initialized.contains(n))
        .map(str::to_string)
        .collect();
    let outputs = graph.output.iter().map(|o| o.name().to_string()).collect();
    let main: BTreeSet<&str> = graph
        .input
        .iter()
        .map(|v| v.name())
        .chain(initialized.iter().copied())
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    logical.retain(|name, _| main.contains(name.as_str()));

    let mut ops = OpCounts::default();
    count_ops(graph, &mut ops);
    let mut notes = Vec::new();
    if widened > 0 {
        notes.push(format!(
            "{widened} int4/uint4 tensor(s) stored widened to 8 bits for the engine (values and \
             4-bit ranges unchanged)"
        ));
    }
    if tapped > 0 {
        notes.push(format!(
            "{tapped} intermediate value(s) tapped as extra outputs"
        ));
    }
    Ok(Prepared {
        model,
        inputs,
        outputs,
        graph_outputs,
        logical,
        ops,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, domain: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            domain: Some(domain.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: Some(format!("{op}_{output}")),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![ValueInfoProto {
                    name: Some("x".into()),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: Some("y".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn int4(name: &str, dims: Vec<i64>, packed: Vec<u8>, signed: bool) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims,
            data_type: Some(if signed { 22 } else { 21 }),
            raw_data: Some(packed),
            ..Default::default()
        }
    }

    #[test]
    fn unpacks_int4_low_nibble_first_and_marks_qdq() {
        let w = int4("w", vec![3], vec![0x8f, 0x07], true); // -1, -8, 7
        let z = int4("z", vec![], vec![0x03], true); // 3
        let m = model(
            vec![
                node("DequantizeLinear", "", &["w", "s", "z"], "wd"),
                node("QuantizeLinear", "", &["x", "s", "z"], "q"),
                node("Identity", "", &["q"], "y"),
            ],
            vec![w, z],
        );
        let p = prepare(&m, None, &[], false, &|_| true).unwrap();
        let g = p.model.graph.unwrap();
        assert_eq!(g.initializer[0].data_type(), 3);
        assert_eq!(g.initializer[0].raw_data(), &[0xffu8, 0xf8, 0x07]);
        assert_eq!(g.initializer[1].raw_data(), &[3u8]);
        for n in &g.node[..2] {
            assert_eq!(int_attr(n, LOGICAL_DTYPE_ATTR), Some(22), "{}", n.op_type());
        }
        assert_eq!(p.logical.get("y"), Some(&DType::I4));
        assert_eq!(p.logical.get("q"), Some(&DType::I4));
        assert!(p.notes.iter().any(|n| n.contains("2 int4/uint4")));
        // the caller's model is untouched
        assert_eq!(m.graph.unwrap().initializer[0].data_type(), 22);
    }

    #[test]
    fn op_counts_of_parts_add_up_in_the_notes() {
        let nbits = |out: &str| {
            let mut n = node("MatMulNBits", "com.microsoft", &["x", "w", "s"], out);
            n.attribute.push(AttributeProto {
                name: Some("accuracy_level".into()),
                r#type: Some(AttributeType::Int as i32),
                i: Some(4),
                ..Default::default()
            });
            n
        };
        let part = |out: &str| {
            let m = model(
                vec![node("MatMulInteger", "", &["x", "x"], out), nbits(out)],
                vec![],
            );
            prepare(&m, None, &[], false, &|_| true).unwrap().ops
        };
        let mut ops = part("a");
        ops.merge(&part("b"));
        let notes = op_notes(&ops);
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("ai.onnx MatMulInteger x2 ")),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("com.microsoft MatMulNBits x2 ")),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n
                    .starts_with("MatMulNBits x2 with accuracy_level 4 (first: 'MatMulNBits_a')")),
            "{notes:?}"
        );
        assert_eq!(notes.iter().filter(|n| n.contains("VNNI")).count(), 1);
    }

    #[test]
    fn short_4bit_data_is_an_error() {
        let w = int4("w", vec![5], vec![0x11, 0x11], false);
        let m = model(
            vec![node("DequantizeLinear", "", &["w", "s"], "y")],
            vec![w],
        );
        let err = prepare(&m, None, &[], false, &|_| true).unwrap_err();
        assert!(err.to_string().contains("'w'"), "{err}");
    }

    #[test]
    fn unknown_ops_and_taps_are_named() {
        let m = model(
            vec![
                node("Relu", "", &["x"], "r"),
                node("QLinearAdd", "com.microsoft", &["r"], "y"),
            ],
            vec![],
        );
        let err = prepare(&m, None, &[], false, &|_| true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("QLinearAdd_y") && msg.contains("com.microsoft"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        let m = model(vec![node("Relu", "", &["x"], "y")], vec![]);
        let err = prepare(&m, None, &["nope".to_string()], false, &|_| true).unwrap_err();
        assert!(matches!(err, ExecError::UnknownTap(ref t) if t == "nope"));
        let p = prepare(
            &m,
            None,
            &["x".to_string(), "y".into(), "x".into()],
            false,
            &|_| true,
        )
        .unwrap();
        assert_eq!(p.outputs, vec!["y".to_string(), "x".into()]);
    }

    #[test]
    fn bf16_initializer_is_refused_by_name() {
        let t = TensorProto {
            name: Some("scale".into()),
            data_type: Some(16),
            raw_data: Some(vec![0, 0]),
            ..Default::default()
        };
        let m = model(vec![node("Relu", "", &["x"], "y")], vec![t]);
        let err = prepare(&m, None, &[], false, &|_| true).unwrap_err();
        assert!(
            err.to_string().contains("'scale'") && err.to_string().contains("bf16"),
            "{err}"
        );
    }
}
