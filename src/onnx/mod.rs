//! ONNX protobuf: the generated types, decoding into the IR (models, and every
//! `TensorProto` through `tensor`, standalone tensor files included), encoding back,
//! external data and model-level facts (producer, functions) that the IR carries opaquely.
//!
//! **Invariant:** decode → encode is lossless: every field of the file is either IR
//! structure or carried bytes, and `decode(encode(decode(x))) == decode(x)`.

pub mod decode;
pub mod encode;
pub mod external;
pub mod tensor;

pub use decode::{decode_model, read_model};
pub use encode::{
    encode_model, encoded_size, engine_proto, model_to_bytes, write_identity, write_model,
    ExternalPolicy, WriteReport,
};
pub use external::base_dir;

use std::path::PathBuf;

/// Generated ONNX protobuf types (`proto/onnx.proto`, ONNX 1.23.2).
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Newest `ai.onnx` opset of the vendored schema's release (ONNX 1.23.2, recorded in
/// `tests/conformance/opset_changes.txt`, which the conformance check regenerates from the
/// `onnx` package). A model or model-local function importing a newer one is refused on
/// decode: no operator of that opset is known, and ONNX Runtime refuses such a model.
pub const MAX_OPSET: i64 = 28;

/// Marks, in an attribute's carried bytes, that the file gave it no `type`: the encoder writes
/// it back without one. (Attributes that passes create have no carried type at all and get the
/// type of their value.)
pub(crate) const UNTYPED_ATTR: i32 = -1;

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

/// A model-local function as the opset upgrade needs to see it: what it imports and which
/// operators its body (and the subgraphs inside it) calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionSummary {
    pub domain: String,
    pub name: String,
    pub opsets: Vec<crate::ir::OpsetImport>,
    /// `(domain, op_type, node name)` of every body node, in body order, nested ones included.
    pub nodes: Vec<(String, String, String)>,
}

/// The model-local functions carried by `m`, in file order.
pub fn local_functions(m: &crate::ir::Model) -> Vec<FunctionSummary> {
    use prost::Message;
    fn walk(nodes: &[proto::NodeProto], out: &mut Vec<(String, String, String)>) {
        for n in nodes {
            out.push((
                n.domain.clone().unwrap_or_default(),
                n.op_type.clone().unwrap_or_default(),
                n.name.clone().unwrap_or_default(),
            ));
            for a in &n.attribute {
                for g in a.g.iter().chain(a.graphs.iter()) {
                    walk(&g.node, out);
                }
            }
        }
    }
    let p = proto::ModelProto::decode(m.carry.0.as_slice()).unwrap_or_default();
    p.functions
        .iter()
        .map(|f| {
            let mut nodes = Vec::new();
            walk(&f.node, &mut nodes);
            FunctionSummary {
                domain: f.domain.clone().unwrap_or_default(),
                name: f.name.clone().unwrap_or_default(),
                opsets: f
                    .opset_import
                    .iter()
                    .map(|o| crate::ir::OpsetImport {
                        domain: o.domain.clone().unwrap_or_default(),
                        version: o.version.unwrap_or(0),
                    })
                    .collect(),
                nodes,
            }
        })
        .collect()
}

/// Sets the version that model-local function number `index` imports for `domain` (`""` and
/// `ai.onnx` both name the default domain). Does nothing when there is no such function or
/// import.
pub fn set_function_opset(m: &mut crate::ir::Model, index: usize, domain: &str, version: i64) {
    use prost::Message;
    let Ok(mut p) = proto::ModelProto::decode(m.carry.0.as_slice()) else {
        return;
    };
    let default = |d: &str| d.is_empty() || d == "ai.onnx";
    if let Some(f) = p.functions.get_mut(index) {
        for o in &mut f.opset_import {
            let d = o.domain.as_deref().unwrap_or("");
            if d == domain || default(d) && default(domain) {
                o.version = Some(version);
            }
        }
    }
    m.carry = crate::ir::Carry(p.encode_to_vec());
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_opset_is_the_schema_release_newest() {
        let recorded = include_str!("../../tests/conformance/opset_changes.txt")
            .lines()
            .find_map(|l| l.strip_prefix("# newest ai.onnx opset: "))
            .expect("opset_changes.txt records the newest opset");
        assert_eq!(recorded.trim().parse::<i64>().unwrap(), super::MAX_OPSET);
    }
}
