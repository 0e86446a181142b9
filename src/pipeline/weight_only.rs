//! Weight-only mode (`quantize --mode weight-only`): the constant weights of MatMul and Gemm
//! become 4- or 8-bit codes ([`crate::quant::weight_only`]), activations stay float, and no
//! activation is calibrated.
//!
//! What it writes, by target:
//! - blocked weights of MatMul on `ort-cpu`: com.microsoft **MatMulNBits** (`A · dequant(B)ᵀ`,
//!   ONNX Runtime's fast kernel), `B` packed with [`crate::quant::nbits::pack_bits`];
//! - everything else (`generic`, `tensorrt`, Gemm, per-channel weights): a standard
//!   **DequantizeLinear** on the integer weight (opset 21: `block_size` along the reduction
//!   axis, or `axis` = the output channels per channel; int4/uint4 weights packed two per byte),
//!   the model's opset raised to 21.
//!
//! Embedding tables (a `Gather`'s constant float table) are stored on the weights' grid, in
//! blocks along the embedding axis of the weights' size, at most [`TABLE_BLOCK_4`] for 4-bit
//! tables (lookups at fixed indices, such as position tables, int8 per row:
//! [`FIXED_INDEX_TABLES`]), unless `--embedding-bits` or `--embedding-block` say otherwise
//! ([`crate::quant::embedding::store_tables`]; RTN tables for RTN weights, the clipping search
//! for `clip` and GPTQ): com.microsoft GatherBlockQuantized for 4-bit blocked tables on
//! `ort-cpu`, DequantizeLinear before the `Gather` otherwise.
//!
//! A weight qualifies when it is a float32 2-D initializer read by that op alone (not a graph
//! input, output or subgraph capture) and, for Gemm, `transA = 0`; other MatMul/Gemm ops stay
//! float and the summary says why. GPTQ's Hessians come from the float model's inputs to each
//! layer, streamed sample by sample out of the engine (layers that read the same input share
//! one). The written model is checked against the float one on the evaluation data in the
//! engine, whose MatMulNBits and blocked DequantizeLinear are exact ([`crate::exec`]).

use super::error::PipelineError;
use super::materialise::{compare_on, session_of, stream_float_taps, Taps};
use super::options::{CalibSource, QuantizeOptions};
use super::progress::Progress;
use crate::data::Dataset;
use crate::ir::graph::{AttrValue, Op};
use crate::ir::{ConstTensor, Graph, Model, OpId, OpsetImport, Tensor, ValueId};
use crate::onnx;
use crate::quant::embedding::{
    store_tables, FloatTables, StoredTable, TableBits, TableError, TableLayout,
};
use crate::quant::nbits::pack_bits;
use crate::quant::rules::Target;
use crate::quant::weight_only::{
    gptq, quantize_groups, Algo, GptqOptions, Grid, Hessian, Quantized,
};
use ndarray::{Array2, ArrayD, IxDyn};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// How a weight is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    MatMulNBits,
    Dequantize,
}

/// A MatMul or Gemm whose weight is quantized.
#[derive(Clone, Debug)]
struct Layer {
    op: OpId,
    node: String,
    op_type: String,
    weight: ValueId,
    /// The activation input (GPTQ's Hessian comes from its rows).
    input: String,
    /// The stored weight is `[cols, rows]` (`[K, N]`, MatMul or Gemm without transB).
    transposed: bool,
    rows: usize,
    cols: usize,
}

