//! quantize_dynamic — dynamic quantization: int8 weights, activations quantized at run
//! time from their own range (`quantize --mode dynamic`).
//!
//! **What it does.** Every MatMul and Gemm with a constant float weight, and every Conv,
//! becomes the integer chain ONNX Runtime's `quantize_dynamic` writes: the activation goes
//! through `DynamicQuantizeLinear` (uint8, its scale and zero point from that tensor's own
//! min/max, computed when the model runs), the product is `MatMulInteger` or `ConvInteger`
//! on 8-bit weights (int32 sums), then `Cast` to float and `Mul` by the product of the two
//! scales (`Mul(activation scale, weight scale)`), then the bias (`Add`). ONNX Runtime
//! fuses the MatMul chain, with a following bias `Add`, into `DynamicQuantizeMatMul`.
//! An activation read by several quantized ops is quantized once.
//!
//! Weights are symmetric on `[-127, 127]`, one scale per output channel (MatMul's and
//! Gemm's columns, Conv's output channels; one per tensor with `--per-tensor`), from each
//! channel's min/max (or the range of least squared error with `--weight-method mse`).
//! The integer products store them as uint8 with one zero point of 128 for the whole
//! tensor (codes 1..=255): the same grid as int8 with zero point 0, but a uint8 × uint8
//! product, which ONNX Runtime's x86 kernels sum exactly on every CPU, where its uint8 ×
//! int8 kernels without VNNI saturate pairs of products to int16 (and so depart from the
//! model's arithmetic). ONNX Runtime's `ConvInteger` takes only a per-tensor weight zero
//! point; the per-channel scales live in the float `Mul` after the integer product. The
//! full 8-bit grid is used (ONNX Runtime's `quantize_dynamic` default), LSTMs' too: no
//! 7-bit weights, whatever `--no-reduce-range` says.
//!
//! A `Gather` from a constant float table of rank 2 along axis 0 (an embedding) gathers
//! from an int8 table with one symmetric scale per row: `Gather(table, ids)` →
//! `Cast` → `Mul(Gather(row scales, ids))`.
//!
//! An LSTM becomes com.microsoft `DynamicQuantizeLSTM` on `--target ort-cpu` (ONNX Runtime's
//! op, as its `quantize_dynamic` writes it), in the main graph and in subgraphs whose LSTM
//! weights are their own constants: `W` and `R` symmetric on all 8 bits, stored as uint8
//! around a zero point of 128 like the other products' weights (int8 weights made ONNX
//! Runtime's x86 kernels without VNNI saturate on recurrent states), transposed to
//! `[num_directions, input_size, 4·hidden]` and `[num_directions, hidden, 4·hidden]`, one
//! scale per gate column (`[num_directions, 4·hidden]`; one per direction with
//! `--per-tensor`), zero points of 128 in the scales' shape; the input and the hidden
//! state are quantized at run time inside the op. Its other inputs, outputs and attributes
//! are the LSTM's (`layout` dropped: the op has none). The model imports com.microsoft 1.
//!
//! Left float, each with its reason in the report: MatMul with two computed inputs,
//! weights that are not float32 constants, Gemm with `transA`, `alpha ≠ 1` or `beta ≠ 1`,
//! Conv with a computed bias, ops other than LSTM inside subgraphs, LSTM on other targets
//! (no standard op) or with `layout` 1 or other activations than Sigmoid/Tanh/Tanh, and GRU
//! (ONNX Runtime has no dynamically quantized GRU).
//!
//! **Requires.** Typed values (infer_shapes) and folded constants; `cx.quant` for the
//! weight settings and exclusions; a default-domain opset ≥ 11 (upgrade_opset raises it in
//! this mode). Runs only when `cx.dynamic` is set. **Effects.** New values are named from
//! the ONNX names (`x.quantized`, `x.scale`, `x.zero_point`, `w.quantized`, `w.scale`,
//! `y.int32`, `y.float`, `y.scales`); the quantized op's output keeps its name; float
//! weights nobody reads any more are removed. Leaves the report in `cx.dynamic_report`.
//!
//! **Example.**
//! ```text
//! %y = MatMul(%x, %w) : f32[1,4]                 ; w: f32[3,4]
//! ```
//! becomes
//! ```text
//! %x.quantized, %x.scale, %x.zero_point = DynamicQuantizeLinear(%x)
//! %y.int32  = MatMulInteger(%x.quantized, %w.quantized, %x.zero_point, %w.zero_point) : i32[1,4]
//! %y.float  = Cast(%y.int32) {to=1}
//! %y.scales = Mul(%x.scale, %w.scale) : f32[4]
//! %y        = Mul(%y.float, %y.scales) : f32[1,4]
//! ```

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{
    AttrValue, ConstTensor, DType, Graph, Model, Op, OpId, OpsetImport, Tensor, ValueId,
};
use crate::quant::kernels::{quantize_linear, QuantizeAttrs};
use crate::quant::params::{mse_scale_zp, scale_zp, QType};
use crate::quant::plan::{op_key, QuantConfig};
use crate::quant::rules::Target;
use ndarray::{ArrayD, Axis, IxDyn};
use serde::Serialize;
use std::collections::BTreeMap;

