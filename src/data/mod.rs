//! Calibration and evaluation data: loading model inputs from disk, writing outputs back.
//!
//! Owns the on-disk data formats and their validation against a model's inputs:
//! - `.npz`: one array per model input, named like the input, axis 0 = sample index (so
//!   `arr[i]` is sample `i` and keeps the model's own batch dimension). Other numeric arrays
//!   (`label`, …) go to [`Dataset::extra`]; string/object arrays (`meta_*` notes) are skipped
//!   with a reason in [`Dataset::skipped`].
//! - `.npy`: a single array for a single-input model, axis 0 = sample index.
//! - ONNX's test-data layout: a directory of `test_data_set_N/` folders (or one such folder)
//!   holding `input_K.pb` (and optionally `output_K.pb`) serialized `TensorProto`s. A tensor
//!   whose name is a model input feeds that input; otherwise `input_K` feeds the K-th input.
//!   Expected outputs land in `extra`, keyed by tensor name (or `output_K`), stacked on axis 0.
//! - An image folder (PNG/JPEG files, no test data): one sample per image in sorted name
//!   order, turned into the model's image input by a declared [`Preprocess`] (`images`).
//!
//! **Reading on demand.** Loading validates everything that is cheap to validate: member
//! names against the model inputs, dtypes and shapes (from the `.npy` headers), equal sample
//! counts, sizes; labels and other extra arrays are small and decoded at once. The input
//! arrays of `.npz`/`.npy` data are not decoded whole: [`Dataset::get`] reads sample `i`
//! when asked (`stream`: a seek for stored bytes, a forward inflate stream for deflated
//! members), from any thread, and checks it for NaN/Inf then ([`DataError::NonFinite`],
//! naming the file, input, sample and element). A [`Dataset`] is a view of a range of its
//! source's samples ([`Dataset::split_off`] holds back a tail without reading anything).
//! Test-data folders, image folders and samples made in memory ([`Dataset::from_samples`])
//! are held decoded. Code that runs over samples takes a [`SampleSource`] (a `Dataset` or
//! samples in memory) and reads one sample at a time, so memory does not grow with the
//! number of samples.
//!
//! The zip CRC-32 of every `.npz` member is checked (a stored input member when it is opened,
//! a deflated one when its stream passes the last sample); external data of `.pb` tensors must
//! resolve inside the tensor file's folder; images larger than the decoder's limits are
//! refused from their header.
//!
//! Every problem with user data is a one-line [`DataError`] naming the file and the array or
//! input. Nothing here knows about graphs or execution; callers pass [`InputSpec`]s.

mod images;
pub(crate) mod npy;
mod npz;
mod pb;
mod stream;

pub use images::{
    decode as decode_image, is_image_dir, Align, Color, Layout, Pixels, Preprocess, SpecError,
};
pub use npz::write_npz;
pub use pb::read_tensor_pb;

use crate::ir::tensor::{DType, Tensor};
use ndarray::{Axis, Slice};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stream::{Array, Coding, Opened, Span, Streamed};

/// One sample: a value for each model input, keyed by input name.
pub type Sample = BTreeMap<String, Tensor>;

/// Samples read one at a time by index, from any thread: a [`Dataset`] (which may read
/// them from disk on demand) or samples already in memory (`[Sample]`, `Vec<Sample>`).
/// Code that runs over samples takes this, so that it never needs them all at once.
pub trait SampleSource: Sync {
    /// Number of samples.
    fn count(&self) -> usize;
    /// Sample `i` (`i < count()`), borrowed when it is in memory.
    fn sample(&self, i: usize) -> Result<Cow<'_, Sample>, DataError>;
}

impl SampleSource for [Sample] {
    fn count(&self) -> usize {
        self.len()
    }
    fn sample(&self, i: usize) -> Result<Cow<'_, Sample>, DataError> {
        self.get(i).map(Cow::Borrowed).ok_or(DataError::NoSample {
            index: i,
            len: self.len(),
        })
    }
}

