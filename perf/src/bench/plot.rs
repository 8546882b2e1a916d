//! SVG charts for bench results, written by hand (no plotting dependency): line charts
//! (throughput against concurrency on a log axis, latency against percentile on a "nines"
//! axis) and grouped bar charts (one figure per peer). Fixed size, colour-blind-safe palette,
//! a marker shape per series as well as a colour, so a chart also reads in grey.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};

use super::results::format_value;

/// Chart width in pixels.
pub const WIDTH: f64 = 720.0;
/// Chart height in pixels.
pub const HEIGHT: f64 = 420.0;

// The plot area inside the chart; the legend sits in the right margin.
const LEFT: f64 = 76.0;
const RIGHT: f64 = WIDTH - 172.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = HEIGHT - 56.0;

/// Okabe & Ito's palette (distinguishable with the common colour-vision deficiencies),
/// yellow last because it is faint on white.
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
];

/// How values map onto an axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    /// Evenly spaced, ticks in 1-2-5 steps.
    #[default]
    Linear,
    /// log10; ticks at powers of ten (and 2, 5 between them when the range is short).
    /// Values at or below zero are left out.
    Log,
    /// Percentiles in percent (50, 99.9, ...) placed at -log10(1 - p/100), so each extra
    /// nine gets the same width; ticks "50%", "90%", "99%", "99.9%"... Values outside
    /// `0..100` are left out.
    Nines,
}

impl Scale {
    /// Where `v` sits on the axis, or `None` if this scale cannot show it.
    fn forward(self, v: f64) -> Option<f64> {
        let t = match self {
            Scale::Linear => v,
            Scale::Log if v > 0.0 => v.log10(),
            Scale::Nines if (0.0..100.0).contains(&v) => -(1.0 - v / 100.0).log10(),
            _ => return None,
        };
        t.is_finite().then_some(t)
    }
}

/// One line on a [`LineChart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(x, y)`; drawn in ascending x. Points a scale cannot show (NaN, ≤ 0 on a log axis)
    /// are left out.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// Lines with markers, one colour and marker shape per series.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
}

impl LineChart {
    /// Linear axes, no series yet.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> LineChart {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: Vec::new(),
        }
    }

    /// A latency distribution: x is the percentile in percent (50, 90, 99, 99.9, 99.99) on
    /// a [`Scale::Nines`] axis, y the latency in the unit `y_label` names.
    pub fn latency(title: &str, y_label: &str) -> LineChart {
        LineChart::new(title, "percentile", y_label).x_scale(Scale::Nines)
    }

    pub fn x_scale(mut self, scale: Scale) -> LineChart {
        self.x_scale = scale;
        self
    }

    pub fn y_scale(mut self, scale: Scale) -> LineChart {
        self.y_scale = scale;
        self
    }

    pub fn series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> LineChart {
        self.series.push(Series::new(name, points));
        self
    }

    pub fn to_svg(&self) -> String {
        // Every series' points in axis coordinates, sorted by x.
        let lines: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| {
                let mut p: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter_map(|&(x, y)| {
                        Some((self.x_scale.forward(x)?, self.y_scale.forward(y)?))
                    })
                    .collect();
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                p
            })
            .collect();
        let xs: Vec<f64> = lines.iter().flatten().map(|p| p.0).collect();
        let ys: Vec<f64> = lines.iter().flatten().map(|p| p.1).collect();
        let x_axis = Axis::fit(self.x_scale, &xs, false);
        // Linear y starts at zero: a bar or line that starts elsewhere overstates differences.
        let y_axis = Axis::fit(self.y_scale, &ys, true);

        let mut svg = open(&self.title);
        grid(&mut svg, &x_axis, &y_axis, &self.x_label, &self.y_label);
        for (i, line) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let px: Vec<(f64, f64)> = line
                .iter()
                .map(|&(x, y)| (x_axis.to_px(x, LEFT, RIGHT), y_axis.to_px(y, BOTTOM, TOP)))
                .collect();
            if px.len() > 1 {
                let pts: Vec<String> = px.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                    pts.join(" ")
                );
            }
            for &(x, y) in &px {
                marker(&mut svg, i, x, y, colour);
            }
        }
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        legend(&mut svg, &names, true);
        svg.push_str("</svg>\n");
        svg
    }
}

