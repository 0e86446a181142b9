//! Writing files without damaging any: every file qrange writes goes through here.
//!
//! - [`Paths`]: what one command reads and writes, checked before any work starts. A write
//!   must be a regular file or a new name in an existing folder (a symbolic link is
//!   followed to the file it names; a folder, device, FIFO or socket is refused), and it
//!   must not be any file the command reads nor another file it writes. Paths are compared
//!   as files, not spellings: by (device, inode) when the file exists (so a hard link or a
//!   symbolic link is the file it reaches), else by canonical folder and name.
//! - [`stage`] and [`commit`]: each output is written to a temporary file in its target's
//!   folder, then renamed over the target; several outputs (a model and its external
//!   data, a model and its sidecars) are renamed together, after all of them were written.
//!   A new file gets the mode a plain create gives under the process's umask; a replaced
//!   regular file keeps its mode. Writing through a symbolic link replaces the file it
//!   names and leaves the link.
//! - [`clean_up_on_signals`]: temporary files are registered while they exist; on SIGINT or
//!   SIGTERM a handler thread removes them and exits with the conventional code (130, 143),
//!   so an interrupted command leaves neither a temporary file nor a partial output.
//! - [`scratch`] / [`scratch_in`]: a file written and read back within one command (a
//!   simulation model's side file, activations spilled by layer-wise calibration), open
//!   for reading and writing, alone in a new folder of the system's temporary directory
//!   (or of a given one); registered like the staged files and removed, with its folder,
//!   when dropped or on a signal.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Temporary files that exist now (removed on SIGINT/SIGTERM).
static PENDING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn pending() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path refused as an output, with the option that named it.
#[derive(Debug, thiserror::Error)]
#[error("{what} '{path}': {why}")]
pub struct Refused {
    pub what: String,
    pub path: PathBuf,
    pub why: String,
}

