//! The report's charts as inline SVG strings: a tensor's histogram with the range every
//! method proposes, a weight's histogram with its grid's levels, and the per-layer SQNR
//! bars. plotters draws axes, labels and data;
//! range markers are added as plain SVG elements with classes (`marker`, `m-<method>`,
//! `chosen`) and hover titles, so the page and tests can find them.
//!
//! Output is deterministic: integer pixel coordinates, and every number printed through
//! [`fmt_num`].

use super::html::{esc, LayerRow};
use super::tensor::TensorRow;
use super::weights::{LevelKind, WeightRow};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt::Write as _;

/// A method's color (Okabe–Ito palette, distinguishable with common color blindness) and
/// dash pattern for its markers.
pub fn method_style(method: &str) -> (&'static str, &'static str) {
    match method {
        "minmax" => ("#0072B2", "none"),
        "percentile" => ("#E69F00", "7 3"),
        "entropy" => ("#009E73", "2 2"),
        "mse" => ("#CC79A7", "9 3 2 3"),
        _ => ("#555555", "4 4"),
    }
}

const FONT: &str = "sans-serif";

/// plotters writes `font-size = size / 1.24` into SVG: the size that gives `px` pixels.
fn font_px(px: f64) -> f64 {
    px * 1.24
}
const INSIDE: RGBColor = RGBColor(0x7d, 0x8a, 0x9c);
const OUTSIDE: RGBColor = RGBColor(0xD5, 0x5E, 0x00);
const BAND: RGBAColor = RGBAColor(0xFF, 0xD2, 0x3F, 0.22);
const GRID: RGBColor = RGBColor(0xe4, 0xe7, 0xeb);
const CHOSEN: &str = "#1a1a1a";

/// A number in at most 4 significant digits, without trailing zeros (`0.0125`, `-3.5`,
/// `1.25e-5`, `3.4e38`); `inf`/`-inf`/`nan` as such. Used for every number in the report.
pub fn fmt_num(v: f64) -> String {
    sig(v, 4)
}

/// `v` with `digits` significant digits (see [`fmt_num`]).
pub fn sig(v: f64, digits: usize) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = digits.max(1);
    let e = v.abs().log10().floor() as i32;
    if (-3..6).contains(&e) {
        let decimals = (digits as i32 - 1 - e).max(0) as usize;
        let s = format!("{v:.decimals$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s == "-0" {
            "0".into()
        } else {
            s
        }
    } else {
        let s = format!("{:.*e}", digits - 1, v);
        // `1.2500e-5` → `1.25e-5`
        match s.split_once('e') {
            Some((m, x)) if m.contains('.') => {
                format!("{}e{x}", m.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        }
    }
}

fn fmt_count(v: f64) -> String {
    if v >= 1e4 {
        format!("1e{}", v.log10().round() as i32)
    } else if v >= 1.0 {
        format!("{}", v.round() as u64)
    } else {
        sig(v, 2)
    }
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Makes plotters' document embeddable: no namespace URL (HTML supplies it), a class, an
/// accessible label, and `extra` elements appended before the end.
fn finish_svg(svg: &str, class: &str, label: &str, extra: &str) -> String {
    let svg = svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1);
    let svg = svg.replacen(
        "<svg ",
        &format!(
            "<svg class=\"{class}\" role=\"img\" aria-label=\"{}\" ",
            esc(label)
        ),
        1,
    );
    match svg.rfind("</svg>") {
        Some(i) => format!("{}{extra}{}", &svg[..i], &svg[i..]),
        None => format!("{svg}{extra}"),
    }
}

/// Width and height of a tensor plot, in SVG pixels.
pub const HIST_SIZE: (u32, u32) = (900, 300);
const LANE_H: i32 = 14;
const LANES_TOP: i32 = 8;
/// Room left of the plot: the count labels, and the lane labels above them.
const LEFT_AREA: u32 = 124;

/// The x extent of a tensor plot: the observed values, every candidate and the chosen
/// range, and 0, with a margin.
fn x_extent(t: &TensorRow) -> (f64, f64) {
    let mut lo = (t.observed.min as f64).min(0.0).min(t.lo as f64);
    let mut hi = (t.observed.max as f64).max(0.0).max(t.hi as f64);
    for c in &t.candidates {
        lo = lo.min(c.lo as f64);
        hi = hi.max(c.hi as f64);
    }
    let span = hi - lo;
    let pad = if span > 0.0 && span.is_finite() {
        span * 0.03
    } else {
        lo.abs().max(hi.abs()).max(1.0) * 0.5
    };
    (lo - pad, hi + pad)
}

/// The axes of both histograms (a tensor's, on a log count scale, and a weight's, on a
/// linear one): grid, labels through [`fmt_num`] and `fmt_count`, and the two descriptions.
fn histogram_axes<DB, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    x_desc: &str,
    y_desc: &str,
) -> Result<(), String>
where
    DB: DrawingBackend,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_labels(9)
        .y_labels(6)
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_count(*v))
        .label_style((FONT, font_px(12.0)))
        .axis_desc_style((FONT, font_px(14.0)))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)
}

