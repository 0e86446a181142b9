//! `--mode dynamic`: the `quantize_dynamic` step ([`crate::passes::quantize_dynamic`]) on a
//! copy of the prepared model, instead of calibration, range choice, mixed precision and
//! Q/DQ insertion; then the same validation against the float model in the engine, on the
//! evaluation data (`--eval`, else every `--calib` sample: nothing is calibrated on them).
//! Without data the model is written unvalidated, and the summary says so. The step does
//! not depend on the data: where the data's shapes fixed dims the model declares symbolic,
//! it runs on the model prepared with the declared dims ([`interface::General`]), which is
//! validated and written, so the written model keeps the float model's interface.

use super::error::PipelineError;
use super::materialise::{float_session, run_once, validate, Checks};
use super::prepare::{dump_hook, step_error, Prepared};
use super::summary::{qtype_text, Summary};
use super::{inputs, interface, Finish, Quantized, Run};
use crate::ir::{DType, Model};
use crate::passes::quantize_dynamic::Report;
use crate::passes::{PassCx, Phase};
use crate::quant::embedding::TableBits;
use crate::quant::params::QType;
use crate::quant::rules::Target;
use std::collections::BTreeMap;
use std::time::Instant;

/// Quantizes the prepared model dynamically, validates it and summarises the run.
pub(super) fn quantize_dynamic(
    mut run: Run,
    p: Prepared,
    data: inputs::Loaded,
) -> Result<Finish, PipelineError> {
    let o = run.o;
    let t = Instant::now();
    let mut notes = p.notes.clone();
    // The step does not depend on the data: it runs on the model with the declared dims
    // when the data's shapes fixed some and the engine runs that model.
    let general = p.general.as_ref().map(|g| {
        let runs = g.model.as_ref().map_err(Clone::clone).and_then(|m| {
            if let Some(sample) = &data.first {
                run_once(m, &p.base_dir, sample).map_err(|e| {
                    format!("the engine does not run the model with the declared dims ({e})")
                })?;
            }
            Ok(m)
        });
        (g, runs)
    });
    let declared = match &general {
        Some((g, Ok(_))) => Some(&g.outputs),
        _ => None,
    };
    let mut q = match general {
        Some((_, Ok(m))) => m.clone(),
        Some((g, Err(why))) => {
            notes.push(interface::fixed_note(g, &why));
            p.model.clone()
        }
        None => p.model.clone(),
    };
    let mut cx = PassCx {
        quant: Some(p.cfg.clone()),
        dynamic: true,
        ..PassCx::default()
    };
    let mut hook = dump_hook(&o.dump, run.progress);
    let stopped = run
        .runner
        .run_phase(Phase::Materialise, &mut q, &mut cx, &mut hook)
        .map_err(|e| step_error(&p.model_path, e))?;
    if let Some(after) = stopped {
        return Ok(Finish::Stopped {
            after: after.to_string(),
        });
    }
    let tables = super::tables::store_planned_tables(&mut q, &p.cfg, None)?;
    q.verify().map_err(PipelineError::InvalidQuantized)?;
    if let Some(outputs) = declared {
        interface::declared_outputs(&mut q, outputs);
    }
    run.time("quantize", t);
    let report = cx.dynamic_report.take().unwrap_or_default();
    notes.append(&mut cx.done);
    if let (Some(n), Target::OrtCpu) = (report.quantized.get("Conv"), p.cfg.target) {
        notes.push(format!(
            "{n} Conv written as ConvInteger: ONNX Runtime runs them slower than float (ppocr_cls: 1.95x fp32's latency); --exclude-op-types Conv keeps them float, or use the static mode for convolutional models"
        ));
    }
    let checks = Checks {
        eval: data.eval.as_ref().filter(|_| o.validate),
        labels: data.labels.as_deref(),
        goal: None,
        budget: None,
        output: &o.output,
    };
    let mut validation = BTreeMap::new();
    match checks.eval {
        Some(ev) => {
            let t = Instant::now();
            let fs = float_session(&p, ev)?;
            let (cmp, exec_notes) = validate(&fs, &q, &p, &checks, ev, run.progress)?;
            validation = cmp.outputs;
            notes.extend(exec_notes);
            run.time("validate", t);
        }
        None if o.validate => notes.push(
            "not validated: no data (give --eval DATA, or --calib DATA, to compare with the float model)"
                .to_string(),
        ),
        None => {}
    }
    let eval_samples = checks.eval.map_or(0, |e| e.len());
    let mut s = summary(&run, &p, &q, &report, validation, eval_samples, notes);
    let stored = super::summary::move_stored_tables(&mut s.float_reasons, &tables);
    s.quantized_ops += stored;
    s.float_ops -= stored;
    let all = weight_parameters(&p.model);
    let table_parameters: u64 = tables
        .stored
        .iter()
        .map(|t| (t.shape[0] * t.shape[1]) as u64)
        .sum();
    if all > 0 && table_parameters > 0 {
        let share4 = table_parameters as f64 / all as f64;
        s.weight_4bit_share = share4;
        s.weight_bits_share.insert(4, share4);
    }
    s.tables = tables.stored;
    if !o.drop_pinned_inputs {
        let pinned = o.common.pins.iter().map(|(n, _)| n.clone()).collect();
        s.notes.extend(interface::keep_pinned_inputs(
            &mut q,
            &run.declared,
            &pinned,
        )?);
    }
    s.seconds = std::mem::take(&mut run.times);
    s.passes = run.runner.log().to_vec();
    Ok(Finish::Quantized(Box::new(Quantized {
        model: q,
        summary: s,
        warnings: run.warnings,
        overrides: None,
        sensitivity: None,
        report: None,
        side_files: Vec::new(),
    })))
}

