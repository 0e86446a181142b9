//! SmoothQuant (`--smooth ALPHA`): before calibration, the per-channel outliers of the
//! activations that LayerNormalizations hand to MatMuls move into those MatMuls' weights
//! ([`crate::quant::smooth`] has the factors), on the prepared model, so that the
//! per-tensor activation grid the plan calibrates next no longer spends its range on a few
//! channels.
//!
//! A group is one LayerNormalization output `X` (float32, normalised over its last axis)
//! and the MatMuls that read it at input 0 with a constant float32 `[K, N]` weight of
//! their own (no other reader). The activations' per-channel maxima come from one float
//! run over the calibration samples (streamed: one maximum per channel is kept); the
//! weight side is the largest absolute value of row `j` over every MatMul of the group.
//! Each weight row `j` is multiplied by `s_j`; the activation side is divided by `s_j`:
//! - folded into the LayerNormalization's scale and bias when the group's MatMuls are
//!   `X`'s only readers and the scale and bias are constants of their own;
//! - otherwise (a transformer's residual `Add` reads `X` too) by a float `Mul` by `1/s`
//!   the MatMuls read instead of `X`, named `<X>.smooth`, with its constant
//!   `<X>.smooth.inv`; the other readers keep `X`.
//!
//! Either way the float model's outputs do not change (up to float rounding) and the
//! written model stays plain Q/DQ. A model without a group is left as it is, with no note
//! in the summary. The smoothed model replaces the prepared one (and the
//! model prepared with the declared dims, when there is one), its plan is built again and
//! its fingerprint recomputed; validation compares against the unsmoothed float model.

use super::error::PipelineError;
use super::materialise::{stream_float_taps, Taps};
use super::prepare::Prepared;
use super::progress::Progress;
use crate::data::SampleSource;
use crate::ir::{ConstTensor, DType, Model, Op, OpId, Tensor, ValueId};
use crate::quant::smooth;
use std::collections::BTreeMap;

/// One smoothable activation: its name, channel count and the MatMuls that take the
/// migration (by op name).
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub value: String,
    pub channels: usize,
    pub matmuls: Vec<String>,
    /// Whether the LayerNormalization's scale and bias take the activation side (else a
    /// `Mul` does).
    pub fold: bool,
}

/// What smoothing did, for the notes.
#[derive(Clone, Debug, PartialEq)]
pub struct Smoothed {
    pub groups: Vec<Group>,
    pub alpha: f32,
}

impl Smoothed {
    /// One line for the summary's notes.
    pub fn note(&self) -> String {
        let mms: usize = self.groups.iter().map(|g| g.matmuls.len()).sum();
        let folded = self.groups.iter().filter(|g| g.fold).count();
        format!(
            "smooth: alpha {} migrated the per-channel ranges of {} LayerNormalization outputs into the weights of {mms} MatMuls ({folded} folded into the normalization, {} through a float Mul beside its other readers)",
            self.alpha,
            self.groups.len(),
            self.groups.len() - folded
        )
    }
}

fn is_f32_const(m: &Model, v: ValueId) -> Option<&ConstTensor> {
    m.graph.const_of(v).filter(|t| t.dtype == DType::F32)
}

fn default_domain(op: &Op) -> bool {
    matches!(op.domain_key(), "" | "ai.onnx")
}

/// The MatMul `o` reads `x` at input 0 with a constant `[channels, N]` float32 weight no
/// other op reads.
fn smoothable_matmul(m: &Model, o: OpId, slot: usize, channels: usize) -> bool {
    let g = &m.graph;
    let op = g.op(o);
    if op.op_type != "MatMul" || !default_domain(op) || slot != 0 {
        return false;
    }
    let Some(w) = g.input(o, 1) else {
        return false;
    };
    is_f32_const(m, w).is_some_and(|t| t.dims.len() == 2 && t.dims[0] as usize == channels)
        && g.consumers(w).len() == 1
        && !g.is_output(w)
}

