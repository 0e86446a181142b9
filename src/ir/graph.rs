//! The graph: a bipartite petgraph `StableDiGraph` of op nodes and value nodes.
//!
//! Edges go value → op (weight = input slot) and op → value (weight = output slot).
//! A value has at most one producer and any number of consumers. Only the methods of
//! [`Graph`] touch edges; passes use the typed handles [`OpId`] and [`ValueId`].

use super::tensor::DType;
use super::value::{ConstTensor, ValueType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// Protobuf fields the IR does not model, kept encoded and written back unchanged.
///
/// The IR never looks inside: only `crate::onnx` encodes and decodes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carry(pub Vec<u8>);

/// Handle of an op node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub(crate) NodeIndex);

/// Handle of a value node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub(crate) NodeIndex);

/// Handle of a constant in a graph's tensor store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub(crate) usize);

/// Attribute value of an op.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Box<ConstTensor>),
    Graph(Box<Graph>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<ConstTensor>),
    Graphs(Vec<Graph>),
    /// Sparse tensors, type protos and unknown kinds: the ONNX attribute type code and
    /// the encoded attribute, written back unchanged.
    Opaque(i32),
}

/// One attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub name: String,
    pub value: AttrValue,
    pub carry: Carry,
}

/// An operator node.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub name: Option<String>,
    pub op_type: String,
    pub domain: Option<String>,
    pub attrs: Vec<Attr>,
    /// Number of input slots (missing optional inputs are slots with no edge).
    pub n_inputs: usize,
    /// Number of output slots.
    pub n_outputs: usize,
    /// Sort key for deterministic order: (original node index, insertion sub-index).
    pub order: (u32, u32),
    pub carry: Carry,
}

impl Op {
    /// Order key meaning "assign the next free index when added".
    pub const UNORDERED: (u32, u32) = (u32::MAX, 0);

    /// A new op with no attributes; `order` is set when added to a graph unless the
    /// caller sets it (e.g. with [`Graph::order_after`]).
    pub fn new(op_type: &str, name: &str) -> Op {
        Op {
            name: Some(name.to_string()),
            op_type: op_type.to_string(),
            domain: None,
            attrs: Vec::new(),
            n_inputs: 0,
            n_outputs: 0,
            order: Op::UNORDERED,
            carry: Carry::default(),
        }
    }

    /// The attribute named `name`.
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    /// Integer attribute.
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// Float attribute.
    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name) {
            Some(AttrValue::Float(f)) => Some(*f),
            _ => None,
        }
    }

    /// Integer-list attribute.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name) {
            Some(AttrValue::Ints(v)) => Some(v),
            _ => None,
        }
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: &str, value: AttrValue) {
        if let Some(a) = self.attrs.iter_mut().find(|a| a.name == name) {
            a.value = value;
        } else {
            self.attrs.push(Attr {
                name: name.to_string(),
                value,
                carry: Carry::default(),
            });
        }
    }

    /// The op's domain, `""` for the default ONNX domain (`ai.onnx` is normalised to `""`).
    pub fn domain_key(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }

    /// Display name: the ONNX node name, or `op_type` when the node is unnamed.
    pub fn display_name(&self) -> &str {
        match self.name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => &self.op_type,
        }
    }

    /// Subgraphs held by attributes (If branches, Loop/Scan bodies), in attribute order.
    pub fn subgraphs(&self) -> Vec<(&str, &Graph)> {
        let mut out = Vec::new();
        for a in &self.attrs {
            match &a.value {
                AttrValue::Graph(g) => out.push((a.name.as_str(), &**g)),
                AttrValue::Graphs(gs) => out.extend(gs.iter().map(|g| (a.name.as_str(), g))),
                _ => {}
            }
        }
        out
    }

    /// Mutable subgraphs held by attributes.
    pub fn subgraphs_mut(&mut self) -> Vec<&mut Graph> {
        let mut out = Vec::new();
        for a in &mut self.attrs {
            match &mut a.value {
                AttrValue::Graph(g) => out.push(&mut **g),
                AttrValue::Graphs(gs) => out.extend(gs.iter_mut()),
                _ => {}
            }
        }
        out
    }
}

/// A value (tensor) node.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub name: String,
    pub ty: Option<ValueType>,
    /// The constant behind an initializer.
    pub init: Option<TensorId>,
    /// Unmodelled `ValueInfoProto` fields (doc string, metadata).
    pub carry: Carry,
}

