//! Messages as JSON for people's tools (`dispatchctl --json`, the map's
//! page): statuses by name, points as `[lat, lng]`, empty fields as null.

use serde_json::{Value, json};

use crate::pb;

fn point(p: Option<&pb::LatLng>) -> Value {
    p.map_or(Value::Null, |p| json!([p.lat, p.lng]))
}

/// A trip status by its short name (`searching`, `assigned`, ...).
pub fn status(code: i32) -> &'static str {
    match pb::TripStatus::try_from(code) {
        Ok(pb::TripStatus::Searching) => "searching",
        Ok(pb::TripStatus::DriverAssigned) => "assigned",
        Ok(pb::TripStatus::DriverArrived) => "arrived",
        Ok(pb::TripStatus::InProgress) => "in_progress",
        Ok(pb::TripStatus::Completed) => "completed",
        Ok(pb::TripStatus::Cancelled) => "cancelled",
        Ok(pb::TripStatus::NoDriverFound) => "no_driver_found",
        Ok(pb::TripStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// A trip: id, status, pickup, dropoff, driver and where it is.
pub fn trip(t: &pb::Trip) -> Value {
    json!({
        "id": t.trip_id,
        "status": status(t.status),
        "pickup": point(t.pickup.as_ref()),
        "dropoff": point(t.dropoff.as_ref()),
        "driver": if t.driver_id.is_empty() { Value::Null } else { json!(t.driver_id) },
        "driver_position": point(t.driver_position.as_ref()),
        "pickup_distance_m": t.pickup_distance_m,
        "pickup_eta_s": t.pickup_eta_s,
        "queued": t.queued,
        "requested_at_ms": t.requested_at_ms,
        "updated_at_ms": t.updated_at_ms,
    })
}

/// The counts, grouped as operators read them (see [`crate::stats`]), and
/// the latency of the last minute.
pub fn stats(s: &pb::Stats) -> Value {
    let mut root = serde_json::Map::new();
    for stat in crate::stats::STATS {
        let value = json!((stat.value)(s));
        match stat.json {
            (None, key) => {
                root.insert(key.to_owned(), value);
            }
            (Some(group), key) => {
                let group = root.entry(group).or_insert_with(|| json!({}));
                if let Some(group) = group.as_object_mut() {
                    group.insert(key.to_owned(), value);
                }
            }
        }
    }
    let minute = s.last_minute.clone().unwrap_or_default();
    root.insert(
        "request_to_offer_last_minute".to_owned(),
        json!({ "count": minute.count, "p50_us": minute.p50_us, "p99_us": minute.p99_us, "max_us": minute.max_us }),
    );
    let shards: Vec<Value> = s
        .shards
        .iter()
        .map(|shard| {
            json!({
                "shard": shard.shard,
                "node": shard.node,
                "drivers_connected": shard.drivers_connected,
                "trips_open": shard.trips_open,
                "ride_requests": shard.ride_requests,
                "location_updates": shard.location_updates,
            })
        })
        .collect();
    root.insert("shards".to_owned(), Value::Array(shards));
    Value::Object(root)
}
