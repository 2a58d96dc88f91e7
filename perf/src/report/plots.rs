//! The report's plots, drawn with plotters into SVG strings.

use plotters::prelude::*;
use plotters::style::full_palette::{GREY_500, ORANGE_700, PURPLE_500};

use crate::plan::Plan;
use crate::workload::Level;

/// Picks one percentile out of a `Pct`.
type PctField = fn(&crate::measured::Pct) -> f64;

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

const W: u32 = 900;
const H: u32 = 480;

fn level_color(l: Level) -> RGBColor {
    match l {
        Level::Local => RGBColor(0x1f, 0x77, 0xb4),
        Level::RemoteWrite => RGBColor(0x2c, 0xa0, 0x2c),
        Level::RemoteFlush => RGBColor(0xd6, 0x27, 0x28),
        Level::RemoteApply => RGBColor(0x94, 0x67, 0xbd),
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_log(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// A log-scale range around the positive finite `vals` (margins `lo`,
/// `hi` as factors); a fixed one when there are none, so that an empty plot
/// still draws (plotters cannot lay out an infinite or inverted range).
fn log_range(vals: impl IntoIterator<Item = f64>, lo: f64, hi: f64) -> (f64, f64) {
    let v: Vec<f64> = vals
        .into_iter()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    if v.is_empty() {
        return (0.1, 10.0);
    }
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min) * lo;
    let max = v.iter().cloned().fold(0.0, f64::max) * hi;
    if max <= min * 1.01 {
        (min * 0.5, min * 2.0)
    } else {
        (min, max)
    }
}

fn finish(svg: String) -> String {
    // plotters writes an XML declaration-free <svg>; nothing to strip.
    svg
}

/// Latency percentiles vs commit rate per level at the workload's RTT.
pub fn latency_vs_rate(plan: &Plan) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = plan
            .latency
            .iter()
            .map(|l| l.capacity_ops_per_s)
            .fold(plan.rates.peak_ops_per_s * 1.1, f64::max);
        let all: Vec<f64> = plan
            .latency
            .iter()
            .flat_map(|l| l.curve.iter().flat_map(|(_, p)| [p.p50_us, p.p99_us]))
            .collect();
        // Head room above the curves for the legend.
        let (y_min, y_max) = log_range(all.iter().map(|v| v / 1e3), 0.7, 6.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Commit latency vs commit rate, mirror {} ms away (model)",
                    plan.workload.rtt_ms
                ),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("commit rate (commits/s, open loop)")
            .y_desc("commit latency (ms, log scale)")
            .x_label_formatter(&|v| fmt_rate(*v))
            .y_label_formatter(&|v| fmt_log(*v))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for l in &plan.latency {
            let c = level_color(l.level);
            let pts50: Vec<(f64, f64)> =
                l.curve.iter().map(|(x, p)| (*x, p.p50_us / 1e3)).collect();
            let pts99: Vec<(f64, f64)> =
                l.curve.iter().map(|(x, p)| (*x, p.p99_us / 1e3)).collect();
            chart
                .draw_series(LineSeries::new(pts50, c.stroke_width(3)))?
                .label(format!("{} p50", l.level.name()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
                });
            chart
                .draw_series(DashedLineSeries::new(pts99, 6, 4, c.stroke_width(2)))?
                .label(format!("{} p99", l.level.name()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(2))
                });
        }
        let peak = plan.rates.peak_ops_per_s;
        chart
            .draw_series(LineSeries::new(
                vec![(peak, y_min), (peak, y_max)],
                BLACK.stroke_width(1),
            ))?
            .label(format!("workload peak: {} commits/s", fmt_rate(peak)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(1)));
        let target = plan.workload.p99_target_ms;
        if target > y_min && target < y_max {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, target), (x_max, target)],
                    3,
                    3,
                    GREY_500.stroke_width(1),
                ))?
                .label(format!("p99 target {target} ms"))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], GREY_500.stroke_width(1))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    Ok(finish(svg))
}

