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

/// The counters, grouped as operators read them.
pub fn stats(s: &pb::Stats) -> Value {
    let minute = s.last_minute.clone().unwrap_or_default();
    json!({
        "drivers": {
            "available": s.drivers_available, "offered": s.drivers_offered,
            "on_trip": s.drivers_on_trip, "unavailable": s.drivers_unavailable,
            "connected": s.drivers_connected,
        },
        "sessions": {
            "driver": s.driver_sessions, "fleet": s.fleet_sessions, "rider": s.rider_streams,
            "trip_watchers": s.trip_watchers,
        },
        "trips_open": {
            "searching": s.trips_searching, "assigned": s.trips_assigned,
            "arrived": s.trips_arrived, "in_progress": s.trips_in_progress,
        },
        "trips_ended": {
            "completed": s.trips_completed, "cancelled": s.trips_cancelled, "no_driver_found": s.trips_no_driver,
        },
        "ride_requests": s.ride_requests,
        "offers": {
            "sent": s.offers_sent, "accepted": s.offers_accepted, "declined": s.offers_declined,
            "expired": s.offers_expired, "withdrawn": s.offers_withdrawn,
        },
        "location_updates": s.location_updates,
        "location_updates_shed": s.location_updates_shed,
        "queue": { "urgent": s.queue_urgent, "locations": s.queue_locations },
        "request_to_offer_last_minute": {
            "count": minute.count, "p50_us": minute.p50_us, "p99_us": minute.p99_us, "max_us": minute.max_us,
        },
        "uptime_s": s.uptime_s,
    })
}