/// Refuses weight-only settings that contradict each other, the target or the data.
pub fn check(o: &QuantizeOptions) -> Result<(), PipelineError> {
    let w = &o.weight_only;
    let bad = |m: String| Err(PipelineError::Options(m));
    if !matches!(w.bits, 4 | 8) {
        return bad(format!("--weight-bits {} must be 4 or 8", w.bits));
    }
    if let Some(b) = w.block_size {
        if b < 16 || !b.is_power_of_two() {
            return bad(format!(
                "--block-size {b} must be a power of two of at least 16 (16, 32, 64, 128)"
            ));
        }
    }
    if let Some(b) = o.common.settings.embedding_block {
        if b < 16 || !b.is_power_of_two() {
            return bad(format!(
                "--embedding-block {b} must be a power of two of at least 16 (16, 32, 64, 128)"
            ));
        }
        if o.common.settings.embedding_bits == Some(TableBits::Float) {
            return bad(
                "--embedding-block sets the blocks of quantized tables: it does not combine with --embedding-bits float".into(),
            );
        }
    }
    if o.common.settings.target == Target::Tensorrt && !w.symmetric {
        return bad("--target tensorrt takes symmetric weights only (zero points must be 0): add --weight-symmetric".into());
    }
    match &o.common.calib {
        CalibSource::Ranges(_) => {
            return bad("--ranges holds activation statistics, which --mode weight-only does not use: give --calib DATA for --weight-algo gptq, else nothing".into())
        }
        CalibSource::None if matches!(w.algo, Algo::Gptq { .. }) => {
            return bad("--weight-algo gptq needs calibration data (each layer's inputs): give --calib DATA".into())
        }
        _ => {}
    }
    if !o.common.pins.is_empty() {
        return bad("--pin is not supported with --mode weight-only".into());
    }
    if o.precision.goal.is_some()
        || o.precision.size_budget_mb.is_some()
        || o.precision.overrides.is_some()
    {
        return bad("--target-sqnr, --max-drop, --size-budget and --overrides choose activation precisions: they do not apply to --mode weight-only".into());
    }
    Ok(())
}

fn op_name(g: &Graph, o: OpId) -> String {
    let op = g.op(o);
    match &op.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => g
            .output(o, 0)
            .map(|v| g.value(v).name.clone())
            .unwrap_or_default(),
    }
}

/// Ops left float, by reason.
type FloatOps = BTreeMap<String, Vec<String>>;

/// The MatMul/Gemm ops whose weight qualifies, and why the others stay float.
fn find_layers(g: &Graph, o: &QuantizeOptions) -> Result<(Vec<Layer>, FloatOps), PipelineError> {
    let s = &o.common.settings;
    let captured = crate::passes::util::captured_by_subgraphs(g);
    let mut layers = Vec::new();
    let mut float: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let order = g.topo_order().map_err(PipelineError::InvalidQuantized)?;
    for id in order {
        let op = g.op(id);
        if !matches!(op.op_type.as_str(), "MatMul" | "Gemm") || op.domain_key() != "" {
            continue;
        }
        let node = op_name(g, id);
        let excluded = s.exclude_nodes.iter().any(|n| n.trim() == node)
            || s.exclude_op_types.iter().any(|t| t.trim() == op.op_type)
            || (!s.op_types.is_empty() && !s.op_types.iter().any(|t| t.trim() == op.op_type));
        let mut skip = |why: &str| float.entry(why.to_string()).or_default().push(node.clone());
        if excluded {
            skip("excluded");
            continue;
        }
        let (Some(a), Some(w)) = (g.input(id, 0), g.input(id, 1)) else {
            skip("missing input");
            continue;
        };
        let Some(c) = g.const_of(w) else {
            skip("no constant weight (two activation inputs)");
            continue;
        };
        let name = &g.value(w).name;
        if c.dtype != crate::ir::DType::F32 || c.dims.len() != 2 {
            skip("weight not a float32 matrix");
            continue;
        }
        if g.consumers(w).len() != 1 || g.is_input(w) || g.is_output(w) || captured.contains(name) {
            skip("weight shared or exposed");
            continue;
        }
        let trans_a = op.attr_int("transA").unwrap_or(0) != 0;
        if op.op_type == "Gemm" && trans_a {
            skip("Gemm with transA");
            continue;
        }
        let trans_b = op.op_type == "Gemm" && op.attr_int("transB").unwrap_or(0) != 0;
        let (d0, d1) = (c.dims[0] as usize, c.dims[1] as usize);
        let (rows, cols) = if trans_b { (d0, d1) } else { (d1, d0) };
        if rows == 0 || cols == 0 {
            skip("empty weight");
            continue;
        }
        layers.push(Layer {
            op: id,
            node,
            op_type: op.op_type.clone(),
            weight: w,
            input: g.value(a).name.clone(),
            transposed: !trans_b,
            rows,
            cols,
        });
    }
    Ok((layers, float))
}

