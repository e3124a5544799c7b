//! Every count of [`pb::Stats`] in one table: its name, what it means,
//! whether it is a running total or a level, and where each view files it.
//! `GetStats` carries the numbers (the wire message); the HTTP side's
//! `/metrics` ([`FAMILIES`], [`Stat::metric`]) and `/api/stats`
//! ([`Stat::json`]), and dispatchctl's table ([`Stat::title`]) are all read
//! off this table, so a count added here shows everywhere.

use crate::pb;

/// What kind of number a count is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A running total since the server started.
    Counter,
    /// A level now.
    Gauge,
}

/// One count of [`pb::Stats`].
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// The field of `pb::Stats`.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Total or level.
    pub kind: Kind,
    /// Its line in dispatchctl's table.
    pub title: &'static str,
    /// Where `/api/stats` files it: a group (or the top level) and a key.
    pub json: (Option<&'static str>, &'static str),
    /// Its Prometheus family and label, if `/metrics` shows it (some are
    /// sums of others, which Prometheus adds up itself).
    pub metric: Option<(&'static str, Option<(&'static str, &'static str)>)>,
    /// Its value in a `GetStats` answer.
    pub value: fn(&pb::Stats) -> u64,
}

/// A Prometheus family the table's counts are filed in: name, kind, help.
pub const FAMILIES: &[(&str, Kind, &str)] = &[
    (LOCATION_UPDATES, Kind::Counter, "Driver location updates applied by the engine."),
    (LOCATION_UPDATES_SHED, Kind::Counter, "Driver location updates dropped because the engine was behind."),
    (RIDE_REQUESTS, Kind::Counter, "Ride requests that made a trip (retries with the same request id excluded)."),
    (OFFERS, Kind::Counter, "Offers by outcome: accepted, declined, expired (no answer in time), withdrawn."),
    (TRIPS_ENDED, Kind::Counter, "Trips ended, by final status."),
    (DRIVERS, Kind::Gauge, "Drivers the engine knows, by state."),
    (SESSIONS, Kind::Gauge, "Open sessions: driver apps, fleet gateways, riders following a trip."),
    (TRIPS_OPEN, Kind::Gauge, "Trips not yet ended, by status."),
    (QUEUE_DEPTH, Kind::Gauge, "Commands waiting for the engine: urgent ones, and location updates."),
    (ROAD_FALLBACKS, Kind::Counter, "Candidates ranked by the straight line for want of a drive by road."),
    (ETA_REFRESHES, Kind::Counter, "Pickup ETAs reckoned again from where the car was, as it came."),
];

/// Location updates applied.
pub const LOCATION_UPDATES: &str = "dispatch_location_updates_total";
/// Location updates shed.
pub const LOCATION_UPDATES_SHED: &str = "dispatch_location_updates_shed_total";
/// Ride requests.
pub const RIDE_REQUESTS: &str = "dispatch_ride_requests_total";
/// Offers by outcome.
pub const OFFERS: &str = "dispatch_offers_total";
/// Trips ended by status.
pub const TRIPS_ENDED: &str = "dispatch_trips_ended_total";
/// Drivers by state.
pub const DRIVERS: &str = "dispatch_drivers";
/// Open sessions by kind.
pub const SESSIONS: &str = "dispatch_sessions";
/// Open trips by status.
pub const TRIPS_OPEN: &str = "dispatch_trips_open";
/// Engine queue depth.
pub const QUEUE_DEPTH: &str = "dispatch_engine_queue_depth";
/// Candidates ranked by the straight line, with a road network.
pub const ROAD_FALLBACKS: &str = "dispatch_road_fallbacks_total";
/// Pickup ETAs reckoned again as cars came.
pub const ETA_REFRESHES: &str = "dispatch_eta_refreshes_total";

macro_rules! stats {
    ($($name:ident, $kind:ident, $title:literal, $json:expr, $metric:expr, $help:literal;)*) => {
        /// The table, in the order people read it.
        pub const STATS: &[Stat] = &[$(Stat {
            name: stringify!($name),
            help: $help,
            kind: Kind::$kind,
            title: $title,
            json: $json,
            metric: $metric,
            value: |s| s.$name,
        }),*];
    };
}