/// Grouped bars: one group per case (e.g. a message size), one bar per peer in each, the
/// same colour for a peer in every group, the value above each bar.
#[derive(Clone, Debug, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    /// `(group label, [(peer, value)])`.
    pub groups: Vec<(String, Vec<(String, f64)>)>,
}

impl BarChart {
    pub fn new(title: &str, y_label: &str) -> BarChart {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            groups: Vec::new(),
        }
    }

    pub fn group(mut self, label: impl Into<String>, bars: Vec<(String, f64)>) -> BarChart {
        self.groups.push((label.into(), bars));
        self
    }

    pub fn to_svg(&self) -> String {
        // Peers in order of first appearance decide the colours.
        let mut peers: Vec<&str> = Vec::new();
        for (_, bars) in &self.groups {
            for (peer, _) in bars {
                if !peers.contains(&peer.as_str()) {
                    peers.push(peer);
                }
            }
        }
        let values: Vec<f64> = self
            .groups
            .iter()
            .flat_map(|(_, b)| b.iter().map(|&(_, v)| v))
            .filter(|v| v.is_finite())
            .collect();
        let y_axis = Axis::fit(Scale::Linear, &values, true);
        let mut svg = open(&self.title);
        grid(&mut svg, &Axis::none(), &y_axis, "", &self.y_label);

        let groups = self.groups.len().max(1) as f64;
        let group_w = (RIGHT - LEFT) / groups;
        let zero = y_axis.to_px(0.0, BOTTOM, TOP);
        for (g, (label, bars)) in self.groups.iter().enumerate() {
            let g0 = LEFT + group_w * g as f64;
            let bar_w = (group_w * 0.8 / bars.len().max(1) as f64).min(60.0);
            let start = g0 + (group_w - bar_w * bars.len() as f64) / 2.0;
            for (b, (peer, v)) in bars.iter().enumerate() {
                let colour_at = peers.iter().position(|p| p == peer).unwrap_or(0);
                let colour = PALETTE[colour_at % PALETTE.len()];
                let x = start + bar_w * b as f64;
                if !v.is_finite() {
                    continue;
                }
                let y = y_axis.to_px(*v, BOTTOM, TOP);
                let (top, h) = if y < zero {
                    (y, zero - y)
                } else {
                    (zero, y - zero)
                };
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{h:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                    x + 1.0,
                    (bar_w - 2.0).max(1.0),
                    escape(peer),
                    format_value(*v)
                );
                let label_y = if *v >= 0.0 { top - 4.0 } else { top + h + 12.0 };
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{label_y:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    x + bar_w / 2.0,
                    escape(&format_value(*v))
                );
            }
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                g0 + group_w / 2.0,
                BOTTOM + 18.0,
                escape(label)
            );
        }
        legend(&mut svg, &peers, false);
        svg.push_str("</svg>\n");
        svg
    }
}