/// GPTQ's Hessian of every distinct layer input, streamed over the calibration samples.
fn hessians(
    m: &Model,
    base_dir: &Path,
    layers: &[Layer],
    calib: &Dataset,
    progress: &dyn Progress,
) -> Result<BTreeMap<String, Hessian>, PipelineError> {
    let mut hs: BTreeMap<String, Hessian> = BTreeMap::new();
    for l in layers {
        hs.entry(l.input.clone())
            .or_insert_with(|| Hessian::new(l.cols));
    }
    let exec = |error| PipelineError::Exec {
        what: "weight-only: layer inputs".into(),
        error,
    };
    let taps = hs.keys().cloned().collect();
    let taps = Taps {
        names: taps,
        label: "collecting layer inputs",
        progress,
    };
    stream_float_taps(m, base_dir, calib, taps, exec, |name, x| {
        let Some(h) = hs.get_mut(name) else {
            return Ok(());
        };
        if !x.len().is_multiple_of(h.k()) {
            return Err(format!(
                "layer input '{name}' holds {} values, not rows of {}",
                x.len(),
                h.k()
            ));
        }
        h.add(x);
        Ok(())
    })?;
    Ok(hs)
}

/// The weight as `[rows, cols]` (output channels × reduction axis).
fn weight_matrix(g: &Graph, l: &Layer) -> Result<Array2<f32>, PipelineError> {
    let name = &g.value(l.weight).name;
    let t = g
        .const_of(l.weight)
        .expect("checked constant")
        .to_tensor()
        .map_err(|e| PipelineError::Options(format!("weight '{name}': {e}")))?;
    let Tensor::F32(a) = t else {
        unreachable!("checked float32")
    };
    if let Some(bad) = a.iter().find(|v| !v.is_finite()) {
        return Err(PipelineError::Options(format!(
            "weight '{name}' (node '{}') holds a non-finite value ({bad}): it cannot be quantized",
            l.node
        )));
    }
    let a = a
        .into_dimensionality::<ndarray::Ix2>()
        .expect("checked 2-D");
    Ok(if l.transposed { a.t().to_owned() } else { a })
}

fn tensor<T>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape of the values")
}

/// Integer codes as the DequantizeLinear input type, laid out `[rows, cols]` or transposed.
fn code_tensor(q: &Quantized, grid: Grid, transposed: bool, vals: &[i32]) -> Tensor {
    let (r, c) = (q.rows, vals.len() / q.rows.max(1));
    let (shape, ordered): (Vec<usize>, Vec<i32>) = if transposed {
        (
            vec![c, r],
            (0..c * r).map(|i| vals[(i % r) * c + i / r]).collect(),
        )
    } else {
        (vec![r, c], vals.to_vec())
    };
    match (grid.bits, grid.symmetric) {
        (4, true) => Tensor::I4(tensor(&shape, ordered.iter().map(|&v| v as i8).collect())),
        (4, false) => Tensor::U4(tensor(&shape, ordered.iter().map(|&v| v as u8).collect())),
        (_, true) => Tensor::I8(tensor(&shape, ordered.iter().map(|&v| v as i8).collect())),
        (_, false) => Tensor::U8(tensor(&shape, ordered.iter().map(|&v| v as u8).collect())),
    }
}

fn float_tensor(q: &Quantized, transposed: bool, vals: &[f32]) -> Tensor {
    let (r, c) = (q.rows, vals.len() / q.rows.max(1));
    Tensor::F32(if transposed {
        tensor(
            &[c, r],
            (0..c * r).map(|i| vals[(i % r) * c + i / r]).collect(),
        )
    } else {
        tensor(&[r, c], vals.to_vec())
    })
}

fn add_const(g: &mut Graph, base: &str, t: &Tensor) -> Result<ValueId, PipelineError> {
    let name = g.fresh_name(base);
    g.add_const(&name, ConstTensor::from_tensor(None, t))
        .map_err(PipelineError::InvalidQuantized)
}

