//! Layer-wise calibration: the statistics [`super::collect::collect_model`] gives, for models
//! whose weights should not be loaded whole, computed one block of the model at a time.
//!
//! [`plan_blocks`] cuts the main graph, in its topological order, into *blocks*: runs of
//! consecutive ops whose weights (the initializers they read, each counted once per block)
//! fit the weight budget; an op whose weights alone exceed it is a block of its own. A block
//! is a model of its own (`exec::part_model`, as the engine's stages are): its
//! inputs are the values it reads that graph inputs or earlier blocks give, its outputs
//! the values later blocks read (and the graph outputs it computes), and it taps the
//! calibrated values it computes (a calibrated graph input: the first block that reads it).
//!
//! [`collect_layerwise`] runs block after block, each over all samples (on worker threads
//! taking samples in turn, as whole-model collection does), and only the running block's
//! engine exists, so only its weights are loaded. Between blocks it keeps, per sample, the
//! computed values later blocks read (the *boundary*; graph inputs are read from the
//! samples again) in a [`Boundary`]: in memory while the held bytes stay under the
//! activation budget, else spilled to a scratch file ([`crate::fsx::scratch_in`], removed when
//! done and on Ctrl-C) as `.npy` records.
//!
//! **Same statistics, bit for bit.** Each value is tapped in exactly one block, on the same
//! tensors a whole-model run computes (a block computes its ops from the same inputs, and
//! the boundary round-trips exactly); per-worker statistics are merged as in
//! [`super::collect`] (the samples not kept first, then the kept ones), and statistics do
//! not depend on the order of observation nor on how samples are split between workers
//! ([`super::stats`]). So the calibration file equals the whole-model run's byte for byte.
//!
//! Values inside subgraphs (`If`/`Loop`/`Scan` bodies) are not collected this way: a
//! calibration that needs them is refused by [`collect_layerwise`] (the caller runs the
//! whole model instead).

use super::collect::{fold_tap, CollectError, Collected, Keep};
use super::TensorStats;
use crate::data::{Sample, SampleSource};
use crate::exec::{part_model, reads, ObservedError, Session, SessionOptions};
use crate::ir::{Graph, Model, OpId, Tensor, ValueId};
use crate::onnx::engine_proto;
use crate::quant::plan::ValueKeys;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Budgets of a layer-wise run, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Weights of one block.
    pub weights: u64,
    /// Boundary values held in memory over all samples (the rest is spilled).
    pub held: u64,
}

/// One block: its ops in topological order and what it reads, returns and taps (names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub ops: Vec<OpId>,
    /// Values it reads from graph inputs or earlier blocks, sorted.
    pub inputs: Vec<String>,
    /// Values later blocks read, graph outputs, and tapped values nothing reads, sorted.
    pub outputs: Vec<String>,
    /// Calibrated values observed in this block, sorted.
    pub taps: Vec<String>,
    /// Bytes of the initializers its ops read.
    pub weight_bytes: u64,
}

/// Bytes of the initializer behind `v`, 0 for any other value.
fn init_bytes(g: &Graph, v: ValueId) -> u64 {
    g.const_of(v).map_or(0, |t| t.byte_size() as u64)
}

/// Bytes of all main-graph initializers of `g`.
pub fn weight_bytes(g: &Graph) -> u64 {
    g.values().map(|v| init_bytes(g, v)).sum()
}

