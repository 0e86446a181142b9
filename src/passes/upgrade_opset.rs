//! `upgrade_opset`: raises the default-domain (`ai.onnx`) opset of a model to a target
//! version, rewriting every operator whose definition changed on the way.
//!
//! # What it does
//! For a model importing `ai.onnx` at version `s` (7 ≤ s) and a target `t` (s < t ≤ 21), every
//! default-domain node of the main graph and of every subgraph (If/Loop/Scan bodies) is taken
//! through each version `v` in `s+1..=t` at which its operator's schema changed. `CHANGES` is
//! the whole list of such (operator, version) pairs between opsets 8 and 21, as ONNX 1.23's
//! schema history gives it (the list is checked against `tests/conformance/opset_changes.txt`,
//! which `tests/conformance/upgrade_check.py` regenerates from the `onnx` package). Each entry
//! says one of:
//! - **types**: only the allowed element types (or sequence/optional types) grew;
//! - **same**: an attribute or optional input was added whose default keeps the old meaning,
//!   or only the documentation changed (negative axes allowed, broadcasting relaxed…); the
//!   reason is written next to the entry;
//! - **convert**: rewritten in place (attributes that became inputs turn into int64/float
//!   constants, renamed operators get their new name, changed defaults are written
//!   explicitly, Softmax-like ops that coerced to 2-D are wrapped in Flatten/Reshape);
//! - **refuse**: no faithful rewrite exists here; the pass fails naming the node and operator.
//!
//! Then the model's `ai.onnx` import is set to `t` and `ir_version` is raised to the lowest
//! IR version that opset `t` requires (opset 13 needs IR 7, opset 21 needs IR 10); a higher
//! `ir_version` stays. Model-local functions that import `ai.onnx` below `t` are raised too
//! when every operator of their body keeps its meaning (types/same entries); otherwise the pass
//! refuses, naming the function and node. A model already at or above the target is left alone.
//!
//! The target is fixed ([`UpgradeOpset::new`], `qrange convert --opset`) or, in the
//! quantize pipeline ([`UpgradeOpset::for_qdq`]), what the planned QuantizeLinear/
//! DequantizeLinear need ([`qdq_opset`]: 21 for 16-bit types, 13 for per-channel weights,
//! else 10), read from the plan in [`PassCx::plan`]; raising it is then told in
//! [`PassCx::done`].
//!
//! # Requires
//! Value types only where a conversion needs an element type (Clip and Pad attributes that
//! become typed inputs, GroupNormalization's channel count); Softmax/LogSoftmax/Hardmax use
//! the rank when it is known and an exact rank-free rewrite otherwise.
//!
//! # Effects
//! New constants are initializers named after the node's first output (`<out>.axes`,
//! `<out>.pads`, `<out>.split`…, made unique over the whole model); new nodes are named after
//! the converted node (`<node>.flatten`, `<node>.shape`, `<node>.reshape`). Values keep their
//! names and types; removed outputs (Dropout's mask, BatchNormalization's training outputs)
//! were unused. Computed shapes and ranges stay valid.
//!
//! # Example
//! ```text
//! before (opset 11):
//! input  %x: f32[2,3,4,5]
//! %y = Softmax(%x) {axis=1} : f32[2,3,4,5]
//! %sq = Squeeze(%x2) {axes=[1]} : ?
//! after (opset 13):
//! const  %sq.axes: i64[1] = [1]
//! %x.flat = Flatten(%x) {axis=1} : f32[?,?]
//! %x.shape = Shape(%x) : i64[?]
//! %y.flat = Softmax(%x.flat) {axis=-1} : f32[?,?]
//! %y = Reshape(%y.flat, %x.shape) : f32[2,3,4,5]
//! %sq = Squeeze(%x2, %sq.axes) : ?
//! ```

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{
    AttrValue, ConstTensor, DType, Graph, Model, Op, OpId, Tensor, Value, ValueId, ValueType,
};
use crate::quant::plan::{Plan, QuantConfig};
use std::collections::{BTreeMap, HashSet};

/// The pass name (`--dump-after upgrade_opset`).
pub const NAME: &str = "upgrade_opset";

/// Lowest source opset the pass accepts (older versions changed broadcasting and more).
pub const MIN_SOURCE: i64 = 7;
/// Highest target opset the pass knows the changes up to.
pub const MAX_TARGET: i64 = 21;

/// The pass: raise `ai.onnx` to at least a target opset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpgradeOpset {
    pub target: OpsetTarget,
}

/// The opset [`UpgradeOpset`] raises to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsetTarget {
    /// This opset.
    Fixed(i64),
    /// What the plan's QuantizeLinear/DequantizeLinear need ([`qdq_opset`]).
    ForQdq,
}

impl UpgradeOpset {
    pub fn new(target: i64) -> UpgradeOpset {
        UpgradeOpset {
            target: OpsetTarget::Fixed(target),
        }
    }

    /// The quantize pipeline's step: the opset the planned Q/DQ need.
    pub fn for_qdq() -> UpgradeOpset {
        UpgradeOpset {
            target: OpsetTarget::ForQdq,
        }
    }
}

/// The opset dynamic quantization needs (DynamicQuantizeLinear).
pub const DYNAMIC_OPSET: i64 = 11;

/// The opset the Q/DQ of `plan` need: 21 for 16-bit types (`wide`: mixed precision may
/// promote activations to 16 bits), int4 weights and codebooks of up to 4 bits (uint4
/// indices), 13 for per-channel weights (`axis`), else 10.
pub fn qdq_opset(plan: &Plan, cfg: &QuantConfig, wide: bool) -> i64 {
    let nibbles =
        cfg.weight.dtype == DType::I4 || cfg.weight_grid.index_bits().is_some_and(|b| b <= 4);
    if wide || nibbles || matches!(cfg.activation.dtype, DType::U16 | DType::I16) {
        21
    } else if plan.uses_per_channel() {
        13
    } else {
        10
    }
}

impl Pass for UpgradeOpset {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        match self.target {
            OpsetTarget::Fixed(_) => {
                "raise the ai.onnx opset, converting every operator that changed"
            }
            OpsetTarget::ForQdq => {
                "raise the ai.onnx opset to what the planned Q/DQ need (10, 13 per channel, 21 for 16 bits; 11 in dynamic mode)"
            }
        }
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        match self.target {
            OpsetTarget::ForQdq if cx.plan.is_none() && !cx.dynamic => Some("no plan".to_string()),
            _ => None,
        }
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let target = match self.target {
            OpsetTarget::Fixed(t) => t,
            OpsetTarget::ForQdq => match (&cx.plan, &cx.quant) {
                // DynamicQuantizeLinear appeared in opset 11.
                _ if cx.dynamic => DYNAMIC_OPSET,
                (Some(plan), Some(cfg)) => qdq_opset(plan, cfg, cx.wide),
                _ => return Ok(Changed::No),
            },
        };
        let have = m.opset("").unwrap_or(1);
        if have >= target {
            return Ok(Changed::No);
        }
        let r = upgrade(m, target).map_err(|e| match self.target {
            OpsetTarget::Fixed(_) => e,
            OpsetTarget::ForQdq => fail(format!(
                "raising the opset from {have} to {target} for Q/DQ: {}",
                e.what
            )),
        })?;
        if self.target == OpsetTarget::ForQdq {
            cx.done.push(format!(
                "opset raised from {have} to {target} ({} nodes rewritten)",
                r.converted.values().sum::<usize>()
            ));
        }
        Ok(Changed::from_bool(r.from.is_some()))
    }
}