/// The groups of the main graph of `m`, in op order.
pub fn groups(m: &Model) -> Vec<Group> {
    let g = &m.graph;
    let mut out = Vec::new();
    for o in g.ops() {
        let op = g.op(o);
        if op.op_type != "LayerNormalization" || !default_domain(op) {
            continue;
        }
        let Some(x) = g.output(o, 0) else { continue };
        let Some(dims) = g.value(x).ty.as_ref().and_then(|t| t.known_dims()) else {
            continue;
        };
        let rank = dims.len() as i64;
        let axis = op.attr_int("axis").unwrap_or(-1);
        if rank == 0 || (axis != -1 && axis != rank - 1) || dims[dims.len() - 1] < 1 {
            continue;
        }
        if g.value(x).dtype() != Some(DType::F32) {
            continue;
        }
        let channels = dims[dims.len() - 1] as usize;
        let readers = g.consumers(x);
        let mut matmuls: Vec<(u32, String)> = readers
            .iter()
            .filter(|(r, s)| smoothable_matmul(m, *r, *s, channels))
            .map(|(r, _)| (g.op(*r).order.0, g.op(*r).display_name().to_string()))
            .collect();
        if matmuls.is_empty() {
            continue;
        }
        matmuls.sort();
        let own = |slot: usize| {
            g.input(o, slot).is_some_and(|v| {
                is_f32_const(m, v).is_some_and(|t| t.dims == [channels as i64])
                    && g.consumers(v).len() == 1
            })
        };
        let fold = matmuls.len() == readers.len() && !g.is_output(x) && own(1) && own(2);
        out.push(Group {
            value: g.value(x).name.clone(),
            channels,
            matmuls: matmuls.into_iter().map(|(_, n)| n).collect(),
            fold,
        });
    }
    out
}

/// Per-channel absolute maxima of each group's activation over the calibration samples.
pub fn channel_maxima<S: SampleSource + ?Sized>(
    p: &Prepared,
    groups: &[Group],
    samples: &S,
    progress: &dyn Progress,
) -> Result<BTreeMap<String, Vec<f32>>, PipelineError> {
    let mut acc: BTreeMap<String, Vec<f32>> = groups
        .iter()
        .map(|g| (g.value.clone(), vec![0.0; g.channels]))
        .collect();
    if groups.is_empty() || samples.count() == 0 {
        return Ok(acc);
    }
    let engine = |error: crate::exec::ExecError| PipelineError::Calibration {
        model: p.model_path.clone(),
        error: Box::new(crate::calib::collect::CollectError::Exec(error)),
    };
    let taps = Taps {
        names: acc.keys().cloned().collect(),
        label: "smoothing: channel ranges",
        progress,
    };
    stream_float_taps(&p.model, &p.base_dir, samples, taps, engine, |name, x| {
        if let Some(a) = acc.get_mut(name) {
            smooth::fold_channel_max(a, x);
        }
        Ok(())
    })?;
    Ok(acc)
}

fn f32s(t: &ConstTensor) -> Result<Vec<f32>, String> {
    match t.to_tensor().map_err(|e| e.to_string())? {
        Tensor::F32(a) => Ok(a.iter().copied().collect()),
        _ => Err("not float32".into()),
    }
}

fn set_f32s(m: &mut Model, v: ValueId, vals: &[f32], dims: &[usize]) -> Result<(), String> {
    let tid = m.graph.value(v).init.ok_or("not a constant")?;
    let arr =
        ndarray::ArrayD::from_shape_vec(dims.to_vec(), vals.to_vec()).map_err(|e| e.to_string())?;
    let name = m.graph.tensor(tid).name.clone();
    *m.graph.tensor_mut(tid) = ConstTensor::from_tensor(name, &Tensor::F32(arr));
    Ok(())
}

/// The factors of each group: activation maxima against the largest weight of each row
/// over the group's MatMuls.
pub fn factors(
    m: &Model,
    groups: &[Group],
    maxima: &BTreeMap<String, Vec<f32>>,
    alpha: f32,
) -> Result<Vec<Vec<f32>>, String> {
    let g = &m.graph;
    let by_name: BTreeMap<String, OpId> = g
        .ops()
        .map(|o| (g.op(o).display_name().to_string(), o))
        .collect();
    groups
        .iter()
        .map(|grp| {
            let mut wmax = vec![0.0f32; grp.channels];
            for mm in &grp.matmuls {
                let o = by_name.get(mm).ok_or(format!("no MatMul '{mm}'"))?;
                let w = g
                    .input(*o, 1)
                    .and_then(|v| g.const_of(v))
                    .ok_or("no weight")?;
                let n = w.dims[1] as usize;
                let rows = smooth::row_abs_max(&f32s(w)?, grp.channels, n);
                wmax.iter_mut().zip(rows).for_each(|(a, r)| *a = a.max(r));
            }
            let amax = maxima
                .get(&grp.value)
                .ok_or(format!("no channel ranges for '{}'", grp.value))?;
            Ok(smooth::factors(amax, &wmax, alpha))
        })
        .collect()
}