pub const NAME: &str = "quantize_dynamic";

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuantizeDynamic;

/// What the pass did: ops rewritten per type, ops left float per reason, weight parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Ops rewritten, per op type.
    pub quantized: BTreeMap<String, usize>,
    /// Ops left float: reason → op keys.
    pub float: BTreeMap<String, Vec<String>>,
    /// Weight parameters stored as int8.
    pub int8_parameters: u64,
}

impl Report {
    fn float(&mut self, reason: impl Into<String>, key: String) {
        self.float.entry(reason.into()).or_default().push(key);
    }
}

impl Pass for QuantizeDynamic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "dynamic quantization: int8 weights, DynamicQuantizeLinear → MatMulInteger/ConvInteger (--mode dynamic)"
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        (!cx.dynamic).then(|| "static quantization: the Q/DQ come from the plan".to_string())
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let cfg = cx
            .quant
            .clone()
            .ok_or_else(|| err("no quantization settings".into()))?;
        let report = rewrite(m, &cfg)?;
        if report.quantized.contains_key("LSTM") && m.opset("com.microsoft").is_none() {
            m.opsets.push(OpsetImport {
                domain: "com.microsoft".into(),
                version: 1,
            });
        }
        let n: usize = report.quantized.values().sum();
        if n > 0 {
            cx.done.push(format!(
                "{n} ops quantized dynamically ({})",
                report
                    .quantized
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        cx.dynamic_report = Some(report);
        Ok(Changed::from_bool(n > 0))
    }
}

fn err(what: String) -> PassError {
    PassError { pass: NAME, what }
}

/// The op kinds the pass rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    MatMul,
    Gemm,
    Conv,
    Gather,
    Lstm,
}

/// A weight, quantized: int8 values in the layout the integer op reads, and the scales
/// shaped to broadcast against its output.
struct QWeight {
    q: ValueId,
    scale: ValueId,
    zero_point: ValueId,
}

/// The outputs of an activation's DynamicQuantizeLinear.
#[derive(Clone, Copy)]
struct QAct {
    q: ValueId,
    scale: ValueId,
    zero_point: ValueId,
}

/// Rewrites every eligible op of the main graph (see the module documentation).
pub fn rewrite(m: &mut Model, cfg: &QuantConfig) -> Result<Report, PassError> {
    let mut rep = Report::default();
    let g = &mut m.graph;
    let order = g.topo_order().map_err(|e| err(e.to_string()))?;
    let mut acts: BTreeMap<ValueId, QAct> = BTreeMap::new();
    for o in order {
        let op = g.op(o);
        if !op.domain_key().is_empty() {
            continue;
        }
        let kind = match op.op_type.as_str() {
            "MatMul" => Kind::MatMul,
            "Gemm" => Kind::Gemm,
            "Conv" => Kind::Conv,
            "Gather" => Kind::Gather,
            "LSTM" if cfg.target == Target::OrtCpu => Kind::Lstm,
            "LSTM" => {
                let why = format!(
                    "LSTM: DynamicQuantizeLSTM is an ONNX Runtime (com.microsoft) op, target {} keeps LSTM weights float",
                    cfg.target.name()
                );
                rep.float(why, op_key(g, o));
                continue;
            }
            "GRU" => {
                rep.float(
                    "GRU: ONNX Runtime has no dynamically quantized GRU, its weights stay float",
                    op_key(g, o),
                );
                continue;
            }
            _ => continue,
        };
        let key = op_key(g, o);
        if cfg.exclude_nodes.contains(&key)
            || op
                .name
                .as_ref()
                .is_some_and(|n| cfg.exclude_nodes.contains(n))
        {
            rep.float("excluded by --exclude-nodes", key);
            continue;
        }
        if cfg.exclude_op_types.contains(&op.op_type)
            || cfg
                .op_types
                .as_ref()
                .is_some_and(|t| !t.contains(&op.op_type))
        {
            rep.float("excluded by --exclude-op-types/--op-types", key);
            continue;
        }
        if let Err(why) = eligible(g, o, kind) {
            rep.float(why, key);
            continue;
        }
        if kind == Kind::Gather && cfg.tables.is_some() {
            // Left float, or stored in 4-bit blocks after this rewrite (--embedding-bits).
            rep.float("Gather: embedding table stored by --embedding-bits", key);
            continue;
        }
        let params = if kind == Kind::Lstm {
            rewrite_lstm(g, o, cfg)?
        } else {
            rewrite_op(g, o, kind, cfg, &mut acts)?
        };
        rep.int8_parameters += params;
        *rep.quantized.entry(g_type(kind).to_string()).or_default() += 1;
    }
    if cfg.target == Target::OrtCpu {
        lstms_in_subgraphs(g, "", cfg, &mut rep)?;
    }
    for (why, n) in subgraph_ops(g) {
        for k in n {
            rep.float(why.clone(), k);
        }
    }
    super::util::remove_dead(g);
    Ok(rep)
}

