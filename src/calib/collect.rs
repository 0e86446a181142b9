//! Streaming collection: runs the float model over the calibration samples, tapping the
//! values to calibrate, and folds every tapped tensor into its statistics at once.
//!
//! Memory does not grow with the number of samples (nothing of a sample is kept after it
//! is folded in), and the tapped tensors of one run are bounded by a budget: the values
//! are split into groups whose per-sample size fits it, one engine run per group and sample.

use super::{CalibError, TensorStats};
use crate::data::Sample;
use crate::exec::{ExecError, Session, SessionOptions};
use crate::onnx::proto::ModelProto;
use std::collections::BTreeMap;
use std::path::Path;

/// Errors of collection: the engine's or the statistics'.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Calib(#[from] CalibError),
}

/// Splits `values` (name, bytes per sample) into groups of at most `budget` bytes each,
/// keeping the given order; a value larger than the budget gets a group of its own.
pub fn plan_groups(values: &[(String, u64)], budget: u64) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut used = 0u64;
    for (name, bytes) in values {
        match groups.last_mut() {
            Some(g) if used + bytes <= budget => {
                g.push(name.clone());
                used += bytes;
            }
            _ => {
                groups.push(vec![name.clone()]);
                used = *bytes;
            }
        }
    }
    groups
}

/// Statistics of `values` over `samples`, in `groups` (see [`plan_groups`]).
/// `progress(done, total)` is called after each engine run.
pub fn collect(
    model: &ModelProto,
    base_dir: Option<&Path>,
    samples: &[Sample],
    groups: &[Vec<String>],
    mut progress: impl FnMut(u64, u64),
) -> Result<BTreeMap<String, TensorStats>, CollectError> {
    let mut stats: BTreeMap<String, TensorStats> = BTreeMap::new();
    let total = (groups.len() * samples.len()) as u64;
    let mut done = 0;
    for group in groups {
        let opts = SessionOptions {
            taps: group.clone(),
        };
        let Some(first) = samples.first() else {
            break;
        };
        let session = Session::new(model, base_dir, first, &opts)?;
        for s in samples {
            let out = session.run(s)?;
            for name in group {
                if let Some(t) = out.get(name) {
                    stats
                        .entry(name.clone())
                        .or_default()
                        .observe_tensor(name, t)?;
                }
            }
            drop(out);
            done += 1;
            progress(done, total);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_the_budget_and_order() {
        let v: Vec<(String, u64)> = [("a", 40), ("b", 50), ("c", 20), ("d", 200), ("e", 10)]
            .iter()
            .map(|(n, b)| (n.to_string(), *b))
            .collect();
        let g = plan_groups(&v, 100);
        assert_eq!(
            g,
            vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]
                .into_iter()
                .map(|x| x.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert_eq!(plan_groups(&v, 1 << 30).len(), 1);
    }
}