/// The histogram of one tensor with every method's range and the chosen one.
///
/// Lanes above the plot hold one row per method: its range as a bar, labelled with the
/// method's name; dashed vertical lines carry each bound down through the histogram. The
/// chosen range is shaded, bounded by solid dark lines, and bins outside it are drawn in
/// the clipping color. Counts are on a log scale.
pub fn tensor_histogram(t: &TensorRow) -> Result<String, String> {
    let (w, h) = HIST_SIZE;
    let lanes = t.candidates.len() as i32;
    let top_margin = LANES_TOP + lanes * LANE_H + 6;
    let (x0, x1) = x_extent(t);
    let hist = &t.histogram;
    let max_count = hist.counts.iter().cloned().fold(0.0f64, f64::max);
    let base = 0.5f64;
    let ytop = (max_count * 3.0).max(10.0);
    let (lo, hi) = (t.lo as f64, t.hi as f64);
    let mut svg = String::new();
    let mut extra = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(top_margin as u32)
            .margin_right(24)
            .margin_left(8)
            .margin_bottom(6)
            .x_label_area_size(44)
            .y_label_area_size(LEFT_AREA)
            .build_cartesian_2d(x0..x1, (base..ytop).log_scale())
            .map_err(err)?;
        histogram_axes(&mut chart, "value", "count (log scale)")?;
        // The chosen range, shaded.
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(lo, base), (hi, ytop)],
                BAND.filled(),
            )))
            .map_err(err)?;
        // The histogram as filled step polygons, one per run of bins inside or outside the
        // chosen range (judged at the bin centre).
        let n = hist.counts.len();
        let (edges, counts): (Vec<f64>, Vec<f64>) = if hist.hi > hist.lo {
            let bw = hist.bin_width();
            (
                (0..=n).map(|i| hist.lo + i as f64 * bw).collect(),
                hist.counts.clone(),
            )
        } else {
            // All values equal: one narrow bar.
            let half = (x1 - x0) / 400.0;
            (vec![hist.lo - half, hist.lo + half], hist.counts.clone())
        };
        let inside = |i: usize| {
            let c = (edges[i] + edges[i + 1]) / 2.0;
            c >= lo && c <= hi
        };
        let mut i = 0;
        while i < counts.len() {
            let state = inside(i);
            let mut j = i;
            let mut pts = vec![(edges[i], base)];
            while j < counts.len() && inside(j) == state {
                let c = counts[j].max(base);
                pts.push((edges[j], c));
                pts.push((edges[j + 1], c));
                j += 1;
            }
            pts.push((edges[j], base));
            let color = if state { INSIDE } else { OUTSIDE };
            chart
                .draw_series(std::iter::once(Polygon::new(pts, color.filled())))
                .map_err(err)?;
            i = j;
        }
        let (px, py) = chart.plotting_area().get_pixel_range();
        let xpix = |x: f64| chart.backend_coord(&(x, base)).0;
        let bottom = py.end;
        let plot_top = py.start;
        // Lanes and markers: one group per method.
        for (k, c) in t.candidates.iter().enumerate() {
            let (color, dash) = method_style(&c.method);
            let is_chosen = c.method == t.method && (c.lo, c.hi) == (t.lo, t.hi);
            let y = LANES_TOP + k as i32 * LANE_H + LANE_H / 2;
            let (a, b) = (xpix(c.lo as f64), xpix(c.hi as f64));
            let _ = write!(
                extra,
                "<g class=\"marker m-{m}{ch}\" data-method=\"{m}\" data-lo=\"{lo}\" data-hi=\"{hi}\">\
<title>{m}: [{lo}, {hi}], clips {clip} of the values, expected MSE {mse}</title>\
<text x=\"{tx}\" y=\"{y}\" dy=\"0.35em\" text-anchor=\"end\" font-family=\"{FONT}\" font-size=\"12\" fill=\"{color}\"{bold}>{label}</text>\
<line x1=\"{a}\" y1=\"{y}\" x2=\"{b}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"{bw}\"/>\
<line x1=\"{a}\" y1=\"{ya}\" x2=\"{a}\" y2=\"{bottom}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"{dash}\"/>\
<line x1=\"{b}\" y1=\"{ya}\" x2=\"{b}\" y2=\"{bottom}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"{dash}\"/>\
</g>",
                m = esc(&c.method),
                ch = if is_chosen { " chosen" } else { "" },
                lo = fmt_num(c.lo as f64),
                hi = fmt_num(c.hi as f64),
                clip = pct(c.clipped),
                mse = fmt_num(c.expected_mse),
                tx = px.start - 8,
                bold = if is_chosen { " font-weight=\"bold\"" } else { "" },
                label = if is_chosen {
                    format!("{} (chosen)", esc(&c.method))
                } else {
                    esc(&c.method)
                },
                bw = if is_chosen { 5 } else { 3 },
                ya = y - 4,
            );
        }
        // The chosen range's bounds, solid, on top.
        let (a, b) = (xpix(lo), xpix(hi));
        let _ = write!(
            extra,
            "<g class=\"range-chosen\" data-lo=\"{l}\" data-hi=\"{r}\"><title>chosen ({m}): [{l}, {r}]</title>\
<line x1=\"{a}\" y1=\"{plot_top}\" x2=\"{a}\" y2=\"{bottom}\" stroke=\"{CHOSEN}\" stroke-width=\"2\"/>\
<line x1=\"{b}\" y1=\"{plot_top}\" x2=\"{b}\" y2=\"{bottom}\" stroke=\"{CHOSEN}\" stroke-width=\"2\"/></g>",
            m = esc(&t.method),
            l = fmt_num(lo),
            r = fmt_num(hi),
        );
        root.present().map_err(err)?;
    }
    Ok(finish_svg(
        &svg,
        "hist",
        &format!("histogram of {} with candidate ranges", t.name),
        &extra,
    ))
}