fn g_type(k: Kind) -> &'static str {
    match k {
        Kind::MatMul => "MatMul",
        Kind::Gemm => "Gemm",
        Kind::Conv => "Conv",
        Kind::Gather => "Gather",
        Kind::Lstm => "LSTM",
    }
}

/// Ops of the kinds the pass rewrites that sit inside subgraphs (left float).
fn subgraph_ops(g: &Graph) -> BTreeMap<String, Vec<String>> {
    fn walk(g: &Graph, label: &str, out: &mut Vec<String>) {
        for o in g.ops() {
            let op = g.op(o);
            if !label.is_empty()
                && matches!(
                    op.op_type.as_str(),
                    "MatMul" | "Gemm" | "Conv" | "Gather" | "LSTM" | "GRU"
                )
            {
                out.push(format!("{label}/{}", op_key(g, o)));
            }
            for (attr, sg) in op.subgraphs() {
                walk(sg, &format!("{}.{attr}", op_key(g, o)), out);
            }
        }
    }
    let mut found = Vec::new();
    walk(g, "", &mut found);
    found.sort();
    let mut out = BTreeMap::new();
    if !found.is_empty() {
        out.insert(
            "inside a subgraph: dynamic mode quantizes the main graph".to_string(),
            found,
        );
    }
    out
}

/// A float32 constant initializer of rank `rank` (`None`: any rank ≥ 3), not a graph
/// input.
fn float_const(g: &Graph, v: Option<ValueId>, rank: Option<usize>) -> bool {
    let Some(v) = v else { return false };
    let Some(t) = g.const_of(v) else { return false };
    !g.is_input(v)
        && t.dtype == DType::F32
        && match rank {
            Some(r) => t.dims.len() == r,
            None => t.dims.len() >= 3,
        }
}

fn is_f32(g: &Graph, v: Option<ValueId>) -> bool {
    v.is_some_and(|v| g.value(v).dtype() == Some(DType::F32))
}

/// Whether `o` can be rewritten; else why not.
fn eligible(g: &Graph, o: OpId, kind: Kind) -> Result<(), String> {
    let op = g.op(o);
    let (x, w) = (g.input(o, 0), g.input(o, 1));
    if kind == Kind::Lstm {
        return lstm_eligible(g, o);
    }
    match kind {
        Kind::Gather => {
            let big = x
                .and_then(|v| g.const_of(v))
                .is_some_and(|t| t.numel() >= 16);
            if !float_const(g, x, Some(2)) || !big {
                return Err(
                    "Gather: not from a float32 table of rank 2 and 16 or more values".into(),
                );
            }
            if op.attr_int("axis").unwrap_or(0) != 0 {
                return Err("Gather: not along axis 0".into());
            }
            return Ok(());
        }
        _ if !is_f32(g, x) => {
            return Err(format!("{}: the input is not float32", op.op_type));
        }
        Kind::MatMul if g.const_of(w.expect("two inputs")).is_none() => {
            return Err("MatMul: both inputs computed (activation × activation)".into());
        }
        Kind::MatMul | Kind::Gemm if !float_const(g, w, Some(2)) => {
            return Err(format!(
                "{}: the weight is not a float32 matrix",
                op.op_type
            ));
        }
        Kind::Conv if !float_const(g, w, None) => {
            return Err("Conv: the weight is not a float32 constant".into());
        }
        _ => {}
    }
    let gemm_attrs = op.attr_int("transA").unwrap_or(0) != 0
        || op.attr_float("alpha").unwrap_or(1.0) != 1.0
        || op.attr_float("beta").unwrap_or(1.0) != 1.0;
    let b = g.input(o, 2);
    match kind {
        Kind::Gemm if gemm_attrs => Err("Gemm: transA, alpha or beta".into()),
        Kind::Conv if b.is_some() && !float_const(g, b, Some(1)) => {
            Err("Conv: the bias is computed".into())
        }
        _ => Ok(()),
    }
}

