//! Pass `pin_inputs`: applies the user's facts about graph inputs.
//!
//! **What it does.** Each input in [`PassCx::pinned`] becomes an initializer holding the
//! given value and stops being a graph input. Each input in [`PassCx::input_shapes`]
//! gets those concrete dims in place of the declared (often symbolic) ones.
//!
//! **Requires:** nothing. A pinned value whose element type differs from the declared
//! one is converted when the conversion is exact (`16000` given as f64 for an int64
//! input), else rejected; a shape that contradicts a known declared dim or the rank is
//! rejected. Names that are no input of the main graph are errors.
//!
//! **Effects:** graph inputs and their types; types downstream are stale until
//! `infer_shapes` runs. Running it twice changes nothing the second time.
//!
//! **Example** (`sr = 16000`, `input = [1, 576]`):
//! ```text
//! input  %input: f32[?,?]              input  %input: f32[1,576]
//! input  %sr: i64[]                    const  %sr: i64[] = [16000]
//! ```

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::eval::cast;
use crate::ir::{ConstTensor, Dim, Model, Tensor, ValueType};

/// See the module documentation.
pub struct PinInputs;

const NAME: &str = "pin_inputs";

fn err(what: String) -> PassError {
    PassError { pass: NAME, what }
}

impl Pass for PinInputs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "turn pinned inputs into constants and give inputs their concrete shapes"
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let g = &mut m.graph;
        let input_names = |g: &crate::ir::Graph| -> String {
            g.inputs
                .iter()
                .filter(|v| g.value(**v).init.is_none())
                .map(|v| g.value(*v).name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut changed = false;
        for (name, t) in &cx.pinned {
            let Some(v) = g.value_by_name(name) else {
                return Err(err(format!(
                    "cannot pin '{name}': the model has no input of that name (inputs: {})",
                    input_names(g)
                )));
            };
            if !g.is_input(v) {
                let same = g
                    .const_of(v)
                    .and_then(|c| c.to_tensor().ok())
                    .is_some_and(|c| cast(t, c.dtype()).is_ok_and(|x| x == c));
                if same {
                    continue; // pinned by an earlier run
                }
                return Err(err(format!(
                    "cannot pin '{name}': it is not a graph input (inputs: {})",
                    input_names(g)
                )));
            }
            let (dtype, shape) = match &g.value(v).ty {
                Some(ValueType::Tensor { dtype, shape }) => (Some(*dtype), shape.clone()),
                _ => (None, None),
            };
            let t = match dtype {
                Some(d) if d != t.dtype() => {
                    let c = cast(t, d).map_err(|e| {
                        err(format!("cannot pin '{name}' ({}) as {d}: {e}", t.dtype()))
                    })?;
                    let back = cast(&c, t.dtype()).ok();
                    if back.as_ref() != Some(t) {
                        return Err(err(format!(
                            "cannot pin '{name}': its value does not convert exactly from {} to the declared {d}",
                            t.dtype()
                        )));
                    }
                    c
                }
                _ => t.clone(),
            };
            let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            check_dims(name, shape.as_deref(), &dims)?;
            let ct = ConstTensor::from_tensor(Some(name.clone()), &t);
            let tid = g.add_tensor(ct);
            let val = g.value_mut(v);
            val.init = Some(tid);
            val.ty = Some(ValueType::tensor(t.dtype(), &dims));
            g.inputs.retain(|x| *x != v);
            g.initializers.push(v);
            changed = true;
        }
        for (name, dims) in &cx.input_shapes {
            if cx.pinned.contains_key(name) {
                continue;
            }
            let v = g
                .value_by_name(name)
                .filter(|v| g.is_input(*v) && g.value(*v).init.is_none());
            let Some(v) = v else {
                return Err(err(format!(
                    "cannot set the shape of '{name}': the model has no input of that name (inputs: {})",
                    input_names(g)
                )));
            };
            let Some(ValueType::Tensor { dtype, shape }) = g.value(v).ty.clone() else {
                return Err(err(format!(
                    "cannot set the shape of '{name}': the input is not declared as a tensor"
                )));
            };
            check_dims(name, shape.as_deref(), dims)?;
            let new = ValueType::tensor(dtype, dims);
            if g.value(v).ty.as_ref() != Some(&new) {
                g.value_mut(v).ty = Some(new);
                changed = true;
            }
        }
        if changed {
            super::util::allow_constant_initializers(m);
        }
        Ok(Changed::from_bool(changed))
    }
}

fn check_dims(name: &str, declared: Option<&[Dim]>, given: &[i64]) -> Result<(), PassError> {
    let show = |d: &[Dim]| {
        d.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    if let Some(&bad) = given.iter().find(|&&d| d < 0) {
        return Err(err(format!("'{name}': dimension {bad} is negative")));
    }
    let Some(decl) = declared else {
        return Ok(());
    };
    let clash = decl.len() != given.len()
        || decl
            .iter()
            .zip(given)
            .any(|(d, g)| matches!(d, Dim::Known(k) if *k >= 0 && k != g));
    if clash {
        return Err(err(format!(
            "'{name}': shape {given:?} does not fit the declared [{}]",
            show(decl)
        )));
    }
    Ok(())
}

/// Why a pinned value cannot be made for a model input.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("the model has no input named '{0}'")]
    NoInput(String),
    #[error("input '{0}' is not a typed tensor")]
    Untyped(String),
    #[error("{0}")]
    Value(String),
}

/// The tensor pinning input `name` of `m` to `values`, in the input's declared element
/// type: the declared shape when it is fully known and holds as many values, else a
/// scalar for one value and a vector for several.
pub fn pin_tensor(m: &Model, name: &str, values: &[f64]) -> Result<Tensor, PinError> {
    let g = &m.graph;
    let v = g
        .inputs
        .iter()
        .copied()
        .find(|v| g.value(*v).name == name && g.value(*v).init.is_none())
        .ok_or_else(|| PinError::NoInput(name.to_string()))?;
    let (dtype, dims) = match &g.value(v).ty {
        Some(ValueType::Tensor { dtype, shape }) => (*dtype, shape.clone()),
        _ => return Err(PinError::Untyped(name.to_string())),
    };
    let known: Option<Vec<usize>> = dims.as_ref().and_then(|d| {
        d.iter()
            .map(|x| match x {
                Dim::Known(k) => Some(*k as usize),
                _ => None,
            })
            .collect()
    });
    let shape: Vec<usize> = match known {
        Some(d) if d.is_empty() && values.len() == 1 => vec![],
        Some(d) if !d.is_empty() && d.iter().product::<usize>() == values.len() => d,
        _ if values.len() == 1 => vec![],
        _ => vec![values.len()],
    };
    Tensor::from_f64(dtype, &shape, values).map_err(|e| PinError::Value(e.to_string()))
}

/// [`pin_tensor`] of every `(name, values)` pair, by input name.
pub fn pin_tensors(
    m: &Model,
    pins: &[(String, Vec<f64>)],
) -> Result<std::collections::BTreeMap<String, Tensor>, (String, PinError)> {
    pins.iter()
        .map(|(name, vals)| {
            pin_tensor(m, name, vals)
                .map(|t| (name.clone(), t))
                .map_err(|e| (name.clone(), e))
        })
        .collect()
}