/// Cuts `g`'s main graph into blocks of at most `budget` bytes of weights (see the module
/// documentation), tapping `taps` (main-graph value names).
pub fn plan_blocks(g: &Graph, budget: u64, taps: &[String]) -> Result<Vec<Block>, CollectError> {
    let order = g
        .topo_order()
        .map_err(|e| CollectError::Encode(e.to_string()))?;
    let mut groups: Vec<(Vec<OpId>, BTreeSet<ValueId>, u64)> = Vec::new();
    for o in order {
        let weights: Vec<ValueId> = reads(g, o)
            .into_iter()
            .filter(|&v| g.const_of(v).is_some())
            .collect();
        let fits = groups.last().is_some_and(|(_, seen, used)| {
            let new: u64 = weights
                .iter()
                .filter(|v| !seen.contains(v))
                .map(|&v| init_bytes(g, v))
                .sum();
            used + new <= budget
        });
        if !fits {
            groups.push((Vec::new(), BTreeSet::new(), 0));
        }
        let (ops, seen, used) = groups.last_mut().expect("pushed");
        ops.push(o);
        for v in weights {
            if seen.insert(v) {
                *used += init_bytes(g, v);
            }
        }
    }
    let name = |v: ValueId| g.value(v).name.clone();
    let computed = |v: ValueId| g.const_of(v).is_none() && !g.value(v).name.is_empty();
    let block_reads: Vec<BTreeSet<ValueId>> = groups
        .iter()
        .map(|(ops, ..)| {
            let made = produced(g, ops);
            ops.iter()
                .flat_map(|&o| reads(g, o))
                .filter(|&v| computed(v) && !made.contains(&v))
                .collect()
        })
        .collect();
    let wanted: BTreeSet<&str> = taps.iter().map(String::as_str).collect();
    let mut assigned: BTreeSet<&str> = BTreeSet::new();
    let mut blocks = Vec::with_capacity(groups.len());
    for (b, (ops, _, weight_bytes)) in groups.iter().enumerate() {
        let later: BTreeSet<ValueId> = block_reads[b + 1..].iter().flatten().copied().collect();
        let made = produced(g, ops);
        let mut block_taps = BTreeSet::new();
        for &v in made.iter().chain(&block_reads[b]) {
            let n = g.value(v).name.as_str();
            if wanted.contains(n) && assigned.insert(n) {
                block_taps.insert(n.to_string());
            }
        }
        let outputs = made
            .iter()
            .filter(|&&v| {
                later.contains(&v)
                    || g.is_output(v)
                    || (block_taps.contains(&g.value(v).name) && g.consumers(v).is_empty())
            })
            .map(|&v| name(v))
            .collect::<BTreeSet<_>>();
        blocks.push(Block {
            ops: ops.clone(),
            inputs: block_reads[b]
                .iter()
                .map(|&v| name(v))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            outputs: outputs.into_iter().collect(),
            taps: block_taps.into_iter().collect(),
            weight_bytes: *weight_bytes,
        });
    }
    if let Some(missed) = wanted.iter().find(|n| !assigned.contains(*n)) {
        return Err(CollectError::Unreachable {
            value: missed.to_string(),
            reason: "layer-wise calibration observes values computed or read by nodes; this \
                     one is neither"
                .into(),
        });
    }
    Ok(blocks)
}

/// Values the ops `ops` compute.
fn produced(g: &Graph, ops: &[OpId]) -> BTreeSet<ValueId> {
    ops.iter()
        .flat_map(|&o| g.outputs_of(o).into_iter().flatten())
        .collect()
}

/// Where one sample's boundary values are.
enum Slot {
    Empty,
    Held(Sample, u64),
    /// Offset and length of its record in the scratch file.
    Spilled(u64, u64),
}

/// The boundary values of every sample between two blocks: held in memory up to a byte
/// budget, the rest spilled to a scratch file in `dir`.
pub struct Boundary {
    slots: Mutex<Vec<Slot>>,
    /// Bytes held in memory, shared with the boundary before or after this one.
    held: Arc<AtomicU64>,
    budget: u64,
    dir: PathBuf,
    spill: Mutex<Option<(crate::fsx::Scratch, std::fs::File)>>,
    end: AtomicU64,
}

fn tensor_bytes(t: &Tensor) -> u64 {
    let bits = t.dtype().bits().unwrap_or(64) as u64;
    (t.len() as u64 * bits).div_ceil(8)
}

