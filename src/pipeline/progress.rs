//! How a run tells what it does as it goes: the [`Progress`] callback (the command line's
//! progress bars implement it) and [`Silent`], which shows nothing.

/// What a run tells as it goes: phases of work with their progress, messages to show
/// now, and the IR dumps asked for. Implemented by the command line's progress bars.
pub trait Progress: Sync {
    /// A phase of `len` units of work begins (0: not known yet).
    fn begin(&self, what: &str, len: u64);
    /// `done` of `total` units are done.
    fn position(&self, done: u64, total: u64);
    /// One more unit is done.
    fn step(&self);
    /// The phase ended.
    fn end(&self);
    /// A line to show now (what an image folder became).
    fn message(&self, line: &str);
    /// A warning to show now.
    fn warn(&self, what: &str);
    /// The IR text dump after pass step `step` (`--dump-after`, `--stop-after`).
    fn dump(&self, step: &str, text: &str);
}

/// A [`Progress`] that shows nothing (dumps are dropped).
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str, _: u64) {}
    fn position(&self, _: u64, _: u64) {}
    fn step(&self) {}
    fn end(&self) {}
    fn message(&self, _: &str) {}
    fn warn(&self, _: &str) {}
    fn dump(&self, _: &str, _: &str) {}
}
