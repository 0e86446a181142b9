//! Quantization numerics: the ground truth for every quantized value qrange computes.
//!
//! [`kernels`] implements ONNX `QuantizeLinear` / `DequantizeLinear` exactly (per-tensor, per-axis
//! and blocked; 16-, 8- and 4-bit integer types; float32, float16 and bfloat16 scales), matching
//! ONNX Runtime bit for bit. [`nbits`] dequantizes ONNX Runtime's packed low-bit weights
//! (com.microsoft MatMulNBits, GatherBlockQuantized) as ONNX Runtime does; [`integer`] holds
//! dynamic quantization (DynamicQuantizeLinear) and the integer products (MatMulInteger,
//! MatMulIntegerToFloat, DynamicQuantizeMatMul), [`lstm`] com.microsoft DynamicQuantizeLSTM
//! (ONNX Runtime's CPU kernel, its sigmoid and tanh approximations included). The execution
//! engine runs these kernels in place of its own ops, and passes use them wherever they need a
//! quantized value. [`params`]
//! turns real ranges into scales and zero points; [`rules`] is the per-op rule table passes read;
//! [`embedding`] finds the embedding tables any mode stores in 8 bits per row; [`smooth`] holds
//! SmoothQuant's migration factors;
//! [`equalize`] cross-layer equalization's per-channel weight ranges and factors;
//! [`adaround`] learned up/down rounding of a layer's uniform weights; [`budget`] the storage
//! of each weight a size budget chooses; [`gemm_fusion`] when ONNX Runtime fuses a MatMul and
//! its bias Add into a Gemm.

pub mod adaround;
pub mod budget;
pub mod codebook;
pub mod embedding;
pub mod equalize;
pub mod gemm_fusion;
pub mod integer;
pub mod kernels;
pub mod lstm;
pub mod nbits;
pub mod params;
pub mod plan;
pub mod rules;
pub mod smooth;
pub mod weight_only;

pub use kernels::{
    dequantize_linear, fake_quantize, integer_range, quantize_linear, quantize_output_dtype,
    quantize_value, DequantizeAttrs, Granularity, QuantError, QuantizeAttrs,
};
