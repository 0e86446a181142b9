//! IR → protobuf, and writing model files (atomically, with optional external data).
//!
//! Tensor data is never gathered in one buffer: tensors bound for the side file are listed
//! as pieces (bytes the IR holds, borrowed, or a span of the side file they were read from)
//! and [`stage_model`] streams them one after the other into the new side file. Whether a
//! model passes protobuf's 2 GiB limit is measured before any external data is read
//! ([`encoded_size`]). For the engine, [`engine_proto`] references external data where it
//! lies instead of reading it.

use super::proto;
use super::OnnxError;
use crate::ir::{AttrValue, Carry, ConstTensor, Dim, Graph, Model, TensorData, ValueId, ValueType};
use prost::Message;
use std::path::{Path, PathBuf};

/// Where tensor data goes when writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalPolicy {
    /// Tensors read from external data go back to external data; the rest inline.
    Keep,
    /// Everything inline.
    Inline,
    /// Every initializer of at least this many bytes goes to external data.
    Threshold(u64),
    /// Tensors still in their side file are referenced there (location relative to their
    /// folder, which must be the same for all of them); the rest inline. Only for handing a
    /// model to the engine, which reads the side file itself: never written to a file.
    Reference,
}

/// What [`write_model`] wrote.
#[derive(Clone, Debug)]
pub struct WriteReport {
    pub model_bytes: u64,
    /// Side file and its size, when external data was written.
    pub external: Option<(PathBuf, u64)>,
    /// True when external data was switched on because the model would pass 2 GiB.
    pub forced_external: bool,
}

/// Largest protobuf message size we write inline (protobuf's hard limit is 2 GiB).
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - (1 << 20);

/// One tensor's bytes bound for the side file.
#[derive(Clone, Copy)]
enum Piece<'a> {
    /// Bytes the IR holds.
    Bytes(&'a [u8]),
    /// A span of the side file the tensor was read from (the tensor, for errors).
    File(&'a crate::ir::ExternalRef, &'a ConstTensor),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File(r, _) => r.len,
        }
    }
}

struct Enc<'a> {
    policy: &'a ExternalPolicy,
    side_name: String,
    side: Vec<Piece<'a>>,
    side_len: u64,
    origin: PathBuf,
    /// Measuring only: inline data is replaced by zeros of its length (never touched, so
    /// never resident) and external data is not read.
    measure: bool,
    /// The folder of the side files referenced under [`ExternalPolicy::Reference`].
    referenced_dir: Option<PathBuf>,
}

/// The encoded model and the pieces of its side file.
struct Encoded<'a> {
    proto: proto::ModelProto,
    side: Vec<Piece<'a>>,
    side_len: u64,
    referenced_dir: Option<PathBuf>,
}

fn encode<'a>(
    m: &'a Model,
    policy: &'a ExternalPolicy,
    side_name: &str,
    measure: bool,
) -> Result<Encoded<'a>, OnnxError> {
    let mut e = Enc {
        policy,
        side_name: side_name.to_string(),
        side: Vec::new(),
        side_len: 0,
        origin: PathBuf::from("<model>"),
        measure,
        referenced_dir: None,
    };
    let mut p = proto::ModelProto::decode(m.carry.0.as_slice()).map_err(carry_err)?;
    p.ir_version = m.ir_version;
    // The entries as read, byte for byte, unless the IR's list differs from them.
    let as_read: Vec<_> = p.opset_import.iter().map(super::decode::opset_of).collect();
    if as_read != m.opsets {
        p.opset_import = m
            .opsets
            .iter()
            .map(|o| proto::OperatorSetIdProto {
                domain: Some(o.domain.clone()),
                version: Some(o.version),
            })
            .collect();
    }
    p.graph = Some(e.graph(&m.graph, true)?);
    Ok(Encoded {
        proto: p,
        side: e.side,
        side_len: e.side_len,
        referenced_dir: e.referenced_dir,
    })
}

