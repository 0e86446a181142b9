//! Fuzzing of every reader of untrusted bytes: the ONNX model decoder (with external data
//! resolved in the model's folder), the `.npy`, `.npz` and `TensorProto` (`.pb`) data readers,
//! and the PNG/JPEG decoders.
//!
//! **Property.** Every input gives `Ok` or a clean error: a non-empty, one-line message. Never a
//! panic, never a heap allocation past [`HEAP_LIMIT`], never a read that stalls.
//!
//! **Design.** A structure-aware mutator over the shipped fixtures' bytes, driven from this
//! test with a fixed seed, on the stable toolchain (no `cargo fuzz`, which needs nightly and a
//! sanitizer runtime). The fixtures are small, valid files that reach deep into each reader; a
//! mutation keeps most of the structure valid and breaks one thing, which random bytes or type
//! generators rarely do past the first length check. Each target knows its format
//! ([`mutate`]): protobuf fields walked on the wire (varints, lengths) and edited as typed
//! messages (a tensor's dims, data type, `raw_data` length, typed lists, external data
//! location/offset/length), `.npy` headers rewritten (shape, descr, order, version, header
//! length), `.npz` archives rebuilt from mutated members (stored or deflated) and their zip
//! headers edited (sizes, CRC, method, name lengths, offsets), PNG chunks edited with their
//! CRC fixed so the decoder goes past it, JPEG segments and lengths edited; then byte-level
//! edits (bit flips, truncation, insertion, deletion, interesting integers). A run is
//! deterministic: the seed, the iteration number and the fixture name fix the input.
//!
//! **Process.** Each target runs in a child process (this test binary started again with
//! `QRANGE_FUZZ_CHILD` set) whose heap is capped by the `cap` allocator: an allocation past the
//! cap aborts the child, and so would a panic that escapes; `catch_unwind` in the child turns
//! a panic into a report naming the input. Before each case the child writes the input to
//! its working folder (the readers take files anyway), so when the child dies or stops
//! progressing (no case finished for [`STALL`]) the parent still knows the input, saves it
//! under `target/tmp/fuzz-failures/<target>/`, and fails naming it.
//!
//! **Runs.** `cargo test --test fuzz` runs [`DEFAULT_ITERS`] cases per target with the fixed
//! seed (a few seconds) and replays the crash corpus in `tests/fuzz_corpus/<target>/`: every
//! input that once broke a reader, kept after its fix as a regression test. The long local
//! mode: `QRANGE_FUZZ_ITERS=1000000 QRANGE_FUZZ_SEED=7 cargo test --test fuzz -- --test-threads=1`
//! (`QRANGE_FUZZ_TARGETS=npz,png` narrows it), described in `tests/README.md`.

mod mutate;
mod targets;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Heap a child may hold at once. The fixtures decode in a few MiB, and the largest image
/// the decoders accept (64 megapixels) needs 256 MiB of RGBA; a reader that wants more from
/// a mutated file of a few KiB is trusting a size it read.
const HEAP_LIMIT: usize = 512 << 20;
/// Cases per target in a plain `cargo test`.
const DEFAULT_ITERS: u64 = 250;
/// The fixed seed of a plain `cargo test`.
const DEFAULT_SEED: u64 = 0x5eed_f00d;
/// A child that finishes no case for this long is stopped and its input reported as a stall.
const STALL: Duration = Duration::from_secs(60);

/// A small deterministic generator (SplitMix64): inputs follow from the seed alone.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("a hexadecimal number"),
        None => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    })
}

fn failures_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(target)
}

/// Runs `target` in a child process (`mode` is `fuzz` or `replay`) and fails with what
/// went wrong, naming the input and where it was saved. A replay that kills its child goes
/// on in a new child from the next corpus input, so that every input is tried.
fn in_child(test_name: &str, target: &str, mode: &str) {
    if let Some(list) = std::env::var("QRANGE_FUZZ_TARGETS")
        .ok()
        .filter(|_| mode == "fuzz")
    {
        if !list.split(',').any(|t| t.trim() == target) {
            return;
        }
    }
    let mut problems = Vec::new();
    let mut from = 0;
    loop {
        match one_child(test_name, target, mode, from) {
            Ok(None) => break,
            Ok(Some(failed)) => {
                problems.push(failed);
                break;
            }
            Err((died, index)) => {
                problems.push(died);
                match index {
                    Some(i) if mode == "replay" => from = i + 1,
                    _ => break,
                }
            }
        }
    }
    assert!(problems.is_empty(), "{target}:\n{}", problems.join("\n"));
}

