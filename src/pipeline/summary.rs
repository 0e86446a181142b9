//! The summary of a quantize run: what was quantized, what stayed float and why, ranges,
//! sizes, validation, mixed precision, time per phase and the passes that ran. Plain data
//! (`--json` prints it as is; the command line renders the text form).

use super::materialise::Materialised;
use super::options::QuantizeOptions;
use super::precision::PrecisionSummary;
use super::prepare::Prepared;
use super::ranges::adaptive;
use super::tables::PlannedTables;
use crate::ir::{DType, Model};
use crate::passes::StepLog;
use crate::quant::codebook::WeightGrid;
use crate::quant::embedding::StoredTable;
use crate::quant::params::QType;
use crate::quant::plan::{Decision, OpState, Plan};
use crate::quant::rules::Target;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a quantize run did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub input: String,
    pub output: String,
    /// `static` or `dynamic` (`--mode`).
    pub mode: &'static str,
    pub target: Target,
    pub activation: String,
    pub weight: String,
    pub quantized_ops: usize,
    pub folded_ops: usize,
    pub float_ops: usize,
    pub float_reasons: BTreeMap<String, Vec<String>>,
    /// Embedding tables stored in 4-bit blocks once the Q/DQ are in place
    /// (`--embedding-bits 4`); their lookups count among the quantized ops.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<StoredTable>,
    /// What the target runtime fuses in the written model (`qrange lint`).
    pub fusion: Option<crate::lint::Coverage>,
    pub methods: BTreeMap<String, usize>,
    /// What `--method adaptive` compared and chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<adaptive::Selection>,
    pub size_before: u64,
    pub size_after: u64,
    pub calibration_samples: usize,
    pub eval_samples: usize,
    pub validation: BTreeMap<String, crate::report::Metrics>,
    /// Every weight's storage under `--size-budget` (when the 8-bit model did not fit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_budget: Option<super::budget::Allocation>,
    /// Mixed precision (with --target-sqnr / --max-drop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<PrecisionSummary>,
    /// Each layer's activation precision and weight storage, in graph order (when a goal,
    /// a size budget or an overrides file chose them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerChoice>,
    /// Share of weight parameters stored in 8 bits (uniform codes or 8-bit codebook indices).
    pub weight_8bit_share: f64,
    /// Share of weight parameters stored in 4 bits (uniform codes or 4-bit codebook indices).
    pub weight_4bit_share: f64,
    /// Share of weight parameters by stored bits per parameter (code or codebook index
    /// width), every width present.
    pub weight_bits_share: BTreeMap<u32, f64>,
    /// Weight SQNR in dB over every quantized weight: `10·log10(Σ w² / Σ (w − ŵ)²)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_sqnr_db: Option<f64>,
    pub seconds: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    /// Every step of the pass list, in order: how often it ran, whether it changed the
    /// graph, why it was skipped.
    pub passes: Vec<StepLog>,
}

/// A grid as the summary shows it: `u8 asymmetric [0, 255]`, with ` per-channel` or
/// ` per-tensor` for weights.
pub fn qtype_text(q: &QType, per_channel: Option<bool>) -> String {
    format!(
        "{} {} [{}, {}]{}",
        q.dtype,
        if q.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        q.qmin,
        q.qmax,
        match per_channel {
            Some(true) => " per-channel",
            Some(false) => " per-tensor",
            None => "",
        }
    )
}

/// `", N depthwise Conv weights on [-127, 127]"` when the weights are 7-bit and some are
/// not (depthwise kernels cannot saturate, see `quant::plan`), else nothing.
pub fn full_grid_weights(plan: &Plan, weight: &QType) -> String {
    let n = plan
        .values
        .values()
        .filter(|d| matches!(d, Decision::Weight { qtype, .. } if qtype.dtype == weight.dtype && qtype.qmax > weight.qmax))
        .count();
    if n == 0 {
        String::new()
    } else {
        format!(", {n} depthwise Conv weights on [-127, 127]")
    }
}