impl Value {
    /// Element type when the value is a typed tensor.
    pub fn dtype(&self) -> Option<DType> {
        match &self.ty {
            Some(ValueType::Tensor { dtype, .. }) => Some(*dtype),
            _ => None,
        }
    }
}

/// A node of the underlying petgraph graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Op(Op),
    Value(Value),
}

/// A computation graph (the main graph or a subgraph).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    names: HashMap<String, ValueId>,
    pub name: Option<String>,
    /// Graph inputs in order (may include initializers, as in IR version < 4).
    pub inputs: Vec<ValueId>,
    /// Graph outputs in order.
    pub outputs: Vec<ValueId>,
    /// Initializers (dense and sparse) in file order.
    pub initializers: Vec<ValueId>,
    /// Values that carried a `value_info` entry, in file order.
    pub value_info: Vec<ValueId>,
    /// Constant tensors referenced by [`Value::init`].
    store: Vec<ConstTensor>,
    /// Unmodelled `GraphProto` fields (doc string, quantization annotations, metadata).
    pub carry: Carry,
    next_order: u32,
}

impl PartialEq for Graph {
    /// Structural equality: same ops in the same deterministic order with the same
    /// connections by name, same values, constants, inputs, outputs and carried fields.
    fn eq(&self, other: &Graph) -> bool {
        if self.name != other.name || self.carry != other.carry {
            return false;
        }
        let names = |g: &Graph, ids: &[ValueId]| -> Vec<String> {
            ids.iter().map(|v| g.value(*v).name.clone()).collect()
        };
        if names(self, &self.inputs) != names(other, &other.inputs)
            || names(self, &self.outputs) != names(other, &other.outputs)
            || names(self, &self.initializers) != names(other, &other.initializers)
            || names(self, &self.value_info) != names(other, &other.value_info)
        {
            return false;
        }
        let (Ok(a), Ok(b)) = (self.topo_order(), other.topo_order()) else {
            return false;
        };
        if a.len() != b.len() {
            return false;
        }
        for (x, y) in a.iter().zip(&b) {
            let (ox, oy) = (self.op(*x), other.op(*y));
            let same_op = ox.name == oy.name
                && ox.op_type == oy.op_type
                && ox.domain == oy.domain
                && ox.attrs == oy.attrs
                && ox.carry == oy.carry;
            let io = |g: &Graph, ids: Vec<Option<ValueId>>| -> Vec<Option<String>> {
                ids.into_iter()
                    .map(|v| v.map(|v| g.value(v).name.clone()))
                    .collect()
            };
            if !same_op
                || io(self, self.inputs_of(*x)) != io(other, other.inputs_of(*y))
                || io(self, self.outputs_of(*x)) != io(other, other.outputs_of(*y))
            {
                return false;
            }
        }
        let mut va: Vec<_> = self.values().map(|v| self.value(v)).collect();
        let mut vb: Vec<_> = other.values().map(|v| other.value(v)).collect();
        if va.len() != vb.len() {
            return false;
        }
        va.sort_by(|p, q| p.name.cmp(&q.name));
        vb.sort_by(|p, q| p.name.cmp(&q.name));
        va.iter().zip(&vb).all(|(p, q)| {
            p.name == q.name
                && p.ty == q.ty
                && p.carry == q.carry
                && p.init.map(|t| self.tensor(t)) == q.init.map(|t| other.tensor(t))
        })
    }
}

/// A structural problem found by [`Graph::verify`] or while editing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("value '{0}' is defined twice")]
    DuplicateValue(String),
    #[error("value '{value}' is produced by two nodes: '{first}' and '{second}'")]
    DuplicateProducer {
        value: String,
        first: String,
        second: String,
    },
    #[error("node '{node}' ({op_type}) reads value '{value}', which no node, input or initializer defines")]
    Dangling {
        node: String,
        op_type: String,
        value: String,
    },
    #[error("graph output '{0}' is not defined by any node, input or initializer")]
    DanglingOutput(String),
    #[error("graph has a cycle through node '{node}' ({op_type})")]
    Cycle { node: String, op_type: String },
    #[error("internal IR invariant broken: {0}")]
    Invariant(String),
}

impl Graph {
    /// An empty graph.
    pub fn new(name: Option<String>) -> Graph {
        Graph {
            name,
            ..Graph::default()
        }
    }

    // ----- values -----

    /// Adds a value node; fails if the name is taken.
    pub fn add_value(&mut self, v: Value) -> Result<ValueId, GraphError> {
        if self.names.contains_key(&v.name) {
            return Err(GraphError::DuplicateValue(v.name));
        }
        let name = v.name.clone();
        let id = ValueId(self.g.add_node(Node::Value(v)));
        self.names.insert(name, id);
        Ok(id)
    }

