//! The report's plots, drawn with plotters into SVG strings.

use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::full_palette::{GREY_500, ORANGE_700, PURPLE_500};

use crate::plan::Plan;
use crate::workload::Level;

/// Picks one percentile out of a `Pct`.
type PctField = fn(&crate::measured::Pct) -> f64;

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Where a plot is drawn: the whole canvas or a part of it.
type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;

/// A chart on an `Area`, with axes `X` and `Y` (linear or log).
type Chart<'a, 'b, X, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>;

const W: u32 = 900;
const H: u32 = 480;

// The palette (matplotlib's "tab10" colours).
const TAB_BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TAB_GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const TAB_RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const TAB_PURPLE: RGBColor = RGBColor(0x94, 0x67, 0xbd);

/// Log shipped with zstd, and without compression.
const ZSTD: RGBColor = TAB_GREEN;
const PLAIN: RGBColor = ORANGE_700;

fn level_color(l: Level) -> RGBColor {
    match l {
        Level::Local => TAB_BLUE,
        Level::RemoteWrite => TAB_GREEN,
        Level::RemoteFlush => TAB_RED,
        Level::RemoteApply => TAB_PURPLE,
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

/// Draws one plot into an SVG string: `draw` gets a white W×H canvas.
fn render(draw: impl FnOnce(&Area<'_>) -> DrawResult<()>) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// The look the plots share: font sizes (px) and the room around a chart.
struct ChartStyle {
    caption: i32,
    margin: i32,
    y_label_area: i32,
    labels: i32,
    axis_desc: i32,
    legend: i32,
}

/// A plot that has the canvas to itself.
const FULL: ChartStyle = ChartStyle {
    caption: 22,
    margin: 12,
    y_label_area: 70,
    labels: 14,
    axis_desc: 16,
    legend: 13,
};

/// One of two plots side by side.
const HALF: ChartStyle = ChartStyle {
    caption: 20,
    margin: 10,
    y_label_area: 64,
    labels: 13,
    axis_desc: 15,
    legend: 12,
};

impl ChartStyle {
    /// A chart with its caption on `area`, over the ranges `x` and `y`
    /// (plain ranges, or `.log_scale()` ones).
    fn chart<'a, 'b, X: AsRangedCoord, Y: AsRangedCoord>(
        &self,
        area: &'a Area<'b>,
        caption: impl AsRef<str>,
        x: X,
        y: Y,
    ) -> DrawResult<Chart<'a, 'b, X::CoordDescType, Y::CoordDescType>> {
        Ok(ChartBuilder::on(area)
            .caption(caption, ("sans-serif", self.caption))
            .margin(self.margin)
            .x_label_area_size(48)
            .y_label_area_size(self.y_label_area)
            .build_cartesian_2d(x, y)?)
    }

    /// The grid and the axes, described by `x_desc` and `y_desc` (with their
    /// units); the caller adds label formatters where the defaults do not do,
    /// and draws.
    fn axes<'a, 'b, 'c, X, Y>(
        &self,
        chart: &'c mut Chart<'a, 'b, X, Y>,
        x_desc: &str,
        y_desc: &str,
    ) -> MeshStyle<'a, 'c, X, Y, SVGBackend<'b>>
    where
        X: Ranged + ValueFormatter<X::ValueType>,
        Y: Ranged + ValueFormatter<Y::ValueType>,
    {
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", self.labels))
            .axis_desc_style(("sans-serif", self.axis_desc));
        mesh
    }

    /// The legend of the labelled series, at `position`.
    fn legend<'a, 'b: 'a, CT: CoordTranslate>(
        &self,
        chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
        position: SeriesLabelPosition,
    ) -> DrawResult<()> {
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", self.legend))
            .draw()?;
        Ok(())
    }
}

/// The legend entry of a line drawn in `style`: a short stretch of it.
fn line_key(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style)
}

/// A limit: a dashed red line at `y` from `x0` to `x1`, labelled `label`.
fn limit_line<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    (x0, x1): (f64, f64),
    y: f64,
    label: impl Into<String>,
) -> DrawResult<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let style = RED.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(vec![(x0, y), (x1, y)], 6, 4, style))?
        .label(label)
        .legend(line_key(style));
    Ok(())
}

