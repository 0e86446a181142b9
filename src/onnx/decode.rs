//! Protobuf → IR. Every field either becomes IR structure or is kept in a [`Carry`].
//!
//! What is impossible is refused here, naming the file and the tensor or function: an
//! `ai.onnx` import newer than [`super::MAX_OPSET`], and a tensor whose dims cannot be
//! addressed or whose data does not hold what its dims need ([`ConstTensor::check_size`]),
//! so that no later step multiplies or allocates from such dims.

use super::proto;
use super::OnnxError;
use crate::ir::{
    Attr, AttrValue, Carry, ConstTensor, DType, Dim, Graph, Model, Op, OpsetImport, TensorData,
    Value, ValueId, ValueType,
};
use prost::Message;
use std::path::{Path, PathBuf};

/// Reads and decodes a model file; external data is resolved next to it.
pub fn read_model(path: &Path) -> Result<Model, OnnxError> {
    let bytes = std::fs::read(path).map_err(|e| OnnxError::Io {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    decode_model(&bytes, &super::external::base_dir(path), path)
}

/// Decodes model bytes. `base_dir` resolves external data; `origin` names the file in errors.
pub fn decode_model(bytes: &[u8], base_dir: &Path, origin: &Path) -> Result<Model, OnnxError> {
    if bytes.is_empty() {
        return Err(OnnxError::Decode {
            path: origin.to_path_buf(),
            what: "file is empty".into(),
        });
    }
    let mut p = proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        path: origin.to_path_buf(),
        what: format!("not a valid ONNX protobuf ({e})"),
    })?;
    let Some(graph) = p.graph.take() else {
        return Err(OnnxError::Decode {
            path: origin.to_path_buf(),
            what: "model has no graph (not an ONNX model?)".into(),
        });
    };
    check_opsets(&p, origin)?;
    let cx = Cx {
        base_dir: base_dir.to_path_buf(),
        origin: origin.to_path_buf(),
    };
    let graph = cx.graph(graph)?;
    // The entries stay in the carried bytes as written (a domain left out and a domain
    // written empty are the same import but not the same bytes); encode writes them back
    // unless the IR's list changed.
    let opsets = p.opset_import.iter().map(opset_of).collect();
    let ir_version = p.ir_version.take();
    let model = Model {
        ir_version,
        opsets,
        graph,
        carry: Carry(p.encode_to_vec()),
    };
    model.verify().map_err(|e| OnnxError::Invalid {
        path: origin.to_path_buf(),
        error: e,
    })?;
    Ok(model)
}

/// The IR form of one `opset_import` entry (an absent domain is the default one).
pub(crate) fn opset_of(o: &proto::OperatorSetIdProto) -> OpsetImport {
    OpsetImport {
        domain: o.domain.clone().unwrap_or_default(),
        version: o.version.unwrap_or(0),
    }
}

/// Refuses an `ai.onnx` import (of the model or of a model-local function) newer than
/// [`super::MAX_OPSET`].
fn check_opsets(p: &proto::ModelProto, origin: &Path) -> Result<(), OnnxError> {
    let imports =
        p.opset_import
            .iter()
            .map(|o| (o, String::new()))
            .chain(p.functions.iter().flat_map(|f| {
                let owner = format!(" (local function '{}')", f.name.as_deref().unwrap_or(""));
                f.opset_import.iter().map(move |o| (o, owner.clone()))
            }));
    for (o, owner) in imports {
        let default = matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx"));
        let v = o.version.unwrap_or(0);
        if default && v > super::MAX_OPSET {
            return Err(OnnxError::Decode {
                path: origin.to_path_buf(),
                what: format!(
                    "imports ai.onnx opset {v}{owner}, newer than the newest opset qrange knows ({}, ONNX 1.23.2)",
                    super::MAX_OPSET
                ),
            });
        }
    }
    Ok(())
}

struct Cx {
    base_dir: PathBuf,
    origin: PathBuf,
}

impl Cx {
    fn err(&self, what: String) -> OnnxError {
        OnnxError::Decode {
            path: self.origin.clone(),
            what,
        }
    }

