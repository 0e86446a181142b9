//! `qrange compare`: run two models on the same data in tract and report how far the
//! second is from the first, output by output and, with `--per-tensor`, value by value.

use super::flags::parse_shapes;
use super::run::pins;
use super::Outcome;
use crate::data::{self, InputSpec};
use crate::exec::{Session, SessionOptions};
use crate::ir::Model;
use crate::onnx;
use crate::pipeline::inputs::{input_specs, sample_shapes, specialise};
use crate::report::compare::{compare, CompareError};
use crate::report::layers::{per_tensor, LayerComparison, PerTensor, Unmatched};
use crate::report::Metrics;
use anyhow::{anyhow, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Compare two models on the same data: run both in tract, in the same mode, and report
/// SQNR, cosine similarity, max-abs error, top-1 agreement and (with `--labels`) task
/// accuracy for every output they share. With `--per-tensor`, also compare every
/// intermediate value the two share, through the quantized model's
/// QuantizeLinear/DequantizeLinear pairs, worst first, to find where the error enters.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qrange compare model.onnx model.int8.onnx --data eval.npz --labels label\n  \
    qrange compare model.onnx model.int8.onnx --data eval.npz --per-tensor\n  \
    qrange compare model.onnx model.int8.onnx --data eval.npz --per-tensor --json > layers.json")]
pub struct Args {
    /// The reference model (usually the float one).
    reference: PathBuf,
    /// The model compared with it (usually the quantized one).
    test: PathBuf,
    /// Input data: .npz / .npy (axis 0 = sample) or an ONNX test_data_set folder.
    #[arg(long)]
    data: PathBuf,
    /// Key of the ground-truth labels in the data (task accuracy of both models).
    #[arg(long, value_name = "KEY")]
    labels: Option<String>,
    /// Also compare every intermediate value the models share, worst first.
    #[arg(long)]
    per_tensor: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Fix a model input to a constant, e.g. `sr=16000`; `If` nodes it decides are folded.
    #[arg(long, value_name = "NAME=VALUE")]
    pin: Vec<String>,
    /// Concrete input shape, e.g. `input=1,576` (default: the first sample's).
    #[arg(long, value_name = "NAME=DIMS")]
    shape: Vec<String>,
    /// Use only the first N samples.
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// With --per-tensor: memory budget for tapped tensors per engine run, in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    memory_budget: u64,
    /// Also write a self-contained HTML report: per-output metrics, sizes, and with
    /// --per-tensor the per-layer SQNR chart; with a QDQ test model, its fusion coverage.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    reference: String,
    test: String,
    samples: usize,
    outputs: BTreeMap<String, Metrics>,
    /// Outputs of one model that the other lacks.
    unshared_outputs: Vec<String>,
    per_tensor: Option<PerTensor>,
    notes: Vec<String>,
}

/// The models must take the same inputs (names and element types).
fn check_inputs(
    a: &[InputSpec],
    a_path: &Path,
    b: &[InputSpec],
    b_path: &Path,
) -> anyhow::Result<()> {
    let types = |s: &[InputSpec]| -> BTreeMap<String, crate::ir::DType> {
        s.iter().map(|i| (i.name.clone(), i.dtype)).collect()
    };
    let (ta, tb) = (types(a), types(b));
    let (pa, pb) = (a_path.display(), b_path.display());
    for (name, da) in &ta {
        match tb.get(name) {
            None => bail!(
                "the models take different inputs: '{name}' is an input of {pa} but not of {pb}"
            ),
            Some(db) if db != da => {
                bail!("the models take different inputs: '{name}' is {da} in {pa} but {db} in {pb}")
            }
            Some(_) => {}
        }
    }
    if let Some(name) = tb.keys().find(|n| !ta.contains_key(*n)) {
        bail!("the models take different inputs: '{name}' is an input of {pb} but not of {pa}");
    }
    Ok(())
}

fn output_names(m: &Model) -> Vec<String> {
    m.graph
        .outputs
        .iter()
        .map(|v| m.graph.value(*v).name.clone())
        .collect()
}

/// Runs shape inference so `--per-tensor` can size its tap groups.
fn infer(m: &mut Model, path: &Path) -> anyhow::Result<()> {
    use crate::passes::Pass;
    crate::passes::infer_shapes::InferShapes
        .run(m, &mut crate::passes::PassCx::default())
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// A pin applies to each model that has the input (a quantized model may have been
/// specialised for it already); a pin neither has is an error.
type Pins = BTreeMap<String, crate::ir::Tensor>;

fn split_pins(flags: &[String], ma: &Model, mb: &Model) -> anyhow::Result<(Pins, Pins)> {
    let takes = |m: &Model, pin: &String| {
        let name = pin.split_once('=').map_or(pin.as_str(), |(n, _)| n);
        input_specs(m, &BTreeMap::new())
            .iter()
            .any(|i| i.name == name)
    };
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    for p in flags {
        match (takes(ma, p), takes(mb, p)) {
            (false, false) => {
                pins(ma, std::slice::from_ref(p))?;
            }
            (ia, ib) => {
                if ia {
                    pa.push(p.clone());
                }
                if ib {
                    pb.push(p.clone());
                }
            }
        }
    }
    Ok((pins(ma, &pa)?, pins(mb, &pb)?))
}

/// Outputs of one model that the other lacks, sorted; the models must share one.
fn unshared_outputs(a: &Args, ma: &Model, mb: &Model) -> anyhow::Result<Vec<String>> {
    let (outs_a, outs_b) = (output_names(ma), output_names(mb));
    let mut unshared: Vec<String> = outs_a
        .iter()
        .filter(|n| !outs_b.contains(n))
        .chain(outs_b.iter().filter(|n| !outs_a.contains(n)))
        .cloned()
        .collect();
    unshared.sort();
    if outs_a.iter().all(|n| !outs_b.contains(n)) {
        bail!(
            "the models share no output name: {} has {}, {} has {}",
            a.reference.display(),
            outs_a.join(", "),
            a.test.display(),
            outs_b.join(", ")
        );
    }
    Ok(unshared)
}

/// `--per-tensor`: every intermediate value the models share, compared on `ds`.
fn compare_values(
    a: &Args,
    ma: &mut Model,
    mb: &mut Model,
    ds: &data::Dataset,
) -> anyhow::Result<PerTensor> {
    infer(ma, &a.reference)?;
    infer(mb, &a.test)?;
    let bar = super::progress(0, "comparing values");
    let r = per_tensor(
        ma,
        mb,
        ds,
        a.memory_budget.saturating_mul(1 << 20),
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .map_err(|e| {
        anyhow!(
            "per-tensor comparison of {} and {}: {e}",
            a.reference.display(),
            a.test.display()
        )
    })?;
    bar.finish_and_clear();
    Ok(r)
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    if let Some(r) = &a.report {
        let mut paths = crate::fsx::Paths::new();
        super::read_model(&mut paths, "the reference model", &a.reference);
        super::read_model(&mut paths, "the test model", &a.test);
        paths.read("the --data", &a.data);
        paths.write("--report", r);
        paths.check()?;
    }
    let mut ma = onnx::read_model(&a.reference)?;
    let mut mb = onnx::read_model(&a.test)?;
    let (pins_a, pins_b) = split_pins(&a.pin, &ma, &mb)?;
    check_inputs(
        &input_specs(&ma, &pins_a),
        &a.reference,
        &input_specs(&mb, &pins_b),
        &a.test,
    )?;
    let shapes = parse_shapes(&a.shape)?;
    let mut ds = data::load(&a.data, &input_specs(&ma, &pins_a))?;
    let mut labels = match &a.labels {
        Some(k) => Some(ds.labels(k)?),
        None => None,
    };
    if let Some(n) = a.samples {
        if n == 0 {
            bail!("--samples 0: nothing to compare");
        }
        ds.truncate(n);
        if let Some(l) = labels.as_mut() {
            l.truncate(n);
        }
    }
    let unshared = unshared_outputs(&a, &ma, &mb)?;
    let first = ds.first()?;
    let given = sample_shapes(&first, &shapes);
    let mut notes = specialise(&mut ma, &pins_a, &given)
        .map_err(|e| anyhow!("{}: specialising the model: {e}", a.reference.display()))?;
    notes.extend(
        specialise(&mut mb, &pins_b, &given)
            .map_err(|e| anyhow!("{}: specialising the model: {e}", a.test.display()))?,
    );

    let (pa, _) = onnx::engine_proto(&ma)?;
    let (pb, _) = onnx::engine_proto(&mb)?;
    let opts = SessionOptions::default();
    let sa = Session::new(&pa, Some(&onnx::base_dir(&a.reference)), &first, &opts)
        .map_err(|e| anyhow!("{}: {e}", a.reference.display()))?;
    let sb = Session::new(&pb, Some(&onnx::base_dir(&a.test)), &first, &opts)
        .map_err(|e| anyhow!("{}: {e}", a.test.display()))?;
    let bar = super::progress(ds.len() as u64, "comparing outputs");
    let cmp = compare(&sa, &sb, &ds, labels.as_deref(), || bar.inc(1)).map_err(|e| match e {
        CompareError::Data(e) => anyhow::Error::new(e),
        CompareError::Exec(e) => {
            anyhow!("{} vs {}: {e}", a.reference.display(), a.test.display())
        }
    })?;
    bar.finish_and_clear();
    if labels.is_some() && cmp.outputs.values().all(|m| m.accuracy_ref.is_none()) {
        notes.push(
            "--labels: no shared output looks like class scores (last axis of 2 or more, \
             the others 1), so no accuracy was computed"
                .to_string(),
        );
    }
    for n in sa.notes().into_iter().chain(sb.notes()) {
        if !notes.contains(&n) {
            notes.push(n);
        }
    }
    drop((sa, sb));

    let layers = if a.per_tensor {
        Some(compare_values(&a, &mut ma, &mut mb, &ds)?)
    } else {
        None
    };

    if let Some(path) = &a.report {
        write_html(path, &a, &ma, &mb, &cmp.outputs, layers.as_ref(), ds.len())?;
    }
    let report = Report {
        reference: a.reference.display().to_string(),
        test: a.test.display().to_string(),
        samples: ds.len(),
        outputs: cmp.outputs,
        unshared_outputs: unshared,
        per_tensor: layers,
        notes,
    };
    let text = if a.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    // A reader that stops early (`| head`) is not an error.
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("writing the report: {e}"))
        }
        _ => Ok(Outcome::Ok),
    }
}