/// Color of a weight's grid levels.
const LEVEL: &str = "#0072B2";

/// The histogram of one weight's values (linear counts) with the levels of its grid: one
/// vertical line per level drawn (see [`WeightRow::drawn`]), each an element
/// `<line class="level" data-code=".." data-value="..">` inside `<g class="levels">`, whose
/// attributes name the channel, its scale and zero point. `data-value` is the float32
/// level printed in full (shortest round-trip form), so it can be compared with the written
/// model exactly.
pub fn weight_histogram(w: &WeightRow) -> Result<String, String> {
    let (width, height) = HIST_SIZE;
    let drawn = w.drawn();
    let levels: Vec<f64> = drawn.iter().map(|&c| w.level(c) as f64).collect();
    let mut x0 = (w.min as f64).min(0.0);
    let mut x1 = (w.max as f64).max(0.0);
    for &l in &levels {
        x0 = x0.min(l);
        x1 = x1.max(l);
    }
    let pad = if x1 > x0 { (x1 - x0) * 0.03 } else { 1.0 };
    let (x0, x1) = (x0 - pad, x1 + pad);
    let hist = &w.histogram;
    let ytop = hist.counts.iter().cloned().fold(0.0f64, f64::max).max(1.0) * 1.08;
    let mut svg = String::new();
    let mut extra = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(LANES_TOP as u32 + 6)
            .margin_right(24)
            .margin_left(8)
            .margin_bottom(6)
            .x_label_area_size(44)
            .y_label_area_size(LEFT_AREA)
            .build_cartesian_2d(x0..x1, 0.0..ytop)
            .map_err(err)?;
        histogram_axes(&mut chart, "weight value", "count")?;
        let n = hist.counts.len();
        let edges: Vec<f64> = if hist.hi > hist.lo {
            let bw = hist.bin_width();
            (0..=n).map(|i| hist.lo + i as f64 * bw).collect()
        } else {
            let half = (x1 - x0) / 400.0;
            vec![hist.lo - half, hist.lo + half]
        };
        let mut pts = vec![(edges[0], 0.0)];
        for (i, &c) in hist.counts.iter().enumerate() {
            pts.push((edges[i], c));
            pts.push((edges[i + 1], c));
        }
        pts.push((edges[n], 0.0));
        chart
            .draw_series(std::iter::once(Polygon::new(pts, INSIDE.filled())))
            .map_err(err)?;
        let (_, py) = chart.plotting_area().get_pixel_range();
        let xpix = |x: f64| chart.backend_coord(&(x, 0.0)).0;
        let _ = write!(
            extra,
            "<g class=\"levels\" data-kind=\"{kind}\" data-channel=\"{c}\" data-scale=\"{scale}\" data-zero-point=\"{zp}\" data-step=\"{step}\">\
<title>{kind} levels of channel {c}: {shown} of {all} drawn, scale {s}, zero point {zp}</title>",
            kind = w.kind.name(),
            c = w.channel,
            scale = w.scale,
            zp = w.zero_point,
            step = w.step,
            shown = drawn.len(),
            all = w.codes.len(),
            s = fmt_num(w.scale as f64),
        );
        for (&code, &v) in drawn.iter().zip(&levels) {
            let x = xpix(v);
            let _ = write!(
                extra,
                "<line class=\"level\" data-code=\"{code}\" data-value=\"{val}\" x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{bottom}\" stroke=\"{LEVEL}\" stroke-width=\"{sw}\" stroke-opacity=\"0.8\"><title>code {code}: {shown}</title></line>",
                val = v as f32,
                top = py.start,
                bottom = py.end,
                sw = if w.kind == LevelKind::Codebook { 2 } else { 1 },
                shown = fmt_num(v),
            );
        }
        extra.push_str("</g>");
        root.present().map_err(err)?;
    }
    Ok(finish_svg(
        &svg,
        "whist",
        &format!("histogram of weight {} with its grid's levels", w.name),
        &extra,
    ))
}

