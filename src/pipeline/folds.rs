//! k-fold statistics: what an honest estimate of a goal needs from calibration data
//! alone. The calibration samples are dealt into folds (sample `i` into fold `i % k`);
//! each fold is calibrated on its own, and the statistics of the samples outside a fold
//! are the exact merge of the other folds' (statistics merge bit-identically, whatever
//! the grouping). Ranges chosen from them are the ranges the fold's samples did not see,
//! so every calibration sample gets an out-of-fold error (`pipeline::precision`).

use super::calibrate::calibrate;
use super::error::PipelineError;
use super::prepare::Prepared;
use super::progress::Progress;
use crate::calib::collect::Keep;
use crate::calib::CalibrationFile;
use crate::data::{DataError, Dataset, Sample, SampleSource};
use std::borrow::Cow;

/// Folds at most.
pub const MAX_FOLDS: usize = 8;

/// The samples of one fold, read from the data set when used.
struct Fold<'a> {
    data: &'a Dataset,
    indices: Vec<usize>,
}

impl SampleSource for Fold<'_> {
    fn count(&self) -> usize {
        self.indices.len()
    }
    fn sample(&self, i: usize) -> Result<Cow<'_, Sample>, DataError> {
        let j = *self.indices.get(i).ok_or(DataError::NoSample {
            index: i,
            len: self.indices.len(),
        })?;
        self.data.get(j).map(Cow::Owned)
    }
}

/// The folds of `n` samples: at most [`MAX_FOLDS`], at least two samples outside each.
pub fn fold_count(n: usize) -> usize {
    n.min(MAX_FOLDS)
}

/// The fold of each of `n` samples, dealt round-robin into `k` folds.
pub fn assignment(n: usize, k: usize) -> Vec<usize> {
    (0..n).map(|i| i % k.max(1)).collect()
}

/// Per fold, the statistics of the calibration samples outside it.
pub struct FoldStatistics {
    pub fold_of: Vec<usize>,
    /// One per fold: the other folds' statistics merged.
    pub others: Vec<CalibrationFile>,
}

/// Calibrates each of `k` folds of `data` on its own and merges, per fold, the others.
pub fn statistics(
    p: &Prepared,
    data: &Dataset,
    k: usize,
    threads: usize,
    progress: &dyn Progress,
) -> Result<FoldStatistics, PipelineError> {
    let fold_of = assignment(data.len(), k);
    let mut own = Vec::with_capacity(k);
    for f in 0..k {
        let fold = Fold {
            data,
            indices: (0..data.len()).filter(|&i| fold_of[i] == f).collect(),
        };
        let keep = Keep {
            samples: &Default::default(),
            others: &mut |_| {},
        };
        let (stats, _) = calibrate(p, &fold, threads, progress, keep)?;
        own.push(stats);
    }
    let mut others = Vec::with_capacity(k);
    for f in 0..k {
        let mut merged: Option<CalibrationFile> = None;
        for (g, s) in own.iter().enumerate() {
            if g == f {
                continue;
            }
            merged = Some(match merged {
                None => s.clone(),
                Some(m) => CalibrationFile::merge(&m, s).map_err(|e| {
                    PipelineError::Options(format!("fold statistics do not merge: {e}"))
                })?,
            });
        }
        others.push(match merged {
            Some(m) => m,
            None => CalibrationFile::new(p.sha256.get()?),
        });
    }
    Ok(FoldStatistics { fold_of, others })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_deal_samples_round_robin() {
        assert_eq!(assignment(5, 2), vec![0, 1, 0, 1, 0]);
        assert_eq!(fold_count(32), 8);
        assert_eq!(fold_count(6), 6);
    }
}