/// Writes the HTML report of a comparison (temporary file + rename).
fn write_html(
    path: &std::path::Path,
    a: &Args,
    ma: &Model,
    mb: &Model,
    outputs: &BTreeMap<String, crate::report::Metrics>,
    layers: Option<&crate::report::layers::PerTensor>,
    samples: usize,
) -> anyhow::Result<()> {
    use crate::report::{FusionRow, FusionSection, LayerRow, OutputRow, ReportInput};
    let size = |m: &Model| onnx::model_to_bytes(m).map(|b| b.len() as u64).unwrap_or(0);
    let fusion = crate::lint::lint(
        mb,
        &crate::lint::LintOptions::new(crate::quant::rules::Target::OrtCpu),
    )
    .ok()
    .filter(|r| r.fusion_model && r.has_qdq())
    .map(|r| FusionSection {
        coverage: r.coverage().line,
        rows: r
            .units
            .iter()
            .map(|u| FusionRow {
                node: u.node.clone(),
                op_type: u.op_type.clone(),
                fused: u.verdict.is_integer(),
                detail: u.verdict.detail(),
            })
            .collect(),
    });
    let input = ReportInput {
        title: format!(
            "qrange compare: {} vs {}",
            a.reference.display(),
            a.test.display()
        ),
        model: a.reference.display().to_string(),
        output: a.test.display().to_string(),
        settings: vec![format!("{samples} samples, both models in tract")],
        size_before: size(ma),
        size_after: size(mb),
        accuracy: outputs
            .iter()
            .map(|(n, m)| OutputRow::from_metrics(n, m))
            .collect(),
        layers: layers
            .map(|p| {
                p.layers
                    .iter()
                    .map(|l| LayerRow {
                        value: l.value.clone(),
                        op: l.producer.clone().unwrap_or_else(|| "input".into()),
                        op_type: l.op_type.clone().unwrap_or_else(|| "input".into()),
                        sqnr_db: l.worst_sqnr_db(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        fusion,
        ..ReportInput::default()
    };
    let html = crate::report::render(&input);
    crate::fsx::write(path, html.as_bytes())
        .map_err(|e| anyhow!("report '{}': {e}", path.display()))
}

/// Column alignment.
#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

/// Renders rows under a header with aligned columns, two spaces apart, each line
/// indented by two spaces and without trailing blanks.
fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|(h, _)| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for ((c, (_, align)), w) in cells.iter().zip(header).zip(&width) {
            let pad = w - c.chars().count();
            s.push(' ');
            match align {
                Align::Left => {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
                Align::Right => {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
            }
            s.push(' ');
        }
        format!("{}\n", s.trim_end())
    };
    let mut out = line(header.iter().map(|(h, _)| *h).collect());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn db(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{x:.1}")
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_default()
}

/// The text report.
fn render(r: &Report) -> String {
    use Align::*;
    let mut out = format!(
        "compared   {} (reference) with {} (test): {} samples, tract\n",
        r.reference, r.test, r.samples
    );
    let labelled = r.outputs.values().any(|m| m.accuracy_ref.is_some());
    let mut header = vec![
        ("output", Left),
        ("SQNR dB", Right),
        ("cosine", Right),
        ("max-abs", Right),
        ("top-1 agree", Right),
    ];
    if labelled {
        header.extend([("accuracy ref", Right), ("accuracy test", Right)]);
    }
    let rows: Vec<Vec<String>> = r
        .outputs
        .iter()
        .map(|(name, m)| {
            let mut row = vec![
                name.clone(),
                db(m.sqnr_db),
                format!("{:.4}", m.cosine),
                format!("{:.2e}", m.max_abs),
                pct(m.top1_agreement),
            ];
            if labelled {
                row.extend([pct(m.accuracy_ref), pct(m.accuracy_test)]);
            }
            row
        })
        .collect();
    out += &table(&header, &rows);
    if !r.unshared_outputs.is_empty() {
        out += &format!(
            "not compared: outputs only one model has: {}\n",
            r.unshared_outputs.join(", ")
        );
    }
    if let Some(p) = &r.per_tensor {
        out += &render_layers(p);
    }
    for n in &r.notes {
        out += &format!("note: {n}\n");
    }
    out
}

/// The per-tensor table, worst first, and what was not compared.
fn render_layers(p: &PerTensor) -> String {
    use Align::*;
    let mut out = format!(
        "\nper-tensor error, worst first ({})\n",
        plural(p.layers.len(), "value")
    );
    let header = [
        ("rank", Right),
        ("value", Left),
        ("#", Right),
        ("producer", Left),
        ("op", Left),
        ("in dB", Right),
        ("SQNR dB", Right),
        ("cosine", Right),
        ("max-abs", Right),
        ("dq SQNR dB", Right),
        ("dq cosine", Right),
        ("dq max-abs", Right),
        ("dq vs", Left),
    ];
    let rows: Vec<Vec<String>> = p
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| layer_row(i + 1, l))
        .collect();
    out += &table(&header, &rows);
    out += "  #: topological index (0: graph input); in: lowest SQNR among the values the op reads;\n  \
            dq: the quantized value as the next op reads it, compared with 'dq vs' when an op was folded\n";
    if !p.unmatched.is_empty() {
        let mut by_reason: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for u in &p.unmatched {
            let (why, item) = reason(u);
            by_reason.entry(why).or_default().push(item);
        }
        out += &format!("not compared: {}\n", plural(p.unmatched.len(), "value"));
        for (why, items) in by_reason {
            let more = if items.len() > 8 {
                format!(" (+{} more)", items.len() - 8)
            } else {
                String::new()
            };
            out += &format!(
                "  {why}: {}{more}\n",
                items[..items.len().min(8)].join(", ")
            );
        }
    }
    out
}

/// The kind of reason, to group values by, and the value with its details.
fn reason(u: &Unmatched) -> (&'static str, String) {
    let v = u.value();
    match u {
        Unmatched::NotInTest { .. } => (
            "not in the test model (folded away or renamed)",
            format!("'{v}'"),
        ),
        Unmatched::ConstantInTest { .. } => ("a constant in the test model", format!("'{v}'")),
        Unmatched::InputOfTest { .. } => ("an input of the test model", format!("'{v}'")),
        Unmatched::ProducedElsewhere { producer, .. } => (
            "name on the output of the op an activation was fused into",
            format!("'{v}' (on '{producer}')"),
        ),
        Unmatched::Absorbed { into, .. } => (
            "computed with the ops after it by one op of the test model, compared as",
            format!("'{v}' -> '{into}'"),
        ),
        Unmatched::ShapeDiffers {
            test_value,
            reference_shape,
            test_shape,
            ..
        } => (
            "shapes differ",
            format!("'{v}' {reference_shape:?} vs '{test_value}' {test_shape:?}"),
        ),
        Unmatched::NotFloat { model, dtype, .. } => (
            "not floating point",
            format!("'{v}' ({dtype} in the {model} model)"),
        ),
    }
}

fn layer_row(rank: usize, l: &LayerComparison) -> Vec<String> {
    let m = &l.metrics;
    let mut value = l.value.clone();
    if l.test_value != l.value {
        value += &format!(" ({})", l.test_value);
    }
    let mut row = vec![
        rank.to_string(),
        value,
        l.index.to_string(),
        l.producer.clone().unwrap_or_else(|| "-".to_string()),
        l.op_type.clone().unwrap_or_else(|| "input".to_string()),
        l.input_sqnr_db.map(db).unwrap_or_else(|| "-".to_string()),
        db(m.sqnr_db),
        format!("{:.4}", m.cosine),
        format!("{:.2e}", m.max_abs),
    ];
    match &l.dequantized {
        Some(d) => row.extend([
            db(d.metrics.sqnr_db),
            format!("{:.4}", d.metrics.cosine),
            format!("{:.2e}", d.metrics.max_abs),
            if d.reference != l.value {
                d.reference.clone()
            } else {
                String::new()
            },
        ]),
        None => row.extend(["-", "-", "-", ""].map(String::from)),
    }
    row
}
