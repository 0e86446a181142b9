//! Mixed precision: which activations get 8 bits, 16 bits or stay float.
//!
//! The unit of precision is an *activation unit*: a quantized value and every value that
//! shares its scale and zero point (data-movement outputs, a folded Relu's output). A
//! unit is named by its root value. Precision choices are edits of the plan
//! ([`apply`]), never of the graph; `passes::insert_qdq` materialises the result.
//!
//! - [`Overrides`]: the overrides file (`--overrides FILE`), hand-written or written by
//!   the search, per node or per tensor.
//! - [`sim`]: one tract model in which every unit's Q/DQ pair is a switchable fake
//!   quantization whose parameters are model inputs, so thousands of configurations run
//!   without rebuilding a model (also what `--method adaptive` compares its range sets on).
//! - [`search`]: sensitivity analysis over that model and the promotion search behind
//!   `--target-sqnr`, `--max-drop` and `--size-budget`.

pub mod search;
pub mod sim;

use crate::ir::{DType, Model};
use crate::quant::codebook::WeightGrid;
use crate::quant::params::{QType, ScaleFold};
use crate::quant::plan::{op_key, Decision, OpState, Plan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Precision of an activation unit, or of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Precision {
    /// The base activation type (8 bits).
    #[serde(rename = "a8")]
    A8,
    /// 16-bit activations (weights stay 8-bit).
    #[serde(rename = "a16")]
    A16,
    /// No quantization: for a tensor, no Q/DQ on its unit; for a node, the node is left
    /// float with its weights.
    #[serde(rename = "float")]
    Float,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::A8 => "a8",
            Precision::A16 => "a16",
            Precision::Float => "float",
        }
    }
}

/// Storage of a weight: the plan's 8-bit grid, int4 per channel, int4 with one scale per
/// block of 128, 64, 32 or 16 values along the reduction axis (MatMul/Gemm weights and
/// embedding tables: [`WeightGrid::Block`]), or a k-means codebook per channel on the
/// 8-bit grid with 4, 3 or 2-bit indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WeightBits {
    #[serde(rename = "w8")]
    W8,
    #[serde(rename = "w4")]
    W4,
    #[serde(rename = "w4b128")]
    W4b128,
    #[serde(rename = "w4b64")]
    W4b64,
    #[serde(rename = "w4b32")]
    W4b32,
    #[serde(rename = "w4b16")]
    W4b16,
    #[serde(rename = "kmeans4")]
    Kmeans4,
    #[serde(rename = "kmeans3")]
    Kmeans3,
    #[serde(rename = "kmeans2")]
    Kmeans2,
}

impl WeightBits {
    pub fn name(self) -> &'static str {
        match self {
            WeightBits::W8 => "w8",
            WeightBits::W4 => "w4",
            WeightBits::W4b128 => "w4b128",
            WeightBits::W4b64 => "w4b64",
            WeightBits::W4b32 => "w4b32",
            WeightBits::W4b16 => "w4b16",
            WeightBits::Kmeans4 => "kmeans4",
            WeightBits::Kmeans3 => "kmeans3",
            WeightBits::Kmeans2 => "kmeans2",
        }
    }

    /// Values per block of a blocked storage.
    pub fn block(self) -> Option<usize> {
        match self {
            WeightBits::W4b128 => Some(128),
            WeightBits::W4b64 => Some(64),
            WeightBits::W4b32 => Some(32),
            WeightBits::W4b16 => Some(16),
            _ => None,
        }
    }

    /// The storage name of a weight decision on `qtype` and `grid` (`w8`, `w4`, `w4b32`,
    /// `kmeans3`, …; `pow2N` and `wN` for grids only `--weight-grid`/`--weight-bits` set).
    pub fn describe(qtype: &QType, grid: WeightGrid) -> String {
        match grid {
            WeightGrid::Uniform => format!("w{}", qtype.dtype.bits().unwrap_or(8)),
            WeightGrid::Block { size } => format!("w{}b{size}", qtype.dtype.bits().unwrap_or(8)),
            WeightGrid::Kmeans { bits } => format!("kmeans{bits}"),
            WeightGrid::Pow2 { bits } => format!("pow2{bits}"),
        }
    }

    /// The grid of a weight planned on `base` (its 8-bit type).
    pub fn grid(self, base: QType) -> (QType, WeightGrid) {
        match self {
            WeightBits::W8 => (base, WeightGrid::Uniform),
            WeightBits::W4 => (narrow_weight(), WeightGrid::Uniform),
            WeightBits::W4b128 | WeightBits::W4b64 | WeightBits::W4b32 | WeightBits::W4b16 => (
                narrow_weight(),
                WeightGrid::Block {
                    size: self.block().unwrap_or(0) as u32,
                },
            ),
            WeightBits::Kmeans4 => (base, WeightGrid::Kmeans { bits: 4 }),
            WeightBits::Kmeans3 => (base, WeightGrid::Kmeans { bits: 3 }),
            WeightBits::Kmeans2 => (base, WeightGrid::Kmeans { bits: 2 }),
        }
    }
}