/// One child run from case or corpus input `from`: `Ok(None)` when every input was clean,
/// `Ok(Some(report))` when some failed cleanly, `Err((report, index))` when the child
/// died or stalled on the input at `index` (when known).
#[allow(clippy::type_complexity)]
fn one_child(
    test_name: &str,
    target: &str,
    mode: &str,
    from: usize,
) -> Result<Option<String>, (String, Option<usize>)> {
    let work = tempfile::Builder::new()
        .prefix(&format!("fuzz-{target}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let log = work.path().join("child.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env("QRANGE_FUZZ_CHILD", format!("{target}:{mode}:{from}"))
        .env("QRANGE_FUZZ_WORK", work.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let current = work.path().join(targets::CURRENT_NAME);
    let mut last_progress = Instant::now();
    let mut last_name = String::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        let name = std::fs::read_to_string(&current).unwrap_or_default();
        if name != last_name {
            last_name = name;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let report: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("fuzz ") || l.starts_with("FAIL "))
        .collect();
    println!("{}", report.join("\n"));
    match status {
        // A child that ran no case (its test not found) has not passed.
        Some(s) if s.success() && text.contains(&format!("fuzz {target}:")) => Ok(None),
        Some(s) if s.success() => Ok(Some(format!("the child ran no case:\n{text}"))),
        Some(s) if s.code() == Some(1) => Ok(Some(format!(
            "inputs failed (saved in {}):\n{}",
            failures_dir(target).display(),
            report.join("\n")
        ))),
        other => {
            let name = std::fs::read_to_string(&current).unwrap_or_default();
            let index = std::fs::read_to_string(work.path().join(targets::CURRENT_INDEX))
                .ok()
                .and_then(|i| i.parse().ok());
            let saved = targets::save_current(work.path(), target, &name);
            let why = match other {
                None => format!("no case finished in {} s", STALL.as_secs()),
                Some(s) => format!("the child died ({s})"),
            };
            let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
            Err((
                format!(
                    "{why} on input {name} (saved as {}); child output ends: {tail}",
                    saved.display()
                ),
                index,
            ))
        }
    }
}

/// In the child: run the cases and exit (0 all clean, 1 some failed).
fn child_main(spec: &str) -> ! {
    let mut parts = spec.split(':');
    let (target, mode) = (
        parts.next().unwrap(),
        parts.next().expect("target:mode:from"),
    );
    let from: usize = parts.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    let work = PathBuf::from(std::env::var("QRANGE_FUZZ_WORK").expect("work folder"));
    // The test harness has printed "test NAME ... " without a line end.
    println!();
    ALLOC
        .set_limit(HEAP_LIMIT)
        .expect("the heap is under the limit at start");
    let failed = if mode == "replay" {
        targets::replay(target, &work, from)
    } else {
        let iters = env_u64("QRANGE_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS);
        let seed = env_u64("QRANGE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
        targets::fuzz(target, &work, seed, iters)
    };
    std::process::exit(i32::from(failed > 0));
}

macro_rules! fuzz_tests {
    ($($test:ident, $replay:ident => $target:literal;)*) => {$(
        #[test]
        fn $test() {
            match std::env::var("QRANGE_FUZZ_CHILD") {
                Ok(spec) => child_main(&spec),
                Err(_) => in_child(stringify!($test), $target, "fuzz"),
            }
        }
        #[test]
        fn $replay() {
            match std::env::var("QRANGE_FUZZ_CHILD") {
                Ok(spec) => child_main(&spec),
                Err(_) => in_child(stringify!($replay), $target, "replay"),
            }
        }
    )*};
}

fuzz_tests! {
    fuzz_onnx, corpus_onnx => "onnx";
    fuzz_npy, corpus_npy => "npy";
    fuzz_npz, corpus_npz => "npz";
    fuzz_pb, corpus_pb => "pb";
    fuzz_png, corpus_png => "png";
    fuzz_jpeg, corpus_jpeg => "jpeg";
}

/// The mutators change their input and stay within bounds on every fixture.
#[test]
fn mutators_change_inputs_deterministically() {
    if std::env::var("QRANGE_FUZZ_CHILD").is_ok() {
        return;
    }
    for target in targets::TARGETS {
        let seeds = targets::seeds(target);
        assert!(!seeds.is_empty(), "{target}: no fixtures to start from");
        let mut changed = 0;
        for i in 0..50u64 {
            let a = targets::case(target, &seeds, DEFAULT_SEED, i);
            let b = targets::case(target, &seeds, DEFAULT_SEED, i);
            assert_eq!(a.1, b.1, "{target}: case {i} is not deterministic");
            let seed = &seeds
                .iter()
                .find(|s| s.name == a.0.split('#').next().unwrap());
            if seed.is_none_or(|s| s.bytes != a.1) {
                changed += 1;
            }
        }
        assert!(
            changed >= 45,
            "{target}: only {changed} of 50 cases mutated"
        );
    }
}
