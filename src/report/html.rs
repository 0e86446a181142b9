//! The visual report: one self-contained HTML page (inline CSS and SVG, no script, no
//! external resource) showing the ranges qrange chose against the data it saw, and what
//! quantization cost.
//!
//! [`ReportInput`] is plain data; whoever knows a section fills it ([`render`] draws what
//! it is given and leaves out empty sections). The page is deterministic: the same input
//! gives the same bytes (no timestamps, numbers through [`fmt_num`]), and every name is
//! HTML-escaped.

use super::metrics::Metrics;
use super::plot::{self, fmt_num, method_style, pct, sig};
use super::tensor::TensorRow;
use super::weights::{LevelKind, WeightRow};
use std::fmt::Write as _;

/// Everything the report shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportInput {
    /// Page title.
    pub title: String,
    /// Input model path, as given.
    pub model: String,
    /// Output model path, as given.
    pub output: String,
    /// One line per setting (`target ort-cpu`, `activations u8 asymmetric`, …).
    pub settings: Vec<String>,
    /// Serialized size of the float and quantized models, in bytes.
    pub size_before: u64,
    pub size_after: u64,
    /// Validation per model output (empty when validation was skipped).
    pub accuracy: Vec<OutputRow>,
    /// Calibrated tensors.
    pub tensors: Vec<TensorRow>,
    /// Quantized weights with their grids' levels (empty: section left out).
    pub weights: Vec<WeightRow>,
    /// Per-layer comparison (empty: section left out).
    pub layers: Vec<LayerRow>,
    /// Precision per op (empty: section left out).
    pub precision: Vec<PrecisionRow>,
    /// Fusion check (none: section left out).
    pub fusion: Option<FusionSection>,
    /// Free-form notes shown at the end.
    pub notes: Vec<String>,
}

/// Float vs quantized on one model output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputRow {
    pub name: String,
    pub samples: u64,
    pub sqnr_db: f64,
    pub cosine: f64,
    pub max_abs: f64,
    /// Fraction of samples whose argmax agrees (classifier-like outputs).
    pub top1_agreement: Option<f64>,
    /// Accuracy against labels, float model then quantized model.
    pub accuracy_before: Option<f64>,
    pub accuracy_after: Option<f64>,
}

impl OutputRow {
    /// The row of output `name` from its validation metrics.
    pub fn from_metrics(name: &str, m: &Metrics) -> OutputRow {
        OutputRow {
            name: name.to_string(),
            samples: m.samples,
            sqnr_db: m.sqnr_db,
            cosine: m.cosine,
            max_abs: m.max_abs,
            top1_agreement: m.top1_agreement,
            accuracy_before: m.accuracy_ref,
            accuracy_after: m.accuracy_test,
        }
    }
}

/// Float vs quantized on one intermediate value.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    /// The value compared.
    pub value: String,
    /// The op producing it (its plan key) and that op's type.
    pub op: String,
    pub op_type: String,
    /// SQNR of the quantized model's value against the float one, in dB (`inf` if equal).
    pub sqnr_db: f64,
}

/// The precision one op runs at.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionRow {
    /// Plan key of the op (its name, or `op_type#index`).
    pub node: String,
    pub op_type: String,
    /// Activation grid (e.g. `u8 asymmetric`), or `f32` when the op stays float.
    pub activation: String,
    /// Weight grid (e.g. `i8 symmetric per-channel`), `None` for ops without weights.
    pub weight: Option<String>,
    /// Why: the kernel it maps to, the rule that kept it float, a sensitivity figure…
    pub reason: String,
}

/// Which quantized ops a runtime will fuse into integer kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct FusionSection {
    /// One line, e.g. `41 of 44 quantized ops fuse (93%)`.
    pub coverage: String,
    pub rows: Vec<FusionRow>,
}