/// Replaces the weight by its codes and a DequantizeLinear.
fn write_dequantize(
    g: &mut Graph,
    l: &Layer,
    q: &Quantized,
    grid: Grid,
    per_channel: bool,
) -> Result<(), PipelineError> {
    let name = g.value(l.weight).name.clone();
    let codes = add_const(
        g,
        &format!("{name}.q"),
        &code_tensor(q, grid, l.transposed, &q.codes),
    )?;
    let (scale, zp, axis) = if per_channel {
        let s = Tensor::F32(tensor(&[q.rows], q.scales.clone()));
        let z = code_tensor(q, grid, false, &q.zero_points);
        let z = match z {
            Tensor::U4(a) => Tensor::U4(a.into_shape_with_order(vec![q.rows]).expect("rows")),
            Tensor::U8(a) => Tensor::U8(a.into_shape_with_order(vec![q.rows]).expect("rows")),
            other => other,
        };
        // The output channels: axis 1 of a [K, N] weight, axis 0 of [N, K].
        (s, z, if l.transposed { 1 } else { 0 })
    } else {
        let s = float_tensor(q, l.transposed, &q.scales);
        let z = code_tensor(q, grid, l.transposed, &q.zero_points);
        (s, z, if l.transposed { 0 } else { 1 })
    };
    let sv = add_const(g, &format!("{name}.scale"), &scale)?;
    let zv = if grid.symmetric {
        None
    } else {
        Some(add_const(g, &format!("{name}.zp"), &zp)?)
    };
    let dq_name = g.fresh_name(&format!("{name}.dq"));
    let dqv = g.add_fresh_value(&dq_name, g.value(l.weight).ty.clone());
    let mut dq = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
    dq.set_attr("axis", AttrValue::Int(axis));
    if !per_channel {
        dq.set_attr("block_size", AttrValue::Int(q.group as i64));
    }
    dq.order = g.order_before(l.op);
    g.add_op(dq, &[Some(codes), Some(sv), zv], &[Some(dqv)])
        .map_err(PipelineError::InvalidQuantized)?;
    g.set_input(l.op, 1, Some(dqv));
    Ok(())
}

/// Replaces a MatMul by com.microsoft MatMulNBits on the packed codes.
fn write_nbits(g: &mut Graph, l: &Layer, q: &Quantized, grid: Grid) -> Result<(), PipelineError> {
    let name = g.value(l.weight).name.clone();
    let bits = grid.bits as usize;
    let (n, k, bs, blocks) = (q.rows, q.cols, q.group, q.groups());
    let blob = bs * bits / 8;
    // Symmetric codes are stored shifted by 2^(bits-1), the operator's default zero point.
    let shift = if grid.symmetric {
        1i32 << (bits - 1)
    } else {
        0
    };
    let mut b = Vec::with_capacity(n * blocks * blob);
    for r in 0..n {
        for blk in 0..blocks {
            let codes: Vec<u8> = (blk * bs..(blk + 1) * bs)
                .map(|c| {
                    if c < k {
                        (q.codes[r * k + c] + shift) as u8
                    } else {
                        0
                    }
                })
                .collect();
            b.extend(pack_bits(&codes, bits));
        }
    }
    let bv = add_const(
        g,
        &format!("{name}.nbits"),
        &Tensor::U8(tensor(&[n, blocks, blob], b)),
    )?;
    let sv = add_const(
        g,
        &format!("{name}.scale"),
        &Tensor::F32(tensor(&[n, blocks], q.scales.clone())),
    )?;
    let zv = if grid.symmetric {
        None
    } else {
        let row = (blocks * bits).div_ceil(8);
        let mut z = Vec::with_capacity(n * row);
        for r in 0..n {
            let zs: Vec<u8> = q.zero_points[r * blocks..(r + 1) * blocks]
                .iter()
                .map(|&v| v as u8)
                .collect();
            let mut packed = pack_bits(&zs, bits);
            packed.resize(row, 0);
            z.extend(packed);
        }
        Some(add_const(
            g,
            &format!("{name}.zp"),
            &Tensor::U8(tensor(&[n, row], z)),
        )?)
    };
    let a = g.input(l.op, 0);
    let y = g.output(l.op, 0);
    let old = g.op(l.op).clone();
    g.remove_op(l.op);
    let mut op = Op::new("MatMulNBits", &l.node);
    op.domain = Some("com.microsoft".into());
    op.order = old.order;
    for (attr, v) in [("K", k), ("N", n), ("bits", bits), ("block_size", bs)] {
        op.set_attr(attr, AttrValue::Int(v as i64));
    }
    g.add_op(op, &[a, Some(bv), Some(sv), zv], &[y])
        .map_err(PipelineError::InvalidQuantized)?;
    Ok(())
}