/// Encodes a model. Tensors chosen by `policy` are appended to the returned side buffer,
/// referenced as `side_name`.
pub fn encode_model(
    m: &Model,
    policy: &ExternalPolicy,
    side_name: &str,
) -> Result<(proto::ModelProto, Vec<u8>), OnnxError> {
    let enc = encode(m, policy, side_name, false)?;
    let mut side = Vec::new();
    for piece in &enc.side {
        write_piece(piece, &mut side, Path::new("<memory>"))?;
    }
    Ok((enc.proto, side))
}

/// The model for the engine: tensors still in their side file are referenced where they
/// lie ([`ExternalPolicy::Reference`]), the rest inline. Returns the folder the references
/// are relative to, when there are any.
pub fn engine_proto(m: &Model) -> Result<(proto::ModelProto, Option<PathBuf>), OnnxError> {
    let enc = encode(m, &ExternalPolicy::Reference, "", false)?;
    Ok((enc.proto, enc.referenced_dir))
}

/// Writes what identifies `m`'s content into `out` (for a digest): the model as
/// [`engine_proto`] encodes it (external data referenced where it lies), then the bytes of
/// every referenced tensor in encoding order, streamed from their files. A model without
/// external data gives exactly its inline encoding; the weights are never gathered.
pub fn write_identity(m: &Model, out: &mut impl std::io::Write) -> Result<(), OnnxError> {
    let enc = encode(m, &ExternalPolicy::Reference, "", false)?;
    let to = Path::new("<digest>");
    out.write_all(&enc.proto.encode_to_vec())
        .map_err(|e| OnnxError::Internal(e.to_string()))?;
    for piece in &enc.side {
        write_piece(piece, out, to)?;
    }
    Ok(())
}

/// Appends one piece to `out`; errors name `to` (writing) or the side file (reading).
fn write_piece(
    piece: &Piece<'_>,
    out: &mut impl std::io::Write,
    to: &Path,
) -> Result<(), OnnxError> {
    let werr = |e: std::io::Error| OnnxError::Io {
        path: to.to_path_buf(),
        what: format!("cannot write '{}': {e}", to.display()),
    };
    match piece {
        Piece::Bytes(b) => out.write_all(b).map_err(werr),
        Piece::File(r, t) => r.copy_to(out).map_err(|e| match e {
            Ok(e) => werr(e),
            Err(what) => OnnxError::ExternalData {
                path: r.file.clone(),
                tensor: t.name.clone().unwrap_or_default(),
                what,
            },
        }),
    }
}

/// Encodes a model to bytes with everything inline.
pub fn model_to_bytes(m: &Model) -> Result<Vec<u8>, OnnxError> {
    Ok(encode_model(m, &ExternalPolicy::Inline, "")?
        .0
        .encode_to_vec())
}

/// Size in bytes of `m` encoded with everything inline (0 when it cannot be encoded): what
/// size budgets and summaries measure. No tensor data is read or copied to measure it.
pub fn encoded_size(m: &Model) -> u64 {
    measured_size(m, &ExternalPolicy::Inline).unwrap_or(0)
}

/// Size of the model file `m` encodes to under `policy`, reading no tensor data.
fn measured_size(m: &Model, policy: &ExternalPolicy) -> Result<u64, OnnxError> {
    Ok(encode(m, policy, "x.data", true)?.proto.encoded_len() as u64)
}

