//! Line charts drawn on the server as inline SVG.

use std::fmt::Write;

use crate::html::esc;

pub struct Series {
    pub name: String,
    /// (Unix seconds, value), in time order.
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Copy)]
pub enum Unit {
    PerSecond,
    Ratio,
    Seconds,
    Bytes,
    Cores,
}

const W: f64 = 560.0;
const H: f64 = 150.0;
const LEFT: f64 = 64.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;
const COLORS: &[&str] = &[
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

pub fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSecond => format!("{}/s", short(v)),
        Unit::Ratio => format!("{:.1}%", v * 100.0),
        Unit::Cores => format!("{} cores", short(v)),
        Unit::Seconds => {
            if v >= 1.0 {
                format!("{v:.2}s")
            } else if v >= 0.001 {
                format!("{:.1}ms", v * 1e3)
            } else {
                format!("{:.0}µs", v * 1e6)
            }
        }
        Unit::Bytes => {
            let mut v = v;
            for u in ["B", "KiB", "MiB", "GiB"] {
                if v < 1024.0 {
                    return format!("{v:.1}{u}");
                }
                v /= 1024.0;
            }
            format!("{v:.1}TiB")
        }
    }
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn clock(t: f64) -> String {
    let s = t.max(0.0) as i64 % 86400;
    format!("{:02}:{:02}", s / 3600, (s / 60) % 60)
}

/// An SVG chart of `series` over [start, end]; `data-points` counts the points drawn.
pub fn line_chart(title: &str, series: &[Series], start: f64, end: f64, unit: Unit) -> String {
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span = (end - start).max(1.0);
    let (pw, ph) = (W - LEFT - 8.0, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + (t - start) / span * pw;
    let y = |v: f64| TOP + ph - v / top * ph;
    let mut s = String::with_capacity(1024 + points * 14);
    let _ = write!(
        s,
        r#"<figure class="chart"><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}" data-points="{points}">"#,
        esc(title),
        esc(title)
    );
    for frac in [0.0, 0.5, 1.0] {
        let yy = TOP + ph - frac * ph;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e7eb"/><text x="{}" y="{:.1}" text-anchor="end" class="ax">{}</text>"##,
            W - 8.0,
            LEFT - 4.0,
            yy + 4.0,
            esc(&format_value(top * frac, unit))
        );
    }
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="{}" class="ax">{}</text><text x="{}" y="{}" text-anchor="end" class="ax">{} UTC</text>"#,
        H - 6.0,
        clock(start),
        W - 8.0,
        H - 6.0,
        clock(end)
    );
    if points == 0 {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" class="ax">no data yet</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        if pts.len() == 1 {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{color}"/>"#,
                x(ser.points[0].0),
                y(ser.points[0].1)
            );
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            pts.join(" "),
            esc(&ser.name)
        );
    }
    s.push_str("</svg>");
    if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
        s.push_str(r#"<div class="legend">"#);
        for (i, ser) in series.iter().enumerate() {
            let last = ser
                .points
                .last()
                .map(|p| format_value(p.1, unit))
                .unwrap_or_else(|| "–".into());
            let _ = write!(
                s,
                r#"<span><i style="background:{}"></i>{} <b>{}</b></span>"#,
                COLORS[i % COLORS.len()],
                esc(&ser.name),
                esc(&last)
            );
        }
        s.push_str("</div>");
    }
    s.push_str("</figure>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_points_inside_the_frame() {
        let s = Series {
            name: "p99 <x>".into(),
            points: vec![(100.0, 0.0), (130.0, 0.5), (160.0, 1.0)],
        };
        let svg = line_chart("latency", &[s], 100.0, 160.0, Unit::Seconds);
        assert!(svg.contains(r#"data-points="3""#), "{svg}");
        assert!(svg.contains("p99 &lt;x&gt;"), "names are escaped: {svg}");
        let pts = svg
            .split(r#" points=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let coords: Vec<(f64, f64)> = pts
            .split(' ')
            .map(|p| {
                let (a, b) = p.split_once(',').unwrap();
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        assert_eq!(coords.len(), 3);
        assert_eq!(coords[0].0, LEFT);
        assert_eq!(coords[2].0, W - 8.0);
        assert!(coords.iter().all(|c| c.1 >= TOP && c.1 <= H - BOTTOM));
        assert!(coords[2].1 < coords[0].1, "higher values are drawn higher");
    }

    #[test]
    fn empty_chart_says_so() {
        let svg = line_chart("rate", &[], 0.0, 60.0, Unit::PerSecond);
        assert!(svg.contains("no data yet") && svg.contains(r#"data-points="0""#));
    }

    #[test]
    fn units() {
        assert_eq!(format_value(0.0123, Unit::Seconds), "12.3ms");
        assert_eq!(format_value(0.05, Unit::Ratio), "5.0%");
        assert_eq!(format_value(3.0 * 1024.0 * 1024.0, Unit::Bytes), "3.0MiB");
        assert_eq!(format_value(1500.0, Unit::PerSecond), "1.5k/s");
    }
}