/// Float32 constants of 16 or more elements in `m` (what the weight shares count).
fn weight_parameters(m: &Model) -> u64 {
    let g = &m.graph;
    g.values()
        .filter_map(|v| g.const_of(v))
        .filter(|t| t.dtype == DType::F32 && t.numel() >= 16)
        .map(|t| t.numel() as u64)
        .sum()
}

fn summary(
    run: &Run,
    p: &Prepared,
    q: &Model,
    report: &Report,
    validation: BTreeMap<String, crate::report::Metrics>,
    eval_samples: usize,
    notes: Vec<String>,
) -> Summary {
    let o = run.o;
    let weight = QType::new(DType::I8, true, false).expect("int8");
    let all = weight_parameters(&p.model);
    let share8 = if all == 0 {
        1.0
    } else {
        report.int8_parameters as f64 / all as f64
    };
    let float_ops = report.float.values().map(Vec::len).sum();
    Summary {
        input: o.common.model.display().to_string(),
        output: o.output.display().to_string(),
        mode: "dynamic",
        target: p.cfg.target,
        activation:
            "u8 asymmetric [0, 255], range of each tensor at run time (DynamicQuantizeLinear)"
                .to_string(),
        weight: format!(
            "{}{}; embedding tables {}",
            qtype_text(&weight, Some(p.cfg.per_channel)),
            if p.cfg.weight_mse { ", mse ranges" } else { "" },
            match p.cfg.tables {
                Some(TableBits::Int4) => format!(
                    "int4 in blocks of {}",
                    p.cfg.table_block.unwrap_or(super::tables::DEFAULT_BLOCK)
                ),
                Some(TableBits::Float) => "float".to_string(),
                _ => "int8 per row".to_string(),
            }
        ),
        quantized_ops: report.quantized.values().sum(),
        folded_ops: 0,
        float_ops,
        float_reasons: report.float.clone(),
        tables: Vec::new(),
        fusion: None,
        methods: BTreeMap::new(),
        selection: None,
        size_before: crate::onnx::encoded_size(&p.float),
        size_after: crate::onnx::encoded_size(q),
        calibration_samples: 0,
        eval_samples,
        validation,
        size_budget: None,
        precision: None,
        layers: Vec::new(),
        weight_8bit_share: share8,
        weight_4bit_share: 0.0,
        weight_bits_share: BTreeMap::from([(8, share8)]),
        weight_sqnr_db: None,
        seconds: BTreeMap::new(),
        notes,
        passes: Vec::new(),
    }
}
