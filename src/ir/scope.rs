//! Scopes: where each graph of a model sits (the main graph and, recursively, the
//! subgraphs held by op attributes: If branches, Loop and Scan bodies), and which graph
//! defines a name read from a given scope.
//!
//! A subgraph reads values of its enclosing graphs *by name*: such a captured name is a
//! value node of the subgraph with no producer, no initializer and no input slot (or,
//! when only a nested subgraph reads it, no node at all). [`Scopes::resolve`] walks
//! outwards to the graph that defines it.
//!
//! Scopes are listed depth first: the main graph (index 0, label `""`), then for each
//! op in topological order its subgraphs in attribute order. A subgraph's label is
//! `op/attr` where `op` is the holding op's key ([`op_label`]), prefixed by the
//! enclosing subgraph's label: `if/then_branch`, `if/then_branch/inner/else_branch`.

use super::graph::{AttrValue, Carry, Graph, GraphError, OpId, Value, ValueId};
use super::Model;

/// Stable key of an op inside its graph: its name, or `op_type#order` if unnamed.
pub fn op_label(g: &Graph, o: OpId) -> String {
    let op = g.op(o);
    match op.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("{}#{}", op.op_type, op.order.0),
    }
}

/// True when `g` defines `v` itself (producer, initializer or input) rather than
/// capturing it from an enclosing graph.
pub fn defines(g: &Graph, v: ValueId) -> bool {
    g.producer(v).is_some() || g.value(v).init.is_some() || g.is_input(v)
}

/// One graph of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Steps from the main graph: (op of the enclosing graph, index into its
    /// [`crate::ir::Op::subgraphs`]).
    pub path: Vec<(OpId, usize)>,
    /// Index of the enclosing scope (`None` for the main graph).
    pub parent: Option<usize>,
    /// Readable location (see the module documentation); `""` for the main graph.
    pub label: String,
    /// Op type of the op holding this subgraph (`""` for the main graph).
    pub owner_op_type: String,
    /// Attribute holding this subgraph (`then_branch`, `body`…; `""` for the main graph).
    pub attr: String,
}

/// Every graph of a model, depth first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scopes {
    pub list: Vec<Scope>,
}

impl Scopes {
    /// The scopes of `main` and of all its subgraphs.
    pub fn of(main: &Graph) -> Scopes {
        let mut list = vec![Scope {
            path: Vec::new(),
            parent: None,
            label: String::new(),
            owner_op_type: String::new(),
            attr: String::new(),
        }];
        walk(main, 0, &mut list);
        Scopes { list }
    }

    /// Number of scopes (at least 1: the main graph).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: a model has a main graph.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The scope.
    pub fn get(&self, s: usize) -> &Scope {
        &self.list[s]
    }

    /// The graph of scope `s` inside `main`.
    pub fn graph<'a>(&self, main: &'a Graph, s: usize) -> &'a Graph {
        let mut g = main;
        for (o, j) in &self.list[s].path {
            g = g.op(*o).subgraphs()[*j].1;
        }
        g
    }

    /// The graph of scope `s` inside `main`, mutably.
    pub fn graph_mut<'a>(&self, main: &'a mut Graph, s: usize) -> &'a mut Graph {
        let mut g = main;
        for (o, j) in &self.list[s].path {
            g = g.op_mut(*o).subgraphs_mut().swap_remove(*j);
        }
        g
    }

    /// The scope of subgraph `j` of op `o` of scope `s`.
    pub fn child(&self, s: usize, o: OpId, j: usize) -> Option<usize> {
        let want_len = self.list[s].path.len() + 1;
        self.list.iter().position(|c| {
            c.parent == Some(s) && c.path.len() == want_len && c.path.last() == Some(&(o, j))
        })
    }

    /// Scopes nested (at any depth) inside scope `s`, `s` excluded.
    pub fn descendants(&self, s: usize) -> Vec<usize> {
        (0..self.list.len())
            .filter(|&c| c != s && self.is_within(c, s))
            .collect()
    }

    /// True when scope `c` is `s` or nested inside it.
    pub fn is_within(&self, c: usize, s: usize) -> bool {
        let mut cur = Some(c);
        while let Some(x) = cur {
            if x == s {
                return true;
            }
            cur = self.list[x].parent;
        }
        false
    }

    /// The scope defining `name` as seen from scope `s`: `s` itself if it defines it,
    /// else the nearest enclosing scope that does.
    pub fn resolve(&self, main: &Graph, s: usize, name: &str) -> Option<usize> {
        let mut cur = Some(s);
        while let Some(x) = cur {
            let g = self.graph(main, x);
            if g.value_by_name(name).is_some_and(|v| defines(g, v)) {
                return Some(x);
            }
            cur = self.list[x].parent;
        }
        None
    }
}