/// One op in the fusion check.
#[derive(Clone, Debug, PartialEq)]
pub struct FusionRow {
    pub node: String,
    pub op_type: String,
    pub fused: bool,
    /// The fused kernel when `fused`, else why it does not fuse.
    pub detail: String,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Tensors whose details are open when the page loads (the worst ones).
pub const OPEN_TENSORS: usize = 3;
/// Tables longer than this sit in a scrolling box.
const SCROLL_ROWS: usize = 16;

const CSS: &str = r#"
:root { --ink:#1d2430; --muted:#5b6676; --line:#dde2e8; --bg:#f6f7f9; --accent:#0b5cad; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 60px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:20px; margin:34px 0 10px; padding-bottom:4px; border-bottom:2px solid var(--line); }
.sub { color:var(--muted); margin:0 0 18px; word-break:break-all; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:14px 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:170px; }
.card .k { color:var(--muted); font-size:13px; }
.card .v { font-size:20px; font-weight:600; }
ul.settings { margin:6px 0; padding-left:20px; color:var(--muted); }
table { border-collapse:collapse; background:#fff; width:100%; font-size:14px; }
th, td { padding:5px 9px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef1f5; font-weight:600; position:sticky; top:0; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.name { word-break:break-all; }
tr.chosen td { font-weight:700; background:#fff8dc; }
.scroll { max-height:460px; overflow:auto; border:1px solid var(--line); border-radius:6px; }
details.tensor { background:#fff; border:1px solid var(--line); border-radius:8px; margin:10px 0; }
details.tensor > summary { cursor:pointer; padding:9px 14px; font-weight:600; word-break:break-all; }
details.tensor > summary .meta { font-weight:400; color:var(--muted); }
details.tensor .body { padding:4px 14px 14px; }
details.tensor table { margin-top:6px; }
svg { max-width:100%; height:auto; display:block; }
svg.hist, svg.whist, svg.sqnr { width:100%; }
.legend { display:flex; flex-wrap:wrap; gap:16px; align-items:center; font-size:14px; margin:8px 0 12px; }
.legend span { display:inline-flex; align-items:center; gap:6px; }
.legend svg { display:inline; }
.swatch { display:inline-block; width:14px; height:14px; border-radius:3px; vertical-align:-2px; }
.bad { color:#b33c00; font-weight:600; }
.ok { color:#00795a; font-weight:600; }
p.hint { color:var(--muted); margin:4px 0 10px; }
a { color:var(--accent); text-decoration:none; }
"#;

fn kb(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 10.0 * 1024.0 * 1024.0 {
        format!("{:.1} MB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KB", b / 1024.0)
    }
}

/// An integer with thousands separators (`307200` → `307,200`).
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn db(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_infinite() && v > 0.0 => "exact".into(),
        Some(v) => format!("{} dB", sig(v, 3)),
        None => "—".into(),
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map(|x| format!("{}%", sig(x * 100.0, 4)))
        .unwrap_or_else(|| "—".into())
}

/// Sort key of a tensor: expected SQNR, lowest (worst) first; tensors without signal last.
fn tensor_order(tensors: &[TensorRow]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..tensors.len()).collect();
    let key = |t: &TensorRow| t.expected_sqnr_db().unwrap_or(f64::INFINITY);
    idx.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        key(ta)
            .total_cmp(&key(tb))
            .then(tb.clipped.total_cmp(&ta.clipped))
            .then(ta.name.cmp(&tb.name))
    });
    idx
}

fn dash_sample(method: &str) -> String {
    let (color, dash) = method_style(method);
    format!(
        "<svg width=\"34\" height=\"12\" aria-hidden=\"true\"><line x1=\"1\" y1=\"6\" x2=\"33\" y2=\"6\" stroke=\"{color}\" stroke-width=\"2.5\" stroke-dasharray=\"{dash}\"/></svg>"
    )
}

fn legend(out: &mut String) {
    out.push_str("<div class=\"legend\">");
    for m in super::tensor::CANDIDATE_METHODS {
        let _ = write!(out, "<span>{}{}</span>", dash_sample(m.name()), m.name());
    }
    let _ = write!(
        out,
        "<span><svg width=\"34\" height=\"12\" aria-hidden=\"true\"><line x1=\"1\" y1=\"6\" x2=\"33\" y2=\"6\" stroke=\"#1a1a1a\" stroke-width=\"2.5\"/></svg>chosen bounds</span>\
<span><i class=\"swatch\" style=\"background:rgba(255,210,63,0.45)\"></i>chosen range</span>\
<span><i class=\"swatch\" style=\"background:#7d8a9c\"></i>values inside</span>\
<span><i class=\"swatch\" style=\"background:#D55E00\"></i>values clipped</span>"
    );
    out.push_str("</div>");
}

fn overview(out: &mut String, r: &ReportInput) {
    let _ = write!(
        out,
        "<h1>{}</h1><p class=\"sub\">{} → {}</p>",
        esc(&r.title),
        esc(&r.model),
        esc(&r.output)
    );
    out.push_str("<div class=\"cards\">");
    let ratio = if r.size_before > 0 {
        format!(
            "{} of the float model",
            pct(r.size_after as f64 / r.size_before as f64)
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"k\">size</div><div class=\"v\">{} → {}</div><div class=\"k\">{ratio}</div></div>",
        kb(r.size_before),
        kb(r.size_after)
    );
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"k\">calibrated tensors</div><div class=\"v\">{}</div></div>",
        r.tensors.len()
    );
    if let Some(worst) = r
        .accuracy
        .iter()
        .map(|o| o.sqnr_db)
        .min_by(|a, b| a.total_cmp(b))
    {
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"k\">lowest output SQNR</div><div class=\"v\">{}</div></div>",
            db(Some(worst))
        );
    }
    for o in &r.accuracy {
        if let (Some(a), Some(b)) = (o.accuracy_before, o.accuracy_after) {
            let _ = write!(
                out,
                "<div class=\"card\"><div class=\"k\">accuracy ({})</div><div class=\"v\">{} → {}</div></div>",
                esc(&o.name),
                opt_pct(Some(a)),
                opt_pct(Some(b))
            );
        }
    }
    out.push_str("</div>");
    if !r.settings.is_empty() {
        out.push_str("<ul class=\"settings\">");
        for s in &r.settings {
            let _ = write!(out, "<li>{}</li>", esc(s));
        }
        out.push_str("</ul>");
    }
}

fn accuracy(out: &mut String, r: &ReportInput) {
    out.push_str("<h2 id=\"accuracy\">Accuracy: float vs quantized</h2>");
    if r.accuracy.is_empty() {
        out.push_str("<p class=\"hint\">Validation was skipped.</p>");
        return;
    }
    out.push_str(
        "<table><tr><th>output</th><th class=\"num\">samples</th><th class=\"num\">SQNR</th>\
<th class=\"num\">cosine</th><th class=\"num\">max-abs error</th><th class=\"num\">top-1 agreement</th>\
<th class=\"num\">accuracy before → after</th></tr>",
    );
    for o in &r.accuracy {
        let acc = match (o.accuracy_before, o.accuracy_after) {
            (Some(a), Some(b)) => format!("{} → {}", opt_pct(Some(a)), opt_pct(Some(b))),
            _ => "—".into(),
        };
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{acc}</td></tr>",
            esc(&o.name),
            o.samples,
            db(Some(o.sqnr_db)),
            sig(o.cosine, 6),
            fmt_num(o.max_abs),
            opt_pct(o.top1_agreement),
        );
    }
    out.push_str("</table>");
}

fn layers(out: &mut String, rows: &[LayerRow]) {
    if rows.is_empty() {
        return;
    }
    let mut sorted: Vec<&LayerRow> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        let k = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
        k(a.sqnr_db)
            .total_cmp(&k(b.sqnr_db))
            .then(a.value.cmp(&b.value))
    });
    out.push_str("<h2 id=\"layers\">Per-layer SQNR</h2>");
    let shown: Vec<LayerRow> = sorted
        .iter()
        .take(plot::SQNR_CHART_MAX)
        .map(|r| (*r).clone())
        .collect();
    let _ = write!(
        out,
        "<p class=\"hint\">Each value of the quantized model against the float model, worst first{}. \
Red under 20 dB, orange under 30 dB.</p>",
        if sorted.len() > shown.len() {
            format!(
                " (the {} worst of {} shown; all in the table)",
                shown.len(),
                sorted.len()
            )
        } else {
            String::new()
        }
    );
    match plot::sqnr_bars(&shown) {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(out, "<p class=\"bad\">chart failed: {}</p>", esc(&e));
        }
    }
    let _ = write!(
        out,
        "<details><summary>All {} values</summary>",
        sorted.len()
    );
    table_open(
        out,
        sorted.len(),
        &["value", "op", "op type", "SQNR"],
        &[false, false, false, true],
    );
    for r in sorted {
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td class=\"name\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            esc(&r.value),
            esc(&r.op),
            esc(&r.op_type),
            db(Some(r.sqnr_db))
        );
    }
    table_close(out, rows.len());
    out.push_str("</details>");
}

