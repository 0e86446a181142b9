//! qrange: a quantizing compiler for ONNX models (architecture map to follow).
pub mod exec;
pub mod ir;
pub mod onnx;
pub mod quant;