/// A fraction as a percentage with 3 significant digits (`0.0123` → `1.23%`).
pub fn pct(f: f64) -> String {
    if f == 0.0 {
        "0%".into()
    } else {
        format!("{}%", sig(f * 100.0, 3))
    }
}

/// At most this many layers are drawn in the SQNR chart (the worst ones).
pub const SQNR_CHART_MAX: usize = 40;

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// Horizontal SQNR bars, worst (lowest) first from the top; `rows` must already be sorted
/// worst first and at most [`SQNR_CHART_MAX`] long.
pub fn sqnr_bars(rows: &[LayerRow]) -> Result<String, String> {
    let n = rows.len().max(1);
    let row_h = 20u32;
    let w = 900u32;
    let h = 70 + n as u32 * row_h;
    let labels: Vec<String> = rows.iter().map(|r| short(&r.value, 44)).collect();
    let label_w = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 44) as u32
        * 7
        + 16;
    let finite: Vec<f64> = rows
        .iter()
        .map(|r| r.sqnr_db)
        .filter(|v| v.is_finite())
        .collect();
    let xmin = finite.iter().cloned().fold(0.0f64, f64::min);
    let xmax = finite.iter().cloned().fold(10.0f64, f64::max) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .margin_right(30)
            .x_label_area_size(40)
            .y_label_area_size(label_w)
            .build_cartesian_2d(xmin..xmax, (0..n as i32 - 1).into_segmented())
            .map_err(err)?;
        let name_of = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => {
                let k = n as i32 - 1 - *i;
                labels.get(k as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .disable_y_mesh()
            .set_tick_mark_size(LabelAreaPosition::Left, 5)
            .y_labels(n)
            .y_label_formatter(&name_of)
            .x_label_formatter(&|v| fmt_num(*v))
            .label_style((FONT, font_px(12.0)))
            .axis_desc_style((FONT, font_px(14.0)))
            .x_desc("SQNR (dB), float vs quantized")
            .draw()
            .map_err(err)?;
        for (k, r) in rows.iter().enumerate() {
            let i = n as i32 - 1 - k as i32;
            let v = if r.sqnr_db.is_finite() {
                r.sqnr_db
            } else if r.sqnr_db > 0.0 {
                xmax
            } else {
                xmin
            };
            let color = sqnr_color(r.sqnr_db);
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (v, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            chart.draw_series(std::iter::once(bar)).map_err(err)?;
            let style = TextStyle::from((FONT, font_px(12.0)).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            let at = v.max(0.0) + (xmax - xmin) * 0.006;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} dB", sig(r.sqnr_db, 3)),
                    (at, SegmentValue::CenterOf(i)),
                    style,
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(finish_svg(&svg, "sqnr", "per-layer SQNR, worst first", ""))
}

/// Bar color by SQNR: under 20 dB poor, under 30 dB fair, else good.
fn sqnr_color(db: f64) -> RGBColor {
    if db < 20.0 || db.is_nan() {
        OUTSIDE
    } else if db < 30.0 {
        RGBColor(0xE6, 0x9F, 0x00)
    } else {
        RGBColor(0x00, 0x9E, 0x73)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_stable() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-0.0), "0");
        assert_eq!(fmt_num(1.0), "1");
        assert_eq!(fmt_num(0.0125), "0.0125");
        assert_eq!(fmt_num(-3.5), "-3.5");
        assert_eq!(fmt_num(123.456), "123.5");
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(1.25e-5), "1.25e-5");
        assert_eq!(fmt_num(3.4e38), "3.4e38");
        assert_eq!(fmt_num(f64::INFINITY), "inf");
        assert_eq!(pct(0.0), "0%");
        assert_eq!(pct(0.012345), "1.23%");
        assert_eq!(short("abcdef", 4), "…def");
    }
}