impl Boundary {
    /// An empty boundary for `n` samples.
    pub fn new(n: usize, budget: u64, dir: &Path) -> Boundary {
        Boundary {
            slots: Mutex::new((0..n).map(|_| Slot::Empty).collect()),
            held: Arc::new(AtomicU64::new(0)),
            budget,
            dir: dir.to_path_buf(),
            spill: Mutex::new(None),
            end: AtomicU64::new(0),
        }
    }

    /// An empty boundary for the next block, sharing this one's budget.
    pub fn successor(&self) -> Boundary {
        Boundary {
            held: self.held.clone(),
            ..Boundary::new(self.slots().len(), self.budget, &self.dir)
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spill_err(&self, what: String) -> CollectError {
        CollectError::Spill {
            dir: self.dir.clone(),
            what,
        }
    }

    /// Stores sample `i`'s values.
    pub fn put(&self, i: usize, values: Sample) -> Result<(), CollectError> {
        let bytes: u64 = values.values().map(tensor_bytes).sum();
        let held = self.held.fetch_add(bytes, Ordering::Relaxed);
        if held + bytes <= self.budget {
            self.slots()[i] = Slot::Held(values, bytes);
            return Ok(());
        }
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        let mut record = Vec::new();
        for (name, t) in &values {
            let npy = crate::data::npy::encode(t)
                .map_err(|e| self.spill_err(format!("value '{name}': {e}")))?;
            record.extend_from_slice(&(name.len() as u64).to_le_bytes());
            record.extend_from_slice(name.as_bytes());
            record.extend_from_slice(&(npy.len() as u64).to_le_bytes());
            record.extend_from_slice(&npy);
        }
        drop(values);
        let len = record.len() as u64;
        let at = self.end.fetch_add(len, Ordering::Relaxed);
        {
            let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
            if spill.is_none() {
                let s = crate::fsx::scratch_in(&self.dir, "boundary.data")
                    .map_err(|e| self.spill_err(e.to_string()))?;
                *spill = Some(s);
            }
            let (_, file) = spill.as_ref().expect("created");
            file.write_all_at(&record, at)
                .map_err(|e| self.spill_err(e.to_string()))?;
        }
        self.slots()[i] = Slot::Spilled(at, len);
        Ok(())
    }

    /// Sample `i`'s values, removed from the store when `take`.
    pub fn get(&self, i: usize, take: bool) -> Result<Sample, CollectError> {
        let slot = {
            let mut slots = self.slots();
            match (&slots[i], take) {
                (Slot::Held(s, _), false) => return Ok(s.clone()),
                (Slot::Spilled(at, len), false) => Slot::Spilled(*at, *len),
                _ => std::mem::replace(&mut slots[i], Slot::Empty),
            }
        };
        match slot {
            Slot::Empty => Ok(Sample::new()),
            Slot::Held(s, bytes) => {
                self.held.fetch_sub(bytes, Ordering::Relaxed);
                Ok(s)
            }
            Slot::Spilled(at, len) => self.read(at, len),
        }
    }

    fn read(&self, at: u64, len: u64) -> Result<Sample, CollectError> {
        let mut record = vec![0u8; len as usize];
        {
            let spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
            let file = spill
                .as_ref()
                .ok_or_else(|| self.spill_err("no file".into()))?;
            file.1
                .read_exact_at(&mut record, at)
                .map_err(|e| self.spill_err(e.to_string()))?;
        }
        let mut out = Sample::new();
        let mut rest = record.as_slice();
        let next = |rest: &mut &[u8]| -> Result<Vec<u8>, CollectError> {
            let short = || self.spill_err("a record is cut short".into());
            let (n, r) = rest.split_first_chunk::<8>().ok_or_else(short)?;
            let n = usize::try_from(u64::from_le_bytes(*n)).map_err(|_| short())?;
            let (bytes, r) = r.split_at_checked(n).ok_or_else(short)?;
            *rest = r;
            Ok(bytes.to_vec())
        };
        while !rest.is_empty() {
            let name = String::from_utf8(next(&mut rest)?)
                .map_err(|_| self.spill_err("a record names no value".into()))?;
            let t = crate::data::npy::decode(&next(&mut rest)?)
                .map_err(|e| self.spill_err(format!("value '{name}': {e}")))?;
            out.insert(name, t);
        }
        Ok(out)
    }

    /// Bytes held in memory now.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Bytes spilled so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.end.load(Ordering::Relaxed)
    }
}

/// How one layer-wise collection runs.
pub struct Layerwise<'a> {
    pub budget: Budget,
    /// Worker threads, each running one sample at a time.
    pub workers: usize,
    /// Folder of the scratch file boundary values are spilled to.
    pub scratch_dir: &'a Path,
}

