//! Image folders as calibration/evaluation data, turned into model inputs by a declared
//! preprocessing.
//!
//! Owns the preprocessing spec ([`Preprocess`]: its text and JSON forms, its checks against a
//! model input) and the loading of an image folder: PNG (through the `png` crate) and JPEG
//! (through `zune-jpeg`) files, taken in sorted name order, one sample per image. Files of
//! other kinds are skipped and listed in [`Dataset::skipped`]; an image that does not decode
//! is an error naming the file (JPEG is decoded in strict mode, so a truncated or damaged file
//! is an error, not an image half filled with grey).
//!
//! Steps, in this order, for each image:
//! 1. decode to 8-bit pixels (16-bit PNGs keep their high byte; alpha is dropped; palette and
//!    low-bit-depth PNGs are expanded);
//! 2. colour: `rgb` or `bgr` channel order (a grey image is repeated on three channels), or
//!    `gray` = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601 luma, kept as a float);
//! 3. geometry: `resize=WxH` stretches to W wide and H high with qrange's own bilinear
//!    filter: half-pixel centres, edge pixels repeated, no antialiasing (what OpenCV's
//!    `INTER_LINEAR` and ONNX `Resize` mode `linear` with `half_pixel` do). With
//!    `keep-aspect` the image is scaled to fit inside W×H and the rest is filled with `pad`
//!    (a pixel value, 0–255), the image at the top left (`align=top-left`) or centred;
//! 4. values: `(v / scale - mean[c]) / std[c]` per output channel for f32 inputs; u8 inputs
//!    take the rounded pixel values;
//! 5. layout: `nchw` or `nhwc`, with a leading batch dimension of 1 when the model input has
//!    rank 4 (none for rank 3).

use super::{render_shape, DataError, Dataset, InputSpec, Sample};
use crate::ir::tensor::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// File extensions (lower case) taken as images.
const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Largest `resize` side, and largest side of a decoded image (keeps a resized image's
/// buffer within a few GiB).
pub const MAX_SIDE: usize = 16384;
/// Largest decoded image, in pixels (64 megapixels: 192 MiB of 8-bit RGB). An image whose
/// header declares more is refused before any pixel buffer is allocated.
pub const MAX_PIXELS: usize = 1 << 26;

/// Refuses image sizes past [`MAX_SIDE`] or [`MAX_PIXELS`] (read from the header, before
/// decoding).
fn check_image_size(width: usize, height: usize) -> Result<(), String> {
    let pixels = width.checked_mul(height);
    if width > MAX_SIDE || height > MAX_SIDE || pixels.is_none_or(|p| p > MAX_PIXELS) {
        return Err(format!(
            "the image is {width}x{height}, larger than qrange decodes (at most {MAX_SIDE} pixels a side and {} megapixels)",
            MAX_PIXELS >> 20
        ));
    }
    Ok(())
}

/// Keys of the preprocessing spec, in the order [`Preprocess`] prints them.
const KEYS: &str = "input, resize, keep-aspect, align, pad, color, layout, scale, mean, std, dtype";

/// Channel order (or grey) of the tensor fed to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Color {
    #[default]
    Rgb,
    Bgr,
    Gray,
}

/// Where the channel axis sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

/// Where a `keep-aspect` image sits on its padded canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Align {
    #[default]
    TopLeft,
    Center,
}

/// A declared preprocessing: how image files become one model input.
///
/// Text form: comma-separated `key=value` items; `mean` and `std` take one value or one per
/// channel (`mean=0.5,0.5,0.5`); `keep-aspect` is a bare flag. JSON form: an object with the
/// same keys, numbers or lists as values (`{"resize": "192x48", "mean": [0.5, 0.5, 0.5]}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Model input fed (needed when the model has several inputs).
    pub input: Option<String>,
    /// Target size as (width, height).
    pub resize: Option<(usize, usize)>,
    /// Fit inside `resize` keeping the aspect ratio, pad the rest.
    pub keep_aspect: bool,
    /// Placement of a `keep-aspect` image.
    pub align: Align,
    /// Pixel value (0–255, before `scale`/`mean`/`std`) of the padding.
    pub pad: f32,
    /// Channel order or grey.
    pub color: Color,
    /// Channel axis position.
    pub layout: Layout,
    /// Pixel values are divided by this (255 maps them to [0, 1]).
    pub scale: f32,
    /// Subtracted after `scale`, per output channel (one value = every channel).
    pub mean: Vec<f32>,
    /// Divides after `mean`, per output channel (one value = every channel).
    pub std: Vec<f32>,
    /// Element type produced (default: the model input's).
    pub dtype: Option<DType>,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            input: None,
            resize: None,
            keep_aspect: false,
            align: Align::TopLeft,
            pad: 0.0,
            color: Color::Rgb,
            layout: Layout::Nchw,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            dtype: None,
        }
    }
}

/// A preprocessing spec that cannot be parsed; one line.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