/// Shares of weight parameters by the bits each is stored on: the code width of a uniform
/// grid, the index width of a codebook (whose levels are int8); weight decisions over every
/// float constant of 16 or more elements in the prepared model (biases, stored as int32,
/// aside; what stays float counts in the whole and under no width).
pub fn weight_shares(plan: &Plan, m: &Model, tables: &[StoredTable]) -> BTreeMap<u32, f64> {
    let g = &m.graph;
    let (mut by_bits, mut all) = (BTreeMap::<u32, u64>::new(), 0u64);
    for v in g.values() {
        let Some(t) = g.const_of(v) else { continue };
        let n = t.numel() as u64;
        if t.dtype != DType::F32 || n < 16 {
            continue;
        }
        let name = &g.value(v).name;
        if let Some(t) = tables.iter().find(|t| &t.table == name) {
            *by_bits.entry(t.bits).or_default() += n;
            all += n;
            continue;
        }
        match plan.values.get(name) {
            Some(Decision::Bias { .. }) => continue,
            Some(Decision::Weight { qtype, grid, .. }) => {
                let bits = grid
                    .index_bits()
                    .unwrap_or(qtype.dtype.bits().unwrap_or(8) as u32);
                *by_bits.entry(bits).or_default() += n;
            }
            _ => {}
        }
        all += n;
    }
    if all == 0 {
        return BTreeMap::from([(8, 1.0)]);
    }
    by_bits
        .into_iter()
        .map(|(b, n)| (b, n as f64 / all as f64))
        .collect()
}

/// One layer's choice: a node of the main graph that reads a weight (planned, or left
/// float).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerChoice {
    /// Its key ([`crate::quant::plan::op_key`]).
    pub node: String,
    pub op_type: String,
    /// The precision of its quantized activations (inputs and outputs): `a8`, `a16`,
    /// `a8+a16` when they differ, `float` when none is quantized.
    pub activation: String,
    /// Its weight's storage as the overrides file names it (`w8`, `w4`, `w4b32`,
    /// `kmeans3`, …; [`crate::tune::WeightBits::describe`]), or `float`.
    pub weight: String,
}

/// The layers of `m` under `plan`, in graph order: every op reading a planned weight, and
/// every MatMul/Gemm/Conv/ConvTranspose (input 1) or Gather (input 0) reading a float
/// constant left float.
pub fn layer_choices(plan: &Plan, m: &Model) -> Vec<LayerChoice> {
    let g = &m.graph;
    let Ok(order) = g.topo_order() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for o in order {
        let op = g.op(o);
        let decision = |v: crate::ir::ValueId| plan.values.get(&g.value(v).name);
        let ins: Vec<_> = g.inputs_of(o).into_iter().flatten().collect();
        let planned = ins.iter().find_map(|&v| match decision(v) {
            Some(Decision::Weight { qtype, grid, .. }) => {
                Some(crate::tune::WeightBits::describe(qtype, *grid))
            }
            _ => None,
        });
        let slot = match op.op_type.as_str() {
            "MatMul" | "Gemm" | "Conv" | "ConvTranspose" => Some(1),
            "Gather" => Some(0),
            _ => None,
        };
        let float_weight = slot
            .and_then(|s| g.input(o, s))
            .and_then(|v| g.const_of(v))
            .is_some_and(|c| c.dtype == DType::F32);
        let weight = match planned {
            Some(w) => w,
            None if float_weight => "float".to_string(),
            None => continue,
        };
        let mut acts = std::collections::BTreeSet::new();
        for v in ins
            .iter()
            .copied()
            .chain(g.outputs_of(o).into_iter().flatten())
        {
            if let Some(Decision::Activation { qtype, .. }) = decision(v) {
                acts.insert(qtype.dtype.bits().unwrap_or(8));
            }
        }
        let activation = if acts.is_empty() {
            "float".to_string()
        } else {
            acts.iter()
                .map(|b| format!("a{b}"))
                .collect::<Vec<_>>()
                .join("+")
        };
        out.push(LayerChoice {
            node: crate::quant::plan::op_key(g, o),
            op_type: op.op_type.clone(),
            activation,
            weight,
        });
    }
    out
}

/// What [`summarise`] reads.
pub struct Parts<'a> {
    pub o: &'a QuantizeOptions,
    pub p: &'a Prepared,
    pub m: &'a Materialised,
    pub fusion: Option<crate::lint::Coverage>,
    pub selection: Option<adaptive::Selection>,
    pub size_budget: Option<super::budget::Allocation>,
    pub precision: Option<PrecisionSummary>,
    /// Whether a goal, a size budget or an overrides file chose precisions (the summary
    /// then lists every layer's choice).
    pub mixed: bool,
    pub calibration_samples: usize,
    pub eval_samples: usize,
    pub seconds: BTreeMap<String, f64>,
    pub passes: Vec<StepLog>,
}