fn table_open(out: &mut String, rows: usize, heads: &[&str], num: &[bool]) {
    if rows > SCROLL_ROWS {
        out.push_str("<div class=\"scroll\">");
    }
    out.push_str("<table><tr>");
    for (h, n) in heads.iter().zip(num) {
        if *n {
            let _ = write!(out, "<th class=\"num\">{h}</th>");
        } else {
            let _ = write!(out, "<th>{h}</th>");
        }
    }
    out.push_str("</tr>");
}

fn table_close(out: &mut String, rows: usize) {
    out.push_str("</table>");
    if rows > SCROLL_ROWS {
        out.push_str("</div>");
    }
}

fn range_text(lo: f32, hi: f32) -> String {
    format!("[{}, {}]", fmt_num(lo as f64), fmt_num(hi as f64))
}

fn tensors(out: &mut String, ts: &[TensorRow]) {
    let _ = write!(
        out,
        "<h2 id=\"tensors\">Calibrated ranges ({} tensors)</h2>",
        ts.len()
    );
    if ts.is_empty() {
        out.push_str("<p class=\"hint\">No tensor was calibrated.</p>");
        return;
    }
    out.push_str(
        "<p class=\"hint\">For each quantized activation: the histogram of the calibration data \
(counts on a log scale), the range every method proposes (one lane each above the plot, \
dashed lines through it) and the range qrange chose (shaded). <b>Clipped</b> is the fraction of \
observed values outside the chosen range; <b>expected SQNR</b> compares the values' mean square \
with the expected quantization error (rounding inside, clipping outside). Sorted worst first.</p>",
    );
    legend(out);
    let order = tensor_order(ts);
    table_open(
        out,
        ts.len(),
        &[
            "#",
            "tensor",
            "grid",
            "method",
            "range",
            "scale",
            "zero point",
            "clipped",
            "expected SQNR",
        ],
        &[true, false, false, false, true, true, true, true, true],
    );
    for (rank, &i) in order.iter().enumerate() {
        let t = &ts[i];
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td class=\"name\"><a href=\"#t{i}\">{}</a></td><td>{}</td><td>{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            rank + 1,
            esc(&t.name),
            esc(&t.qtype),
            esc(&t.method),
            range_text(t.lo, t.hi),
            fmt_num(t.scale as f64),
            t.zero_point,
            pct(t.clipped),
            db(t.expected_sqnr_db()),
        );
    }
    table_close(out, ts.len());
    for (rank, &i) in order.iter().enumerate() {
        tensor_details(out, &ts[i], i, rank < OPEN_TENSORS);
    }
}

