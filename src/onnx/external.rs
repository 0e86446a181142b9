//! External tensor data: locating side files on decode (checked, not read: the IR reads
//! them on demand, `ir::external`), and the one rule every reader of a `location` follows
//! ([`resolve_location`]).

use super::OnnxError;
use crate::ir::{ConstTensor, ExternalRef, TensorData};
use std::path::{Component, Path, PathBuf};

/// The folder a model's external data is read from: the model file's folder (`.` for a
/// bare file name). The engine is handed it for models passed from memory.
pub fn base_dir(model_path: &Path) -> PathBuf {
    match model_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Resolves the side file of an external tensor and checks, without reading it, that it
/// holds the span the tensor needs (location, offset and length against the file's size,
/// length against the dims). Returns the reference with `file`, `start` and `len` filled
/// in. Errors name `origin` and the tensor.
pub fn locate(
    tensor: &str,
    dtype: crate::ir::DType,
    dims: &[i64],
    mut r: ExternalRef,
    origin: &Path,
) -> Result<ExternalRef, OnnxError> {
    let err = |what: String| OnnxError::ExternalData {
        path: origin.to_path_buf(),
        tensor: tensor.to_string(),
        what,
    };
    let file = resolve_location(&r.base_dir, &r.location).map_err(err)?;
    let size = std::fs::metadata(&file)
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
    let probe = ConstTensor {
        name: Some(tensor.to_string()),
        dtype,
        dims: dims.to_vec(),
        data: TensorData::External(r.clone()),
        was_external: true,
        carry: Default::default(),
    };
    // Dims already checked by the caller are checked again here, so that no size below
    // is computed from impossible dims.
    probe.check_size().map_err(|e| {
        let crate::ir::value::TensorDataError::Bad { what, .. } = e;
        err(what)
    })?;
    let expect = probe.byte_size() as u64;
    if dtype.bits().is_some() && length != expect {
        return Err(err(format!(
            "external data length {length} does not match dims {dims:?} of {dtype} ({expect} bytes)"
        )));
    }
    r.file = file;
    r.start = offset;
    r.len = length;
    Ok(r)
}

/// Reads the bytes of an external tensor (its side file was located on decode).
pub fn read(t: &ConstTensor, origin: &Path) -> Result<Vec<u8>, OnnxError> {
    let TensorData::External(r) = &t.data else {
        unreachable!("external::read on an inline tensor")
    };
    r.read().map_err(|what| OnnxError::ExternalData {
        path: origin.to_path_buf(),
        tensor: t.name.clone().unwrap_or_default(),
        what,
    })
}

/// The external data files the model file at `path` names (resolved against its folder,
/// sorted, each once): what a command reading the model reads besides it.
pub fn referenced_files(path: &Path) -> Result<Vec<PathBuf>, OnnxError> {
    use super::proto;
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| OnnxError::Io {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let m = proto::ModelProto::decode(bytes.as_slice()).map_err(|e| OnnxError::Decode {
        path: path.to_path_buf(),
        what: format!("not a valid ONNX protobuf ({e})"),
    })?;
    let mut found = std::collections::BTreeSet::new();
    fn tensor(t: &proto::TensorProto, found: &mut std::collections::BTreeSet<String>) {
        if t.data_location == Some(proto::tensor_proto::DataLocation::External as i32) {
            for kv in &t.external_data {
                if kv.key.as_deref() == Some("location") {
                    found.insert(kv.value.clone().unwrap_or_default());
                }
            }
        }
    }
    fn sparse(t: &proto::SparseTensorProto, found: &mut std::collections::BTreeSet<String>) {
        t.values
            .iter()
            .chain(&t.indices)
            .for_each(|t| tensor(t, found));
    }
    fn nodes(ns: &[proto::NodeProto], found: &mut std::collections::BTreeSet<String>) {
        for a in ns.iter().flat_map(|n| &n.attribute) {
            a.t.iter().chain(&a.tensors).for_each(|t| tensor(t, found));
            a.sparse_tensor
                .iter()
                .chain(&a.sparse_tensors)
                .for_each(|t| sparse(t, found));
            a.g.iter().chain(&a.graphs).for_each(|g| graph(g, found));
        }
    }
    fn graph(g: &proto::GraphProto, found: &mut std::collections::BTreeSet<String>) {
        g.initializer.iter().for_each(|t| tensor(t, found));
        g.sparse_initializer.iter().for_each(|t| sparse(t, found));
        nodes(&g.node, found);
    }
    if let Some(g) = &m.graph {
        graph(g, &mut found);
    }
    for f in &m.functions {
        nodes(&f.node, &mut found);
    }
    let base = base_dir(path);
    Ok(found
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|l| base.join(l))
        .collect())
}

/// Resolves an external data `location` against `base_dir` (the directory of the file that
/// names it), the way `onnx.load` does: the location must be relative, without `..`, and
/// its real path (symbolic links resolved) must lie inside the real `base_dir` and be a
/// regular file. Returns that real path. The error is a one-line reason naming the location.
pub fn resolve_location(base_dir: &Path, location: &str) -> Result<PathBuf, String> {
    if location.is_empty() {
        return Err("external data has no location".into());
    }
    let loc = Path::new(location);
    if !loc
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location '{location}' leaves the folder of the file naming it: it must be a relative path inside that folder"
        ));
    }
    let joined = base_dir.join(loc);
    let real = joined
        .canonicalize()
        .map_err(|e| format!("cannot open external data file '{}': {e}", joined.display()))?;
    let base = base_dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the directory '{}': {e}", base_dir.display()))?;
    if !real.starts_with(&base) {
        return Err(format!(
            "external data location '{location}' resolves to '{}', outside '{}' (the folder of the file naming it) through a symbolic link",
            real.display(),
            base.display()
        ));
    }
    if !real.is_file() {
        return Err(format!(
            "external data location '{location}' is not a regular file"
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::resolve_location;

    #[test]
    fn locations_resolve_inside_the_folder_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let model = root.join("model");
        std::fs::create_dir_all(model.join("sub/inner")).unwrap();
        std::fs::write(model.join("sub/inner/w.bin"), [1u8; 4]).unwrap();
        std::fs::write(root.join("secret.bin"), [2u8; 4]).unwrap();
        std::os::unix::fs::symlink(&root, model.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(model.join("sub/inner"), model.join("in")).unwrap();

        let ok = resolve_location(&model, "sub/inner/w.bin").unwrap();
        assert_eq!(ok, model.join("sub/inner/w.bin"));
        // A link that stays inside the folder is followed.
        assert_eq!(resolve_location(&model, "./in/w.bin").unwrap(), ok);
        let e = resolve_location(&model, "sub/up/secret.bin").unwrap_err();
        assert!(
            e.contains("'sub/up/secret.bin'") && e.contains("outside"),
            "{e}"
        );
        for bad in ["../secret.bin", "sub/../../secret.bin"] {
            let e = resolve_location(&model, bad).unwrap_err();
            assert!(e.contains("relative path inside"), "{e}");
        }
        let abs = root.join("secret.bin").display().to_string();
        assert!(resolve_location(&model, &abs).is_err());
        let e = resolve_location(&model, "sub").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = resolve_location(&model, "nope.bin").unwrap_err();
        assert!(e.contains("nope.bin"), "{e}");
        assert!(resolve_location(&model, "").is_err());
    }
}