/// The lowest IR version a model importing `ai.onnx` at `opset` must declare.
pub fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// What [`upgrade`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeReport {
    /// The opset the model had, `None` when nothing was done (already at or above the target,
    /// or no default-domain import).
    pub from: Option<i64>,
    pub to: i64,
    /// `ir_version` before and after.
    pub ir_version: (Option<i64>, Option<i64>),
    /// Nodes rewritten, per `(operator, version)`.
    pub converted: BTreeMap<(String, i64), usize>,
    /// Nodes kept as they were although their operator changed, per `(operator, version)`,
    /// with the reason ("element types added" or why the meaning is the same).
    pub kept: BTreeMap<(String, i64), (usize, &'static str)>,
    /// Model-local functions whose `ai.onnx` import was raised.
    pub functions: Vec<String>,
}

fn fail(what: String) -> PassError {
    PassError { pass: NAME, what }
}

/// Raises the default-domain opset of `m` to `target` (see the module documentation). On
/// error `m` is unchanged.
pub fn upgrade(m: &mut Model, target: i64) -> Result<UpgradeReport, PassError> {
    let mut report = UpgradeReport {
        to: target,
        ir_version: (m.ir_version, m.ir_version),
        ..Default::default()
    };
    if !(MIN_SOURCE..=MAX_TARGET).contains(&target) {
        return Err(fail(format!(
            "target opset {target} is outside the supported range {MIN_SOURCE}..={MAX_TARGET}"
        )));
    }
    let Some(source) = m.opset("") else {
        // No default-domain operators to convert.
        return Ok(report);
    };
    if source >= target {
        return Ok(report);
    }
    if source < MIN_SOURCE {
        return Err(fail(format!(
            "the model imports ai.onnx opset {source}; upgrading is supported from opset \
             {MIN_SOURCE} on"
        )));
    }
    // Local functions first: refusing must leave the model untouched.
    let functions = crate::onnx::local_functions(m);
    let mut raise = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        let Some(fv) = f
            .opsets
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
        else {
            continue;
        };
        if fv >= target {
            continue;
        }
        for (domain, op, node) in &f.nodes {
            if !(domain.is_empty() || domain == "ai.onnx") {
                continue;
            }
            for v in fv + 1..=target {
                if let Some(c) = change(op, v) {
                    if !matches!(c.rule, Rule::Types | Rule::Same(_)) {
                        return Err(fail(format!(
                            "local function '{}.{}': node '{node}' ({op}) changed at opset {v}; \
                             function bodies are only upgraded when every operator keeps its \
                             meaning",
                            f.domain, f.name
                        )));
                    }
                }
            }
        }
        raise.push(i);
    }
    let mut cx = Cx {
        source,
        target,
        names: HashSet::new(),
        report: &mut report,
    };
    collect_names(&m.graph, &mut cx.names);
    let mut work = m.graph.clone();
    upgrade_graph(&mut work, &mut cx)?;
    m.graph = work;
    for i in raise {
        crate::onnx::set_function_opset(m, i, "", target);
        report
            .functions
            .push(format!("{}.{}", functions[i].domain, functions[i].name));
    }
    for o in &mut m.opsets {
        if o.domain.is_empty() || o.domain == "ai.onnx" {
            o.version = target;
        }
    }
    let need = min_ir_version(target);
    if m.ir_version.is_none_or(|v| v < need) {
        m.ir_version = Some(need);
    }
    report.from = Some(source);
    report.ir_version.1 = m.ir_version;
    Ok(report)
}

fn collect_names(g: &Graph, out: &mut HashSet<String>) {
    for v in g.values() {
        out.insert(g.value(v).name.clone());
    }
    for o in g.ops() {
        for (_, sg) in g.op(o).subgraphs() {
            collect_names(sg, out);
        }
    }
}

/// State shared by the conversions of one model.
pub(crate) struct Cx<'a> {
    source: i64,
    target: i64,
    report: &'a mut UpgradeReport,
    /// Every value name of the model (all graphs), so new names never shadow.
    names: HashSet<String>,
}

impl Cx<'_> {
    /// A value name derived from `base`, unused anywhere in the model; reserves it.
    fn fresh(&mut self, base: &str) -> String {
        let name = if self.names.contains(base) {
            (1..)
                .map(|i| format!("{base}.{i}"))
                .find(|n| !self.names.contains(n))
                .expect("unbounded")
        } else {
            base.to_string()
        };
        self.names.insert(name.clone());
        name
    }
}

fn upgrade_graph(g: &mut Graph, cx: &mut Cx) -> Result<(), PassError> {
    let order = g.topo_order().map_err(|e| fail(e.to_string()))?;
    for o in order {
        for sg in g.op_mut(o).subgraphs_mut() {
            upgrade_graph(sg, cx)?;
        }
        if !g.op(o).domain_key().is_empty() {
            continue;
        }
        let mut id = o;
        for v in cx.source + 1..=cx.target {
            let op_type = g.op(id).op_type.clone();
            let Some(c) = change(&op_type, v) else {
                continue;
            };
            let here = |why: &str| {
                fail(format!(
                    "node '{}' ({op_type}): cannot upgrade from opset {} to {v}: {why}",
                    g.op(id).display_name(),
                    v - 1
                ))
            };
            let key = (op_type.clone(), v);
            match c.rule {
                Rule::Types => {
                    cx.report
                        .kept
                        .entry(key)
                        .or_insert((0, "element types added"))
                        .0 += 1
                }
                Rule::Same(why) => cx.report.kept.entry(key).or_insert((0, why)).0 += 1,
                Rule::Refuse(why) => return Err(here(why)),
                Rule::Convert(f) => match f(cx, g, id) {
                    Ok(new) => {
                        id = new;
                        *cx.report.converted.entry(key).or_insert(0) += 1;
                    }
                    Err(why) => {
                        return Err(fail(format!(
                            "node '{}' ({op_type}): cannot upgrade from opset {} to {v}: {why}",
                            g.op(id).display_name(),
                            v - 1
                        )))
                    }
                },
            }
        }
    }
    Ok(())
}

