//! Quantized embedding tables: which `Gather` reads a table that can be stored in fewer bits,
//! on which grid, and how it is written. Any quantization mode that shrinks a model's weights
//! calls these: the static plan does ([`super::plan`]) for its int8 rows, and the weight-only
//! mode and `--embedding-bits 4` write tables through [`store_tables`] (a transformer's
//! word-embedding table is most of its file).
//!
//! # int8 per row (the static and dynamic default)
//! The table as int8 with one scale per row (`DequantizeLinear` with `axis = 0`, opset 13 or
//! later), the `Gather` after it on the dequantized floats. Each row is one token's vector, so
//! its scale follows that vector's own range (rows differ by an order of magnitude in a trained
//! table), and the rows a sentence picks are exactly `(q − 0) · scale_row`. ONNX Runtime runs
//! the `DequantizeLinear` on the constant table (it does not fold DequantizeLinear) and the
//! float `Gather` after it; no kernel fuses the pair.
//!
//! # Blocks along the embedding axis ([`store_tables`])
//! A table `[rows, width]` quantized like a weight-only weight ([`super::weight_only`]): each
//! row split into blocks of `block` values along the width (the last one partial when `block`
//! does not divide it; one block per row when the table is narrower than a block or no block is
//! given), 4 or 8 bits, symmetric or with zero points. Written as
//! - **com.microsoft GatherBlockQuantized** (ONNX Runtime): 4-bit blocked tables when the
//!   target is `ort-cpu`. `data` int4 (symmetric) or uint4 (with zero points of the same type)
//!   `[rows, width]`, `scales` and zero points `[rows, ⌈width / block⌉]`, `gather_axis` 0,
//!   `quantize_axis` 1, `block_size` the block (a power of two of at least 16, the operator's
//!   rule). The `Gather` is replaced; its indices and output are kept.
//! - **DequantizeLinear** (any runtime, opset 21): the codes `[rows, width]` (int4/uint4 or
//!   int8/uint8), `axis` 1 with `block_size`, or `axis` 0 per row; the `Gather` reads its output.
//!
//! Each block's grid comes from its own values by round-to-nearest on its min/max, or by the
//! clipping search of [`super::weight_only`] (`clip`, and for GPTQ: a `Gather` has no input
//! to learn from, so the best data-free choice stands in); each stored table's SQNR against
//! the float one is reported.
//!
//! A table qualifies when the `Gather` along axis 0 is its one reader and it is no graph
//! input, output or subgraph capture; the others stay float and say why.

use super::params::QType;
use super::weight_only::{quantize_groups, Algo, Grid, Quantized};
use crate::ir::graph::{AttrValue, Op};
use crate::ir::{ConstTensor, DType, Graph, GraphError, OpId, Tensor, ValueId};
use ndarray::{ArrayD, IxDyn};
use serde::Serialize;
use std::collections::BTreeMap;

/// The grid of a quantized embedding table: signed, symmetric, all of int8's
/// [-127, 127] (no integer kernel multiplies it, so the 7-bit guard of `reduce_range`
/// buys nothing), one scale per row.
pub fn table_qtype() -> QType {
    QType::new(DType::I8, true, false).expect("int8 is an integer type")
}

/// The axis of a table's scales: its rows.
pub const TABLE_AXIS: i64 = 0;

/// Whether op `o` of `g` is a `Gather` along axis 0 from the float32 constant table
/// `table` (rank 2, at least two rows) at input 0: an embedding lookup whose table can be
/// stored in 8 bits per row. `konst` resolves constants (those of `g`, or captured).
pub fn is_embedding_lookup<'a>(
    g: &Graph,
    o: OpId,
    konst: impl Fn(ValueId) -> Option<&'a ConstTensor>,
) -> bool {
    let op = g.op(o);
    if op.op_type != "Gather" || !matches!(op.domain_key(), "" | "ai.onnx") {
        return false;
    }
    if op.attr_int("axis").unwrap_or(0) != 0 {
        return false;
    }
    let Some(table) = g.input(o, 0) else {
        return false;
    };
    konst(table).is_some_and(|t| t.dtype == DType::F32 && t.dims.len() == 2 && t.dims[0] >= 2)
}