    /// Adds a fresh, untyped intermediate value named `base`, or `base.1`, `base.2`… if taken.
    pub fn add_fresh_value(&mut self, base: &str, ty: Option<ValueType>) -> ValueId {
        let name = self.fresh_name(base);
        self.add_value(Value {
            name,
            ty,
            init: None,
            carry: Carry::default(),
        })
        .expect("fresh name is unused")
    }

    /// A value name derived from `base` that is not yet used in this graph.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !self.names.contains_key(n))
            .expect("unbounded")
    }

    /// Adds a constant value (an initializer) holding `t`.
    pub fn add_const(&mut self, name: &str, mut t: ConstTensor) -> Result<ValueId, GraphError> {
        t.name = Some(name.to_string());
        let ty = Some(ValueType::Tensor {
            dtype: t.dtype,
            shape: Some(
                t.dims
                    .iter()
                    .map(|&d| super::value::Dim::Known(d))
                    .collect(),
            ),
        });
        let tid = self.add_tensor(t);
        let v = self.add_value(Value {
            name: name.to_string(),
            ty,
            init: Some(tid),
            carry: Carry::default(),
        })?;
        self.initializers.push(v);
        Ok(v)
    }

    /// Puts a tensor in the store.
    pub fn add_tensor(&mut self, t: ConstTensor) -> TensorId {
        self.store.push(t);
        TensorId(self.store.len() - 1)
    }

    /// A constant of the store.
    pub fn tensor(&self, t: TensorId) -> &ConstTensor {
        &self.store[t.0]
    }

    /// A constant of the store, mutably.
    pub fn tensor_mut(&mut self, t: TensorId) -> &mut ConstTensor {
        &mut self.store[t.0]
    }

    /// Frees the data of every stored constant no value refers to any more (a removed
    /// initializer's tensor stays in the store, which only grows); returns the bytes
    /// freed. Handles stay valid: such a tensor keeps its type and dims, with no data.
    pub fn release_unused_tensors(&mut self) -> usize {
        let used: std::collections::HashSet<usize> = self
            .values()
            .filter_map(|v| self.value(v).init.map(|t| t.0))
            .collect();
        let mut freed = 0;
        for (i, t) in self.store.iter_mut().enumerate() {
            if !used.contains(&i) && !matches!(t.data, super::value::TensorData::Empty) {
                freed += match &t.data {
                    super::value::TensorData::External(_) => 0,
                    _ => t.checked_byte_size().unwrap_or(0),
                };
                t.data = super::value::TensorData::Empty;
            }
        }
        freed
    }

    /// The value named `name`.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    /// A value node.
    pub fn value(&self, v: ValueId) -> &Value {
        match &self.g[v.0] {
            Node::Value(x) => x,
            Node::Op(_) => panic!("ValueId points at an op"),
        }
    }

    /// A value node, mutably. Renaming goes through [`Graph::rename_value`].
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        match &mut self.g[v.0] {
            Node::Value(x) => x,
            Node::Op(_) => panic!("ValueId points at an op"),
        }
    }

    /// Renames a value, keeping the name index right.
    pub fn rename_value(&mut self, v: ValueId, name: &str) -> Result<(), GraphError> {
        if self.names.contains_key(name) {
            return Err(GraphError::DuplicateValue(name.to_string()));
        }
        let old = std::mem::replace(&mut self.value_mut(v).name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), v);
        Ok(())
    }

    /// The constant behind `v`, if it is an initializer.
    pub fn const_of(&self, v: ValueId) -> Option<&ConstTensor> {
        self.value(v).init.map(|t| self.tensor(t))
    }

    /// All value ids in index order.
    pub fn values(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.g.node_indices().filter_map(|n| match self.g[n] {
            Node::Value(_) => Some(ValueId(n)),
            Node::Op(_) => None,
        })
    }

    /// All op ids in index order.
    pub fn ops(&self) -> impl Iterator<Item = OpId> + '_ {
        self.g.node_indices().filter_map(|n| match self.g[n] {
            Node::Op(_) => Some(OpId(n)),
            Node::Value(_) => None,
        })
    }

    /// Number of ops.
    pub fn op_count(&self) -> usize {
        self.ops().count()
    }

    /// Removes a value that has no producer and no consumer (and is no input/output).
    pub fn remove_value(&mut self, v: ValueId) {
        assert!(
            self.g
                .edges_directed(v.0, Direction::Incoming)
                .next()
                .is_none()
                && self
                    .g
                    .edges_directed(v.0, Direction::Outgoing)
                    .next()
                    .is_none(),
            "remove_value on a connected value"
        );
        self.inputs.retain(|x| *x != v);
        self.outputs.retain(|x| *x != v);
        self.initializers.retain(|x| *x != v);
        self.value_info.retain(|x| *x != v);
        if let Some(Node::Value(val)) = self.g.remove_node(v.0) {
            self.names.remove(&val.name);
        }
    }

    // ----- ops -----

    /// Adds an op with its inputs and outputs (by slot; `None` = empty optional slot).
    /// Fails if an output value already has a producer.
    pub fn add_op(
        &mut self,
        mut op: Op,
        inputs: &[Option<ValueId>],
        outputs: &[Option<ValueId>],
    ) -> Result<OpId, GraphError> {
        for v in outputs.iter().flatten() {
            if let Some((p, _)) = self.producer(*v) {
                return Err(GraphError::DuplicateProducer {
                    value: self.value(*v).name.clone(),
                    first: self.op(p).display_name().to_string(),
                    second: op.display_name().to_string(),
                });
            }
        }
        op.n_inputs = inputs.len();
        op.n_outputs = outputs.len();
        if op.order == Op::UNORDERED {
            op.order = (self.next_order, 0);
            self.next_order += 1;
        } else {
            self.next_order = self.next_order.max(op.order.0 + 1);
        }
        let id = OpId(self.g.add_node(Node::Op(op)));
        for (slot, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(v.0, id.0, slot as u32);
            }
        }
        for (slot, v) in outputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(id.0, v.0, slot as u32);
            }
        }
        Ok(id)
    }

    /// Order key for a new op placed right after `after` (keeps dumps stable).
    pub fn order_after(&self, after: OpId) -> (u32, u32) {
        let base = self.op(after).order.0;
        let sub = self
            .ops()
            .filter(|o| self.op(*o).order.0 == base)
            .map(|o| self.op(o).order.1)
            .max()
            .unwrap_or(0);
        (base, sub + 1)
    }

    /// Order key for a new op that feeds `before` (it sorts with it; data dependencies
    /// put it first).
    pub fn order_before(&self, before: OpId) -> (u32, u32) {
        self.op(before).order
    }

    /// An op node.
    pub fn op(&self, o: OpId) -> &Op {
        match &self.g[o.0] {
            Node::Op(x) => x,
            Node::Value(_) => panic!("OpId points at a value"),
        }
    }

    /// An op node, mutably.
    pub fn op_mut(&mut self, o: OpId) -> &mut Op {
        match &mut self.g[o.0] {
            Node::Op(x) => x,
            Node::Value(_) => panic!("OpId points at a value"),
        }
    }

    /// Input values by slot.
    pub fn inputs_of(&self, o: OpId) -> Vec<Option<ValueId>> {
        let mut v = vec![None; self.op(o).n_inputs];
        for e in self.g.edges_directed(o.0, Direction::Incoming) {
            v[*e.weight() as usize] = Some(ValueId(e.source()));
        }
        v
    }

    /// Output values by slot.
    pub fn outputs_of(&self, o: OpId) -> Vec<Option<ValueId>> {
        let mut v = vec![None; self.op(o).n_outputs];
        for e in self.g.edges_directed(o.0, Direction::Outgoing) {
            v[*e.weight() as usize] = Some(ValueId(e.target()));
        }
        v
    }

    /// Input `slot` of `o`.
    pub fn input(&self, o: OpId, slot: usize) -> Option<ValueId> {
        self.g
            .edges_directed(o.0, Direction::Incoming)
            .find(|e| *e.weight() as usize == slot)
            .map(|e| ValueId(e.source()))
    }

    /// Output `slot` of `o`.
    pub fn output(&self, o: OpId, slot: usize) -> Option<ValueId> {
        self.g
            .edges_directed(o.0, Direction::Outgoing)
            .find(|e| *e.weight() as usize == slot)
            .map(|e| ValueId(e.target()))
    }

    /// The op producing `v` and the output slot.
    pub fn producer(&self, v: ValueId) -> Option<(OpId, usize)> {
        self.g
            .edges_directed(v.0, Direction::Incoming)
            .next()
            .map(|e| (OpId(e.source()), *e.weight() as usize))
    }

    /// Ops reading `v` and the input slot, sorted (deterministic).
    pub fn consumers(&self, v: ValueId) -> Vec<(OpId, usize)> {
        let mut c: Vec<_> = self
            .g
            .edges_directed(v.0, Direction::Outgoing)
            .map(|e| (OpId(e.target()), *e.weight() as usize))
            .collect();
        c.sort_by_key(|(o, s)| (self.op(*o).order, *s, o.0));
        c
    }

    /// True when `v` is a graph output.
    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    /// True when `v` is a graph input.
    pub fn is_input(&self, v: ValueId) -> bool {
        self.inputs.contains(&v)
    }

    /// Sets input `slot` of `o` to `v` (or clears it).
    pub fn set_input(&mut self, o: OpId, slot: usize, v: Option<ValueId>) {
        if let Some(e) = self
            .g
            .edges_directed(o.0, Direction::Incoming)
            .find(|e| *e.weight() as usize == slot)
            .map(|e| e.id())
        {
            self.g.remove_edge(e);
        }
        if slot >= self.op(o).n_inputs {
            self.op_mut(o).n_inputs = slot + 1;
        }
        if let Some(v) = v {
            self.g.add_edge(v.0, o.0, slot as u32);
        }
    }

    /// Appends an input slot to `o`.
    pub fn push_input(&mut self, o: OpId, v: Option<ValueId>) {
        let slot = self.op(o).n_inputs;
        self.set_input(o, slot, v);
    }

    /// Makes every reader of `old` (ops and graph outputs) read `new` instead.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for (o, slot) in self.consumers(old) {
            self.set_input(o, slot, Some(new));
        }
        for out in &mut self.outputs {
            if *out == old {
                *out = new;
            }
        }
    }

    /// Removes an op and its edges; its output values stay (with no producer).
    pub fn remove_op(&mut self, o: OpId) -> Op {
        match self.g.remove_node(o.0) {
            Some(Node::Op(op)) => op,
            _ => panic!("remove_op on a non-op"),
        }
    }

    /// Removes an op, then every one of its outputs that is unused and no graph output.
    pub fn remove_op_and_dead_outputs(&mut self, o: OpId) -> Op {
        let outs: Vec<_> = self.outputs_of(o).into_iter().flatten().collect();
        let op = self.remove_op(o);
        for v in outs {
            if self.consumers(v).is_empty() && !self.is_output(v) {
                self.remove_value(v);
            }
        }
        op
    }

    /// Ops in a deterministic topological order (ties broken by the order key). An op
    /// whose subgraphs capture a value of this graph comes after that value's producer.
    pub fn topo_order(&self) -> Result<Vec<OpId>, GraphError> {
        let mut indeg: BTreeMap<OpId, usize> = BTreeMap::new();
        // Ops reading a value only through their subgraphs, by value.
        let mut implicit: HashMap<ValueId, Vec<OpId>> = HashMap::new();
        for o in self.ops() {
            let explicit: Vec<ValueId> = self.inputs_of(o).into_iter().flatten().collect();
            let mut n = explicit
                .iter()
                .filter(|v| self.producer(**v).is_some())
                .count();
            let subs = self.op(o).subgraphs();
            if !subs.is_empty() {
                let mut names: Vec<String> =
                    subs.iter().flat_map(|(_, sg)| sg.captures()).collect();
                names.sort();
                names.dedup();
                for name in names {
                    let Some(v) = self.value_by_name(&name) else {
                        continue;
                    };
                    if self.producer(v).is_some() && !explicit.contains(&v) {
                        implicit.entry(v).or_default().push(o);
                        n += 1;
                    }
                }
            }
            indeg.insert(o, n);
        }
        let key = |o: OpId| (self.op(o).order, o.0.index());
        let mut heap: BinaryHeap<Reverse<((u32, u32), usize)>> = indeg
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(o, _)| Reverse(key(*o)))
            .collect();
        let by_key: HashMap<((u32, u32), usize), OpId> =
            indeg.keys().map(|o| (key(*o), *o)).collect();
        let mut out = Vec::with_capacity(indeg.len());
        while let Some(Reverse(k)) = heap.pop() {
            let o = by_key[&k];
            out.push(o);
            for v in self.outputs_of(o).into_iter().flatten() {
                let readers = self.consumers(v).into_iter().map(|(c, _)| c);
                let through_subgraphs = implicit.get(&v).into_iter().flatten().copied();
                for c in readers.chain(through_subgraphs) {
                    let d = indeg.get_mut(&c).expect("op in map");
                    *d -= 1;
                    if *d == 0 {
                        heap.push(Reverse(key(c)));
                    }
                }
            }
        }
        if out.len() != indeg.len() {
            let stuck = indeg
                .keys()
                .find(|o| !out.contains(o))
                .copied()
                .expect("some op left");
            let op = self.op(stuck);
            return Err(GraphError::Cycle {
                node: op.display_name().to_string(),
                op_type: op.op_type.clone(),
            });
        }
        Ok(out)
    }

    /// Checks every invariant of this graph and its subgraphs.
    ///
    /// `outer` holds the value names visible from enclosing graphs (empty for the main graph).
    pub fn verify(&self, outer: &[&str]) -> Result<(), GraphError> {
        // name index and bipartite structure
        for n in self.g.node_indices() {
            match &self.g[n] {
                Node::Value(v) => {
                    if self.names.get(&v.name) != Some(&ValueId(n)) {
                        return Err(GraphError::Invariant(format!(
                            "name index out of date for '{}'",
                            v.name
                        )));
                    }
                    if self.g.edges_directed(n, Direction::Incoming).count() > 1 {
                        return Err(GraphError::Invariant(format!(
                            "value '{}' has several producers",
                            v.name
                        )));
                    }
                    if let Some(t) = v.init {
                        if t.0 >= self.store.len() {
                            return Err(GraphError::Invariant(format!(
                                "value '{}' points outside the tensor store",
                                v.name
                            )));
                        }
                    }
                }
                Node::Op(op) => {
                    let mut seen_in = vec![false; op.n_inputs];
                    for e in self.g.edges_directed(n, Direction::Incoming) {
                        let s = *e.weight() as usize;
                        if s >= op.n_inputs || seen_in[s] {
                            return Err(GraphError::Invariant(format!(
                                "node '{}' has a bad input slot {s}",
                                op.display_name()
                            )));
                        }
                        seen_in[s] = true;
                        if !matches!(self.g[e.source()], Node::Value(_)) {
                            return Err(GraphError::Invariant("op → op edge".into()));
                        }
                    }
                    let mut seen_out = vec![false; op.n_outputs];
                    for e in self.g.edges_directed(n, Direction::Outgoing) {
                        let s = *e.weight() as usize;
                        if s >= op.n_outputs || seen_out[s] {
                            return Err(GraphError::Invariant(format!(
                                "node '{}' has a bad output slot {s}",
                                op.display_name()
                            )));
                        }
                        seen_out[s] = true;
                    }
                }
            }
        }
        if self.names.len() != self.values().count() {
            return Err(GraphError::Invariant("stale entries in name index".into()));
        }
        // every read value has a source
        let defined = |v: ValueId| {
            self.producer(v).is_some()
                || self.value(v).init.is_some()
                || self.inputs.contains(&v)
                || outer.contains(&self.value(v).name.as_str())
        };
        for o in self.ops() {
            for v in self.inputs_of(o).into_iter().flatten() {
                if !defined(v) {
                    let op = self.op(o);
                    return Err(GraphError::Dangling {
                        node: op.display_name().to_string(),
                        op_type: op.op_type.clone(),
                        value: self.value(v).name.clone(),
                    });
                }
            }
        }
        for v in &self.outputs {
            if !defined(*v) {
                return Err(GraphError::DanglingOutput(self.value(*v).name.clone()));
            }
        }
        self.topo_order()?;
        // subgraphs see everything visible here
        let mut scope: Vec<&str> = outer.to_vec();
        scope.extend(self.values().map(|v| self.value(v).name.as_str()));
        for o in self.ops() {
            for (_, sg) in self.op(o).subgraphs() {
                sg.verify(&scope)?;
            }
        }
        Ok(())
    }

    /// Names read by this graph (or its subgraphs) that it does not define: the
    /// outer-scope values it captures, sorted.
    pub fn captures(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for o in self.ops() {
            for v in self.inputs_of(o).into_iter().flatten() {
                let val = self.value(v);
                if self.producer(v).is_none() && val.init.is_none() && !self.is_input(v) {
                    out.insert(val.name.clone());
                }
            }
            for (_, sg) in self.op(o).subgraphs() {
                for c in sg.captures() {
                    if self.value_by_name(&c).is_none() {
                        out.insert(c);
                    }
                }
            }
        }
        for v in &self.outputs {
            let val = self.value(*v);
            if self.producer(*v).is_none() && val.init.is_none() && !self.is_input(*v) {
                out.insert(val.name.clone());
            }
        }
        out.into_iter().collect()
    }
}