/// The folder of `p` (`.` for a bare file name).
fn folder(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with every symbolic link it is followed to its end (the link's target may not
/// exist yet): the file a write through `path` must replace.
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = std::fs::read_link(&p)?;
                p = if t.is_absolute() {
                    t
                } else {
                    folder(&p).join(t)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Why `path` cannot be written, if it cannot: not a regular file, or no folder to
/// create it in. Returns the file a write replaces (symbolic links followed).
pub fn check_output(path: &Path) -> Result<PathBuf, String> {
    let target = resolve(path).map_err(|e| e.to_string())?;
    match std::fs::metadata(&target) {
        Ok(m) => {
            let t = m.file_type();
            let kind = if t.is_dir() {
                "a folder"
            } else if t.is_char_device() {
                "a character device"
            } else if t.is_block_device() {
                "a block device"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else {
                return Ok(target);
            };
            Err(format!("is {kind}; qrange writes regular files only"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = folder(&target);
            if dir.is_dir() {
                Ok(target)
            } else {
                Err(format!("the folder '{}' does not exist", dir.display()))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What identifies a file: (device, inode) when it exists, else its canonical folder
/// and name.
#[derive(PartialEq, Eq, Debug)]
enum Identity {
    Inode(u64, u64),
    Name(PathBuf),
}

fn identity(p: &Path) -> Identity {
    if let Ok(m) = std::fs::metadata(p) {
        return Identity::Inode(m.dev(), m.ino());
    }
    let r = resolve(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = folder(&r);
    let dir = dir.canonicalize().unwrap_or(dir);
    Identity::Name(match r.file_name() {
        Some(n) => dir.join(n),
        None => r,
    })
}

/// The files one command reads and writes, each with what names it (an option, or the
/// role of the file), checked together by [`Paths::check`] before the command works.
#[derive(Default, Debug)]
pub struct Paths {
    reads: Vec<(String, PathBuf)>,
    writes: Vec<(String, PathBuf)>,
}

impl Paths {
    pub fn new() -> Paths {
        Paths::default()
    }

    /// A file the command reads; a folder stands for the files directly inside it.
    pub fn read(&mut self, what: impl Into<String>, path: &Path) {
        let what = what.into();
        if path.is_dir() {
            if let Ok(rd) = std::fs::read_dir(path) {
                let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                files.sort();
                for f in files.into_iter().filter(|f| f.is_file()) {
                    self.reads.push((what.clone(), f));
                }
            }
        } else {
            self.reads.push((what, path.to_path_buf()));
        }
    }

    /// A file the command writes.
    pub fn write(&mut self, what: impl Into<String>, path: &Path) {
        self.writes.push((what.into(), path.to_path_buf()));
    }

    /// Refuses a write that cannot be written, that is a file the command reads, or that
    /// another write names too.
    pub fn check(&self) -> Result<(), Refused> {
        let refused = |what: &str, path: &Path, why: String| Refused {
            what: what.to_string(),
            path: path.to_path_buf(),
            why,
        };
        let reads: Vec<Identity> = self.reads.iter().map(|(_, p)| identity(p)).collect();
        let mut written: Vec<(Identity, &str)> = Vec::new();
        for (what, path) in &self.writes {
            check_output(path).map_err(|why| refused(what, path, why))?;
            let id = identity(path);
            if let Some(i) = reads.iter().position(|r| *r == id) {
                let (rwhat, rpath) = &self.reads[i];
                let same = if rpath == path {
                    String::new()
                } else {
                    format!(" '{}'", rpath.display())
                };
                return Err(refused(
                    what,
                    path,
                    format!("is {rwhat}{same}, which this command reads: refusing to overwrite it"),
                ));
            }
            if let Some((_, other)) = written.iter().find(|(w, _)| *w == id) {
                return Err(refused(
                    what,
                    path,
                    format!("is also where {other} goes: give the outputs different names"),
                ));
            }
            written.push((id, what));
        }
        Ok(())
    }
}

/// An output being written: a registered temporary file beside its target.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    file: File,
    /// The replaced file's mode, kept.
    mode: Option<u32>,
    done: bool,
}

/// Opens a temporary file for `path` in its folder (after following symbolic links);
/// refuses targets that are not regular files.
pub fn stage(path: &Path) -> io::Result<Staged> {
    let target = check_output(path)
        .map_err(|why| io::Error::other(format!("cannot write '{}': {why}", path.display())))?;
    let dir = folder(&target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let mode = std::fs::metadata(&target)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o7777);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.qrange-{}-{n}.tmp", std::process::id()));
        // Created and registered under the lock: a signal handler that takes it sees
        // every temporary file that exists.
        let mut reg = pending();
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => {
                reg.insert(tmp.clone());
                return Ok(Staged {
                    tmp,
                    target,
                    file,
                    mode,
                    done: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Staged {
    /// The temporary file to write the content to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The file the rename replaces.
    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let mut reg = pending();
            let _ = std::fs::remove_file(&self.tmp);
            reg.remove(&self.tmp);
        }
    }
}

/// Flushes every staged file to disk, then renames them all over their targets.
pub fn commit(staged: Vec<Staged>) -> io::Result<()> {
    for s in &staged {
        s.file.sync_all()?;
        if let Some(mode) = s.mode {
            std::fs::set_permissions(&s.tmp, std::fs::Permissions::from_mode(mode))?;
        }
    }
    let mut reg = pending();
    for mut s in staged {
        std::fs::rename(&s.tmp, &s.target)?;
        reg.remove(&s.tmp);
        s.done = true;
    }
    Ok(())
}

/// A scratch file and the folder made for it (see [`scratch`]); both are removed when it
/// is dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    file: PathBuf,
}

/// Creates an empty file named `name`, open for reading and writing, in a new folder of
/// the system's temporary directory, registered (with its folder) for removal on
/// SIGINT/SIGTERM.
pub fn scratch(name: &str) -> io::Result<(Scratch, File)> {
    scratch_in(&std::env::temp_dir(), name)
}

/// [`scratch`] in a new folder of `base` instead of the system's temporary directory.
pub fn scratch_in(base: &Path, name: &str) -> io::Result<(Scratch, File)> {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("qrange-{}-{n}", std::process::id()));
        let mut reg = pending();
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        reg.insert(dir.clone());
        let file = dir.join(name);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&file);
        return match opened {
            Ok(f) => {
                reg.insert(file.clone());
                Ok((Scratch { dir, file }, f))
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                reg.remove(&dir);
                Err(e)
            }
        };
    }
}

impl Scratch {
    /// The folder holding the file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut reg = pending();
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
        reg.remove(&self.file);
        reg.remove(&self.dir);
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut s = stage(path)?;
    s.file().write_all(bytes)?;
    commit(vec![s])
}

/// From now on, SIGINT and SIGTERM remove the temporary files being written and end the
/// process with 128 + the signal's number (130, 143).
pub fn clean_up_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Held until the process ends: no file is staged or renamed meanwhile.
                let reg = pending();
                // A scratch file sorts after its folder: files first, then the folders.
                for p in reg.iter().rev() {
                    let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
                }
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_scratch_file_and_its_folder_are_registered_then_removed() {
        let (s, mut f) = scratch("side.data").unwrap();
        f.write_all(b"abc").unwrap();
        let (dir, file) = (s.dir().to_path_buf(), s.file().to_path_buf());
        assert_eq!(std::fs::read(&file).unwrap(), b"abc");
        assert!(pending().contains(&dir) && pending().contains(&file));
        drop(s);
        assert!(!dir.exists());
        assert!(!pending().contains(&dir) && !pending().contains(&file));
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_nothing_is_left_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o640);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_new_file_gets_the_mode_of_a_plain_create() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let p = d.path().join("new");
        write(&p, b"x").unwrap();
        assert_eq!(mode(&p), mode(&plain));
    }

    #[test]
    fn writing_through_a_symbolic_link_replaces_its_target_and_keeps_the_link() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.onnx");
        std::fs::write(&real, b"old").unwrap();
        let link = d.path().join("link.onnx");
        std::os::unix::fs::symlink("real.onnx", &link).unwrap();
        write(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn an_abandoned_stage_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        let mut s = stage(&p).unwrap();
        s.file().write_all(b"partial").unwrap();
        assert!(pending().contains(&s.tmp));
        drop(s);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn paths_are_compared_as_files() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.npz");
        std::fs::write(&a, b"data").unwrap();
        let hard = d.path().join("hard.npz");
        std::fs::hard_link(&a, &hard).unwrap();
        let mut p = Paths::new();
        p.read("--calib", &a);
        p.write("-o", &hard);
        let e = p.check().unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");

        let mut p = Paths::new();
        p.write("-o", &d.path().join("x.json"));
        p.write("--report", &d.path().join(".").join("x.json"));
        let e = p.check().unwrap_err().to_string();
        assert!(e.contains("also where -o goes"), "{e}");

        let mut p = Paths::new();
        p.write("-o", d.path());
        let e = p.check().unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");

        let mut p = Paths::new();
        p.read("--calib", &a);
        p.write("-o", &d.path().join("b.npz"));
        p.check().unwrap();
    }
}
