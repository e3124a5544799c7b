//! SVG plots of a comparison (`plotters`): the KPIs against fleet size per
//! policy, and the distributions of the wait to assignment and the pickup
//! distance, so a reader sees the difference rather than reads it.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::{Kpis, SimError};

fn fail(e: impl std::fmt::Display) -> SimError {
    SimError::Input(format!("plot: {e}"))
}

/// The policies in the order first seen.
fn policies(rows: &[(String, Kpis)]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for (policy, _) in rows {
        if !seen.contains(&policy.as_str()) {
            seen.push(policy);
        }
    }
    seen
}

/// Writes `kpis.svg`, `waits.svg` and `pickups.svg` into `dir` (made if
/// missing) and returns their paths.
pub fn all(dir: &Path, rows: &[(String, Kpis)]) -> Result<Vec<PathBuf>, SimError> {
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let kpis = dir.join("kpis.svg");
    by_fleet_size(&kpis, rows)?;
    // The distributions at one fleet size: the middle of a sweep.
    let mut sizes: Vec<usize> = rows.iter().map(|(_, k)| k.drivers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let size = sizes.get(sizes.len() / 2).copied().unwrap_or_default();
    let at: Vec<(String, Kpis)> = rows.iter().filter(|(_, k)| k.drivers == size).cloned().collect();
    let waits = dir.join("waits.svg");
    distribution(&waits, &at, &format!("wait to assignment, {size} drivers"), "seconds", |k| &k.waits_s.0)?;
    let pickups = dir.join("pickups.svg");
    distribution(&pickups, &at, &format!("pickup distance, {size} drivers"), "metres", |k| &k.pickups_m.0)?;
    Ok(vec![kpis, waits, pickups])
}

type Metric = (&'static str, fn(&Kpis) -> f64);

/// Four panels (match rate, mean pickup, p90 wait, empty kilometres)
/// against fleet size, one line per policy.
fn by_fleet_size(path: &Path, rows: &[(String, Kpis)]) -> Result<(), SimError> {
    let metrics: [Metric; 4] = [
        ("match rate, %", |k| k.match_rate * 100.0),
        ("mean pickup distance, m", |k| k.pickup_mean_m),
        ("wait to assignment p90, s", |k| k.wait_p90_s),
        ("km driven empty to pickups", |k| k.empty_km),
    ];
    let root = SVGBackend::new(path, (1200, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let (lo, hi) = rows.iter().fold((usize::MAX, 0), |(lo, hi), (_, k)| (lo.min(k.drivers), hi.max(k.drivers)));
    let pad = ((hi - lo.min(hi)) / 10).max(10);
    let x = lo.saturating_sub(pad)..hi + pad;
    for (area, (title, metric)) in root.split_evenly((2, 2)).iter().zip(metrics) {
        let top = rows.iter().map(|(_, k)| metric(k)).fold(0.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x.clone(), 0.0..top.max(1.0))
            .map_err(fail)?;
        chart.configure_mesh().x_desc("drivers").draw().map_err(fail)?;
        for (i, policy) in policies(rows).into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(usize, f64)> =
                rows.iter().filter(|(p, _)| p == policy).map(|(_, k)| (k.drivers, metric(k))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(fail)?
                .label(policy)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(fail)?;
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.85)).draw().map_err(fail)?;
    }
    root.present().map_err(fail)
}

/// The share of assignments at or under each value (an empirical CDF), one
/// line per policy; the axis stops at the largest 99th percentile.
fn distribution(
    path: &Path,
    rows: &[(String, Kpis)],
    title: &str,
    unit: &str,
    values: fn(&Kpis) -> &[f64],
) -> Result<(), SimError> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let p99 = |v: &[f64]| if v.is_empty() { 0.0 } else { v[(v.len() - 1) * 99 / 100] };
    let right = rows.iter().map(|(_, k)| p99(values(k))).fold(0.0, f64::max).max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..right, 0.0..100.0)
        .map_err(fail)?;
    chart.configure_mesh().x_desc(unit).y_desc("% of assignments at or under").draw().map_err(fail)?;
    for (i, (policy, kpis)) in rows.iter().enumerate() {
        let v = values(kpis);
        let n = v.len().max(1) as f64;
        // At most ~500 points a line, so the file stays small.
        let step = (v.len() / 500).max(1);
        let points: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .step_by(step)
            .chain(v.iter().enumerate().next_back())
            .map(|(j, &x)| (x.min(right), (j + 1) as f64 * 100.0 / n))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(fail)?
            .label(policy.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)
}
