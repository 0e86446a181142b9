//! [`CalibrationFile`]: the statistics of one calibration run (or of several merged runs) on
//! one model, as versioned JSON.
//!
//! ```json
//! {"format_version":1,"model_sha256":"…","samples":64,
//!  "tensors":{"conv1.out":{"count":…,"hist":{…},…}},"channels":{"conv1.w":{"axis":0,…}}}
//! ```
//! Maps are `BTreeMap`s (sorted keys), so the bytes written depend only on the content.
//! Files are written atomically (temporary file in the same directory, then rename) and
//! compactly (histograms hold up to 4096 counts per side).

use super::stats::{ChannelStats, TensorStats};
use super::CalibError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The calibration file format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Statistics of the calibrated tensors of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationFile {
    pub format_version: u32,
    /// SHA-256 (hex) of the model the statistics were gathered on.
    pub model_sha256: String,
    /// Number of calibration samples (model runs) observed.
    pub samples: u64,
    /// Whole-tensor statistics by tensor name.
    pub tensors: BTreeMap<String, TensorStats>,
    /// Per-channel statistics by tensor name.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelStats>,
}

impl CalibrationFile {
    /// An empty file for the model with this SHA-256.
    pub fn new(model_sha256: impl Into<String>) -> Self {
        CalibrationFile {
            format_version: FORMAT_VERSION,
            model_sha256: model_sha256.into(),
            samples: 0,
            tensors: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }

    /// Merges two files of the same model: sample counts add, statistics of tensors present in
    /// both merge, the others are kept. The result does not depend on the order of arguments.
    pub fn merge(a: &CalibrationFile, b: &CalibrationFile) -> Result<CalibrationFile, CalibError> {
        if a.format_version != b.format_version {
            return Err(CalibError::VersionMismatch {
                a: a.format_version,
                b: b.format_version,
            });
        }
        if a.model_sha256 != b.model_sha256 {
            return Err(CalibError::ModelMismatch {
                a: a.model_sha256.clone(),
                b: b.model_sha256.clone(),
            });
        }
        let mut out = a.clone();
        out.samples = a.samples.saturating_add(b.samples);
        for (name, stats) in &b.tensors {
            out.tensors
                .entry(name.clone())
                .and_modify(|s| s.merge(stats))
                .or_insert_with(|| stats.clone());
        }
        for (name, ch) in &b.channels {
            match out.channels.get_mut(name) {
                Some(mine) => mine.merge(name, ch)?,
                None => {
                    out.channels.insert(name.clone(), ch.clone());
                }
            }
        }
        Ok(out)
    }

    /// One line per tensor whose observed values held NaN or infinities, naming it and
    /// counting them. Statistics keep such values out of min/max, sums and histograms (so
    /// ranges cover the finite values only); these lines are how that is said.
    pub fn non_finite_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, t) in &self.tensors {
            let (pos, neg) = t.infinities();
            let bad = t.count() - t.finite();
            if bad > 0 {
                out.push(format!(
                    "tensor '{name}': {bad} of {} calibration values are not finite ({} NaN, {pos} +Inf, {neg} -Inf over {} samples); its range covers the finite values only",
                    t.count(),
                    t.nan(),
                    self.samples
                ));
            }
        }
        for (name, c) in &self.channels {
            if c.non_finite() > 0 {
                out.push(format!(
                    "tensor '{name}': {} values are not finite (NaN or infinite); its per-channel ranges cover the finite values only",
                    c.non_finite()
                ));
            }
        }
        out
    }

    /// Reads and checks a calibration file.
    pub fn read(path: &Path) -> Result<CalibrationFile, CalibError> {
        let bytes = std::fs::read(path).map_err(|source| CalibError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes).map_err(|message| CalibError::Format {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the JSON form (the version is checked before the rest is interpreted).
    pub fn from_json(bytes: &[u8]) -> Result<CalibrationFile, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let version = value
            .get("format_version")
            .ok_or("no 'format_version' field (not a qrange calibration file?)")?;
        match version.as_u64() {
            Some(v) if v == FORMAT_VERSION as u64 => {}
            _ => {
                return Err(format!(
                    "format version {version} is not supported (this build reads {FORMAT_VERSION})"
                ))
            }
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// The JSON form (compact, one line, newline-terminated).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("calibration statistics serialize to JSON");
        out.push(b'\n');
        out
    }

    /// Writes the file atomically (temporary file in the same directory, then rename).
    pub fn write(&self, path: &Path) -> Result<(), CalibError> {
        let io = |source| CalibError::Io {
            path: path.to_path_buf(),
            source,
        };
        crate::fsx::write(path, &self.to_json()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str, samples: &[&[f32]]) -> CalibrationFile {
        let mut f = CalibrationFile::new(sha);
        for s in samples {
            f.samples += 1;
            f.tensors.entry("x".into()).or_default().observe(s);
            let mut c = ChannelStats::new(0);
            c.observe("w", &[2, 1], &s[..2]).unwrap();
            match f.channels.get_mut("w") {
                Some(m) => m.merge("w", &c).unwrap(),
                None => {
                    f.channels.insert("w".into(), c);
                }
            }
        }
        f
    }

    #[test]
    fn merge_equals_one_run_and_refuses_other_models() {
        let s1: &[f32] = &[1.0, -2.0, 0.5];
        let s2: &[f32] = &[100.0, 3.0, f32::NAN];
        let one = file("abc", &[s1, s2]);
        let a = file("abc", &[s1]);
        let mut b = file("abc", &[s2]);
        b.tensors.insert("only_b".into(), TensorStats::new());
        let ab = CalibrationFile::merge(&a, &b).unwrap();
        let ba = CalibrationFile::merge(&b, &a).unwrap();
        assert_eq!(ab.to_json(), ba.to_json());
        assert_eq!(ab.samples, 2);
        assert_eq!(ab.tensors["x"], one.tensors["x"]);
        assert_eq!(ab.channels["w"], one.channels["w"]);
        assert!(ab.tensors.contains_key("only_b"));
        let other = file("def", &[s1]);
        let e = CalibrationFile::merge(&a, &other).unwrap_err();
        assert!(matches!(e, CalibError::ModelMismatch { .. }));
        assert!(
            e.to_string().contains("abc") && e.to_string().contains("def"),
            "{e}"
        );
    }

    #[test]
    fn write_read_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calib.json");
        let f = file("abc", &[&[1.0, -2.0, 0.1], &[7.5, 0.0, -1e-30]]);
        f.write(&path).unwrap();
        let back = CalibrationFile::read(&path).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.to_json(), std::fs::read(&path).unwrap());
        // Only the target file is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let text = String::from_utf8(f.to_json()).unwrap();
        let cases = [
            (
                "v2.json",
                text.replace("\"format_version\":1", "\"format_version\":2"),
                "version 2",
            ),
            (
                "nov.json",
                text.replace("\"format_version\":1,", ""),
                "format_version",
            ),
            ("junk.json", "{".to_string(), "not JSON"),
            (
                "bad.json",
                text.replace("\"samples\":2", "\"samples\":-2"),
                "-2",
            ),
        ];
        for (name, body, needle) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            let e = CalibrationFile::read(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(needle), "{e}");
        }
        let missing = CalibrationFile::read(&dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(missing, CalibError::Io { .. }));
    }
}
