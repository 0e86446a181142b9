//! External tensor data: reading side files on decode, laying them out on encode.

use super::OnnxError;
use crate::ir::{ConstTensor, TensorData};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// The folder a model's external data is read from: the model file's folder (`.` for a
/// bare file name). The engine is handed it for models passed from memory.
pub fn base_dir(model_path: &Path) -> PathBuf {
    match model_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads the bytes of an external tensor, checking location, offset and length.
pub fn read(t: &ConstTensor, origin: &Path) -> Result<Vec<u8>, OnnxError> {
    let TensorData::External(r) = &t.data else {
        unreachable!("external::read on an inline tensor")
    };
    let tname = t.name.clone().unwrap_or_default();
    let err = |what: String| OnnxError::ExternalData {
        path: origin.to_path_buf(),
        tensor: tname.clone(),
        what,
    };
    if r.location.is_empty() {
        return Err(err("external data has no location".into()));
    }
    let loc = Path::new(&r.location);
    if loc.is_absolute()
        || loc
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(err(format!(
            "external data location '{}' must be a relative path inside the model's directory",
            r.location
        )));
    }
    let file = r.base_dir.join(loc);
    let mut f = std::fs::File::open(&file).map_err(|e| {
        err(format!(
            "cannot open external data file '{}': {e}",
            file.display()
        ))
    })?;
    let size = f
        .metadata()
        .map_err(|e| err(format!("cannot stat '{}': {e}", file.display())))?
        .len();
    let offset = r.offset.unwrap_or(0);
    if offset > size {
        return Err(err(format!(
            "external data offset {offset} is past the end of '{}' ({size} bytes)",
            file.display()
        )));
    }
    let length = r.length.unwrap_or(size - offset);
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(err(format!(
            "external data [{offset}, {offset}+{length}) runs past the end of '{}' ({size} bytes)",
            file.display()
        )));
    }
    let expect = t.byte_size() as u64;
    if t.dtype.bits().is_some() && length != expect {
        return Err(err(format!(
            "external data length {length} does not match dims {:?} of {} ({expect} bytes)",
            t.dims, t.dtype
        )));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| err(format!("cannot seek in '{}': {e}", file.display())))?;
    let mut buf = vec![0u8; length as usize];
    f.read_exact(&mut buf)
        .map_err(|e| err(format!("cannot read '{}': {e}", file.display())))?;
    Ok(buf)
}
