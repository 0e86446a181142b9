//! The switchable fake quantization of the simulation model (`tune::sim`), as one engine op.
//!
//! `QrangeFakeQuant(x, off, scale, zp, lo, hi, on[, qscale])` (domain [`FAKE_QUANT_DOMAIN`])
//! computes, when the scalar `on` is true, what `DequantizeLinear(QuantizeLinear(x))`
//! computes on an f32 tensor, step by step in f32 as ONNX defines them (and as the
//! element-wise ops `Div, Round, Add, Max, Min, Sub, Mul` would):
//! `y = (min(max(round_half_even(x / qscale) + zp, lo), hi) - zp) * scale`, where `qscale`
//! (the QuantizeLinear's scale) defaults to `scale` and differs from it where a Div/Mul by
//! a constant is folded into the pair (`quant::params::ScaleFold`); when `on` is false it
//! returns `off` (the value passed through). One node per switch instead of eight
//! keeps the simulation graph the size of the quantized model, which the engine's optimizer
//! needs: its cost grows faster than linearly with the node count.
//!
//! Only the simulation model uses it; it is never written to a model file.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Op type of the fake quantization.
pub(crate) const FAKE_QUANT_OP: &str = "QrangeFakeQuant";
/// Its domain.
pub(crate) const FAKE_QUANT_DOMAIN: &str = "qrange";

/// Op builder.
pub(crate) fn fake_quant_builder(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(FakeQuantExpansion), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FakeQuantExpansion;

impl Expansion for FakeQuantExpansion {
    fn name(&self) -> StaticName {
        FAKE_QUANT_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() != 7 && inputs.len() != 8 {
            bail!("{FAKE_QUANT_OP} takes 7 or 8 inputs, got {}", inputs.len());
        }
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        s.equals(&inputs[1].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        target.wire_node(prefix, FakeQuant, inputs)
    }
}

/// The typed op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FakeQuant;

impl Op for FakeQuant {
    fn name(&self) -> StaticName {
        FAKE_QUANT_OP.into()
    }

    op_as_typed_op!();
}

fn scalar<T: Datum + Copy>(t: &TValue, what: &str) -> TractResult<T> {
    t.to_plain_array_view::<T>()?
        .iter()
        .next()
        .copied()
        .with_context(|| format!("{FAKE_QUANT_OP}: empty {what}"))
}

/// `(min(max(round_half_even(x / qs) + z, lo), hi) - z) * s`, each step rounded to f32.
///
/// Written without branches so that the loop over a tensor vectorises: rounding adds and
/// subtracts 1.5 · 2^23 (exact half-to-even for |v| < 2^22; larger values are integers or
/// beyond any 16-bit grid, where the clamp decides), and NaN passes through as ONNX's
/// Max/Min propagate it.
#[inline(always)]
pub(crate) fn fake_quant(x: f32, qs: f32, s: f32, z: f32, lo: f32, hi: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    let r = x / qs;
    let rounded = (r + M) - M;
    let r = if r.abs() < 4_194_304.0 { rounded } else { r };
    let q = r + z;
    // Comparisons are false for NaN, which so passes through.
    let c = if q < lo { lo } else { q };
    let c = if c > hi { hi } else { c };
    (c - z) * s
}

/// [`fake_quant`] over a slice, compiled once per instruction set (chosen at run time);
/// every one gives the same bits: the same IEEE operations, more of them at once.
struct FakeQuantSlice<'a> {
    values: &'a mut [f32],
    /// Quantize scale, dequantize scale, zero point, lower and upper bound.
    params: [f32; 5],
}

impl pulp::WithSimd for FakeQuantSlice<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let [qs, s, z, lo, hi] = self.params;
        for v in self.values.iter_mut() {
            *v = fake_quant(*v, qs, s, z, lo, hi);
        }
    }
}

/// [`fake_quant`] over `values` with `[quantize scale, scale, zero point, lower, upper]`,
/// compiled for `arch`.
fn fake_quant_slice(arch: pulp::Arch, values: &mut [f32], params: [f32; 5]) {
    arch.dispatch(FakeQuantSlice { values, params });
}

