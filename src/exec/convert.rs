//! Host [`Tensor`] ⇄ engine tensor conversion.
//!
//! The engine has no 4-bit or bfloat16 element type: 4-bit values travel widened to one byte
//! each (int4 as i8, uint4 as u8, values unchanged) and are given back their logical type here;
//! bfloat16 is refused.

use crate::ir::tensor::{DType, Tensor};
use tract_onnx::prelude::{DatumType, Tensor as TractTensor, TractResult};
use tract_onnx::tract_hir::internal::bail;

/// The engine element type that stores values of `dtype` (`None` if it has none).
pub(crate) fn storage_datum(dtype: DType) -> Option<DatumType> {
    Some(match dtype {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 => DatumType::F16,
        DType::I8 | DType::I4 => DatumType::I8,
        DType::U8 | DType::U4 => DatumType::U8,
        DType::I16 => DatumType::I16,
        DType::U16 => DatumType::U16,
        DType::I32 => DatumType::I32,
        DType::U32 => DatumType::U32,
        DType::I64 => DatumType::I64,
        DType::U64 => DatumType::U64,
        DType::Bool => DatumType::Bool,
        DType::String => DatumType::String,
        _ => return None,
    })
}

/// The host element type of an engine element type, when it has one.
pub(crate) fn host_dtype(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::F16 => DType::F16,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::I16 => DType::I16,
        DatumType::U16 => DType::U16,
        DatumType::I32 => DType::I32,
        DatumType::U32 => DType::U32,
        DatumType::I64 => DType::I64,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::Bool,
        DatumType::String => DType::String,
        _ => return None,
    })
}

/// Converts a host tensor for the engine (4-bit values widened to bytes). bfloat16 is refused.
pub(crate) fn to_engine(t: &Tensor) -> Result<TractTensor, DType> {
    Ok(match t {
        Tensor::F32(a) => a.clone().into(),
        Tensor::F64(a) => a.clone().into(),
        Tensor::F16(a) => a.clone().into(),
        Tensor::I8(a) | Tensor::I4(a) => a.clone().into(),
        Tensor::U8(a) | Tensor::U4(a) => a.clone().into(),
        Tensor::I16(a) => a.clone().into(),
        Tensor::U16(a) => a.clone().into(),
        Tensor::I32(a) => a.clone().into(),
        Tensor::U32(a) => a.clone().into(),
        Tensor::I64(a) => a.clone().into(),
        Tensor::U64(a) => a.clone().into(),
        Tensor::Bool(a) => a.clone().into(),
        Tensor::Str(a) => a.clone().into(),
        Tensor::BF16(_) => return Err(DType::BF16),
    })
}

/// Converts an engine tensor to a host tensor. `logical` re-labels widened storage: an i8 tensor
/// holding int4 values becomes [`Tensor::I4`], a u8 one holding uint4 values [`Tensor::U4`].
pub(crate) fn to_host(t: &TractTensor, logical: Option<DType>) -> TractResult<Tensor> {
    let host = match t.datum_type() {
        DatumType::F32 => Tensor::F32(t.to_plain_array_view::<f32>()?.to_owned()),
        DatumType::F64 => Tensor::F64(t.to_plain_array_view::<f64>()?.to_owned()),
        DatumType::F16 => Tensor::F16(t.to_plain_array_view::<half::f16>()?.to_owned()),
        DatumType::I8 => Tensor::I8(t.to_plain_array_view::<i8>()?.to_owned()),
        DatumType::U8 => Tensor::U8(t.to_plain_array_view::<u8>()?.to_owned()),
        DatumType::I16 => Tensor::I16(t.to_plain_array_view::<i16>()?.to_owned()),
        DatumType::U16 => Tensor::U16(t.to_plain_array_view::<u16>()?.to_owned()),
        DatumType::I32 => Tensor::I32(t.to_plain_array_view::<i32>()?.to_owned()),
        DatumType::U32 => Tensor::U32(t.to_plain_array_view::<u32>()?.to_owned()),
        DatumType::I64 => Tensor::I64(t.to_plain_array_view::<i64>()?.to_owned()),
        DatumType::U64 => Tensor::U64(t.to_plain_array_view::<u64>()?.to_owned()),
        DatumType::Bool => Tensor::Bool(t.to_plain_array_view::<bool>()?.to_owned()),
        DatumType::String => Tensor::Str(t.to_plain_array_view::<String>()?.to_owned()),
        // shape computations the engine keeps symbolic; concrete by the time they are output
        DatumType::TDim => {
            Tensor::I64(t.cast_to::<i64>()?.to_plain_array_view::<i64>()?.to_owned())
        }
        other => bail!("element type {other:?} has no host representation"),
    };
    Ok(match (logical, host) {
        (Some(DType::I4), Tensor::I8(a)) => Tensor::I4(a),
        (Some(DType::U4), Tensor::U8(a)) => Tensor::U4(a),
        (_, host) => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn round_trips_and_relabels_four_bit() {
        let t = Tensor::I4(arr1(&[-8i8, 7, 0]).into_dyn());
        let e = to_engine(&t).unwrap();
        assert_eq!(e.datum_type(), DatumType::I8);
        assert_eq!(
            to_host(&e, None).unwrap(),
            Tensor::I8(arr1(&[-8i8, 7, 0]).into_dyn())
        );
        assert_eq!(to_host(&e, Some(DType::I4)).unwrap(), t);
        let f = Tensor::F16(arr1(&[half::f16::from_f32(1.5)]).into_dyn());
        assert_eq!(to_host(&to_engine(&f).unwrap(), None).unwrap(), f);
        let b = Tensor::BF16(arr1(&[half::bf16::ONE]).into_dyn());
        assert_eq!(to_engine(&b).unwrap_err(), DType::BF16);
    }

    #[test]
    fn symbolic_dims_come_back_as_i64() {
        use tract_onnx::prelude::{tensor1, TDim};
        let t = tensor1(&[TDim::from(3), TDim::from(7)]);
        assert_eq!(
            to_host(&t, None).unwrap(),
            Tensor::I64(arr1(&[3i64, 7]).into_dyn())
        );
    }
}
