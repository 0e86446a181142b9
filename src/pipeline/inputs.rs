//! The model's inputs as data: which inputs a data set must feed ([`input_specs`]), loading
//! data files and image folders against them ([`load_data`]), random samples for smoke
//! tests, the concrete shapes a run specialises for, and the specialisation itself
//! ([`specialise`]); the node names and op types the settings give, checked against the
//! model before any data is read ([`check_names`]). Shared by `quantize`, `calibrate`,
//! `run` and `compare`.

use super::error::PipelineError;
use super::options::{CalibSource, Common, Mode, QuantizeOptions};
use super::progress::Progress;
use crate::calib::CalibrationFile;
use crate::data::{self, Dataset, InputSpec, Preprocess, Sample};
use crate::ir::{DType, Dim, Model, Tensor, ValueType};
use crate::passes::{PassCx, PassError};
use crate::tune::Overrides;
use std::collections::BTreeMap;
use std::path::Path;

/// The model's real inputs (not initializers), minus the pinned ones, as data specs.
pub fn input_specs(m: &Model, skip: &BTreeMap<String, Tensor>) -> Vec<InputSpec> {
    let g = &m.graph;
    g.inputs
        .iter()
        .filter(|v| g.value(**v).init.is_none() && !skip.contains_key(&g.value(**v).name))
        .map(|v| {
            let val = g.value(*v);
            let (dtype, shape) = match &val.ty {
                Some(ValueType::Tensor { dtype, shape }) => (
                    *dtype,
                    shape.as_ref().map(|d| {
                        d.iter()
                            .map(|x| match x {
                                Dim::Known(k) if *k >= 0 => Some(*k as usize),
                                _ => None,
                            })
                            .collect()
                    }),
                ),
                _ => (DType::F32, None),
            };
            InputSpec::new(val.name.clone(), dtype, shape)
        })
        .collect()
}

/// Loads the data given as `what` (the option that named it, e.g. `--calib`, which errors
/// name); an image folder needs a preprocessing, and what it became is told through
/// `progress`.
pub fn load_data(
    what: &str,
    path: &Path,
    specs: &[InputSpec],
    pre: Option<&Preprocess>,
    progress: &dyn Progress,
) -> Result<Dataset, PipelineError> {
    let images = data::is_image_dir(path)?;
    if images && pre.is_none() {
        return Err(PipelineError::Options(format!(
            "{what} {} holds images: give --preprocess SPEC to say how they become the model input, e.g. --preprocess resize=224x224,scale=255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225 (see --help)",
            path.display()
        )));
    }
    let ds = data::load_with(path, specs, if images { pre } else { None })?;
    if let (true, Some(pre)) = (images, pre) {
        let first = ds.first()?;
        let input = first.iter().next();
        let (name, t) = input.expect("an image sample holds the fed input");
        let mut note = format!(
            "note: {what} {}: {} images as input '{name}' {}[{}] ({pre})",
            path.display(),
            ds.len(),
            t.dtype(),
            t.shape()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        if !ds.skipped.is_empty() {
            let names: Vec<&str> = ds.skipped.iter().map(|(n, _)| n.as_str()).collect();
            note.push_str(&format!("; skipped {}: {}", names.len(), names.join(", ")));
        }
        progress.message(&note);
    }
    Ok(ds)
}

/// The pins of `common` as tensors for `m`'s inputs.
pub fn pins(
    m: &Model,
    common: &Common,
) -> Result<BTreeMap<String, crate::ir::Tensor>, PipelineError> {
    crate::passes::pin_inputs::pin_tensors(m, &common.pins)
        .map_err(|(name, error)| PipelineError::Pin { name, error })
}

/// Refuses `--exclude-nodes`, `--exclude-op-types` and `--op-types` names that match
/// nothing in `m` (the model as given), so that a misspelt name is an error rather than a
/// setting that silently does nothing.
pub fn check_names(m: &Model, common: &Common) -> Result<(), PipelineError> {
    let cfg = common.settings.config().map_err(PipelineError::Options)?;
    cfg.check_names(m)
        .map_err(|error| PipelineError::UnknownNames {
            model: common.model.clone(),
            error,
        })
}

/// `n` random samples for `specs` (a smoke test: ranges from them mean nothing); an input
/// of unknown rank needs a shape in `shapes`.
pub fn random_dataset(
    specs: &[InputSpec],
    shapes: &BTreeMap<String, Vec<i64>>,
    n: usize,
) -> Result<Dataset, PipelineError> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = Sample::new();
        for sp in specs {
            let shape: Vec<usize> = match shapes.get(&sp.name) {
                Some(d) => d.iter().map(|&x| x as usize).collect(),
                None => sp
                    .shape
                    .clone()
                    .ok_or_else(|| {
                        PipelineError::Options(format!(
                            "--calib random: input '{}' has no known rank; give --shape",
                            sp.name
                        ))
                    })?
                    .into_iter()
                    .map(|d| d.unwrap_or(1))
                    .collect(),
            };
            let len: usize = shape.iter().product();
            let vals: Vec<f64> = (0..len)
                .map(|_| match sp.dtype {
                    DType::F32 | DType::F64 => next() * 2.0 - 1.0,
                    DType::Bool => (next() < 0.5) as u8 as f64,
                    _ => (next() * 100.0).floor(),
                })
                .collect();
            let t = Tensor::from_f64(sp.dtype, &shape, &vals).map_err(|e| {
                PipelineError::Options(format!("--calib random: input '{}': {e}", sp.name))
            })?;
            s.insert(sp.name.clone(), t);
        }
        samples.push(s);
    }
    Ok(Dataset::from_samples("random", samples))
}

