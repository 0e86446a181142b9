//! `--rounding adaround`: learned rounding of the uniform weights of main-graph Conv
//! (1-D and 2-D, grouped and depthwise included, through im2col), MatMul (a constant
//! 2-D weight) and Gemm (without `transA`), on the plan's grids ([`crate::quant::adaround`]).
//!
//! Each layer is fitted on the input the quantized model gives it against the float
//! model's output (asymmetric reconstruction `‖W x_f − W̃ x‖²`): layers are learned in
//! passes by depth (the most learnable layers on a path to its input). A pass
//! materialises the plan as it stands (earlier passes' learned codes in it, activations
//! through their Q/DQ) and streams the calibration samples through the float model and
//! that quantized model side by side; the pass's layers' input rows (Conv patches) of
//! both are paired into three `k × k` moments per group (`E[x xᵀ]`, `E[x dᵀ]`,
//! `E[d dᵀ]`, `d = x_f − x`): at most `rows` rows per layer, spread evenly over the
//! samples and over each sample's rows, so memory is `3k²` per group whatever the data,
//! and the order of the samples and rows is fixed. Each layer then learns its up/down
//! choices on its iteration budget (a progress bar counts iterations) and the choices go
//! into `plan.rounding`; the materialise step writes those codes with the
//! round-to-nearest scales, so the written model is plain Q/DQ. A layer the relaxation
//! does not improve keeps round-to-nearest; the summary says how many, and the output
//! error before and after.

use super::energy::known;
use super::error::PipelineError;
use super::progress::Progress;
use crate::data::{Dataset, SampleSource};
use crate::exec::{Session, SessionOptions};
use crate::ir::{AttrValue, Model};
use crate::passes::insert_qdq::{channel_of, weight_params};
use crate::quant::adaround::{im2col, learn, spread, ConvGeom, Noise, Problem, Schedule};
use crate::quant::codebook::WeightGrid;
use crate::quant::params::QType;
use crate::quant::plan::{Decision, Plan};
use ndarray::{Array2, ArrayD};
use std::collections::BTreeMap;
use std::path::Path;

/// The budget of `--rounding adaround`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Optimisation steps per layer (`--adaround-iters`).
    pub iters: usize,
    /// Input rows (Conv patches) per layer's Gram matrix (`--adaround-rows`).
    pub rows: usize,
    /// At most this many passes over the calibration data, each learning the layers of
    /// consecutive depths on the inputs the model quantized so far gives them
    /// (`--adaround-passes`).
    pub passes: usize,
}

/// What the learned rounding did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Learned {
    /// Layers whose rounding was learned.
    pub layers: usize,
    /// Passes over the calibration data.
    pub passes: usize,
    /// Of those, layers that kept round-to-nearest (no improvement found).
    pub kept_nearest: usize,
    /// Planned uniform weights of layers it cannot learn, with why.
    pub skipped: BTreeMap<String, String>,
    /// Sum over layers of the mean squared output error on the calibration rows, relative
    /// to each layer's mean output square: with round-to-nearest and learned.
    pub nearest_error: f64,
    pub error: f64,
}

/// How a layer's weight elements form its `[rows, k]` matrices.
enum Kind {
    /// MatMul/Gemm: `k` input features, `n` outputs; the weight stored `[k, n]` or `[n, k]`.
    Dense {
        k: usize,
        n: usize,
        kn: bool,
    },
    Conv(ConvGeom),
}

struct Layer {
    key: String,
    /// The op's key.
    node: String,
    input: String,
    kind: Kind,
    weight: ArrayD<f32>,
    qtype: QType,
    axis: Option<i64>,
    mse: bool,
}

impl Layer {
    fn groups(&self) -> usize {
        match &self.kind {
            Kind::Dense { .. } => 1,
            Kind::Conv(g) => g.groups,
        }
    }

    /// Reduction length per group.
    fn k(&self) -> usize {
        match &self.kind {
            Kind::Dense { k, .. } => *k,
            Kind::Conv(g) => g.k(),
        }
    }

    /// Output channels per group.
    fn rows(&self) -> usize {
        match &self.kind {
            Kind::Dense { n, .. } => *n,
            Kind::Conv(g) => self.weight.shape()[0] / g.groups,
        }
    }