fn join_nums(v: &[f32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Preprocess {
    /// The canonical text form (every setting that applies, defaults included).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some(i) = &self.input {
            items.push(format!("input={i}"));
        }
        if let Some((w, h)) = self.resize {
            items.push(format!("resize={w}x{h}"));
        }
        if self.keep_aspect {
            items.push("keep-aspect".into());
            items.push(format!(
                "align={}",
                match self.align {
                    Align::TopLeft => "top-left",
                    Align::Center => "center",
                }
            ));
            items.push(format!("pad={}", self.pad));
        }
        items.push(format!(
            "color={}",
            match self.color {
                Color::Rgb => "rgb",
                Color::Bgr => "bgr",
                Color::Gray => "gray",
            }
        ));
        items.push(format!(
            "layout={}",
            match self.layout {
                Layout::Nchw => "nchw",
                Layout::Nhwc => "nhwc",
            }
        ));
        if self.dtype != Some(DType::U8) {
            items.push(format!("scale={}", self.scale));
            items.push(format!("mean={}", join_nums(&self.mean)));
            items.push(format!("std={}", join_nums(&self.std)));
        }
        if let Some(d) = self.dtype {
            items.push(format!("dtype={d}"));
        }
        f.write_str(&items.join(","))
    }
}

impl FromStr for Preprocess {
    type Err = SpecError;

    /// Parses the text form, e.g. `resize=192x48,scale=255,mean=0.5,0.5,0.5,std=0.5`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut items: Vec<(String, Vec<String>)> = Vec::new();
        for tok in s.split(',') {
            let tok = tok.trim();
            if tok.is_empty() {
                return Err(invalid(
                    "empty item (two commas in a row, or a trailing comma)",
                ));
            }
            if let Some((k, v)) = tok.split_once('=') {
                items.push((k.trim().to_string(), vec![v.trim().to_string()]));
                continue;
            }
            // A bare number continues the list of the previous `mean`/`std`.
            match items.last_mut() {
                Some((k, vals)) if (k == "mean" || k == "std") && tok.parse::<f64>().is_ok() => {
                    vals.push(tok.to_string())
                }
                _ if tok == "keep-aspect" => items.push((tok.to_string(), Vec::new())),
                _ => return Err(invalid(format!("'{tok}' is not KEY=VALUE (keys: {KEYS})"))),
            }
        }
        Preprocess::from_items(items)
    }
}

impl Preprocess {
    /// Parses a command-line argument: the text form, or `@FILE` naming a JSON file.
    pub fn parse_arg(arg: &str) -> Result<Preprocess, SpecError> {
        match arg.strip_prefix('@') {
            Some(file) => {
                let path = Path::new(file);
                let text = std::fs::read_to_string(path).map_err(|e| SpecError::File {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                })?;
                Preprocess::from_json(&text).map_err(|e| SpecError::File {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                })
            }
            None => arg.parse(),
        }
    }