impl SampleSource for Vec<Sample> {
    fn count(&self) -> usize {
        self.len()
    }
    fn sample(&self, i: usize) -> Result<Cow<'_, Sample>, DataError> {
        self.as_slice().sample(i)
    }
}

impl SampleSource for Dataset {
    fn count(&self) -> usize {
        self.len()
    }
    fn sample(&self, i: usize) -> Result<Cow<'_, Sample>, DataError> {
        self.get_ref(i)
    }
}

/// A model input as the loader needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Element type the model expects.
    pub dtype: DType,
    /// Shape with `None` for dynamic dimensions; `None` when the rank itself is unknown.
    pub shape: Option<Vec<Option<usize>>>,
}

impl InputSpec {
    /// Convenience constructor.
    pub fn new(name: impl Into<String>, dtype: DType, shape: Option<Vec<Option<usize>>>) -> Self {
        InputSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }
}

/// Validated data: the samples (read on demand, see the module doc), plus arrays that are
/// not model inputs.
///
/// A dataset is a view of a range of its source's samples: [`Dataset::split_off`] and
/// [`Dataset::truncate`] narrow the view without reading anything, and clones share the
/// source. Sample indices are relative to the view; error messages name the sample's index
/// in the file.
#[derive(Clone, Debug)]
pub struct Dataset {
    store: Arc<Store>,
    range: Range<usize>,
    /// Non-input numeric arrays (e.g. `label`), stacked, axis 0 = sample of this view.
    pub extra: BTreeMap<String, Tensor>,
    /// Where the data came from.
    pub source: PathBuf,
    /// Arrays that were not loaded, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Where a dataset's samples come from.
#[derive(Debug)]
enum Store {
    /// Samples decoded at load time.
    Memory(Vec<Sample>),
    /// One array per model input (graph order), axis 0 = sample, read a sample at a time;
    /// non-finite values are reported when a sample is read.
    Arrays {
        path: PathBuf,
        arrays: Vec<(String, Array)>,
    },
}

impl Store {
    fn get(&self, i: usize) -> Result<Cow<'_, Sample>, DataError> {
        match self {
            Store::Memory(v) => v.get(i).map(Cow::Borrowed).ok_or(DataError::NoSample {
                index: i,
                len: v.len(),
            }),
            Store::Arrays { path, arrays } => {
                let mut sample = Sample::new();
                for (input, array) in arrays {
                    let t = array.sample(i)?;
                    if let Some((at, kind)) = first_non_finite(&t) {
                        return Err(DataError::NonFinite {
                            path: path.clone(),
                            input: input.clone(),
                            sample: i,
                            value: format!("{kind} at element {at}"),
                        });
                    }
                    sample.insert(input.clone(), t);
                }
                Ok(Cow::Owned(sample))
            }
        }
    }
}

impl Dataset {
    /// A dataset of samples already in memory, with no other arrays.
    pub fn from_samples(source: impl Into<PathBuf>, samples: Vec<Sample>) -> Dataset {
        Dataset::in_memory(samples, BTreeMap::new(), source.into(), Vec::new())
    }