/// Writes `svg` to `path`, creating its directory.
pub fn write_svg(path: &Path, svg: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// `s` safe inside SVG text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if c.is_control() && !matches!(c, '\t' | '\n') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An axis in scale coordinates (log10 for `Log`, nines for `Nines`): its range and ticks.
struct Axis {
    lo: f64,
    hi: f64,
    /// `(position, label)`, positions within `lo..=hi`.
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// For a bar chart's x: no ticks, no range that matters.
    fn none() -> Axis {
        Axis {
            lo: 0.0,
            hi: 1.0,
            ticks: Vec::new(),
        }
    }

    /// An axis covering `values` (already in scale coordinates, all finite).
    fn fit(scale: Scale, values: &[f64], from_zero: bool) -> Axis {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        match scale {
            Scale::Linear => {
                let (lo, hi) = if from_zero {
                    (lo.min(0.0), hi.max(0.0))
                } else {
                    (lo, hi)
                };
                let (lo, hi) = if hi - lo > 0.0 {
                    (lo, hi)
                } else if lo == 0.0 {
                    (0.0, 1.0)
                } else {
                    (lo - lo.abs() / 2.0, hi + hi.abs() / 2.0)
                };
                let ticks = nice_ticks(lo, hi);
                let step = if ticks.len() > 1 {
                    ticks[1] - ticks[0]
                } else {
                    1.0
                };
                Axis {
                    lo: ticks[0],
                    hi: ticks[ticks.len() - 1],
                    ticks: ticks.iter().map(|&t| (t, linear_label(t, step))).collect(),
                }
            }
            Scale::Log => {
                let ticks = log_ticks(10f64.powf(lo), 10f64.powf(hi));
                let (mut a, mut b) = (ticks[0].log10(), ticks[ticks.len() - 1].log10());
                // With a tick per decade, data ending at 1024 would stretch the axis to 10k:
                // end a tenth of a decade past the data instead.
                if ticks.len() > 1 && ticks[1] / ticks[0] > 9.0 {
                    a = a.max(lo - 0.1);
                    b = b.min(hi + 0.1);
                }
                Axis {
                    lo: a,
                    hi: b,
                    ticks: ticks
                        .iter()
                        .filter(|t| (a - 1e-9..=b + 1e-9).contains(&t.log10()))
                        .map(|&t| (t.log10(), log_label(t)))
                        .collect(),
                }
            }
            Scale::Nines => {
                // 0%, 50%, 90%, 99%, ...: the ticks around the data, one either side at most.
                let marks: Vec<(f64, String)> = std::iter::once((0.0, "0%".to_string()))
                    .chain(std::iter::once(((2f64).log10(), "50%".to_string())))
                    .chain((1..=9).map(|n| (f64::from(n), nines_label(n))))
                    .collect();
                let eps = 1e-9;
                let first = marks.iter().rposition(|m| m.0 <= lo + eps).unwrap_or(0);
                let last = marks
                    .iter()
                    .position(|m| m.0 >= hi - eps)
                    .unwrap_or(marks.len() - 1)
                    .max(first + 1);
                let ticks = marks[first..=last].to_vec();
                Axis {
                    lo: ticks[0].0,
                    hi: ticks[ticks.len() - 1].0,
                    ticks,
                }
            }
        }
    }

    /// Pixel position of `v` between `a` (at `lo`) and `b` (at `hi`).
    fn to_px(&self, v: f64, a: f64, b: f64) -> f64 {
        let span = self.hi - self.lo;
        let t = if span > 0.0 {
            (v - self.lo) / span
        } else {
            0.5
        };
        a + (b - a) * t
    }
}

/// Ticks in 1-2-5 steps covering `lo..=hi` (`lo < hi`), about five of them, the first at or
/// below `lo` and the last at or above `hi`.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let exp = raw.log10().floor() as i32;
    let mag = 10f64.powi(exp);
    let m = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&m| m * mag >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0);
    let step = m * mag;
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    // k * m / 10^-exp, not k * step, so 3 * 0.1 is 0.3 and not 0.30000000000000004.
    (first..=last.max(first + 1))
        .map(|k| {
            let v = if exp < 0 {
                k as f64 * m / 10f64.powi(-exp)
            } else {
                k as f64 * m * mag
            };
            v + 0.0 // -0 becomes 0
        })
        .collect()
}

/// Ticks of a log axis covering `lo..=hi` (both > 0): powers of ten, with 2 and 5 between
/// them when the range spans fewer than three decades.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut d0 = (lo.log10() + 1e-9).floor() as i32;
    let mut d1 = (hi.log10() - 1e-9).ceil() as i32;
    if d1 <= d0 {
        d1 = d0 + 1;
    }
    let mut ticks: Vec<f64> = Vec::new();
    if d1 - d0 < 3 {
        for d in d0..=d1 {
            for m in [1.0, 2.0, 5.0] {
                let t = m * 10f64.powi(d);
                if d == d1 && m > 1.0 {
                    break;
                }
                ticks.push(t);
            }
        }
        // Trim the 2s and 5s outside the data (keeping one tick either side of it).
        let first = ticks
            .iter()
            .rposition(|&t| t <= lo * (1.0 + 1e-9))
            .unwrap_or(0);
        let last = ticks
            .iter()
            .position(|&t| t >= hi * (1.0 - 1e-9))
            .unwrap_or(ticks.len() - 1)
            .max(first + 1);
        ticks = ticks[first..=last].to_vec();
    } else {
        if d1 - d0 > 12 {
            d0 = d1 - 12; // a chart, not a catalogue
        }
        ticks = (d0..=d1).map(|d| 10f64.powi(d)).collect();
    }
    ticks
}

