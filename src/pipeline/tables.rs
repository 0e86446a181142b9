//! `--embedding-bits 4` in the static and dynamic modes: the plan (or the dynamic rewrite)
//! leaves the embedding tables float, and once the Q/DQ are in place this stores them as
//! symmetric int4 in blocks along the embedding axis
//! ([`crate::quant::embedding::store_tables`]): com.microsoft GatherBlockQuantized on
//! `ort-cpu`, DequantizeLinear (the model's opset raised to 21) elsewhere.

use super::error::PipelineError;
use crate::ir::{Model, OpsetImport};
use crate::quant::embedding::{
    embedding_lookups, store_tables, StoredTable, TableBits, TableError, TableLayout, INT4_TABLE,
};
use crate::quant::plan::QuantConfig;
use crate::quant::plan::{op_key, OpState, Plan};
use crate::quant::rules::Target;
use crate::quant::weight_only::{Algo, Grid};
use std::collections::{BTreeMap, BTreeSet};

/// Default values per block of int4 tables.
pub const DEFAULT_BLOCK: usize = 32;

/// What [`store_planned_tables`] did, by lookup: what the summaries list instead of the
/// plan's (or the dynamic rewrite's) "left float for `--embedding-bits 4`".
#[derive(Clone, Debug, Default)]
pub struct PlannedTables {
    /// The tables stored int4 (their `key` is the lookup's plan key).
    pub stored: Vec<StoredTable>,
    /// Lookups left for the int4 tables whose table stays float after all (shared or
    /// exposed), by plan key: why.
    pub left_float: BTreeMap<String, String>,
}

impl PlannedTables {
    /// Whether the lookup of plan key `key` was handed to the int4 tables.
    pub fn handled(&self, key: &str) -> bool {
        self.stored.iter().any(|t| t.key == key) || self.left_float.contains_key(key)
    }
}

/// Stores `q`'s embedding tables as `cfg` asks (nothing unless `--embedding-bits 4`): those
/// `plan` leaves float for it ([`INT4_TABLE`]), or all of them without a plan (the dynamic
/// mode); the tables written, and those that stay float.
pub fn store_planned_tables(
    q: &mut Model,
    cfg: &QuantConfig,
    plan: Option<&Plan>,
) -> Result<PlannedTables, PipelineError> {
    if cfg.tables != Some(TableBits::Int4) {
        return Ok(PlannedTables::default());
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
    // Table name -> lookup key, for the tables that stay float.
    let keys: BTreeMap<String, String> = embedding_lookups(&q.graph)
        .into_iter()
        .filter_map(|o| {
            let t = q.graph.input(o, 0)?;
            Some((q.graph.value(t).name.clone(), op_key(&q.graph, o)))
        })
        .collect();
    let (stored, float) =
        store_tables(&mut q.graph, layout, only.as_ref()).map_err(|e| match e {
            TableError::Graph(e) => PipelineError::InvalidQuantized(e),
            e => PipelineError::Options(e.to_string()),
        })?;
    let left_float = float
        .into_iter()
        .flat_map(|(why, tables)| {
            let keys = &keys;
            tables.into_iter().filter_map(move |t| {
                keys.get(&t)
                    .map(|k| (k.clone(), format!("embedding table left float: {why}")))
            })
        })
        .collect();
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
    Ok(PlannedTables { stored, left_float })
}