/// Shapes of `sample`, overridden by `given` (`--shape`).
pub fn sample_shapes(
    sample: &Sample,
    given: &BTreeMap<String, Vec<i64>>,
) -> BTreeMap<String, Vec<i64>> {
    let mut s: BTreeMap<String, Vec<i64>> = sample
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().iter().map(|&d| d as i64).collect()))
        .collect();
    for (k, v) in given {
        s.insert(k.clone(), v.clone());
    }
    s
}

/// Specialises `m` for pinned inputs and concrete shapes (folds `If` nodes whose
/// condition becomes constant) and returns the notes passes left.
pub fn specialise(
    m: &mut Model,
    pins: &BTreeMap<String, Tensor>,
    shapes: &BTreeMap<String, Vec<i64>>,
) -> Result<Vec<String>, PassError> {
    let mut cx = PassCx {
        pinned: pins.clone(),
        input_shapes: shapes.clone(),
        ..Default::default()
    };
    crate::passes::specialize(m, &mut cx)?;
    Ok(cx
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.pass, d.what))
        .collect())
}

/// The data a quantize run reads, loaded and checked before anything runs.
pub struct Loaded {
    /// Calibration samples (none with a ranges file).
    pub calib: Option<Dataset>,
    /// Statistics from `qrange calibrate` (with `--ranges`).
    pub ranges_file: Option<CalibrationFile>,
    /// Evaluation samples (given, or the last fifth of the calibration samples held back;
    /// none held back for a goal, which is judged out of fold).
    pub eval: Option<Dataset>,
    /// The first sample (its shapes specialise the model); the others are read when used.
    pub first: Option<Sample>,
    /// Ground-truth labels of the evaluation samples, when validating with `--labels` (of
    /// the calibration samples when a goal is judged out of fold).
    pub labels: Option<Vec<i64>>,
    pub overrides: Option<Overrides>,
    /// Warnings to show at the end of the run.
    pub warnings: Vec<String>,
}