/// The embedding lookups of `g` (main graph constants only), in op order.
pub fn embedding_lookups(g: &Graph) -> Vec<OpId> {
    g.ops()
        .filter(|&o| is_embedding_lookup(g, o, |v| g.const_of(v)))
        .collect()
}

/// The embedding lookups of `g` whose indices are computed from constants and input shapes
/// only (a transformer's position and token-type lookups when their ids are built from the
/// input's shape): every input of a given length reads the same rows, so a table's error
/// there is the same offset on every token, not noise spread over a vocabulary. Such
/// lookups' plan keys ([`super::plan::op_key`]).
pub fn fixed_index_lookups(g: &Graph) -> std::collections::BTreeSet<String> {
    let fixed = super::plan::computed_from_constants(g, |v| g.const_of(v).is_some());
    embedding_lookups(g)
        .into_iter()
        .filter(|&o| {
            g.input(o, 1)
                .is_some_and(|i| fixed.contains(&i) || g.const_of(i).is_some())
        })
        .map(|o| super::plan::op_key(g, o))
        .collect()
}

/// Why the static plan leaves an embedding lookup float under `--embedding-bits 4`: its table
/// is stored in 4-bit blocks once the Q/DQ are inserted (the lookups [`store_tables`] takes).
pub const INT4_TABLE: &str =
    "embedding table stored int4 in blocks after the Q/DQ (--embedding-bits 4)";

/// How embedding tables are stored (`--embedding-bits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableBits {
    /// Left float32.
    Float,
    /// 8-bit codes.
    Int8,
    /// 4-bit codes.
    Int4,
}

impl TableBits {
    /// Bits per code (`None`: float).
    pub fn bits(self) -> Option<u32> {
        match self {
            TableBits::Float => None,
            TableBits::Int8 => Some(8),
            TableBits::Int4 => Some(4),
        }
    }
}

/// How [`store_tables`] writes the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLayout {
    pub grid: Grid,
    /// Values per block along the width (`None`: one scale per row).
    pub block: Option<usize>,
    /// Write 4-bit blocked tables as com.microsoft GatherBlockQuantized (else DequantizeLinear).
    pub gather_block_quantized: bool,
    /// RTN or the clipping search. GPTQ cannot apply to a table (a `Gather` multiplies
    /// nothing, so there is no input Hessian): it stands for the clipping search here, the
    /// best of the data-free choices.
    pub algo: Algo,
}

impl TableLayout {
    /// The algorithm the tables actually get: RTN, or the clipping search for `clip` and GPTQ.
    pub fn table_algo(&self) -> Algo {
        match self.algo {
            Algo::Rtn => Algo::Rtn,
            Algo::Clip | Algo::Gptq { .. } => Algo::Clip,
        }
    }
}

/// A table [`store_tables`] quantized, as summaries list it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredTable {
    /// The lookup (`Gather`) node.
    pub node: String,
    pub table: String,
    /// `[rows, width]`.
    pub shape: [usize; 2],
    pub bits: u32,
    /// Values per block along the width (`None`: per row).
    pub block_size: Option<usize>,
    /// `GatherBlockQuantized` or `DequantizeLinear`.
    pub written_as: String,
    /// `rtn` or `clip` ([`TableLayout::table_algo`]).
    pub algo: String,
    /// SQNR of the stored table against the float one, in dB:
    /// `10·log10(Σ t² / Σ (t − t̂)²)` (infinite when exact).
    pub sqnr_db: f64,
    /// The lookup's key in a static plan ([`super::plan::op_key`]).
    #[serde(skip)]
    pub key: String,
}

/// Why a table could not be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TableError {
    #[error("embedding table '{table}' (node '{node}') holds a non-finite value ({value}): it cannot be quantized")]
    NonFinite {
        table: String,
        node: String,
        value: f32,
    },
    #[error("embedding table '{table}': block size {block} is not a power of two of at least 16")]
    BlockSize { table: String, block: usize },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Tables left float by [`store_tables`], by reason.
pub type FloatTables = BTreeMap<String, Vec<String>>;