fn tensor_details(out: &mut String, t: &TensorRow, id: usize, open: bool) {
    let _ = write!(
        out,
        "<details class=\"tensor\" id=\"t{id}\"{}><summary>{} <span class=\"meta\">— {} {}, clips {}, expected SQNR {}</span></summary><div class=\"body\">",
        if open { " open" } else { "" },
        esc(&t.name),
        esc(&t.method),
        range_text(t.lo, t.hi),
        pct(t.clipped),
        db(t.expected_sqnr_db()),
    );
    match plot::tensor_histogram(t) {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(out, "<p class=\"bad\">plot failed: {}</p>", esc(&e));
        }
    }
    let o = &t.observed;
    let mut seen = format!(
        "{} values observed: min {}, max {}, mean {}, std {}; exact zeros {}",
        count(o.count),
        fmt_num(o.min as f64),
        fmt_num(o.max as f64),
        fmt_num(o.mean),
        fmt_num(o.std),
        pct(if o.finite > 0 {
            o.zeros as f64 / o.finite as f64
        } else {
            0.0
        }),
    );
    if o.nan + o.infinite > 0 {
        let _ = write!(
            seen,
            "; {} NaN, {} infinite (not plotted)",
            count(o.nan),
            count(o.infinite)
        );
    }
    let _ = write!(out, "<p class=\"hint\">{seen}. Grid {}.</p>", esc(&t.qtype));
    out.push_str(
        "<table><tr><th>method</th><th class=\"num\">range</th><th class=\"num\">scale</th>\
<th class=\"num\">zero point</th><th class=\"num\">clipped</th><th class=\"num\">expected MSE</th>\
<th class=\"num\">expected SQNR</th></tr>",
    );
    let mut chosen_listed = false;
    for c in &t.candidates {
        let is_chosen = c.method == t.method && (c.lo, c.hi) == (t.lo, t.hi);
        chosen_listed |= is_chosen;
        let (color, _) = method_style(&c.method);
        let _ = write!(
            out,
            "<tr{}><td><i class=\"swatch\" style=\"background:{color}\"></i> {}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            if is_chosen { " class=\"chosen\"" } else { "" },
            esc(&c.method),
            if is_chosen { " (chosen)" } else { "" },
            range_text(c.lo, c.hi),
            fmt_num(c.scale as f64),
            c.zero_point,
            pct(c.clipped),
            fmt_num(c.expected_mse),
            db(super::tensor::sqnr_db(o.mean_square, c.expected_mse)),
        );
    }
    if !chosen_listed {
        let _ = write!(
            out,
            "<tr class=\"chosen\"><td>{} (chosen, from the ranges given)</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&t.method),
            range_text(t.lo, t.hi),
            fmt_num(t.scale as f64),
            t.zero_point,
            pct(t.clipped),
            fmt_num(t.expected_mse),
            db(t.expected_sqnr_db()),
        );
    }
    out.push_str("</table></div></details>");
}

