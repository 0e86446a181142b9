//! Sample-at-a-time reading of `.npy` arrays, on their own or as `.npz` members, so that a
//! data set is never decoded whole.
//!
//! Only the header is read up front: dtype and shape are known without touching the data.
//! Sample `i` (entry `i` of axis 0) is read when asked for:
//! - stored bytes (a `.npy` file, an uncompressed `.npz` member): one seek to
//!   `data start + header + i * sample bytes` and one read;
//! - a deflated member: one inflate stream read forward sample by sample. Samples passed over
//!   on the way to the one asked for are kept (a few, [`AHEAD`]) for the threads that asked
//!   for them in turn, and so is the sample returned last; asking for an earlier sample that
//!   is no longer kept restarts the stream from the member's start.
//!
//! Layouts that make this awkward (column-major arrays, zero-rank arrays, unicode arrays,
//! compression methods other than stored and deflate) are not streamed: the caller decodes
//! them whole through the same decoder. A truncated or corrupt deflate stream is reported
//! when a sample cannot be read.
//!
//! The zip CRC-32 of a member is checked either way: a stored member is read through once
//! when it is opened (sequentially, in fixed-size blocks: no memory grows with its size), so
//! a damaged archive is refused before any work; a deflated member's stream hashes what it
//! inflates, and the check is made when the stream has passed the last sample (the rest
//! of the payload is read then), so the request for the last sample fails on a mismatch.
//! (Members decoded whole are checked by the zip reader.)

use super::npy::{self, Elem, Header, NpyError};
use super::DataError;
use crate::ir::tensor::{DType, Tensor};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Take};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Samples read past and kept for later requests, per deflated member. Workers take sample
/// indices in increasing order, so each waits for at most one sample per other worker.
const AHEAD: usize = 16;

/// How a member's bytes are stored in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Coding {
    Stored,
    Deflate,
}

/// Where an array's bytes live: `len` bytes from `start` in the file at `path`.
#[derive(Clone, Debug)]
pub(super) struct Span {
    pub path: PathBuf,
    pub start: u64,
    pub len: u64,
    pub coding: Coding,
    /// Size of the whole `.npy` payload (header included) once decoded.
    pub size: u64,
    /// The zip member's CRC-32 of the decoded payload (`None` for a plain `.npy` file).
    pub crc32: Option<u32>,
}

/// An input array: decoded whole, or read sample by sample.
#[derive(Debug)]
pub(super) enum Array {
    Loaded(Tensor),
    Streamed(Box<Streamed>),
}

impl Array {
    pub fn dtype(&self) -> DType {
        match self {
            Array::Loaded(t) => t.dtype(),
            Array::Streamed(s) => s.elem.dtype(),
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            Array::Loaded(t) => t.shape(),
            Array::Streamed(s) => s.shape.clone(),
        }
    }

    /// Entry `i` along axis 0 (the caller keeps `i` in range).
    pub fn sample(&self, i: usize) -> Result<Tensor, DataError> {
        match self {
            Array::Loaded(t) => Ok(super::index0(t, i)),
            Array::Streamed(s) => s.sample(i),
        }
    }
}

/// An array read one sample at a time.
pub(super) struct Streamed {
    span: Span,
    /// Array name, for messages.
    name: String,
    elem: Elem,
    shape: Vec<usize>,
    /// Offset of the first data byte in the decoded payload.
    header_len: u64,
    sample_bytes: usize,
    cursor: Mutex<Cursor>,
    /// How many times a deflate stream was started.
    starts: AtomicUsize,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("path", &self.span.path)
            .field("name", &self.name)
            .field("coding", &self.span.coding)
            .field("shape", &self.shape)
            .finish()
    }
}

type Inflate = Hashing<flate2::bufread::DeflateDecoder<BufReader<Take<File>>>>;

/// A reader that hashes (CRC-32) and counts the bytes read through it.
struct Hashing<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    read: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: crc32fast::Hasher::new(),
            read: 0,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Read state of a streamed array.