    /// Flat weight index of row `o`, column `j` of group `gi`.
    fn index(&self, gi: usize, o: usize, j: usize) -> usize {
        match &self.kind {
            Kind::Dense { k, n, kn } => {
                if *kn {
                    j * n + o
                } else {
                    o * k + j
                }
            }
            Kind::Conv(g) => (gi * self.rows() + o) * g.k() + j,
        }
    }
}

fn ints(o: &crate::ir::Op, name: &str, n: usize, default: i64) -> Vec<i64> {
    o.attr_ints(name)
        .map(<[i64]>::to_vec)
        .unwrap_or_else(|| vec![default; n])
}

/// The geometry of a Conv with weight dims `wd` on input dims `xs`, or why not.
fn conv_geom(o: &crate::ir::Op, wd: &[usize], xs: &[usize]) -> Result<ConvGeom, String> {
    let sp = wd.len() - 2;
    if !(1..=2).contains(&sp) || xs.len() != wd.len() {
        return Err(format!("{sp}-D Conv (1-D and 2-D are learned)"));
    }
    let groups = o.attr_int("group").unwrap_or(1).max(1) as usize;
    let strides = ints(o, "strides", sp, 1);
    let dil = ints(o, "dilations", sp, 1);
    let pads = ints(o, "pads", 2 * sp, 0);
    let auto = match o.attr("auto_pad") {
        Some(AttrValue::String(s)) => String::from_utf8_lossy(s).to_string(),
        _ => "NOTSET".into(),
    };
    let (mut pb, mut out) = (Vec::new(), Vec::new());
    for d in 0..sp {
        let (i, k, s, dl) = (
            xs[2 + d] as i64,
            wd[2 + d] as i64,
            strides[d].max(1),
            dil[d].max(1),
        );
        let span = (k - 1) * dl + 1;
        let (b, o) = match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = (i + s - 1) / s;
                let total = ((o - 1) * s + span - i).max(0);
                let b = if auto == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                };
                (b, o)
            }
            "VALID" => (0, (i - span) / s + 1),
            _ => (pads[d], (i + pads[d] + pads[d + sp] - span) / s + 1),
        };
        if o <= 0 || b < 0 {
            return Err("a Conv without output positions".into());
        }
        pb.push(b as usize);
        out.push(o as usize);
    }
    let two = |v: &[usize], one: usize| if sp == 1 { [one, v[0]] } else { [v[0], v[1]] };
    let su: Vec<usize> = strides.iter().map(|&s| s.max(1) as usize).collect();
    let du: Vec<usize> = dil.iter().map(|&s| s.max(1) as usize).collect();
    let h = if sp == 1 { 1 } else { xs[2] };
    Ok(ConvGeom {
        input: [xs[0], xs[1], h, xs[xs.len() - 1]],
        kernel: two(&wd[2..], 1),
        strides: two(&su, 1),
        dilations: two(&du, 1),
        pads_begin: two(&pb, 0),
        output: two(&out, 1),
        groups,
    })
}