/// Applies the migration of each group with its factors to `m` (which must hold the
/// groups' values and ops by name).
pub fn apply(m: &mut Model, groups: &[Group], factors: &[Vec<f32>]) -> Result<(), String> {
    for (grp, s) in groups.iter().zip(factors) {
        let x = m
            .graph
            .value_by_name(&grp.value)
            .ok_or(format!("no value '{}'", grp.value))?;
        let by_name: BTreeMap<String, OpId> = m
            .graph
            .ops()
            .map(|o| (m.graph.op(o).display_name().to_string(), o))
            .collect();
        let mut mms = Vec::new();
        for name in &grp.matmuls {
            let o = *by_name.get(name).ok_or(format!("no MatMul '{name}'"))?;
            let w = m.graph.input(o, 1).ok_or("no weight")?;
            let t = m.graph.const_of(w).ok_or("weight not constant")?;
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let mut vals = f32s(t)?;
            smooth::scale_rows(&mut vals, s);
            set_f32s(m, w, &vals, &dims)?;
            mms.push(o);
        }
        if grp.fold {
            let (ln, _) = m.graph.producer(x).ok_or("no producer")?;
            for slot in [1, 2] {
                let v = m.graph.input(ln, slot).ok_or("no scale or bias")?;
                let mut vals = f32s(m.graph.const_of(v).ok_or("not constant")?)?;
                smooth::divide_channels(&mut vals, s);
                set_f32s(m, v, &vals, &[grp.channels])?;
            }
        } else {
            let inv: Vec<f32> = s.iter().map(|f| 1.0 / f).collect();
            let arr = ndarray::ArrayD::from_shape_vec(vec![grp.channels], inv)
                .map_err(|e| e.to_string())?;
            let cname = m.graph.fresh_name(&format!("{}.smooth.inv", grp.value));
            let c = m
                .graph
                .add_const(&cname, ConstTensor::from_tensor(None, &Tensor::F32(arr)))
                .map_err(|e| e.to_string())?;
            let ty = m.graph.value(x).ty.clone();
            let y = m
                .graph
                .add_fresh_value(&format!("{}.smooth", grp.value), ty);
            let yname = m.graph.value(y).name.clone();
            let mut op = Op::new("Mul", &yname);
            if let Some((ln, _)) = m.graph.producer(x) {
                op.order = m.graph.order_after(ln);
            }
            m.graph
                .add_op(op, &[Some(x), Some(c)], &[Some(y)])
                .map_err(|e| e.to_string())?;
            for o in mms {
                m.graph.set_input(o, 0, Some(y));
            }
        }
    }
    Ok(())
}

/// Smooths `p` in place with `alpha` on the calibration samples: the prepared model (and
/// the one with the declared dims), its plan and fingerprint. Returns what it did.
pub fn smooth_prepared<S: SampleSource + ?Sized>(
    p: &mut Prepared,
    alpha: f32,
    samples: &S,
    progress: &dyn Progress,
) -> Result<Smoothed, PipelineError> {
    let groups = groups(&p.model);
    if groups.is_empty() {
        // No LayerNormalization hands a MatMul its output: nothing to migrate, nothing
        // to say (a CNN under the default `--smooth 0.5`).
        return Ok(Smoothed { groups, alpha });
    }
    let maxima = channel_maxima(p, &groups, samples, progress)?;
    let invalid = |what: String| PipelineError::Options(format!("--smooth: {what}"));
    let f = factors(&p.model, &groups, &maxima, alpha).map_err(invalid)?;
    p.rewrite_weights("--smooth", "smoothing", |m| apply(m, &groups, &f))?;
    let done = Smoothed { groups, alpha };
    p.notes.push(done.note());
    Ok(done)
}