    fn in_memory(
        samples: Vec<Sample>,
        extra: BTreeMap<String, Tensor>,
        source: PathBuf,
        skipped: Vec<(String, String)>,
    ) -> Dataset {
        let range = 0..samples.len();
        Dataset {
            store: Arc::new(Store::Memory(samples)),
            range,
            extra,
            source,
            skipped,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// True when there is no sample (never the case for a dataset returned by [`load`]).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Sample `i` of this view, read (and checked for NaN/Inf) now when the data is streamed.
    /// Safe to call from several threads; reading in increasing order is cheapest.
    pub fn get(&self, i: usize) -> Result<Sample, DataError> {
        self.get_ref(i).map(Cow::into_owned)
    }

    /// [`Dataset::get`], borrowing samples held in memory.
    fn get_ref(&self, i: usize) -> Result<Cow<'_, Sample>, DataError> {
        if i >= self.len() {
            return Err(DataError::NoSample {
                index: i,
                len: self.len(),
            });
        }
        self.store.get(self.range.start + i)
    }

    /// The first sample (what shapes are taken from); only that one is read.
    pub fn first(&self) -> Result<Sample, DataError> {
        self.get(0)
    }

    /// Every sample in order, each read when the iterator reaches it.
    pub fn iter(&self) -> impl Iterator<Item = Result<Sample, DataError>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Every sample, read now (for small data and tests: this holds them all).
    pub fn read_all(&self) -> Result<Vec<Sample>, DataError> {
        self.iter().collect()
    }

    /// Keeps the first `n` samples (and the first `n` entries of every extra array).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.narrow(0..n);
        }
    }

    /// Narrows the view to part `index` of `count` contiguous, near-equal parts (the first
    /// `len % count` parts one sample longer), as calibration shards are cut: the parts of
    /// every `index` together are the whole view, each sample in exactly one.
    pub fn shard(&mut self, index: usize, count: usize) {
        let n = self.len();
        let count = count.max(1);
        let index = index.min(count - 1);
        let (size, extra) = (n / count, n % count);
        let start = index * size + index.min(extra);
        let end = start + size + usize::from(index < extra);
        self.narrow(start..end);
    }

    /// Splits the view at `at`: this dataset keeps samples `[0, at)`, the returned one holds
    /// `[at, len)` of the same source; extra arrays are split the same way.
    pub fn split_off(&mut self, at: usize) -> Dataset {
        let at = at.min(self.len());
        let mut tail = self.clone();
        tail.narrow(at..self.len());
        self.narrow(0..at);
        tail
    }

    /// Narrows the view to `r` (relative to the current view).
    fn narrow(&mut self, r: Range<usize>) {
        let n = self.len();
        for t in self.extra.values_mut() {
            if t.shape().first() == Some(&n) {
                *t = slice0(t, r.clone());
            }
        }
        self.range = self.range.start + r.start..self.range.start + r.end;
    }

    /// Ground-truth labels under `key` in [`Dataset::extra`], one integer per sample.
    pub fn labels(&self, key: &str) -> Result<Vec<i64>, DataError> {
        if let Some((_, why)) = self.skipped.iter().find(|(name, _)| name == key) {
            return Err(DataError::LabelsSkipped {
                path: self.source.clone(),
                key: key.to_string(),
                why: why.clone(),
            });
        }
        let t = self.extra.get(key).ok_or_else(|| DataError::NoLabels {
            path: self.source.clone(),
            key: key.to_string(),
            keys: if self.extra.is_empty() {
                "none".to_string()
            } else {
                self.extra.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })?;
        let v = t.to_i64_vec().ok_or_else(|| DataError::LabelsNotIntegers {
            path: self.source.clone(),
            key: key.to_string(),
            dtype: t.dtype(),
        })?;
        if v.len() != self.len() {
            return Err(DataError::LabelCount {
                path: self.source.clone(),
                key: key.to_string(),
                count: v.len(),
                samples: self.len(),
            });
        }
        Ok(v)
    }
}

