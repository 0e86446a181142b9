//! qrange: a quantizing compiler for ONNX models (architecture map to follow).
pub mod data;
pub mod ir;
pub mod onnx;