/// The per-channel (or per-tensor) int8 symmetric quantization of `a` along `axis`:
/// the int8 values and the scales.
fn quantize_channels(
    a: &ArrayD<f32>,
    axis: Option<usize>,
    mse: bool,
) -> Result<(Tensor, Vec<f32>), String> {
    quantize_channels_on(
        a,
        axis,
        mse,
        &QType::new(DType::I8, true, false).expect("int8"),
    )
}

/// [`quantize_channels`] on the grid `q`.
fn quantize_channels_on(
    a: &ArrayD<f32>,
    axis: Option<usize>,
    mse: bool,
    q: &QType,
) -> Result<(Tensor, Vec<f32>), String> {
    let one = |vals: Vec<f32>| {
        if mse {
            return mse_scale_zp(&vals, q).scale;
        }
        let (lo, hi) = vals
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        scale_zp(lo, hi, q).scale
    };
    let scales: Vec<f32> = match axis {
        None => vec![one(a.iter().copied().collect())],
        Some(ax) => a
            .axis_iter(Axis(ax))
            .map(|s| one(s.iter().copied().collect()))
            .collect(),
    };
    let shape: Vec<usize> = if axis.is_some() {
        vec![scales.len()]
    } else {
        vec![]
    };
    let scale_t =
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), scales.clone()).expect("shape"));
    let zp_t = Tensor::I8(ArrayD::zeros(IxDyn(&shape)));
    let attrs = QuantizeAttrs {
        axis: axis.unwrap_or(0) as i64,
        ..QuantizeAttrs::default()
    };
    let t = quantize_linear(&Tensor::F32(a.clone()), &scale_t, Some(&zp_t), &attrs)
        .map_err(|e| e.to_string())?;
    Ok((t, scales))
}

/// Symmetric int8 codes as the uint8 codes an integer product reads with a zero point of
/// 128 (see the module doc).
fn around_128(q: &ArrayD<i8>) -> Tensor {
    Tensor::U8(q.mapv(|c| (i16::from(c) + 128) as u8))
}

/// Adds a constant named from `base`.
fn constant(g: &mut Graph, base: &str, t: &Tensor) -> Result<ValueId, PassError> {
    let name = g.fresh_name(base);
    g.add_const(&name, ConstTensor::from_tensor(None, t))
        .map_err(|e| err(e.to_string()))
}