/// Writes `m` to `path` atomically (temporary file + rename), with external data per
/// `policy` in `<file name>.data` beside it. Switches to external data when the model
/// would pass protobuf's 2 GiB limit.
pub fn write_model(
    m: &Model,
    path: &Path,
    policy: &ExternalPolicy,
) -> Result<WriteReport, OnnxError> {
    let (staged, report) = stage_model(m, path, policy)?;
    crate::fsx::commit(staged).map_err(|e| OnnxError::Io {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    Ok(report)
}

/// Writes `m` (and its external data) to temporary files beside `path` (symbolic links
/// followed), for [`crate::fsx::commit`] to rename with the command's other outputs.
pub fn stage_model(
    m: &Model,
    path: &Path,
    policy: &ExternalPolicy,
) -> Result<(Vec<crate::fsx::Staged>, WriteReport), OnnxError> {
    use std::io::Write;
    let io = |what: String| OnnxError::Io {
        path: path.to_path_buf(),
        what,
    };
    let target = crate::fsx::check_output(path).map_err(io)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fname = target
        .file_name()
        .ok_or_else(|| io("output path has no file name".into()))?
        .to_string_lossy()
        .into_owned();
    let side_name = format!("{fname}.data");
    let mut policy = policy;
    let mut forced = false;
    if measured_size(m, policy)? > PROTOBUF_LIMIT {
        policy = &ExternalPolicy::Threshold(1024);
        forced = true;
        if measured_size(m, policy)? > PROTOBUF_LIMIT {
            return Err(io(
                "model is larger than 2 GiB even with its initializers in external data".into(),
            ));
        }
    }
    let enc = encode(m, policy, &side_name, false)?;
    let side_path = dir.join(&side_name);
    let mut staged = Vec::new();
    // Side file first: renamed first, so a model file never points at missing data.
    let external = if enc.side.is_empty() {
        None
    } else {
        let mut s = crate::fsx::stage(&side_path).map_err(|e| io(e.to_string()))?;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, s.file());
            for piece in &enc.side {
                write_piece(piece, &mut w, &side_path)?;
            }
            w.flush()
                .map_err(|e| io(format!("cannot write '{}': {e}", side_path.display())))?;
        }
        staged.push(s);
        Some((side_path, enc.side_len))
    };
    let bytes = enc.proto.encode_to_vec();
    drop(enc);
    let mut s = crate::fsx::stage(&target).map_err(|e| io(e.to_string()))?;
    s.file()
        .write_all(&bytes)
        .map_err(|e| io(format!("cannot write '{}': {e}", target.display())))?;
    staged.push(s);
    Ok((
        staged,
        WriteReport {
            model_bytes: bytes.len() as u64,
            external,
            forced_external: forced,
        },
    ))
}

fn carry_err(e: prost::DecodeError) -> OnnxError {
    OnnxError::Internal(format!("carried protobuf fields do not decode: {e}"))
}

