//! Empirical bias correction (`--bias-correction`): the mean shift that quantizing a
//! layer's weights adds to its output, measured on the calibration data and subtracted
//! from the layer's float bias before the model is materialised for good.
//!
//! The plan is materialised once on a copy of the prepared model. There, each Conv and
//! Gemm whose weight is dequantized and that has a bias gets a float twin: the same op,
//! reading the same (quantized, dequantized) input and the same bias, with the float
//! weight. One streamed engine run over the calibration samples taps both outputs and
//! keeps per output channel the sums of each, so the shift `E[W_q x] − E[W x]` is measured
//! on the very input the quantized layer sees (its input's own quantization error, and the
//! upstream layers' shifts, are not counted twice). The float bias of each layer in the
//! prepared model is then lowered by its shift; the int32 bias grid (`s_input · s_weight`)
//! does not depend on the bias, so the plan stands. Layers without a bias (and MatMuls,
//! whose bias is a separate Add) are not corrected: the note counts them.

use super::error::PipelineError;
use super::materialise::{stream_float_taps, Taps};
use super::prepare::Prepared;
use super::progress::Progress;
use crate::data::SampleSource;
use crate::ir::{ConstTensor, DType, Model, Op, OpId, Tensor, ValueId};
use crate::quant::plan::Plan;
use std::collections::BTreeMap;

/// One layer to correct: its op name, the tapped outputs (quantized, float twin), the
/// channel layout of its output and its channel count.
#[derive(Clone, Debug)]
struct Layer {
    name: String,
    quantized: String,
    twin: String,
    channels: usize,
    /// Elements per channel run (the product of the dims after the channel axis).
    inner: usize,
}

/// What bias correction did, for the notes and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Corrected {
    /// Per corrected layer (op name): the shift subtracted from each channel's bias.
    pub shifts: BTreeMap<String, Vec<f32>>,
    /// Quantized Conv/Gemm/MatMul layers left alone (no bias of their own).
    pub skipped: usize,
}

impl Corrected {
    /// One line for the summary's notes.
    pub fn note(&self) -> String {
        let largest = self
            .shifts
            .values()
            .flatten()
            .fold(0.0f32, |m, v| m.max(v.abs()));
        format!(
            "bias correction: the mean output shift of {} quantized Conv/Gemm layers (largest {largest:.3e}) measured on the calibration data and subtracted from their biases; {} quantized layers without a bias of their own left as they are",
            self.shifts.len(),
            self.skipped
        )
    }
}

fn by_name(m: &Model) -> BTreeMap<String, OpId> {
    m.graph
        .ops()
        .map(|o| (m.graph.op(o).display_name().to_string(), o))
        .collect()
}

/// Whether `v` is the output of a DequantizeLinear (a quantized weight).
fn dequantized(m: &Model, v: ValueId) -> bool {
    m.graph
        .producer(v)
        .is_some_and(|(p, _)| m.graph.op(p).op_type == "DequantizeLinear")
}

/// Adds the float twin of layer `o` of `q` (float weight from `f`'s op of the same name);
/// returns the layer, or `None` when it is not one to correct.
fn add_twin(q: &mut Model, f: &Model, o: OpId, fo: OpId) -> Option<Layer> {
    let op = q.graph.op(o).clone();
    let (x, w, b, y) = (
        q.graph.input(o, 0)?,
        q.graph.input(o, 1)?,
        q.graph.input(o, 2)?,
        q.graph.output(o, 0)?,
    );
    if !dequantized(q, w) {
        return None;
    }
    let fw = f.graph.const_of(f.graph.input(fo, 1)?)?.clone();
    if fw.dtype != DType::F32 {
        return None;
    }
    let dims = f
        .graph
        .value(f.graph.output(fo, 0)?)
        .ty
        .as_ref()?
        .known_dims()?;
    let axis = if op.op_type == "Conv" {
        1
    } else {
        dims.len().checked_sub(1)?
    };
    let channels = *dims.get(axis)? as usize;
    let inner: usize = dims.iter().skip(axis + 1).map(|&d| d as usize).product();
    let name = op.display_name().to_string();
    let wname = q.graph.fresh_name(&format!("{name}.bias_correction.w"));
    let wv = q.graph.add_const(&wname, fw).ok()?;
    let ty = q.graph.value(y).ty.clone();
    let yt = q
        .graph
        .add_fresh_value(&format!("{name}.bias_correction"), ty);
    let twin_name = q.graph.value(yt).name.clone();
    let mut twin = Op::new(&op.op_type, &twin_name);
    twin.domain = op.domain.clone();
    twin.attrs = op.attrs.clone();
    twin.order = q.graph.order_after(o);
    q.graph
        .add_op(twin, &[Some(x), Some(wv), Some(b)], &[Some(yt)])
        .ok()?;
    Some(Layer {
        name,
        quantized: q.graph.value(y).name.clone(),
        twin: twin_name,
        channels,
        inner: inner.max(1),
    })
}

/// Per-channel sums and counts of one tapped value.
#[derive(Clone, Default)]
struct Sums {
    sum: Vec<f64>,
    count: Vec<u64>,
}

