//! Constant DequantizeLinear of weights kept in a side file, dequantized as the engine loads
//! the model.
//!
//! A `DequantizeLinear` whose inputs are all constants and whose codes lie in a side file
//! (ONNX external data) is taken out of the model handed to the engine ([`fold`]): its output
//! becomes a float constant referencing the codes' file and offset, and the data resolver the
//! engine reads external data through ([`Folded`]) answers that reference by reading the
//! codes and dequantizing them with [`crate::quant::kernels::dequantize_linear_le`], the kernel
//! the engine's own DequantizeLinear runs (`qdq`): the values are the same bits. The engine
//! then holds each such weight once, in float, as it holds a float model's weights; the codes
//! are read again only when another plan is built. Left in the model, a DequantizeLinear too
//! large for the engine's constant folding would be computed, and its result packed for the
//! matrix product, on every run; computed by a pass, its float values would be written to a
//! file first or copied at each step of handing the model to the engine.

use crate::ir::{ConstTensor, DType, ExternalRef, Graph, Model, TensorData};
use crate::quant::kernels::{dequantize_linear_le, DequantizeAttrs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tract_onnx::data_resolver::{MmapDataResolver, ModelDataResolver};
use tract_onnx::prelude::TractResult;
use tract_onnx::tract_hir::internal::bail;

/// One folded DequantizeLinear: its constant inputs (the codes still in their side file).
#[derive(Debug)]
struct Job {
    /// The folded value's name, for errors.
    name: String,
    x: ConstTensor,
    scale: ConstTensor,
    zero_point: Option<ConstTensor>,
    attrs: DequantizeAttrs,
    /// Bytes of the float values.
    len: usize,
}

impl Job {
    fn values(&self) -> Result<Vec<u8>, String> {
        let what = |e: String| format!("dequantizing '{}' as the model loads: {e}", self.name);
        let decode = |c: &ConstTensor| c.to_tensor().map_err(|e| what(e.to_string()));
        let x = decode(&self.x)?;
        let scale = decode(&self.scale)?;
        let zp = self.zero_point.as_ref().map(decode).transpose()?;
        let y = dequantize_linear_le(&x, &scale, zp.as_ref(), &self.attrs)
            .map_err(|e| what(e.to_string()))?;
        if y.len() != self.len {
            return Err(what(format!("{} bytes, not {}", y.len(), self.len)));
        }
        Ok(y)
    }
}

/// The engine's data resolver: folded DequantizeLinear outputs by (side file, offset of the
/// codes); every other reference is read from its file.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    jobs: BTreeMap<(PathBuf, usize), Job>,
}

impl Folded {
    /// How many DequantizeLinear were folded.
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }
}

impl ModelDataResolver for Folded {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        let Some(job) = self.jobs.get(&(p.to_path_buf(), offset)) else {
            return MmapDataResolver.read_bytes_from_path(buf, p, offset, length);
        };
        if length.is_some_and(|l| l != job.len) {
            bail!(
                "'{}': {} bytes asked for {} folded",
                job.name,
                length.unwrap_or(0),
                job.len
            );
        }
        match job.values() {
            Ok(values) => {
                *buf = values;
                Ok(())
            }
            Err(e) => bail!("{e}"),
        }
    }
}

/// The external codes of `g`'s value `v` when it is a constant read only by `o`.
fn sole_external(g: &Graph, v: crate::ir::ValueId, o: crate::ir::OpId) -> Option<&ExternalRef> {
    let c = g.const_of(v)?;
    let TensorData::External(r) = &c.data else {
        return None;
    };
    let only_reader =
        g.consumers(v).iter().all(|(r, _)| *r == o) && !g.is_output(v) && !g.is_input(v);
    only_reader.then_some(r)
}