/// Errors reading, validating or writing data. Each renders as one line naming the file
/// and the array or input concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// (The I/O error is part of the message, not a separate cause: one line.)
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A tensor file the ONNX decoder rejects (the message names the file and the tensor).
    #[error(transparent)]
    Tensor(#[from] crate::onnx::OnnxError),
    #[error("{}: array '{array}': {what}", path.display())]
    Unsupported {
        path: PathBuf,
        array: String,
        what: String,
    },
    #[error("{}: not a data file qrange reads (expected .npz, .npy, a directory of test_data_set_N/input_K.pb, or a folder of images)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}: a .npy file holds one array but the model has {count} inputs; use .npz with one array per input", path.display())]
    NpyNeedsSingleInput { path: PathBuf, count: usize },
    #[error("{}: no data for model input '{input}' (found: {found})", path.display())]
    MissingInput {
        path: PathBuf,
        input: String,
        found: String,
    },
    #[error("{}: input '{input}': data is {found} but the model expects {expected}", path.display())]
    WrongDType {
        path: PathBuf,
        input: String,
        expected: DType,
        found: DType,
    },
    #[error("{}: input '{input}': a sample has shape {found:?} (rank {}) but the model expects rank {} {expected}{hint}", path.display(), found.len(), rank_of(expected))]
    WrongRank {
        path: PathBuf,
        input: String,
        found: Vec<usize>,
        expected: String,
        hint: &'static str,
    },
    #[error("{}: input '{input}': a sample has shape {found:?} but the model expects {expected} (axis {axis} differs){hint}", path.display())]
    WrongDim {
        path: PathBuf,
        input: String,
        axis: usize,
        found: Vec<usize>,
        expected: String,
        hint: &'static str,
    },
    #[error("{}: input '{input}' has {count} samples but '{reference}' has {reference_count}", path.display())]
    SampleCount {
        path: PathBuf,
        input: String,
        count: usize,
        reference: String,
        reference_count: usize,
    },
    #[error("{}: {what} holds zero samples", path.display())]
    NoSamples { path: PathBuf, what: String },
    #[error("{}: input '{input}': sample {sample} contains {value}", path.display())]
    NonFinite {
        path: PathBuf,
        input: String,
        sample: usize,
        value: String,
    },
    #[error("{}: '{tensor}' maps to input '{input}', which another file already provides", path.display())]
    DuplicateInput {
        path: PathBuf,
        tensor: String,
        input: String,
    },
    #[error("{}: input file #{index} has no matching model input (the model has {count})", path.display())]
    UnmatchedInputFile {
        path: PathBuf,
        index: u64,
        count: usize,
    },
    #[error("{}: no labels under key '{key}' (keys in the file: {keys})", path.display())]
    NoLabels {
        path: PathBuf,
        key: String,
        keys: String,
    },
    #[error("{}: labels '{key}' are unusable: {why}", path.display())]
    LabelsSkipped {
        path: PathBuf,
        key: String,
        why: String,
    },
    #[error("{}: labels '{key}' are {dtype}, not integers", path.display())]
    LabelsNotIntegers {
        path: PathBuf,
        key: String,
        dtype: DType,
    },
    #[error("{}: labels '{key}' have {count} entries for {samples} samples", path.display())]
    LabelCount {
        path: PathBuf,
        key: String,
        count: usize,
        samples: usize,
    },
    #[error("{}: holds images: a preprocessing must be declared to turn them into model inputs", path.display())]
    NeedsPreprocess { path: PathBuf },
    #[error("{}: a preprocessing applies to image folders only, and this is not one", path.display())]
    NotImages { path: PathBuf },
    #[error("{}: {msg}", path.display())]
    ImageDecode { path: PathBuf, msg: String },
    #[error("{}: input '{input}': {msg}", path.display())]
    ImageInput {
        path: PathBuf,
        input: String,
        msg: String,
    },
    #[error("no sample {index}: the data holds {len}")]
    NoSample { index: usize, len: usize },
    #[error("cannot stack '{key}': {msg}")]
    Stack { key: String, msg: String },
}

impl DataError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Rank of a rendered shape such as `[1,3,?,?]` (`?` when the rank is unknown).
fn rank_of(rendered: &str) -> usize {
    let inner = rendered.trim_start_matches('[').trim_end_matches(']');
    if inner.is_empty() {
        0
    } else {
        inner.split(',').count()
    }
}

