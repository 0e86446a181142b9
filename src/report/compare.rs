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
    /// Each sample's comparison per output (what [`super::estimate`] resamples).
    pub per_sample: Vec<super::estimate::SampleComparison>,
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
    let mut per_sample = Vec::with_capacity(samples.count());
    for i in 0..samples.count() {
        let mut mine: BTreeMap<String, Comparison> = BTreeMap::new();
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
            let label = labels.and_then(|l| l.get(i).copied());
            // The pooled figures sum element by element, as they always have (the
            // per-sample sums would round differently).
            acc.entry(name.clone())
                .or_default()
                .add(&va, &vb, classifier, label);
            mine.entry(name.clone())
                .or_default()
                .add(&va, &vb, classifier, label);
        }
        per_sample.push(mine);
        progress();
    }
    Ok(ModelComparison {
        outputs: acc.into_iter().map(|(k, c)| (k, c.metrics())).collect(),
        per_sample,
    })
}