enum Cursor {
    /// Random access: the open file.
    Stored(File),
    Deflate {
        /// The stream and the index of the next sample it yields, once started.
        stream: Option<(Inflate, usize)>,
        /// Samples read past, by index.
        ahead: BTreeMap<usize, Vec<u8>>,
        /// The sample returned last: a view's first sample is read for shapes, then again
        /// when the view is run over, and this saves a restart for it.
        last: Option<(usize, Vec<u8>)>,
    },
}

/// What opening an array found.
pub(super) enum Opened {
    Streamed(Box<Streamed>),
    /// A layout read whole instead (see the module doc).
    Whole,
}

impl Streamed {
    /// Reads the header of the `.npy` payload `span` holds (`name` is the array's name).
    /// Problems with the payload itself are `Ok(Err(_))`, so the caller can report them as
    /// it reports any undecodable array; I/O problems are `Err`.
    pub fn open(span: Span, name: &str) -> Result<Result<Opened, NpyError>, DataError> {
        let mut reader = open_span(&span, name)?;
        let header = match npy::read_header(&mut reader) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return Err(read_error(&span.path, name, None, e)),
        };
        drop(reader);
        let elem = match Elem::parse(&header.descr) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        if header.fortran_order || header.shape.is_empty() || elem.is_text() {
            return Ok(Ok(Opened::Whole));
        }
        let checked = check_size(&header, elem, span.size);
        let sample_bytes = match checked {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let cursor = match span.coding {
            Coding::Stored => {
                if let Some(crc) = span.crc32 {
                    let mut all = Hashing::new(open_raw(&span, name)?);
                    std::io::copy(&mut all, &mut std::io::sink())
                        .map_err(|e| read_error(&span.path, name, None, e))?;
                    check_crc(&span, name, crc, &all)?;
                }
                Cursor::Stored(File::open(&span.path).map_err(|e| DataError::io(&span.path, e))?)
            }
            Coding::Deflate => Cursor::Deflate {
                stream: None,
                ahead: BTreeMap::new(),
                last: None,
            },
        };
        Ok(Ok(Opened::Streamed(Box::new(Streamed {
            header_len: header.data_offset as u64,
            name: name.to_string(),
            elem,
            shape: header.shape,
            sample_bytes,
            span,
            cursor: Mutex::new(cursor),
            starts: AtomicUsize::new(0),
        }))))
    }

    /// Sample `i`, decoded.
    pub fn sample(&self, i: usize) -> Result<Tensor, DataError> {
        let bytes = self.bytes(i)?;
        self.elem
            .decode(&self.shape[1..], false, &bytes)
            .map_err(|e| DataError::Format {
                path: self.span.path.clone(),
                msg: format!("array '{}': sample {i}: {e}", self.name),
            })
    }

    /// How many times the inflate stream was started (tests check that reading patterns
    /// do not restart it needlessly).
    #[cfg(test)]
    pub fn stream_starts(&self) -> usize {
        self.starts.load(Ordering::Relaxed)
    }