/// Statistics of `values` (plan keys) of `model` over `samples`, as
/// [`super::collect::collect_model`] computes them (byte for byte), run block by block as
/// the module documentation says. `progress(done, total)` is called after each sample of
/// each block (`total` = samples × blocks). The model's outputs are kept for the samples
/// of `keep`, whose `others` callback gets the statistics of the other samples.
pub fn collect_layerwise<S: SampleSource + ?Sized>(
    model: &Model,
    base_dir: Option<&Path>,
    samples: &S,
    values: &[String],
    keep: Keep,
    how: &Layerwise,
    mut progress: impl FnMut(u64, u64),
) -> Result<Collected, CollectError> {
    let g = &model.graph;
    let keys = ValueKeys::of(g);
    let mut main = Vec::with_capacity(values.len());
    for v in values {
        match keys.locate(v) {
            Some((0, local)) => main.push(local.to_string()),
            Some(_) => {
                return Err(CollectError::Unreachable {
                    value: v.clone(),
                    reason: "layer-wise calibration covers main-graph values only; this one is \
                             inside a subgraph"
                        .into(),
                })
            }
            None => {
                return Err(CollectError::Unreachable {
                    value: v.clone(),
                    reason: "not a value of the model".into(),
                })
            }
        }
    }
    let blocks = plan_blocks(g, how.budget.weights, &main)?;
    let n = samples.count();
    let total = (n * blocks.len()) as u64;
    let graph_inputs: BTreeSet<String> =
        g.inputs.iter().map(|&v| g.value(v).name.clone()).collect();
    let graph_outputs: Vec<String> = g.outputs.iter().map(|&v| g.value(v).name.clone()).collect();
    let mut acc = Acc::default();
    let mut outputs = BTreeMap::new();
    if n == 0 || main.is_empty() {
        return Ok(Collected::default());
    }
    let mut prev = Boundary::new(n, how.budget.held, how.scratch_dir);
    let mut done = 0u64;
    for (b, block) in blocks.iter().enumerate() {
        // Computed values later blocks read; graph outputs too, for the kept samples.
        let later: BTreeSet<&str> = blocks[b + 1..]
            .iter()
            .flat_map(|x| &x.inputs)
            .map(String::as_str)
            .filter(|n| !graph_inputs.contains(*n))
            .collect();
        let last = b + 1 == blocks.len();
        let next = prev.successor();
        let step = Step {
            model,
            base_dir,
            block,
            samples,
            prev: &prev,
            next: &next,
            later: &later,
            last,
            graph_outputs: &graph_outputs,
            keep: keep.samples,
            workers: how.workers,
        };
        let kept_outputs = run_block(step, &mut acc, &mut done, total, &mut progress)?;
        if last {
            outputs = kept_outputs;
        }
        prev = next;
    }
    let Acc { others, kept } = acc;
    if !keep.samples.is_empty() {
        (keep.others)(&others);
    }
    let mut stats = BTreeMap::new();
    merge_into(&mut stats, others);
    merge_into(&mut stats, kept);
    Ok(Collected { stats, outputs })
}

/// Statistics of the samples not kept and of those kept.
#[derive(Default)]
struct Acc {
    others: BTreeMap<String, TensorStats>,
    kept: BTreeMap<String, TensorStats>,
}

fn merge_into(acc: &mut BTreeMap<String, TensorStats>, part: BTreeMap<String, TensorStats>) {
    for (name, st) in part {
        match acc.get_mut(&name) {
            Some(a) => a.merge(&st),
            None => {
                acc.insert(name, st);
            }
        }
    }
}

