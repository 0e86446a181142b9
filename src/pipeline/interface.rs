//! The written model's interface: the float model's inputs, in their order, with their
//! declared types. A pinned input stays declared (unused: legal ONNX), so every program
//! that feeds the float model can feed the quantized one; the value it was pinned to
//! lives on as a constant of another name. `drop_pinned_inputs` removes it instead.

use super::error::PipelineError;
use crate::ir::{Graph, Model, Value};
use std::collections::BTreeSet;

/// The declared inputs of `m`'s main graph (initializers listed as inputs excluded).
pub fn declared_inputs(m: &Model) -> Vec<Value> {
    let g = &m.graph;
    g.inputs
        .iter()
        .filter(|v| g.value(**v).init.is_none())
        .map(|v| g.value(*v).clone())
        .collect()
}

/// Names every subgraph of `g` reads from an outer scope.
fn captured(g: &Graph) -> BTreeSet<String> {
    g.ops()
        .flat_map(|o| g.op(o).subgraphs())
        .flat_map(|(_, sg)| sg.captures())
        .collect()
}

/// Declares the pinned inputs of `declared` again in the written model `m`, in the float
/// model's input order. Returns a note per input kept.
pub fn keep_pinned_inputs(
    m: &mut Model,
    declared: &[Value],
    pinned: &BTreeSet<String>,
) -> Result<Vec<String>, PipelineError> {
    let internal = |e: crate::ir::GraphError| {
        PipelineError::Options(format!("cannot declare a pinned input again: {e}"))
    };
    let mut notes = Vec::new();
    let captured = captured(&m.graph);
    let g = &mut m.graph;
    for d in declared.iter().filter(|d| pinned.contains(&d.name)) {
        if let Some(v) = g.value_by_name(&d.name) {
            if captured.contains(&d.name) {
                notes.push(format!(
                    "input '{}' is not declared in the written model: a subgraph reads its pinned value by name",
                    d.name
                ));
                continue;
            }
            let new = g.fresh_name(&format!("{}.pinned", d.name));
            g.rename_value(v, &new).map_err(internal)?;
        }
        g.add_value(d.clone()).map_err(internal)?;
        notes.push(format!(
            "the model is specialised for the pinned value of input '{}': the input stays declared and is not read (--drop-pinned-inputs removes it)",
            d.name
        ));
    }
    let mut order: Vec<_> = declared
        .iter()
        .filter_map(|d| g.value_by_name(&d.name))
        .filter(|v| g.value(*v).init.is_none() && g.producer(*v).is_none())
        .collect();
    for v in &g.inputs {
        if !order.contains(v) {
            order.push(*v);
        }
    }
    g.inputs = order;
    Ok(notes)
}