fn drop_weight(g: &mut Graph, v: ValueId) {
    if g.consumers(v).is_empty() && !g.is_output(v) && !g.is_input(v) {
        g.remove_value(v);
    }
}

/// A quantized layer, as the summary lists it.
#[derive(Clone, Debug, Serialize)]
pub struct WeightOnlyLayer {
    pub node: String,
    pub op_type: String,
    pub weight: String,
    /// `[K, N]`: reduction axis, output channels.
    pub shape: [usize; 2],
    /// `MatMulNBits` or `DequantizeLinear`.
    pub written_as: String,
}

/// What a weight-only run did (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct WeightOnlySummary {
    pub input: String,
    pub output: String,
    pub mode: &'static str,
    pub target: Target,
    pub bits: u32,
    /// `None`: per channel.
    pub block_size: Option<usize>,
    pub symmetric: bool,
    pub algo: String,
    pub layers: Vec<WeightOnlyLayer>,
    /// MatMul/Gemm ops left float, by reason.
    pub float_ops: BTreeMap<String, Vec<String>>,
    /// Weight parameters quantized (the MatMul/Gemm weights).
    pub parameters: usize,
    /// Embedding tables stored in `table_bits` bits.
    pub tables: Vec<StoredTable>,
    /// Embedding tables left float, by reason (all of them with `--embedding-bits float`).
    pub float_tables: BTreeMap<String, Vec<String>>,
    pub size_before: u64,
    pub size_after: u64,
    pub calibration_samples: usize,
    pub eval_samples: usize,
    pub validation: BTreeMap<String, crate::report::Metrics>,
    pub seconds: BTreeMap<String, f64>,
    pub notes: Vec<String>,
}

/// What [`quantize`] leaves the caller to write and print.
pub struct WeightOnlyRun {
    pub model: Model,
    pub summary: WeightOnlySummary,
    pub warnings: Vec<String>,
}