/// The layers of the plan's uniform weights, and the weights left to round-to-nearest.
fn layers(m: &Model, plan: &Plan) -> (Vec<Layer>, BTreeMap<String, String>) {
    let g = &m.graph;
    let (mut out, mut skipped) = (Vec::new(), BTreeMap::new());
    for (key, d) in &plan.values {
        let Decision::Weight {
            qtype,
            axis,
            mse,
            grid: WeightGrid::Uniform,
        } = d
        else {
            continue;
        };
        let Some(w) = g.value_by_name(key) else {
            continue;
        };
        let readers = g.consumers(w);
        let (Some(c), [(op, 1)]) = (g.const_of(w), readers.as_slice()) else {
            continue;
        };
        let o = g.op(*op);
        if !matches!(o.op_type.as_str(), "Conv" | "MatMul" | "Gemm") {
            continue;
        }
        let node = crate::quant::plan::op_key(g, *op);
        let mut skip = |why: String| {
            skipped.insert(key.clone(), format!("node '{node}': {why}"));
        };
        let weight = match c.to_tensor() {
            Ok(crate::ir::Tensor::F32(a)) => a,
            _ => {
                skip("the weight is not float32".into());
                continue;
            }
        };
        let wd: Vec<usize> = weight.shape().to_vec();
        let Some(x) = g.input(*op, 0) else { continue };
        let kind = match (o.op_type.as_str(), wd.len()) {
            ("Conv", _) => {
                let Some(xs) = known(&g.value(x).ty) else {
                    skip("the input's shape is not known".into());
                    continue;
                };
                match conv_geom(o, &wd, &xs) {
                    Ok(geo) => Kind::Conv(geo),
                    Err(why) => {
                        skip(why);
                        continue;
                    }
                }
            }
            ("MatMul", 2) => Kind::Dense {
                k: wd[0],
                n: wd[1],
                kn: true,
            },
            ("Gemm", 2) if o.attr_int("transA").unwrap_or(0) == 0 => {
                let tb = o.attr_int("transB").unwrap_or(0) != 0;
                let (k, n) = if tb { (wd[1], wd[0]) } else { (wd[0], wd[1]) };
                Kind::Dense { k, n, kn: !tb }
            }
            _ => {
                skip(format!("{} with this weight layout", o.op_type));
                continue;
            }
        };
        out.push(Layer {
            key: key.clone(),
            node,
            input: g.value(x).name.clone(),
            kind,
            weight,
            qtype: *qtype,
            axis: *axis,
            mse: *mse,
        });
    }
    (out, skipped)
}

/// Why `o` cannot learn its rounding (one line naming the option), if it cannot.
pub fn check(o: &super::QuantizeOptions) -> Result<(), String> {
    use super::options::{CalibSource, Mode, Rounding, WeightGridKind};
    let Rounding::Adaround(b) = o.rounding else {
        return Ok(());
    };
    if o.mode != Mode::Static {
        return Err("--rounding adaround applies to --mode static".into());
    }
    if o.common.settings.weight_grid != WeightGridKind::Uniform {
        return Err("--rounding adaround rounds uniform weights: it does not combine with --weight-grid kmeans or pow2".into());
    }
    if matches!(o.common.calib, CalibSource::Ranges(_) | CalibSource::None) {
        return Err(
            "--rounding adaround learns on the layers' inputs: give --calib DATA (not --ranges)"
                .into(),
        );
    }
    let p = &o.precision;
    if p.goal.is_some() || p.size_budget_mb.is_some() || p.overrides.is_some() {
        return Err("--rounding adaround learns the rounding on the weights' planned grids: it does not combine with mixed precision (--target-sqnr, --max-drop, --size-budget, --overrides), which changes them".into());
    }
    if b.iters == 0 {
        return Err("--adaround-iters must be at least 1".into());
    }
    if b.rows == 0 {
        return Err("--adaround-rows must be at least 1".into());
    }
    if b.passes == 0 {
        return Err("--adaround-passes must be at least 1".into());
    }
    Ok(())
}

/// The summary's line about the learned rounding.
pub fn note(l: &Learned, b: Budget) -> String {
    let db = |e: f64| -10.0 * e.max(f64::MIN_POSITIVE).log10();
    let mut s = format!(
        "adaround: {} layers learned on the quantized model's inputs in {} passes ({} iterations, up to {} input rows each), {} kept round-to-nearest; output SQNR of the layers on their calibration rows {:.2} dB (nearest {:.2} dB)",
        l.layers,
        l.passes,
        b.iters,
        b.rows,
        l.kept_nearest,
        db(l.error / l.layers.max(1) as f64),
        db(l.nearest_error / l.layers.max(1) as f64),
    );
    if !l.skipped.is_empty() {
        let names: Vec<String> = l
            .skipped
            .iter()
            .map(|(k, why)| format!("'{k}' ({why})"))
            .collect();
        s.push_str(&format!("; rounded to nearest: {}", names.join(", ")));
    }
    s
}

/// One group's moments over its picked rows: `Σ x xᵀ`, `Σ x dᵀ` and `Σ d dᵀ` of the
/// quantized model's input `x` and its noise `d = x_f − x` against the float input, and
/// the row count.
struct Moments {
    gram: Array2<f64>,
    cross: Array2<f64>,
    noise: Array2<f64>,
    n: u64,
}

impl Moments {
    fn new(k: usize) -> Moments {
        Moments {
            gram: Array2::zeros((k, k)),
            cross: Array2::zeros((k, k)),
            noise: Array2::zeros((k, k)),
            n: 0,
        }
    }

