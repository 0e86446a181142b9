//! ONNX Runtime's CPU provider: which node units become integer kernels.
//!
//! ONNX Runtime decides fusion in graph transformations that run before its QDQ
//! selectors, so the selectors alone would mispredict. This module replays them on a copy
//! of the main graph (`sim`: the copy, what the steps did to it, and the questions they
//! ask of it), one file per step, in ONNX Runtime's order for `ORT_ENABLE_EXTENDED`.
//!
//! Level 1:
//! 1. `noop_elimination`: removal of Identity nodes, inference Dropout, a Cast to the
//!    type its input has, a Slice of the whole tensor;
//! 2. `unique_dq`: one DequantizeLinear per consumer (a shared DQ is duplicated, so
//!    sharing never blocks fusion);
//! 3. `constant_folding`: nodes whose inputs are all constant (DequantizeLinear
//!    excepted), and `Shape` of a value of known dims, become initializers;
//! 4. `matmul_add_fusion`: a MatMul and its bias Add become one Gemm (the unit the
//!    selectors then judge);
//! 5. `reshape_fusion`: a Reshape's shape computed from `Shape` of its own input becomes a
//!    constant, and the `Shape` readers go;
//! 6. `qdq_propagation`: a QuantizeLinear is copied backwards, and a DequantizeLinear
//!    forwards, through Reshape/Transpose/Squeeze/Unsqueeze/Slice/MaxPool chains that
//!    lack their own pair;
//! 7. `weight_bias_quantization`: quantization of float Conv/Gemm weights and biases
//!    whose input is dequantized per tensor and whose output leads to a QuantizeLinear;
//!    then step 2 again, and steps 3–7 and 2 a second time (level 1 runs until nothing
//!    changes; two rounds reach that for these steps).
//!
//! Level 2:
//! 8. `clip_quantizelinear`: removal of a Relu/Clip before a QuantizeLinear whose range
//!    already clips;
//! 9. `s8_to_u8`: on x86-64, conversion of int8 Q→DQ pairs to uint8 where the Q feeds
//!    one DQ;
//! 10. `selectors`: the QDQ selectors, unit by unit, each giving the first rule the unit
//!    breaks (one file per selector: dropping Q/DQ around data movement, Split, unary,
//!    binary, variadic, Where, Conv, MatMul, Gemm).
//!
//! `coverage` maps the verdicts back to the units of the original graph.
//!
//! The rules follow ONNX Runtime 1.32 (`qdq_selectors.cc`,
//! `qdq_selector_action_transformer.cc`, `qdq_propagation.cc`,
//! `weight_bias_quantization.cc`, `ensure_unique_dq_for_node_unit.cc`,
//! `relu_quantizelinear.cc`, `clip_quantizelinear.cc`, `qdq_s8_to_u8.cc`,
//! `constant_folding.cc`, `matmul_add_fusion.cc`, `reshape_fusion.cc`), and `tests/conformance/lint_vs_ort.py` checks them against the
//! optimized graph ONNX Runtime itself writes.

mod clip_quantizelinear;
mod constant_folding;
mod coverage;
mod matmul_add_fusion;
mod noop_elimination;
mod qdq_propagation;
mod reshape_fusion;
mod s8_to_u8;
mod selectors;
mod sim;
mod unique_dq;
mod weight_bias_quantization;

use super::{LintError, Platform, Unit};
use crate::ir::Model;
use sim::Sim;

/// The units of `model`'s main graph for ONNX Runtime's CPU provider.
pub fn units(model: &Model, platform: Platform) -> Result<Vec<Unit>, LintError> {
    let order = model.graph.topo_order()?;
    let mut sim = Sim::new(model, platform);
    // Level 1.
    sim.eliminate_noops();
    sim.ensure_unique_dq()?;
    // Level 1 runs until nothing changes; two rounds reach that for these steps. The
    // rewrite rules run again in each round: a DequantizeLinear made unique can leave an
    // Identity its only reader.
    for _ in 0..2 {
        sim.constant_fold()?;
        sim.fuse_matmul_add()?;
        sim.fuse_reshape_shapes()?;
        sim.propagate()?;
        sim.quantize_weights_and_biases()?;
        sim.ensure_unique_dq()?;
        sim.eliminate_noops();
    }
    // Level 2.
    sim.remove_clipping_activations()?;
    if !sim.int8_allowed {
        sim.convert_s8_pairs()?;
    }
    Ok(coverage::units(&model.graph, &order, sim))
}
