//! NumPy `.npz` archives: a zip of `.npy` members (stored or deflated), read member by
//! member, and written atomically (stored, fixed timestamps, sorted names, so output is
//! reproducible). Members the caller names (model inputs) are opened for sample-at-a-time
//! reading ([`super::stream`]); the others are decoded whole.

use super::npy::{self, NpyError};
use super::stream::{Array, Coding, Opened, Span, Streamed};
use super::DataError;
use crate::ir::tensor::Tensor;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// One archive member: its array name (member name without `.npy`) and what opening gave.
pub(super) struct Member {
    pub name: String,
    pub value: Result<Array, NpyError>,
}

/// Opens every `.npy` member of an archive in archive order: those `stream` accepts (by
/// array name) for reading sample by sample when their layout allows it, the others decoded
/// whole. Members that are not `.npy` files come back as `Err` with the reason, so the caller
/// can report them as skipped.
pub(super) fn read(path: &Path, stream: &dyn Fn(&str) -> bool) -> Result<Vec<Member>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| DataError::Format {
            path: path.to_path_buf(),
            msg: format!("not a readable .npz (zip) archive: {e}"),
        })?;
    let zip_error = |i: usize, e: zip::result::ZipError| DataError::Format {
        path: path.to_path_buf(),
        msg: format!("zip member #{i}: {e}"),
    };
    let mut members = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let (member, span) = {
            let entry = zip.by_index_raw(i).map_err(|e| zip_error(i, e))?;
            if entry.is_dir() {
                continue;
            }
            let coding = match entry.compression() {
                _ if entry.encrypted() => None,
                zip::CompressionMethod::Stored => Some(Coding::Stored),
                zip::CompressionMethod::Deflated => Some(Coding::Deflate),
                _ => None,
            };
            let span = coding.map(|coding| Span {
                path: path.to_path_buf(),
                start: entry.data_start(),
                len: entry.compressed_size(),
                coding,
                size: entry.size(),
                crc32: Some(entry.crc32()),
            });
            (entry.name().to_string(), span)
        };
        let Some(name) = member.strip_suffix(".npy") else {
            members.push(Member {
                name: member,
                value: Err(NpyError::Malformed("member is not a .npy file".into())),
            });
            continue;
        };
        if let (true, Some(span)) = (stream(name), span) {
            match Streamed::open(span, name)? {
                Ok(Opened::Streamed(s)) => {
                    members.push(Member {
                        name: name.to_string(),
                        value: Ok(Array::Streamed(s)),
                    });
                    continue;
                }
                Ok(Opened::Whole) => {}
                Err(e) => {
                    members.push(Member {
                        name: name.to_string(),
                        value: Err(e),
                    });
                    continue;
                }
            }
        }
        let mut entry = zip.by_index(i).map_err(|e| zip_error(i, e))?;
        // (The size the archive declares is not trusted to size the buffer.)
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                msg: if e.to_string().contains("checksum") {
                    format!("array '{name}': zip member '{member}' fails its CRC-32 check ({e}): the archive is damaged")
                } else {
                    format!("array '{name}': cannot read zip member: {e}")
                },
            })?;
        members.push(Member {
            name: name.to_string(),
            value: npy::decode(&bytes).map(Array::Loaded),
        });
    }
    Ok(members)
}

/// Writes `arrays` as an uncompressed `.npz` (like `numpy.savez`), atomically: the archive is
/// built in a temporary file beside `path` and renamed over it.
pub fn write_npz(path: &Path, arrays: &BTreeMap<String, Tensor>) -> Result<(), DataError> {
    let mut staged = crate::fsx::stage(path).map_err(|e| DataError::io(path, e))?;
    let zip_err = |e: zip::result::ZipError| DataError::Format {
        path: path.to_path_buf(),
        msg: format!("cannot write zip archive: {e}"),
    };
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(staged.file()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    for (name, tensor) in arrays {
        let bytes = npy::encode(tensor).map_err(|e| DataError::Unsupported {
            path: path.to_path_buf(),
            array: name.clone(),
            what: e.to_string(),
        })?;
        let large = u64::try_from(bytes.len()).unwrap_or(u64::MAX) >= u64::from(u32::MAX);
        zip.start_file(format!("{name}.npy"), options.large_file(large))
            .map_err(zip_err)?;
        zip.write_all(&bytes).map_err(|e| DataError::io(path, e))?;
    }
    let writer = zip.finish().map_err(zip_err)?;
    writer
        .into_inner()
        .map_err(|e| DataError::io(path, e.into_error()))?;
    crate::fsx::commit(vec![staged]).map_err(|e| DataError::io(path, e))?;
    Ok(())
}