/// How one schema change is handled.
#[derive(Clone, Copy)]
pub(crate) enum Rule {
    /// Only the allowed element types grew.
    Types,
    /// Same meaning for every model valid at the older version; why.
    Same(&'static str),
    /// Rewritten by this function (returns the op's id, new when the op was re-created).
    Convert(Converter),
    /// Not converted; why.
    Refuse(&'static str),
}

type Converter = fn(&mut Cx<'_>, &mut Graph, OpId) -> Result<OpId, String>;

/// One schema change: `op` changed at `version`.
#[derive(Clone, Copy)]
pub(crate) struct Change {
    pub op: &'static str,
    pub version: i64,
    pub rule: Rule,
}

/// The handling of `op` at `version`, when its schema changed there.
pub(crate) fn change(op: &str, version: i64) -> Option<&'static Change> {
    CHANGES.iter().find(|c| c.op == op && c.version == version)
}

const fn types(op: &'static str, version: i64) -> Change {
    Change {
        op,
        version,
        rule: Rule::Types,
    }
}

const fn same(op: &'static str, version: i64, why: &'static str) -> Change {
    Change {
        op,
        version,
        rule: Rule::Same(why),
    }
}

const fn convert(op: &'static str, version: i64, f: Converter) -> Change {
    Change {
        op,
        version,
        rule: Rule::Convert(f),
    }
}

const fn refuse(op: &'static str, version: i64, why: &'static str) -> Change {
    Change {
        op,
        version,
        rule: Rule::Refuse(why),
    }
}

const NEG_AXIS: &str = "negative axis values allowed; non-negative ones mean the same";
const DOC_ONLY: &str = "documentation and shape-inference changes only";

/// Every schema change of the default domain between opsets 8 and 21 (ONNX 1.23), sorted by
/// operator then version.
pub(crate) static CHANGES: &[Change] = &[
    types("Abs", 13),
    types("Add", 13),
    types("Add", 14),
    same("ArgMax", 11, NEG_AXIS),
    same(
        "ArgMax",
        12,
        "select_last_index added, default 0 = first index as before",
    ),
    types("ArgMax", 13),
    same("ArgMin", 11, NEG_AXIS),
    same(
        "ArgMin",
        12,
        "select_last_index added, default 0 = first index as before",
    ),
    types("ArgMin", 13),
    same(
        "AveragePool",
        10,
        "ceil_mode added, default 0 = floor as before",
    ),
    same(
        "AveragePool",
        11,
        "auto_pad/pads output-shape formula clarified; same results",
    ),
    same("AveragePool", 19, "dilations added, default 1"),
    convert("BatchNormalization", 9, batchnorm_9),
    convert("BatchNormalization", 14, batchnorm_14),
    same(
        "BatchNormalization",
        15,
        "scale/B and mean/var may differ in float type",
    ),
    types("Cast", 9),
    types("Cast", 13),
    same(
        "Cast",
        19,
        "saturate added: it only applies to float8 targets, new at 19",
    ),
    types("Cast", 21),
    types("Ceil", 13),
    same(
        "CastLike",
        19,
        "saturate added: it only applies to float8 targets, new at 19",
    ),
    types("CastLike", 21),
    types("Clip", 12),
    convert("Clip", 11, clip_11),
    types("Clip", 13),
    same("Compress", 11, NEG_AXIS),
    same("Concat", 11, NEG_AXIS),
    types("Concat", 13),
    types("Constant", 9),
    same(
        "Constant",
        11,
        "sparse_value added as an alternative to value",
    ),
    same(
        "Constant",
        12,
        "value_float(s)/value_int(s)/value_string(s) added as alternatives",
    ),
    types("Constant", 13),
    types("Constant", 19),
    types("Constant", 21),
    types("ConstantOfShape", 20),
    types("ConstantOfShape", 21),
    same("Conv", 11, DOC_ONLY),
    same("ConvTranspose", 11, DOC_ONLY),
    types("CumSum", 14),
    convert("DFT", 20, dft_20),
    same(
        "DepthToSpace",
        11,
        "mode added, default DCR = the old layout",
    ),
    types("DepthToSpace", 13),
    same(
        "DequantizeLinear",
        13,
        "axis added; before 13 scales were scalars, which ignore it",
    ),
    same(
        "DequantizeLinear",
        19,
        "scale may be float16/bfloat16; float8 inputs added",
    ),
    same(
        "DequantizeLinear",
        21,
        "block_size added, default 0 = not blocked; types added",
    ),
    types("Div", 13),
    types("Div", 14),
    convert("Dropout", 10, dropout_10),
    convert("Dropout", 12, dropout_12),
    types("Dropout", 13),
    types("Equal", 11),
    types("Equal", 13),
    types("Equal", 19),
    convert("Erf", 13, erf_13),
    types("Exp", 13),
    types("Expand", 13),
    types("Flatten", 9),
    same("Flatten", 11, NEG_AXIS),
    types("Flatten", 13),
    types("Flatten", 21),
    types("Floor", 13),
    same("GRU", 14, "layout added, default 0 = the old layout"),
    same(
        "Gather",
        11,
        "negative indices allowed; non-negative ones mean the same",
    ),
    types("Gather", 13),
    types("GatherElements", 13),
    same("GatherND", 12, "batch_dims added, default 0"),
    types("GatherND", 13),
    types("Gemm", 9),
    same("Gemm", 11, "C became optional"),
    types("Gemm", 13),
    types("Greater", 9),
    types("Greater", 13),
    types("GreaterOrEqual", 16),
    convert("GridSample", 20, gridsample_20),
    convert("GroupNormalization", 21, groupnorm_21),
    same("Hardmax", 11, NEG_AXIS),
    convert("Hardmax", 13, softmax_13),
    types("Identity", 13),
    same(
        "Identity",
        14,
        "sequence types added (type variable renamed)",
    ),
    types("Identity", 16),
    types("Identity", 19),
    types("Identity", 21),
    same("If", 11, "branches may now yield different shapes"),
    types("If", 13),
    types("If", 16),
    types("If", 19),
    types("If", 21),
    types("IsInf", 20),
    types("IsNaN", 13),
    types("IsNaN", 20),
    types("LRN", 13),
    same("LSTM", 14, "layout added, default 0 = the old layout"),
    types("LeakyRelu", 16),
    types("Less", 9),
    types("Less", 13),
    types("LessOrEqual", 16),
    types("Log", 13),
    same("LogSoftmax", 11, NEG_AXIS),
    convert("LogSoftmax", 13, softmax_13),
    same(
        "Loop",
        11,
        "M and cond may be omitted; scan output shapes relaxed",
    ),
    types("Loop", 13),
    types("Loop", 16),
    types("Loop", 19),
    types("Loop", 21),
    same("LpPool", 11, DOC_ONLY),
    same(
        "LpPool",
        18,
        "ceil_mode (default 0) and dilations (default 1) added",
    ),
    types("MatMul", 9),
    types("MatMul", 13),
    same(
        "Max",
        8,
        "multidirectional broadcasting: same-shape inputs mean the same",
    ),
    types("Max", 12),
    types("Max", 13),
    same(
        "MaxPool",
        8,
        "optional Indices output and storage_order (default 0) added",
    ),
    same(
        "MaxPool",
        10,
        "ceil_mode (default 0) and dilations (default 1) added",
    ),
    same("MaxPool", 11, DOC_ONLY),
    types("MaxPool", 12),
    same("MaxUnpool", 11, DOC_ONLY),
    same(
        "Mean",
        8,
        "multidirectional broadcasting: same-shape inputs mean the same",
    ),
    types("Mean", 13),
    types("MeanVarianceNormalization", 13),
    same(
        "Min",
        8,
        "multidirectional broadcasting: same-shape inputs mean the same",
    ),
    types("Min", 12),
    types("Min", 13),
    types("Mod", 13),
    types("Mul", 13),
    types("Mul", 14),
    types("Neg", 13),
    same("NegativeLogLikelihoodLoss", 13, DOC_ONLY),
    same("NonMaxSuppression", 11, DOC_ONLY),
    types("NonZero", 13),
    same("OneHot", 11, "negative axis and indices allowed"),
    types("OptionalGetElement", 18),
    same("OptionalHasElement", 18, "input became optional"),
    types("PRelu", 9),
    types("PRelu", 16),
    convert("Pad", 11, pad_11),
    types("Pad", 13),
    same("Pad", 18, "optional axes input added, default all axes"),
    same("Pad", 19, "wrap mode added"),
    types("Pad", 21),
    same("Pow", 12, "exponent may have its own type"),
    types("Pow", 13),
    types("Pow", 15),
    same(
        "QLinearMatMul",
        21,
        "scales may be float16/bfloat16; float8 types added",
    ),
    same(
        "QuantizeLinear",
        13,
        "axis added; before 13 scales were scalars, which ignore it",
    ),
    same(
        "QuantizeLinear",
        19,
        "saturate added: it only applies to float8 outputs, new at 19",
    ),
    same(
        "QuantizeLinear",
        21,
        "block_size and output_dtype added, defaults keep the old meaning",
    ),
    same("RNN", 14, "layout added, default 0 = the old layout"),
    types("Reciprocal", 13),
    same("ReduceL1", 11, NEG_AXIS),
    types("ReduceL1", 13),
    convert("ReduceL1", 18, axes_to_input),
    same("ReduceL2", 11, NEG_AXIS),
    types("ReduceL2", 13),
    convert("ReduceL2", 18, axes_to_input),
    same("ReduceLogSum", 11, NEG_AXIS),
    types("ReduceLogSum", 13),
    convert("ReduceLogSum", 18, axes_to_input),
    same("ReduceLogSumExp", 11, NEG_AXIS),
    types("ReduceLogSumExp", 13),
    convert("ReduceLogSumExp", 18, axes_to_input),
    same("ReduceMax", 11, NEG_AXIS),
    types("ReduceMax", 12),
    types("ReduceMax", 13),
    convert("ReduceMax", 18, axes_to_input),
    types("ReduceMax", 20),
    same("ReduceMean", 11, NEG_AXIS),
    types("ReduceMean", 13),
    convert("ReduceMean", 18, axes_to_input),
    same("ReduceMin", 11, NEG_AXIS),
    types("ReduceMin", 12),
    types("ReduceMin", 13),
    convert("ReduceMin", 18, axes_to_input),
    types("ReduceMin", 20),
    same("ReduceProd", 11, NEG_AXIS),
    types("ReduceProd", 13),
    convert("ReduceProd", 18, axes_to_input),
    same("ReduceSum", 11, NEG_AXIS),
    convert("ReduceSum", 13, axes_to_input),
    same("ReduceSumSquare", 11, NEG_AXIS),
    types("ReduceSumSquare", 13),
    convert("ReduceSumSquare", 18, axes_to_input),
    types("Relu", 13),
    types("Relu", 14),
    types("Reshape", 13),
    same(
        "Reshape",
        14,
        "allowzero added, default 0 = the old meaning of 0",
    ),
    types("Reshape", 19),
    types("Reshape", 21),
    convert("Resize", 11, resize_11),
    convert("Resize", 13, resize_13),
    same(
        "Resize",
        18,
        "antialias, axes, keep_aspect_ratio_policy added with neutral defaults",
    ),
    same("Resize", 19, "half_pixel_symmetric mode added"),
    convert("RoiAlign", 16, roialign_16),
    refuse(
        "Scan",
        9,
        "Scan-8 has a batch axis and sequence_lens; Scan-9 scans without them (not converted)",
    ),
    same("Scan", 11, NEG_AXIS),
    types("Scan", 16),
    types("Scan", 19),
    types("Scan", 21),
    convert("Scatter", 11, scatter_11),
    types("ScatterElements", 13),
    same("ScatterElements", 16, "reduction added, default none"),
    same("ScatterElements", 18, "max/min reductions added"),
    types("ScatterND", 13),
    same("ScatterND", 16, "reduction added, default none"),
    same("ScatterND", 18, "max/min reductions added"),
    types("Shape", 13),
    same(
        "Shape",
        15,
        "start (default 0) and end (default rank) added",
    ),
    types("Shape", 19),
    types("Shape", 21),
    types("Sigmoid", 13),
    types("Sign", 13),
    types("Size", 13),
    types("Size", 19),
    types("Size", 21),
    convert("Slice", 10, slice_10),
    same("Slice", 11, NEG_AXIS),
    types("Slice", 13),
    same("Softmax", 11, NEG_AXIS),
    convert("Softmax", 13, softmax_13),
    types("SoftmaxCrossEntropyLoss", 13),
    types("SpaceToDepth", 13),
    same("Split", 11, NEG_AXIS),
    convert("Split", 13, split_13),
    convert("Split", 18, split_18),
    types("Sqrt", 13),
    same("Squeeze", 11, NEG_AXIS),
    convert("Squeeze", 13, axes_to_input),
    types("Squeeze", 21),
    types("Sub", 13),
    types("Sub", 14),
    same(
        "Sum",
        8,
        "multidirectional broadcasting: same-shape inputs mean the same",
    ),
    types("Sum", 13),
    types("Tanh", 13),
    types("Tile", 13),
    convert("TopK", 10, topk_10),
    same(
        "TopK",
        11,
        "largest and sorted added, default 1 = the old behaviour; negative axis",
    ),
    types("Transpose", 13),
    types("Transpose", 21),
    same("Unsqueeze", 11, NEG_AXIS),
    convert("Unsqueeze", 13, axes_to_input),
    types("Unsqueeze", 21),
    convert("Upsample", 9, upsample_9),
    convert("Upsample", 10, upsample_10),
    types("Where", 16),
];

// ----- helpers -----

/// Adds an initializer named after `base` holding `t`.
fn add_const(cx: &mut Cx, g: &mut Graph, base: &str, t: &Tensor) -> Result<ValueId, String> {
    let name = cx.fresh(base);
    g.add_const(&name, ConstTensor::from_tensor(None, t))
        .map_err(|e| e.to_string())
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::I64(ndarray::Array1::from(v.to_vec()).into_dyn())
}

fn f32s(v: &[f32]) -> Tensor {
    Tensor::F32(ndarray::Array1::from(v.to_vec()).into_dyn())
}

/// Name base for constants made for `o`: its first output, else its name.
fn base_of(g: &Graph, o: OpId) -> String {
    g.outputs_of(o)
        .into_iter()
        .flatten()
        .next()
        .map(|v| g.value(v).name.clone())
        .unwrap_or_else(|| g.op(o).display_name().to_string())
}

fn remove_attr(g: &mut Graph, o: OpId, name: &str) -> Option<AttrValue> {
    let op = g.op_mut(o);
    let i = op.attrs.iter().position(|a| a.name == name)?;
    Some(op.attrs.remove(i).value)
}

fn ints_attr(g: &Graph, o: OpId, name: &str) -> Result<Option<Vec<i64>>, String> {
    match g.op(o).attr(name) {
        None => Ok(None),
        Some(AttrValue::Ints(v)) => Ok(Some(v.clone())),
        Some(_) => Err(format!("attribute '{name}' is not a list of integers")),
    }
}

/// Moves an integer-list attribute to input `slot` as an int64 constant (absent: no input).
fn ints_attr_to_input(
    cx: &mut Cx,
    g: &mut Graph,
    o: OpId,
    attr: &str,
    slot: usize,
) -> Result<bool, String> {
    let Some(v) = ints_attr(g, o, attr)? else {
        return Ok(false);
    };
    remove_attr(g, o, attr);
    if g.input(o, slot).is_some() {
        return Err(format!("has both an '{attr}' attribute and input {slot}"));
    }
    let base = format!("{}.{attr}", base_of(g, o));
    let c = add_const(cx, g, &base, &i64s(&v))?;
    g.set_input(o, slot, Some(c));
    Ok(true)
}

/// Element type of the value at input `slot` or output 0, when known.
fn dtype_at(g: &Graph, o: OpId) -> Option<DType> {
    g.input(o, 0)
        .and_then(|v| g.value(v).dtype())
        .or_else(|| g.output(o, 0).and_then(|v| g.value(v).dtype()))
}

/// Rank of input 0 (or of output 0, which has the same rank for the ops that ask).
fn rank_at(g: &Graph, o: OpId) -> Option<usize> {
    let rank = |v: ValueId| match &g.value(v).ty {
        Some(ValueType::Tensor {
            shape: Some(dims), ..
        }) => Some(dims.len()),
        _ => None,
    };
    g.input(o, 0)
        .and_then(rank)
        .or_else(|| g.output(o, 0).and_then(rank))
}

/// A scalar of `dtype` holding `v` (float types only).
fn float_scalar(dtype: DType, v: f32) -> Result<Tensor, String> {
    Tensor::from_f64(dtype, &[], &[v as f64])
        .map_err(|_| format!("cannot make a {dtype} constant for this operator"))
}

/// True when `v` is read by an op, is a graph output, or is read by a subgraph.
fn in_use(g: &Graph, v: ValueId) -> bool {
    if !g.consumers(v).is_empty() || g.is_output(v) {
        return true;
    }
    let name = &g.value(v).name;
    g.ops().any(|o| {
        g.op(o)
            .subgraphs()
            .iter()
            .any(|(_, sg)| sg.captures().contains(name))
    })
}

/// Removes `v` when it is an initializer that nothing reads any more (not an input or output).
fn drop_if_unused(g: &mut Graph, v: ValueId) {
    if g.value(v).init.is_some() && !g.is_input(v) && !in_use(g, v) {
        g.remove_value(v);
    }
}

/// Re-creates `o` keeping only its first `keep` outputs (the rest must be unused).
fn drop_outputs(g: &mut Graph, o: OpId, keep: usize, what: &str) -> Result<OpId, String> {
    let outs = g.outputs_of(o);
    if outs.len() <= keep {
        return Ok(o);
    }
    for v in outs[keep..].iter().flatten() {
        if in_use(g, *v) {
            return Err(format!("output '{}' ({what}) is used", g.value(*v).name));
        }
    }
    let ins = g.inputs_of(o);
    let op = g.remove_op(o);
    for v in outs[keep..].iter().flatten() {
        g.remove_value(*v);
    }
    g.add_op(op, &ins, &outs[..keep]).map_err(|e| e.to_string())
}

/// Adds a node right after `after` in the deterministic order, writing fresh values.
fn add_node(
    cx: &mut Cx,
    g: &mut Graph,
    after: OpId,
    op_type: &str,
    name: &str,
    inputs: &[Option<ValueId>],
    (out_base, out_ty): (&str, Option<ValueType>),
) -> Result<(OpId, ValueId), String> {
    let out_name = cx.fresh(out_base);
    let out = g
        .add_value(Value {
            name: out_name,
            ty: out_ty,
            init: None,
            carry: Default::default(),
        })
        .map_err(|e| e.to_string())?;
    let mut op = Op::new(op_type, name);
    op.order = g.order_after(after);
    let id = g
        .add_op(op, inputs, &[Some(out)])
        .map_err(|e| e.to_string())?;
    Ok((id, out))
}

// ----- conversions -----

/// BatchNormalization-9 dropped `spatial`; `spatial=0` (per-element statistics) has no
/// equivalent.
fn batchnorm_9(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    match remove_attr(g, o, "spatial") {
        Some(AttrValue::Int(0)) => {
            Err("spatial=0 (statistics per element) has no equivalent after opset 9".into())
        }
        _ => Ok(o),
    }
}

/// BatchNormalization-14 only has training outputs with `training_mode=1`: the old optional
/// outputs (mean, var, saved_mean, saved_var) must be unused; they are dropped.
fn batchnorm_14(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    drop_outputs(g, o, 1, "a training output")
}

/// Clip-11 takes min/max as inputs of the data's type.
fn clip_11(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let min = remove_attr(g, o, "min");
    let max = remove_attr(g, o, "max");
    if min.is_none() && max.is_none() {
        return Ok(o);
    }
    let dtype = dtype_at(g, o)
        .ok_or("the input's element type is unknown (min/max become inputs of that type)")?;
    let base = base_of(g, o);
    for (slot, a, suffix) in [(1, min, "min"), (2, max, "max")] {
        let Some(a) = a else {
            continue;
        };
        let AttrValue::Float(v) = a else {
            return Err(format!("attribute '{suffix}' is not a float"));
        };
        let c = add_const(cx, g, &format!("{base}.{suffix}"), &float_scalar(dtype, v)?)?;
        g.set_input(o, slot, Some(c));
    }
    Ok(o)
}

/// DFT-20 takes the axis as an optional input whose default changed from 1 to -2: the old
/// axis (default 1) is always given explicitly.
fn dft_20(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let axis = match remove_attr(g, o, "axis") {
        None => 1,
        Some(AttrValue::Int(a)) => a,
        Some(_) => return Err("attribute 'axis' is not an integer".into()),
    };
    let base = format!("{}.axis", base_of(g, o));
    let c = add_const(cx, g, &base, &Tensor::I64(ndarray::arr0(axis).into_dyn()))?;
    g.set_input(o, 2, Some(c));
    Ok(o)
}

/// Dropout-10 made the mask boolean: a mask in use keeps its old type only before 10.
fn dropout_10(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    drop_outputs(g, o, 1, "the mask, whose type changed to bool")
}

/// Dropout-12 takes the ratio as an optional input (ignored at inference, kept anyway).
fn dropout_12(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let Some(a) = remove_attr(g, o, "ratio") else {
        return Ok(o);
    };
    let AttrValue::Float(r) = a else {
        return Err("attribute 'ratio' is not a float".into());
    };
    let base = format!("{}.ratio", base_of(g, o));
    let c = add_const(cx, g, &base, &Tensor::F32(ndarray::arr0(r).into_dyn()))?;
    g.set_input(o, 1, Some(c));
    Ok(o)
}

/// Erf-13 dropped integer inputs.
fn erf_13(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    match dtype_at(g, o) {
        Some(d) if d.is_integer() => Err(format!("Erf on {d} is not defined from opset 13 on")),
        // Untyped inputs are taken as float: no runtime implements the integer form.
        _ => Ok(o),
    }
}

/// GridSample-20 renamed its modes: bilinear → linear, bicubic → cubic.
fn gridsample_20(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    if let Some(AttrValue::String(s)) = g.op(o).attr("mode") {
        let new: &[u8] = match s.as_slice() {
            b"bilinear" => b"linear",
            b"bicubic" => b"cubic",
            other => other,
        };
        let new = new.to_vec();
        g.op_mut(o).set_attr("mode", AttrValue::String(new));
    }
    Ok(o)
}

/// GroupNormalization-21 takes scale and bias per channel instead of per group: constant
/// per-group vectors are repeated over each group's channels.
fn groupnorm_21(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let groups = g
        .op(o)
        .attr_int("num_groups")
        .ok_or("attribute 'num_groups' is missing")?;
    let channels = g
        .input(o, 0)
        .and_then(|v| g.value(v).ty.as_ref())
        .and_then(|t| match t {
            ValueType::Tensor { shape: Some(d), .. } => match d.get(1) {
                Some(crate::ir::Dim::Known(c)) => Some(*c),
                _ => None,
            },
            _ => None,
        })
        .ok_or("the input's channel count is unknown (scale/bias become per-channel)")?;
    if groups <= 0 || channels % groups != 0 {
        return Err(format!(
            "{channels} channels do not split into {groups} groups"
        ));
    }
    let per = (channels / groups) as usize;
    for (slot, what) in [(1, "scale"), (2, "bias")] {
        let v = g
            .input(o, slot)
            .ok_or(format!("input '{what}' is missing"))?;
        let t = g
            .const_of(v)
            .filter(|_| !g.is_input(v))
            .and_then(|c| c.to_tensor().ok())
            .ok_or(format!(
                "input '{what}' is not a constant (it becomes per-channel)"
            ))?;
        let vals = t
            .to_f64_vec()
            .ok_or(format!("input '{what}' is not numeric"))?;
        if vals.len() != groups as usize {
            return Err(format!(
                "input '{what}' has {} values for {groups} groups",
                vals.len()
            ));
        }
        let wide: Vec<f64> = vals
            .iter()
            .flat_map(|x| std::iter::repeat_n(*x, per))
            .collect();
        let t = Tensor::from_f64(t.dtype(), &[wide.len()], &wide)?;
        let base = format!("{}.per_channel", g.value(v).name);
        let c = add_const(cx, g, &base, &t)?;
        g.set_input(o, slot, Some(c));
        drop_if_unused(g, v);
    }
    Ok(o)
}

/// Pad-11 takes pads (int64) and the constant value (data type) as inputs.
fn pad_11(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let pads = ints_attr(g, o, "pads")?.ok_or("attribute 'pads' is missing")?;
    remove_attr(g, o, "pads");
    let value = match remove_attr(g, o, "value") {
        None => 0.0,
        Some(AttrValue::Float(v)) => v,
        Some(_) => return Err("attribute 'value' is not a float".into()),
    };
    let base = base_of(g, o);
    let p = add_const(cx, g, &format!("{base}.pads"), &i64s(&pads))?;
    g.set_input(o, 1, Some(p));
    if value != 0.0 {
        let dtype = dtype_at(g, o).ok_or(
            "the input's element type is unknown (the pad value becomes an input of that type)",
        )?;
        let c = add_const(
            cx,
            g,
            &format!("{base}.value"),
            &float_scalar(dtype, value)?,
        )?;
        g.set_input(o, 2, Some(c));
    }
    Ok(o)
}

/// Reduce*, Squeeze, Unsqueeze: `axes` attribute → optional int64 input 1.
fn axes_to_input(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    ints_attr_to_input(cx, g, o, "axes", 1)?;
    Ok(o)
}

/// Resize-10 → 11: inputs (X, scales) become (X, roi, scales); opset 10 sampled at
/// `x_resized / scale` (asymmetric) and, for nearest, took the floor, which is exact when no
/// axis shrinks (ONNX Runtime rounded up when downsampling).
fn resize_11(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let mode = match g.op(o).attr("mode") {
        Some(AttrValue::String(s)) => s.clone(),
        _ => b"nearest".to_vec(),
    };
    let scales = g.input(o, 1).ok_or("input 'scales' is missing")?;
    if mode == b"nearest" {
        let t = g
            .const_of(scales)
            .filter(|_| !g.is_input(scales))
            .and_then(|c| c.to_tensor().ok())
            .and_then(|t| t.to_f64_vec())
            .ok_or("nearest mode needs constant scales (opset 10 rounded differently when downsampling)")?;
        if t.iter().any(|s| *s < 1.0) {
            return Err(
                "nearest downsampling (a scale below 1) rounded differently before opset 11".into(),
            );
        }
        g.op_mut(o)
            .set_attr("nearest_mode", AttrValue::String(b"floor".to_vec()));
    }
    g.op_mut(o).set_attr(
        "coordinate_transformation_mode",
        AttrValue::String(b"asymmetric".to_vec()),
    );
    let roi = add_const(cx, g, &format!("{}.roi", base_of(g, o)), &f32s(&[]))?;
    g.set_input(o, 1, Some(roi));
    g.set_input(o, 2, Some(scales));
    Ok(o)
}

/// Resize-13 dropped `tf_half_pixel_for_nn` (nearest sampling at `(x + 0.5) / scale`):
/// written as half_pixel with the nearest rounding shifted by one half. Also, a constant empty
/// `scales` next to `sizes` becomes an absent input (13 allows only one of the two).
fn resize_13(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    if let Some(AttrValue::String(s)) = g.op(o).attr("coordinate_transformation_mode") {
        if s == b"tf_half_pixel_for_nn" {
            let nearest = match g.op(o).attr("mode") {
                None => true,
                Some(AttrValue::String(m)) => m == b"nearest",
                Some(_) => false,
            };
            if !nearest {
                return Err("tf_half_pixel_for_nn is only defined for nearest mode".into());
            }
            // round(y) with y = z + 0.5, z = half_pixel coordinate
            let new =
                match g.op(o).attr("nearest_mode") {
                    None => b"ceil".to_vec(), // round_prefer_floor(y) = ceil(z)
                    Some(AttrValue::String(m)) if m == b"round_prefer_floor" => b"ceil".to_vec(),
                    Some(AttrValue::String(m)) if m == b"floor" => b"round_prefer_ceil".to_vec(),
                    _ => return Err(
                        "tf_half_pixel_for_nn with this nearest_mode has no opset-13 equivalent"
                            .into(),
                    ),
                };
            g.op_mut(o).set_attr("nearest_mode", AttrValue::String(new));
            g.op_mut(o).set_attr(
                "coordinate_transformation_mode",
                AttrValue::String(b"half_pixel".to_vec()),
            );
        }
    }
    if let (Some(scales), Some(_)) = (g.input(o, 2), g.input(o, 3)) {
        if g.const_of(scales).is_some_and(|c| c.numel() == 0) && !g.is_input(scales) {
            g.set_input(o, 2, None);
            drop_if_unused(g, scales);
        }
    }
    Ok(o)
}

/// RoiAlign-16 added coordinate_transformation_mode with default half_pixel; the old
/// behaviour is output_half_pixel.
fn roialign_16(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    if g.op(o).attr("coordinate_transformation_mode").is_none() {
        g.op_mut(o).set_attr(
            "coordinate_transformation_mode",
            AttrValue::String(b"output_half_pixel".to_vec()),
        );
    }
    Ok(o)
}

/// Scatter was deprecated at 11 in favour of ScatterElements, which means the same.
fn scatter_11(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    g.op_mut(o).op_type = "ScatterElements".into();
    Ok(o)
}

/// Slice-10 takes starts/ends/axes as inputs.
fn slice_10(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    for (a, slot) in [("starts", 1), ("ends", 2)] {
        if !ints_attr_to_input(cx, g, o, a, slot)? {
            return Err(format!("attribute '{a}' is missing"));
        }
    }
    ints_attr_to_input(cx, g, o, "axes", 3)?;
    Ok(o)
}

/// Softmax/LogSoftmax/Hardmax-13 normalise along one axis; before, the input was coerced to
/// 2-D at `axis` (default 1). Same thing when the axis is the last one; otherwise
/// `Reshape(op(Flatten(x, axis), axis=-1), Shape(x))`, exact for any rank.
fn softmax_13(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let axis = match g.op(o).attr("axis") {
        None => 1,
        Some(AttrValue::Int(a)) => *a,
        Some(_) => return Err("attribute 'axis' is not an integer".into()),
    };
    if let Some(r) = rank_at(g, o) {
        let r = r as i64;
        let norm = if axis < 0 { axis + r } else { axis };
        if norm == r - 1 || r == 0 {
            g.op_mut(o).set_attr("axis", AttrValue::Int(axis));
            return Ok(o);
        }
    }
    let x = g.input(o, 0).ok_or("input is missing")?;
    let y = g.output(o, 0).ok_or("output is missing")?;
    let node = g.op(o).display_name().to_string();
    let xname = g.value(x).name.clone();
    let dtype = g.value(x).dtype();
    let ty2 = dtype.map(|d| ValueType::Tensor {
        dtype: d,
        shape: Some(vec![crate::ir::Dim::Unknown, crate::ir::Dim::Unknown]),
    });
    let (flat, xf) = add_node(
        cx,
        g,
        o,
        "Flatten",
        &format!("{node}.flatten"),
        &[Some(x)],
        (&format!("{xname}.flat"), ty2.clone()),
    )?;
    g.op_mut(flat).set_attr("axis", AttrValue::Int(axis));
    let (_, xs) = add_node(
        cx,
        g,
        o,
        "Shape",
        &format!("{node}.shape"),
        &[Some(x)],
        (
            &format!("{xname}.shape"),
            Some(ValueType::Tensor {
                dtype: DType::I64,
                shape: Some(vec![crate::ir::Dim::Unknown]),
            }),
        ),
    )?;
    // The op now writes a 2-D value; a Reshape writes the original output.
    let yname = g.value(y).name.clone();
    let yf_name = cx.fresh(&format!("{yname}.flat"));
    let yf = g
        .add_value(Value {
            name: yf_name,
            ty: ty2,
            init: None,
            carry: Default::default(),
        })
        .map_err(|e| e.to_string())?;
    let mut op = g.remove_op(o);
    op.set_attr("axis", AttrValue::Int(-1));
    let new = g
        .add_op(op, &[Some(xf)], &[Some(yf)])
        .map_err(|e| e.to_string())?;
    let mut reshape = Op::new("Reshape", &format!("{node}.reshape"));
    reshape.order = g.order_after(new);
    if cx.target >= 14 {
        // a 0 in Shape(x) means an empty axis, not "copy"
        reshape.attrs.push(crate::ir::Attr {
            name: "allowzero".into(),
            value: AttrValue::Int(1),
            carry: Default::default(),
        });
    }
    g.add_op(reshape, &[Some(yf), Some(xs)], &[Some(y)])
        .map_err(|e| e.to_string())?;
    Ok(new)
}

/// Split-13 takes `split` as an optional int64 input.
fn split_13(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    ints_attr_to_input(cx, g, o, "split", 1)?;
    Ok(o)
}

/// Split-18 needs `num_outputs` when `split` is not given (equal parts, as before).
fn split_18(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    if g.input(o, 1).is_none() && g.op(o).attr("num_outputs").is_none() {
        let n = g.op(o).n_outputs as i64;
        g.op_mut(o).set_attr("num_outputs", AttrValue::Int(n));
    }
    Ok(o)
}

/// TopK-10 takes k as an int64 input of shape [1].
fn topk_10(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let k = match remove_attr(g, o, "k") {
        Some(AttrValue::Int(k)) => k,
        _ => return Err("attribute 'k' is missing or not an integer".into()),
    };
    let c = add_const(cx, g, &format!("{}.k", base_of(g, o)), &i64s(&[k]))?;
    g.set_input(o, 1, Some(c));
    Ok(o)
}

/// Upsample-9 takes the scales as a float input.
fn upsample_9(cx: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    let scales = match remove_attr(g, o, "scales") {
        Some(AttrValue::Floats(s)) => s,
        _ => return Err("attribute 'scales' is missing".into()),
    };
    let c = add_const(cx, g, &format!("{}.scales", base_of(g, o)), &f32s(&scales))?;
    g.set_input(o, 1, Some(c));
    Ok(o)
}

/// Upsample was deprecated at 10: Resize-10 has the same inputs and attributes.
fn upsample_10(_: &mut Cx, g: &mut Graph, o: OpId) -> Result<OpId, String> {
    g.op_mut(o).op_type = "Resize".into();
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::dump::dump_model;
    use crate::onnx::proto;
    use crate::passes::testkit::*;
    use std::collections::BTreeMap;

    /// Upgrades to `target`; checks verify(), the declared opset and that outputs match on
    /// `sample`. Returns the before/after dump.
    fn check(mut m: Model, target: i64, sample: &BTreeMap<String, Tensor>) -> String {
        let before = dump_model(&m);
        let out_before = run(&m, sample);
        let r = upgrade(&mut m, target).unwrap();
        assert!(r.from.is_some());
        m.verify().unwrap();
        assert_eq!(m.opset(""), Some(target));
        assert!(m.ir_version.unwrap() >= min_ir_version(target));
        let after = dump_model(&m);
        assert_close(&out_before, &run(&m, sample), 1e-5);
        format!("--- before\n{before}--- after\n{after}")
    }

    fn x4() -> BTreeMap<String, Tensor> {
        sample(&[("x", tensor(1, &[2, 3, 4, 5]))])
    }

    #[test]
    fn table_covers_every_schema_change() {
        let listed: Vec<(String, i64)> = include_str!("../../tests/conformance/opset_changes.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (op, v) = l.split_once(' ').unwrap();
                (op.to_string(), v.parse().unwrap())
            })
            .collect();
        assert!(listed.len() > 200, "change list looks truncated");
        for (op, v) in &listed {
            assert!(change(op, *v).is_some(), "no rule for {op} at opset {v}");
        }
        for c in CHANGES {
            assert!(
                listed.contains(&(c.op.to_string(), c.version)),
                "rule for {} at {} matches no schema change",
                c.op,
                c.version
            );
            if let Rule::Same(why) | Rule::Refuse(why) = c.rule {
                assert!(!why.is_empty());
            }
        }
        let mut seen = HashSet::new();
        for c in CHANGES {
            assert!(
                seen.insert((c.op, c.version)),
                "{} {} listed twice",
                c.op,
                c.version
            );
        }
    }

    #[test]
    fn min_ir_versions() {
        assert_eq!(min_ir_version(11), 6);
        assert_eq!(min_ir_version(13), 7);
        assert_eq!(min_ir_version(18), 8);
        assert_eq!(min_ir_version(21), 10);
    }

    #[test]
    fn squeeze_and_last_axis_softmax() {
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[2, 1, 3]))
            .output("y", 1, Some(&[2, 3]));
        b.node(
            "Squeeze",
            "sq",
            &["x"],
            &["sq"],
            vec![attr_ints("axes", &[1])],
        );
        b.node("Softmax", "sm", &["sq"], &["y"], vec![]);
        let mut m = b.model();
        // the Softmax input's rank comes from its output type
        let s = sample(&[("x", tensor(2, &[2, 1, 3]))]);
        let before = run(&m, &s);
        upgrade(&mut m, 13).unwrap();
        m.verify().unwrap();
        assert_close(&before, &run(&m, &s), 1e-5);
        insta::assert_snapshot!(dump_model(&m));
    }

    #[test]
    fn softmax_on_an_inner_axis_is_wrapped() {
        // axis 1 of a rank-4 input: coerced to [2, 60] before 13.
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[2, 3, 4, 5]))
            .output("y", 1, Some(&[2, 3, 4, 5]))
            .output("z", 1, None);
        b.node("Softmax", "sm", &["x"], &["y"], vec![attr_i("axis", 1)]);
        b.node("Relu", "r", &["x"], &["xr"], vec![]);
        // unknown rank: wrapped as well (exact for any rank)
        b.node(
            "LogSoftmax",
            "lsm",
            &["xr"],
            &["z"],
            vec![attr_i("axis", 2)],
        );
        insta::assert_snapshot!(check(b.model(), 13, &x4()));
    }

    #[test]
    fn axes_split_pad_clip_slice_from_opset_9() {
        // (TopK-1 and the other rewrites are checked against ONNX Runtime by
        // tests/conformance/upgrade_check.py; the execution engine cannot load TopK-1.)
        let mut b = Builder::new(9);
        b.input("x", 1, Some(&[2, 3, 4, 5]));
        for o in ["rs", "rm", "a", "b", "p", "cl", "sl"] {
            b.output(o, 1, None);
        }
        b.node(
            "ReduceSum",
            "rs",
            &["x"],
            &["rs"],
            vec![attr_ints("axes", &[1, 3]), attr_i("keepdims", 0)],
        );
        b.node(
            "ReduceMean",
            "rm",
            &["x"],
            &["rm"],
            vec![attr_ints("axes", &[2])],
        );
        b.node(
            "Split",
            "split",
            &["x"],
            &["a", "b"],
            vec![attr_i("axis", 1), attr_ints("split", &[1, 2])],
        );
        b.node(
            "Pad",
            "pad",
            &["x"],
            &["p"],
            vec![
                attr_ints("pads", &[0, 1, 0, 2, 0, 0, 1, 0]),
                attr_f("value", 1.5),
            ],
        );
        b.node(
            "Clip",
            "clip",
            &["x"],
            &["cl"],
            vec![attr_f("min", -0.3), attr_f("max", 0.4)],
        );
        b.node(
            "Slice",
            "slice",
            &["x"],
            &["sl"],
            vec![
                attr_ints("starts", &[1, 0]),
                attr_ints("ends", &[3, -1]),
                attr_ints("axes", &[1, 3]),
            ],
        );
        insta::assert_snapshot!(check(b.model(), 13, &x4()));
    }

    #[test]
    fn subgraphs_are_upgraded() {
        let mut then_b = Builder::new(11);
        then_b.output("t", 1, None);
        then_b.node(
            "ReduceMean",
            "trm",
            &["x"],
            &["t"],
            vec![attr_ints("axes", &[1])],
        );
        let mut else_b = Builder::new(11);
        else_b.output("e", 1, None);
        else_b.node(
            "ReduceMax",
            "erm",
            &["x"],
            &["e"],
            vec![attr_ints("axes", &[1])],
        );
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[2, 3]))
            .input("c", 9, Some(&[]))
            .output("y", 1, None);
        b.node(
            "If",
            "if",
            &["c"],
            &["y"],
            vec![
                attr_g("then_branch", then_b.graph("then")),
                attr_g("else_branch", else_b.graph("else")),
            ],
        );
        let mut m = b.model();
        let r = upgrade(&mut m, 18).unwrap();
        m.verify().unwrap();
        assert_eq!(r.converted[&("ReduceMean".to_string(), 18)], 1);
        assert_eq!(r.converted[&("ReduceMax".to_string(), 18)], 1);
        let d = dump_model(&m);
        assert!(d.contains("ReduceMean(%x, %t.axes)"), "{d}");
        assert!(d.contains("ReduceMax(%x, %e.axes)"), "{d}");
        for c in [true, false] {
            let s = sample(&[
                ("x", tensor(3, &[2, 3])),
                ("c", Tensor::Bool(ndarray::arr0(c).into_dyn())),
            ]);
            assert_close(&run(&b.model(), &s), &run(&m, &s), 1e-5);
        }
    }

    #[test]
    fn already_at_target_and_bad_targets() {
        let mut b = Builder::new(17);
        b.input("x", 1, Some(&[2])).output("y", 1, None);
        b.node("Relu", "r", &["x"], &["y"], vec![]);
        let mut m = b.model();
        let before = m.clone();
        let mut cx = PassCx::default();
        assert_eq!(
            UpgradeOpset::new(13).run(&mut m, &mut cx).unwrap(),
            Changed::No
        );
        assert_eq!(m, before);
        let e = upgrade(&mut m, 22).unwrap_err().to_string();
        assert!(e.contains("22") && e.contains("7..=21"), "{e}");
        let mut old = Builder::new(6);
        old.input("x", 1, Some(&[2])).output("y", 1, None);
        old.node("Relu", "r", &["x"], &["y"], vec![]);
        let e = upgrade(&mut old.model(), 13).unwrap_err().to_string();
        assert!(e.contains("opset 6"), "{e}");
        // ir_version is raised only as far as needed
        let mut b = Builder::new(17);
        b.ir_version = 9;
        b.input("x", 1, Some(&[2])).output("y", 1, None);
        b.node("Relu", "r", &["x"], &["y"], vec![]);
        let mut m = b.model();
        upgrade(&mut m, 18).unwrap();
        assert_eq!(m.ir_version, Some(9));
        upgrade(&mut m, 21).unwrap();
        assert_eq!(m.ir_version, Some(10));
    }

    #[test]
    fn refusals_name_the_node_and_leave_the_model_alone() {
        // Clip-6 attributes need the element type, unknown here.
        let mut b = Builder::new(9);
        b.input("x", 1, None).output("y", 1, None);
        b.inputs[0].r#type = None;
        b.outputs[0].r#type = None;
        b.node("Clip", "clip1", &["x"], &["y"], vec![attr_f("min", 0.0)]);
        let mut m = b.model();
        let before = m.clone();
        let e = upgrade(&mut m, 13).unwrap_err().to_string();
        assert!(
            e.contains("node 'clip1' (Clip)") && e.contains("element type"),
            "{e}"
        );
        assert_eq!(m, before);
        // Dropout's mask in use.
        let mut b = Builder::new(7);
        b.input("x", 1, Some(&[2]))
            .output("y", 1, None)
            .output("mask", 1, None);
        b.node("Dropout", "drop", &["x"], &["y", "mask"], vec![]);
        let e = upgrade(&mut b.model(), 13).unwrap_err().to_string();
        assert!(
            e.contains("node 'drop' (Dropout)") && e.contains("mask"),
            "{e}"
        );
        // Nearest Resize-10 that shrinks an axis.
        let mut b = Builder::new(10);
        b.input("x", 1, Some(&[1, 1, 4, 4])).output("y", 1, None);
        b.tensor(f32_tensor("sc", &[4], &[1.0, 1.0, 0.5, 0.5]));
        b.node(
            "Resize",
            "rs",
            &["x", "sc"],
            &["y"],
            vec![attr_s("mode", "nearest")],
        );
        let e = upgrade(&mut b.model(), 13).unwrap_err().to_string();
        assert!(
            e.contains("node 'rs' (Resize)") && e.contains("downsampling"),
            "{e}"
        );
    }

    #[test]
    fn local_functions_are_raised_or_refused() {
        let function = |op: &str, attrs: Vec<proto::AttributeProto>| proto::FunctionProto {
            name: Some("F".into()),
            domain: Some("local".into()),
            input: vec!["a".into()],
            output: vec!["b".into()],
            node: vec![proto::NodeProto {
                op_type: Some(op.into()),
                input: vec!["a".into()],
                output: vec!["b".into()],
                attribute: attrs,
                ..Default::default()
            }],
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(11),
            }],
            ..Default::default()
        };
        let model = |f: proto::FunctionProto| {
            let mut b = Builder::new(11);
            b.input("x", 1, Some(&[1, 2])).output("y", 1, None);
            b.node("F", "call", &["x"], &["y"], vec![]);
            let mut p = b.proto();
            p.graph.as_mut().unwrap().node[0].domain = Some("local".into());
            p.opset_import.push(proto::OperatorSetIdProto {
                domain: Some("local".into()),
                version: Some(1),
            });
            p.functions.push(f);
            decode(&p)
        };
        let mut m = model(function("Relu", vec![]));
        let r = upgrade(&mut m, 13).unwrap();
        assert_eq!(r.functions, vec!["local.F".to_string()]);
        let f = &crate::onnx::local_functions(&m)[0];
        assert_eq!(f.opsets[0].version, 13);
        let mut m = model(function("Squeeze", vec![attr_ints("axes", &[0])]));
        let e = upgrade(&mut m, 13).unwrap_err().to_string();
        assert!(
            e.contains("local function 'local.F'") && e.contains("(Squeeze)"),
            "{e}"
        );
        assert_eq!(m.opset(""), Some(11));
    }

    #[test]
    fn ppocr_cls_to_13_keeps_outputs() {
        use crate::data::{load, InputSpec};
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ppocr_cls");
        let m = crate::onnx::read_model(&root.join("model.onnx")).unwrap();
        let ds = load(
            &root.join("eval.npz"),
            &[InputSpec::new(
                "x",
                DType::F32,
                Some(vec![Some(1), Some(3), None, None]),
            )],
        )
        .unwrap();
        let mut up = m.clone();
        let r = upgrade(&mut up, 13).unwrap();
        up.verify().unwrap();
        assert_eq!(r.from, Some(11));
        assert_eq!(r.converted[&("Softmax".to_string(), 13)], 1);
        for s in ds.read_all().unwrap().iter().take(2) {
            assert_close(&run(&m, s), &run(&up, s), 1e-5);
        }
    }
}