fn render_shape(shape: &[Option<usize>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", dims.join(","))
}

const NPZ_HINT: &str = " (arrays carry a leading sample axis before the model's own shape)";

/// Loads and validates samples for a model with the given `inputs` (graph order).
///
/// `path` is a `.npz`, a `.npy` (single-input models) or a directory in ONNX's
/// `test_data_set_N/input_K.pb` layout (or a single `test_data_set_N` folder). An image
/// folder needs a preprocessing: see [`load_with`].
pub fn load(path: &Path, inputs: &[InputSpec]) -> Result<Dataset, DataError> {
    load_with(path, inputs, None)
}

/// [`load`], and image folders (see [`is_image_dir`]) turned into inputs by `preprocess`,
/// which is required for them and refused for every other kind of data.
pub fn load_with(
    path: &Path,
    inputs: &[InputSpec],
    preprocess: Option<&Preprocess>,
) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let images = meta.is_dir() && is_image_dir(path)?;
    match (images, preprocess) {
        (true, Some(p)) => return images::load(path, p, inputs),
        (true, None) => {
            return Err(DataError::NeedsPreprocess {
                path: path.to_path_buf(),
            })
        }
        (false, Some(_)) => {
            return Err(DataError::NotImages {
                path: path.to_path_buf(),
            })
        }
        (false, None) => {}
    }
    if meta.is_dir() {
        return load_pb_dir(path, inputs);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("npz") => load_npz(path, inputs),
        Some("npy") => load_npy(path, inputs),
        _ => {
            let mut magic = [0u8; 6];
            let n = std::io::Read::read(
                &mut std::fs::File::open(path).map_err(|e| DataError::io(path, e))?,
                &mut magic,
            )
            .map_err(|e| DataError::io(path, e))?;
            match &magic[..n] {
                [b'P', b'K', 3, 4, ..] => load_npz(path, inputs),
                b"\x93NUMPY" => load_npy(path, inputs),
                _ => Err(DataError::UnknownFormat {
                    path: path.to_path_buf(),
                }),
            }
        }
    }
}

fn load_npz(path: &Path, inputs: &[InputSpec]) -> Result<Dataset, DataError> {
    let members = npz::read(path, &|name| inputs.iter().any(|i| i.name == name))?;
    let arrays = members.into_iter().map(|m| (m.name, m.value)).collect();
    from_arrays(path, arrays, inputs)
}

fn load_npy(path: &Path, inputs: &[InputSpec]) -> Result<Dataset, DataError> {
    if inputs.len() != 1 {
        return Err(DataError::NpyNeedsSingleInput {
            path: path.to_path_buf(),
            count: inputs.len(),
        });
    }
    let name = &inputs[0].name;
    let size = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    let span = Span {
        path: path.to_path_buf(),
        start: 0,
        len: size,
        coding: Coding::Stored,
        size,
        crc32: None,
    };
    let value = match Streamed::open(span, name)? {
        Ok(Opened::Streamed(s)) => Ok(Array::Streamed(s)),
        Ok(Opened::Whole) => {
            let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
            npy::decode(&bytes).map(Array::Loaded)
        }
        Err(e) => Err(e),
    };
    from_arrays(path, vec![(name.clone(), value)], inputs)
}

