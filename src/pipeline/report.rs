//! `qrange quantize --report FILE`: gathers what the run learned (calibration statistics,
//! chosen ranges and methods, the plan, sizes, validation) into a [`ReportInput`] and
//! writes the page atomically.

use super::{qtype_text, Args, Prepared, Summary};
use crate::calib::{Method, MethodOptions, TensorStats};
use crate::quant::params::QType;
use crate::quant::plan::{op_key, Decision, OpState, Plan};
use crate::report::{OutputRow, PrecisionRow, ReportInput, TensorRow};
use anyhow::anyhow;
use std::collections::BTreeMap;
use std::path::Path;

/// The grid a calibrated value is quantized to (the decision that reads its range).
fn calibrated_qtype(plan: &Plan, v: &str) -> Option<QType> {
    plan.values.iter().find_map(|(n, d)| match d {
        Decision::Activation {
            qtype,
            share_with: None,
            range_from,
        } if n == v || range_from.as_deref() == Some(v) => Some(*qtype),
        _ => None,
    })
}

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

/// Precision of every op of the prepared model, in graph order.
fn precision_rows(p: &Prepared) -> Vec<PrecisionRow> {
    let g = &p.model.graph;
    let Ok(order) = g.topo_order() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for o in order {
        let key = op_key(g, o);
        let Some(state) = p.plan.ops.get(&key) else {
            continue;
        };
        let op = g.op(o);
        let decision = |v: crate::ir::ValueId| p.plan.values.get(&g.value(v).name);
        let (activation, weight, reason) = match state {
            OpState::Quantized { kernel } => {
                let ins = g.inputs_of(o).into_iter().flatten();
                let outs = g.outputs_of(o).into_iter().flatten();
                let act = ins
                    .clone()
                    .chain(outs)
                    .find_map(|v| match decision(v) {
                        Some(Decision::Activation { qtype, .. }) => Some(short_qtype(qtype)),
                        _ => None,
                    })
                    .unwrap_or_else(|| "f32".into());
                let weight = ins.clone().find_map(|v| match decision(v) {
                    Some(Decision::Weight { qtype, axis, .. }) => Some(match axis {
                        Some(a) => format!("{} per-channel (axis {a})", qtype_text(qtype, None)),
                        None => format!("{} per-tensor", qtype_text(qtype, None)),
                    }),
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

/// Builds the report from what `run` has at its end.
pub(super) fn build(
    a: &Args,
    p: &Prepared,
    stats: &BTreeMap<String, TensorStats>,
    chosen: &BTreeMap<String, Method>,
    opts: &MethodOptions,
    s: &Summary,
) -> anyhow::Result<ReportInput> {
    let mut jobs = Vec::new();
    for v in p.plan.calibration_values() {
        if let (Some(st), Some(&range), Some(&method), Some(q)) = (
            stats.get(&v),
            p.plan.ranges.get(&v),
            chosen.get(&v),
            calibrated_qtype(&p.plan, &v),
        ) {
            jobs.push((v, st, range, method, q));
        }
    }
    // Every method runs again per tensor: spread the tensors over the cores, keep the order.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, jobs.len().max(1));
    let per = jobs.len().div_ceil(workers).max(1);
    let tensors = std::thread::scope(|sc| {
        let handles: Vec<_> = jobs
            .chunks(per)
            .map(|chunk| {
                sc.spawn(move || {
                    chunk
                        .iter()
                        .map(|(v, st, range, method, q)| {
                            TensorRow::from_stats(v, st, *range, *method, q, opts)
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
    let target = clap::ValueEnum::to_possible_value(&s.target)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
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
        format!("range method {} (chosen: {methods})", a.method),
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
        layers: Vec::new(),
        precision: precision_rows(p),
        fusion: None,
        notes: s.notes.clone(),
    })
}

/// Renders `input` and writes it to `path` (temporary file + rename).
pub(super) fn write(path: &Path, input: &ReportInput) -> anyhow::Result<()> {
    let html = crate::report::render(input);
    crate::onnx::encode::atomic_write(path, html.as_bytes())
        .map_err(|e| anyhow!("report '{}': {e}", path.display()))
}

/// Fills the fusion section from the lint of the written model.
pub(super) fn add_fusion(input: &mut ReportInput, lint: Option<&crate::lint::FusionReport>) {
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
const LAYER_SAMPLES: usize = 8;

/// Fills the per-layer SQNR section: every value the float and the quantized model share,
/// compared on (at most [`LAYER_SAMPLES`]) evaluation samples.
pub(super) fn add_layers(
    input: &mut ReportInput,
    float: &crate::ir::Model,
    quantized: &crate::ir::Model,
    samples: &crate::data::Dataset,
    budget_mib: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    let n = samples.len().min(LAYER_SAMPLES);
    if n == 0 {
        return Ok(());
    }
    let mut first = samples.clone();
    first.truncate(n);
    let bar = super::super::progress(0, "per-layer SQNR");
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let pt = crate::report::layers::per_tensor(
        float,
        quantized,
        &first,
        budget_mib.saturating_mul(1 << 20),
        |d, t| {
            bar.set_length(t);
            bar.set_position(d);
        },
    )
    .map_err(|e| anyhow!("report: per-layer comparison: {e}"))?;
    bar.finish_and_clear();
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