/// One block's run over all samples.
struct Step<'a, S: ?Sized> {
    model: &'a Model,
    base_dir: Option<&'a Path>,
    block: &'a Block,
    samples: &'a S,
    prev: &'a Boundary,
    next: &'a Boundary,
    later: &'a BTreeSet<&'a str>,
    last: bool,
    graph_outputs: &'a [String],
    keep: &'a BTreeSet<usize>,
    workers: usize,
}

impl<S: SampleSource + ?Sized> Step<'_, S> {
    /// The block's inputs for sample `i`, taking its boundary values out of `prev` when
    /// `take`; with the boundary values that stay for later blocks.
    fn inputs(&self, i: usize, take: bool) -> Result<(Sample, Sample), CollectError> {
        let mut carried = self.prev.get(i, take)?;
        let source = self.samples.sample(i)?;
        let mut inputs = Sample::new();
        let stays = |n: &str| self.later.contains(n) || self.graph_outputs.iter().any(|o| o == n);
        for name in &self.block.inputs {
            let here = if stays(name) {
                carried.get(name).cloned()
            } else {
                carried.remove(name)
            };
            let t = match here {
                Some(t) => t,
                None => source
                    .get(name)
                    .cloned()
                    .ok_or_else(|| CollectError::Unreachable {
                        value: name.clone(),
                        reason: format!("sample {i} does not hold it"),
                    })?,
            };
            inputs.insert(name.clone(), t);
        }
        carried.retain(|n, _| stays(n));
        Ok((inputs, carried))
    }

    /// Sample `i` through the block: its statistics into `into`, the boundary on to `next`;
    /// the graph outputs when the sample is kept and this is the last block.
    fn one(
        &self,
        session: &Session,
        i: usize,
        into: &mut BTreeMap<String, TensorStats>,
    ) -> Result<Option<Sample>, CollectError> {
        let (inputs, mut carried) = self.inputs(i, true)?;
        let ran = session.run_observed(&inputs, true, |name, value| fold_tap(into, name, value));
        let out = ran.map_err(|e| match e {
            ObservedError::Exec(e) => CollectError::Exec(e),
            ObservedError::Observer(e) => CollectError::Calib(e),
        })?;
        drop(inputs);
        let kept = self.keep.contains(&i);
        for (name, t) in out.unwrap_or_default() {
            let output = self.graph_outputs.contains(&name);
            if self.later.contains(name.as_str()) || (kept && output) {
                carried.insert(name, t);
            }
        }
        if !kept {
            carried.retain(|n, _| self.later.contains(n.as_str()));
        }
        if self.last {
            // Last block: what is left are the kept sample's graph outputs.
            return Ok(kept.then_some(carried));
        }
        self.next.put(i, carried)?;
        Ok(None)
    }
}

/// What a worker returns: statistics of the samples not kept and kept, the outputs it
/// kept, and the first failing sample with its error.
type Worker = (
    BTreeMap<String, TensorStats>,
    BTreeMap<String, TensorStats>,
    Vec<(usize, Sample)>,
    Option<(usize, CollectError)>,
);

