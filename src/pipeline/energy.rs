//! Input energy for codebook weights and size budgets: per weight planned with a k-means
//! grid (or every weight, for `--size-budget`), the mean
//! square over the calibration data of the input each weight element multiplies (the
//! diagonal of `XᵀX`, one figure per input channel; every kernel tap of a channel shares
//! it), laid out like the weight, so that k-means puts its levels where they matter
//! ([`crate::quant::codebook`]). Layer inputs are streamed out of the engine sample by
//! sample, never held. Main-graph Conv (input channels on axis 1), MatMul and Gemm without
//! `transA` (input features on the last axis) are covered; other readers, and Conv inputs
//! whose shape is not known, leave their weight unweighted.

use super::error::PipelineError;
use super::materialise::{stream_float_taps, Taps};
use super::progress::Progress;
use crate::data::Dataset;
use crate::ir::{Dim, Model, ValueType};
use crate::quant::codebook::WeightGrid;
use crate::quant::plan::{Decision, Plan};
use std::collections::BTreeMap;
use std::path::Path;

/// How a weight's elements map to its layer input's channels.
struct Reader {
    /// Layer input (tapped value).
    input: String,
    /// Input channels.
    channels: usize,
    /// Values per channel per sample row: the spatial size of a Conv input, 1 for MatMul.
    inner: usize,
    /// Weight element → input channel.
    map: Vec<usize>,
}

pub(super) fn known(ty: &Option<ValueType>) -> Option<Vec<usize>> {
    match ty {
        Some(ValueType::Tensor {
            shape: Some(dims), ..
        }) => dims
            .iter()
            .map(|d| match d {
                Dim::Known(n) if *n >= 0 => Some(*n as usize),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The reader of each k-means weight of `plan` (of every weight when `all`) whose layer
/// input can be weighted and that has no input energy yet.
fn readers(m: &Model, plan: &Plan, all: bool) -> BTreeMap<String, Reader> {
    let g = &m.graph;
    let mut out = BTreeMap::new();
    for (key, d) in &plan.values {
        let Decision::Weight { grid, .. } = d else {
            continue;
        };
        let wanted = all || matches!(grid, WeightGrid::Kmeans { .. });
        if !wanted || plan.importance.contains_key(key) {
            continue;
        }
        let Some(w) = g.value_by_name(key) else {
            continue;
        };
        let readers = g.consumers(w);
        let (Some(c), [(op, 1)]) = (g.const_of(w), readers.as_slice()) else {
            continue;
        };
        let o = g.op(*op);
        let Some(x) = g.input(*op, 0) else { continue };
        let wd: Vec<usize> = c.dims.iter().map(|&n| n as usize).collect();
        let n: usize = wd.iter().product();
        let reader = match (o.op_type.as_str(), wd.len()) {
            ("Conv", r) if r >= 3 => {
                let Some(xs) = known(&g.value(x).ty) else {
                    continue;
                };
                let group = o.attr_int("group").unwrap_or(1).max(1) as usize;
                let (cout, cin_g) = (wd[0], wd[1]);
                let taps: usize = wd[2..].iter().product();
                let per_group = (cout / group).max(1);
                Reader {
                    input: g.value(x).name.clone(),
                    channels: cin_g * group,
                    inner: xs[2..].iter().product::<usize>().max(1),
                    map: (0..n)
                        .map(|i| {
                            let (oc, ic) = (i / (cin_g * taps), (i / taps) % cin_g);
                            (oc / per_group) * cin_g + ic
                        })
                        .collect(),
                }
            }
            ("MatMul", 2) => Reader {
                input: g.value(x).name.clone(),
                channels: wd[0],
                inner: 1,
                map: (0..n).map(|i| i / wd[1]).collect(),
            },
            ("Gemm", 2) if o.attr_int("transA").unwrap_or(0) == 0 => {
                let tb = o.attr_int("transB").unwrap_or(0) != 0;
                Reader {
                    input: g.value(x).name.clone(),
                    channels: if tb { wd[1] } else { wd[0] },
                    inner: 1,
                    map: (0..n)
                        .map(|i| if tb { i % wd[1] } else { i / wd[1] })
                        .collect(),
                }
            }
            _ => continue,
        };
        out.insert(key.clone(), reader);
    }
    out
}

/// Fills `plan.importance` for its k-means weights (every weight when `all`: a size
/// budget compares grids by it) from the calibration samples; weights that have it keep it.
pub fn collect(
    m: &Model,
    base_dir: &Path,
    plan: &mut Plan,
    calib: &Dataset,
    all: bool,
    progress: &dyn Progress,
) -> Result<(), PipelineError> {
    let rs = readers(m, plan, all);
    if rs.is_empty() || calib.is_empty() {
        return Ok(());
    }
    // Per tapped input: channels, inner size, Σ x² per channel, values per channel.
    let mut acc: BTreeMap<String, (usize, usize, Vec<f64>, u64)> = BTreeMap::new();
    for r in rs.values() {
        acc.entry(r.input.clone())
            .or_insert_with(|| (r.channels, r.inner, vec![0.0; r.channels], 0));
    }
    let exec = |error| PipelineError::Exec {
        what: "codebook weights: layer inputs".into(),
        error,
    };
    let taps = acc.keys().cloned().collect();
    let taps = Taps {
        names: taps,
        label: "input energy",
        progress,
    };
    stream_float_taps(m, base_dir, calib, taps, exec, |name, x| {
        let Some((c, inner, sums, count)) = acc.get_mut(name) else {
            return Ok(());
        };
        if !x.len().is_multiple_of(*c * *inner) {
            return Err(format!(
                "layer input '{name}' holds {} values, not rows of {} channels × {}",
                x.len(),
                c,
                inner
            ));
        }
        for (j, &v) in x.iter().enumerate() {
            sums[(j / *inner) % *c] += (v as f64) * (v as f64);
        }
        *count += (x.len() / *c) as u64;
        Ok(())
    })?;
    for (key, r) in rs {
        let (_, _, sums, count) = &acc[&r.input];
        if *count == 0 {
            continue;
        }
        let mean: Vec<f64> = sums.iter().map(|s| s / *count as f64).collect();
        plan.importance
            .insert(key, r.map.iter().map(|&ch| mean[ch]).collect());
    }
    Ok(())
}