/// Why a subgraph cannot stand as a model of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("node '{node}' has no subgraph {index}")]
    NoSubgraph { node: String, index: usize },
    #[error("subgraph '{subgraph}' reads '{name}', which the enclosing graph does not define")]
    Unresolved { subgraph: String, name: String },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Subgraph `j` of op `o` of `parent`'s main graph as a model of its own, for running it
/// alone: every name it captures (directly or through its own subgraphs) becomes an
/// initializer when `parent` holds a constant for it, else an input typed as in
/// `parent`, appended after the subgraph's own inputs. Returns the model and the
/// captured names made inputs, in order. Op ids are those of the subgraph, so paths of
/// scopes inside it stay valid relative to it.
pub fn subgraph_model(
    parent: &Model,
    o: OpId,
    j: usize,
) -> Result<(Model, Vec<String>), ExtractError> {
    let pg = &parent.graph;
    let op = pg.op(o);
    let mut body = op
        .subgraphs()
        .get(j)
        .map(|(_, sg)| (*sg).clone())
        .ok_or_else(|| ExtractError::NoSubgraph {
            node: op.display_name().to_string(),
            index: j,
        })?;
    let mut inputs = Vec::new();
    let mut consts = false;
    for name in body.captures() {
        let pv = pg
            .value_by_name(&name)
            .filter(|&v| defines(pg, v))
            .ok_or_else(|| ExtractError::Unresolved {
                subgraph: body.name.clone().unwrap_or_default(),
                name: name.clone(),
            })?;
        let pval = pg.value(pv);
        let v = match body.value_by_name(&name) {
            Some(v) => v,
            None => body.add_value(Value {
                name: name.clone(),
                ty: None,
                init: None,
                carry: Carry::default(),
            })?,
        };
        if body.value(v).ty.is_none() {
            body.value_mut(v).ty = pval.ty.clone();
        }
        match pval.init {
            Some(t) if !pg.is_input(pv) => {
                let tid = body.add_tensor(pg.tensor(t).clone());
                body.value_mut(v).init = Some(tid);
                body.initializers.push(v);
                consts = true;
            }
            _ => {
                body.inputs.push(v);
                inputs.push(name);
            }
        }
    }
    let mut ir_version = parent.ir_version;
    if consts && ir_version.is_some_and(|v| v < 4) {
        // Initializers that are not inputs need IR version 4.
        ir_version = Some(4);
    }
    Ok((
        Model {
            ir_version,
            opsets: parent.opsets.clone(),
            graph: body,
            carry: parent.carry.clone(),
        },
        inputs,
    ))
}

