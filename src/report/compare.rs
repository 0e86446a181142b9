//! Runs two models on the same samples in the same engine and mode and compares every
//! output they share.

use super::metrics::{as_f32, is_classifier_shape, Comparison, Metrics};
use crate::data::{DataError, SampleSource};
use crate::exec::{ExecError, Session};
use std::collections::BTreeMap;

/// Per-output comparison of a reference and a test model.
#[derive(Clone, Debug, Default)]
pub struct ModelComparison {
    pub outputs: BTreeMap<String, Metrics>,
}

/// Why a comparison stopped: a sample could not be read, or the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Runs `reference` and `test` on every sample (read one at a time) and compares the outputs
/// named in both. `labels[i]` is sample i's true class, when known; `progress` is called
/// after each sample.
pub fn compare<S: SampleSource + ?Sized>(
    reference: &Session,
    test: &Session,
    samples: &S,
    labels: Option<&[i64]>,
    mut progress: impl FnMut(),
) -> Result<ModelComparison, CompareError> {
    let mut acc: BTreeMap<String, Comparison> = BTreeMap::new();
    for i in 0..samples.count() {
        let s = samples.sample(i)?;
        let a = reference.run(&s)?;
        let b = test.run(&s)?;
        for (name, ta) in &a {
            let Some(tb) = b.get(name) else { continue };
            let (Some(va), Some(vb)) = (as_f32(ta), as_f32(tb)) else {
                continue;
            };
            if va.len() != vb.len() {
                continue;
            }
            let classifier = is_classifier_shape(&ta.shape());
            acc.entry(name.clone()).or_default().add(
                &va,
                &vb,
                classifier,
                labels.and_then(|l| l.get(i).copied()),
            );
        }
        progress();
    }
    Ok(ModelComparison {
        outputs: acc.into_iter().map(|(k, c)| (k, c.metrics())).collect(),
    })
}