fn weights(out: &mut String, ws: &[WeightRow]) {
    if ws.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<h2 id=\"weights\">Weights and their grids ({} tensors)</h2>",
        ws.len()
    );
    out.push_str(
        "<p class=\"hint\">For each quantized weight: the histogram of its float values and the \
levels of the grid it is written on (blue lines), as the written model dequantizes them. A \
uniform grid shows its codes (one in N when it has many), a codebook grid (k-means or powers \
of two) its levels. A per-channel weight has one grid per channel: the levels drawn are those \
of the channel whose values span the widest range.</p>",
    );
    for (i, w) in ws.iter().enumerate() {
        let drawn = w.drawn().len();
        let levels = match w.kind {
            LevelKind::Codebook => format!("{} codebook levels", w.codes.len()),
            LevelKind::Uniform if w.step > 1 => {
                format!("{} codes, one in {} drawn ({drawn})", w.codes.len(), w.step)
            }
            LevelKind::Uniform => format!("{} codes", w.codes.len()),
        };
        let channel = if w.channels > 1 {
            format!(
                "channel {} of {} (values {})",
                w.channel,
                w.channels,
                range_text(w.channel_min, w.channel_max)
            )
        } else {
            "one grid for the tensor".to_string()
        };
        let _ = write!(
            out,
            "<details class=\"tensor weight\" id=\"w{i}\"><summary>{} <span class=\"meta\">— {}; {levels}; {channel}</span></summary><div class=\"body\">",
            esc(&w.name),
            esc(&w.grid),
        );
        match plot::weight_histogram(w) {
            Ok(svg) => out.push_str(&svg),
            Err(e) => {
                let _ = write!(out, "<p class=\"bad\">plot failed: {}</p>", esc(&e));
            }
        }
        let _ = write!(
            out,
            "<p class=\"hint\">{} values in {}; levels of {channel}: scale {}, zero point {}.</p></div></details>",
            count(w.count as u64),
            range_text(w.min, w.max),
            fmt_num(w.scale as f64),
            w.zero_point,
        );
    }
}

fn precision(out: &mut String, rows: &[PrecisionRow]) {
    if rows.is_empty() {
        return;
    }
    let float = rows.iter().filter(|r| r.activation == "f32").count();
    let _ = write!(
        out,
        "<h2 id=\"precision\">Precision per op</h2><p class=\"hint\">{} ops, {} of them left float.</p>",
        rows.len(),
        float
    );
    table_open(
        out,
        rows.len(),
        &["op", "op type", "activations", "weights", "reason"],
        &[false; 5],
    );
    for r in rows {
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.node),
            esc(&r.op_type),
            esc(&r.activation),
            r.weight.as_deref().map(esc).unwrap_or_else(|| "—".into()),
            esc(&r.reason)
        );
    }
    table_close(out, rows.len());
}