/// Quantizes the weight `w` of an op of `kind` (`transposed`: Gemm's `transB`), in the
/// layout the integer op reads, scales shaped to broadcast against its output.
fn quantize_weight(
    g: &mut Graph,
    w: ValueId,
    kind: Kind,
    transposed: bool,
    cfg: &QuantConfig,
) -> Result<(QWeight, u64), PassError> {
    let (name, a) = float_weight(g, w)?;
    let n = a.len() as u64;
    // The output-channel axis of the stored weight.
    let axis = match (kind, transposed) {
        (Kind::MatMul | Kind::Gemm, false) => 1,
        (Kind::Gemm, true) | (Kind::Conv | Kind::Gather, _) => 0,
        (Kind::MatMul, true) => unreachable!("MatMul weights are never transposed"),
        (Kind::Lstm, _) => unreachable!("LSTM weights are quantized by rewrite_lstm"),
    };
    let per_channel = cfg.per_channel || kind == Kind::Gather;
    let (q, scales) = quantize_channels(&a, per_channel.then_some(axis), cfg.weight_mse)
        .map_err(|e| err(format!("weight '{name}': {e}")))?;
    let q = match (q, transposed) {
        (Tensor::I8(qa), true) => Tensor::I8(qa.t().as_standard_layout().to_owned().into_dyn()),
        (q, _) => q,
    };
    // The integer products read the symmetric codes shifted into uint8 (zero point 128):
    // the same grid, but a uint8 × uint8 product, which ONNX Runtime's x86 kernels sum
    // exactly on every CPU (their uint8 × int8 kernels without VNNI saturate pairs of
    // products to int16). Gathered rows stay int8.
    let (q, zero_point) = match q {
        Tensor::I8(qa) if kind != Kind::Gather => (
            around_128(&qa),
            Tensor::U8(ArrayD::from_elem(IxDyn(&[]), 128)),
        ),
        q => (q, Tensor::I8(ArrayD::zeros(IxDyn(&[])))),
    };
    // Scales broadcast against the output: [N] for a product, [M, 1, …] for a Conv
    // output and a gathered row.
    let channels = scales.len();
    let scale_shape: Vec<usize> = match kind {
        _ if !per_channel => vec![],
        Kind::MatMul | Kind::Gemm => vec![channels],
        Kind::Conv => {
            let mut s = vec![1; a.ndim() - 1];
            s[0] = channels;
            s
        }
        Kind::Gather => vec![channels, 1],
        Kind::Lstm => unreachable!("LSTM weights are quantized by rewrite_lstm"),
    };
    let scale_t =
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&scale_shape), scales).expect("scale shape"));
    let qv = constant(g, &format!("{name}.quantized"), &q)?;
    let sv = constant(g, &format!("{name}.scale"), &scale_t)?;
    let zv = constant(g, &format!("{name}.zero_point"), &zero_point)?;
    Ok((
        QWeight {
            q: qv,
            scale: sv,
            zero_point: zv,
        },
        n,
    ))
}

/// Where new ops go in the deterministic order: the rewritten op's place, one
/// sub-index after another.
struct Place(u32, u32);

impl Place {
    fn next(&mut self) -> (u32, u32) {
        self.1 += 1;
        (self.0, self.1)
    }
}

/// A new op: its type, name, inputs, outputs (a value given, or a fresh one named from
/// a base) and attributes.
struct New<'a> {
    op_type: &'a str,
    name: String,
    inputs: Vec<ValueId>,
    outputs: Vec<Result<ValueId, String>>,
    attrs: Vec<(String, AttrValue)>,
}

impl New<'_> {
    fn op<'a>(op_type: &'a str, name: String, inputs: &[ValueId]) -> New<'a> {
        New {
            op_type,
            name,
            inputs: inputs.to_vec(),
            outputs: Vec::new(),
            attrs: Vec::new(),
        }
    }

    fn fresh(mut self, base: String) -> Self {
        self.outputs.push(Err(base));
        self
    }

    fn into_value(mut self, v: ValueId) -> Self {
        self.outputs.push(Ok(v));
        self
    }

    fn attr(mut self, k: &str, v: AttrValue) -> Self {
        self.attrs.push((k.to_string(), v));
        self
    }

    /// Adds the op; returns its output values.
    fn add(self, g: &mut Graph, at: &mut Place) -> Result<Vec<ValueId>, PassError> {
        let mut op = Op::new(self.op_type, &self.name);
        op.order = at.next();
        for (k, v) in self.attrs {
            op.set_attr(&k, v);
        }
        let outputs: Vec<ValueId> = self
            .outputs
            .into_iter()
            .map(|o| match o {
                Ok(v) => v,
                Err(base) => g.add_fresh_value(&base, None),
            })
            .collect();
        let ins: Vec<Option<ValueId>> = self.inputs.into_iter().map(Some).collect();
        let outs: Vec<Option<ValueId>> = outputs.iter().map(|v| Some(*v)).collect();
        g.add_op(op, &ins, &outs).map_err(|e| err(e.to_string()))?;
        Ok(outputs)
    }
}

fn cast_to_float() -> AttrValue {
    AttrValue::Int(DType::F32.onnx_code() as i64)
}

