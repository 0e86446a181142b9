//! The IR (work in progress).
pub mod tensor;
