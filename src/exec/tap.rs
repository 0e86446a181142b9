//! Streamed taps: intermediate values handed to an observer while the engine runs.
//!
//! A value tapped as a graph output stays alive until the run ends, so tapping hundreds of
//! large activations holds them all at once. For a streamed tap, model preparation instead
//! adds a sink node ([`TAP_OP`], domain [`TAP_DOMAIN`]) that reads the value and outputs an
//! empty scalar; the scalar is a graph output, so the engine keeps the node, and the value is
//! released once its last reader (the sink included) has run. The engine's memory-aware
//! evaluation order runs a sink as soon as it can. [`super::Session::run_observed`]
//! intercepts each sink, hands its input to the observer, and never evaluates the op itself.
//!
//! The sink reports no out-of-plan evaluation, so constant folding never consumes it: a
//! tapped value that is constant still reaches the observer at run time.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Op type of a tap sink (never written to a model file, only to the engine's copy).
pub(crate) const TAP_OP: &str = "QrangeTapSink";
/// Domain of a tap sink.
pub(crate) const TAP_DOMAIN: &str = "qrange";
/// Attribute holding the tapped value's ONNX name.
pub(crate) const TAP_ATTR: &str = "tap";

/// Op builder for a tap sink.
pub(crate) fn tap_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let name: String = node.get_attr(TAP_ATTR)?;
    Ok((expand(TapExpansion { name }), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TapExpansion {
    name: String,
}

impl Expansion for TapExpansion {
    fn name(&self) -> StaticName {
        TAP_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 0)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        target.wire_node(
            prefix,
            TapSink {
                name: self.name.clone(),
            },
            inputs,
        )
    }
}

/// The typed sink: one input (the tapped value), an empty f32 scalar out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TapSink {
    /// ONNX name of the tapped value.
    pub name: String,
}

impl Op for TapSink {
    fn name(&self) -> StaticName {
        TAP_OP.into()
    }

    op_as_typed_op!();
}

impl EvalOp for TapSink {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, _inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(tensor0(0f32).into_tvalue()))
    }
}

impl TypedOp for TapSink {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::scalar_fact()))
    }

    as_op!();
}
