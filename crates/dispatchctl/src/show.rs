//! How answers are shown: a line or a table for people, or JSON.

use std::io::Write;

use dispatch_proto::{json, pb};
use serde_json::json;

fn point(p: Option<&pb::LatLng>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{:.5},{:.5}", p.lat, p.lng))
}

/// One trip, one line: `t-3  assigned  driver D1 at ... (412 m to pickup)`.
pub fn trip(out: &mut (dyn Write + Send), t: &pb::Trip, as_json: bool) -> std::io::Result<()> {
    if as_json {
        return writeln!(out, "{}", json::trip(t));
    }
    let mut line = format!("{:<8} {:<16}", t.trip_id, json::status(t.status));
    if !t.driver_id.is_empty() {
        line.push_str(&format!(" driver {} at {}", t.driver_id, point(t.driver_position.as_ref())));
        if t.pickup_distance_m > 0.0 {
            line.push_str(&format!(
                " ({:.0} m, about {:.0} s, from the pickup when assigned)",
                t.pickup_distance_m, t.pickup_eta_s
            ));
        }
        if t.queued {
            line.push_str(" queued behind the driver's ride in progress");
        }
    }
    line.push_str(&format!(" pickup {} dropoff {}", point(t.pickup.as_ref()), point(t.dropoff.as_ref())));
    if !t.cancel_reason.is_empty() {
        line.push_str(&format!(" reason {:?}", t.cancel_reason));
    }
    writeln!(out, "{line}")
}

/// The counters as a table.
pub fn stats(out: &mut (dyn Write + Send), s: &pb::Stats, as_json: bool) -> std::io::Result<()> {
    if as_json {
        return writeln!(out, "{}", json::stats(s));
    }
    let minute = s.last_minute.clone().unwrap_or_default();
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1_000.0);
    let mut rows: Vec<(&str, String)> =
        dispatch_proto::stats::STATS.iter().map(|stat| (stat.title, (stat.value)(s).to_string())).collect();
    rows.extend([
        ("request to offer p50 / p99", format!("{} / {}", ms(s.match_latency_p50_us), ms(s.match_latency_p99_us))),
        ("  over the last minute", format!("{} / {} ({} rides)", ms(minute.p50_us), ms(minute.p99_us), minute.count)),
    ]);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v:>14}")?;
    }
    Ok(())
}

/// Nearby drivers, nearest first.
pub fn nearby(out: &mut (dyn Write + Send), n: &pb::NearbyResponse, as_json: bool) -> std::io::Result<()> {
    if as_json {
        let drivers: Vec<_> = n
            .drivers
            .iter()
            .map(|d| {
                json!({
                    "driver": d.driver_id,
                    "position": d.position.as_ref().map(|p| [p.lat, p.lng]),
                    "distance_m": d.distance_m,
                    "available": d.available,
                })
            })
            .collect();
        return writeln!(out, "{}", json!({ "drivers": drivers, "exact_within_m": n.exact_within_m }));
    }
    if n.drivers.is_empty() {
        return writeln!(out, "no drivers");
    }
    for d in &n.drivers {
        let state = if d.available { "available" } else { "busy" };
        writeln!(out, "{:<24} {:>9.0} m  {:<9}  {}", d.driver_id, d.distance_m, state, point(d.position.as_ref()))?;
    }
    Ok(())
}

/// A line of what a driver played by `drive` does.
pub fn step(out: &mut (dyn Write + Send), what: &str, detail: serde_json::Value, as_json: bool) -> std::io::Result<()> {
    if as_json {
        return writeln!(out, "{}", json!({ "event": what, "detail": detail }));
    }
    match detail {
        serde_json::Value::Null => writeln!(out, "{what}"),
        serde_json::Value::String(s) => writeln!(out, "{what}: {s}"),
        other => writeln!(out, "{what}: {other}"),
    }
}