    /// Parses the JSON form: an object with the keys of the text form.
    pub fn from_json(text: &str) -> Result<Preprocess, SpecError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("a JSON preprocessing must be an object of KEY: VALUE"))?;
        let scalar = |key: &str, x: &serde_json::Value| -> Result<String, SpecError> {
            match x {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                _ => Err(invalid(format!(
                    "'{key}': expected a string or a number, found {x}"
                ))),
            }
        };
        let mut items = Vec::new();
        for (k, x) in obj {
            let vals = match x {
                serde_json::Value::Bool(true) => Vec::new(),
                serde_json::Value::Bool(false) if k == "keep-aspect" => continue,
                serde_json::Value::Array(a) => {
                    a.iter().map(|e| scalar(k, e)).collect::<Result<_, _>>()?
                }
                _ => vec![scalar(k, x)?],
            };
            items.push((k.clone(), vals));
        }
        Preprocess::from_items(items)
    }

    fn from_items(items: Vec<(String, Vec<String>)>) -> Result<Preprocess, SpecError> {
        let mut p = Preprocess::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, vals) in items {
            if seen.contains(&key) {
                return Err(invalid(format!("'{key}' is given twice")));
            }
            seen.push(key.clone());
            let one = || -> Result<&str, SpecError> {
                match vals.as_slice() {
                    [v] if !v.is_empty() => Ok(v.as_str()),
                    _ => Err(invalid(format!("'{key}' needs one value: {key}=VALUE"))),
                }
            };
            let number = |v: &str| -> Result<f32, SpecError> {
                v.parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| invalid(format!("{key}: '{v}' is not a number")))
            };
            match key.as_str() {
                "input" => p.input = Some(one()?.to_string()),
                "resize" => {
                    let dims: Vec<&str> = match vals.as_slice() {
                        [v] => v.split(['x', 'X']).collect(),
                        [w, h] => vec![w.as_str(), h.as_str()],
                        _ => Vec::new(),
                    };
                    let parsed: Vec<usize> = dims
                        .iter()
                        .filter_map(|d| d.trim().parse::<usize>().ok())
                        .filter(|d| (1..=MAX_SIDE).contains(d))
                        .collect();
                    match parsed.as_slice() {
                        [w, h] if dims.len() == 2 => p.resize = Some((*w, *h)),
                        _ => {
                            return Err(invalid(format!(
                                "resize wants WIDTHxHEIGHT (1 to {MAX_SIDE} each), e.g. resize=192x48; got '{}'",
                                vals.join(",")
                            )))
                        }
                    }
                }
                "keep-aspect" => {
                    if !vals.is_empty() {
                        return Err(invalid("keep-aspect is a flag and takes no value"));
                    }
                    p.keep_aspect = true;
                }
                "align" => {
                    p.align = match one()? {
                        "top-left" => Align::TopLeft,
                        "center" | "centre" => Align::Center,
                        v => {
                            return Err(invalid(format!(
                                "align: '{v}' is not one of top-left, center"
                            )))
                        }
                    }
                }
                "pad" => {
                    let v = number(one()?)?;
                    if !(0.0..=255.0).contains(&v) {
                        return Err(invalid(format!(
                            "pad: {v} is not a pixel value in [0, 255]"
                        )));
                    }
                    p.pad = v;
                }
                "color" | "colour" => {
                    p.color = match one()? {
                        "rgb" => Color::Rgb,
                        "bgr" => Color::Bgr,
                        "gray" | "grey" | "grayscale" => Color::Gray,
                        v => {
                            return Err(invalid(format!(
                                "color: '{v}' is not one of rgb, bgr, gray"
                            )))
                        }
                    }
                }
                "layout" => {
                    p.layout = match one()? {
                        "nchw" | "chw" => Layout::Nchw,
                        "nhwc" | "hwc" => Layout::Nhwc,
                        v => {
                            return Err(invalid(format!("layout: '{v}' is not one of nchw, nhwc")))
                        }
                    }
                }
                "scale" => {
                    let v = number(one()?)?;
                    if v <= 0.0 {
                        return Err(invalid(format!("scale: {v} must be positive")));
                    }
                    p.scale = v;
                }
                "mean" | "std" => {
                    if vals.is_empty() || vals.iter().any(|v| v.is_empty()) {
                        return Err(invalid(format!(
                            "'{key}' needs one value or one per channel, e.g. {key}=0.5,0.5,0.5"
                        )));
                    }
                    let nums = vals
                        .iter()
                        .map(|v| number(v))
                        .collect::<Result<Vec<f32>, _>>()?;
                    if key == "std" {
                        if let Some(z) = nums.iter().find(|v| **v <= 0.0) {
                            return Err(invalid(format!("std: {z} must be positive")));
                        }
                        p.std = nums;
                    } else {
                        p.mean = nums;
                    }
                }
                "dtype" => {
                    p.dtype = Some(match one()? {
                        "f32" | "float32" | "float" => DType::F32,
                        "u8" | "uint8" => DType::U8,
                        v => return Err(invalid(format!("dtype: '{v}' is not one of f32, u8"))),
                    })
                }
                other => return Err(invalid(format!("unknown key '{other}' (keys: {KEYS})"))),
            }
        }
        if p.keep_aspect && p.resize.is_none() {
            return Err(invalid("keep-aspect needs resize=WxH (the box to fit in)"));
        }
        if !p.keep_aspect && seen.iter().any(|k| k == "align" || k == "pad") {
            return Err(invalid("align and pad apply only with keep-aspect"));
        }
        if p.dtype == Some(DType::U8)
            && seen
                .iter()
                .any(|k| k == "scale" || k == "mean" || k == "std")
        {
            return Err(invalid(
                "dtype=u8 feeds raw pixel values: scale, mean and std do not apply",
            ));
        }
        Ok(p)
    }

    /// Number of channels produced.
    pub fn channels(&self) -> usize {
        match self.color {
            Color::Gray => 1,
            Color::Rgb | Color::Bgr => 3,
        }
    }
}

/// True when `dir` is an image folder: it holds PNG/JPEG files (by extension) and no ONNX
/// test data (`test_data_set_N/` folders or `input_K.pb` files).
pub fn is_image_dir(dir: &Path) -> Result<bool, DataError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    if !super::pb::list_sets(dir)?.is_empty() {
        return Ok(false);
    }
    Ok(list(dir)?.0.iter().any(|(_, p)| is_image_name(p)))
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.as_str()))
}

/// Entries of `dir` sorted by name: (files, sub-directories).
#[allow(clippy::type_complexity)]
fn list(dir: &Path) -> Result<(Vec<(String, PathBuf)>, Vec<String>), DataError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            dirs.push(name);
        } else {
            files.push((name, path));
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

/// The model input an image folder feeds, as the preprocessing shapes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    input: String,
    dtype: DType,
    /// Rank 4 (leading batch 1) or 3.
    batched: bool,
    /// Fixed (width, height) the model declares, per axis.
    width: Option<usize>,
    height: Option<usize>,
}

/// Axes of (channel, height, width) in a tensor of rank 3 or 4.
fn axes(layout: Layout, batched: bool) -> (usize, usize, usize) {
    let b = usize::from(batched);
    match layout {
        Layout::Nchw => (b, b + 1, b + 2),
        Layout::Nhwc => (b + 2, b, b + 1),
    }
}