impl EvalOp for FakeQuant {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let on: bool = scalar(&inputs[6], "on")?;
        if !on {
            return Ok(tvec!(inputs[1].clone()));
        }
        let s: f32 = scalar(&inputs[2], "scale")?;
        let z: f32 = scalar(&inputs[3], "zero point")?;
        let lo: f32 = scalar(&inputs[4], "lower bound")?;
        let hi: f32 = scalar(&inputs[5], "upper bound")?;
        let qs: f32 = match inputs.get(7) {
            Some(t) => scalar(t, "quantize scale")?,
            None => s,
        };
        // The input by value: a value no other op reads is then updated in place, not copied.
        let x = inputs
            .into_iter()
            .next()
            .context("fake quantization: no input")?;
        let mut y = x.into_tensor();
        let mut view = y.to_plain_array_view_mut::<f32>()?;
        match view.as_slice_mut() {
            Some(values) => fake_quant_slice(pulp::Arch::new(), values, [qs, s, z, lo, hi]),
            None => view.mapv_inplace(|v| fake_quant(v, qs, s, z, lo, hi)),
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for FakeQuant {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::{fake_quant, fake_quant_slice};

    /// `base` fake-quantized with `params` on the CPU's vector build, after checking that
    /// the scalar build and the element-wise definition give the same bits.
    fn same_bits_everywhere(base: &[f32], params: [f32; 5]) -> Vec<f32> {
        let (mut fast, mut scalar) = (base.to_vec(), base.to_vec());
        fake_quant_slice(pulp::Arch::new(), &mut fast, params);
        fake_quant_slice(pulp::Arch::Scalar, &mut scalar, params);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&scalar));
        let [qs, s, z, lo, hi] = params;
        let one_by_one: Vec<f32> = base
            .iter()
            .map(|&x| fake_quant(x, qs, s, z, lo, hi))
            .collect();
        assert_eq!(bits(&fast), bits(&one_by_one));
        fast
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let base: Vec<f32> = (0..4099)
            .map(|i| ((i as f32 * 0.377).sin() * 30.0) + (i % 5) as f32 * 0.05)
            .chain([f32::NAN, -0.0, 1e30, -1e30, 2.5, -2.5])
            .collect();
        same_bits_everywhere(&base, [0.1, 0.1, 10.0, 0.0, 255.0]);
    }

    #[test]
    fn matches_quantize_then_dequantize() {
        // u8, scale 0.1, zero point 10: 0.25 -> 2.5 rounds to 2 (half to even) -> 12 -> 0.2.
        assert_eq!(
            fake_quant(0.25, 0.1, 0.1, 10.0, 0.0, 255.0),
            (12.0 - 10.0) * 0.1
        );
        // Clamped at both ends.
        assert_eq!(
            fake_quant(100.0, 0.1, 0.1, 10.0, 0.0, 255.0),
            (255.0 - 10.0) * 0.1
        );
        assert_eq!(
            fake_quant(-100.0, 0.1, 0.1, 10.0, 0.0, 255.0),
            (0.0 - 10.0) * 0.1
        );
        assert!(fake_quant(f32::NAN, 0.1, 0.1, 10.0, 0.0, 255.0).is_nan());
        // Beyond the exact-rounding range the clamp decides.
        assert_eq!(
            fake_quant(1e30, 1e-3, 1e-3, 0.0, -127.0, 127.0),
            127.0 * 1e-3
        );
        // Ties to even on both sides of zero.
        assert_eq!(fake_quant(1.5, 1.0, 1.0, 0.0, -127.0, 127.0), 2.0);
        assert_eq!(fake_quant(2.5, 1.0, 1.0, 0.0, -127.0, 127.0), 2.0);
        assert_eq!(fake_quant(-2.5, 1.0, 1.0, 0.0, -127.0, 127.0), -2.0);
    }

    #[test]
    fn a_folded_division_quantizes_with_its_own_scale() {
        // x / 6 on u8 with scale 0.1, zero point 10, the Div folded: quantize with 0.6.
        // 1.5 / 0.6 = 2.5 -> 2 (half to even) -> 12 -> (12 - 10) * 0.1.
        assert_eq!(
            fake_quant(1.5, 0.6, 0.1, 10.0, 0.0, 255.0),
            (12.0 - 10.0) * 0.1
        );
        // Same bits on every instruction set with distinct scales too.
        let base: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.61).cos() * 40.0).collect();
        let fast = same_bits_everywhere(&base, [0.6, 0.1, 10.0, 0.0, 255.0]);
        for (x, y) in base.iter().zip(&fast) {
            // The quantization of x / 6: within half a step of it, clamped to the grid's
            // [(0 - 10) * 0.1, (255 - 10) * 0.1].
            let expected = (x / 6.0).clamp(-1.0, 24.5);
            assert!(
                (y - expected).abs() <= 0.05 + 1e-6,
                "{x}: {y} vs {expected}"
            );
        }
    }
}
