//! What the map's page reads: the engine's answers as compact JSON.

use dispatch_core::engine::{MapDriver, MapView, Shade};
pub use dispatch_proto::json::{stats, trip};
use dispatch_proto::pb;
use serde_json::{Value, json};

fn shade(s: Shade) -> &'static str {
    match s {
        Shade::Available => "available",
        Shade::Offered => "offered",
        Shade::OnTrip => "on_trip",
        Shade::Unavailable => "unavailable",
        Shade::Waiting => "waiting",
    }
}

/// A driver: id, where, state, trip.
pub fn driver(d: &MapDriver) -> Value {
    json!({
        "id": d.driver.as_str(),
        "position": [d.position.lat(), d.position.lng()],
        "state": shade(d.shade),
        "trip": d.trip.map(|t| t.to_string()),
    })
}

/// A viewport. Drivers are `[id, lat, lng, state, trip]` and cells
/// `[south, west, available, offered, on_trip, unavailable, waiting]`, to
/// keep thousands of them small.
pub fn view(v: &MapView) -> Value {
    let drivers: Vec<Value> = v
        .drivers
        .iter()
        .map(|d| {
            json!([
                d.driver.as_str(),
                d.position.lat(),
                d.position.lng(),
                shade(d.shade),
                d.trip.map(|t| t.to_string())
            ])
        })
        .collect();
    let cells: Vec<Value> = v
        .cells
        .iter()
        .map(|c| {
            let [a, o, t, u, w] = c.counts;
            json!([c.south_west.0, c.south_west.1, a, o, t, u, w])
        })
        .collect();
    let trips: Vec<Value> = v
        .trips
        .iter()
        .map(|t| {
            let mut value = trip(&pb::Trip::from(&t.trip));
            value["offered_to"] = t.offered_to.as_ref().map_or(Value::Null, |d| json!(d.as_str()));
            value
        })
        .collect();
    json!({
        "drivers": drivers,
        "cells": cells,
        "cell_deg": v.cell_deg,
        "trips": trips,
        "drivers_in_view": v.drivers_in_view,
        "waiting_in_view": v.waiting_in_view,
    })
}
