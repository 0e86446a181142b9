//! The intermediate representation: graphs, values, constants and the one decoder of
//! their stored values (`payload`), external data read on demand (`external`), shapes,
//! verification, scopes (where each subgraph sits and which graph defines a captured name)
//! and the text dump.
//!
//! The IR knows nothing of protobuf, tract or the command line. Fields it does not
//! model are held as opaque [`Carry`] bytes that only `crate::onnx` reads.

pub mod dump;
pub mod eval;
pub mod external;
pub mod graph;
pub mod payload;
pub mod scope;
pub mod tensor;
pub mod value;

pub use graph::{Attr, AttrValue, Carry, Graph, GraphError, Op, OpId, TensorId, Value, ValueId};
pub use tensor::{DType, Tensor};
pub use value::{ConstTensor, Dim, ExternalRef, TensorData, ValueType};

/// One entry of a model's `opset_import`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsetImport {
    /// `""` is the default ONNX domain.
    pub domain: String,
    pub version: i64,
}

/// A whole model: the main graph plus model-level fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub ir_version: Option<i64>,
    pub opsets: Vec<OpsetImport>,
    pub graph: Graph,
    /// Unmodelled `ModelProto` fields: producer, doc string, metadata, functions,
    /// training info, device configuration; also `opset_import` as written (encoding
    /// keeps those bytes while `opsets` still equals them).
    pub carry: Carry,
}

impl Model {
    /// The opset version imported for `domain` (`""` or `ai.onnx` = default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let d = if domain == "ai.onnx" { "" } else { domain };
        self.opsets
            .iter()
            .find(|o| o.domain == d || (d.is_empty() && o.domain == "ai.onnx"))
            .map(|o| o.version)
    }

    /// Checks every invariant of the main graph and its subgraphs.
    pub fn verify(&self) -> Result<(), GraphError> {
        self.graph.verify(&[])
    }
}