    /// Adds the paired rows (`[r, k]` flat) of the float and the quantized model.
    fn add(&mut self, float: &[f32], quant: &[f32], k: usize) -> Result<(), String> {
        let r = quant.len() / k;
        if float.len() != quant.len() {
            return Err(format!(
                "adaround: {} float input values against {} quantized ones",
                float.len(),
                quant.len()
            ));
        }
        if r == 0 {
            return Ok(());
        }
        let x = Array2::from_shape_fn((r, k), |(i, j)| quant[i * k + j] as f64);
        let d = Array2::from_shape_fn((r, k), |(i, j)| {
            float[i * k + j] as f64 - quant[i * k + j] as f64
        });
        use ndarray::linalg::general_mat_mul as gemm;
        gemm(1.0, &x.t(), &x, 1.0, &mut self.gram);
        gemm(1.0, &x.t(), &d, 1.0, &mut self.cross);
        gemm(1.0, &d.t(), &d, 1.0, &mut self.noise);
        self.n += r as u64;
        Ok(())
    }
}

/// The picked rows of one sample's input `x` of layer `l`, per group (`[r, k]` flat).
fn picked_rows(l: &Layer, x: &[f32], per_sample: usize) -> Result<Vec<Vec<f32>>, String> {
    let k = l.k();
    match &l.kind {
        Kind::Dense { .. } => {
            if !x.len().is_multiple_of(k) {
                return Err(format!(
                    "layer input '{}' holds {} values, not rows of {k}",
                    l.input,
                    x.len()
                ));
            }
            let mut rows = Vec::with_capacity(per_sample.min(x.len() / k) * k);
            for r in spread(x.len() / k, per_sample) {
                rows.extend_from_slice(&x[r * k..(r + 1) * k]);
            }
            Ok(vec![rows])
        }
        Kind::Conv(geo) => {
            let want: usize = geo.input.iter().product();
            if x.len() != want {
                return Err(format!(
                    "layer input '{}' holds {} values, not the {want} of its planned shape",
                    l.input,
                    x.len()
                ));
            }
            let picks: Vec<usize> = spread(geo.patches(), per_sample).collect();
            Ok((0..geo.groups)
                .map(|gi| {
                    let mut rows = vec![0f32; picks.len() * k];
                    for (i, &pos) in picks.iter().enumerate() {
                        im2col(x, geo, gi, pos, &mut rows[i * k..(i + 1) * k]);
                    }
                    rows
                })
                .collect())
        }
    }
}

/// Each layer's depth: the most learnable layers on a path from the model's inputs to
/// its input. Layers of one depth do not feed each other.
fn depths(m: &Model, ls: &[Layer]) -> Vec<usize> {
    let g = &m.graph;
    let at: BTreeMap<&str, usize> = ls
        .iter()
        .enumerate()
        .map(|(i, l)| (l.node.as_str(), i))
        .collect();
    let mut depth = vec![0; ls.len()];
    let mut of_value: std::collections::HashMap<crate::ir::ValueId, usize> = Default::default();
    for o in g.topo_order().unwrap_or_default() {
        let mut reads: Vec<crate::ir::ValueId> = g.inputs_of(o).into_iter().flatten().collect();
        for (_, sg) in g.op(o).subgraphs() {
            reads.extend(sg.captures().iter().filter_map(|n| g.value_by_name(n)));
        }
        let d = reads
            .iter()
            .filter_map(|v| of_value.get(v))
            .max()
            .copied()
            .unwrap_or(0);
        let layer = at.get(crate::quant::plan::op_key(g, o).as_str()).copied();
        if let Some(i) = layer {
            depth[i] = d;
        }
        for v in g.outputs_of(o).into_iter().flatten() {
            of_value.insert(v, d + usize::from(layer.is_some()));
        }
    }
    depth
}