/// Runs `step`'s block over every sample on worker threads (samples taken in turn), its
/// statistics into `acc` (merged in worker order); returns the kept samples' outputs of
/// the last block.
fn run_block<S: SampleSource + ?Sized>(
    step: Step<S>,
    acc: &mut Acc,
    done: &mut u64,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<BTreeMap<usize, Sample>, CollectError> {
    let n = step.samples.count();
    let part = part_model(
        step.model,
        &step.block.ops,
        &step.block.inputs,
        &step.block.outputs,
    )?;
    let proto = engine_proto(&part)
        .map(|(p, _)| p)
        .map_err(|e| CollectError::Encode(e.to_string()))?;
    drop(part);
    let opts = SessionOptions {
        taps: step.block.taps.clone(),
        stream_taps: true,
        ..Default::default()
    };
    let (first, _) = step.inputs(0, false)?;
    let session = Session::new(&proto, step.base_dir, &first, &opts)?;
    drop(first);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<()>();
    let results: Vec<Worker> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..step.workers.clamp(1, n))
            .map(|_| {
                let tx = tx.clone();
                let (step, session, next, stop) = (&step, &session, &next, &stop);
                scope.spawn(move || {
                    let mut w: Worker = Default::default();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let into = if step.keep.contains(&i) {
                            &mut w.1
                        } else {
                            &mut w.0
                        };
                        match step.one(session, i, into) {
                            Ok(Some(out)) => w.2.push((i, out)),
                            Ok(None) => {}
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                w.3 = Some((i, e));
                                return w;
                            }
                        }
                        let _ = tx.send(());
                    }
                    w
                })
            })
            .collect();
        drop(tx);
        for () in rx.iter() {
            *done += 1;
            progress(*done, total);
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut first_error: Option<(usize, CollectError)> = None;
    let mut outputs = BTreeMap::new();
    for (others, kept, out, err) in results {
        merge_into(&mut acc.others, others);
        merge_into(&mut acc.kept, kept);
        outputs.extend(out);
        if let Some((i, e)) = err {
            if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                first_error = Some((i, e));
            }
        }
    }
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(outputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::collect::collect_model;
    use crate::data::Dataset;
    use crate::pipeline::inputs::{input_specs, load_data};
    use crate::pipeline::options::{CalibSource, Common};
    use crate::pipeline::prepare::{prepare, PrepareEnd, PrepareInput, Prepared};
    use crate::pipeline::Silent;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(rel)
    }

    /// A fixture model prepared for calibration, with its data.
    fn prepared(model: &str, data: &str) -> (Prepared, Dataset) {
        let c = Common::new(fixture(model), CalibSource::Data(fixture(data)));
        let m = crate::onnx::read_model(&c.model).unwrap();
        let specs = input_specs(&m, &BTreeMap::new());
        let ds = load_data("--calib", &fixture(data), &specs, None, &Silent).unwrap();
        let input = PrepareInput {
            common: &c,
            float_nodes: &[],
            first_sample: Some(&ds.first().unwrap()),
            wide: false,
            dynamic: false,
            dump: &Default::default(),
        };
        let runner = &mut crate::passes::Runner::new();
        let PrepareEnd::Prepared(p) = prepare(&input, m, runner, &Silent).unwrap() else {
            panic!("stopped")
        };
        (*p, ds)
    }

    /// The statistics as the calibration file writes them.
    fn bytes(stats: BTreeMap<String, TensorStats>) -> Vec<u8> {
        let mut f = crate::calib::CalibrationFile::new("x");
        f.tensors = stats;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        f.write(&p).unwrap();
        std::fs::read(p).unwrap()
    }

    /// Whole-model statistics and kept outputs against layer-wise ones, with each op that
    /// reads weights in a block of its own, boundaries held in memory or all spilled.
    fn same_as_whole(model: &str, data: &str) -> Vec<Block> {
        let (p, ds) = prepared(model, data);
        let values = p.plan.calibration_values();
        let kept: BTreeSet<usize> = [1, 3].into();
        let whole_others = std::cell::RefCell::new(Vec::new());
        let keep = Keep {
            samples: &kept,
            others: &mut |o| *whole_others.borrow_mut() = bytes(o.clone()),
        };
        let base = Some(p.base_dir.as_path());
        let whole = collect_model(&p.model, base, &ds, &values, 2, keep, |_, _| {}).unwrap();
        let whole_stats = bytes(whole.stats);
        for held in [u64::MAX, 0] {
            let scratch = tempfile::tempdir().unwrap();
            let how = Layerwise {
                budget: Budget { weights: 0, held },
                workers: 2,
                scratch_dir: scratch.path(),
            };
            let mut others = Vec::new();
            let keep = Keep {
                samples: &kept,
                others: &mut |o| others = bytes(o.clone()),
            };
            let mut calls = 0;
            let lw = collect_layerwise(&p.model, base, &ds, &values, keep, &how, |_, _| calls += 1)
                .unwrap();
            let blocks = plan_blocks(&p.model.graph, 0, &[]).unwrap();
            assert_eq!(
                calls,
                ds.len() * blocks.len(),
                "{model}: progress per sample and block"
            );
            assert_eq!(bytes(lw.stats), whole_stats, "{model}: held {held}");
            assert_eq!(others, *whole_others.borrow(), "{model}: held {held}");
            assert_eq!(
                lw.outputs, whole.outputs,
                "{model}: kept outputs, held {held}"
            );
            let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
            assert!(left.is_empty(), "{model}: scratch files left: {left:?}");
        }
        plan_blocks(&p.model.graph, 0, &[]).unwrap()
    }

    #[test]
    fn a_cnn_calibrated_block_by_block_gives_the_whole_runs_statistics() {
        let blocks = same_as_whole("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz");
        assert!(blocks.len() >= 3, "{} blocks", blocks.len());
    }

    #[test]
    fn a_transformer_calibrated_block_by_block_gives_the_whole_runs_statistics() {
        let blocks = same_as_whole("minilm_l3/model.onnx", "minilm_l3/calib.npz");
        assert!(blocks.len() >= 10, "{} blocks", blocks.len());
        // Residual connections and the attention mask: values several blocks read.
        let mut readers: BTreeMap<&str, usize> = BTreeMap::new();
        for b in &blocks {
            for i in &b.inputs {
                *readers.entry(i).or_default() += 1;
            }
        }
        assert!(readers.values().any(|&n| n >= 3), "{readers:?}");
    }

    #[test]
    fn blocks_hold_at_most_the_budget_of_weights_and_cover_every_op_once() {
        let (p, _) = prepared("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz");
        let g = &p.model.graph;
        let total = weight_bytes(g);
        let largest = g.values().map(|v| init_bytes(g, v)).max().unwrap();
        for budget in [0, largest, total / 2, total] {
            let blocks = plan_blocks(g, budget, &[]).unwrap();
            let mut ops: Vec<OpId> = blocks.iter().flat_map(|b| b.ops.clone()).collect();
            assert_eq!(ops, g.topo_order().unwrap(), "budget {budget}");
            ops.dedup();
            for b in &blocks {
                let alone = b.ops.len() == 1;
                assert!(b.weight_bytes <= budget || alone, "budget {budget}: {b:?}");
            }
            if budget == total {
                assert_eq!(blocks.len(), 1);
            }
        }
    }

    #[test]
    fn spilled_boundary_values_come_back_exactly_and_the_file_goes_with_the_store() {
        let d = tempfile::tempdir().unwrap();
        let a = Tensor::F32(
            ndarray::ArrayD::from_shape_vec(vec![2, 2], vec![1.5, -0.0, f32::NAN, 3e-40]).unwrap(),
        );
        let b = Tensor::I64(ndarray::arr1(&[7, -9]).into_dyn());
        let sample: Sample = [("a".to_string(), a), ("b".to_string(), b)].into();
        let store = Boundary::new(2, 32, d.path());
        store.put(0, sample.clone()).unwrap();
        assert_eq!(store.spilled_bytes(), 0);
        assert_eq!(store.held_bytes(), 32);
        store.put(1, sample.clone()).unwrap();
        assert!(store.spilled_bytes() > 0);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        for i in 0..2 {
            let back = store.get(i, true).unwrap();
            let bits = |s: &Sample| {
                format!(
                    "{:?}",
                    s.iter()
                        .map(|(k, t)| (
                            k.clone(),
                            t.to_f64_vec()
                                .unwrap()
                                .iter()
                                .map(|x| x.to_bits())
                                .collect::<Vec<_>>()
                        ))
                        .collect::<Vec<_>>()
                )
            };
            assert_eq!(bits(&back), bits(&sample), "sample {i}");
        }
        assert_eq!(store.held_bytes(), 0);
        drop(store);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