/// Stores each weight of `storage` as it says (they must be weight decisions of `plan`,
/// still on their 8-bit grid); returns the names that are not quantized weights. A
/// weight moved off 8 bits drops the rounding learned for its 8-bit grid; a blocked
/// weight's bias stays float (its scales are per block, not per output channel).
pub fn apply_weights(plan: &mut Plan, storage: &BTreeMap<String, WeightBits>) -> Vec<String> {
    let mut missing = Vec::new();
    for (w, s) in storage {
        match plan.values.get_mut(w) {
            Some(Decision::Weight { qtype, grid, .. }) => (*qtype, *grid) = s.grid(*qtype),
            _ => {
                missing.push(w.clone());
                continue;
            }
        }
        if *s != WeightBits::W8 {
            plan.rounding.remove(w);
        }
        if s.block().is_some() {
            plan.values
                .retain(|_, d| !matches!(d, Decision::Bias { weight, .. } if weight == w));
        }
    }
    missing
}

/// The 4-bit weight grid: int4 symmetric [-7, 7].
pub fn narrow_weight() -> QType {
    QType::new(DType::I4, true, false).expect("int4")
}

/// Stores the weights in `w4` on 4 bits (they must be weight decisions); returns the
/// names that are not quantized weights.
pub fn apply_w4(plan: &mut Plan, w4: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for w in w4 {
        match plan.values.get_mut(w) {
            Some(Decision::Weight { qtype, .. }) => *qtype = narrow_weight(),
            _ => missing.push(w.clone()),
        }
    }
    missing
}