stats! {
    drivers_available, Gauge, "drivers available", (Some("drivers"), "available"),
        Some((DRIVERS, Some(("state", "available")))), "Connected drivers who could take an offer now.";
    drivers_offered, Gauge, "drivers offered", (Some("drivers"), "offered"),
        Some((DRIVERS, Some(("state", "offered")))), "Drivers with an offer out.";
    drivers_on_trip, Gauge, "drivers on a trip", (Some("drivers"), "on_trip"),
        Some((DRIVERS, Some(("state", "on_trip")))), "Drivers with a trip.";
    drivers_unavailable, Gauge, "drivers off duty", (Some("drivers"), "unavailable"),
        Some((DRIVERS, Some(("state", "unavailable")))),
        "Connected drivers with no offer and no trip who cannot take one now (off duty, or no position yet).";
    drivers_connected, Gauge, "drivers connected", (Some("drivers"), "connected"), None,
        "Drivers with a live session.";
    driver_sessions, Gauge, "driver sessions", (Some("sessions"), "driver"),
        Some((SESSIONS, Some(("kind", "driver")))), "Open driver app sessions.";
    fleet_sessions, Gauge, "fleet sessions", (Some("sessions"), "fleet"),
        Some((SESSIONS, Some(("kind", "fleet")))), "Open fleet gateway sessions.";
    rider_streams, Gauge, "riders following", (Some("sessions"), "rider"),
        Some((SESSIONS, Some(("kind", "rider")))), "Riders following a trip.";
    trip_watchers, Gauge, "operators watching trips", (Some("sessions"), "trip_watchers"), None,
        "Operators following every trip's changes (WatchTrips).";
    trips_searching, Gauge, "trips searching", (Some("trips_open"), "searching"),
        Some((TRIPS_OPEN, Some(("status", "searching")))), "Trips searching for a driver now.";
    trips_assigned, Gauge, "trips assigned", (Some("trips_open"), "assigned"),
        Some((TRIPS_OPEN, Some(("status", "assigned")))), "Trips whose driver is on the way.";
    trips_arrived, Gauge, "trips arrived", (Some("trips_open"), "arrived"),
        Some((TRIPS_OPEN, Some(("status", "arrived")))), "Trips whose driver is at the pickup.";
    trips_in_progress, Gauge, "trips in progress", (Some("trips_open"), "in_progress"),
        Some((TRIPS_OPEN, Some(("status", "in_progress")))), "Trips with the rider on board.";
    trips_active, Gauge, "trips with a driver", (Some("trips_open"), "active"), None,
        "Trips with a driver now (assigned, arrived or in progress).";
    trips_completed, Counter, "trips completed", (Some("trips_ended"), "completed"),
        Some((TRIPS_ENDED, Some(("status", "completed")))), "Trips completed.";
    trips_cancelled, Counter, "trips cancelled", (Some("trips_ended"), "cancelled"),
        Some((TRIPS_ENDED, Some(("status", "cancelled")))), "Trips cancelled.";
    trips_no_driver, Counter, "trips without a driver", (Some("trips_ended"), "no_driver_found"),
        Some((TRIPS_ENDED, Some(("status", "no_driver_found")))), "Trips that found no driver.";
    ride_requests, Counter, "ride requests", (None, "ride_requests"), Some((RIDE_REQUESTS, None)),
        "Ride requests that made a trip (a retry with the same request id excluded).";
    offers_sent, Counter, "offers sent", (Some("offers"), "sent"), None,
        "Offers sent (auto-accept assignments included).";
    offers_accepted, Counter, "offers accepted", (Some("offers"), "accepted"),
        Some((OFFERS, Some(("outcome", "accepted")))), "Offers accepted (auto-accept assignments included).";
    offers_declined, Counter, "offers declined", (Some("offers"), "declined"),
        Some((OFFERS, Some(("outcome", "declined")))), "Offers declined, or lost with their driver's session.";
    offers_expired, Counter, "offers expired", (Some("offers"), "expired"),
        Some((OFFERS, Some(("outcome", "expired")))), "Offers that timed out.";
    offers_withdrawn, Counter, "offers withdrawn", (Some("offers"), "withdrawn"),
        Some((OFFERS, Some(("outcome", "withdrawn")))),
        "Offers taken back because the trip ended or another driver took it while they were out.";
    location_updates, Counter, "location updates", (None, "location_updates"), Some((LOCATION_UPDATES, None)),
        "Position reports applied.";
    location_updates_shed, Counter, "location updates shed", (None, "location_updates_shed"),
        Some((LOCATION_UPDATES_SHED, None)), "Position reports dropped because the engine was behind.";
    road_fallbacks, Counter, "road fallbacks", (None, "road_fallbacks"), Some((ROAD_FALLBACKS, None)),
        "Candidates ranked by the straight line for want of a drive by road.";
    eta_refreshes, Counter, "pickup ETAs refreshed", (None, "eta_refreshes"), Some((ETA_REFRESHES, None)),
        "Pickup ETAs reckoned again from where the car was, as it came.";
    queue_urgent, Gauge, "engine queue, urgent", (Some("queue"), "urgent"),
        Some((QUEUE_DEPTH, Some(("queue", "urgent")))), "Urgent commands waiting for the engine.";
    queue_locations, Gauge, "engine queue, locations", (Some("queue"), "locations"),
        Some((QUEUE_DEPTH, Some(("queue", "locations")))), "Location updates waiting for the engine.";
    uptime_s, Gauge, "uptime (s)", (None, "uptime_s"), None, "Seconds since the server started.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_a_count_names_is_described_and_every_json_key_is_filed_once() {
        let mut keys = std::collections::HashSet::new();
        for stat in STATS {
            assert!(keys.insert(stat.json), "{} filed twice in /api/stats", stat.name);
            if let Some((family, _)) = stat.metric {
                let described = FAMILIES.iter().find(|(name, _, _)| *name == family);
                assert!(described.is_some_and(|(_, kind, _)| *kind == stat.kind), "{}: {family}", stat.name);
            }
        }
    }

    #[test]
    fn each_count_reads_its_own_field() {
        // Every field a different number: a row reading the wrong one shows.
        let s = pb::Stats {
            drivers_available: 1,
            drivers_offered: 2,
            drivers_on_trip: 3,
            drivers_unavailable: 4,
            drivers_connected: 5,
            driver_sessions: 6,
            fleet_sessions: 7,
            rider_streams: 8,
            trip_watchers: 9,
            trips_searching: 10,
            trips_assigned: 11,
            trips_arrived: 12,
            trips_in_progress: 13,
            trips_active: 14,
            trips_completed: 15,
            trips_cancelled: 16,
            trips_no_driver: 17,
            ride_requests: 18,
            offers_sent: 19,
            offers_accepted: 20,
            offers_declined: 21,
            offers_expired: 22,
            offers_withdrawn: 23,
            location_updates: 24,
            location_updates_shed: 25,
            road_fallbacks: 26,
            eta_refreshes: 27,
            queue_urgent: 28,
            queue_locations: 29,
            uptime_s: 30,
            ..pb::Stats::default()
        };
        let values: Vec<u64> = STATS.iter().map(|stat| (stat.value)(&s)).collect();
        assert_eq!(values, (1..=30).collect::<Vec<u64>>());
    }
}