/// The DynamicQuantizeLinear outputs of activation `x` (added once, by its first reader).
fn quantize_activation(
    g: &mut Graph,
    x: ValueId,
    at: &mut Place,
    acts: &mut BTreeMap<ValueId, QAct>,
) -> Result<QAct, PassError> {
    if let Some(a) = acts.get(&x) {
        return Ok(*a);
    }
    let name = g.value(x).name.clone();
    let o = New::op(
        "DynamicQuantizeLinear",
        format!("{name}.dynamic_quantize"),
        &[x],
    )
    .fresh(format!("{name}.quantized"))
    .fresh(format!("{name}.scale"))
    .fresh(format!("{name}.zero_point"))
    .add(g, at)?;
    let a = QAct {
        q: o[0],
        scale: o[1],
        zero_point: o[2],
    };
    acts.insert(x, a);
    Ok(a)
}

/// Rewrites op `o` (checked by [`eligible`]); returns the weight parameters quantized.
fn rewrite_op(
    g: &mut Graph,
    o: OpId,
    kind: Kind,
    cfg: &QuantConfig,
    acts: &mut BTreeMap<ValueId, QAct>,
) -> Result<u64, PassError> {
    let ins = g.inputs_of(o);
    let y = g.output(o, 0).expect("an output");
    let yname = g.value(y).name.clone();
    let base = g.op(o).display_name().to_string();
    let (w, x) = (ins[1].expect("weight"), ins[0].expect("first input"));
    let (weight, data) = match kind {
        Kind::Gather => (x, w),
        _ => (w, x),
    };
    let transposed = kind == Kind::Gemm && g.op(o).attr_int("transB").unwrap_or(0) != 0;
    let w_rank = g.const_of(weight).map_or(2, |t| t.dims.len());
    let (qw, n) = quantize_weight(g, weight, kind, transposed, cfg)?;
    let bias = ins.get(2).copied().flatten();
    let old = g.remove_op(o);
    let mut at = Place(old.order.0, old.order.1);
    if kind == Kind::Gather {
        let q = New::op("Gather", format!("{base}.quantized"), &[qw.q, data])
            .fresh(format!("{yname}.int8"))
            .attr("axis", AttrValue::Int(0))
            .add(g, &mut at)?;
        let f = New::op("Cast", format!("{base}.cast"), &[q[0]])
            .fresh(format!("{yname}.float"))
            .attr("to", cast_to_float())
            .add(g, &mut at)?;
        let s = New::op("Gather", format!("{base}.scales"), &[qw.scale, data])
            .fresh(format!("{yname}.scales"))
            .attr("axis", AttrValue::Int(0))
            .add(g, &mut at)?;
        New::op("Mul", format!("{base}.dequantize"), &[f[0], s[0]])
            .into_value(y)
            .add(g, &mut at)?;
        return Ok(n);
    }
    let a = quantize_activation(g, data, &mut at, acts)?;
    let (integer, attrs) = match kind {
        Kind::Conv => ("ConvInteger", old.attrs.clone()),
        _ => ("MatMulInteger", Vec::new()),
    };
    let mut int_op = New::op(
        integer,
        format!("{base}.integer"),
        &[a.q, qw.q, a.zero_point, qw.zero_point],
    )
    .fresh(format!("{yname}.int32"));
    for at in attrs {
        int_op = int_op.attr(&at.name, at.value);
    }
    let i = int_op.add(g, &mut at)?;
    let f = New::op("Cast", format!("{base}.cast"), &[i[0]])
        .fresh(format!("{yname}.float"))
        .attr("to", cast_to_float())
        .add(g, &mut at)?;
    let s = New::op("Mul", format!("{base}.scales"), &[a.scale, qw.scale])
        .fresh(format!("{yname}.scales"))
        .add(g, &mut at)?;
    let product = New::op("Mul", format!("{base}.dequantize"), &[f[0], s[0]]);
    let Some(b) = bias else {
        product.into_value(y).add(g, &mut at)?;
        return Ok(n);
    };
    let p = product.fresh(format!("{yname}.product")).add(g, &mut at)?;
    let b = match kind {
        Kind::Conv => conv_bias(g, b, w_rank - 1)?,
        _ => b,
    };
    New::op("Add", format!("{base}.bias"), &[p[0], b])
        .into_value(y)
        .add(g, &mut at)?;
    Ok(n)
}