    fn graph(&self, p: proto::GraphProto) -> Result<Graph, OnnxError> {
        let gname = p.name.clone().unwrap_or_default();
        let mut g = Graph::new(p.name.clone());
        let carry = proto::GraphProto {
            doc_string: p.doc_string,
            quantization_annotation: p.quantization_annotation,
            metadata_props: p.metadata_props,
            ..Default::default()
        };
        g.carry = Carry(carry.encode_to_vec());

        for vi in &p.input {
            let v = self.value_info(&mut g, vi, &gname)?;
            g.inputs.push(v);
        }
        // Dense and sparse initializers keep their file order within each list;
        // dense come first in `initializers`, as the encoder writes them.
        for t in p.initializer {
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(self.err(format!("graph '{gname}': an initializer has no name")));
            }
            let ct = self.tensor(t, "")?;
            let v = self.ensure(&mut g, &name);
            if g.value(v).init.is_some() {
                return Err(self.err(format!("initializer '{name}' is defined twice")));
            }
            let tid = g.add_tensor(ct);
            g.value_mut(v).init = Some(tid);
            g.initializers.push(v);
        }
        for s in p.sparse_initializer {
            let values = s.values.clone().unwrap_or_default();
            let name = values.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(self.err(format!("graph '{gname}': a sparse initializer has no name")));
            }
            let ct = ConstTensor {
                name: Some(name.clone()),
                dtype: DType::from_onnx(values.data_type.unwrap_or(0)),
                dims: s.dims.clone(),
                data: TensorData::Sparse(Carry(s.encode_to_vec())),
                was_external: false,
                carry: Carry::default(),
            };
            self.check_size(&ct, "")?;
            let v = self.ensure(&mut g, &name);
            if g.value(v).init.is_some() {
                return Err(self.err(format!("initializer '{name}' is defined twice")));
            }
            let tid = g.add_tensor(ct);
            g.value_mut(v).init = Some(tid);
            g.initializers.push(v);
        }
        for vi in &p.value_info {
            let v = self.value_info(&mut g, vi, &gname)?;
            g.value_info.push(v);
        }
        for (i, n) in p.node.into_iter().enumerate() {
            self.node(&mut g, n, i as u32)?;
        }
        for vi in &p.output {
            let v = self.value_info(&mut g, vi, &gname)?;
            g.outputs.push(v);
        }
        Ok(g)
    }

    fn ensure(&self, g: &mut Graph, name: &str) -> ValueId {
        match g.value_by_name(name) {
            Some(v) => v,
            None => g
                .add_value(Value {
                    name: name.to_string(),
                    ty: None,
                    init: None,
                    carry: Carry::default(),
                })
                .expect("name checked free"),
        }
    }

    fn value_info(
        &self,
        g: &mut Graph,
        vi: &proto::ValueInfoProto,
        gname: &str,
    ) -> Result<ValueId, OnnxError> {
        let name = vi.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(self.err(format!(
                "graph '{gname}': an input, output or value_info entry has no name"
            )));
        }
        let v = self.ensure(g, &name);
        let val = g.value_mut(v);
        if val.ty.is_none() {
            val.ty = vi.r#type.as_ref().map(type_from_proto);
            let mut carry = vi.clone();
            carry.name = None;
            carry.r#type = None;
            val.carry = Carry(carry.encode_to_vec());
        }
        Ok(v)
    }

    fn node(&self, g: &mut Graph, n: proto::NodeProto, index: u32) -> Result<(), OnnxError> {
        let nname = n.name.clone().unwrap_or_default();
        let op_type = n.op_type.clone().unwrap_or_default();
        if op_type.is_empty() {
            return Err(self.err(format!("node #{index} '{nname}' has no op_type")));
        }
        let inputs: Vec<Option<ValueId>> = n
            .input
            .iter()
            .map(|s| (!s.is_empty()).then(|| self.ensure(g, s)))
            .collect();
        let outputs: Vec<Option<ValueId>> = n
            .output
            .iter()
            .map(|s| (!s.is_empty()).then(|| self.ensure(g, s)))
            .collect();
        let mut attrs = Vec::with_capacity(n.attribute.len());
        for a in n.attribute {
            attrs.push(self.attr(a, &nname, &op_type)?);
        }
        let carry = proto::NodeProto {
            overload: n.overload,
            doc_string: n.doc_string,
            metadata_props: n.metadata_props,
            device_configurations: n.device_configurations,
            ..Default::default()
        };
        let op = Op {
            name: n.name,
            op_type,
            domain: n.domain,
            attrs,
            n_inputs: 0,
            n_outputs: 0,
            order: (index, 0),
            carry: Carry(carry.encode_to_vec()),
        };
        g.add_op(op, &inputs, &outputs)
            .map_err(|e| OnnxError::Decode {
                path: self.origin.clone(),
                what: e.to_string(),
            })?;
        Ok(())
    }

    fn attr(&self, a: proto::AttributeProto, node: &str, op_type: &str) -> Result<Attr, OnnxError> {
        use proto::attribute_proto::AttributeType as T;
        let name = a.name.clone().unwrap_or_default();
        let kind = match a.r#type {
            Some(t) if t != 0 => t,
            _ => infer_attr_type(&a),
        };
        let mut carry = proto::AttributeProto {
            ref_attr_name: a.ref_attr_name.clone(),
            doc_string: a.doc_string.clone(),
            r#type: Some(a.r#type.unwrap_or(super::UNTYPED_ATTR)),
            ..Default::default()
        };
        let owner = format!("node '{node}' ({op_type}) attribute '{name}'");
        let value = match T::try_from(kind) {
            Ok(T::Float) => AttrValue::Float(a.f.unwrap_or(0.0)),
            Ok(T::Int) => AttrValue::Int(a.i.unwrap_or(0)),
            Ok(T::String) => AttrValue::String(a.s.clone().unwrap_or_default()),
            Ok(T::Tensor) => AttrValue::Tensor(Box::new(
                self.tensor(a.t.clone().unwrap_or_default(), &owner)?,
            )),
            Ok(T::Graph) => {
                AttrValue::Graph(Box::new(self.graph(a.g.clone().unwrap_or_default())?))
            }
            Ok(T::Floats) => AttrValue::Floats(a.floats.clone()),
            Ok(T::Ints) => AttrValue::Ints(a.ints.clone()),
            Ok(T::Strings) => AttrValue::Strings(a.strings.clone()),
            Ok(T::Tensors) => AttrValue::Tensors(
                a.tensors
                    .iter()
                    .map(|t| self.tensor(t.clone(), &owner))
                    .collect::<Result<_, _>>()?,
            ),
            Ok(T::Graphs) => AttrValue::Graphs(
                a.graphs
                    .iter()
                    .map(|x| self.graph(x.clone()))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                // sparse tensors, type protos, undefined: keep the whole attribute
                let mut whole = a.clone();
                whole.name = None;
                carry = whole;
                AttrValue::Opaque(kind)
            }
        };
        if name.is_empty() {
            return Err(self.err(format!(
                "node '{node}' ({op_type}) has an attribute with no name"
            )));
        }
        Ok(Attr {
            name,
            value,
            carry: Carry(carry.encode_to_vec()),
        })
    }

    /// Decodes a tensor (an initializer, or a tensor attribute of `owner`) and refuses one
    /// whose dims or data size are impossible ([`ConstTensor::check_size`]), naming it (or,
    /// for an unnamed tensor attribute, its `owner`).
    fn tensor(&self, t: proto::TensorProto, owner: &str) -> Result<ConstTensor, OnnxError> {
        let ct = super::tensor::const_tensor(t, &self.base_dir, &self.origin)?;
        self.check_size(&ct, owner)?;
        Ok(ct)
    }

    fn check_size(&self, t: &ConstTensor, owner: &str) -> Result<(), OnnxError> {
        t.check_size().map_err(|e| {
            let crate::ir::value::TensorDataError::Bad { name, what } = e;
            self.err(match (name.is_empty(), owner.is_empty()) {
                (true, false) => format!("{owner}: {what}"),
                _ => format!("tensor '{name}': {what}"),
            })
        })
    }
}

