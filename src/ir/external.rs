//! The bytes of constants kept in side files (ONNX external data). The IR holds only an
//! [`ExternalRef`]: the file (resolved and checked when the model was read), the span of
//! bytes and the keys the file gave; nothing is read until a pass, the dump, the engine's
//! preparation or the writer asks. [`ExternalRef::read`] reads one tensor's span by a
//! positional read; [`ExternalRef::copy_to`] streams it into a writer in fixed-size chunks
//! without holding it. Both count the bytes they move ([`bytes_read`], [`bytes_streamed`]),
//! so that tests can prove a command read no tensor data.

use super::value::ExternalRef;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

static READ: AtomicU64 = AtomicU64::new(0);
static STREAMED: AtomicU64 = AtomicU64::new(0);

/// Bytes of external data read into memory by [`ExternalRef::read`] since the process began.
pub fn bytes_read() -> u64 {
    READ.load(Ordering::Relaxed)
}

/// Bytes of external data copied from file to writer by [`ExternalRef::copy_to`].
pub fn bytes_streamed() -> u64 {
    STREAMED.load(Ordering::Relaxed)
}

impl ExternalRef {
    fn open(&self) -> Result<std::fs::File, String> {
        let mut f = std::fs::File::open(&self.file).map_err(|e| {
            format!(
                "cannot open external data file '{}': {e}",
                self.file.display()
            )
        })?;
        f.seek(SeekFrom::Start(self.start))
            .map_err(|e| format!("cannot seek in '{}': {e}", self.file.display()))?;
        Ok(f)
    }

    fn short(&self, got: u64) -> String {
        format!(
            "external data file '{}' holds {got} of the {} bytes at offset {} (changed since the model was read?)",
            self.file.display(),
            self.len,
            self.start
        )
    }

    /// The tensor's bytes. A file that no longer holds them is a one-line error naming it.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let len = usize::try_from(self.len)
            .map_err(|_| format!("external data of {} bytes does not fit memory", self.len))?;
        let mut f = self.open()?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| format!("cannot allocate {len} bytes for external data"))?;
        let got = Read::by_ref(&mut f)
            .take(self.len)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read '{}': {e}", self.file.display()))?;
        if got as u64 != self.len {
            return Err(self.short(got as u64));
        }
        READ.fetch_add(self.len, Ordering::Relaxed);
        Ok(buf)
    }

    /// Hands the tensor's bytes to `f` in chunks of at most 1 MiB, each a whole number of
    /// `unit`-byte values (never the whole span in memory: a caller decoding values into
    /// their own buffer holds them once). Counted as read.
    pub fn read_chunks(&self, unit: usize, mut f: impl FnMut(&[u8])) -> Result<(), String> {
        let unit = unit.max(1);
        if !self.len.is_multiple_of(unit as u64) {
            return Err(format!(
                "external data of {} bytes is not a whole number of {unit}-byte values",
                self.len
            ));
        }
        let mut src = self.open()?;
        let mut buf = vec![0u8; ((1usize << 20) / unit).max(1) * unit];
        let mut left = self.len;
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            src.read_exact(&mut buf[..n]).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => self.short(self.len - left),
                _ => format!("cannot read '{}': {e}", self.file.display()),
            })?;
            f(&buf[..n]);
            left -= n as u64;
        }
        READ.fetch_add(self.len, Ordering::Relaxed);
        Ok(())
    }

    /// Copies the tensor's bytes into `out` in chunks (never the whole span in memory).
    /// Errors reading name the side file; errors writing are returned as `Err(Ok(e))`.
    pub fn copy_to(&self, out: &mut impl Write) -> Result<(), Result<std::io::Error, String>> {
        let f = self.open().map_err(Err)?;
        let mut src = std::io::BufReader::with_capacity(1 << 20, f.take(self.len));
        let mut copied = 0u64;
        loop {
            let chunk = std::io::BufRead::fill_buf(&mut src)
                .map_err(|e| Err(format!("cannot read '{}': {e}", self.file.display())))?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            out.write_all(chunk).map_err(Ok)?;
            std::io::BufRead::consume(&mut src, n);
            copied += n as u64;
        }
        if copied != self.len {
            return Err(Err(self.short(copied)));
        }
        STREAMED.fetch_add(self.len, Ordering::Relaxed);
        Ok(())
    }
}