impl<'a> Enc<'a> {
    fn graph(&mut self, g: &'a Graph, top: bool) -> Result<proto::GraphProto, OnnxError> {
        let mut p = proto::GraphProto::decode(g.carry.0.as_slice()).map_err(carry_err)?;
        p.name = g.name.clone();
        let vi = |g: &Graph, v: ValueId| -> Result<proto::ValueInfoProto, OnnxError> {
            let val = g.value(v);
            let mut x = proto::ValueInfoProto::decode(val.carry.0.as_slice()).map_err(carry_err)?;
            x.name = Some(val.name.clone());
            x.r#type = match &val.ty {
                Some(t) => Some(type_to_proto(t)?),
                None => None,
            };
            Ok(x)
        };
        p.input = g
            .inputs
            .iter()
            .map(|v| vi(g, *v))
            .collect::<Result<_, _>>()?;
        p.output = g
            .outputs
            .iter()
            .map(|v| vi(g, *v))
            .collect::<Result<_, _>>()?;
        let mut listed: Vec<ValueId> = g.value_info.clone();
        // Values typed by passes (shape inference) that the file did not list.
        let order = g
            .topo_order()
            .map_err(|e| OnnxError::Internal(e.to_string()))?;
        for o in &order {
            for v in g.outputs_of(*o).into_iter().flatten() {
                if g.value(v).ty.is_some()
                    && !listed.contains(&v)
                    && !g.is_output(v)
                    && !g.is_input(v)
                {
                    listed.push(v);
                }
            }
        }
        p.value_info = listed.iter().map(|v| vi(g, *v)).collect::<Result<_, _>>()?;
        p.initializer.clear();
        p.sparse_initializer.clear();
        for v in &g.initializers {
            let t = g.const_of(*v).expect("initializer has a constant");
            if let TensorData::Sparse(c) = &t.data {
                p.sparse_initializer
                    .push(proto::SparseTensorProto::decode(c.0.as_slice()).map_err(carry_err)?);
            } else {
                let mut tp = self.tensor(t, true)?;
                tp.name = Some(g.value(*v).name.clone());
                p.initializer.push(tp);
            }
        }
        let _ = top;
        p.node = Vec::with_capacity(order.len());
        for o in order {
            let op = g.op(o);
            let mut n = proto::NodeProto::decode(op.carry.0.as_slice()).map_err(carry_err)?;
            n.name = op.name.clone();
            n.op_type = Some(op.op_type.clone());
            n.domain = op.domain.clone();
            let name_of =
                |v: Option<ValueId>| v.map(|v| g.value(v).name.clone()).unwrap_or_default();
            n.input = g.inputs_of(o).into_iter().map(name_of).collect();
            n.output = g.outputs_of(o).into_iter().map(name_of).collect();
            n.attribute = Vec::with_capacity(op.attrs.len());
            for a in &op.attrs {
                let mut x =
                    proto::AttributeProto::decode(a.carry.0.as_slice()).map_err(carry_err)?;
                x.name = Some(a.name.clone());
                match &a.value {
                    AttrValue::Float(f) => x.f = Some(*f),
                    AttrValue::Int(i) => x.i = Some(*i),
                    AttrValue::String(s) => x.s = Some(s.clone()),
                    AttrValue::Tensor(t) => x.t = Some(self.tensor(t, false)?),
                    AttrValue::Graph(sg) => x.g = Some(self.graph(sg, false)?),
                    AttrValue::Floats(v) => x.floats = v.clone(),
                    AttrValue::Ints(v) => x.ints = v.clone(),
                    AttrValue::Strings(v) => x.strings = v.clone(),
                    AttrValue::Tensors(ts) => {
                        x.tensors = ts
                            .iter()
                            .map(|t| self.tensor(t, false))
                            .collect::<Result<_, _>>()?
                    }
                    AttrValue::Graphs(gs) => {
                        x.graphs = gs
                            .iter()
                            .map(|sg| self.graph(sg, false))
                            .collect::<Result<_, _>>()?
                    }
                    AttrValue::Opaque(_) => {}
                }
                // An attribute read without a type is written without one; an attribute
                // made by a pass has no type yet and one whose value kind a pass changed has
                // a stale one: those get the type of their value.
                match (x.r#type, attr_kind(&a.value)) {
                    (Some(super::UNTYPED_ATTR), _) => x.r#type = None,
                    (None, Some(kind)) => x.r#type = Some(kind),
                    (Some(t), Some(kind)) if t != 0 && t != kind => x.r#type = Some(kind),
                    _ => {}
                }
                n.attribute.push(x);
            }
            p.node.push(n);
        }
        Ok(p)
    }

    fn tensor(
        &mut self,
        t: &'a ConstTensor,
        initializer: bool,
    ) -> Result<proto::TensorProto, OnnxError> {
        let mut p = proto::TensorProto::decode(t.carry.0.as_slice()).map_err(carry_err)?;
        p.name = t.name.clone();
        p.data_type = Some(t.dtype.onnx_code());
        p.dims = t.dims.clone();
        let (piece, len) = match &t.data {
            TensorData::External(r) => (Piece::File(r, t), r.len),
            TensorData::Raw(r) => (Piece::Bytes(r), r.len() as u64),
            TensorData::Floats(v) => return self.typed(p, |p| p.float_data = v.clone()),
            TensorData::Int32s(v) => return self.typed(p, |p| p.int32_data = v.clone()),
            TensorData::Int64s(v) => return self.typed(p, |p| p.int64_data = v.clone()),
            TensorData::Doubles(v) => return self.typed(p, |p| p.double_data = v.clone()),
            TensorData::Uint64s(v) => return self.typed(p, |p| p.uint64_data = v.clone()),
            TensorData::Strings(v) => return self.typed(p, |p| p.string_data = v.clone()),
            TensorData::Empty => return Ok(p),
            TensorData::Sparse(_) => {
                return Err(OnnxError::Internal(format!(
                    "tensor '{}' cannot be written in this position",
                    t.name.clone().unwrap_or_default()
                )))
            }
        };
        let external = match self.policy {
            ExternalPolicy::Keep => t.was_external,
            ExternalPolicy::Inline => false,
            ExternalPolicy::Threshold(n) => initializer && len >= *n,
            ExternalPolicy::Reference => {
                if let Piece::File(r, _) = piece {
                    self.side.push(piece);
                    return self.reference(p, r);
                }
                false
            }
        };
        if external && !self.side_name.is_empty() {
            let kv = |k: &str, v: String| proto::StringStringEntryProto {
                key: Some(k.to_string()),
                value: Some(v),
            };
            p.external_data = vec![
                kv("location", self.side_name.clone()),
                kv("offset", self.side_len.to_string()),
                kv("length", len.to_string()),
            ];
            p.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
            self.side_len += piece.len();
            self.side.push(piece);
        } else if self.measure {
            // Zeros of the right length: the encoded size is exact, and the pages of a
            // zeroed allocation that is never touched are never resident.
            p.raw_data = Some(vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)]);
        } else {
            p.raw_data = Some(match piece {
                Piece::Bytes(b) => b.to_vec(),
                Piece::File(..) => super::external::read(t, &self.origin)?,
            });
        }
        Ok(p)
    }

    /// A tensor stored in a typed list (always inline).
    fn typed(
        &mut self,
        mut p: proto::TensorProto,
        fill: impl FnOnce(&mut proto::TensorProto),
    ) -> Result<proto::TensorProto, OnnxError> {
        fill(&mut p);
        Ok(p)
    }

    /// A tensor left in its side file, referenced where it lies (the engine reads it).
    fn reference(
        &mut self,
        mut p: proto::TensorProto,
        r: &crate::ir::ExternalRef,
    ) -> Result<proto::TensorProto, OnnxError> {
        match &self.referenced_dir {
            Some(d) if *d != r.base_dir => {
                return Err(OnnxError::Internal(format!(
                    "external data of tensor '{}' lies in '{}', not in '{}' with the rest",
                    p.name.clone().unwrap_or_default(),
                    r.base_dir.display(),
                    d.display()
                )))
            }
            _ => self.referenced_dir = Some(r.base_dir.clone()),
        }
        let kv = |k: &str, v: String| proto::StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v),
        };
        p.external_data = vec![
            kv("location", r.location.clone()),
            kv("offset", r.start.to_string()),
            kv("length", r.len.to_string()),
        ];
        p.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        Ok(p)
    }
}