/// The input an image folder feeds: the one the preprocessing names, or the model's only
/// input; the model must take no other.
fn fed_input<'a>(
    dir: &Path,
    pre: &Preprocess,
    inputs: &'a [InputSpec],
) -> Result<&'a InputSpec, DataError> {
    let names = || {
        inputs
            .iter()
            .map(|i| format!("'{}'", i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec = match &pre.input {
        Some(name) => inputs.iter().find(|i| &i.name == name).ok_or_else(|| {
            DataError::Format {
                path: dir.to_path_buf(),
                msg: format!(
                    "the preprocessing names input '{name}', which the model does not have (inputs: {})",
                    if inputs.is_empty() { "none".to_string() } else { names() }
                ),
            }
        })?,
        None => match inputs {
            [one] => one,
            [] => {
                return Err(DataError::NoSamples {
                    path: dir.to_path_buf(),
                    what: "the model has no inputs, so the data".into(),
                })
            }
            _ => {
                return Err(DataError::Format {
                    path: dir.to_path_buf(),
                    msg: format!(
                        "the model has {} inputs ({}): name the image input with input=NAME in the preprocessing",
                        inputs.len(),
                        names()
                    ),
                })
            }
        },
    };
    if let Some(other) = inputs.iter().find(|i| i.name != spec.name) {
        return Err(DataError::ImageInput {
            path: dir.to_path_buf(),
            input: other.name.clone(),
            msg: format!(
                "no data: an image folder feeds only input '{}'; pin the others with --pin",
                spec.name
            ),
        });
    }
    Ok(spec)
}

/// The element type the preprocessing gives `spec`, checked against it (with the
/// scale/mean/std it allows).
fn element_type(pre: &Preprocess, spec: &InputSpec) -> Result<DType, String> {
    let dtype = pre.dtype.unwrap_or(spec.dtype);
    if dtype != spec.dtype {
        return Err(format!(
            "the preprocessing gives {dtype} but the model expects {}",
            spec.dtype
        ));
    }
    if !matches!(dtype, DType::F32 | DType::U8) {
        return Err(format!(
            "the model expects {dtype}; images give f32 or u8 inputs"
        ));
    }
    if dtype == DType::U8 && (pre.scale != 1.0 || pre.mean != [0.0] || pre.std != [1.0]) {
        return Err(
            "the model expects u8 (raw pixel values): scale, mean and std do not apply".into(),
        );
    }
    let c = pre.channels();
    for (what, v) in [("mean", &pre.mean), ("std", &pre.std)] {
        if v.len() != 1 && v.len() != c {
            return Err(format!(
                "{what} has {} values but color={} gives {c} channel{}",
                v.len(),
                color_name(pre.color),
                if c == 1 { "" } else { "s" }
            ));
        }
    }
    Ok(dtype)
}

/// Whether `spec` has a batch axis, and its fixed (width, height), checked against the
/// preprocessing's layout, channels and resize.
fn geometry(
    pre: &Preprocess,
    spec: &InputSpec,
) -> Result<(bool, Option<usize>, Option<usize>), String> {
    let c = pre.channels();
    let shape = spec.shape.as_deref();
    let batched = match shape.map(<[_]>::len) {
        None | Some(4) => true,
        Some(3) => false,
        Some(r) => {
            return Err(format!(
                "the model expects rank {r} {}; images give rank 4 (batch of 1) or 3",
                render_shape(shape.unwrap_or(&[]))
            ))
        }
    };
    let (ca, ha, wa) = axes(pre.layout, batched);
    let dim = |a: usize| shape.and_then(|s| s[a]);
    let layout = match pre.layout {
        Layout::Nchw => "nchw",
        Layout::Nhwc => "nhwc",
    };
    let rendered = shape.map(render_shape).unwrap_or_default();
    if batched {
        if let Some(b) = dim(0).filter(|&b| b != 1) {
            return Err(format!(
                    "the model expects {rendered}, batch {b}; an image folder gives one image per sample (batch 1)"
                ));
        }
    }
    if let Some(mc) = dim(ca).filter(|&m| m != c) {
        return Err(format!(
                "the model expects {mc} channel{} on axis {ca} ({rendered}, layout={layout}) but color={} gives {c}{}",
                if mc == 1 { "" } else { "s" },
                color_name(pre.color),
                match (mc, pre.layout) {
                    (1, _) => "; use color=gray",
                    (3, _) => "; use color=rgb or color=bgr",
                    (_, Layout::Nchw) if dim(wa) == Some(c) => "; the model looks NHWC: use layout=nhwc",
                    (_, Layout::Nhwc) if dim(1) == Some(c) => "; the model looks NCHW: use layout=nchw",
                    _ => "",
                }
            ));
    }
    let (height, width) = (dim(ha), dim(wa));
    if let Some((w, h)) = pre.resize {
        for (what, got, want, axis) in [("width", w, width, wa), ("height", h, height, ha)] {
            if let Some(m) = want.filter(|&m| m != got) {
                return Err(format!(
                        "resize={w}x{h} gives {what} {got} but the model expects {m} on axis {axis} ({rendered}, layout={layout})"
                    ));
            }
        }
    }
    Ok((batched, width, height))
}

/// Chooses the fed input and checks the preprocessing against its declared type.
fn target(dir: &Path, pre: &Preprocess, inputs: &[InputSpec]) -> Result<Target, DataError> {
    let spec = fed_input(dir, pre, inputs)?;
    let fail = |msg: String| DataError::ImageInput {
        path: dir.to_path_buf(),
        input: spec.name.clone(),
        msg,
    };
    let dtype = element_type(pre, spec).map_err(fail)?;
    let (batched, width, height) = geometry(pre, spec).map_err(fail)?;
    Ok(Target {
        input: spec.name.clone(),
        dtype,
        batched,
        width,
        height,
    })
}

fn color_name(c: Color) -> &'static str {
    match c {
        Color::Rgb => "rgb",
        Color::Bgr => "bgr",
        Color::Gray => "gray",
    }
}

/// Loads every image of `dir` (sorted by name) as one sample of the input `pre` feeds.
pub fn load(dir: &Path, pre: &Preprocess, inputs: &[InputSpec]) -> Result<Dataset, DataError> {
    let t = target(dir, pre, inputs)?;
    let (files, dirs) = list(dir)?;
    let mut skipped: Vec<(String, String)> = dirs
        .into_iter()
        .map(|d| {
            (
                d,
                "a folder (image folders are not searched recursively)".into(),
            )
        })
        .collect();
    let mut samples = Vec::new();
    // Size every image must have when neither the model nor `resize` fixes it.
    let mut first: Option<(usize, usize, PathBuf)> = None;
    for (name, path) in files {
        if !is_image_name(&path) {
            skipped.push((name, "not a .png, .jpg or .jpeg file".into()));
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let img = decode(&bytes).map_err(|msg| DataError::ImageDecode {
            path: path.clone(),
            msg,
        })?;
        if pre.resize.is_none() {
            for (what, got, want) in [
                ("width", img.width, t.width),
                ("height", img.height, t.height),
            ] {
                if let Some(m) = want.filter(|&m| m != got) {
                    return Err(DataError::ImageInput {
                        path: path.clone(),
                        input: t.input.clone(),
                        msg: format!(
                            "the image is {}x{} but the model expects {what} {m}; add resize=WxH to the preprocessing",
                            img.width, img.height
                        ),
                    });
                }
            }
            match &first {
                None => first = Some((img.width, img.height, path.clone())),
                Some((w, h, p)) if (*w, *h) != (img.width, img.height) => {
                    return Err(DataError::ImageInput {
                        path: path.clone(),
                        input: t.input.clone(),
                        msg: format!(
                            "the image is {}x{} but '{}' is {w}x{h}; images of different sizes need resize=WxH",
                            img.width,
                            img.height,
                            p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        let tensor = preprocess(&img, pre, &t);
        let mut s = Sample::new();
        s.insert(t.input.clone(), tensor);
        samples.push(s);
    }
    if samples.is_empty() {
        return Err(DataError::NoSamples {
            path: dir.to_path_buf(),
            what: "the folder (no .png, .jpg or .jpeg file)".into(),
        });
    }
    Ok(Dataset::in_memory(
        samples,
        BTreeMap::new(),
        dir.to_path_buf(),
        skipped,
    ))
}

/// Decoded 8-bit pixels, interleaved, 1 (grey) or 3 (RGB) channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// Decodes a PNG or JPEG (recognised by its first bytes). The error is a one-line reason.
pub fn decode(bytes: &[u8]) -> Result<Pixels, String> {
    let px = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes).map_err(|e| format!("cannot decode PNG: {e}"))?
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        decode_jpeg(bytes).map_err(|e| format!("cannot decode JPEG: {e}"))?
    } else {
        return Err("not a PNG or JPEG image (unrecognised header)".into());
    };
    if px.width == 0 || px.height == 0 {
        return Err(format!(
            "the image is {}x{}: no pixels",
            px.width, px.height
        ));
    }
    Ok(px)
}

fn decode_png(bytes: &[u8]) -> Result<Pixels, String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| e.to_string())?;
    let (w, h) = (reader.info().width, reader.info().height);
    check_image_size(w as usize, h as usize)?;
    let size = reader
        .output_buffer_size()
        .ok_or("the image is too large")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (width, height) = (info.width as usize, info.height as usize);
    let src = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("palette image was not expanded".into()),
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format!("unexpected bit depth {:?}", info.bit_depth));
    }
    let keep = if src <= 2 { 1 } else { 3 };
    let line = info.line_size;
    if line < width * src || buf.len() < line * height {
        return Err("decoded buffer is shorter than the image".into());
    }
    let mut data = Vec::with_capacity(width * height * keep);
    for row in buf.chunks(line).take(height) {
        for px in row[..width * src].chunks(src) {
            data.extend_from_slice(&px[..keep]);
        }
    }
    Ok(Pixels {
        width,
        height,
        channels: keep,
        data,
    })
}

fn decode_jpeg(bytes: &[u8]) -> Result<Pixels, String> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(true)
        // The decoder's own limits are left above ours, which the check below words.
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    // (The decoder's messages may end in a newline.)
    let one_line = |e: zune_jpeg::errors::DecodeErrors| e.to_string().trim_end().to_string();
    dec.decode_headers().map_err(one_line)?;
    let (w, h) = dec.dimensions().ok_or("no image size in the headers")?;
    check_image_size(w, h)?;
    let data = dec.decode().map_err(one_line)?;
    let (width, height) = dec.dimensions().ok_or("no image size in the headers")?;
    if data.len() != width * height * 3 {
        return Err(format!(
            "decoded {} bytes for a {width}x{height} RGB image",
            data.len()
        ));
    }
    Ok(Pixels {
        width,
        height,
        channels: 3,
        data,
    })
}

/// Planar f32 image: `planes[c][y * width + x]`.
struct Planes {
    width: usize,
    height: usize,
    planes: Vec<Vec<f32>>,
}

/// Colour step: pixels to planes in the output channel order.
fn to_planes(img: &Pixels, color: Color) -> Planes {
    let n = img.width * img.height;
    let chan = |c: usize| -> Vec<f32> {
        (0..n)
            .map(|i| f32::from(img.data[i * img.channels + c.min(img.channels - 1)]))
            .collect()
    };
    let planes = match color {
        Color::Gray if img.channels == 1 => vec![chan(0)],
        Color::Gray => {
            let (r, g, b) = (chan(0), chan(1), chan(2));
            vec![(0..n)
                .map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i])
                .collect()]
        }
        Color::Rgb => vec![chan(0), chan(1), chan(2)],
        Color::Bgr => vec![chan(2), chan(1), chan(0)],
    };
    Planes {
        width: img.width,
        height: img.height,
        planes,
    }
}