/// Validates sample-major arrays against `inputs` (dtypes, shapes, sample counts: nothing
/// of the input data is read here) and keeps the other numeric arrays as extras.
fn from_arrays(
    path: &Path,
    arrays: Vec<(String, Result<Array, npy::NpyError>)>,
    inputs: &[InputSpec],
) -> Result<Dataset, DataError> {
    let mut found: BTreeMap<String, Array> = BTreeMap::new();
    let mut others: Vec<(String, Tensor)> = Vec::new();
    let mut skipped = Vec::new();
    let mut names = Vec::new();
    for (name, value) in arrays {
        names.push(name.clone());
        let is_input = inputs.iter().any(|i| i.name == name);
        match (value, is_input) {
            (Ok(t), true) => {
                found.insert(name, t);
            }
            (Err(e), true) => {
                return Err(DataError::Unsupported {
                    path: path.to_path_buf(),
                    array: name,
                    what: e.to_string(),
                })
            }
            (Err(e), false) => skipped.push((name, e.to_string())),
            (Ok(Array::Loaded(Tensor::Str(_))), false) => {
                skipped.push((name, "string array, not numeric data".to_string()))
            }
            (Ok(Array::Loaded(t)), false) => others.push((name, t)),
            (Ok(Array::Streamed(_)), false) => {
                skipped.push((name, "not a model input, not read".to_string()))
            }
        }
    }

    // Every input present, each with a sample axis, all with the same number of samples.
    let mut count: Option<(String, usize)> = None;
    for spec in inputs {
        let t = found
            .get(&spec.name)
            .ok_or_else(|| DataError::MissingInput {
                path: path.to_path_buf(),
                input: spec.name.clone(),
                found: if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                },
            })?;
        let shape = t.shape();
        let Some((&n, sample_shape)) = shape.split_first() else {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                msg: format!(
                    "input '{}': array is a scalar; it needs a leading sample axis",
                    spec.name
                ),
            });
        };
        check_sample(path, spec, t.dtype(), sample_shape, NPZ_HINT)?;
        match &count {
            None => count = Some((spec.name.clone(), n)),
            Some((reference, m)) if *m != n => {
                return Err(DataError::SampleCount {
                    path: path.to_path_buf(),
                    input: spec.name.clone(),
                    count: n,
                    reference: reference.clone(),
                    reference_count: *m,
                })
            }
            Some(_) => {}
        }
    }
    let n = match count {
        Some((_, 0)) | None => {
            return Err(DataError::NoSamples {
                path: path.to_path_buf(),
                what: if inputs.is_empty() {
                    "the model has no inputs, so the data".to_string()
                } else {
                    "the data".to_string()
                },
            })
        }
        Some((_, n)) => n,
    };

    let mut extra = BTreeMap::new();
    for (name, t) in others {
        match t.shape().first() {
            Some(&m) if m == n => {
                extra.insert(name, t);
            }
            Some(&m) => skipped.push((
                name,
                format!("leading axis has {m} entries but there are {n} samples"),
            )),
            None => skipped.push((name, "scalar, no sample axis".to_string())),
        }
    }

    let arrays = inputs
        .iter()
        .filter_map(|spec| found.remove(&spec.name).map(|a| (spec.name.clone(), a)))
        .collect();
    Ok(Dataset {
        store: Arc::new(Store::Arrays {
            path: path.to_path_buf(),
            arrays,
        }),
        range: 0..n,
        extra,
        source: path.to_path_buf(),
        skipped,
    })
}

