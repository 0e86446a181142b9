//! The visual report's data (`quantize --report FILE`): what the run learned (calibration
//! statistics, every method's range and the chosen one, each weight's values and the
//! levels it is written on, the plan, sizes, validation, the fusion check, per-layer SQNR) as a [`ReportInput`]; the caller renders and writes it.

use super::error::PipelineError;
use super::prepare::Prepared;
use super::progress::Progress;
use super::ranges::Candidates;
use super::summary::{qtype_text, Summary};
use crate::calib::{Method, MethodOptions, QuantTarget, TensorStats};
use crate::quant::codebook::WeightGrid;
use crate::quant::params::QType;
use crate::quant::plan::{op_key, Decision, OpState, Plan};
use crate::report::weights::Written;
use crate::report::{OutputRow, PrecisionRow, ReportInput, TensorRow, WeightRow};
use std::collections::BTreeMap;
use std::path::Path;

fn short_qtype(q: &QType) -> String {
    format!(
        "{} {}",
        q.dtype,
        if q.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        }
    )
}

/// A weight's storage: its name in the overrides file, then its grid (`w4b32: i4
/// symmetric [-7, 7] in blocks of 32 along the reduction axis, per channel (axis 1)`).
fn weight_text(qtype: &QType, axis: Option<i64>, grid: WeightGrid) -> String {
    let layout = match (grid, axis) {
        (WeightGrid::Block { size }, Some(a)) => {
            format!(
                " in blocks of {size} along axis {}, per channel (axis {a})",
                1 - a
            )
        }
        (_, Some(a)) => format!(" per-channel (axis {a})"),
        (_, None) => " per-tensor".to_string(),
    };
    let codebook = match grid {
        WeightGrid::Kmeans { .. } | WeightGrid::Pow2 { .. } => {
            format!("{} codebook on ", grid.describe())
        }
        _ => String::new(),
    };
    format!(
        "{}: {codebook}{}{layout}",
        crate::tune::WeightBits::describe(qtype, grid),
        qtype_text(qtype, None)
    )
}

/// Precision of every op of the prepared model under `plan`, in graph order.
fn precision_rows(p: &Prepared, plan: &Plan) -> Vec<PrecisionRow> {
    let g = &p.model.graph;
    let Ok(order) = g.topo_order() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for o in order {
        let key = op_key(g, o);
        let Some(state) = plan.ops.get(&key) else {
            continue;
        };
        let op = g.op(o);
        let decision = |v: crate::ir::ValueId| plan.values.get(&g.value(v).name);
        let (activation, weight, reason) = match state {
            OpState::Quantized { kernel } => {
                let ins = g.inputs_of(o).into_iter().flatten();
                let outs = g.outputs_of(o).into_iter().flatten();
                // Every distinct activation type, inputs first (a promoted input next
                // to an 8-bit output shows both).
                let mut acts: Vec<String> = Vec::new();
                for v in ins.clone().chain(outs) {
                    if let Some(Decision::Activation { qtype, .. }) = decision(v) {
                        let t = format!(
                            "a{} ({})",
                            qtype.dtype.bits().unwrap_or(8),
                            short_qtype(qtype)
                        );
                        if !acts.contains(&t) {
                            acts.push(t);
                        }
                    }
                }
                let act = if acts.is_empty() {
                    "f32".to_string()
                } else {
                    acts.join(", ")
                };
                let weight = ins.clone().find_map(|v| match decision(v) {
                    Some(Decision::Weight {
                        qtype, axis, grid, ..
                    }) => Some(weight_text(qtype, *axis, *grid)),
                    _ => None,
                });
                let reason = match kernel {
                    Some(k) => format!("quantized; fuses to {k}"),
                    None => "quantized".to_string(),
                };
                (act, weight, reason)
            }
            OpState::Folded { into } => (
                "folded".to_string(),
                None,
                format!("folded into the quantization of '{into}'"),
            ),
            OpState::Float { reason } => ("f32".to_string(), None, reason.clone()),
        };
        rows.push(PrecisionRow {
            node: key,
            op_type: op.op_type.clone(),
            activation,
            weight,
            reason,
        });
    }
    rows
}