/// Source index pairs and weight for each destination coordinate (half-pixel centres,
/// clamped at the edges).
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let ratio = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let s = ((d as f64 + 0.5) * ratio - 0.5).max(0.0);
            let i0 = s.floor() as usize;
            if i0 + 1 >= src {
                (src - 1, src - 1, 0.0)
            } else {
                (i0, i0 + 1, (s - i0 as f64) as f32)
            }
        })
        .collect()
}

/// Bilinear resize of one plane (identity when the size does not change).
fn resize_plane(p: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    if (sw, sh) == (dw, dh) {
        return p.to_vec();
    }
    let xs = taps(sw, dw);
    let ys = taps(sh, dh);
    let mut out = Vec::with_capacity(dw * dh);
    for &(y0, y1, v) in &ys {
        let (r0, r1) = (&p[y0 * sw..(y0 + 1) * sw], &p[y1 * sw..(y1 + 1) * sw]);
        for &(x0, x1, u) in &xs {
            let top = r0[x0] + (r0[x1] - r0[x0]) * u;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * u;
            out.push(top + (bottom - top) * v);
        }
    }
    out
}

/// Geometry step.
fn fit(p: Planes, pre: &Preprocess) -> Planes {
    let Some((w, h)) = pre.resize else {
        return p;
    };
    if !pre.keep_aspect {
        return Planes {
            planes: p
                .planes
                .iter()
                .map(|pl| resize_plane(pl, p.width, p.height, w, h))
                .collect(),
            width: w,
            height: h,
        };
    }
    let r = (w as f64 / p.width as f64).min(h as f64 / p.height as f64);
    let nw = ((p.width as f64 * r).round() as usize).clamp(1, w);
    let nh = ((p.height as f64 * r).round() as usize).clamp(1, h);
    let (ox, oy) = match pre.align {
        Align::TopLeft => (0, 0),
        Align::Center => ((w - nw) / 2, (h - nh) / 2),
    };
    let planes = p
        .planes
        .iter()
        .map(|pl| {
            let small = resize_plane(pl, p.width, p.height, nw, nh);
            let mut canvas = vec![pre.pad; w * h];
            for y in 0..nh {
                canvas[(oy + y) * w + ox..(oy + y) * w + ox + nw]
                    .copy_from_slice(&small[y * nw..(y + 1) * nw]);
            }
            canvas
        })
        .collect();
    Planes {
        width: w,
        height: h,
        planes,
    }
}

