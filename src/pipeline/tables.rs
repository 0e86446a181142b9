//! `--embedding-bits 4` in the static and dynamic modes: the plan (or the dynamic rewrite)
//! leaves the embedding tables float, and once the Q/DQ are in place this stores them as
//! symmetric int4 in blocks along the embedding axis
//! ([`crate::quant::embedding::store_tables`]): com.microsoft GatherBlockQuantized on
//! `ort-cpu`, DequantizeLinear (the model's opset raised to 21) elsewhere.

use super::error::PipelineError;
use crate::ir::{Model, OpsetImport};
use crate::quant::embedding::{
    store_tables, StoredTable, TableBits, TableError, TableLayout, INT4_TABLE,
};
use crate::quant::plan::QuantConfig;
use crate::quant::plan::{OpState, Plan};
use crate::quant::rules::Target;
use crate::quant::weight_only::{Algo, Grid};
use std::collections::BTreeSet;

/// Default values per block of int4 tables.
pub const DEFAULT_BLOCK: usize = 32;

/// Stores `q`'s embedding tables as `cfg` asks (nothing unless `--embedding-bits 4`): those
/// `plan` leaves float for it ([`INT4_TABLE`]), or all of them without a plan (the dynamic
/// mode); the tables written.
pub fn store_planned_tables(
    q: &mut Model,
    cfg: &QuantConfig,
    plan: Option<&Plan>,
) -> Result<Vec<StoredTable>, PipelineError> {
    if cfg.tables != Some(TableBits::Int4) {
        return Ok(Vec::new());
    }
    let layout = TableLayout {
        grid: Grid {
            bits: 4,
            symmetric: true,
        },
        block: Some(cfg.table_block.unwrap_or(DEFAULT_BLOCK)),
        gather_block_quantized: cfg.target == Target::OrtCpu,
        algo: Algo::Rtn,
    };
    let only: Option<BTreeSet<String>> = plan.map(|p| {
        p.ops
            .iter()
            .filter(|(_, s)| matches!(s, OpState::Float { reason } if reason == INT4_TABLE))
            .map(|(k, _)| k.clone())
            .collect()
    });
    let (stored, _) = store_tables(&mut q.graph, layout, only.as_ref()).map_err(|e| match e {
        TableError::Graph(e) => PipelineError::InvalidQuantized(e),
        e => PipelineError::Options(e.to_string()),
    })?;
    if stored.iter().any(|t| t.written_as == "DequantizeLinear") {
        crate::passes::upgrade_opset::upgrade(q, 21).map_err(|e| {
            PipelineError::Options(format!("4-bit embedding tables need opset 21: {e}"))
        })?;
    }
    if stored
        .iter()
        .any(|t| t.written_as == "GatherBlockQuantized")
        && q.opset("com.microsoft").is_none()
    {
        q.opsets.push(OpsetImport {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
    Ok(stored)
}