/// What the report is built from: the run's end.
pub struct Sources<'a> {
    pub p: &'a Prepared,
    /// The plan written, and the method of each range.
    pub plan: &'a Plan,
    pub chosen: &'a BTreeMap<String, Method>,
    pub stats: &'a BTreeMap<String, TensorStats>,
    /// Every method's range of the calibrated values (completed here where missing).
    pub candidates: &'a mut Candidates,
    pub opts: &'a MethodOptions,
    /// `--method` as asked.
    pub method: Method,
    /// What materialisation wrote: each weight's scales and codebooks.
    pub written: &'a crate::passes::insert_qdq::Report,
}

/// One row per quantized weight of the main graph or a subgraph, by plan key: its float
/// values in the prepared model and the grid materialisation wrote it on.
fn weight_rows(s: &Sources) -> Vec<WeightRow> {
    let g = &s.p.model.graph;
    let keys = crate::quant::plan::ValueKeys::of(g);
    let mut rows = Vec::new();
    for (key, d) in &s.plan.values {
        let Decision::Weight {
            qtype, axis, grid, ..
        } = d
        else {
            continue;
        };
        let Some(chosen) = s.written.params.get(key) else {
            continue;
        };
        let Some((scope, local)) = keys.locate(key) else {
            continue;
        };
        let sg = keys.scopes.graph(g, scope);
        let tensor = sg
            .value_by_name(local)
            .and_then(|v| sg.const_of(v))
            .and_then(|c| c.to_tensor().ok());
        let Some(crate::ir::Tensor::F32(a)) = tensor else {
            continue;
        };
        let vals: Vec<f32> = a.iter().copied().collect();
        let params: Vec<(f32, i64)> = chosen
            .params
            .iter()
            .map(|p| (p.scale, p.zero_point))
            .collect();
        let per_channel = match (axis, grid.block()) {
            (Some(ax), Some(b)) => format!("blocks of {b} along axis {}", 1 - ax),
            (Some(ax), None) => format!("per channel (axis {ax})"),
            (None, _) => "per tensor".to_string(),
        };
        let codebook = s.written.codebooks.get(key).map(Vec::as_slice);
        let text = match codebook {
            Some(_) => format!(
                "{} on {}, {per_channel}",
                grid.describe(),
                qtype_text(qtype, None)
            ),
            None => format!("{}, {per_channel}", qtype_text(qtype, None)),
        };
        let channel_of = crate::passes::insert_qdq::param_of(a.shape(), *axis, *grid);
        let written = Written {
            qtype,
            params: &params,
            codebook,
            grid: text,
        };
        if let Some(row) = WeightRow::new(key, &vals, &channel_of, &written) {
            rows.push(row);
        }
    }
    rows
}