/// All steps for one decoded image.
fn preprocess(img: &Pixels, pre: &Preprocess, t: &Target) -> Tensor {
    let p = fit(to_planes(img, pre.color), pre);
    let (c, h, w) = (p.planes.len(), p.height, p.width);
    let per = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let value = |ch: usize, v: f32| (v / pre.scale - per(&pre.mean, ch)) / per(&pre.std, ch);
    let mut shape = match pre.layout {
        Layout::Nchw => vec![c, h, w],
        Layout::Nhwc => vec![h, w, c],
    };
    if t.batched {
        shape.insert(0, 1);
    }
    let order: Vec<(usize, usize)> = match pre.layout {
        Layout::Nchw => (0..c)
            .flat_map(|ch| (0..h * w).map(move |i| (ch, i)))
            .collect(),
        Layout::Nhwc => (0..h * w)
            .flat_map(|i| (0..c).map(move |ch| (ch, i)))
            .collect(),
    };
    match t.dtype {
        DType::U8 => Tensor::U8(
            ArrayD::from_shape_vec(
                IxDyn(&shape),
                order
                    .iter()
                    .map(|&(ch, i)| p.planes[ch][i].round().clamp(0.0, 255.0) as u8)
                    .collect(),
            )
            .expect("shape matches the planes"),
        ),
        _ => Tensor::F32(
            ArrayD::from_shape_vec(
                IxDyn(&shape),
                order
                    .iter()
                    .map(|&(ch, i)| value(ch, p.planes[ch][i]))
                    .collect(),
            )
            .expect("shape matches the planes"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_form() {
        let p: Preprocess =
            "resize=192x48,layout=nchw,mean=0.5,0.5,0.5,std=0.5,0.5,0.5,scale=255,color=rgb"
                .parse()
                .unwrap();
        assert_eq!(p.resize, Some((192, 48)));
        assert_eq!(p.mean, vec![0.5; 3]);
        assert_eq!(p.std, vec![0.5; 3]);
        assert_eq!(p.scale, 255.0);
        assert_eq!(p.color, Color::Rgb);
        // The canonical form parses back to the same spec.
        assert_eq!(p.to_string().parse::<Preprocess>().unwrap(), p);
        let q: Preprocess = "input=img,resize=10x20,keep-aspect,align=center,pad=114,color=bgr,layout=nhwc,dtype=u8"
            .parse()
            .unwrap();
        assert!(q.keep_aspect);
        assert_eq!(q.align, Align::Center);
        assert_eq!(q.pad, 114.0);
        assert_eq!(q.input.as_deref(), Some("img"));
        assert_eq!(q.dtype, Some(DType::U8));
        assert_eq!(q.to_string().parse::<Preprocess>().unwrap(), q);
    }

    #[test]
    fn json_form_equals_text_form() {
        let a = Preprocess::from_json(
            r#"{"resize": "192x48", "scale": 255, "mean": [0.5, 0.5, 0.5], "std": 0.5, "keep-aspect": true, "pad": 127.5}"#,
        )
        .unwrap();
        let b: Preprocess =
            "resize=192x48,scale=255,mean=0.5,0.5,0.5,std=0.5,keep-aspect,pad=127.5"
                .parse()
                .unwrap();
        assert_eq!(a, b);
        let c = Preprocess::from_json(r#"{"resize": [192, 48]}"#).unwrap();
        assert_eq!(c.resize, Some((192, 48)));
    }

    #[test]
    fn bad_specs_are_one_line_errors() {
        for (spec, want) in [
            ("resize=192", "resize wants"),
            ("resize=0x48", "resize wants"),
            ("size=1x1", "unknown key 'size'"),
            ("scale=255,,std=1", "empty item"),
            ("mean=0.5,oops", "'oops' is not KEY=VALUE"),
            ("scale=-1", "must be positive"),
            ("std=0", "must be positive"),
            ("color=cmyk", "not one of rgb, bgr, gray"),
            ("keep-aspect", "needs resize"),
            ("pad=3", "only with keep-aspect"),
            ("scale=1,scale=2", "given twice"),
            ("dtype=u8,scale=255", "do not apply"),
            ("mean=x", "'x' is not a number"),
        ] {
            let e = spec.parse::<Preprocess>().expect_err(spec).to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(!e.contains('\n'));
        }
        assert!(Preprocess::from_json("[1]").is_err());
        assert!(Preprocess::from_json(r#"{"mean": {"a": 1}}"#).is_err());
    }

    #[test]
    fn bilinear_matches_half_pixel_reference() {
        // 2 -> 4 upscaling: half-pixel centres give 0, 0.25, 0.75, 1 of the way.
        let out = resize_plane(&[0.0, 4.0], 2, 1, 4, 1);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
        // 4 -> 2 downscaling averages neighbour pairs (no antialiasing needed at 2x).
        let out = resize_plane(&[0.0, 2.0, 4.0, 6.0], 4, 1, 2, 1);
        assert_eq!(out, vec![1.0, 5.0]);
        // Vertical direction uses the same taps.
        let out = resize_plane(&[0.0, 4.0], 1, 2, 1, 4);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
        // Same size: identity.
        let p: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_plane(&p, 4, 3, 4, 3), p);
    }

    fn pixels(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> Pixels {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        Pixels {
            width: w,
            height: h,
            channels: 3,
            data,
        }
    }

    fn target_of(batched: bool, dtype: DType) -> Target {
        Target {
            input: "x".into(),
            dtype,
            batched,
            width: None,
            height: None,
        }
    }

    #[test]
    fn layouts_colours_and_values() {
        // 2x1 image: pixel 0 = (10, 20, 30), pixel 1 = (40, 50, 60).
        let img = pixels(2, 1, |x, _, c| (x * 30 + c * 10 + 10) as u8);
        let pre: Preprocess = "color=bgr,scale=10,mean=1,std=2".parse().unwrap();
        let t = preprocess(&img, &pre, &target_of(true, DType::F32));
        assert_eq!(t.shape(), vec![1, 3, 1, 2]);
        // B plane first: (30/10 - 1)/2 = 1, (60/10 - 1)/2 = 2.5.
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, 2.5, 0.5, 2.0, 0.0, 1.5]);
        let pre: Preprocess = "layout=nhwc".parse().unwrap();
        let t = preprocess(&img, &pre, &target_of(false, DType::U8));
        assert_eq!(t.shape(), vec![1, 2, 3]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![10, 20, 30, 40, 50, 60]);
        let pre: Preprocess = "color=gray".parse().unwrap();
        let t = preprocess(&img, &pre, &target_of(true, DType::F32));
        assert_eq!(t.shape(), vec![1, 1, 1, 2]);
        let g = t.to_f64_vec().unwrap();
        assert!((g[0] - (0.299 * 10.0 + 0.587 * 20.0 + 0.114 * 30.0)).abs() < 1e-4);
    }

    #[test]
    fn keep_aspect_pads() {
        // 4x2 image into an 4x4 box: scaled by 1, placed at the top (or centred), rest padded.
        let img = pixels(4, 2, |_, _, _| 200);
        let pre: Preprocess = "resize=4x4,keep-aspect,pad=7,dtype=u8".parse().unwrap();
        let t = preprocess(&img, &pre, &target_of(false, DType::U8));
        let v = t.to_i64_vec().unwrap();
        assert_eq!(
            &v[..16],
            &[200; 8].iter().chain(&[7; 8]).copied().collect::<Vec<_>>()[..]
        );
        let pre: Preprocess = "resize=4x4,keep-aspect,align=center,pad=7,dtype=u8"
            .parse()
            .unwrap();
        let v = preprocess(&img, &pre, &target_of(false, DType::U8))
            .to_i64_vec()
            .unwrap();
        assert_eq!(&v[..4], &[7; 4]);
        assert_eq!(&v[4..12], &[200; 8]);
        assert_eq!(&v[12..16], &[7; 4]);
    }

    #[test]
    fn checks_against_the_model_input() {
        let dir = Path::new("imgs");
        let x =
            |shape: &[Option<usize>]| vec![InputSpec::new("x", DType::F32, Some(shape.to_vec()))];
        let pre: Preprocess = "resize=192x48".parse().unwrap();
        let t = target(dir, &pre, &x(&[None, Some(3), None, None])).unwrap();
        assert!(t.batched);
        let err = |pre: &str, inputs: &[InputSpec]| {
            target(dir, &pre.parse().unwrap(), inputs)
                .expect_err(pre)
                .to_string()
        };
        let e = err("color=gray", &x(&[Some(1), Some(3), None, None]));
        assert!(
            e.contains("'x'") && e.contains("3 channels") && e.contains("gives 1"),
            "{e}"
        );
        let e = err(
            "resize=100x48",
            &x(&[Some(1), Some(3), Some(48), Some(192)]),
        );
        assert!(e.contains("width 100") && e.contains("192"), "{e}");
        let e = err("resize=4x4", &x(&[Some(2), Some(3), None, None]));
        assert!(e.contains("batch 2"), "{e}");
        let e = err("resize=4x4", &x(&[Some(3), Some(4)]));
        assert!(e.contains("rank 2"), "{e}");
        let e = err("mean=1,2", &x(&[None, Some(3), None, None]));
        assert!(e.contains("mean has 2 values"), "{e}");
        let e = err("dtype=u8", &x(&[None, Some(3), None, None]));
        assert!(e.contains("gives u8") && e.contains("expects f32"), "{e}");
        let two = vec![
            InputSpec::new("a", DType::F32, None),
            InputSpec::new("b", DType::F32, None),
        ];
        let e = err("scale=1", &two);
        assert!(e.contains("2 inputs") && e.contains("input=NAME"), "{e}");
        let e = err("input=a", &two);
        assert!(e.contains("'b'") && e.contains("--pin"), "{e}");
        let e = err("input=c", &two);
        assert!(e.contains("'c'"), "{e}");
        let e = err("layout=nchw", &x(&[Some(1), Some(48), Some(192), Some(3)]));
        assert!(e.contains("layout=nhwc"), "{e}");
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let png = include_bytes!("../../fixtures/ppocr_cls/images/sample_01.png").as_slice();
        let jpg = include_bytes!("../../fixtures/ppocr_cls/images_jpeg/sample_01.jpg").as_slice();
        for good in [png, jpg] {
            assert!(decode(good).is_ok());
            for cut in (0..good.len()).step_by(97) {
                assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
            }
            // Flipped bytes may still decode (to other pixels) but must never panic.
            for at in (8..good.len()).step_by(61) {
                let mut bad = good.to_vec();
                bad[at] ^= 0x5a;
                let _ = decode(&bad);
            }
        }
    }

    /// The fixture image with the size its header declares replaced (the pixel data stays
    /// that of the small image).
    fn declaring(width: u32, height: u32, png: bool) -> Vec<u8> {
        if png {
            let mut b = include_bytes!("../../fixtures/ppocr_cls/images/sample_01.png").to_vec();
            // IHDR is the first chunk: length, "IHDR", width, height, 5 bytes, CRC.
            b[16..20].copy_from_slice(&width.to_be_bytes());
            b[20..24].copy_from_slice(&height.to_be_bytes());
            let crc = crc32fast::hash(&b[12..29]);
            b[29..33].copy_from_slice(&crc.to_be_bytes());
            b
        } else {
            let mut b =
                include_bytes!("../../fixtures/ppocr_cls/images_jpeg/sample_01.jpg").to_vec();
            let sof = b
                .windows(2)
                .position(|w| w[0] == 0xff && matches!(w[1], 0xc0..=0xc2))
                .unwrap();
            b[sof + 5..sof + 7].copy_from_slice(&(height as u16).to_be_bytes());
            b[sof + 7..sof + 9].copy_from_slice(&(width as u16).to_be_bytes());
            b
        }
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        for png in [true, false] {
            for (w, h) in [(60_000, 60_000), (16_000, 16_000), (MAX_SIDE as u32 + 1, 8)] {
                let e = decode(&declaring(w, h, png)).unwrap_err();
                assert!(
                    e.contains(&format!("{w}x{h}")) && e.contains("larger than qrange decodes"),
                    "{e}"
                );
            }
        }
        // At the limits, the size passes and decoding goes on (and fails on the short data).
        let e = decode(&declaring(MAX_SIDE as u32, 4096, true)).unwrap_err();
        assert!(!e.contains("larger than"), "{e}");
    }

    #[test]
    fn corrupt_and_unknown_files() {
        assert!(decode(b"hello").unwrap_err().contains("not a PNG or JPEG"));
        let e = decode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap_err();
        assert!(e.starts_with("cannot decode PNG"), "{e}");
        let e = decode(&[0xff, 0xd8, 0xff, 0xe0, 0, 0]).unwrap_err();
        assert!(e.starts_with("cannot decode JPEG"), "{e}");
    }
}