fn load_pb_dir(dir: &Path, inputs: &[InputSpec]) -> Result<Dataset, DataError> {
    let sets = pb::list_sets(dir)?;
    if sets.is_empty() {
        return Err(DataError::NoSamples {
            path: dir.to_path_buf(),
            what: "the directory (no test_data_set_N folders, no input_K.pb files, no .png/.jpg images)".into(),
        });
    }
    let mut samples = Vec::with_capacity(sets.len());
    let mut outputs: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    for (index, set) in sets.iter().enumerate() {
        let (input_files, output_files) = pb::set_files(set)?;
        let mut sample = Sample::new();
        let mut seen = Vec::new();
        for file in &input_files {
            let k = file
                .file_name()
                .and_then(|n| pb::numbered(&n.to_string_lossy(), "input_", ".pb"))
                .unwrap_or(0);
            let (name, t) = read_tensor_pb(file)?;
            let spec = match inputs.iter().find(|s| s.name == name) {
                Some(s) => s,
                None => usize::try_from(k).ok().and_then(|k| inputs.get(k)).ok_or(
                    DataError::UnmatchedInputFile {
                        path: file.clone(),
                        index: k,
                        count: inputs.len(),
                    },
                )?,
            };
            if sample.contains_key(&spec.name) {
                return Err(DataError::DuplicateInput {
                    path: file.clone(),
                    tensor: if name.is_empty() {
                        format!("input_{k}")
                    } else {
                        name
                    },
                    input: spec.name.clone(),
                });
            }
            check_sample(file, spec, t.dtype(), &t.shape(), "")?;
            if let Some((at, kind)) = first_non_finite(&t) {
                return Err(DataError::NonFinite {
                    path: file.clone(),
                    input: spec.name.clone(),
                    sample: index,
                    value: format!("{kind} at element {at}"),
                });
            }
            seen.push(
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            sample.insert(spec.name.clone(), t);
        }
        if let Some(spec) = inputs.iter().find(|s| !sample.contains_key(&s.name)) {
            return Err(DataError::MissingInput {
                path: set.clone(),
                input: spec.name.clone(),
                found: if seen.is_empty() {
                    "no input_K.pb".to_string()
                } else {
                    seen.join(", ")
                },
            });
        }
        for file in &output_files {
            let (name, t) = read_tensor_pb(file)?;
            let key = if name.is_empty() {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                name
            };
            outputs.entry(key).or_default().push(t);
        }
        samples.push(sample);
    }
    let mut extra = BTreeMap::new();
    let mut skipped = Vec::new();
    for (key, tensors) in outputs {
        if tensors.len() != samples.len() {
            skipped.push((
                key,
                format!(
                    "present in {} of {} test data sets",
                    tensors.len(),
                    samples.len()
                ),
            ));
            continue;
        }
        let refs: Vec<&Tensor> = tensors.iter().collect();
        match stack_tensors(&refs) {
            Ok(t) => {
                extra.insert(key, t);
            }
            Err(msg) => skipped.push((key, msg)),
        }
    }
    Ok(Dataset::in_memory(
        samples,
        extra,
        dir.to_path_buf(),
        skipped,
    ))
}

/// Checks one sample's dtype and shape against the model input.
fn check_sample(
    path: &Path,
    spec: &InputSpec,
    dtype: DType,
    shape: &[usize],
    hint: &'static str,
) -> Result<(), DataError> {
    if dtype != spec.dtype {
        return Err(DataError::WrongDType {
            path: path.to_path_buf(),
            input: spec.name.clone(),
            expected: spec.dtype,
            found: dtype,
        });
    }
    let Some(expected) = &spec.shape else {
        return Ok(());
    };
    if expected.len() != shape.len() {
        return Err(DataError::WrongRank {
            path: path.to_path_buf(),
            input: spec.name.clone(),
            found: shape.to_vec(),
            expected: render_shape(expected),
            hint,
        });
    }
    if let Some(axis) = expected
        .iter()
        .zip(shape)
        .position(|(e, &d)| e.is_some_and(|e| e != d))
    {
        return Err(DataError::WrongDim {
            path: path.to_path_buf(),
            input: spec.name.clone(),
            axis,
            found: shape.to_vec(),
            expected: render_shape(expected),
            hint,
        });
    }
    Ok(())
}

/// Flat index and kind (`NaN`, `+Inf`, `-Inf`) of the first non-finite value of a float tensor.
fn first_non_finite(t: &Tensor) -> Option<(usize, &'static str)> {
    fn find<T: Copy>(it: impl Iterator<Item = T>, f: impl Fn(T) -> f64) -> Option<(usize, f64)> {
        it.map(f).enumerate().find(|(_, v)| !v.is_finite())
    }
    let (i, v) = match t {
        Tensor::F32(a) => find(a.iter(), |v| f64::from(*v)),
        Tensor::F64(a) => find(a.iter(), |v| *v),
        Tensor::F16(a) => find(a.iter(), |v| v.to_f64()),
        Tensor::BF16(a) => find(a.iter(), |v| v.to_f64()),
        _ => None,
    }?;
    let kind = if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    };
    Some((i, kind))
}

/// Applies `$body` to the array inside a tensor and wraps the result in the same variant.
macro_rules! map_same {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => Tensor::F32($body),
            Tensor::F64($a) => Tensor::F64($body),
            Tensor::F16($a) => Tensor::F16($body),
            Tensor::BF16($a) => Tensor::BF16($body),
            Tensor::I8($a) => Tensor::I8($body),
            Tensor::U8($a) => Tensor::U8($body),
            Tensor::I16($a) => Tensor::I16($body),
            Tensor::U16($a) => Tensor::U16($body),
            Tensor::I32($a) => Tensor::I32($body),
            Tensor::U32($a) => Tensor::U32($body),
            Tensor::I64($a) => Tensor::I64($body),
            Tensor::U64($a) => Tensor::U64($body),
            Tensor::Bool($a) => Tensor::Bool($body),
            Tensor::Str($a) => Tensor::Str($body),
            Tensor::I4($a) => Tensor::I4($body),
            Tensor::U4($a) => Tensor::U4($body),
        }
    };
}