/// Learns the rounding of every layer it can and records it in `plan.rounding`.
///
/// Layers are learned in passes by depth: each pass materialises the plan as it stands
/// (the earlier passes' learned codes in it), streams the calibration samples through the
/// float model and that quantized model side by side, pairs each of the pass's layers'
/// float input rows with its quantized ones, and learns those layers. With one pass per
/// depth every layer sees the rounding of all layers before it; with fewer
/// (`budget.passes`), a layer's inputs see layers of its own pass at round-to-nearest.
pub fn learn_rounding(
    m: &Model,
    base_dir: &Path,
    plan: &mut Plan,
    calib: &Dataset,
    budget: Budget,
    progress: &dyn Progress,
) -> Result<Learned, PipelineError> {
    let (ls, skipped) = layers(m, plan);
    let mut learned = Learned {
        skipped,
        ..Learned::default()
    };
    if ls.is_empty() || calib.is_empty() {
        return Ok(learned);
    }
    let depth = depths(m, &ls);
    let levels = depth.iter().max().map_or(1, |d| d + 1);
    let passes = budget.passes.clamp(1, levels);
    learned.passes = passes;
    let schedule = Schedule::with_iters(budget.iters);
    for pass in 0..passes {
        let mine: Vec<&Layer> = ls
            .iter()
            .zip(&depth)
            .filter(|(_, &d)| d * passes / levels == pass)
            .map(|(l, _)| l)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let label = format!("adaround: layer inputs, pass {} of {passes}", pass + 1);
        let moments = stream_pairs(m, base_dir, plan, calib, &mine, budget, &label, progress)?;
        let total = (mine.len() * budget.iters) as u64;
        progress.begin(
            &format!("adaround: learning rounding, pass {} of {passes}", pass + 1),
            total,
        );
        for (li, (l, ms)) in mine.iter().zip(&moments).enumerate() {
            let (up, near, err, kept) = learn_layer(l, ms, &schedule, &mut |g, done| {
                let part = (g * budget.iters + done) / l.groups();
                progress.position((li * budget.iters + part) as u64, total);
            });
            learned.layers += 1;
            learned.nearest_error += near;
            learned.error += err;
            if kept {
                learned.kept_nearest += 1;
            } else {
                plan.rounding.insert(l.key.clone(), up);
            }
        }
        progress.end();
    }
    Ok(learned)
}

/// The moments of `ls`' inputs, per layer and group: every calibration sample through
/// the float model and through `plan` materialised, their picked rows paired.
#[allow(clippy::too_many_arguments)]
fn stream_pairs(
    m: &Model,
    base_dir: &Path,
    plan: &Plan,
    calib: &Dataset,
    ls: &[&Layer],
    budget: Budget,
    label: &str,
    progress: &dyn Progress,
) -> Result<Vec<Vec<Moments>>, PipelineError> {
    let q = super::materialise::materialise_on(m, plan)
        .map_err(|e| PipelineError::Plan(format!("adaround: materialising the plan: {e}")))?;
    // The quantized model's input of each layer: that of its op (same key) there.
    let qops: BTreeMap<String, crate::ir::OpId> = q
        .graph
        .ops()
        .map(|o| (crate::quant::plan::op_key(&q.graph, o), o))
        .collect();
    let mut float_taps: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut quant_taps: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, l) in ls.iter().enumerate() {
        let x = qops.get(&l.node).and_then(|&o| q.graph.input(o, 0));
        let Some(x) = x else {
            return Err(PipelineError::Plan(format!(
                "adaround: node '{}' has no input in the quantized model",
                l.node
            )));
        };
        float_taps.entry(l.input.clone()).or_default().push(i);
        quant_taps
            .entry(q.graph.value(x).name.clone())
            .or_default()
            .push(i);
    }
    let exec = |error| PipelineError::Exec {
        what: "adaround: layer inputs".into(),
        error,
    };
    let first = calib.sample(0)?;
    let session = |model: &Model, taps: &BTreeMap<String, Vec<usize>>| {
        let opts = SessionOptions {
            taps: taps.keys().cloned().collect(),
            stream_taps: true,
            ..SessionOptions::default()
        };
        Session::from_ir(model.clone(), Some(base_dir), &first, &opts).map_err(exec)
    };
    let (fs, qs) = (session(m, &float_taps)?, session(&q, &quant_taps)?);
    let per_sample = budget.rows.div_ceil(calib.len()).max(1);
    let mut moments: Vec<Vec<Moments>> = ls
        .iter()
        .map(|l| (0..l.groups()).map(|_| Moments::new(l.k())).collect())
        .collect();
    progress.begin(label, calib.len() as u64);
    for i in 0..calib.len() {
        let sample = calib.sample(i)?;
        let mut float_rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); ls.len()];
        super::materialise::run_taps(&fs, &sample, exec, |name, x| {
            for &li in float_taps.get(name).map(Vec::as_slice).unwrap_or(&[]) {
                float_rows[li] = picked_rows(ls[li], x, per_sample)?;
            }
            Ok(())
        })?;
        super::materialise::run_taps(&qs, &sample, exec, |name, x| {
            for &li in quant_taps.get(name).map(Vec::as_slice).unwrap_or(&[]) {
                let rows = picked_rows(ls[li], x, per_sample)?;
                let (k, fr) = (ls[li].k(), &float_rows[li]);
                if fr.len() != rows.len() {
                    return Err(format!(
                        "adaround: layer input '{}' was not seen in the float model",
                        ls[li].input
                    ));
                }
                for ((acc, f), r) in moments[li].iter_mut().zip(fr).zip(&rows) {
                    acc.add(f, r, k)?;
                }
            }
            Ok(())
        })?;
        progress.step();
    }
    progress.end();
    Ok(moments)
}