fn walk(g: &Graph, s: usize, list: &mut Vec<Scope>) {
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => g.ops().collect(),
    };
    for o in order {
        let op = g.op(o);
        let key = op_label(g, o);
        let mut j = 0;
        for a in &op.attrs {
            let subs: Vec<&Graph> = match &a.value {
                AttrValue::Graph(sg) => vec![&**sg],
                AttrValue::Graphs(gs) => gs.iter().collect(),
                _ => continue,
            };
            let many = subs.len() > 1;
            for (i, sg) in subs.into_iter().enumerate() {
                let base = &list[s];
                let mut path = base.path.clone();
                path.push((o, j));
                let here = if many {
                    format!("{key}/{}[{i}]", a.name)
                } else {
                    format!("{key}/{}", a.name)
                };
                let label = if base.label.is_empty() {
                    here
                } else {
                    format!("{}/{here}", base.label)
                };
                list.push(Scope {
                    path,
                    parent: Some(s),
                    label,
                    owner_op_type: op.op_type.clone(),
                    attr: a.name.clone(),
                });
                let c = list.len() - 1;
                walk(sg, c, list);
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Carry, Op, Value};

    fn val(g: &mut Graph, name: &str) -> ValueId {
        g.value_by_name(name).unwrap_or_else(|| {
            g.add_value(Value {
                name: name.into(),
                ty: None,
                init: None,
                carry: Carry::default(),
            })
            .unwrap()
        })
    }

    fn relu(g: &mut Graph, name: &str, x: &str, y: &str) {
        let (x, y) = (val(g, x), val(g, y));
        g.add_op(Op::new("Relu", name), &[Some(x)], &[Some(y)])
            .unwrap();
    }

    #[test]
    fn scopes_are_listed_depth_first_and_names_resolve_outwards() {
        // main: h = Relu(x); r = If(c) { then: t = Relu(h) { inner If reads h }, else: e = Relu(x) }
        let mut inner = Graph::new(Some("inner_then".into()));
        relu(&mut inner, "deep", "h", "d");
        inner.outputs.push(inner.value_by_name("d").unwrap());
        let mut then_g = Graph::new(Some("then".into()));
        relu(&mut then_g, "t_relu", "h", "t");
        let c2 = val(&mut then_g, "t");
        let o2 = val(&mut then_g, "t2");
        let mut nested = Op::new("If", "inner");
        nested.set_attr("then_branch", AttrValue::Graph(Box::new(inner.clone())));
        nested.set_attr("else_branch", AttrValue::Graph(Box::new(inner)));
        then_g.add_op(nested, &[Some(c2)], &[Some(o2)]).unwrap();
        then_g.outputs.push(o2);
        let mut else_g = Graph::new(Some("else".into()));
        relu(&mut else_g, "e_relu", "x", "e");
        else_g.outputs.push(else_g.value_by_name("e").unwrap());
        let mut g = Graph::new(Some("main".into()));
        let x = val(&mut g, "x");
        g.inputs.push(x);
        relu(&mut g, "first", "x", "h");
        let c = val(&mut g, "c");
        g.inputs.push(c);
        let r = val(&mut g, "r");
        let mut iff = Op::new("If", "if");
        iff.set_attr("then_branch", AttrValue::Graph(Box::new(then_g)));
        iff.set_attr("else_branch", AttrValue::Graph(Box::new(else_g)));
        g.add_op(iff, &[Some(c)], &[Some(r)]).unwrap();
        g.outputs.push(r);

        let sc = Scopes::of(&g);
        let labels: Vec<&str> = sc.list.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "",
                "if/then_branch",
                "if/then_branch/inner/then_branch",
                "if/then_branch/inner/else_branch",
                "if/else_branch",
            ]
        );
        assert_eq!(sc.graph(&g, 4).name.as_deref(), Some("else"));
        assert_eq!(sc.resolve(&g, 2, "h"), Some(0));
        assert_eq!(sc.resolve(&g, 2, "d"), Some(2));
        assert_eq!(sc.resolve(&g, 1, "t"), Some(1));
        assert_eq!(sc.resolve(&g, 4, "t"), None);
        assert_eq!(sc.descendants(1), vec![2, 3]);
        let if_op = sc.list[1].path[0].0;
        assert_eq!(sc.child(0, if_op, 1), Some(4));
        let gm = sc.graph_mut(&mut g, 3);
        gm.name = Some("renamed".into());
        assert_eq!(sc.graph(&g, 3).name.as_deref(), Some("renamed"));
    }

    /// main: h = Relu(x); r = If(c) { then: t = Add(h, k) }, with `k` an initializer;
    /// the If is added before the Relu.
    fn if_reading_outer_values() -> Graph {
        let mut then_g = Graph::new(Some("then".into()));
        let (h, k, t) = (
            val(&mut then_g, "h"),
            val(&mut then_g, "k"),
            val(&mut then_g, "t"),
        );
        then_g
            .add_op(Op::new("Add", "add"), &[Some(h), Some(k)], &[Some(t)])
            .unwrap();
        then_g.outputs.push(t);
        let mut g = Graph::new(Some("main".into()));
        let x = val(&mut g, "x");
        let c = val(&mut g, "c");
        g.inputs.extend([x, c]);
        let kt = crate::ir::Tensor::F32(ndarray::arr1(&[1.0f32, 2.0]).into_dyn());
        g.add_const("k", crate::ir::ConstTensor::from_tensor(None, &kt))
            .unwrap();
        let r = val(&mut g, "r");
        let mut iff = Op::new("If", "if");
        iff.set_attr("then_branch", AttrValue::Graph(Box::new(then_g.clone())));
        iff.set_attr("else_branch", AttrValue::Graph(Box::new(then_g)));
        g.add_op(iff, &[Some(c)], &[Some(r)]).unwrap();
        g.outputs.push(r);
        relu(&mut g, "first", "x", "h");
        g
    }

    #[test]
    fn ops_come_after_what_their_subgraphs_capture() {
        let g = if_reading_outer_values();
        let order: Vec<&str> = g
            .topo_order()
            .unwrap()
            .into_iter()
            .map(|o| g.op(o).display_name())
            .collect();
        assert_eq!(order, ["first", "if"]);
    }

    #[test]
    fn a_subgraph_becomes_a_model_with_its_captures() {
        let g = if_reading_outer_values();
        let o = g.ops().find(|o| g.op(*o).op_type == "If").unwrap();
        let parent = Model {
            ir_version: Some(3),
            opsets: Vec::new(),
            graph: g,
            carry: Carry::default(),
        };
        let (m, inputs) = subgraph_model(&parent, o, 0).unwrap();
        // the computed value is an input, the outer constant an initializer
        assert_eq!(inputs, ["h"]);
        let b = &m.graph;
        let names = |ids: &[ValueId]| -> Vec<String> {
            ids.iter().map(|v| b.value(*v).name.clone()).collect()
        };
        assert_eq!(names(&b.inputs), ["h"]);
        assert_eq!(names(&b.initializers), ["k"]);
        assert_eq!(
            b.const_of(b.value_by_name("k").unwrap()).unwrap().numel(),
            2
        );
        assert_eq!(m.ir_version, Some(4), "initializers that are not inputs");
        m.verify().unwrap();
        assert!(matches!(
            subgraph_model(&parent, o, 2),
            Err(ExtractError::NoSubgraph { .. })
        ));
    }
}
