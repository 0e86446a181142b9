//! Quantized embedding tables: which `Gather` reads a table that can be stored in 8 bits,
//! and on which grid. Any quantization mode that shrinks a model's weights calls these:
//! the static plan does ([`super::plan`]), and a weight-only or dynamic mode needs the same
//! tables for the same reason (a transformer's word-embedding table is most of its file).
//!
//! The stored form is ONNX's own: the table as int8 with one scale per row
//! (`DequantizeLinear` with `axis = 0`, opset 13 or later), the `Gather` after it on the
//! dequantized floats. Each row is one token's vector, so its scale follows that vector's
//! own range (rows differ by an order of magnitude in a trained table), and the rows a
//! sentence picks are exactly `(q − 0) · scale_row`. ONNX Runtime runs the
//! `DequantizeLinear` on the constant table (it does not fold DequantizeLinear) and the
//! float `Gather` after it; no kernel fuses the pair.

use super::params::QType;
use crate::ir::{ConstTensor, DType, Graph, OpId, ValueId};

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