/// A Conv bias `[M]` reshaped to broadcast against the output's channels (`[M, 1, …]`
/// of rank `rank`).
fn conv_bias(g: &mut Graph, b: ValueId, rank: usize) -> Result<ValueId, PassError> {
    let name = g.value(b).name.clone();
    let t = g
        .const_of(b)
        .expect("checked constant")
        .to_tensor()
        .map_err(|e| err(format!("bias '{name}': {e}")))?;
    let Tensor::F32(a) = t else {
        return Err(err(format!("bias '{name}' is not float32")));
    };
    let mut shape = vec![1usize; rank.max(1)];
    shape[0] = a.len();
    let r = a
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| err(format!("bias '{name}': {e}")))?;
    constant(g, &format!("{name}.channels"), &Tensor::F32(r))
}

/// LSTMs inside the subgraphs of `g` (If branches that stay: silero_vad's depend on the
/// state's shape) become DynamicQuantizeLSTM where their weights are constants of their own
/// graph; the others stay float with their reason (`label` names the enclosing op).
fn lstms_in_subgraphs(
    g: &mut Graph,
    label: &str,
    cfg: &QuantConfig,
    rep: &mut Report,
) -> Result<(), PassError> {
    let ops: Vec<OpId> = g.ops().collect();
    for o in ops {
        let key = op_key(g, o);
        let attrs: Vec<String> = g
            .op(o)
            .subgraphs()
            .iter()
            .map(|(a, _)| a.to_string())
            .collect();
        for (attr, sg) in attrs.iter().zip(g.op_mut(o).subgraphs_mut()) {
            let here = if label.is_empty() {
                format!("{key}.{attr}")
            } else {
                format!("{label}/{key}.{attr}")
            };
            let inner: Vec<OpId> = sg
                .ops()
                .filter(|&i| sg.op(i).op_type == "LSTM" && sg.op(i).domain_key().is_empty())
                .collect();
            for i in inner {
                let name = format!("{here}/{}", op_key(sg, i));
                if cfg.exclude_op_types.contains("LSTM")
                    || cfg.op_types.as_ref().is_some_and(|t| !t.contains("LSTM"))
                    || cfg.exclude_nodes.contains(&op_key(sg, i))
                {
                    rep.float(
                        "excluded by --exclude-nodes/--exclude-op-types/--op-types",
                        name,
                    );
                    continue;
                }
                if let Err(why) = lstm_eligible(sg, i) {
                    rep.float(why, name);
                    continue;
                }
                rep.int8_parameters += rewrite_lstm(sg, i, cfg)?;
                *rep.quantized.entry("LSTM".to_string()).or_default() += 1;
            }
            lstms_in_subgraphs(sg, &here, cfg, rep)?;
        }
    }
    Ok(())
}

/// Whether LSTM `o` can become DynamicQuantizeLSTM; else why not.
fn lstm_eligible(g: &Graph, o: OpId) -> Result<(), String> {
    let op = g.op(o);
    if !is_f32(g, g.input(o, 0)) {
        return Err("LSTM: the input is not float32".into());
    }
    if !float_const(g, g.input(o, 1), Some(3)) || !float_const(g, g.input(o, 2), Some(3)) {
        return Err("LSTM: W or R is not a float32 constant of rank 3".into());
    }
    if op.attr_int("layout").unwrap_or(0) != 0 {
        return Err("LSTM: layout 1 (batch first), which DynamicQuantizeLSTM lacks".into());
    }
    if let Some(AttrValue::Strings(acts)) = op.attr("activations") {
        let default = ["sigmoid", "tanh", "tanh"];
        let ok = acts.iter().enumerate().all(|(i, a)| {
            std::str::from_utf8(a).is_ok_and(|a| a.eq_ignore_ascii_case(default[i % 3]))
        });
        if !ok {
            return Err(
                "LSTM: activations other than Sigmoid, Tanh, Tanh (qrange's kernel has only those)"
                    .into(),
            );
        }
    }
    let dims = |v: Option<ValueId>| v.and_then(|v| g.const_of(v)).map(|t| t.dims.clone());
    let (w, r) = (dims(g.input(o, 1)), dims(g.input(o, 2)));
    let hidden = op.attr_int("hidden_size");
    let consistent = match (&w, &r, hidden) {
        (Some(w), Some(r), Some(h)) => {
            h > 0 && w[1] == 4 * h && r[1] == 4 * h && r[2] == h && w[0] == r[0]
        }
        _ => false,
    };
    if !consistent {
        return Err("LSTM: W, R and hidden_size do not agree".into());
    }
    Ok(())
}