/// One layer's up/down choices (flat, the weight's layout), its relative output errors
/// with round-to-nearest and learned, and whether every group kept round-to-nearest.
fn learn_layer(
    l: &Layer,
    moments: &[Moments],
    s: &Schedule,
    tick: &mut dyn FnMut(usize, usize),
) -> (Vec<bool>, f64, f64, bool) {
    let params = weight_params(&l.weight, &l.qtype, l.axis, l.mse);
    let ch = channel_of(l.weight.shape(), l.axis);
    let flat: Vec<f32> = l.weight.iter().copied().collect();
    let mut up = vec![false; flat.len()];
    let (rows, k) = (l.rows(), l.k());
    let (mut near, mut err, mut signal) = (0f64, 0f64, 0f64);
    let mut kept = true;
    for (gi, mo) in moments.iter().enumerate() {
        let at = |o: usize, j: usize| l.index(gi, o, j);
        let n = mo.n.max(1) as f64;
        let w = Array2::from_shape_fn((rows, k), |(o, j)| flat[at(o, j)]);
        let w64 = w.mapv(f64::from);
        // tr(W M Wᵀ) / rows.
        let energy = |mm: &Array2<f64>| (&w64.dot(mm) * &w64).sum() / rows.max(1) as f64;
        let cross = mo.cross.mapv(|v| v / n);
        let noise = mo.noise.mapv(|v| v / n);
        // The float input's Gram matrix E[x_f x_fᵀ] = H + C + Cᵀ + E[d dᵀ].
        let gram = mo.gram.mapv(|v| v / n);
        signal += energy(&(&gram + &cross + cross.t() + &noise));
        let p = Problem {
            w,
            scale: Array2::from_shape_fn((rows, k), |(o, j)| params[ch(at(o, j))].scale),
            zero_point: Array2::from_shape_fn((rows, k), |(o, j)| {
                params[ch(at(o, j))].zero_point as f32
            }),
            qmin: l.qtype.qmin as f32,
            qmax: l.qtype.qmax as f32,
            gram: gram.mapv(|v| v as f32),
            noise: Some(Noise {
                energy: energy(&noise),
                cross,
            }),
        };
        let r = learn(&p, s, &mut |done| tick(gi, done));
        near += r.nearest_error;
        err += r.error;
        kept &= r.kept_nearest;
        for ((o, j), &u) in r.up.indexed_iter() {
            up[at(o, j)] = u;
        }
    }
    let rel = |e: f64| if signal > 0.0 { e / signal } else { 0.0 };
    (up, rel(near), rel(err), kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_and_one_d_geometry() {
        let mut o = crate::ir::Op::new("Conv", "c");
        o.set_attr("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec()));
        o.set_attr("strides", AttrValue::Ints(vec![2]));
        let g = conv_geom(&o, &[4, 2, 3], &[1, 2, 9]).unwrap();
        assert_eq!(g.input, [1, 2, 1, 9]);
        assert_eq!(g.kernel, [1, 3]);
        assert_eq!(g.output, [1, 5]);
        assert_eq!(g.pads_begin, [0, 1]);
    }
}