/// The model at the measured RTT against the measured open-loop sweeps.
pub fn sweep_check(plan: &Plan) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let pts = &plan.sweep_check;
        let x_max = pts.iter().map(|p| p.offered_per_s).fold(1.0, f64::max) * 1.05;
        let ys: Vec<f64> = pts
            .iter()
            .flat_map(|p| {
                let mut v = vec![p.measured.p50_us, p.measured.p99_us];
                if let Some(q) = p.predicted {
                    v.extend([q.p50_us, q.p99_us]);
                }
                v
            })
            .collect();
        let (y_min, y_max) = log_range(ys.iter().map(|v| v / 1e3), 0.7, 3.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Model vs measured open-loop sweep (engine + mirror, loopback)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("offered commit rate (commits/s)")
            .y_desc("commit latency (ms, log scale)")
            .x_label_formatter(&|v| fmt_rate(*v))
            .y_label_formatter(&|v| fmt_log(*v))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        let series: [(&str, RGBColor, PctField); 2] = [
            ("p50", RGBColor(0x1f, 0x77, 0xb4), |p| p.p50_us),
            ("p99", RGBColor(0xd6, 0x27, 0x28), |p| p.p99_us),
        ];
        for (name, c, f) in series {
            chart
                .draw_series(
                    pts.iter().map(|p| {
                        Circle::new((p.offered_per_s, f(&p.measured) / 1e3), 5, c.filled())
                    }),
                )?
                .label(format!("measured {name}"))
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
            let model: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|p| p.predicted.map(|q| (p.offered_per_s, f(&q) / 1e3)))
                .collect();
            chart
                .draw_series(LineSeries::new(model, c.stroke_width(2)))?
                .label(format!("model {name}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    Ok(finish(svg))
}

/// Send queue and catch-up time vs outage length, with and without zstd.
pub fn outages(plan: &Plan) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(W / 2);
        let o = &plan.outages;
        let (x_min, x_max) = log_range(o.iter().map(|r| r.minutes), 0.8, 1.25);
        let q_vals: Vec<f64> = o
            .iter()
            .flat_map(|r| [r.send_queue_bytes_zstd, r.send_queue_bytes_plain])
            .collect();
        let (q_min, q_max) = log_range(q_vals.iter().map(|v| v / 1e9), 0.6, 2.5);
        let green = RGBColor(0x2c, 0xa0, 0x2c);
        let mut chart = ChartBuilder::on(&left)
            .caption("Send queue after an outage", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((x_min..x_max).log_scale(), (q_min..q_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("mirror outage (minutes, log scale)")
            .y_desc("send queue (GB, log scale)")
            .x_label_formatter(&|v| fmt_log(*v))
            .y_label_formatter(&|v| fmt_log(*v))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        let series = [
            (
                "with zstd",
                green,
                o.iter()
                    .map(|r| (r.minutes, r.send_queue_bytes_zstd / 1e9))
                    .collect::<Vec<_>>(),
            ),
            (
                "without compression",
                ORANGE_700,
                o.iter()
                    .map(|r| (r.minutes, r.send_queue_bytes_plain / 1e9))
                    .collect(),
            ),
        ];
        for (name, c, pts) in series {
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        if let Some(b) = plan.workload.retention_max_bytes {
            let b = b as f64 / 1e9;
            if b > q_min && b < q_max {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x_min, b), (x_max, b)],
                        6,
                        4,
                        RED.stroke_width(2),
                    ))?
                    .label("retention bound (beyond: reseed)")
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], RED.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;

        let t_vals: Vec<f64> = o
            .iter()
            .flat_map(|r| [r.catch_up_s, r.catch_up_s_plain])
            .flatten()
            .collect();
        let (t_min, t_max) = log_range(t_vals.iter().cloned(), 0.6, 2.5);
        let mut chart = ChartBuilder::on(&right)
            .caption(
                format!(
                    "Catch-up time (at {:.0} MB/s)",
                    plan.catch_up_mb_per_s.unwrap_or(f64::NAN)
                ),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((x_min..x_max).log_scale(), (t_min..t_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("mirror outage (minutes, log scale)")
            .y_desc("time to catch up (s, log scale)")
            .x_label_formatter(&|v| fmt_log(*v))
            .y_label_formatter(&|v| fmt_log(*v))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        let series = [
            (
                "with zstd",
                green,
                o.iter()
                    .filter_map(|r| r.catch_up_s.map(|t| (r.minutes, t)))
                    .collect::<Vec<_>>(),
            ),
            (
                "without compression",
                ORANGE_700,
                o.iter()
                    .filter_map(|r| r.catch_up_s_plain.map(|t| (r.minutes, t)))
                    .collect(),
            ),
        ];
        for (name, c, pts) in series {
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
        root.present()?;
    }
    Ok(finish(svg))
}

/// Log kept on the principal over time, through the longest outage.
pub fn retention(plan: &Plan) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let r = &plan.retention;
        let pts = &r.timeline.points;
        let t_max = pts.last().map_or(1.0, |p| p.t_s) / 60.0;
        let mut y_max = pts
            .iter()
            .map(|p| p.retained_bytes.max(p.mirror_behind_bytes))
            .fold(0.0, f64::max)
            / 1e9;
        if let Some(b) = plan.workload.retention_max_bytes {
            y_max = y_max.max(b as f64 / 1e9);
        }
        let y_max = y_max.max(1e-6) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Log kept on the principal through a {} min mirror outage",
                    r.timeline_outage_minutes
                ),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (minutes)")
            .y_desc("log (GB)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        let blue = RGBColor(0x1f, 0x77, 0xb4);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t_s / 60.0, p.retained_bytes / 1e9)),
                blue.stroke_width(3),
            ))?
            .label("log on the principal's disk")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], blue.stroke_width(3))
            });
        chart
            .draw_series(LineSeries::new(
                pts.iter()
                    .map(|p| (p.t_s / 60.0, p.mirror_behind_bytes / 1e9)),
                ORANGE_700.stroke_width(2),
            ))?
            .label("mirror behind (send queue)")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], ORANGE_700.stroke_width(2))
            });
        if let Some(b) = plan.workload.retention_max_bytes {
            let b = b as f64 / 1e9;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, b), (t_max, b)],
                    6,
                    4,
                    RED.stroke_width(2),
                ))?
                .label("--retention-max-bytes")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RED.stroke_width(2)));
        }
        let start = r.timeline_outage_start_s / 60.0;
        let end = start + r.timeline_outage_minutes;
        chart
            .draw_series(
                [start, end].map(|t| {
                    PathElement::new(vec![(t, 0.0), (t, y_max)], GREY_500.stroke_width(1))
                }),
            )?
            .label("outage begins / ends")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x + 12, y - 6), (x + 12, y + 6)],
                    GREY_500.stroke_width(1),
                )
            });
        if let Some(t) = r.timeline.reseed_forced_at_s {
            let t = t / 60.0;
            chart
                .draw_series([Cross::new((t, 0.0), 9, PURPLE_500.stroke_width(3))])?
                .label("log the mirror needs deleted: reseed")
                .legend(|(x, y)| Cross::new((x + 10, y), 6, PURPLE_500.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    Ok(finish(svg))
}

/// Link bandwidth needed, average and peak, with and without zstd.
pub fn bandwidth(plan: &Plan) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let b = &plan.bandwidth;
        let bars = [
            (
                "average, zstd",
                b.log_average_mb_per_s_zstd,
                RGBColor(0x2c, 0xa0, 0x2c),
            ),
            (
                "average, no compression",
                b.log_average_mb_per_s_plain,
                ORANGE_700,
            ),
            (
                "peak, zstd",
                b.log_peak_mb_per_s_zstd,
                RGBColor(0x2c, 0xa0, 0x2c),
            ),
            (
                "peak, no compression",
                b.log_peak_mb_per_s_plain,
                ORANGE_700,
            ),
        ];
        let mut y_max = bars.iter().map(|x| x.1).fold(0.0, f64::max);
        if let Some(l) = plan.workload.link_mb_per_s {
            y_max = y_max.max(l);
        }
        let y_max = y_max * 1.3;
        let mut chart = ChartBuilder::on(&root)
            .caption("Log bandwidth to the mirror", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..4.0, 0f64..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("log frames shipped: average and peak rate, with and without zstd")
            .y_desc("bandwidth (MB/s, 1 MB = 10^6 B)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for (i, (name, v, c)) in bars.iter().enumerate() {
            let x = i as f64;
            chart.draw_series([Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *v)],
                c.filled(),
            )])?;
            chart.draw_series([
                Text::new(
                    name.to_string(),
                    (x + 0.17, *v + y_max * 0.085),
                    ("sans-serif", 15),
                ),
                Text::new(
                    format!("{v:.2} MB/s"),
                    (x + 0.17, *v + y_max * 0.045),
                    ("sans-serif", 15),
                ),
            ])?;
        }
        if let Some(l) = plan.workload.link_mb_per_s {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, l), (4.0, l)],
                    6,
                    4,
                    RED.stroke_width(2),
                ))?
                .label(format!("link {l} MB/s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RED.stroke_width(2)));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()?;
        }
        root.present()?;
    }
    Ok(finish(svg))
}

