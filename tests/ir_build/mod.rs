//! Building small IR models in tests, value by name like an ONNX file: `op` creates the
//! values it names, so subgraph captures are plain names too.
#![allow(dead_code)]

use qrange::ir::dump::dump_model;
use qrange::ir::{
    AttrValue, Carry, ConstTensor, DType, Dim, Graph, Model, Op, OpId, OpsetImport, Tensor, Value,
    ValueId, ValueType,
};
use qrange::passes::{Pass, PassCx};

/// Dims from text: `N,3,?,8` (a name is symbolic, `?` unknown).
pub fn dims(s: &str) -> Vec<Dim> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(',')
        .map(|d| match d.trim() {
            "?" => Dim::Unknown,
            x => x
                .parse::<i64>()
                .map(Dim::Known)
                .unwrap_or_else(|_| Dim::Param(x.to_string())),
        })
        .collect()
}

pub fn ty(dtype: DType, shape: &str) -> ValueType {
    ValueType::Tensor {
        dtype,
        shape: Some(dims(shape)),
    }
}

pub fn i64s(v: &[i64]) -> Tensor {
    Tensor::I64(ndarray::Array1::from(v.to_vec()).into_dyn())
}

pub fn i64_scalar(v: i64) -> Tensor {
    Tensor::I64(ndarray::arr0(v).into_dyn())
}

pub fn f32s(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v.to_vec()).unwrap())
}

pub fn bool_scalar(v: bool) -> Tensor {
    Tensor::Bool(ndarray::arr0(v).into_dyn())
}

pub fn tensor_attr(t: &Tensor) -> AttrValue {
    AttrValue::Tensor(Box::new(ConstTensor::from_tensor(None, t)))
}

/// A graph under construction.
pub struct B {
    pub g: Graph,
}

impl B {
    pub fn new(name: &str) -> B {
        B {
            g: Graph::new(Some(name.to_string())),
        }
    }

    /// The value named `name`, created untyped if new.
    pub fn v(&mut self, name: &str) -> ValueId {
        match self.g.value_by_name(name) {
            Some(v) => v,
            None => self
                .g
                .add_value(Value {
                    name: name.to_string(),
                    ty: None,
                    init: None,
                    carry: Carry::default(),
                })
                .unwrap(),
        }
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: &str) -> &mut B {
        let v = self.v(name);
        self.g.value_mut(v).ty = Some(ty(dtype, shape));
        self.g.inputs.push(v);
        self
    }

    pub fn init(&mut self, name: &str, t: &Tensor) -> &mut B {
        self.g
            .add_const(name, ConstTensor::from_tensor(None, t))
            .unwrap();
        self
    }

    /// Sets (or overrides) the declared type of a value, like a `value_info` entry.
    pub fn typed(&mut self, name: &str, dtype: DType, shape: &str) -> &mut B {
        let v = self.v(name);
        self.g.value_mut(v).ty = Some(ty(dtype, shape));
        self
    }

    /// Adds an op; `""` in `ins` is an absent optional input.
    pub fn op(
        &mut self,
        op_type: &str,
        ins: &[&str],
        outs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
    ) -> OpId {
        let i: Vec<Option<ValueId>> = ins
            .iter()
            .map(|n| (!n.is_empty()).then(|| self.v(n)))
            .collect();
        let o: Vec<Option<ValueId>> = outs
            .iter()
            .map(|n| (!n.is_empty()).then(|| self.v(n)))
            .collect();
        let mut op = Op::new(op_type, &format!("{op_type}_{}", outs.join("_")));
        for (k, a) in attrs {
            op.set_attr(k, a);
        }
        self.g.add_op(op, &i, &o).unwrap()
    }

    pub fn output(&mut self, name: &str) -> &mut B {
        let v = self.v(name);
        self.g.outputs.push(v);
        self
    }

    pub fn graph(self) -> Graph {
        self.g
    }

    pub fn model(self, opset: i64) -> Model {
        Model {
            ir_version: Some(8),
            opsets: vec![OpsetImport {
                domain: String::new(),
                version: opset,
            }],
            graph: self.g,
            carry: Carry::default(),
        }
    }
}

/// The type of value `name` of the main graph, as dumps show it.
pub fn type_of(m: &Model, name: &str) -> String {
    let v = m
        .graph
        .value_by_name(name)
        .unwrap_or_else(|| panic!("no value {name}"));
    m.graph
        .value(v)
        .ty
        .as_ref()
        .map(|t| t.display())
        .unwrap_or_else(|| "?".into())
}

/// Runs `pass` on `m`, checks every IR invariant after it, and returns the before/after
/// dumps as one text for a snapshot.
pub fn run_and_diff(pass: &dyn Pass, m: &mut Model, cx: &mut PassCx) -> String {
    m.verify().expect("test model is valid");
    let before = dump_model(m);
    pass.run(m, cx).expect("pass runs");
    m.verify().expect("pass keeps the IR valid");
    let after = dump_model(m);
    let notes: String = cx
        .diagnostics
        .iter()
        .map(|d| format!("; {}: {}\n", d.pass, d.what))
        .collect();
    format!(
        "==== before\n{before}==== after {}\n{after}{notes}",
        pass.name()
    )
}

/// Number of ops of `op_type` in `g` and all its subgraphs.
pub fn count_ops(g: &Graph, op_type: &str) -> usize {
    g.ops()
        .map(|o| {
            let op = g.op(o);
            usize::from(op.op_type == op_type)
                + op.subgraphs()
                    .iter()
                    .map(|(_, s)| count_ops(s, op_type))
                    .sum::<usize>()
        })
        .sum()
}
