//! Test support for passes: small models built in code, deterministic values, and running
//! a model before and after a pass to compare outputs.

use crate::exec::{Session, SessionOptions};
use crate::ir::{Model, Tensor};
use crate::onnx::proto;
use crate::onnx::ExternalPolicy;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// Deterministic values in [-1, 1) from a seed (a small linear congruential generator).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A f32 host tensor of `shape` filled with [`values`].
pub fn tensor(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values(seed, n)).unwrap())
}

/// Builds a model from proto parts.
pub struct Builder {
    pub nodes: Vec<proto::NodeProto>,
    pub inits: Vec<proto::TensorProto>,
    pub inputs: Vec<proto::ValueInfoProto>,
    pub outputs: Vec<proto::ValueInfoProto>,
    pub opset: i64,
    pub ir_version: i64,
}

impl Builder {
    pub fn new(opset: i64) -> Builder {
        Builder {
            nodes: Vec::new(),
            inits: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            opset,
            ir_version: 7,
        }
    }

    /// Adds a node; attributes via [`attr_i`], [`attr_f`], [`attr_ints`]….
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<proto::AttributeProto>,
    ) -> &mut Builder {
        self.nodes.push(proto::NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// Adds an f32 initializer with deterministic values (scaled and shifted).
    pub fn init(
        &mut self,
        name: &str,
        dims: &[i64],
        seed: u64,
        scale: f32,
        shift: f32,
    ) -> &mut Builder {
        let n: i64 = dims.iter().product();
        let vals: Vec<f32> = values(seed, n as usize)
            .into_iter()
            .map(|v| v * scale + shift)
            .collect();
        self.inits.push(f32_tensor(name, dims, &vals));
        self
    }

    /// Adds an initializer.
    pub fn tensor(&mut self, t: proto::TensorProto) -> &mut Builder {
        self.inits.push(t);
        self
    }

    pub fn input(&mut self, name: &str, elem: i32, dims: Option<&[i64]>) -> &mut Builder {
        self.inputs.push(vi(name, elem, dims));
        self
    }

    pub fn output(&mut self, name: &str, elem: i32, dims: Option<&[i64]>) -> &mut Builder {
        self.outputs.push(vi(name, elem, dims));
        self
    }

    pub fn proto(&self) -> proto::ModelProto {
        proto::ModelProto {
            ir_version: Some(self.ir_version),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("qrange-tests".into()),
            graph: Some(self.graph("g")),
            ..Default::default()
        }
    }

    /// The graph alone (for subgraph attributes).
    pub fn graph(&self, name: &str) -> proto::GraphProto {
        proto::GraphProto {
            name: Some(name.into()),
            node: self.nodes.clone(),
            initializer: self.inits.clone(),
            input: self.inputs.clone(),
            output: self.outputs.clone(),
            ..Default::default()
        }
    }

    pub fn model(&self) -> Model {
        decode(&self.proto())
    }
}

/// Decodes a proto model into the IR.
pub fn decode(p: &proto::ModelProto) -> Model {
    crate::onnx::decode_model(&p.encode_to_vec(), Path::new("."), Path::new("<test>")).unwrap()
}

pub fn f32_tensor(name: &str, dims: &[i64], vals: &[f32]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A tensor value info; `dims` `None` = unknown rank, a negative dim = symbolic.
pub fn vi(name: &str, elem: i32, dims: Option<&[i64]>) -> proto::ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value as D, Dimension};
    proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            denotation: None,
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(elem),
                    shape: dims.map(|dims| proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                denotation: None,
                                value: Some(if d < 0 {
                                    D::DimParam(format!("d{}", -d))
                                } else {
                                    D::DimValue(d)
                                }),
                            })
                            .collect(),
                    }),
                },
            )),
        }),
        ..Default::default()
    }
}

fn attr(name: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

pub fn attr_i(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        i: Some(v),
        r#type: Some(2),
        ..attr(name)
    }
}

pub fn attr_f(name: &str, v: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        f: Some(v),
        r#type: Some(1),
        ..attr(name)
    }
}

pub fn attr_s(name: &str, v: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(3),
        ..attr(name)
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        ints: v.to_vec(),
        r#type: Some(7),
        ..attr(name)
    }
}

pub fn attr_t(name: &str, t: proto::TensorProto) -> proto::AttributeProto {
    proto::AttributeProto {
        t: Some(t),
        r#type: Some(4),
        ..attr(name)
    }
}

pub fn attr_g(name: &str, g: proto::GraphProto) -> proto::AttributeProto {
    proto::AttributeProto {
        g: Some(g),
        r#type: Some(5),
        ..attr(name)
    }
}

/// Runs `m` (all tensors inline) on one sample with the execution engine.
pub fn run(m: &Model, sample: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let (p, _) = crate::onnx::encode_model(m, &ExternalPolicy::Inline, "").unwrap();
    let s = Session::new(&p, None, sample, &SessionOptions::default()).unwrap();
    s.run(sample).unwrap()
}

/// Asserts that every output of `a` matches `b` within `rel` relative error (with an absolute
/// floor of `rel` for values near zero), and that shapes and names agree.
pub fn assert_close(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, rel: f64) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "output names differ"
    );
    for (k, x) in a {
        let y = &b[k];
        assert_eq!(x.shape(), y.shape(), "output '{k}': shapes differ");
        let (xv, yv) = (x.to_f64_vec().unwrap(), y.to_f64_vec().unwrap());
        for (i, (p, q)) in xv.iter().zip(&yv).enumerate() {
            let tol = rel * p.abs().max(q.abs()).max(1.0);
            assert!(
                (p - q).abs() <= tol,
                "output '{k}'[{i}]: {p} vs {q} (tolerance {tol:e})"
            );
        }
    }
}

/// One-sample input map.
pub fn sample(items: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Moves every raw inline initializer of `m` into one side file (`w.data` in a scratch
/// folder, removed when the returned handle is dropped).
pub fn to_side_file(m: &mut Model) -> crate::fsx::Scratch {
    values_to_side_file(m, "w.data", |_| true)
}

/// Moves the raw inline initializers of `m` whose names `take` accepts into the side file
/// `file` of a new scratch folder (removed when the returned handle is dropped).
pub fn values_to_side_file(
    m: &mut Model,
    file: &str,
    take: impl Fn(&str) -> bool,
) -> crate::fsx::Scratch {
    let (scratch, mut f) = crate::fsx::scratch(file).unwrap();
    let g = &mut m.graph;
    let mut at = 0u64;
    for v in g.values().collect::<Vec<_>>() {
        if !take(&g.value(v).name) {
            continue;
        }
        let Some(tid) = g.value(v).init else { continue };
        let c = g.tensor_mut(tid);
        let crate::ir::TensorData::Raw(bytes) = &c.data else {
            continue;
        };
        std::io::Write::write_all(&mut f, bytes).unwrap();
        let len = bytes.len() as u64;
        c.data = crate::ir::TensorData::External(crate::ir::ExternalRef {
            location: file.into(),
            offset: Some(at),
            length: Some(len),
            other: Vec::new(),
            base_dir: scratch.dir().to_path_buf(),
            file: scratch.file().to_path_buf(),
            start: at,
            len,
        });
        at += len;
    }
    scratch
}

/// A raw-data initializer (`data_type` as ONNX numbers it).
pub fn raw_tensor(name: &str, data_type: i32, dims: &[i64], bytes: Vec<u8>) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type),
        raw_data: Some(bytes),
        ..Default::default()
    }
}