fn node_name(g: &Graph, o: OpId) -> String {
    match &g.op(o).name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => g
            .output(o, 0)
            .map(|v| g.value(v).name.clone())
            .unwrap_or_default(),
    }
}

fn array<T>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape of the values")
}

/// Codes (or zero points) as the integer type of `grid`.
fn codes_tensor(grid: Grid, shape: &[usize], v: &[i32]) -> Tensor {
    match (grid.bits, grid.symmetric) {
        (4, true) => Tensor::I4(array(shape, v.iter().map(|&c| c as i8).collect())),
        (4, false) => Tensor::U4(array(shape, v.iter().map(|&c| c as u8).collect())),
        (_, true) => Tensor::I8(array(shape, v.iter().map(|&c| c as i8).collect())),
        (_, false) => Tensor::U8(array(shape, v.iter().map(|&c| c as u8).collect())),
    }
}

fn add_const(g: &mut Graph, base: &str, t: &Tensor) -> Result<ValueId, GraphError> {
    let name = g.fresh_name(base);
    g.add_const(&name, ConstTensor::from_tensor(None, t))
}

/// The table of lookup `o` quantized by `layout`: `None` (with the reason) when it stays float.
fn quantize_table(
    g: &Graph,
    o: OpId,
    layout: TableLayout,
    captured: &std::collections::BTreeSet<String>,
) -> Result<Result<(Quantized, f64), &'static str>, TableError> {
    let t = g.input(o, 0).expect("checked lookup");
    let name = &g.value(t).name;
    if g.consumers(t).len() != 1 || g.is_input(t) || g.is_output(t) || captured.contains(name) {
        return Ok(Err("table shared or exposed"));
    }
    let c = g.const_of(t).expect("checked lookup");
    let Ok(Tensor::F32(a)) = c.to_tensor() else {
        return Ok(Err("table data unreadable"));
    };
    if let Some(&value) = a.iter().find(|v| !v.is_finite()) {
        return Err(TableError::NonFinite {
            table: name.clone(),
            node: node_name(g, o),
            value,
        });
    }
    let a = a
        .into_dimensionality::<ndarray::Ix2>()
        .expect("checked 2-D");
    let width = a.ncols();
    let group = layout.block.unwrap_or(width);
    let q = quantize_groups(a.view(), group, layout.grid, layout.table_algo());
    let sqnr = table_sqnr(a.view(), &q);
    Ok(Ok((q, sqnr)))
}