/// Entry `i` along axis 0 (the caller guarantees `i` is in range).
fn index0(t: &Tensor, i: usize) -> Tensor {
    map_same!(t, a => a.index_axis(Axis(0), i).to_owned())
}

/// Entries `r` along axis 0 (the caller guarantees `r` is in range).
fn slice0(t: &Tensor, r: Range<usize>) -> Tensor {
    map_same!(t, a => a.slice_axis(Axis(0), Slice::from(r.clone())).to_owned())
}

/// Stacks same-typed, same-shaped tensors along a new axis 0.
fn stack_tensors(tensors: &[&Tensor]) -> Result<Tensor, String> {
    let first = tensors.first().ok_or("nothing to stack")?;
    let shape = first.shape();
    for (i, t) in tensors.iter().enumerate() {
        if t.dtype() != first.dtype() {
            return Err(format!(
                "sample {i} is {} but sample 0 is {}",
                t.dtype(),
                first.dtype()
            ));
        }
        if t.shape() != shape {
            return Err(format!(
                "sample {i} has shape {:?} but sample 0 has {shape:?}",
                t.shape()
            ));
        }
    }
    macro_rules! stack_as {
        ($var:ident) => {{
            let views: Vec<_> = tensors
                .iter()
                .filter_map(|t| match t {
                    Tensor::$var(a) => Some(a.view()),
                    _ => None,
                })
                .collect();
            Tensor::$var(ndarray::stack(Axis(0), &views).map_err(|e| e.to_string())?)
        }};
    }
    Ok(match first {
        Tensor::F32(_) => stack_as!(F32),
        Tensor::F64(_) => stack_as!(F64),
        Tensor::F16(_) => stack_as!(F16),
        Tensor::BF16(_) => stack_as!(BF16),
        Tensor::I8(_) => stack_as!(I8),
        Tensor::U8(_) => stack_as!(U8),
        Tensor::I16(_) => stack_as!(I16),
        Tensor::U16(_) => stack_as!(U16),
        Tensor::I32(_) => stack_as!(I32),
        Tensor::U32(_) => stack_as!(U32),
        Tensor::I64(_) => stack_as!(I64),
        Tensor::U64(_) => stack_as!(U64),
        Tensor::Bool(_) => stack_as!(Bool),
        Tensor::Str(_) => stack_as!(Str),
        Tensor::I4(_) => stack_as!(I4),
        Tensor::U4(_) => stack_as!(U4),
    })
}

/// Stacks per-sample tensors (e.g. model outputs) along a new axis 0, key by key, giving the
/// same sample-major layout [`load`] reads from `.npz`. Every sample must have the same keys,
/// and each key the same dtype and shape in every sample.
pub fn stack(samples: &[Sample]) -> Result<BTreeMap<String, Tensor>, DataError> {
    let first = samples.first().ok_or_else(|| DataError::Stack {
        key: "*".to_string(),
        msg: "no samples".to_string(),
    })?;
    for (i, s) in samples.iter().enumerate() {
        if let Some(k) = s.keys().find(|k| !first.contains_key(*k)) {
            return Err(DataError::Stack {
                key: k.clone(),
                msg: format!("present in sample {i} but not in sample 0"),
            });
        }
    }
    let mut out = BTreeMap::new();
    for key in first.keys() {
        let mut refs = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            refs.push(s.get(key).ok_or_else(|| DataError::Stack {
                key: key.clone(),
                msg: format!("missing from sample {i}"),
            })?);
        }
        let t = stack_tensors(&refs).map_err(|msg| DataError::Stack {
            key: key.clone(),
            msg,
        })?;
        out.insert(key.clone(), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