fn fold(s: &mut Sums, x: &[f32], channels: usize, inner: usize) {
    if s.sum.len() != channels {
        s.sum = vec![0.0; channels];
        s.count = vec![0; channels];
    }
    for (i, v) in x.iter().enumerate() {
        let c = (i / inner) % channels;
        if v.is_finite() {
            s.sum[c] += *v as f64;
            s.count[c] += 1;
        }
    }
}

/// Subtracts `shift` from the bias of op `name` in `m`.
fn lower_bias(m: &mut Model, name: &str, shift: &[f32]) -> Result<(), String> {
    let o = *by_name(m).get(name).ok_or(format!("no op '{name}'"))?;
    let b = m.graph.input(o, 2).ok_or(format!("'{name}' has no bias"))?;
    let tid = m
        .graph
        .value(b)
        .init
        .ok_or(format!("the bias of '{name}' is not a constant"))?;
    let t = m.graph.tensor(tid);
    let Tensor::F32(mut a) = t.to_tensor().map_err(|e| e.to_string())? else {
        return Err(format!("the bias of '{name}' is not float32"));
    };
    if a.len() != shift.len() {
        return Err(format!(
            "the bias of '{name}' has {} values for {} channels",
            a.len(),
            shift.len()
        ));
    }
    a.iter_mut().zip(shift).for_each(|(v, s)| *v -= s);
    let tname = t.name.clone();
    *m.graph.tensor_mut(tid) = ConstTensor::from_tensor(tname, &Tensor::F32(a));
    Ok(())
}

/// The shift of every correctable layer of `p.model` quantized by `plan`, measured on
/// `samples`.
pub fn shifts<S: SampleSource + ?Sized>(
    p: &Prepared,
    plan: &Plan,
    samples: &S,
    progress: &dyn Progress,
) -> Result<Corrected, PipelineError> {
    let mut q = p.model.clone();
    crate::passes::insert_qdq::materialize(&mut q, plan).map_err(|error| PipelineError::Pass {
        model: p.model_path.clone(),
        error,
    })?;
    let fnames = by_name(&p.model);
    let mut layers = Vec::new();
    let mut skipped = 0;
    let mut ops: Vec<OpId> = q.graph.ops().collect();
    ops.sort_by_key(|&o| q.graph.op(o).order);
    for o in ops {
        let op = q.graph.op(o);
        let kind = op.op_type.as_str();
        if !matches!(kind, "Conv" | "Gemm" | "MatMul") || !matches!(op.domain_key(), "" | "ai.onnx")
        {
            continue;
        }
        let quantized = q.graph.input(o, 1).is_some_and(|w| dequantized(&q, w));
        let Some(&fo) = fnames.get(op.display_name()) else {
            continue;
        };
        match add_twin(&mut q, &p.model, o, fo) {
            Some(l) => layers.push(l),
            None if quantized => skipped += 1,
            None => {}
        }
    }
    if layers.is_empty() || samples.count() == 0 {
        return Ok(Corrected {
            shifts: BTreeMap::new(),
            skipped,
        });
    }
    let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
    let shape: BTreeMap<String, (usize, usize)> = layers
        .iter()
        .flat_map(|l| {
            [
                (l.quantized.clone(), (l.channels, l.inner)),
                (l.twin.clone(), (l.channels, l.inner)),
            ]
        })
        .collect();
    let engine = |error: crate::exec::ExecError| PipelineError::Calibration {
        model: p.model_path.clone(),
        error: Box::new(crate::calib::collect::CollectError::Exec(error)),
    };
    let taps = Taps {
        names: shape.keys().cloned().collect(),
        label: "bias correction: output shifts",
        progress,
    };
    stream_float_taps(&q, &p.base_dir, samples, taps, engine, |name, x| {
        if let Some(&(c, inner)) = shape.get(name) {
            fold(sums.entry(name.to_string()).or_default(), x, c, inner);
        }
        Ok(())
    })?;
    let mut shifts = BTreeMap::new();
    for l in &layers {
        let (Some(a), Some(b)) = (sums.get(&l.quantized), sums.get(&l.twin)) else {
            continue;
        };
        let shift: Vec<f32> = (0..l.channels)
            .map(|c| {
                let n = a.count[c].min(b.count[c]).max(1) as f64;
                ((a.sum[c] - b.sum[c]) / n) as f32
            })
            .collect();
        shifts.insert(l.name.clone(), shift);
    }
    Ok(Corrected { shifts, skipped })
}

/// Measures the shifts and lowers the biases of `p` (the prepared model and the one with
/// the declared dims) by them. Returns what it did.
pub fn correct_prepared<S: SampleSource + ?Sized>(
    p: &mut Prepared,
    plan: &Plan,
    samples: &S,
    progress: &dyn Progress,
) -> Result<Corrected, PipelineError> {
    let done = shifts(p, plan, samples, progress)?;
    let invalid = |what: String| PipelineError::Options(format!("--bias-correction: {what}"));
    for (name, s) in &done.shifts {
        lower_bias(&mut p.model, name, s).map_err(invalid)?;
    }
    if let Some(general) = p.general.as_mut() {
        if let Ok(gm) = general.model.as_mut() {
            for (name, s) in &done.shifts {
                if let Err(e) = lower_bias(gm, name, s) {
                    general.model = Err(format!(
                        "correcting the biases of the model with its declared dims: {e}"
                    ));
                    break;
                }
            }
        }
    }
    p.notes.push(done.note());
    Ok(done)
}