/// `10·log10(Σ t² / Σ (t − t̂)²)` of table `a` stored as `q`, in dB (infinite when exact),
/// without materialising the dequantized table.
fn table_sqnr(a: ndarray::ArrayView2<f32>, q: &Quantized) -> f64 {
    let groups = q.groups();
    let (mut signal, mut noise) = (0f64, 0f64);
    for ((r, c), &t) in a.indexed_iter() {
        let p = r * groups + c / q.group;
        let d =
            super::weight_only::dequantize(q.codes[r * q.cols + c], q.scales[p], q.zero_points[p]);
        signal += t as f64 * t as f64;
        noise += (t as f64 - d as f64).powi(2);
    }
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// Stores every embedding table of `g` read by one `Gather` (those whose lookup's
/// [`super::plan::op_key`] is in `only`, when given) in `layout`'s codes (see the module doc);
/// the tables written, and those left float by reason.
pub fn store_tables(
    g: &mut Graph,
    layout: TableLayout,
    only: Option<&std::collections::BTreeSet<String>>,
) -> Result<(Vec<StoredTable>, FloatTables), TableError> {
    let captured = crate::passes::util::captured_by_subgraphs(g);
    let mut stored = Vec::new();
    let mut float = FloatTables::new();
    for o in embedding_lookups(g) {
        if only.is_some_and(|keys| !keys.contains(&super::plan::op_key(g, o))) {
            continue;
        }
        let t = g.input(o, 0).expect("checked lookup");
        let table = g.value(t).name.clone();
        if let Some(b) = layout.block {
            if b < 16 || !b.is_power_of_two() {
                return Err(TableError::BlockSize { table, block: b });
            }
        }
        let (q, sqnr_db) = match quantize_table(g, o, layout, &captured)? {
            Ok(q) => q,
            Err(why) => {
                float.entry(why.to_string()).or_default().push(table);
                continue;
            }
        };
        let node = node_name(g, o);
        let key = super::plan::op_key(g, o);
        let blocked = q.group < q.cols;
        let gbq = layout.gather_block_quantized && blocked && layout.grid.bits == 4;
        if gbq {
            write_gather_block_quantized(g, o, &table, &q, layout.grid)?;
        } else {
            write_dequantize(g, o, &table, &q, layout.grid)?;
        }
        if g.consumers(t).is_empty() {
            g.remove_value(t);
        }
        stored.push(StoredTable {
            node,
            table,
            shape: [q.rows, q.cols],
            bits: layout.grid.bits,
            block_size: blocked.then_some(q.group),
            written_as: if gbq {
                "GatherBlockQuantized"
            } else {
                "DequantizeLinear"
            }
            .into(),
            algo: match layout.table_algo() {
                Algo::Clip => "clip",
                _ => "rtn",
            }
            .into(),
            sqnr_db,
            key,
        });
    }
    Ok((stored, float))
}

/// The codes, scales and (with zero points) zero points of `q` as constants.
fn add_codes(
    g: &mut Graph,
    table: &str,
    q: &Quantized,
    grid: Grid,
) -> Result<(ValueId, ValueId, Option<ValueId>), GraphError> {
    let codes = add_const(
        g,
        &format!("{table}.q"),
        &codes_tensor(grid, &[q.rows, q.cols], &q.codes),
    )?;
    let blocked = q.group < q.cols;
    let pshape: Vec<usize> = if blocked {
        vec![q.rows, q.groups()]
    } else {
        vec![q.rows]
    };
    let scales = add_const(
        g,
        &format!("{table}.scale"),
        &Tensor::F32(array(&pshape, q.scales.clone())),
    )?;
    let zp = if grid.symmetric {
        None
    } else {
        Some(add_const(
            g,
            &format!("{table}.zp"),
            &codes_tensor(grid, &pshape, &q.zero_points),
        )?)
    };
    Ok((codes, scales, zp))
}

/// The table as codes and a DequantizeLinear the lookup reads.
fn write_dequantize(
    g: &mut Graph,
    o: OpId,
    table: &str,
    q: &Quantized,
    grid: Grid,
) -> Result<(), GraphError> {
    let (codes, scales, zp) = add_codes(g, table, q, grid)?;
    let t = g.input(o, 0).expect("checked lookup");
    let dqv = g.add_fresh_value(&format!("{table}.dq"), g.value(t).ty.clone());
    let mut dq = Op::new(
        "DequantizeLinear",
        &g.fresh_name(&format!("{table}.dequantize")),
    );
    if q.group < q.cols {
        dq.set_attr("axis", AttrValue::Int(1));
        dq.set_attr("block_size", AttrValue::Int(q.group as i64));
    } else {
        dq.set_attr("axis", AttrValue::Int(0));
    }
    dq.order = g.order_before(o);
    g.add_op(dq, &[Some(codes), Some(scales), zp], &[Some(dqv)])?;
    g.set_input(o, 0, Some(dqv));
    Ok(())
}

/// The lookup replaced by com.microsoft GatherBlockQuantized on the codes.
fn write_gather_block_quantized(
    g: &mut Graph,
    o: OpId,
    table: &str,
    q: &Quantized,
    grid: Grid,
) -> Result<(), GraphError> {
    let (codes, scales, zp) = add_codes(g, table, q, grid)?;
    let indices = g.input(o, 1);
    let y = g.output(o, 0);
    let old = g.remove_op(o);
    let mut op = Op::new("GatherBlockQuantized", "");
    op.name = old.name.clone();
    op.domain = Some("com.microsoft".into());
    op.order = old.order;
    for (attr, v) in [
        ("gather_axis", 0),
        ("quantize_axis", 1),
        ("block_size", q.group as i64),
    ] {
        op.set_attr(attr, AttrValue::Int(v));
    }
    g.add_op(op, &[Some(codes), indices, Some(scales), zp], &[y])?;
    Ok(())
}
