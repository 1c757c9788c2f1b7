//! `--plot FILE.svg`: one SVG with three panels per run, one colour per
//! transport:
//!
//! 1. latency percentile curves (scheduled send → delivery), the x axis in
//!    "nines" so the tail gets as much room as the median, the y axis
//!    logarithmic so 0.2 ms and 50 ms fit on one chart;
//! 2. wire bytes per delivered message, broker → subscriber and back;
//! 3. CPU per delivered message, broker and load generator.

use std::path::Path;

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;

use crate::report::compare::RunReport;

type Result<T> = std::result::Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("plotting: {e:?}")
}

/// Percentile → position on the "nines" axis: 90 % → 1, 99 % → 2, … The
/// maximum (100 %) is drawn a little past the last finite point.
pub fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        return MAX_NINES;
    }
    -(1.0 - percentile / 100.0).log10()
}

const MAX_NINES: f64 = 4.4;

fn nines_label(x: f64) -> String {
    if x >= MAX_NINES - 1e-9 {
        return "max".into();
    }
    let p = (1.0 - 10f64.powf(-x)) * 100.0;
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

pub fn write_svg(path: &Path, report: &RunReport) -> Result<()> {
    let runs = &report.transports;
    if runs.is_empty() {
        return Err("plotting: nothing to plot".into());
    }
    let first = &runs[0];
    let root = SVGBackend::new(path, (1500, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!(
                "ringcast: {} subscribers x {} topic(s), {} msg/s, {} B data, {:.0} s",
                first.subs, first.topics, first.rate, first.payload_bytes, first.duration_s
            ),
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let panels = root.split_evenly((1, 3));
    latency_panel(&panels[0], report)?;
    bars_panel(
        &panels[1],
        report,
        "wire bytes per delivered message",
        "bytes",
        [("broker -> subscriber", 0), ("subscriber -> broker", 1)],
        |r| {
            [
                Some(r.wire.down_bytes_per_delivery),
                Some(r.wire.up_bytes_per_delivery),
            ]
        },
    )?;
    bars_panel(
        &panels[2],
        report,
        "CPU per delivered message",
        "µs",
        [("broker", 2), ("load generator", 3)],
        |r| {
            [
                r.broker_cpu_us_per_delivery,
                Some(r.loadgen_cpu_us_per_delivery),
            ]
        },
    )?;
    root.present().map_err(err)
}

fn latency_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    report: &RunReport,
) -> Result<()> {
    let points: Vec<(f64, f64)> = report
        .transports
        .iter()
        .flat_map(|r| r.latency_curve.iter().map(|&(_, us)| us / 1_000.0))
        .map(|ms| (0.0, ms))
        .collect();
    let lo = points
        .iter()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .max(0.001);
    let hi = points
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(lo * 10.0);
    let x = Ticks {
        range: 0.25..MAX_NINES + 0.1,
        points: vec![std::f64::consts::LOG10_2, 1.0, 2.0, 3.0, 4.0, MAX_NINES],
    };
    let mut chart = ChartBuilder::on(area)
        .caption("latency percentiles (send -> delivery)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, (lo * 0.8..hi * 1.25).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| nines_label(*x))
        .y_desc("ms (log)")
        .y_labels(12)
        .y_label_formatter(&|v| format_value(*v))
        .draw()
        .map_err(err)?;
    for (i, r) in report.transports.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.latency_curve
                    .iter()
                    .map(|&(p, us)| (nines(p), (us / 1_000.0).max(lo))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(r.transport.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Two bars per transport; a value of `None` (the broker's CPU without
/// `--broker-pid`) draws no bar.
fn bars_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    report: &RunReport,
    caption: &str,
    unit: &str,
    series: [(&str, usize); 2],
    values: impl Fn(&crate::report::FanoutReport) -> [Option<f64>; 2],
) -> Result<()> {
    let runs = &report.transports;
    let n = runs.len();
    let top = runs
        .iter()
        .flat_map(|r| values(r).into_iter().flatten())
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let names: Vec<&str> = runs.iter().map(|r| r.transport.name()).collect();
    let x = Ticks {
        range: 0.0..n as f64,
        points: (0..n).map(|i| i as f64 + 0.5).collect(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            names.get(i).copied().unwrap_or("").to_string()
        })
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    for (k, (label, color_ix)) in series.into_iter().enumerate() {
        let color = Palette99::pick(color_ix + 4).to_rgba();
        let (a, b) = if k == 0 { (0.12, 0.48) } else { (0.52, 0.88) };
        let bars: Vec<Rectangle<(f64, f64)>> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                values(r)[k].map(|v| {
                    Rectangle::new([(i as f64 + a, 0.0), (i as f64 + b, v)], color.filled())
                })
            })
            .collect();
        let labels: Vec<Text<(f64, f64), String>> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                values(r)[k].map(|v| {
                    Text::new(
                        format_value(v),
                        (i as f64 + a, v + top * 0.01),
                        ("sans-serif", 12),
                    )
                })
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(labels).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A linear f64 axis whose ticks are exactly `points`: the percentiles
/// that matter on the latency chart, one per transport on the bar charts.
struct Ticks {
    range: Range<f64>,
    points: Vec<f64>,
}

impl Ranged for Ticks {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let f = (v - self.range.start) / span;
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.points.clone()
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;
    use crate::transport::Transport;

    #[test]
    fn the_nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(std::f64::consts::LOG10_2), "50%");
        assert_eq!(nines_label(MAX_NINES), "max");
    }

    #[test]
    fn writes_an_svg_with_every_transport_named() {
        let mut lp = sample();
        lp.transport = Transport::LongPoll;
        lp.broker_cpu_us_per_delivery = None;
        let report = RunReport {
            scenario: "compare",
            transports: vec![sample(), lp],
            failed: Vec::new(),
        };
        let dir = std::env::temp_dir().join(format!("ringcast-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        write_svg(&path, &report).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for want in [
            "ws",
            "long-poll",
            "latency percentiles",
            "99%",
            "wire bytes",
            "CPU per",
        ] {
            assert!(svg.contains(want), "missing {want}");
        }
    }
}