/// A linear tick label: as many decimals as the step needs, k and M for big round values.
fn linear_label(v: f64, step: f64) -> String {
    let (v, step, suffix) = if v.abs() >= 1e6 && step >= 1e5 {
        (v / 1e6, step / 1e6, "M")
    } else if v.abs() >= 1e4 && step >= 1e3 {
        (v / 1e3, step / 1e3, "k")
    } else {
        (v, step, "")
    };
    let decimals = (-(step.log10().floor())).max(0.0) as usize;
    format!("{v:.decimals$}{suffix}")
}

fn log_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        // 0.1, 0.02, 0.005: trim the float noise of powers of ten below one.
        let decimals = (-(v.log10().floor())).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// "90%", "99%", "99.9%", ... for n nines.
fn nines_label(n: i32) -> String {
    match n {
        ..=1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat(n as usize - 2)),
    }
}

/// The document, background and title.
fn open(title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        escape(title)
    );
    s
}

/// Grid lines, tick labels, the axes and their labels.
fn grid(svg: &mut String, x: &Axis, y: &Axis, x_label: &str, y_label: &str) {
    for (t, label) in &y.ticks {
        let py = y.to_px(*t, BOTTOM, TOP);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py + 4.0,
            escape(label)
        );
    }
    for (t, label) in &x.ticks {
        let px = x.to_px(*t, LEFT, RIGHT);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            BOTTOM + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{BOTTOM} H{RIGHT}" fill="none" stroke="#333333"/>"##
    );
    if !x_label.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (LEFT + RIGHT) / 2.0,
            HEIGHT - 14.0,
            escape(x_label)
        );
    }
    let (cx, cy) = (18.0, (TOP + BOTTOM) / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{cx}" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 {cx} {cy:.1})">{}</text>"#,
        escape(y_label)
    );
}

/// Series `i`'s marker: circle, square, triangle, diamond, then again.
fn marker(svg: &mut String, i: usize, x: f64, y: f64, colour: &str) {
    let _ = match i % 4 {
        0 => writeln!(
            svg,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{colour}"/>"#
        ),
        1 => writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{colour}"/>"#,
            x - 4.0,
            y - 4.0
        ),
        2 => writeln!(
            svg,
            r#"<path d="M{x:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z" fill="{colour}"/>"#,
            y - 5.0,
            x + 5.0,
            y + 4.0,
            x - 5.0,
            y + 4.0
        ),
        _ => writeln!(
            svg,
            r#"<path d="M{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} Z" fill="{colour}"/>"#,
            y - 5.0,
            x + 5.0,
            y + 5.0,
            x - 5.0
        ),
    };
}