/// One row per calibrated tensor: statistics, every method's range, the chosen one.
fn tensor_rows(s: &mut Sources) -> Result<Vec<TensorRow>, PipelineError> {
    let mut jobs = Vec::new();
    for v in s.plan.calibration_values() {
        if let (Some(st), Some(&range), Some(&method), Some(q)) = (
            s.stats.get(&v),
            s.plan.ranges.get(&v),
            s.chosen.get(&v),
            s.plan.calibrated_qtype(&v),
        ) {
            jobs.push((v, st, range, method, q));
        }
    }
    let targets: Vec<(String, &TensorStats, QuantTarget)> = jobs
        .iter()
        .map(|(v, st, _, _, q)| (v.clone(), *st, QuantTarget::of(q)))
        .collect();
    let mut ranges = Vec::with_capacity(jobs.len());
    for c in s.candidates.fill(&targets, s.opts) {
        ranges.push(c?.candidates);
    }
    // Histograms and clipped masses: spread the tensors over the cores, keep the order.
    let rows: Vec<_> = jobs.iter().zip(&ranges).collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, rows.len().max(1));
    let per = rows.len().div_ceil(workers).max(1);
    let tensors = std::thread::scope(|sc| {
        let handles: Vec<_> = rows
            .chunks(per)
            .map(|chunk| {
                sc.spawn(move || {
                    chunk
                        .iter()
                        .map(|((v, st, range, method, q), cands)| {
                            TensorRow::from_candidates(v, st, *range, *method, q, cands)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("report worker panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(tensors)
}

/// Builds the report from what the run has at its end.
pub fn build(mut src: Sources, s: &Summary) -> Result<ReportInput, PipelineError> {
    let tensors = tensor_rows(&mut src)?;
    let target = s.target.name();
    let methods = s
        .methods
        .iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut settings = vec![
        format!("target {target}"),
        format!("activations {}", s.activation),
        format!("weights {}", s.weight),
        format!("range method {} (chosen: {methods})", src.method),
        format!(
            "ops: {} quantized, {} folded into their producer, {} left float",
            s.quantized_ops, s.folded_ops, s.float_ops
        ),
        format!("{} calibration samples", s.calibration_samples),
    ];
    if s.eval_samples > 0 {
        settings.push(format!(
            "{} evaluation samples (float and quantized models run in tract)",
            s.eval_samples
        ));
    }
    let title = format!(
        "qrange report: {}",
        Path::new(&s.input)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| s.input.clone())
    );
    Ok(ReportInput {
        title,
        model: s.input.clone(),
        output: s.output.clone(),
        settings,
        size_before: s.size_before,
        size_after: s.size_after,
        accuracy: s
            .validation
            .iter()
            .map(|(n, m)| OutputRow::from_metrics(n, m))
            .collect(),
        tensors,
        weights: weight_rows(&src),
        layers: Vec::new(),
        precision: precision_rows(src.p, src.plan),
        fusion: None,
        notes: s.notes.clone(),
    })
}

/// Fills the fusion section from the lint of the written model.
pub fn add_fusion(input: &mut ReportInput, lint: Option<&crate::lint::FusionReport>) {
    let Some(r) = lint else { return };
    input.fusion = Some(crate::report::FusionSection {
        coverage: r.coverage().line,
        rows: r
            .units
            .iter()
            .map(|u| crate::report::FusionRow {
                node: u.node.clone(),
                op_type: u.op_type.clone(),
                fused: u.verdict.is_integer(),
                detail: u.verdict.detail(),
            })
            .collect(),
    });
}

/// Most evaluation samples the per-layer comparison of the report runs on.
pub const LAYER_SAMPLES: usize = 8;

/// Fills the per-layer SQNR section: every value the float and the quantized model share,
/// compared on (at most [`LAYER_SAMPLES`]) evaluation samples.
pub fn add_layers(
    input: &mut ReportInput,
    float: &crate::ir::Model,
    quantized: &crate::ir::Model,
    samples: &crate::data::Dataset,
    budget_mib: u64,
    progress: &dyn Progress,
) -> Result<(), PipelineError> {
    let n = samples.len().min(LAYER_SAMPLES);
    if n == 0 {
        return Ok(());
    }
    let mut first = samples.clone();
    first.truncate(n);
    progress.begin("per-layer SQNR", 0);
    let pt = crate::report::layers::per_tensor(
        float,
        quantized,
        &first,
        budget_mib.saturating_mul(1 << 20),
        |d, t| progress.position(d, t),
    )
    .map_err(PipelineError::Layers)?;
    progress.end();
    input.layers = pt
        .layers
        .iter()
        .map(|l| crate::report::LayerRow {
            value: l.value.clone(),
            op: l.producer.clone().unwrap_or_else(|| "input".into()),
            op_type: l.op_type.clone().unwrap_or_else(|| "input".into()),
            sqnr_db: l.worst_sqnr_db(),
        })
        .collect();
    input
        .settings
        .push(format!("per-layer SQNR on {n} evaluation samples"));
    Ok(())
}
