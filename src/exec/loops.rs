//! ONNX `Loop` semantics on host tensors, for a body run once per iteration.
//!
//! [`run_loop`] drives one execution of a `Loop`: it feeds the body the iteration number,
//! the condition and the loop-carried values, takes back the new condition, the new carried
//! values and the iteration's scan outputs, and stacks each scan output along a new first
//! axis at the end, as ONNX specifies. Iterations run while `i < M` (when the trip count
//! `M` is given; a negative `M` runs none) and the condition holds (when given). The body
//! itself is a callback: execution (`staged`) runs it in the engine, calibration
//! (`calib::collect`) runs it while observing its values.
//!
//! One execution runs at most [`LoopLimits::max_iterations`] iterations: a loop still
//! running then is an error naming the node, never a silent stop.

use crate::ir::{DType, Tensor};
use crate::passes::unroll_loop::UnrollLimits;

/// Default cap on the iterations of one execution of a `Loop`.
pub const MAX_ITERATIONS: u64 = 100_000;

/// How `Loop` nodes are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopLimits {
    /// Iterations one execution of a `Loop` may run; one more is an error.
    pub max_iterations: u64,
    /// `Loop`s with a constant trip count within these bounds are unrolled for the
    /// engine (`passes::unroll_loop`); the others run their body once per iteration.
    pub unroll: UnrollLimits,
}

impl Default for LoopLimits {
    fn default() -> LoopLimits {
        LoopLimits {
            max_iterations: MAX_ITERATIONS,
            unroll: UnrollLimits::default(),
        }
    }
}

/// One execution of a `Loop`: its inputs and what the body yields.
pub struct LoopRun<'a> {
    /// Input `M`, when given.
    pub trip_count: Option<&'a Tensor>,
    /// Input `cond`, when given.
    pub cond: Option<&'a Tensor>,
    /// The initial loop-carried values.
    pub carried: Vec<Tensor>,
    /// Element type and shape of one iteration's value of each scan output, when
    /// declared: the (empty) scan outputs of a loop that runs no iteration. Its length is
    /// the number of scan outputs the body yields after its carried values.
    pub scan_shapes: Vec<Option<(DType, Vec<usize>)>>,
    pub max_iterations: u64,
}

/// What one execution of a `Loop` produced.
#[derive(Debug)]
pub struct LoopResult {
    /// The final loop-carried values.
    pub carried: Vec<Tensor>,
    /// Each scan output, stacked along a new first axis.
    pub scans: Vec<Tensor>,
    pub iterations: u64,
}

/// The single value of a one-element tensor.
fn one(t: &Tensor) -> Option<i64> {
    match t.to_i64_vec()?.as_slice() {
        [x] => Some(*x),
        _ => None,
    }
}

fn describe(t: &Tensor) -> String {
    format!("{}{:?}", t.dtype(), t.shape())
}

