//! qrange: a quantizing compiler for ONNX models (architecture map to follow).
pub mod cli;
pub mod ir;
pub mod onnx;
pub mod passes;
