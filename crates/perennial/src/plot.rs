//! Small, dependency-free SVG plots: line and scatter series on linear axes.
//!
//! Enough for the reports Perennial writes (adapted curves, accuracy over a stream);
//! the output is a standalone `.svg` file any browser or viewer opens.

use std::fmt::Write as _;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// A polyline through the points, in order.
    Line,
    /// A dashed polyline.
    Dashed,
    /// A marker at each point.
    Points,
}

/// One named series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// How to draw it.
    pub style: Style,
}

impl Series {
    /// A series.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Series {
            name: name.into(),
            points,
            style,
        }
    }
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick positions covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// Renders a line plot to an SVG document.
pub fn line_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (720.0, 460.0);
    let (left, right, top, bottom) = (70.0, 170.0, 40.0, 55.0);
    let finite = |v: &f64| v.is_finite();
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(finite)
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(finite)
        .collect();
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = 0.04 * (hi - lo);
            (lo - pad, hi + pad)
        }
    };
    let (x0, x1) = range(&xs);
    let (y0, y1) = range(&ys);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 14.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| (sx(x), sy(y)))
            .collect();
        match s.style {
            Style::Line | Style::Dashed => {
                let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let dash = if s.style == Style::Dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                };
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
                    d.join(" ")
                );
            }
            Style::Points => {
                for (x, y) in &pts {
                    let _ = writeln!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"/>"#);
                }
            }
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + pw + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn fmt_tick(t: f64) -> String {
    let s = format!("{t:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Renders a matrix of values in `[0, 1]` as an SVG heat map: row `i` top to bottom,
/// column `j` left to right, white (0) to dark blue (1), each cell labelled with its
/// value in percent when the matrix is at most 25 x 25. Non-finite cells are grey.
pub fn heat_map(
    title: &str,
    row_label: &str,
    col_label: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f64>],
) -> String {
    let (nr, nc) = (values.len().max(1), cols.len().max(1));
    let cell = (560.0 / nc.max(nr) as f64).clamp(14.0, 60.0);
    let (left, top) = (110.0, 50.0);
    let (w, h) = (
        left + cell * nc as f64 + 30.0,
        top + cell * nr as f64 + 60.0,
    );
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{w:.0}" height="{h:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        left + cell * nc as f64 / 2.0,
        escape(title)
    );
    let labels = nr <= 25 && nc <= 25;
    for (i, row) in values.iter().enumerate() {
        let y = top + cell * i as f64;
        if let Some(name) = rows.get(i) {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                y + cell / 2.0 + 4.0,
                escape(name)
            );
        }
        for (j, &v) in row.iter().enumerate() {
            let x = left + cell * j as f64;
            let fill = if v.is_finite() {
                let t = v.clamp(0.0, 1.0);
                // White to rgb(8, 48, 107).
                let c = |hi: f64, lo: f64| (hi + (lo - hi) * t).round() as u8;
                format!(
                    "rgb({},{},{})",
                    c(255.0, 8.0),
                    c(255.0, 48.0),
                    c(255.0, 107.0)
                )
            } else {
                "rgb(200,200,200)".into()
            };
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}" stroke="white"/>"#
            );
            if labels && v.is_finite() {
                let ink = if v > 0.55 { "white" } else { "black" };
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{ink}" font-size="{:.0}">{:.0}</text>"#,
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0,
                    (cell / 3.2).clamp(7.0, 12.0),
                    v * 100.0
                );
            }
        }
    }
    let bottom = top + cell * nr as f64;
    for (j, name) in cols.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + cell * (j as f64 + 0.5),
            bottom + 16.0,
            escape(name)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + cell * nc as f64 / 2.0,
        bottom + 40.0,
        escape(col_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        top + cell * nr as f64 / 2.0,
        top + cell * nr as f64 / 2.0,
        escape(row_label)
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(-5.0, 5.0), vec![-4.0, -2.0, 0.0, 2.0, 4.0]);
        let t = ticks(0.0, 1.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!((t.last().unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn svg_has_every_series_and_escapes_text() {
        let s = line_plot(
            "a < b",
            "x",
            "y",
            &[
                Series::new("true", vec![(0.0, 0.0), (1.0, 1.0)], Style::Line),
                Series::new("pts", vec![(0.5, 0.2), (f64::NAN, 1.0)], Style::Points),
            ],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("a &lt; b"));
        assert_eq!(s.matches("<polyline").count(), 1);
        assert_eq!(s.matches("<circle").count(), 1, "the NaN point is skipped");
    }

    #[test]
    fn heat_map_has_one_cell_per_value() {
        let names: Vec<String> = (0..3).map(|i| format!("t{i}")).collect();
        let v = vec![
            vec![1.0, 0.0, f64::NAN],
            vec![0.5, 0.25, 0.0],
            vec![0.9, 0.8, 0.7],
        ];
        let svg = heat_map("R", "after", "task", &names, &names, &v);
        assert_eq!(svg.matches("<rect x=").count(), 9);
        assert!(svg.contains("rgb(8,48,107)") && svg.contains("rgb(255,255,255)"));
        assert!(svg.contains("rgb(200,200,200)"));
        assert!(svg.contains(">25<") && svg.contains(">t2<"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