    /// The raw bytes of sample `i`.
    fn bytes(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let err = |e| read_error(&self.span.path, &self.name, Some(i), e);
        let mut cursor = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = self.sample_bytes;
        match &mut *cursor {
            Cursor::Stored(file) => {
                let at = self.span.start + self.header_len + (i as u64) * (n as u64);
                let mut buf = vec![0u8; n];
                file.seek(SeekFrom::Start(at)).map_err(err)?;
                file.read_exact(&mut buf).map_err(err)?;
                Ok(buf)
            }
            Cursor::Deflate {
                stream,
                ahead,
                last,
            } => {
                if let Some((_, b)) = last.as_ref().filter(|(j, _)| *j == i) {
                    return Ok(b.clone());
                }
                if let Some(b) = ahead.remove(&i) {
                    *last = Some((i, b.clone()));
                    return Ok(b);
                }
                // A stream that failed is dropped here and not resumed: the next request
                // starts over.
                let (mut s, mut next) = match stream.take() {
                    Some((s, next)) if next <= i => (s, next),
                    _ => {
                        self.starts.fetch_add(1, Ordering::Relaxed);
                        let mut s = Hashing::new(flate2::bufread::DeflateDecoder::new(open_raw(
                            &self.span, &self.name,
                        )?));
                        let skipped = std::io::copy(
                            &mut (&mut s).take(self.header_len),
                            &mut std::io::sink(),
                        )
                        .map_err(err)?;
                        if skipped != self.header_len {
                            return Err(err(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                        (s, 0)
                    }
                };
                loop {
                    let mut buf = vec![0u8; n];
                    s.read_exact(&mut buf).map_err(err)?;
                    next += 1;
                    if next == self.shape[0] {
                        // The last sample: the rest of the payload, then the CRC.
                        std::io::copy(&mut s, &mut std::io::sink()).map_err(err)?;
                        if let Some(crc) = self.span.crc32 {
                            check_crc(&self.span, &self.name, crc, &s)?;
                        }
                    }
                    if next - 1 == i {
                        *stream = Some((s, next));
                        *last = Some((i, buf.clone()));
                        return Ok(buf);
                    }
                    ahead.insert(next - 1, buf);
                    while ahead.len() > AHEAD {
                        ahead.pop_first();
                    }
                }
            }
        }
    }
}

/// Bytes per sample, after checking that the payload holds every sample.
fn check_size(header: &Header, elem: Elem, size: u64) -> Result<usize, NpyError> {
    let per = npy::element_count(&header.shape[1..])?
        .checked_mul(elem.item_size())
        .ok_or_else(|| NpyError::Malformed("data size overflows".into()))?;
    let need = (per as u64)
        .checked_mul(header.shape[0] as u64)
        .ok_or_else(|| NpyError::Malformed("data size overflows".into()))?;
    let found = size.saturating_sub(header.data_offset as u64);
    if found < need {
        return Err(npy::short_data(header, need, found));
    }
    Ok(per)
}

/// Compares what `read` hashed (the whole payload) with the member's CRC-32 and size.
fn check_crc<R>(span: &Span, name: &str, crc: u32, read: &Hashing<R>) -> Result<(), DataError> {
    let found = read.hasher.clone().finalize();
    if found != crc || read.read != span.size {
        return Err(DataError::Format {
            path: span.path.clone(),
            msg: format!(
                "array '{name}': zip member '{name}.npy' fails its CRC-32 check (stored {crc:08x}, data gives {found:08x}): the archive is damaged"
            ),
        });
    }
    Ok(())
}

/// A buffered reader of `span`'s bytes as stored in the file.
fn open_raw(span: &Span, name: &str) -> Result<BufReader<Take<File>>, DataError> {
    let mut file = File::open(&span.path).map_err(|e| DataError::io(&span.path, e))?;
    file.seek(SeekFrom::Start(span.start))
        .map_err(|e| read_error(&span.path, name, None, e))?;
    Ok(BufReader::new(file.take(span.len)))
}

/// A reader of the decoded payload `span` holds, from its first byte.
fn open_span(span: &Span, name: &str) -> Result<Box<dyn Read + Send>, DataError> {
    let raw = open_raw(span, name)?;
    Ok(match span.coding {
        Coding::Stored => Box::new(raw),
        Coding::Deflate => Box::new(flate2::bufread::DeflateDecoder::new(raw)),
    })
}

fn read_error(path: &Path, name: &str, sample: Option<usize>, e: std::io::Error) -> DataError {
    let what = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "the data ends early (truncated or corrupt file)".to_string()
        }
        _ => format!("cannot read the data: {e}"),
    };
    DataError::Format {
        path: path.to_path_buf(),
        msg: match sample {
            Some(i) => format!("array '{name}': sample {i}: {what}"),
            None => format!("array '{name}': {what}"),
        },
    }
}