/// Validation: predicted vs measured p50 (and ops/s), log-log, with y = x.
pub fn validation(plan: &Plan) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let rows = &plan.validation;
        let vals: Vec<f64> = rows
            .iter()
            .flat_map(|r| {
                [
                    r.predicted.p50_us,
                    r.measured.p50_us,
                    r.predicted.p99_us,
                    r.measured.p99_us,
                ]
            })
            .map(|v| v / 1e3)
            .collect();
        let (lo, hi) = log_range(vals.iter().cloned(), 0.7, 1.4);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Validation: predicted vs measured commit latency",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d((lo..hi).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("measured (ms, log scale)")
            .y_desc("predicted from the baseline (ms, log scale)")
            .x_label_formatter(&|v| fmt_log(*v))
            .y_label_formatter(&|v| fmt_log(*v))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                vec![(lo, lo), (hi, hi)],
                GREY_500.stroke_width(1),
            ))?
            .label("prediction = measurement")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], GREY_500.stroke_width(1)));
        for l in Level::ALL {
            let c = level_color(l);
            let of: Vec<_> = rows.iter().filter(|r| r.level == l).collect();
            if of.is_empty() {
                continue;
            }
            chart
                .draw_series(of.iter().map(|r| {
                    Circle::new(
                        (r.measured.p50_us / 1e3, r.predicted.p50_us / 1e3),
                        5,
                        c.filled(),
                    )
                }))?
                .label(format!("{} p50", l.name()))
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
            chart
                .draw_series(of.iter().map(|r| {
                    TriangleMarker::new(
                        (r.measured.p99_us / 1e3, r.predicted.p99_us / 1e3),
                        6,
                        c.stroke_width(2),
                    )
                }))?
                .label(format!("{} p99", l.name()))
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    Ok(finish(svg))
}

#[cfg(test)]
mod tests {
    use super::log_range;

    #[test]
    fn log_ranges_are_finite_and_increasing_even_without_data() {
        assert_eq!(log_range([], 0.5, 2.0), (0.1, 10.0));
        assert_eq!(log_range([f64::NAN, 0.0, -1.0], 0.5, 2.0), (0.1, 10.0));
        assert_eq!(log_range([4.0], 1.0, 1.0), (2.0, 8.0));
        assert_eq!(log_range([1.0, 10.0], 0.5, 2.0), (0.5, 20.0));
    }
}
