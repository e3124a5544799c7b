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

/// The shards, one line each, with rates from two looks `over` apart (a
/// shard whose counts went down between them, its engine started again,
/// counts from zero).
pub fn shards(
    out: &mut (dyn Write + Send),
    first: &pb::Stats,
    second: &pb::Stats,
    over: std::time::Duration,
    as_json: bool,
) -> std::io::Result<()> {
    let seconds = over.as_secs_f64().max(1e-3);
    let rate = |now: u64, before: Option<u64>| {
        let before = before.filter(|&b| b <= now).unwrap_or(0);
        (now - before) as f64 / seconds
    };
    let rows: Vec<_> = second
        .shards
        .iter()
        .map(|s| {
            let before = first.shards.iter().find(|b| b.shard == s.shard && b.node == s.node);
            let rides = rate(s.ride_requests, before.map(|b| b.ride_requests));
            let updates = rate(s.location_updates, before.map(|b| b.location_updates));
            (s, rides, updates)
        })
        .collect();
    if as_json {
        let shards: Vec<_> = rows
            .iter()
            .map(|(s, rides, updates)| {
                json!({
                    "shard": s.shard,
                    "node": s.node,
                    "drivers_connected": s.drivers_connected,
                    "trips_open": s.trips_open,
                    "rides_per_s": rides,
                    "updates_per_s": updates,
                })
            })
            .collect();
        return writeln!(out, "{}", json!({ "shards": shards, "over_s": seconds }));
    }
    writeln!(
        out,
        "{:>5}  {:<20} {:>10} {:>10} {:>9} {:>11}",
        "shard", "node", "drivers", "open trips", "rides/s", "updates/s"
    )?;
    for (s, rides, updates) in rows {
        let node = if s.node.is_empty() { "this server" } else { s.node.as_str() };
        writeln!(
            out,
            "{:>5}  {:<20} {:>10} {:>10} {:>9.1} {:>11.0}",
            s.shard, node, s.drivers_connected, s.trips_open, rides, updates
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn look(rows: &[(u32, u64, u64)]) -> pb::Stats {
        let shards = rows
            .iter()
            .map(|&(shard, ride_requests, location_updates)| pb::ShardStats {
                shard,
                ride_requests,
                location_updates,
                ..Default::default()
            })
            .collect();
        pb::Stats { shards, ..Default::default() }
    }

    #[test]
    fn a_shards_rates_are_what_it_counted_between_the_looks_over_the_time_between() {
        let first = look(&[(0, 10, 1_000), (1, 5, 0)]);
        // Shard 1's engine started again between the looks: from zero.
        let second = look(&[(0, 30, 5_000), (1, 3, 600)]);
        let mut out = Vec::new();
        shards(&mut out, &first, &second, std::time::Duration::from_secs(2), true).unwrap_or_else(|e| panic!("{e}"));
        let shown: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}"));
        let rates: Vec<(f64, f64)> = shown["shards"]
            .as_array()
            .unwrap_or_else(|| panic!("{shown}"))
            .iter()
            .map(|s| (s["rides_per_s"].as_f64().unwrap_or(-1.0), s["updates_per_s"].as_f64().unwrap_or(-1.0)))
            .collect();
        assert_eq!(rates, [(10.0, 2_000.0), (1.5, 300.0)]);
    }
}
