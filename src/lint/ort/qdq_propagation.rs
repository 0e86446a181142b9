//! Level 1, `QDQPropagationTransformer`: a QuantizeLinear is copied backwards, and a
//! DequantizeLinear forwards, through Reshape/Transpose/Squeeze/Unsqueeze/Slice/MaxPool
//! chains that lack their own pair, so that those data-movement ops get a Q/DQ pair
//! around them (which the drop selectors then remove).

use super::sim::Sim;
use crate::ir::{Op, OpId, ValueId};
use crate::lint::{is_dq, is_q, since_version, LintError};

impl Sim<'_> {
    /// ONNX Runtime's `CanNodePropagate`.
    fn can_propagate(&self, o: OpId) -> bool {
        let op = self.g.op(o);
        if !op.domain_key().is_empty() {
            return false;
        }
        match op.op_type.as_str() {
            "MaxPool" => since_version("MaxPool", self.opset).is_some_and(|v| v >= 12),
            "Reshape" => since_version("Reshape", self.opset).is_some_and(|v| v >= 5),
            "Transpose" | "Squeeze" | "Unsqueeze" | "Slice" => true,
            _ => false,
        }
    }

    /// Inserts `Q → DQ` on value `v` for the given readers (and the graph output when
    /// `to_output`), with the scale and zero point of `like` (a Q or DQ).
    fn insert_pair(
        &mut self,
        v: ValueId,
        readers: &[(OpId, usize)],
        to_output: bool,
        like: OpId,
    ) -> Result<Vec<OpId>, LintError> {
        let scale = self.g.input(like, 1);
        let zp = self.g.input(like, 2);
        let base = self.vname(v);
        let domain = self.g.op(like).domain.clone();
        let mut q = Op::new("QuantizeLinear", &format!("{base}_q"));
        q.domain = domain.clone();
        let qv = self.g.add_fresh_value(&format!("{base}_q_to_dq"), None);
        let mut ins = vec![Some(v), scale];
        if zp.is_some() {
            ins.push(zp);
        }
        let qo = self.g.add_op(q, &ins, &[Some(qv)])?;
        let mut created = vec![qo];
        let mut dq_ins = vec![Some(qv), scale];
        if zp.is_some() {
            dq_ins.push(zp);
        }
        for (i, (c, slot)) in readers.iter().enumerate() {
            let mut dq = Op::new("DequantizeLinear", &format!("{base}_dq{i}"));
            dq.domain = domain.clone();
            let ty = self.g.value(v).ty.clone();
            let dv = self.g.add_fresh_value(&format!("{base}_post_dq"), ty);
            created.push(self.g.add_op(dq, &dq_ins, &[Some(dv)])?);
            self.g.set_input(*c, *slot, Some(dv));
        }
        if to_output {
            let mut dq = Op::new("DequantizeLinear", &format!("{base}_dq_out"));
            dq.domain = domain;
            let ty = self.g.value(v).ty.clone();
            let dv = self.g.add_fresh_value(&format!("{base}_post_dq"), ty);
            created.push(self.g.add_op(dq, &dq_ins, &[Some(dv)])?);
            for out in &mut self.g.outputs {
                if *out == v {
                    *out = dv;
                }
            }
        }
        Ok(created)
    }

    /// The edge into input 0 of `o` that propagation may follow: from a node whose
    /// output has that single reader and is no graph output (`GetPreviousEdge`).
    /// `Some(None)` = the input is a graph input or initializer.
    fn previous_edge(&self, o: OpId) -> Option<Option<OpId>> {
        let x = self.g.input(o, 0)?;
        match self.g.producer(x) {
            None => Some(None),
            Some((p, _)) => (!self.g.is_output(x) && self.edges(x) == 1).then_some(Some(p)),
        }
    }

    /// Readers of `o`'s output 0 that forward propagation continues into, without those
    /// that are already QuantizeLinear (`GetNextPropagationEdges`); the bool is the
    /// graph-output edge.
    fn next_edges(&self, o: OpId) -> (Vec<(OpId, usize)>, bool) {
        let Some(v) = self.g.output(o, 0) else {
            return (Vec::new(), false);
        };
        let edges = self.g.consumers(v);
        let is_output = self.g.is_output(v);
        if edges.is_empty() {
            return (Vec::new(), is_output);
        }
        if is_output {
            return (Vec::new(), false);
        }
        (
            edges
                .into_iter()
                .filter(|(c, _)| !is_q(&self.g, *c))
                .collect(),
            false,
        )
    }

    /// QDQPropagationTransformer: every Q backwards, then every DQ forwards.
    pub(super) fn propagate(&mut self) -> Result<(), LintError> {
        let order = self.g.topo_order()?;
        for &q in &order {
            if is_q(&self.g, q) && self.scalar_params(q) {
                self.propagate_q_backward(q)?;
            }
        }
        for &dq in &order {
            if is_dq(&self.g, dq) {
                self.propagate_dq_forward(dq)?;
            }
        }
        Ok(())
    }

    /// Copies Q (of constant scalar parameters) before each op of the chain that feeds it,
    /// while the chain's ops can propagate and no DQ ends it.
    fn propagate_q_backward(&mut self, q: OpId) -> Result<(), LintError> {
        // The edge into the Q, then backwards while the source can propagate.
        let Some(Some(mut src)) = self.previous_edge(q) else {
            return Ok(());
        };
        loop {
            if !self.can_propagate(src) {
                break;
            }
            let Some(prev) = self.previous_edge(src) else {
                break;
            };
            if let Some(p) = prev {
                if is_dq(&self.g, p) {
                    break;
                }
            }
            let x = self.g.input(src, 0).expect("previous edge has an input");
            self.insert_pair(x, &[(src, 0)], false, q)?;
            let qn = self.name(q);
            self.note(
                src,
                format!(
                    "ONNX Runtime inserts a Q/DQ pair before it, with the parameters of '{qn}'"
                ),
            );
            match prev {
                Some(p) => src = p,
                None => break,
            }
        }
        Ok(())
    }

    /// Copies DQ (read once, of constant scalar parameters) after each op reached from it
    /// through ops that can propagate.
    fn propagate_dq_forward(&mut self, dq: OpId) -> Result<(), LintError> {
        let Some((first, _)) = self.single_edge(dq) else {
            return Ok(());
        };
        if !self.scalar_params(dq) {
            return Ok(());
        }
        let dqn = self.name(dq);
        let mut stack: Vec<OpId> = Vec::new();
        if self.can_propagate(first) {
            stack.push(first);
        }
        while let Some(node) = stack.pop() {
            let (readers, to_output) = self.next_edges(node);
            if readers.is_empty() && !to_output {
                continue;
            }
            let v = self.g.output(node, 0).expect("next edges exist");
            self.insert_pair(v, &readers, to_output, dq)?;
            self.note(
                node,
                format!(
                    "ONNX Runtime inserts a Q/DQ pair after it, with the parameters of '{dqn}'"
                ),
            );
            for (c, _) in readers {
                if self.can_propagate(c) {
                    stack.push(c);
                }
            }
        }
        Ok(())
    }
}