/// Errors of the overrides file and of precision assignment.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    #[error("overrides name {kind} that the model does not have: {names}")]
    Unknown { kind: &'static str, names: String },
    #[error("{0}")]
    Exec(#[from] crate::exec::ExecError),
    #[error("{0}")]
    Pass(#[from] crate::passes::PassError),
    #[error("{0}")]
    Other(String),
}

/// The overrides file: precision per node (op name) and per tensor (value name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// `qrange-overrides/1`.
    pub format: String,
    /// Per node: `a16` promotes every activation unit the node reads or writes; `float`
    /// leaves the node float, weights included; `a8` is the default.
    #[serde(default)]
    pub nodes: BTreeMap<String, Precision>,
    /// Per tensor: the precision of the tensor's activation unit.
    #[serde(default)]
    pub tensors: BTreeMap<String, Precision>,
    /// Per weight (initializer name): `w4` stores it on 4 bits, `w4b128`/`w4b64`/`w4b32`/
    /// `w4b16` on 4 bits in blocks along the reduction axis (MatMul/Gemm weights,
    /// embedding tables), `kmeans4`/`kmeans3`/`kmeans2` as a k-means codebook per channel,
    /// `w8` (the default) on 8 bits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, WeightBits>,
    /// Why each entry was chosen (written by the search; ignored when read).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
    /// The model is written without the bytes that change nothing computed
    /// (`passes::compact`), as `--size-budget` writes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compact: bool,
}

pub const OVERRIDES_FORMAT: &str = "qrange-overrides/1";

impl Overrides {
    pub fn new() -> Overrides {
        Overrides {
            format: OVERRIDES_FORMAT.to_string(),
            ..Overrides::default()
        }
    }

    /// Reads and checks the format of an overrides file.
    pub fn read(path: &Path) -> Result<Overrides, TuneError> {
        let file = |what: String| TuneError::File {
            path: path.to_path_buf(),
            what,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        let o: Overrides =
            serde_json::from_str(&text).map_err(|e| file(format!("not an overrides file: {e}")))?;
        if o.format != OVERRIDES_FORMAT {
            return Err(file(format!(
                "format '{}' is not '{OVERRIDES_FORMAT}'",
                o.format
            )));
        }
        Ok(o)
    }

    /// The file's bytes (pretty JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TuneError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| TuneError::Other(e.to_string()))?;
        Ok(format!("{text}\n").into_bytes())
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<(), TuneError> {
        crate::fsx::write(path, &self.to_bytes()?).map_err(|e| TuneError::File {
            path: path.to_path_buf(),
            what: e.to_string(),
        })
    }

    /// Weights to store on 4 bits.
    pub fn w4(&self) -> BTreeSet<String> {
        self.weights
            .iter()
            .filter(|(_, b)| **b == WeightBits::W4)
            .map(|(w, _)| w.clone())
            .collect()
    }

    /// Nodes to leave float entirely (they join `--exclude-nodes`).
    pub fn float_nodes(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, p)| **p == Precision::Float)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Checks that every named node and tensor exists in `m`.
    pub fn check_names(&self, m: &Model) -> Result<(), TuneError> {
        let g = &m.graph;
        let keys: BTreeSet<String> = g.ops().map(|o| op_key(g, o)).collect();
        let missing: Vec<&str> = self
            .nodes
            .keys()
            .filter(|n| !keys.contains(*n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(TuneError::Unknown {
                kind: "nodes",
                names: quoted(&missing),
            });
        }
        let missing: Vec<&str> = self
            .tensors
            .keys()
            .filter(|t| g.value_by_name(t).is_none())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(TuneError::Unknown {
                kind: "tensors",
                names: quoted(&missing),
            });
        }
        Ok(())
    }

    /// Precision per unit root from the node and tensor entries (node `float` entries are
    /// handled by excluding the node before the plan is built). Tensor entries win over
    /// node entries. Fails on a tensor that is not quantized.
    pub fn unit_precisions(
        &self,
        m: &Model,
        units: &[Unit],
    ) -> Result<BTreeMap<String, Precision>, TuneError> {
        let g = &m.graph;
        let root_of: BTreeMap<&str, &str> = unit_index(units)
            .into_iter()
            .map(|(v, i)| (v, units[i].root.as_str()))
            .collect();
        let mut out = BTreeMap::new();
        for o in g.ops() {
            let key = op_key(g, o);
            let Some(p) = self.nodes.get(&key) else {
                continue;
            };
            if *p == Precision::Float {
                continue;
            }
            let touched = g
                .inputs_of(o)
                .into_iter()
                .chain(g.outputs_of(o))
                .flatten()
                .filter_map(|v| root_of.get(g.value(v).name.as_str()));
            for r in touched {
                out.insert(r.to_string(), *p);
            }
        }
        let mut unquantized = Vec::new();
        for (t, p) in &self.tensors {
            match root_of.get(t.as_str()) {
                Some(r) => {
                    out.insert(r.to_string(), *p);
                }
                None => unquantized.push(t.as_str()),
            }
        }
        if !unquantized.is_empty() {
            return Err(TuneError::Other(format!(
                "overrides name tensors that are not quantized activations: {}",
                quoted(&unquantized)
            )));
        }
        Ok(out)
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An activation unit: a quantized value and the values sharing its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    /// The value whose parameters the unit uses.
    pub root: String,
    /// The value whose statistics give the range (the root, or a folded Relu's output).
    pub range_key: String,
    /// Root first, then the sharing values in name order.
    pub members: Vec<String>,
    /// Key of the op producing the root, or `input` for a graph input.
    pub producer: String,
    /// Op type producing the root (`input` for a graph input).
    pub producer_type: String,
    /// Elements per sample of the root (0 when unknown).
    pub elements: u64,
    /// The Relu/Clip or Div/Mul folded into the root's quantization (its op key), if any.
    pub folded_op: Option<String>,
    /// The Div/Mul by a constant folded into the root's quantization, if any (its
    /// QuantizeLinear scale is then [`ScaleFold::quantize_scale`] of the unit's scale).
    pub scale_fold: Option<ScaleFold>,
}

/// The activation units of a plan, in topological order of their root's producer.
pub fn units(plan: &Plan, m: &Model) -> Vec<Unit> {
    let g = &m.graph;
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut range_key: BTreeMap<String, String> = BTreeMap::new();
    for (name, d) in &plan.values {
        if let Decision::Activation {
            share_with,
            range_from,
            ..
        } = d
        {
            match share_with {
                None => {
                    members.entry(name.clone()).or_default();
                    range_key.insert(name.clone(), range_from.clone().unwrap_or(name.clone()));
                }
                Some(r) => members.entry(r.clone()).or_default().push(name.clone()),
            }
        }
    }
    let position: BTreeMap<String, usize> = g
        .topo_order()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .flat_map(|(i, o)| {
            g.outputs_of(o)
                .into_iter()
                .flatten()
                .map(move |v| (v, i + 1))
                .collect::<Vec<_>>()
        })
        .map(|(v, i)| (g.value(v).name.clone(), i))
        .collect();
    let mut out: Vec<Unit> = members
        .into_iter()
        // Main-graph values only: the simulation switches main-graph Q/DQ pairs.
        .filter(|(root, _)| range_key.contains_key(root) && g.value_by_name(root).is_some())
        .map(|(root, mut shared)| {
            shared.sort();
            let v = g.value_by_name(&root);
            let (producer, producer_type) = match v.and_then(|v| g.producer(v)) {
                Some((o, _)) => (op_key(g, o), g.op(o).op_type.clone()),
                None => ("input".to_string(), "input".to_string()),
            };
            let elements = v
                .and_then(|v| g.value(v).ty.as_ref().and_then(|t| t.known_dims()))
                .map(|d| d.iter().map(|&x| x.max(1) as u64).product())
                .unwrap_or(0);
            let mut all = vec![root.clone()];
            all.extend(shared);
            let scale_fold = plan.scale_folds.get(&root).copied();
            let folded_op = (range_key[&root] != root)
                .then(|| g.value_by_name(&range_key[&root]))
                .flatten()
                .and_then(|y| g.producer(y))
                .map(|(o, _)| op_key(g, o));
            Unit {
                folded_op,
                scale_fold,
                range_key: range_key[&root].clone(),
                root,
                members: all,
                producer,
                producer_type,
                elements,
            }
        })
        .collect();
    out.sort_by_key(|u| (position.get(&u.root).copied().unwrap_or(0), u.root.clone()));
    out
}

/// The 16-bit type matching an 8-bit activation type (u8 → u16 asymmetric, i8 → i16).
pub fn wide(q: &QType) -> QType {
    let dtype = match q.dtype {
        DType::I8 | DType::I16 => DType::I16,
        _ => DType::U16,
    };
    QType::new(dtype, q.symmetric, false).expect("16-bit integer type")
}

/// Index of the unit each member value belongs to.
fn unit_index(units: &[Unit]) -> BTreeMap<&str, usize> {
    let mut out = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        for v in &u.members {
            out.insert(v.as_str(), i);
        }
    }
    out
}

/// For each weight whose quantization may change with precision (an 8-bit weight: 4-bit
/// and blocked storages stay what they are): the weight's name and the index of the unit
/// its only reader takes as activation input (input 0).
pub fn weight_units(plan: &Plan, m: &Model, units: &[Unit]) -> Vec<(String, usize)> {
    let g = &m.graph;
    let unit_of = unit_index(units);
    let mut out = Vec::new();
    for (name, d) in &plan.values {
        if !matches!(d, Decision::Weight { qtype, .. } if qtype.dtype == DType::I8) {
            continue;
        }
        let Some(w) = g.value_by_name(name) else {
            continue;
        };
        let readers = g.consumers(w);
        let [(o, _)] = readers.as_slice() else {
            continue;
        };
        let Some(x) = g.input(*o, 0) else { continue };
        if let Some(&i) = unit_of.get(g.value(x).name.as_str()) {
            out.push((name.clone(), i));
        }
    }
    out
}

/// Each quantized bias with the index of the unit of its op's activation input, and its
/// weight.
pub fn bias_units(plan: &Plan, units: &[Unit]) -> Vec<(String, usize, String)> {
    let unit_of = unit_index(units);
    plan.values
        .iter()
        .filter_map(|(name, d)| match d {
            Decision::Bias { input, weight } => unit_of
                .get(input.as_str())
                .map(|&i| (name.clone(), i, weight.clone())),
            _ => None,
        })
        .collect()
}

/// Sets each unit's precision in the plan: `A16` widens every member's type, `Float`
/// removes the unit's decisions (un-folding a Relu/Clip or Div/Mul folded into it). Ops left with no
/// quantized activation are marked float with `reason`.
///
/// Weights quantized on a reduced grid (so that u8 × s8 integer kernels cannot saturate)
/// get the full int8 grid when their reader's activation input is no longer 8-bit: that
/// node no longer runs an 8-bit integer kernel. For the same reason their biases stay
/// float (an int32 bias on a 16-bit input scale can saturate).
pub fn apply(
    plan: &mut Plan,
    m: &Model,
    units: &[Unit],
    precisions: &BTreeMap<String, Precision>,
    reason: &str,
) {
    let full = QType::new(DType::I8, true, false).expect("int8");
    for (b, i, _) in bias_units(plan, units) {
        if precisions
            .get(&units[i].root)
            .is_some_and(|p| *p != Precision::A8)
        {
            plan.values.remove(&b);
        }
    }
    for (w, i) in weight_units(plan, m, units) {
        let p = precisions
            .get(&units[i].root)
            .copied()
            .unwrap_or(Precision::A8);
        if p == Precision::A8 {
            continue;
        }
        if let Some(Decision::Weight { qtype, .. }) = plan.values.get_mut(&w) {
            if qtype.dtype == DType::I8 && qtype.qmax < full.qmax {
                *qtype = full;
            }
        }
    }
    for u in units {
        let Some(p) = precisions.get(&u.root) else {
            continue;
        };
        match p {
            Precision::A8 => {}
            Precision::A16 => {
                for v in &u.members {
                    if let Some(Decision::Activation { qtype, .. }) = plan.values.get_mut(v) {
                        *qtype = wide(qtype);
                    }
                }
            }
            Precision::Float => {
                for v in &u.members {
                    plan.values.remove(v);
                }
                plan.ranges.remove(&u.range_key);
                plan.scale_folds.remove(&u.root);
                if u.range_key != u.root {
                    for s in plan.ops.values_mut() {
                        if matches!(s, OpState::Folded { into } if *into == u.producer) {
                            *s = OpState::Float {
                                reason: format!("kept: {reason}"),
                            };
                        }
                    }
                }
            }
        }
    }
    // Ops whose activations all went float.
    let g = &m.graph;
    for o in g.ops() {
        let key = op_key(g, o);
        if !matches!(plan.ops.get(&key), Some(OpState::Quantized { .. })) {
            continue;
        }
        let any = g
            .inputs_of(o)
            .into_iter()
            .chain(g.outputs_of(o))
            .flatten()
            .any(|v| {
                matches!(
                    plan.values.get(&g.value(v).name),
                    Some(Decision::Activation { .. })
                )
            });
        if !any {
            plan.ops.insert(
                key,
                OpState::Float {
                    reason: reason.to_string(),
                },
            );
        }
    }
}

/// Precision of each quantized op after [`apply`]: (activation types, weight types).
pub fn op_precisions(plan: &Plan, m: &Model) -> BTreeMap<String, (String, String)> {
    let g = &m.graph;
    let mut out = BTreeMap::new();
    for o in g.ops() {
        let key = op_key(g, o);
        if !matches!(plan.ops.get(&key), Some(OpState::Quantized { .. })) {
            continue;
        }
        let mut acts = BTreeSet::new();
        let mut weights = BTreeSet::new();
        for v in g.inputs_of(o).into_iter().chain(g.outputs_of(o)).flatten() {
            match plan.values.get(&g.value(v).name) {
                Some(Decision::Activation { qtype, .. }) => {
                    acts.insert(qtype.dtype.to_string());
                }
                Some(Decision::Weight { qtype, .. }) => {
                    weights.insert(qtype.dtype.to_string());
                }
                _ => {}
            }
        }
        let join = |s: BTreeSet<String>| {
            if s.is_empty() {
                "float".to_string()
            } else {
                s.into_iter().collect::<Vec<_>>().join("+")
            }
        };
        out.insert(key, (join(acts), join(weights)));
    }
    out
}