/// Converts a value type back to a `TypeProto`.
pub(crate) fn type_to_proto(t: &ValueType) -> Result<proto::TypeProto, OnnxError> {
    use proto::tensor_shape_proto::dimension::Value as D;
    Ok(match t {
        ValueType::Tensor { dtype, shape } => proto::TypeProto {
            denotation: None,
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(dtype.onnx_code()),
                    shape: shape.as_ref().map(|dims| proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| proto::tensor_shape_proto::Dimension {
                                denotation: None,
                                value: match d {
                                    Dim::Known(k) => Some(D::DimValue(*k)),
                                    Dim::Param(p) => Some(D::DimParam(p.clone())),
                                    Dim::Unknown => None,
                                },
                            })
                            .collect(),
                    }),
                },
            )),
        },
        ValueType::Opaque(Carry(b)) => proto::TypeProto::decode(b.as_slice()).map_err(carry_err)?,
    })
}

/// The `AttributeProto.AttributeType` code of a modelled attribute value.
fn attr_kind(v: &AttrValue) -> Option<i32> {
    use proto::attribute_proto::AttributeType as T;
    Some(match v {
        AttrValue::Float(_) => T::Float,
        AttrValue::Int(_) => T::Int,
        AttrValue::String(_) => T::String,
        AttrValue::Tensor(_) => T::Tensor,
        AttrValue::Graph(_) => T::Graph,
        AttrValue::Floats(_) => T::Floats,
        AttrValue::Ints(_) => T::Ints,
        AttrValue::Strings(_) => T::Strings,
        AttrValue::Tensors(_) => T::Tensors,
        AttrValue::Graphs(_) => T::Graphs,
        AttrValue::Opaque(_) => return None,
    } as i32)
}