/// Reads the model and the data `o` names: calibration data (or a ranges file, or random
/// samples), evaluation data (or the last fifth of the calibration data, held back),
/// labels, the overrides file.
pub fn load(
    o: &QuantizeOptions,
    progress: &dyn Progress,
) -> Result<(Model, Loaded), PipelineError> {
    let c = &o.common;
    let model = crate::onnx::read_model(&c.model)?;
    let pins = pins(&model, c)?;
    check_names(&model, c)?;
    let specs = input_specs(&model, &pins);
    let (mut calib, ranges_file) = calibration_source(c, &specs, progress)?;
    let mut eval: Option<Dataset> = match &o.eval {
        Some(p) => Some(load_data(
            "--eval",
            p,
            &specs,
            c.preprocess.as_ref(),
            progress,
        )?),
        None => None,
    };
    let mut warnings = Vec::new();
    // A goal without evaluation data is judged out of fold on every calibration sample
    // (`pipeline::folds`): none is held back.
    let judged_out_of_fold = o.precision.goal.is_some() && calib.is_some();
    // Dynamic quantization and weight-only rounding (RTN, clipping) learn nothing from
    // data: every calibration sample can validate, and without data the model is written
    // unvalidated (the summary says so).
    let learns = match o.mode {
        Mode::Static => true,
        Mode::Dynamic => false,
        Mode::WeightOnly => matches!(
            o.weight_only.algo,
            crate::quant::weight_only::Algo::Gptq { .. }
        ),
    };
    if !learns {
        if eval.is_none() && o.validate {
            eval = calib.take();
        }
    } else if eval.is_none() && o.validate && !judged_out_of_fold {
        eval = Some(hold_back(calib.as_mut(), &mut warnings)?);
    }
    // Only the first sample is read here (shapes); the others are read as they are used.
    let first = match calib.as_ref().or(eval.as_ref()) {
        Some(d) => Some(d.first()?),
        None => None,
    };
    // Everything the validation needs is checked before anything is written.
    let labels = match (&o.labels, &eval, &calib) {
        (Some(k), Some(ev), _) if o.validate => Some(ev.labels(k)?),
        // Judged out of fold: the calibration samples' labels.
        (Some(k), None, Some(c)) if judged_out_of_fold => Some(c.labels(k)?),
        _ => None,
    };
    let overrides = match &o.precision.overrides {
        Some(f) => Some(Overrides::read(f)?),
        None => None,
    };
    Ok((
        model,
        Loaded {
            calib,
            ranges_file,
            eval,
            first,
            labels,
            overrides,
            warnings,
        },
    ))
}

/// The calibration samples `c` names (data, or random samples), or its ranges file.
pub fn calibration_source(
    c: &Common,
    specs: &[InputSpec],
    progress: &dyn Progress,
) -> Result<(Option<Dataset>, Option<CalibrationFile>), PipelineError> {
    Ok(match &c.calib {
        CalibSource::Ranges(f) => (None, Some(CalibrationFile::read(f)?)),
        CalibSource::None => (None, None),
        CalibSource::Random(n) => {
            progress.warn(
                "--calib random: ranges from random data are meaningless; use it for smoke tests only",
            );
            (Some(random_dataset(specs, &c.shapes, *n)?), None)
        }
        CalibSource::Data(path) => (
            Some(load_data(
                "--calib",
                path,
                specs,
                c.preprocess.as_ref(),
                progress,
            )?),
            None,
        ),
    })
}

/// The last fifth of the calibration samples, held back for validation (both parts stay
/// views of the same file).
fn hold_back(
    calib: Option<&mut Dataset>,
    warnings: &mut Vec<String>,
) -> Result<Dataset, PipelineError> {
    match calib {
        Some(ds) if ds.len() >= 2 => {
            let k = (ds.len() / 5).max(1);
            let mut held = ds.split_off(ds.len() - k);
            held.skipped.clear();
            if ds.len() < 8 {
                warnings.push(format!(
                    "holding back {k} of {} calibration samples for validation leaves only {} to calibrate on; give --eval DATA",
                    ds.len() + k,
                    ds.len()
                ));
            }
            Ok(held)
        }
        Some(_) => Err(PipelineError::Options(
            "validation needs evaluation data: one calibration sample cannot be split; give --eval DATA or --no-validate".into(),
        )),
        None => Err(PipelineError::Options(
            "validation needs evaluation data without calibration samples (--ranges, or none): give --eval DATA or --no-validate"
                .into(),
        )),
    }
}