/// Ops left float, by reason.
fn float_reasons(plan: &Plan) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, s) in &plan.ops {
        if let OpState::Float { reason } = s {
            out.entry(reason.clone()).or_default().push(k.clone());
        }
    }
    out
}

/// Moves the lookups whose tables [`PlannedTables`] stored out of `reasons` (where the plan,
/// or the dynamic rewrite, left them float for `--embedding-bits 4`), and the lookups whose
/// table stayed float after all under their own reason. Returns how many were stored: they
/// count among the quantized ops, not the float ones.
pub fn move_stored_tables(
    reasons: &mut BTreeMap<String, Vec<String>>,
    tables: &PlannedTables,
) -> usize {
    let mut stored = 0;
    for keys in reasons.values_mut() {
        keys.retain(|k| {
            let moved = tables.handled(k);
            stored += usize::from(tables.stored.iter().any(|t| &t.key == k));
            !moved
        });
    }
    reasons.retain(|_, keys| !keys.is_empty());
    for (key, why) in &tables.left_float {
        reasons.entry(why.clone()).or_default().push(key.clone());
    }
    stored
}

/// The summary of a materialised model.
pub fn summarise(parts: Parts) -> Summary {
    let Parts { o, p, m, .. } = parts;
    let plan = &m.plan;
    let (quantized_ops, folded_ops, float_ops) = plan.counts();
    let mut methods: BTreeMap<String, usize> = BTreeMap::new();
    for method in m.chosen.values() {
        *methods.entry(method.name().to_string()).or_default() += 1;
    }
    let mut notes = p.notes.clone();
    notes.extend(m.exec_notes.iter().cloned());
    let weight_bits_share = weight_shares(plan, &p.model, &m.tables.stored);
    let mut float_reasons = float_reasons(plan);
    let stored = move_stored_tables(&mut float_reasons, &m.tables);
    let low_bit = !p.cfg.weight_grid.is_uniform()
        || p.cfg.weight.dtype != DType::I8
        || p.cfg.weight.qmax < 64;
    Summary {
        input: o.common.model.display().to_string(),
        output: o.output.display().to_string(),
        mode: "static",
        target: p.cfg.target,
        activation: qtype_text(&p.cfg.activation, None),
        weight: format!(
            "{}{}{}{}",
            qtype_text(&p.cfg.weight, Some(p.cfg.per_channel)),
            match p.cfg.weight_grid {
                WeightGrid::Uniform => String::new(),
                g => format!(", {} codebook per channel", g.describe()),
            },
            full_grid_weights(plan, &p.cfg.weight),
            if p.cfg.weight_mse && p.cfg.weight_grid.is_uniform() {
                ", mse ranges"
            } else {
                ""
            }
        ),
        quantized_ops: quantized_ops + stored,
        folded_ops,
        float_ops: float_ops - stored,
        float_reasons,
        tables: m.tables.stored.clone(),
        fusion: parts.fusion,
        methods,
        selection: parts.selection,
        size_before: crate::onnx::encoded_size(&p.float),
        size_after: crate::onnx::encoded_size(&m.model),
        calibration_samples: parts.calibration_samples,
        eval_samples: parts.eval_samples,
        validation: m.validation.clone(),
        size_budget: parts.size_budget,
        precision: parts.precision,
        layers: if parts.mixed {
            layer_choices(plan, &p.model)
        } else {
            Vec::new()
        },
        weight_8bit_share: weight_bits_share.get(&8).copied().unwrap_or(0.0),
        weight_4bit_share: weight_bits_share.get(&4).copied().unwrap_or(0.0),
        weight_bits_share,
        // Said for low-bit grids (8-bit uniform weights keep the summary they always had).
        weight_sqnr_db: (m.inserted.weight_noise > 0.0 && low_bit)
            .then(|| 10.0 * (m.inserted.weight_signal / m.inserted.weight_noise).log10()),
        seconds: parts.seconds,
        notes,
        passes: parts.passes,
    }
}
