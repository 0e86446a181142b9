//! Accuracy metrics between a reference output and a test output, accumulated over
//! samples in f64: SQNR, cosine similarity, max-abs error, top-1 agreement and task
//! accuracy against labels.

use crate::ir::Tensor;
use serde::Serialize;

/// Streaming comparison of one output across samples.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    sig: f64,
    noise: f64,
    dot: f64,
    ref_sq: f64,
    test_sq: f64,
    max_abs: f64,
    elements: u64,
    samples: u64,
    top1_same: u64,
    top1_counted: u64,
    correct_ref: u64,
    correct_test: u64,
    labelled: u64,
}

/// Final figures of a [`Comparison`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    /// 10·log10(Σ ref² / Σ (ref − test)²); `inf` when identical.
    pub sqnr_db: f64,
    pub cosine: f64,
    pub max_abs: f64,
    pub samples: u64,
    /// Fraction of samples whose argmax agrees (classifier-like outputs only).
    pub top1_agreement: Option<f64>,
    /// Accuracy of argmax against labels, reference then test.
    pub accuracy_ref: Option<f64>,
    pub accuracy_test: Option<f64>,
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

impl Comparison {
    /// Adds one sample. `classes`: the size of the class axis when the output is
    /// classifier-like (argmax over the last axis), `label` the true class if known.
    pub fn add(&mut self, reference: &[f32], test: &[f32], classifier: bool, label: Option<i64>) {
        assert_eq!(reference.len(), test.len(), "outputs of different sizes");
        for (&r, &t) in reference.iter().zip(test) {
            let (r, t) = (r as f64, t as f64);
            self.sig += r * r;
            self.noise += (r - t) * (r - t);
            self.dot += r * t;
            self.ref_sq += r * r;
            self.test_sq += t * t;
            self.max_abs = self.max_abs.max((r - t).abs());
        }
        self.elements += reference.len() as u64;
        self.samples += 1;
        if classifier && !reference.is_empty() {
            let (a, b) = (argmax(reference), argmax(test));
            self.top1_counted += 1;
            self.top1_same += (a == b) as u64;
            if let Some(l) = label {
                self.labelled += 1;
                self.correct_ref += (a as i64 == l) as u64;
                self.correct_test += (b as i64 == l) as u64;
            }
        }
    }

    /// Adds another comparison's samples (the pooled figures of both sets of samples).
    pub fn merge(&mut self, other: &Comparison) {
        self.sig += other.sig;
        self.noise += other.noise;
        self.dot += other.dot;
        self.ref_sq += other.ref_sq;
        self.test_sq += other.test_sq;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.elements += other.elements;
        self.samples += other.samples;
        self.top1_same += other.top1_same;
        self.top1_counted += other.top1_counted;
        self.correct_ref += other.correct_ref;
        self.correct_test += other.correct_test;
        self.labelled += other.labelled;
    }

    /// The figures so far.
    pub fn metrics(&self) -> Metrics {
        let frac = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        Metrics {
            sqnr_db: sqnr_db(self.sig, self.noise),
            cosine: if self.ref_sq > 0.0 && self.test_sq > 0.0 {
                self.dot / (self.ref_sq.sqrt() * self.test_sq.sqrt())
            } else if self.ref_sq == self.test_sq {
                1.0
            } else {
                0.0
            },
            max_abs: self.max_abs,
            samples: self.samples,
            top1_agreement: frac(self.top1_same, self.top1_counted),
            accuracy_ref: frac(self.correct_ref, self.labelled),
            accuracy_test: frac(self.correct_test, self.labelled),
        }
    }
}

/// A tensor's values as f32, the precision metrics read (strings give `None`).
pub fn as_f32(t: &Tensor) -> Option<Vec<f32>> {
    match t {
        Tensor::F32(a) => Some(a.iter().copied().collect()),
        other => other
            .to_f64_vec()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
    }
}

/// SQNR in dB from signal and noise energies.
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// True for outputs that look like class scores: one non-trivial axis (the last) of at
/// least two entries, the others 1.
pub fn is_classifier_shape(shape: &[usize]) -> bool {
    match shape.split_last() {
        Some((&last, rest)) => last >= 2 && rest.iter().all(|&d| d == 1),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_sqnr_and_cosine() {
        let mut c = Comparison::default();
        // signal energy 1+4 = 5, noise 0.25+0 = 0.25 → 10·log10(20) = 13.0103 dB
        c.add(&[1.0, 2.0], &[1.5, 2.0], true, Some(1));
        let m = c.metrics();
        assert!((m.sqnr_db - 13.010299956639813).abs() < 1e-9);
        // cos = (1.5+4)/(sqrt(5)·sqrt(6.25)) = 5.5/5.5902 = 0.98387
        assert!((m.cosine - 5.5 / (5f64.sqrt() * 2.5)).abs() < 1e-12);
        assert_eq!(m.max_abs, 0.5);
        assert_eq!(m.top1_agreement, Some(1.0));
        assert_eq!(m.accuracy_ref, Some(1.0));
    }

    #[test]
    fn top1_disagreement_and_accuracy() {
        let mut c = Comparison::default();
        c.add(&[0.9, 0.1], &[0.4, 0.6], true, Some(0));
        c.add(&[0.2, 0.8], &[0.1, 0.9], true, Some(0));
        let m = c.metrics();
        assert_eq!(m.top1_agreement, Some(0.5));
        assert_eq!(m.accuracy_ref, Some(0.5));
        assert_eq!(m.accuracy_test, Some(0.0));
    }

    #[test]
    fn identical_is_infinite_sqnr() {
        let mut c = Comparison::default();
        c.add(&[1.0, -1.0], &[1.0, -1.0], false, None);
        assert_eq!(c.metrics().sqnr_db, f64::INFINITY);
        assert_eq!(c.metrics().top1_agreement, None);
    }

    #[test]
    fn classifier_shapes() {
        assert!(is_classifier_shape(&[1, 214]));
        assert!(!is_classifier_shape(&[1, 1, 640, 640]));
        assert!(!is_classifier_shape(&[1, 1]));
    }
}
