//! The plots of `sieve bench`, as SVG (text as SVG `<text>` elements, so that no font files
//! are needed): perplexity and TTFT speedup against the kept fraction, one line per policy
//! (and length, when there are several), beside the unpruned model; the frontier of TTFT
//! speedup against perplexity change; and [`scatter`] for other benchmarks.

use crate::error::{Error, Result};
use plotters::prelude::*;

use crate::bench::Point;

/// Distinct colours readable on white (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a plot.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    baseline: bool,
    /// Whether the points are joined (a line) or marks only.
    joined: bool,
}

/// The axes of a plot: descriptions, and the x range (`None`: from the data).
struct Axes<'a> {
    x_desc: &'a str,
    y_desc: &'a str,
    x_range: Option<(f64, f64)>,
}

const KEEP_AXIS: Axes<'static> = Axes { x_desc: "kept fraction (--keep)", y_desc: "", x_range: Some((0.0, 1.05)) };

/// The lines of `value` against `keep`: per length, the baseline (a flat line at its value
/// across the keep axis) and one line per policy.
fn lines(points: &[Point], value: impl Fn(&Point) -> f64) -> Vec<Line> {
    let mut lengths: Vec<usize> = points.iter().map(|p| p.length).collect();
    lengths.dedup();
    let several = lengths.len() > 1;
    let suffix = |l: usize| if several { format!(" ({l} tokens)") } else { String::new() };
    let (lo, hi) = points.iter().map(|p| p.keep).fold((1.0f64, 1.0f64), |(a, b), k| (a.min(k), b.max(k)));
    let mut out = Vec::new();
    for &length in &lengths {
        let at: Vec<&Point> = points.iter().filter(|p| p.length == length).collect();
        if let Some(base) = at.iter().find(|p| p.policy == "none") {
            let v = value(base);
            if v.is_finite() {
                out.push(Line {
                    label: format!("none{}", suffix(length)),
                    points: vec![(lo, v), (hi, v)],
                    baseline: true,
                    joined: true,
                });
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for p in &at {
            if p.policy != "none" && !names.contains(&p.policy.as_str()) {
                names.push(&p.policy);
            }
        }
        for name in names {
            let mut pts: Vec<(f64, f64)> = at
                .iter()
                .filter(|p| p.policy == name)
                .map(|p| (p.keep, value(p)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            out.push(Line { label: format!("{name}{}", suffix(length)), points: pts, baseline: false, joined: true });
        }
    }
    out
}

/// The range of `values` with some room around it (from 0 when all are non-negative).
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-3);
    ((lo - pad).max(if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY }), hi + pad)
}

fn svg(title: &str, axes: &Axes<'_>, lines: &[Line]) -> Result<String> {
    let err = |e: &dyn std::fmt::Display| Error::Plot { title: title.to_string(), detail: e.to_string() };
    let (y0, y1) = span(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    let (x0, x1) = axes.x_range.unwrap_or_else(|| span(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0))));
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (820, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .light_line_style(BLACK.mix(0.04))
            .x_labels(12)
            .x_label_formatter(&|x| format!("{x:.2}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(|e| err(&e))?;
        let mut colour = 0;
        for line in lines {
            let c = if line.baseline {
                BLACK.mix(0.55)
            } else {
                colour += 1;
                PALETTE[(colour - 1) % PALETTE.len()].mix(1.0)
            };
            let width = if line.baseline { 1 } else { 2 };
            let marker = if line.baseline { 0 } else { 4 };
            let series = if line.joined {
                chart
                    .draw_series(LineSeries::new(line.points.iter().copied(), c.stroke_width(width)).point_size(marker))
            } else {
                chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 5, c.filled())))
            };
            series
                .map_err(|e| err(&e))?
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(width)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

/// Compressed-context perplexity against the kept fraction.
pub fn quality(points: &[Point]) -> Result<String> {
    let axes = Axes { y_desc: "perplexity (compressed context)", ..KEEP_AXIS };
    svg("Perplexity vs kept fraction", &axes, &lines(points, |p| p.perplexity))
}

/// The frontier: TTFT speedup against the perplexity change (%), one line per policy (and
/// length) through its kept fractions; the unpruned model is the point (0, 1). The change
/// is over every perplexity window where the run scored several, else the first.
pub fn frontier(points: &[Point]) -> Result<String> {
    let mut out: Vec<Line> = Vec::new();
    let pooled = points.iter().any(|p| p.perplexity_windows_ratio.is_finite());
    for p in points.iter().filter(|p| p.policy != "none") {
        let label = format!("{} ({} tokens)", p.policy, p.length);
        let change = if pooled { p.perplexity_windows_ratio } else { p.perplexity_ratio };
        let at = (100.0 * (change - 1.0), p.ttft_speedup);
        if !(at.0.is_finite() && at.1.is_finite()) {
            continue;
        }
        match out.iter_mut().find(|l| l.label == label) {
            Some(l) => l.points.push(at),
            None => out.push(Line { label, points: vec![at], baseline: false, joined: true }),
        }
    }
    for l in &mut out {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out.insert(0, Line { label: "none".into(), points: vec![(0.0, 1.0)], baseline: false, joined: false });
    let x_desc = if pooled { "perplexity change over all windows (%)" } else { "perplexity change (%)" };
    let axes = Axes { x_desc, y_desc: "TTFT speedup over none (x)", x_range: None };
    svg("Time to first token against perplexity", &axes, &out)
}

/// Marks only, one colour per series: `(label, points)`.
pub fn scatter(title: &str, x_desc: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<String> {
    let lines: Vec<Line> = series
        .iter()
        .map(|(label, points)| Line { label: label.clone(), points: points.clone(), baseline: false, joined: false })
        .collect();
    svg(title, &Axes { x_desc, y_desc, x_range: None }, &lines)
}

/// TTFT speedup over the unpruned model against the kept fraction.
pub fn speedup(points: &[Point]) -> Result<String> {
    svg(
        "Time-to-first-token speedup vs kept fraction",
        &Axes { y_desc: "TTFT speedup over none (x)", ..KEEP_AXIS },
        &lines(points, |p| p.ttft_speedup),
    )
}
