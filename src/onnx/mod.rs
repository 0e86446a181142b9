//! ONNX protobuf: the generated types, decoding into the IR, encoding back, external
//! data and model-level facts (producer, functions) that the IR carries opaquely.
//!
//! **Invariant:** decode → encode is lossless: every field of the file is either IR
//! structure or carried bytes, and `decode(encode(decode(x))) == decode(x)`.

pub mod decode;
pub mod encode;
pub mod external;

pub use decode::{decode_model, read_model};
pub use encode::{encode_model, model_to_bytes, write_model, ExternalPolicy, WriteReport};

use std::path::PathBuf;

/// Generated ONNX protobuf types (`proto/onnx.proto`, ONNX 1.23.2).
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Errors reading or writing ONNX files.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{}: {what}", path.display())]
    Io { path: PathBuf, what: String },
    #[error("{}: {what}", path.display())]
    Decode { path: PathBuf, what: String },
    #[error("{}: {error}", path.display())]
    Invalid {
        path: PathBuf,
        error: crate::ir::GraphError,
    },
    #[error("{}: tensor '{tensor}': {what}", path.display())]
    ExternalData {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("internal error while encoding: {0}")]
    Internal(String),
}

/// Model-level facts the IR keeps in its carried bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelInfo {
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: Option<i64>,
    pub doc_string: String,
    pub metadata: Vec<(String, String)>,
    pub functions: Vec<String>,
    pub training_infos: usize,
}

/// Reads the carried model-level fields.
pub fn model_info(m: &crate::ir::Model) -> ModelInfo {
    use prost::Message;
    let p = proto::ModelProto::decode(m.carry.0.as_slice()).unwrap_or_default();
    ModelInfo {
        producer_name: p.producer_name.unwrap_or_default(),
        producer_version: p.producer_version.unwrap_or_default(),
        domain: p.domain.unwrap_or_default(),
        model_version: p.model_version,
        doc_string: p.doc_string.unwrap_or_default(),
        metadata: p
            .metadata_props
            .into_iter()
            .map(|kv| (kv.key.unwrap_or_default(), kv.value.unwrap_or_default()))
            .collect(),
        functions: p
            .functions
            .into_iter()
            .map(|f| {
                let d = f.domain.unwrap_or_default();
                let n = f.name.unwrap_or_default();
                if d.is_empty() {
                    n
                } else {
                    format!("{d}.{n}")
                }
            })
            .collect(),
        training_infos: p.training_info.len(),
    }
}
