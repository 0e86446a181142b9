//! The working copy ONNX Runtime's transformations edit: the main graph with the shapes
//! ONNX Runtime infers, what each step has done so far (ops removed and why, values
//! folded into constants, int8 pairs converted to uint8, weights quantized by the runtime,
//! notes per unit), and the questions every step asks of it (is this value a constant,
//! which integer type does this Q write or this DQ read, how many readers has it).

use crate::ir::{AttrValue, DType, Dim, Graph, Model, OpId, Tensor, ValueId, ValueType};
use crate::lint::{const_tensor, is_q, is_scalar_shape, Platform};
use crate::passes::{InferShapes, Pass, PassCx};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A working copy of the graph with ONNX Runtime's transformations applied.
pub(super) struct Sim<'m> {
    pub(super) model: &'m Model,
    pub(super) g: Graph,
    pub(super) opset: i64,
    pub(super) int8_allowed: bool,
    /// Q and DQ ops of int8 pairs converted to uint8.
    pub(super) to_u8: HashSet<OpId>,
    /// DQ ops standing for weights/biases ONNX Runtime quantizes itself, with the integer
    /// type they read.
    pub(super) synthetic: HashMap<OpId, DType>,
    /// Ops ONNX Runtime removes, with why.
    pub(super) removed: BTreeMap<OpId, String>,
    /// Values ONNX Runtime turns into initializers by constant folding (with the value
    /// when qrange can compute it).
    pub(super) folded: HashMap<ValueId, Option<Tensor>>,
    pub(super) notes: BTreeMap<OpId, Vec<String>>,
    /// MatMul and Add ops of the model fused into one Gemm of the copy.
    pub(super) gemm_of: BTreeMap<OpId, OpId>,
}