/// Latency percentiles vs commit rate per level at the workload's RTT.
pub fn latency_vs_rate(plan: &Plan) -> DrawResult<String> {
    render(|root| {
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
        let mut chart = FULL.chart(
            root,
            format!(
                "Commit latency vs commit rate, mirror {} ms away (model)",
                plan.workload.rtt_ms
            ),
            0f64..x_max,
            (y_min..y_max).log_scale(),
        )?;
        FULL.axes(
            &mut chart,
            "commit rate (commits/s, open loop)",
            "commit latency (ms, log scale)",
        )
        .x_label_formatter(&|v| fmt_rate(*v))
        .y_label_formatter(&|v| fmt_log(*v))
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
                .legend(line_key(c.stroke_width(3)));
            // A shorter key than the solid lines': it reads as a dash.
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
            .legend(line_key(BLACK.stroke_width(1)));
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
                .legend(line_key(GREY_500.stroke_width(1)));
        }
        FULL.legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// The model at the measured RTT against the measured open-loop sweeps.
pub fn sweep_check(plan: &Plan) -> DrawResult<String> {
    render(|root| {
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
        let mut chart = FULL.chart(
            root,
            "Model vs measured open-loop sweep (engine + mirror, loopback)",
            0f64..x_max,
            (y_min..y_max).log_scale(),
        )?;
        FULL.axes(
            &mut chart,
            "offered commit rate (commits/s)",
            "commit latency (ms, log scale)",
        )
        .x_label_formatter(&|v| fmt_rate(*v))
        .y_label_formatter(&|v| fmt_log(*v))
        .draw()?;
        let series: [(&str, RGBColor, PctField); 2] = [
            ("p50", TAB_BLUE, |p| p.p50_us),
            ("p99", TAB_RED, |p| p.p99_us),
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
                .legend(line_key(c.stroke_width(2)));
        }
        FULL.legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Send queue and catch-up time vs outage length, with and without zstd.
pub fn outages(plan: &Plan) -> DrawResult<String> {
    render(|root| {
        let (left, right) = root.split_horizontally(W / 2);
        let o = &plan.outages;
        let x = log_range(o.iter().map(|r| r.minutes), 0.8, 1.25);
        let q_vals: Vec<f64> = o
            .iter()
            .flat_map(|r| [r.send_queue_bytes_zstd, r.send_queue_bytes_plain])
            .collect();
        let (q_min, q_max) = log_range(q_vals.iter().map(|v| v / 1e9), 0.6, 2.5);
        let mut chart = outage_panel(
            &left,
            "Send queue after an outage",
            "send queue (GB, log scale)",
            x,
            (q_min, q_max),
            [
                o.iter()
                    .map(|r| (r.minutes, r.send_queue_bytes_zstd / 1e9))
                    .collect(),
                o.iter()
                    .map(|r| (r.minutes, r.send_queue_bytes_plain / 1e9))
                    .collect(),
            ],
        )?;
        if let Some(b) = plan.workload.retention_max_bytes {
            let b = b as f64 / 1e9;
            if b > q_min && b < q_max {
                limit_line(&mut chart, x, b, "retention bound (beyond: reseed)")?;
            }
        }
        HALF.legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

        let t_vals: Vec<f64> = o
            .iter()
            .flat_map(|r| [r.catch_up_s, r.catch_up_s_plain])
            .flatten()
            .collect();
        let mut chart = outage_panel(
            &right,
            format!(
                "Catch-up time (at {:.0} MB/s)",
                plan.catch_up_mb_per_s.unwrap_or(f64::NAN)
            ),
            "time to catch up (s, log scale)",
            x,
            log_range(t_vals.iter().cloned(), 0.6, 2.5),
            [
                o.iter()
                    .filter_map(|r| r.catch_up_s.map(|t| (r.minutes, t)))
                    .collect(),
                o.iter()
                    .filter_map(|r| r.catch_up_s_plain.map(|t| (r.minutes, t)))
                    .collect(),
            ],
        )?;
        HALF.legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// One half of the outage plot: a quantity against the outage length, both
/// on log scales (`x`, `y`: their ranges), with zstd and without compression
/// (`with_zstd`, `plain`: its points), as lines through dots. The caller adds
/// the legend.
fn outage_panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: impl AsRef<str>,
    y_desc: &str,
    (x_min, x_max): (f64, f64),
    (y_min, y_max): (f64, f64),
    [with_zstd, plain]: [Vec<(f64, f64)>; 2],
) -> DrawResult<Chart<'a, 'b, LogCoord<f64>, LogCoord<f64>>> {
    let mut chart = HALF.chart(
        area,
        caption,
        (x_min..x_max).log_scale(),
        (y_min..y_max).log_scale(),
    )?;
    HALF.axes(&mut chart, "mirror outage (minutes, log scale)", y_desc)
        .x_label_formatter(&|v| fmt_log(*v))
        .y_label_formatter(&|v| fmt_log(*v))
        .draw()?;
    for (name, c, pts) in [
        ("with zstd", ZSTD, with_zstd),
        ("without compression", PLAIN, plain),
    ] {
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(name)
            .legend(line_key(c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    Ok(chart)
}

/// Log kept on the principal over time, through the longest outage.
pub fn retention(plan: &Plan) -> DrawResult<String> {
    render(|root| {
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
        let mut chart = FULL.chart(
            root,
            format!(
                "Log kept on the principal through a {} min mirror outage",
                r.timeline_outage_minutes
            ),
            0f64..t_max,
            0f64..y_max,
        )?;
        FULL.axes(&mut chart, "time (minutes)", "log (GB)").draw()?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t_s / 60.0, p.retained_bytes / 1e9)),
                TAB_BLUE.stroke_width(3),
            ))?
            .label("log on the principal's disk")
            .legend(line_key(TAB_BLUE.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(
                pts.iter()
                    .map(|p| (p.t_s / 60.0, p.mirror_behind_bytes / 1e9)),
                ORANGE_700.stroke_width(2),
            ))?
            .label("mirror behind (send queue)")
            .legend(line_key(ORANGE_700.stroke_width(2)));
        if let Some(b) = plan.workload.retention_max_bytes {
            limit_line(
                &mut chart,
                (0.0, t_max),
                b as f64 / 1e9,
                "--retention-max-bytes",
            )?;
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
        FULL.legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Link bandwidth needed, average and peak, with and without zstd.
pub fn bandwidth(plan: &Plan) -> DrawResult<String> {
    render(|root| {
        let b = &plan.bandwidth;
        let bars = [
            ("average, zstd", b.log_average_mb_per_s_zstd, ZSTD),
            (
                "average, no compression",
                b.log_average_mb_per_s_plain,
                PLAIN,
            ),
            ("peak, zstd", b.log_peak_mb_per_s_zstd, ZSTD),
            ("peak, no compression", b.log_peak_mb_per_s_plain, PLAIN),
        ];
        let mut y_max = bars.iter().map(|x| x.1).fold(0.0, f64::max);
        if let Some(l) = plan.workload.link_mb_per_s {
            y_max = y_max.max(l);
        }
        let y_max = y_max * 1.3;
        let mut chart = FULL.chart(root, "Log bandwidth to the mirror", 0f64..4.0, 0f64..y_max)?;
        FULL.axes(
            &mut chart,
            "log frames shipped: average and peak rate, with and without zstd",
            "bandwidth (MB/s, 1 MB = 10^6 B)",
        )
        .disable_x_mesh()
        .x_labels(0)
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
            limit_line(&mut chart, (0.0, 4.0), l, format!("link {l} MB/s"))?;
            FULL.legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    })
}

/// Validation: predicted vs measured p50 (and ops/s), log-log, with y = x.
pub fn validation(plan: &Plan) -> DrawResult<String> {
    render(|root| {
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
        let mut chart = FULL.chart(
            root,
            "Validation: predicted vs measured commit latency",
            (lo..hi).log_scale(),
            (lo..hi).log_scale(),
        )?;
        FULL.axes(
            &mut chart,
            "measured (ms, log scale)",
            "predicted from the baseline (ms, log scale)",
        )
        .x_label_formatter(&|v| fmt_log(*v))
        .y_label_formatter(&|v| fmt_log(*v))
        .draw()?;
        chart
            .draw_series(LineSeries::new(
                vec![(lo, lo), (hi, hi)],
                GREY_500.stroke_width(1),
            ))?
            .label("prediction = measurement")
            .legend(line_key(GREY_500.stroke_width(1)));
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
        FULL.legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
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