/// The name and float32 values of constant weight `w` (checked a constant by the caller).
fn float_weight(g: &Graph, w: ValueId) -> Result<(String, ArrayD<f32>), PassError> {
    let name = g.value(w).name.clone();
    let t = g
        .const_of(w)
        .expect("checked constant")
        .to_tensor()
        .map_err(|e| err(format!("weight '{name}': {e}")))?;
    let Tensor::F32(a) = t else {
        return Err(err(format!("weight '{name}' is not float32")));
    };
    Ok((name, a))
}

/// An LSTM weight `[D, 4H, K]` as DynamicQuantizeLSTM reads it: symmetric 8-bit codes as
/// uint8 `[D, K, 4H]`, its scales (`[D, 4H]` per column, `[D]` per direction) and uint8 zero
/// points of 128 of the same shape.
fn quantize_lstm_weight(
    g: &mut Graph,
    w: ValueId,
    cfg: &QuantConfig,
) -> Result<(ValueId, ValueId, ValueId, u64), PassError> {
    let (name, a) = float_weight(g, w)?;
    let shape = a.shape().to_vec();
    let (d, n, k) = (shape[0], shape[1], shape[2]);
    // All 8 bits ([-127, 127]), stored as uint8 around a zero point of 128 (see the module
    // doc): ONNX Runtime's uint8 × uint8 kernels sum them exactly on every CPU.
    let grid = QType::new(DType::I8, true, false).expect("int8");
    let (q, scales, scale_shape) = if cfg.per_channel {
        let rows = a
            .clone()
            .into_shape_with_order(IxDyn(&[d * n, k]))
            .map_err(|e| err(format!("weight '{name}': {e}")))?;
        let (q, s) = quantize_channels_on(&rows, Some(0), cfg.weight_mse, &grid)
            .map_err(|e| err(format!("weight '{name}': {e}")))?;
        (q, s, vec![d, n])
    } else {
        let (q, s) = quantize_channels_on(&a, Some(0), cfg.weight_mse, &grid)
            .map_err(|e| err(format!("weight '{name}': {e}")))?;
        (q, s, vec![d])
    };
    let Tensor::I8(q) = q else {
        return Err(err(format!("weight '{name}': int8 expected")));
    };
    let q = q
        .into_shape_with_order(IxDyn(&[d, n, k]))
        .map_err(|e| err(format!("weight '{name}': {e}")))?
        .permuted_axes(IxDyn(&[0, 2, 1]))
        .as_standard_layout()
        .to_owned();
    let scale_t =
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&scale_shape), scales).expect("scale shape"));
    let qv = constant(g, &format!("{name}.quantized"), &around_128(&q))?;
    let sv = constant(g, &format!("{name}.scale"), &scale_t)?;
    let zv = constant(
        g,
        &format!("{name}.zero_point"),
        &Tensor::U8(ArrayD::from_elem(IxDyn(&scale_shape), 128)),
    )?;
    Ok((qv, sv, zv, a.len() as u64))
}

/// Rewrites LSTM `o` (checked by [`lstm_eligible`]) into com.microsoft DynamicQuantizeLSTM in
/// place: same name, outputs and attributes (`layout` dropped); returns the weight
/// parameters quantized.
fn rewrite_lstm(g: &mut Graph, o: OpId, cfg: &QuantConfig) -> Result<u64, PassError> {
    let (w, r) = (
        g.input(o, 1).expect("checked W"),
        g.input(o, 2).expect("checked R"),
    );
    let (wq, ws, wz, nw) = quantize_lstm_weight(g, w, cfg)?;
    let (rq, rs, rz, nr) = quantize_lstm_weight(g, r, cfg)?;
    let old = g.inputs_of(o);
    let mut ins: Vec<Option<ValueId>> = (0..8).map(|i| old.get(i).copied().flatten()).collect();
    ins[1] = Some(wq);
    ins[2] = Some(rq);
    ins.extend([Some(ws), Some(wz), Some(rs), Some(rz)]);
    for (slot, v) in ins.into_iter().enumerate() {
        if slot < old.len() {
            g.set_input(o, slot, v);
        } else {
            g.push_input(o, v);
        }
    }
    let op = g.op_mut(o);
    op.op_type = "DynamicQuantizeLSTM".into();
    op.domain = Some("com.microsoft".into());
    op.attrs.retain(|a| a.name != "layout");
    Ok(nw + nr)
}