fn fusion(out: &mut String, f: &FusionSection) {
    let _ = write!(
        out,
        "<h2 id=\"fusion\">Fusion</h2><p class=\"hint\">{}</p>",
        esc(&f.coverage)
    );
    if f.rows.is_empty() {
        return;
    }
    table_open(
        out,
        f.rows.len(),
        &["op", "op type", "fused", "kernel or reason"],
        &[false; 4],
    );
    for r in &f.rows {
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.node),
            esc(&r.op_type),
            if r.fused {
                "<span class=\"ok\">yes</span>"
            } else {
                "<span class=\"bad\">no</span>"
            },
            esc(&r.detail)
        );
    }
    table_close(out, f.rows.len());
}

/// The report page.
pub fn render(r: &ReportInput) -> String {
    let mut out = String::with_capacity(64 * 1024 + r.tensors.len() * 24 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{CSS}</style></head><body><main>\n",
        esc(&r.title)
    );
    overview(&mut out, r);
    accuracy(&mut out, r);
    layers(&mut out, &r.layers);
    tensors(&mut out, &r.tensors);
    weights(&mut out, &r.weights);
    precision(&mut out, &r.precision);
    if let Some(f) = &r.fusion {
        fusion(&mut out, f);
    }
    if !r.notes.is_empty() {
        out.push_str("<h2 id=\"notes\">Notes</h2><ul>");
        for n in &r.notes {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>");
    }
    out.push_str("\n</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::{compute_range, Method, MethodOptions, QuantTarget, TensorStats};
    use crate::ir::DType;
    use crate::quant::params::QType;

    fn row(name: &str, vals: &[f32]) -> TensorRow {
        let mut s = TensorStats::new();
        s.observe(vals);
        let q = QType::new(DType::U8, false, false).unwrap();
        let o = MethodOptions::default();
        let r = compute_range(name, &s, Method::Auto, &QuantTarget::of(&q), &o).unwrap();
        TensorRow::from_stats(name, &s, (r.lo, r.hi), r.method, &q, &o).unwrap()
    }

    fn weight(name: &str) -> WeightRow {
        let vals: Vec<f32> = (0..64).map(|i| (i as f32 * 0.71).sin() * 0.5).collect();
        let q = QType::new(DType::I8, true, false).unwrap();
        let cb = vec![vec![-100, -20, 0, 30, 90], vec![-50, 0, 50]];
        WeightRow::new(
            name,
            &vals,
            &|i| i / 32,
            &super::super::weights::Written {
                qtype: &q,
                params: &[(0.004, 0), (0.002, 0)],
                codebook: Some(&cb),
                grid: "kmeans 3-bit".into(),
            },
        )
        .unwrap()
    }

    fn input() -> ReportInput {
        let smooth: Vec<f32> = (0..2000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut spiky = smooth.clone();
        spiky.extend([40.0, -35.0]);
        ReportInput {
            title: "t <&>".into(),
            model: "m\"odel.onnx".into(),
            output: "o'ut.onnx".into(),
            settings: vec!["target <ort>".into()],
            size_before: 4096,
            size_after: 1024,
            accuracy: vec![OutputRow {
                name: "y<1>".into(),
                samples: 3,
                sqnr_db: 21.5,
                cosine: 0.99,
                max_abs: 0.25,
                top1_agreement: Some(1.0),
                accuracy_before: Some(0.5),
                accuracy_after: Some(0.25),
            }],
            tensors: vec![row("smooth", &smooth), row("spiky<&>", &spiky)],
            weights: vec![weight("w<&>")],
            layers: vec![
                LayerRow {
                    value: "a".into(),
                    op: "conv_a".into(),
                    op_type: "Conv".into(),
                    sqnr_db: 35.0,
                },
                LayerRow {
                    value: "<script>b".into(),
                    op: "conv_b".into(),
                    op_type: "Conv".into(),
                    sqnr_db: 12.0,
                },
                LayerRow {
                    value: "c".into(),
                    op: "id".into(),
                    op_type: "Identity".into(),
                    sqnr_db: f64::INFINITY,
                },
            ],
            precision: vec![PrecisionRow {
                node: "n&1".into(),
                op_type: "Conv".into(),
                activation: "u8 asymmetric".into(),
                weight: Some("i8 symmetric".into()),
                reason: "quantized".into(),
            }],
            fusion: Some(FusionSection {
                coverage: "1 of 2 fuse".into(),
                rows: vec![
                    FusionRow {
                        node: "n&1".into(),
                        op_type: "Conv".into(),
                        fused: true,
                        detail: "QLinearConv".into(),
                    },
                    FusionRow {
                        node: "n2".into(),
                        op_type: "Add".into(),
                        fused: false,
                        detail: "inputs on different scales".into(),
                    },
                ],
            }),
            notes: vec!["a <note>".into()],
        }
    }

    #[test]
    fn every_section_is_drawn_and_names_are_escaped() {
        let r = input();
        let html = render(&r);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<html").count(), 1);
        for id in [
            "accuracy",
            "layers",
            "tensors",
            "precision",
            "fusion",
            "notes",
            "weights",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
        }
        // The weight's histogram with one line per level of the channel drawn.
        assert_eq!(html.matches("<svg class=\"whist\"").count(), 1);
        assert_eq!(
            html.matches("class=\"level\"").count(),
            r.weights[0].drawn().len()
        );
        assert!(html.contains("w&lt;&amp;&gt;"));
        // No raw names with markup get through.
        for raw in [
            "<script>", "t <&>", "spiky<&>", "w<&>", "y<1>", "n&1", "a <note>", "<ort>",
        ] {
            assert!(!html.contains(raw), "unescaped {raw}");
        }
        assert!(html.contains("&lt;script&gt;b"));
        assert!(html.contains("spiky&lt;&amp;&gt;"));
        assert!(!html.contains("<script"));
        assert_eq!(html.matches("<svg class=\"hist\"").count(), 2);
        assert_eq!(html.matches("<svg class=\"sqnr\"").count(), 1);
        // Per tensor: one marker per method, one of them the chosen one, and the bounds.
        assert_eq!(html.matches("class=\"marker m-").count(), 8);
        assert_eq!(html.matches("class=\"range-chosen\"").count(), 2);
        assert_eq!(html.matches(" chosen\" data-method=").count(), 2);
        assert!(html.contains("25% of the float model"));
        assert!(html.contains("50% → 25%"));
        assert_eq!(render(&r), html, "same input, same bytes");
    }

    #[test]
    fn worst_first_and_empty_sections_left_out() {
        let r = input();
        let html = render(&r);
        // The spiky tensor has the lower expected SQNR: it is listed and drawn first.
        let (a, b) = (
            r.tensors[0].expected_sqnr_db(),
            r.tensors[1].expected_sqnr_db(),
        );
        assert!(b.unwrap() < a.unwrap());
        let first = html.find("id=\"t1\"").unwrap();
        assert!(first < html.find("id=\"t0\"").unwrap());
        assert!(html[first..].starts_with("id=\"t1\" open"));
        // Layers: the worst (12 dB) before the best; infinite SQNR shown as exact.
        let table = &html[html.find("All 3 values").unwrap()..];
        assert!(table.find("&lt;script&gt;b").unwrap() < table.find(">a<").unwrap());
        assert!(table.contains("exact"));

        // One layer, and a layer whose SQNR is not a number, still draw.
        for v in [3.0, f64::NAN, f64::NEG_INFINITY] {
            let one = render(&ReportInput {
                layers: vec![LayerRow {
                    value: "v".into(),
                    op: "o".into(),
                    op_type: "Conv".into(),
                    sqnr_db: v,
                }],
                ..ReportInput::default()
            });
            assert_eq!(one.matches("<svg class=\"sqnr\"").count(), 1, "{v}");
            assert!(!one.contains("chart failed"), "{v}");
        }

        assert_eq!(
            [
                count(0),
                count(999),
                count(1000),
                count(307200),
                count(1234567)
            ],
            ["0", "999", "1,000", "307,200", "1,234,567"]
        );

        let empty = render(&ReportInput::default());
        for id in ["layers", "weights", "precision", "fusion", "notes"] {
            assert!(!empty.contains(&format!("id=\"{id}\"")), "section {id}");
        }
        assert!(empty.contains("Validation was skipped"));
        assert!(empty.contains("No tensor was calibrated"));
    }
}