/// Takes every foldable DequantizeLinear out of `m`'s main graph (see the module doc): its
/// output becomes a float constant the returned resolver computes when the engine reads it.
/// A side file that cannot be resolved leaves its DequantizeLinear in the model.
pub(crate) fn fold(m: &mut Model) -> Folded {
    let g = &mut m.graph;
    let mut folded = Folded::default();
    let ops: Vec<_> = g.ops().collect();
    for o in ops {
        let op = g.op(o);
        if op.op_type != "DequantizeLinear"
            || !matches!(op.domain_key(), "" | "ai.onnx")
            || op.attr("output_dtype").is_some()
            || g.outputs_of(o).len() != 1
        {
            continue;
        }
        let attrs = DequantizeAttrs::of(op);
        let (Some(y), Some(xv), Some(sv)) = (g.output(o, 0), g.input(o, 0), g.input(o, 1)) else {
            continue;
        };
        if g.is_output(y) {
            continue;
        }
        let Some(r) = sole_external(g, xv, o) else {
            continue;
        };
        let Some(scale) = g.const_of(sv).cloned() else {
            continue;
        };
        let zero_point = match g.input(o, 2) {
            None => None,
            Some(z) => match g.const_of(z) {
                Some(c) => Some(c.clone()),
                None => continue,
            },
        };
        if scale.dtype != DType::F32 {
            continue;
        }
        let x = g.const_of(xv).expect("checked constant").clone();
        let Ok(file) = r.file.canonicalize() else {
            continue;
        };
        let Ok(start) = usize::try_from(r.start) else {
            continue;
        };
        let len = x.numel().checked_mul(4);
        let Some(len) = len else { continue };
        let name = g.value(y).name.clone();
        let float = ConstTensor {
            name: None,
            dtype: DType::F32,
            dims: x.dims.clone(),
            data: TensorData::External(ExternalRef {
                offset: Some(r.start),
                length: Some(len as u64),
                other: Vec::new(),
                len: len as u64,
                ..r.clone()
            }),
            was_external: true,
            carry: Default::default(),
        };
        let fresh = g.fresh_name(&format!("{name}.folded"));
        let Ok(v) = g.add_const(&fresh, float) else {
            continue;
        };
        let inputs = g.inputs_of(o);
        g.replace_all_uses(y, v);
        g.remove_op(o);
        g.remove_value(y);
        // The codes, scale and zero point no other op reads leave with it.
        for c in inputs.into_iter().flatten() {
            if g.consumers(c).is_empty() && !g.is_output(c) && !g.is_input(c) {
                g.remove_value(c);
            }
        }
        // The name was the DequantizeLinear output's, free now; were it not, the constant
        // would keep its fresh name, and the values are the same either way.
        let _ = g.rename_value(v, &name);
        folded.jobs.insert(
            (file, start),
            Job {
                name,
                x,
                scale,
                zero_point,
                attrs,
                len,
            },
        );
    }
    if !folded.jobs.is_empty() {
        g.release_unused_tensors();
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Session, SessionOptions};
    use crate::ir::Tensor;
    use crate::passes::testkit::{
        attr_i, raw_tensor as raw, sample, tensor, to_side_file, Builder,
    };

    /// `y = x · DQ(w) + x · DQ(v)`: int8 `w` per column, uint8 `v` per tensor with a zero
    /// point; `v`'s codes are also an output when `v_shared`.
    fn model(v_shared: bool) -> Model {
        let (k, n) = (8i64, 6i64);
        let w: Vec<u8> = (0..k * n).map(|i| ((i * 37) % 255) as u8).collect();
        let v: Vec<u8> = (0..k * n).map(|i| ((i * 11) % 256) as u8).collect();
        let sw: Vec<u8> = (0..n)
            .flat_map(|i| (0.01 * (i + 1) as f32).to_le_bytes())
            .collect();
        let mut b = Builder::new(13);
        b.tensor(raw("w.q", 3, &[k, n], w))
            .tensor(raw("w.scale", 1, &[n], sw))
            .tensor(raw("v.q", 2, &[k, n], v))
            .tensor(raw("v.scale", 1, &[], 0.02f32.to_le_bytes().to_vec()))
            .tensor(raw("v.zp", 2, &[], vec![100]))
            .input("x", 1, Some(&[2, k]))
            .node(
                "DequantizeLinear",
                "w.dequantize",
                &["w.q", "w.scale"],
                &["w.dq"],
                vec![attr_i("axis", 1)],
            )
            .node(
                "DequantizeLinear",
                "v.dequantize",
                &["v.q", "v.scale", "v.zp"],
                &["v.dq"],
                vec![],
            )
            .node("MatMul", "mw", &["x", "w.dq"], &["a"], vec![])
            .node("MatMul", "mv", &["x", "v.dq"], &["c"], vec![])
            .node("Add", "add", &["a", "c"], &["y"], vec![])
            .output("y", 1, Some(&[2, n]));
        if v_shared {
            b.output("v.q", 2, Some(&[k, n]));
        }
        b.model()
    }

    fn bits(out: &BTreeMap<String, Tensor>) -> Vec<u32> {
        match &out["y"] {
            Tensor::F32(a) => a.iter().map(|v| v.to_bits()).collect(),
            other => panic!("{:?}", other.dtype()),
        }
    }

    #[test]
    fn folded_weights_give_the_bits_of_the_kernel_as_it_runs() {
        let s = sample(&[("x", tensor(3, &[2, 8]))]);
        let opts = SessionOptions::default();
        let inline = model(false);
        let reference = Session::from_ir(inline.clone(), None, &s, &opts).unwrap();
        let mut ext = inline.clone();
        let _file = to_side_file(&mut ext);
        let mut probe = ext.clone();
        let folded = fold(&mut probe);
        assert_eq!(folded.len(), 2);
        let g = &probe.graph;
        assert!(g.ops().all(|o| g.op(o).op_type != "DequantizeLinear"));
        assert!(g.value_by_name("w.q").is_none() && g.value_by_name("v.zp").is_none());
        assert!(g
            .value_by_name("w.dq")
            .and_then(|v| g.const_of(v))
            .is_some());
        let session = Session::from_ir(ext, None, &s, &opts).unwrap();
        assert_eq!(
            bits(&reference.run(&s).unwrap()),
            bits(&session.run(&s).unwrap())
        );
        assert!(
            session
                .notes()
                .iter()
                .any(|n| n.contains("DequantizeLinear x2 ")),
            "{:?}",
            session.notes()
        );
    }

    #[test]
    fn codes_read_elsewhere_or_inline_stay_with_their_dequantize() {
        let mut inline = model(false);
        assert_eq!(fold(&mut inline).len(), 0, "inline codes folded");
        let mut shared = model(true);
        let _file = to_side_file(&mut shared);
        let mut probe = shared.clone();
        let folded = fold(&mut probe);
        assert_eq!(folded.len(), 1, "only w's codes are read by one op alone");
        let g = &probe.graph;
        assert!(g.value_by_name("v.q").is_some() && g.value_by_name("v.dq").is_some());
        let s = sample(&[("x", tensor(3, &[2, 8]))]);
        let reference = Session::from_ir(model(true), None, &s, &SessionOptions::default())
            .unwrap()
            .run(&s)
            .unwrap();
        let got = Session::from_ir(shared, None, &s, &SessionOptions::default())
            .unwrap()
            .run(&s)
            .unwrap();
        assert_eq!(bits(&reference), bits(&got));
    }

    #[test]
    fn a_side_file_that_changed_is_a_load_error_naming_the_value() {
        let mut ext = model(false);
        let file = to_side_file(&mut ext);
        std::fs::write(file.file(), b"short").unwrap();
        let s = sample(&[("x", tensor(3, &[2, 8]))]);
        let err = match Session::from_ir(ext, None, &s, &SessionOptions::default()) {
            Ok(_) => panic!("a changed side file loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("w.dq") || err.contains("v.dq"), "{err}");
    }
}