impl<'m> Sim<'m> {
    /// The copy of `model`'s main graph, before any transformation, for `platform`.
    pub(super) fn new(model: &'m Model, platform: Platform) -> Sim<'m> {
        // Value shapes as ONNX Runtime infers them (Shape folding and scalar checks read them);
        // best effort: a model shape inference cannot follow is linted with the shapes it has.
        let mut typed = model.clone();
        // ONNX Runtime reads a declared input dimension of -1 as a value (so `Shape` of such a
        // tensor folds); shape inference here would forget it, so 1 stands in for it.
        let inputs = typed.graph.inputs.clone();
        for v in inputs {
            if let Some(ValueType::Tensor {
                shape: Some(dims), ..
            }) = &mut typed.graph.value_mut(v).ty
            {
                for d in dims.iter_mut() {
                    if matches!(d, Dim::Known(k) if *k < 0) {
                        *d = Dim::Known(1);
                    }
                }
            }
        }
        let _ = InferShapes.run(&mut typed, &mut PassCx::default());
        Sim {
            model,
            g: if typed.graph.topo_order().is_ok() {
                typed.graph
            } else {
                model.graph.clone()
            },
            opset: model.opset("").unwrap_or(1),
            int8_allowed: platform == Platform::Arm64,
            to_u8: HashSet::new(),
            synthetic: HashMap::new(),
            removed: BTreeMap::new(),
            folded: HashMap::new(),
            notes: BTreeMap::new(),
            gemm_of: BTreeMap::new(),
        }
    }

    pub(super) fn note(&mut self, o: OpId, text: String) {
        let v = self.notes.entry(o).or_default();
        if !v.contains(&text) {
            v.push(text);
        }
    }

    pub(super) fn name(&self, o: OpId) -> String {
        self.g.op(o).display_name().to_string()
    }

    pub(super) fn vname(&self, v: ValueId) -> String {
        self.g.value(v).name.clone()
    }

    /// The value of a constant (initializer, Constant output or folded value) when known.
    pub(super) fn konst(&self, v: ValueId) -> Option<Tensor> {
        if let Some(t) = self.folded.get(&v) {
            return t.clone();
        }
        const_tensor(self.model, &self.g, v)
    }

    /// A constant initializer as ONNX Runtime sees it after constant folding (an
    /// initializer that is also a graph input can be overridden, so it is not constant).
    pub(super) fn is_const(&self, v: ValueId) -> bool {
        if self.folded.contains_key(&v) {
            return true;
        }
        match self.g.value(v).init {
            Some(_) => !(self.g.is_input(v) && self.model.ir_version.unwrap_or(0) >= 4),
            None => self
                .g
                .producer(v)
                .is_some_and(|(p, _)| self.g.op(p).op_type == "Constant"),
        }
    }

    /// An initializer (overridable or not) after constant folding.
    pub(super) fn is_initializer(&self, v: ValueId) -> bool {
        self.g.value(v).init.is_some() || self.is_const(v)
    }

    pub(super) fn dims(&self, v: ValueId) -> Option<Vec<i64>> {
        if let Some(t) = self.g.value(v).init {
            return Some(self.g.tensor(t).dims.clone());
        }
        if let Some(t) = self.konst(v) {
            return Some(t.shape().iter().map(|&d| d as i64).collect());
        }
        self.g.value(v).ty.as_ref().and_then(|t| t.known_dims())
    }

    pub(super) fn dtype(&self, v: ValueId) -> Option<DType> {
        if let Some(t) = self.g.value(v).init {
            return Some(self.g.tensor(t).dtype);
        }
        if let Some(Some(t)) = self.folded.get(&v) {
            return Some(t.dtype());
        }
        self.g.value(v).dtype()
    }

    pub(super) fn is_scalar(&self, v: ValueId) -> bool {
        self.dims(v).is_some_and(|d| is_scalar_shape(&d))
    }

    /// A constant scalar's value.
    pub(super) fn const_scalar(&self, v: ValueId) -> Option<f64> {
        if !self.is_scalar(v) {
            return None;
        }
        self.konst(v)?.to_f64_vec()?.first().copied()
    }

    /// Number of (consumer, slot) edges reading `v`.
    pub(super) fn edges(&self, v: ValueId) -> usize {
        self.g.consumers(v).len()
    }

    /// The single consumer edge of `o`'s only output, when `o` has exactly one and the
    /// output is no graph output (ONNX Runtime's `CheckOutputEdges(node, 1)`).
    pub(super) fn single_edge(&self, o: OpId) -> Option<(OpId, usize)> {
        let outs: Vec<ValueId> = self.g.outputs_of(o).into_iter().flatten().collect();
        let mut edges = Vec::new();
        for v in &outs {
            if self.g.is_output(*v) {
                return None;
            }
            edges.extend(self.g.consumers(*v));
        }
        (edges.len() == 1).then(|| edges[0])
    }

    /// Scale and zero point of a Q/DQ are constant scalars (zero point may be absent).
    pub(super) fn scalar_params(&self, o: OpId) -> bool {
        let Some(s) = self.g.input(o, 1) else {
            return false;
        };
        if self.const_scalar(s).is_none() {
            return false;
        }
        match self.g.input(o, 2) {
            Some(z) => self.const_scalar(z).is_some(),
            None => true,
        }
    }

    pub(super) fn is_onnx_q(&self, o: OpId) -> bool {
        let op = self.g.op(o);
        op.op_type == "QuantizeLinear" && op.domain_key().is_empty()
    }

    /// Integer type a QuantizeLinear writes.
    pub(super) fn q_out_dtype(&self, q: OpId) -> Option<DType> {
        if self.to_u8.contains(&q) {
            return Some(DType::U8);
        }
        if let Some(z) = self.g.input(q, 2) {
            return self.dtype(z);
        }
        if let Some(AttrValue::Int(code)) = self.g.op(q).attr("output_dtype") {
            if *code != 0 {
                return Some(DType::from_onnx(*code as i32));
            }
        }
        Some(DType::U8)
    }

    /// Integer type a DequantizeLinear reads.
    pub(super) fn dq_in_dtype(&self, dq: OpId) -> Option<DType> {
        if self.to_u8.contains(&dq) {
            return Some(DType::U8);
        }
        if let Some(d) = self.synthetic.get(&dq) {
            return Some(*d);
        }
        let x = self.g.input(dq, 0)?;
        if let Some((p, _)) = self.g.producer(x) {
            if is_q(&self.g, p) {
                return self.q_out_dtype(p);
            }
        }
        self.dtype(x)
            .or_else(|| self.g.input(dq, 2).and_then(|z| self.dtype(z)))
    }

    /// Name of `o`'s first output value.
    pub(super) fn first_output(&self, o: OpId) -> String {
        self.g
            .outputs_of(o)
            .into_iter()
            .flatten()
            .next()
            .map(|v| self.vname(v))
            .unwrap_or_default()
    }

    pub(super) fn dq_input_name(&self, dq: OpId) -> String {
        self.g
            .input(dq, 0)
            .map(|v| self.vname(v))
            .unwrap_or_default()
    }
}