/// Runs the weight-only mode (see the module doc).
pub fn quantize(
    o: &QuantizeOptions,
    progress: &dyn Progress,
) -> Result<WeightOnlyRun, PipelineError> {
    check(o)?;
    let mut times = BTreeMap::new();
    let t = Instant::now();
    let (float, data) = super::inputs::load(o, progress)?;
    let base_dir = onnx::external::base_dir(&o.common.model);
    times.insert("load".to_string(), t.elapsed().as_secs_f64());
    let w = o.weight_only;
    let grid = Grid {
        bits: w.bits,
        symmetric: w.symmetric,
    };
    let mut m = float.clone();
    let (layers, float_ops) = find_layers(&m.graph, o)?;
    let t = Instant::now();
    let hs = match (w.algo, &data.calib) {
        (Algo::Gptq { .. }, Some(calib)) => {
            Some(hessians(&float, &base_dir, &layers, calib, progress)?)
        }
        _ => None,
    };
    if hs.is_some() {
        times.insert("hessians".to_string(), t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let mut rows = Vec::new();
    let mut nbits = false;
    progress.begin("quantizing weights", layers.len() as u64);
    for l in &layers {
        let wm = weight_matrix(&m.graph, l)?;
        let group = w.block_size.unwrap_or(l.cols);
        let q = match (w.algo, &hs) {
            (Algo::Gptq { act_order }, Some(hs)) => {
                let h = hs[&l.input].finish();
                let opts = GptqOptions {
                    act_order,
                    ..GptqOptions::default()
                };
                gptq(wm.view(), &h, group, grid, opts).map_err(|e| {
                    PipelineError::Options(format!("GPTQ on node '{}': {e}", l.node))
                })?
            }
            (algo, _) => quantize_groups(wm.view(), group, grid, algo),
        };
        let format = if o.common.settings.target == Target::OrtCpu
            && w.block_size.is_some()
            && l.op_type == "MatMul"
        {
            Format::MatMulNBits
        } else {
            Format::Dequantize
        };
        match format {
            Format::MatMulNBits => {
                nbits = true;
                write_nbits(&mut m.graph, l, &q, grid)?
            }
            Format::Dequantize => {
                write_dequantize(&mut m.graph, l, &q, grid, w.block_size.is_none())?
            }
        }
        drop_weight(&mut m.graph, l.weight);
        rows.push(WeightOnlyLayer {
            node: l.node.clone(),
            op_type: l.op_type.clone(),
            weight: float.graph.value(l.weight).name.clone(),
            shape: [l.cols, l.rows],
            written_as: match format {
                Format::MatMulNBits => "MatMulNBits".into(),
                Format::Dequantize => "DequantizeLinear".into(),
            },
        });
        progress.step();
    }
    progress.end();
    let (tables, float_tables) = write_tables(&mut m.graph, o)?;
    nbits |= tables
        .iter()
        .any(|t| t.written_as == "GatherBlockQuantized");
    let dequantize = rows.iter().any(|r| r.written_as == "DequantizeLinear")
        || tables.iter().any(|t| t.written_as == "DequantizeLinear");
    let mut notes = Vec::new();
    if dequantize {
        let r = crate::passes::upgrade_opset::upgrade(&mut m, 21).map_err(|error| {
            PipelineError::Pass {
                model: o.common.model.clone(),
                error,
            }
        })?;
        if let Some(from) = r.from {
            notes.push(format!("opset raised from {from} to 21 (DequantizeLinear with block_size or 4-bit weights)"));
        }
    }
    if nbits && m.opset("com.microsoft").is_none() {
        m.opsets.push(OpsetImport {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
    m.verify().map_err(PipelineError::InvalidQuantized)?;
    times.insert("quantize".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut validation = BTreeMap::new();
    if let (true, Some(eval)) = (o.validate, &data.eval) {
        let (cmp, engine_notes) = validate(
            &float,
            &m,
            &base_dir,
            o,
            eval,
            data.labels.as_deref(),
            progress,
        )?;
        validation = cmp;
        notes.extend(engine_notes);
        times.insert("validate".to_string(), t.elapsed().as_secs_f64());
    } else if o.validate {
        notes.push(
            "not validated: no data (give --eval DATA, or --calib DATA, to compare with the float model)"
                .to_string(),
        );
    }
    let summary = WeightOnlySummary {
        input: o.common.model.display().to_string(),
        output: o.output.display().to_string(),
        mode: "weight-only",
        target: o.common.settings.target,
        bits: w.bits,
        block_size: w.block_size,
        symmetric: w.symmetric,
        algo: match w.algo {
            Algo::Rtn => "rtn".into(),
            Algo::Clip => "clip".into(),
            Algo::Gptq { act_order: false } => "gptq".into(),
            Algo::Gptq { act_order: true } => "gptq, act-order".into(),
        },
        layers: rows,
        float_ops,
        parameters: layers.iter().map(|l| l.rows * l.cols).sum(),
        tables,
        float_tables,
        size_before: onnx::encoded_size(&float),
        size_after: onnx::encoded_size(&m),
        calibration_samples: data.calib.as_ref().map_or(0, |c| c.len()),
        eval_samples: data.eval.as_ref().map_or(0, |e| e.len()),
        validation,
        seconds: times,
        notes,
    };
    Ok(WeightOnlyRun {
        model: m,
        summary,
        warnings: data.warnings,
    })
}

/// Values per block of 4-bit tables whose weights are in larger blocks, unless
/// `--embedding-block` says otherwise. On minilm_l3 with int4 RTN weights in blocks of 32
/// (benches/weight_only_bench.py, README "Weight-only quantization"), the word table in
/// blocks of 32 gives the embedding 13.8 dB at 0.162x of the file, in blocks of 16 14.8 dB at
/// 0.186x (its own SQNR 21.9 → 23.2 dB); with the fixed-index tables int8 per row
/// ([`FIXED_INDEX_TABLES`]) 15.4 dB at 0.187x, GPTQ 17.8 dB: the goals (15.1 and
/// 17 dB under 0.20x) are met at 16, not at 32.
pub const TABLE_BLOCK_4: usize = 16;

/// How tables that follow 4-bit weights store lookups whose indices are computed from
/// constants and shapes only ([`crate::quant::embedding::fixed_index_lookups`]: a
/// transformer's position and token-type tables), unless `--embedding-bits 4` is given:
/// every token reads those rows, so their error is the same offset on every token, not
/// noise spread over a vocabulary. On minilm_l3 (int4 RTN, weights in blocks of 32, word
/// table in blocks of 16) those two tables (197k of the 11.9M table values) as int8 rows
/// instead of int4 blocks raise the embedding's SQNR from 14.8 to 15.4 dB (15.44 with them
/// float), for 0.07 % more file.
pub const FIXED_INDEX_TABLES: &str = "int8 per row";

/// The tables' block: `given` (`--embedding-block`), else the weights' (`None`: per row),
/// at most [`TABLE_BLOCK_4`] for 4-bit tables.
pub fn table_block(weights: Option<usize>, table_bits: u32, given: Option<usize>) -> Option<usize> {
    given.or(match weights {
        Some(b) if table_bits == 4 => Some(b.min(TABLE_BLOCK_4)),
        b => b,
    })
}

/// The embedding tables stored on the weights' grid and blocks, or as `--embedding-bits` and
/// `--embedding-block` say.
fn write_tables(
    g: &mut Graph,
    o: &QuantizeOptions,
) -> Result<(Vec<StoredTable>, FloatTables), PipelineError> {
    let w = &o.weight_only;
    let bits = match o.common.settings.embedding_bits {
        None => w.bits,
        Some(TableBits::Float) => {
            let tables = crate::quant::embedding::embedding_lookups(g)
                .into_iter()
                .filter_map(|l| g.input(l, 0).map(|t| g.value(t).name.clone()))
                .collect::<Vec<_>>();
            let mut float = FloatTables::new();
            if !tables.is_empty() {
                float.insert("--embedding-bits float".to_string(), tables);
            }
            return Ok((Vec::new(), float));
        }
        Some(b) => b.bits().expect("not float"),
    };
    let layout = TableLayout {
        grid: Grid {
            bits,
            symmetric: w.symmetric,
        },
        block: table_block(w.block_size, bits, o.common.settings.embedding_block),
        gather_block_quantized: o.common.settings.target == Target::OrtCpu,
        algo: w.algo,
    };
    let err = |e| match e {
        TableError::Graph(e) => PipelineError::InvalidQuantized(e),
        e => PipelineError::Options(e.to_string()),
    };
    let (mut stored, mut float) = (Vec::new(), FloatTables::new());
    if bits == 4 && o.common.settings.embedding_bits.is_none() {
        // Lookups at fixed indices (positions, token types) stay int8 per row unless
        // --embedding-bits 4 asks otherwise: see FIXED_INDEX_TABLES.
        let fixed = crate::quant::embedding::fixed_index_lookups(g);
        if !fixed.is_empty() {
            let rows = TableLayout {
                grid: Grid {
                    bits: 8,
                    symmetric: w.symmetric,
                },
                block: None,
                ..layout
            };
            let (s, f) = store_tables(g, rows, Some(&fixed)).map_err(err)?;
            stored.extend(s);
            float.extend(f);
        }
    }
    let (s, f) = store_tables(g, layout, None).map_err(err)?;
    stored.extend(s);
    for (why, tables) in f {
        let list = float.entry(why).or_default();
        list.extend(tables);
        list.sort();
        list.dedup();
    }
    Ok((stored, float))
}

/// The float and quantized models compared on the evaluation data in the engine.
fn validate(
    float: &Model,
    q: &Model,
    base_dir: &Path,
    o: &QuantizeOptions,
    eval: &Dataset,
    labels: Option<&[i64]>,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, crate::report::Metrics>, Vec<String>), PipelineError> {
    let first = eval.first()?;
    let what = |m: &Path, kind: &str| format!("{}: {kind} model", m.display());
    let fs = session_of(float, base_dir, &first, what(&o.common.model, "float"))?;
    let qs = session_of(q, base_dir, &first, what(&o.output, "quantized"))?;
    let cmp = compare_on(&fs, &qs, eval, labels, progress)?;
    Ok((cmp.outputs, qs.notes()))
}