/// The legend in the right margin: a line with the series' marker, or a colour swatch.
fn legend(svg: &mut String, names: &[&str], lines: bool) {
    let x = RIGHT + 16.0;
    for (i, name) in names.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let y = TOP + 8.0 + 20.0 * i as f64;
        if lines {
            let _ = writeln!(
                svg,
                r#"<line x1="{x}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"/>"#,
                x + 22.0
            );
            marker(svg, i, x + 11.0, y, colour);
        } else {
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{:.1}" width="14" height="10" fill="{colour}"/>"#,
                y - 5.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 28.0,
            y + 4.0,
            escape(name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny XML well-formedness check: every tag closed in order, attributes quoted, no
    /// bare `<` or `&` in text. Returns the element names in document order.
    fn check_well_formed(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open]);
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else {
                let self_closing = tag.ends_with('/');
                let body = tag.trim_end_matches('/');
                let name = body.split_whitespace().next().expect("empty tag");
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
                // Attributes: name="value" pairs, values without quotes or `<` inside.
                let mut attrs = body[name.len()..].trim();
                while !attrs.is_empty() {
                    let eq = attrs.find("=\"").expect("unquoted attribute");
                    let end = attrs[eq + 2..].find('"').expect("unterminated attribute");
                    check_text(&attrs[eq + 2..eq + 2 + end]);
                    attrs = attrs[eq + 2 + end + 1..].trim_start();
                }
                seen.push(name.to_string());
                if !self_closing {
                    stack.push(name.to_string());
                }
            }
            rest = &rest[close + 1..];
        }
        assert!(rest.trim().is_empty());
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert_eq!(seen.first().map(String::as_str), Some("svg"));
        seen
    }

    fn check_text(text: &str) {
        assert!(!text.contains('>') && !text.contains('<'), "{text}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                "bare & in {text:?}"
            );
        }
    }

    fn tick_labels(svg: &str, y_of_x_axis: f64) -> Vec<String> {
        // x tick labels are the text elements just under the plot area.
        let marker = format!(r#"y="{:.1}" text-anchor="middle">"#, y_of_x_axis);
        svg.match_indices(&marker)
            .map(|(i, _)| {
                let s = &svg[i + marker.len()..];
                s[..s.find('<').unwrap()].to_string()
            })
            .collect()
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(
            nice_ticks(0.0, 937.0),
            [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.0, 0.3), [0.0, 0.1, 0.2, 0.3]);
        assert_eq!(nice_ticks(-7.0, 12.0), [-10.0, -5.0, 0.0, 5.0, 10.0, 15.0]);
        assert_eq!(nice_ticks(120.0, 180.0), [120.0, 140.0, 160.0, 180.0]);
        assert_eq!(log_ticks(1.0, 1000.0), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(log_ticks(1.0, 512.0), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(log_ticks(3.0, 40.0), [2.0, 5.0, 10.0, 20.0, 50.0]);
        assert_eq!(linear_label(0.4, 0.2), "0.4");
        assert_eq!(linear_label(250_000.0, 50_000.0), "250k");
        assert_eq!(linear_label(1_500_000.0, 500_000.0), "1.5M");
        assert_eq!(log_label(0.01), "0.01");
        assert_eq!(log_label(100_000.0), "100k");
        assert_eq!(nines_label(1), "90%");
        assert_eq!(nines_label(4), "99.99%");
    }

    #[test]
    fn a_line_chart_is_well_formed_and_names_every_series() {
        let chart = LineChart::new("Throughput <TLS & ws>", "concurrent clients", "msg/s")
            .x_scale(Scale::Log)
            .series(
                "xdp-proxy",
                vec![(1.0, 900.0), (10.0, 8000.0), (1000.0, 52_000.0)],
            )
            .series(
                "haproxy \"2.8\"",
                vec![(1.0, 800.0), (10.0, 7000.0), (1000.0, 40_000.0)],
            );
        let svg = chart.to_svg();
        let elements = check_well_formed(&svg);
        assert_eq!(elements.iter().filter(|e| *e == "polyline").count(), 2);
        assert!(svg.contains("Throughput &lt;TLS &amp; ws&gt;"));
        assert!(svg.contains("haproxy &quot;2.8&quot;"));
        assert!(svg.contains(">xdp-proxy<"));
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]));
        assert_eq!(tick_labels(&svg, BOTTOM + 16.0), ["1", "10", "100", "1000"]);
        // y from zero to a round number above 52k, in 20k steps.
        for label in ["0", "20k", "40k", "60k"] {
            assert!(
                svg.contains(&format!(r#"text-anchor="end">{label}<"#)),
                "{label}"
            );
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn the_nines_axis_gives_every_nine_the_same_width() {
        let chart = LineChart::latency("Latency", "µs").series(
            "xdp-proxy",
            vec![
                (50.0, 80.0),
                (90.0, 95.0),
                (99.0, 130.0),
                (99.9, 400.0),
                (99.99, 2100.0),
            ],
        );
        let svg = chart.to_svg();
        check_well_formed(&svg);
        assert_eq!(
            tick_labels(&svg, BOTTOM + 16.0),
            ["50%", "90%", "99%", "99.9%", "99.99%"]
        );
        // The markers for 90, 99 and 99.9 are evenly spaced.
        let xs: Vec<f64> = svg
            .match_indices("<circle cx=\"")
            .map(|(i, _)| {
                let s = &svg[i + 12..];
                s[..s.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        assert_eq!(xs.len(), 5 + 1); // five points and the legend's marker
        assert!(((xs[2] - xs[1]) - (xs[3] - xs[2])).abs() < 0.2, "{xs:?}");
        assert_eq!(xs[0], LEFT);
        assert_eq!(xs[4], RIGHT);
    }

    #[test]
    fn degenerate_data_draws_without_nan() {
        let charts = [
            LineChart::new("empty", "x", "y"),
            LineChart::new("empty series", "x", "y").series("nothing", vec![]),
            LineChart::new("one point", "x", "y").series("one", vec![(3.0, 7.0)]),
            LineChart::new("flat", "x", "y").series("flat", vec![(1.0, 0.0), (2.0, 0.0)]),
            LineChart::new("log one point", "x", "y")
                .x_scale(Scale::Log)
                .y_scale(Scale::Log)
                .series("one", vec![(100.0, 100.0)]),
            LineChart::new("unplottable", "x", "y")
                .x_scale(Scale::Log)
                .series(
                    "bad",
                    vec![
                        (0.0, 1.0),
                        (-1.0, 2.0),
                        (f64::NAN, 3.0),
                        (5.0, f64::INFINITY),
                    ],
                ),
            LineChart::latency("p100", "ms").series("edge", vec![(100.0, 1.0), (0.0, 1.0)]),
        ];
        for chart in &charts {
            let svg = chart.to_svg();
            check_well_formed(&svg);
            assert!(
                !svg.contains("NaN") && !svg.contains("inf"),
                "{}: {svg}",
                chart.title
            );
        }
    }

    #[test]
    fn a_bar_chart_keeps_a_colour_per_peer() {
        let chart = BarChart::new("Idle memory per connection", "KiB")
            .group(
                "1 KiB",
                vec![("xdp-proxy".into(), 11.3), ("haproxy".into(), 15.1)],
            )
            .group(
                "<64 KiB>",
                vec![("haproxy".into(), 18.0), ("xdp-proxy".into(), 12.0)],
            )
            .group("empty", vec![])
            .group("nan", vec![("nginx".into(), f64::NAN)]);
        let svg = chart.to_svg();
        let elements = check_well_formed(&svg);
        assert!(svg.contains("&lt;64 KiB&gt;"));
        assert!(svg.contains(">11.3<") && svg.contains(">18.0<"));
        assert!(!svg.contains("NaN"));
        // Bars: 4 drawn plus 3 legend swatches plus the background.
        assert_eq!(elements.iter().filter(|e| *e == "rect").count(), 4 + 3 + 1);
        let bar = |peer: &str, v: &str| {
            let t = format!("<title>{peer}: {v}</title>");
            let at = svg.find(&t).unwrap();
            let start = svg[..at].rfind("fill=\"").unwrap() + 6;
            svg[start..start + 7].to_string()
        };
        assert_eq!(bar("xdp-proxy", "11.3"), bar("xdp-proxy", "12.0"));
        assert_eq!(bar("haproxy", "15.1"), bar("haproxy", "18.0"));
        assert_ne!(bar("xdp-proxy", "11.3"), bar("haproxy", "15.1"));
        assert!(BarChart::new("none", "").to_svg().starts_with("<svg"));
    }

    #[test]
    fn write_svg_creates_the_directory() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        let path = dir.join("sub/chart.svg");
        write_svg(&path, "<svg/>").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<svg/>");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
