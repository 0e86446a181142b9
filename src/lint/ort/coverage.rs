//! From the transformed copy back to the model: which ops of the original main graph are
//! units (they read a DequantizeLinear or feed a QuantizeLinear, before or after the
//! transformations), and each unit's verdict: removed by a transformation, absorbed into
//! the fused unit before it, fused or dropped by its selector, or float with the reason.

use super::sim::Sim;
use crate::ir::{Graph, OpId};
use crate::lint::{is_dq, is_q, never_a_unit, Unit, UnitKind, Verdict, Warning};
use std::collections::BTreeMap;

/// Op types whose Q/DQ pair ONNX Runtime can drop (or that only move data).
const DATA_MOVEMENT: &[&str] = &[
    "ArgMax",
    "DepthToSpace",
    "Dropout",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "Identity",
    "MaxPool",
    "Pad",
    "ReduceMax",
    "ReduceMin",
    "Reshape",
    "Resize",
    "Slice",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "Tile",
    "Transpose",
    "Unsqueeze",
];

/// The units of the original graph in `order`, judged on the transformed copy `sim`.
pub(super) fn units(original: &Graph, order: &[OpId], mut sim: Sim<'_>) -> Vec<Unit> {
    let mut absorbed: BTreeMap<OpId, String> = BTreeMap::new();
    let mut verdicts: Vec<(OpId, Option<OpId>, Verdict, Vec<Warning>)> = Vec::new();
    for &o in order {
        let op = original.op(o);
        if is_q(original, o) || is_dq(original, o) || never_a_unit(&op.op_type) {
            continue;
        }
        // A MatMul fused with its bias Add: the Gemm is the unit, reported once, in the
        // MatMul's place.
        let gemm = sim.gemm_of.get(&o).copied();
        if gemm.is_some() && op.op_type != "MatMul" {
            continue;
        }
        let present = !sim.removed.contains_key(&o);
        if !(touches_qdq(original, o) || (present && touches_qdq(&sim.g, o))) {
            continue;
        }
        let (verdict, warnings) = match sim.removed.get(&o) {
            Some(why) => (Verdict::Removed { why: why.clone() }, Vec::new()),
            None => match sim.verdict(gemm.unwrap_or(o)) {
                Ok((v, w, clip)) => {
                    if let Some(c) = clip {
                        absorbed.insert(
                            c,
                            format!(
                                "absorbed into the fused unit of '{}'",
                                sim.g.op(gemm.unwrap_or(o)).display_name()
                            ),
                        );
                    }
                    (v, w)
                }
                Err(reason) => (Verdict::Float { reason }, Vec::new()),
            },
        };
        verdicts.push((o, gemm, verdict, warnings));
    }
    let mut out = Vec::new();
    for (o, gemm, verdict, warnings) in verdicts {
        let op = match gemm {
            Some(g) => sim.g.op(g).clone(),
            None => original.op(o).clone(),
        };
        // The Gemm writes what the Add wrote.
        let writer = gemm
            .and_then(|g| sim.g.output(g, 0))
            .and_then(|v| original.producer(v))
            .map_or(o, |(p, _)| p);
        let verdict = match absorbed.get(&o) {
            Some(why) => Verdict::Removed { why: why.clone() },
            None => verdict,
        };
        out.push(Unit {
            node: op.display_name().to_string(),
            name: op.name.clone().filter(|n| !n.is_empty()),
            op_type: op.op_type.clone(),
            domain: op.domain_key().to_string(),
            kind: if DATA_MOVEMENT.contains(&op.op_type.as_str()) {
                UnitKind::DataMovement
            } else {
                UnitKind::Compute
            },
            outputs: original
                .outputs_of(writer)
                .into_iter()
                .flatten()
                .map(|v| original.value(v).name.clone())
                .collect(),
            verdict,
            notes: {
                let mut n = sim.notes.remove(&o).unwrap_or_default();
                n.extend(gemm.and_then(|g| sim.notes.remove(&g)).unwrap_or_default());
                n
            },
            warnings,
        });
    }
    out
}

/// True when `o` reads a DequantizeLinear output or feeds a QuantizeLinear in `g`.
fn touches_qdq(g: &Graph, o: OpId) -> bool {
    g.inputs_of(o)
        .into_iter()
        .flatten()
        .any(|v| g.producer(v).is_some_and(|(p, _)| is_dq(g, p)))
        || g.outputs_of(o)
            .into_iter()
            .flatten()
            .any(|v| g.consumers(v).iter().any(|(c, _)| is_q(g, *c)))
}
