//! `enlace bench --plot FILE.svg`: latency by percentile and throughput over time, one row per
//! scenario, drawn with `plotters` (SVG backend: text is left to the viewer's fonts).
//!
//! Latency is drawn the way HdrHistogram plots are: the x axis is the percentile on a scale
//! where each step is another nine (0 %, 90 %, 99 %, 99.9 %, 99.99 %), the y axis milliseconds
//! on a log scale, so the tail is as visible as the median.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use plotters::prelude::*;

use super::load::Stamp;

/// Width of a bin of the throughput line.
const BIN: Duration = Duration::from_millis(100);
/// Most nines on the percentile axis (99.99 %).
const NINES: f64 = 4.0;
/// Points per line on the percentile axis.
const STEPS: usize = 400;

/// What one scenario contributes to the plot.
#[derive(Debug, Default)]
pub struct Series {
    /// `<scenario> / <topology>`.
    pub name: String,
    /// Latencies of the records sent in the measured window, in microseconds, sorted.
    pub records: Vec<u64>,
    /// Latencies of the alerts sent in the measured window, in microseconds, sorted.
    pub alerts: Vec<u64>,
    /// Records delivered per second, per [`BIN`] of the measured window: (seconds into it, rate).
    pub rate: Vec<(f64, f64)>,
}

/// Records delivered per second in each [`BIN`] of `start..end`.
pub fn rate_over_time(receipts: &[Stamp], start: Instant, end: Instant) -> Vec<(f64, f64)> {
    let bins = ((end - start).as_secs_f64() / BIN.as_secs_f64()).floor() as usize;
    let mut counts = vec![0u64; bins];
    for (_, at) in receipts {
        if *at >= start {
            let i = ((*at - start).as_secs_f64() / BIN.as_secs_f64()) as usize;
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
    }
    let secs = BIN.as_secs_f64();
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| ((i as f64 + 0.5) * secs, *c as f64 / secs))
        .collect()
}

/// (nines, milliseconds) points of sorted latencies in microseconds: x = -log10(1 - p), as far
/// as the number of values resolves, then the maximum.
fn percentile_points(sorted: &[u64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let top = (n as f64).log10().min(NINES);
    let mut points: Vec<(f64, f64)> = (0..=STEPS)
        .map(|i| top * i as f64 / STEPS as f64)
        .map(|x| {
            let p = 1.0 - 10f64.powf(-x);
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            (x, sorted[rank - 1] as f64 / 1e3)
        })
        .collect();
    // The line ends at the maximum.
    points.push((top, sorted[n - 1] as f64 / 1e3));
    points
}

/// The label of a point on the percentile axis.
fn percentile_label(nines: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-nines));
    let digits = (nines.round() as usize).saturating_sub(2);
    format!("{p:.digits$}%")
}

/// A latency axis label: as many decimals as a value that small needs.
fn milliseconds(ms: f64) -> String {
    match ms {
        m if m >= 10.0 => format!("{m:.0}"),
        m if m >= 1.0 => format!("{m:.1}"),
        m => format!("{m:.2}"),
    }
}

/// Draws every series into an SVG file at `path`.
pub fn draw(path: &Path, series: &[&Series]) -> anyhow::Result<()> {
    draw_inner(path, series).with_context(|| format!("cannot draw {}", path.display()))
}

fn draw_inner(path: &Path, series: &[&Series]) -> anyhow::Result<()> {
    let rows = series.len().max(1);
    let root = SVGBackend::new(path, (1100, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, 2));
    for (s, pair) in series.iter().zip(panels.chunks(2)) {
        latency(&pair[0], s)?;
        throughput(&pair[1], s)?;
    }
    root.present()?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn latency(area: &Area<'_>, s: &Series) -> anyhow::Result<()> {
    let lines = [
        ("FLASH alerts", percentile_points(&s.alerts), RED),
        ("ROUTINE records", percentile_points(&s.records), BLUE),
    ];
    let ys = lines.iter().flat_map(|(_, p, _)| p.iter().map(|(_, y)| *y));
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = match hi > 0.0 {
        true => ((lo.max(0.001) / 1.5), hi * 1.5),
        false => (0.01, 1.0),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: latency, send() to application", s.name),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..NINES, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(NINES as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_labels(8)
        .y_label_formatter(&|y| milliseconds(*y))
        .light_line_style(WHITE)
        .x_desc("percentile")
        .y_desc("ms")
        .draw()?;
    for (label, points, color) in lines {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

fn throughput(area: &Area<'_>, s: &Series) -> anyhow::Result<()> {
    if s.records.is_empty() {
        let area = area.titled(
            &format!("{}: records delivered", s.name),
            ("sans-serif", 16),
        )?;
        let note = Text::new("no records in this scenario", (60, 80), ("sans-serif", 14));
        area.draw(&note)?;
        return Ok(());
    }
    let end = s
        .rate
        .last()
        .map_or(1.0, |(t, _)| t + BIN.as_secs_f64() / 2.0);
    let top = s.rate.iter().map(|(_, r)| *r).fold(0f64, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: records delivered", s.name), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart
        .configure_mesh()
        .y_label_formatter(&|r| format!("{r:.0}"))
        .light_line_style(WHITE)
        .x_desc("seconds into the measured window")
        .y_desc("records/s (100 ms bins)")
        .draw()?;
    chart.draw_series(LineSeries::new(
        s.rate.iter().copied(),
        BLUE.stroke_width(2),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use enlace::MessageId;

    #[test]
    fn percentiles_follow_the_nines() {
        let v: Vec<u64> = (1..=10_000).collect();
        let p = percentile_points(&v);
        assert_eq!(p.first(), Some(&(0.0, 0.001)));
        // Two nines: the 99th percentile, 9,900 µs.
        let two = p.iter().find(|(x, _)| (*x - 2.0).abs() < 1e-9).unwrap();
        assert!((two.1 - 9.9).abs() < 0.01, "{two:?}");
        assert_eq!(p.last(), Some(&(4.0, 10.0)));
        assert!(percentile_points(&[]).is_empty());
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
    }

    #[test]
    fn rate_counts_deliveries_per_bin() {
        let start = Instant::now();
        let at = |ms| {
            (
                MessageId::new_v7(std::time::SystemTime::now()),
                start + Duration::from_millis(ms),
            )
        };
        let receipts = [at(10), at(20), at(150), at(999), at(1_500)];
        let r = rate_over_time(&receipts, start, start + Duration::from_secs(1));
        assert_eq!(r.len(), 10);
        assert_eq!(r[0], (0.05, 20.0));
        assert_eq!(r[1].1, 10.0);
        assert_eq!(r[9].1, 10.0);
        assert_eq!(r.iter().map(|(_, c)| c).sum::<f64>(), 40.0);
    }

    #[test]
    fn an_svg_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.svg");
        let s = Series {
            name: "mixed / single".into(),
            records: (100..2_000).collect(),
            alerts: (50..500).collect(),
            rate: vec![(0.05, 100.0), (0.15, 120.0)],
        };
        draw(&path, &[&s]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("FLASH alerts") && svg.contains("99.9%"));
    }
}