/// Runs the loop `r` with `body(iteration, condition, carried)`, which returns the body's
/// outputs: the new condition, the carried values, then the scan outputs. Errors of the
/// loop itself are made by `fail` from a message (without the node name).
pub fn run_loop<E>(
    r: LoopRun<'_>,
    fail: impl Fn(String) -> E,
    mut body: impl FnMut(i64, bool, Vec<Tensor>) -> Result<Vec<Tensor>, E>,
) -> Result<LoopResult, E> {
    let m = match r.trip_count {
        None => None,
        Some(t) => match (t.dtype().is_integer(), one(t)) {
            (true, Some(m)) => Some(m),
            _ => {
                return Err(fail(format!(
                    "the trip count M is not one integer ({})",
                    describe(t)
                )))
            }
        },
    };
    let condition = |t: &Tensor, what: &str| match (t.dtype(), one(t)) {
        (DType::Bool, Some(c)) => Ok(c != 0),
        _ => Err(fail(format!("{what} is not one boolean ({})", describe(t)))),
    };
    let mut cond = match r.cond {
        None => true,
        Some(t) => condition(t, "the condition")?,
    };
    let n = r.carried.len();
    let k = r.scan_shapes.len();
    let mut carried = r.carried;
    let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); k];
    let mut i: i64 = 0;
    while m.is_none_or(|m| i < m) && cond {
        if i as u64 >= r.max_iterations {
            return Err(fail(format!(
                "still running after {} iterations, the cap on one execution of a Loop \
                 (trip count {}, condition still true)",
                r.max_iterations,
                m.map_or("not given".to_string(), |m| m.to_string())
            )));
        }
        let mut out = body(i, cond, carried)?;
        if out.len() != 1 + n + k {
            return Err(fail(format!(
                "the body returned {} values; a Loop with {n} carried values and {k} scan \
                 outputs needs {}",
                out.len(),
                1 + n + k
            )));
        }
        let rest = out.split_off(1);
        cond = condition(&out[0], "the body's condition output")?;
        let mut rest = rest.into_iter();
        carried = rest.by_ref().take(n).collect();
        for (s, t) in rest.enumerate() {
            if let Some(first) = scans[s].first() {
                if first.shape() != t.shape() || first.dtype() != t.dtype() {
                    return Err(fail(format!(
                        "scan output {s} is {} at iteration {i} but {} at iteration 0",
                        describe(&t),
                        describe(first)
                    )));
                }
            }
            scans[s].push(t);
        }
        i += 1;
    }
    let mut stacked = Vec::with_capacity(k);
    for (s, parts) in scans.iter().enumerate() {
        let t = if parts.is_empty() {
            r.scan_shapes[s]
                .as_ref()
                .and_then(|(dtype, shape)| {
                    let mut dims = vec![0];
                    dims.extend(shape);
                    Tensor::empty(*dtype, &dims)
                })
                .ok_or_else(|| {
                    fail(format!(
                        "no iteration ran, and neither the body nor the Loop declares the \
                         element type and shape of scan output {s}, which its empty value needs"
                    ))
                })?
        } else {
            Tensor::stack(parts).expect("checked: same type and shape")
        };
        stacked.push(t);
    }
    Ok(LoopResult {
        carried,
        scans: stacked,
        iterations: i as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_i64(v: i64) -> Tensor {
        Tensor::I64(ndarray::arr0(v).into_dyn())
    }

    fn boolean(v: bool) -> Tensor {
        Tensor::Bool(ndarray::arr0(v).into_dyn())
    }

    fn run(
        m: Option<i64>,
        cond: Option<bool>,
        stop_after: i64,
        cap: u64,
    ) -> Result<LoopResult, String> {
        let m = m.map(scalar_i64);
        let c = cond.map(boolean);
        let r = LoopRun {
            trip_count: m.as_ref(),
            cond: c.as_ref(),
            carried: vec![scalar_i64(0)],
            scan_shapes: vec![Some((DType::I64, vec![]))],
            max_iterations: cap,
        };
        // Body: acc += i; condition: i + 1 < stop_after; scan output: i.
        run_loop(
            r,
            |e| e,
            |i, _, carried| {
                let acc = carried[0].to_i64_vec().unwrap()[0];
                Ok(vec![
                    boolean(i + 1 < stop_after),
                    scalar_i64(acc + i),
                    scalar_i64(i),
                ])
            },
        )
    }

    #[test]
    fn trip_count_and_condition_end_the_loop_as_onnx_says() {
        // M alone: M iterations.
        let r = run(Some(4), None, 100, 1000).unwrap();
        assert_eq!(r.iterations, 4);
        assert_eq!(r.carried[0].to_i64_vec().unwrap(), vec![6]);
        assert_eq!(r.scans[0].shape(), vec![4]);
        assert_eq!(r.scans[0].to_i64_vec().unwrap(), vec![0, 1, 2, 3]);
        // The body's condition stops it first.
        assert_eq!(run(Some(10), Some(true), 3, 1000).unwrap().iterations, 3);
        // No M: only the condition.
        assert_eq!(run(None, Some(true), 5, 1000).unwrap().iterations, 5);
        // A false initial condition or M <= 0 runs nothing: carried values pass through,
        // scan outputs are empty with the declared shape.
        for r in [
            run(Some(10), Some(false), 3, 1000).unwrap(),
            run(Some(0), None, 3, 1000).unwrap(),
            run(Some(-2), None, 3, 1000).unwrap(),
        ] {
            assert_eq!(r.iterations, 0);
            assert_eq!(r.carried[0].to_i64_vec().unwrap(), vec![0]);
            assert_eq!(r.scans[0].shape(), vec![0]);
        }
    }

    #[test]
    fn the_iteration_cap_is_an_error_not_a_stop() {
        let e = run(None, None, i64::MAX, 50).unwrap_err();
        assert!(e.contains("still running after 50 iterations"), "{e}");
        assert!(e.contains("trip count not given"), "{e}");
        let e = run(Some(1_000_000), Some(true), i64::MAX, 50).unwrap_err();
        assert!(e.contains("trip count 1000000"), "{e}");
        // Exactly the cap is fine.
        assert_eq!(run(Some(50), None, i64::MAX, 50).unwrap().iterations, 50);
    }

    #[test]
    fn bad_inputs_and_body_outputs_are_errors() {
        let f = Tensor::F32(ndarray::arr0(3.0f32).into_dyn());
        let r = LoopRun {
            trip_count: Some(&f),
            cond: None,
            carried: vec![],
            scan_shapes: vec![],
            max_iterations: 10,
        };
        let e = run_loop(r, |e| e, |_, _, _| Ok(vec![])).unwrap_err();
        assert!(e.contains("trip count M is not one integer"), "{e}");
        let two = Tensor::I64(ndarray::arr1(&[2i64, 2]).into_dyn());
        let r = LoopRun {
            trip_count: None,
            cond: Some(&two),
            carried: vec![],
            scan_shapes: vec![],
            max_iterations: 10,
        };
        let e = run_loop(r, |e| e, |_, _, _| Ok(vec![])).unwrap_err();
        assert!(e.contains("the condition is not one boolean"), "{e}");
        // Scan outputs must keep their shape; a loop without iterations needs it declared.
        let m = scalar_i64(2);
        let r = LoopRun {
            trip_count: Some(&m),
            cond: None,
            carried: vec![],
            scan_shapes: vec![None],
            max_iterations: 10,
        };
        let e = run_loop(
            r,
            |e| e,
            |i, _, _| {
                Ok(vec![
                    boolean(true),
                    Tensor::I64(ndarray::Array1::zeros(i as usize + 1).into_dyn()),
                ])
            },
        )
        .unwrap_err();
        assert!(e.contains("scan output 0 is i64[2] at iteration 1"), "{e}");
        let zero = scalar_i64(0);
        let r = LoopRun {
            trip_count: Some(&zero),
            cond: None,
            carried: vec![],
            scan_shapes: vec![None],
            max_iterations: 10,
        };
        let e = run_loop(r, |e| e, |_, _, _| Ok(vec![])).unwrap_err();
        assert!(e.contains("no iteration ran"), "{e}");
        let r = LoopRun {
            trip_count: Some(&m),
            cond: None,
            carried: vec![],
            scan_shapes: vec![],
            max_iterations: 10,
        };
        let e = run_loop(r, |e| e, |_, _, _| Ok(vec![boolean(true), zero.clone()])).unwrap_err();
        assert!(e.contains("the body returned 2 values"), "{e}");
    }
}