fn infer_attr_type(a: &proto::AttributeProto) -> i32 {
    use proto::attribute_proto::AttributeType as T;
    let t = if a.f.is_some() {
        T::Float
    } else if a.i.is_some() {
        T::Int
    } else if a.s.is_some() {
        T::String
    } else if a.t.is_some() {
        T::Tensor
    } else if a.g.is_some() {
        T::Graph
    } else if a.sparse_tensor.is_some() {
        T::SparseTensor
    } else if a.tp.is_some() {
        T::TypeProto
    } else if !a.floats.is_empty() {
        T::Floats
    } else if !a.ints.is_empty() {
        T::Ints
    } else if !a.strings.is_empty() {
        T::Strings
    } else if !a.tensors.is_empty() {
        T::Tensors
    } else if !a.graphs.is_empty() {
        T::Graphs
    } else if !a.sparse_tensors.is_empty() {
        T::SparseTensors
    } else if !a.type_protos.is_empty() {
        T::TypeProtos
    } else {
        T::Undefined
    };
    t as i32
}

/// Converts a `TypeProto`: plain tensor types become [`ValueType::Tensor`], anything else opaque.
pub(crate) fn type_from_proto(t: &proto::TypeProto) -> ValueType {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value as V;
    if t.denotation.is_none() {
        if let Some(V::TensorType(tt)) = &t.value {
            if let Some(et) = tt.elem_type.filter(|&e| e != 0) {
                let plain_dims = tt
                    .shape
                    .as_ref()
                    .is_none_or(|s| s.dim.iter().all(|d| d.denotation.is_none()));
                if plain_dims {
                    let shape = tt.shape.as_ref().map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match &d.value {
                                Some(D::DimValue(v)) => Dim::Known(*v),
                                Some(D::DimParam(p)) => Dim::Param(p.clone()),
                                None => Dim::Unknown,
                            })
                            .collect()
                    });
                    return ValueType::Tensor {
                        dtype: DType::from_onnx(et),
                        shape,
                    };
                }
            }
        }
    }
    ValueType::Opaque(Carry(t.encode_to_vec()))
}
