//! The rules of dispatch, one test each, in virtual time.

use super::*;
use crate::error::EngineError;
use crate::geo::LatLng;
use crate::ids::{DriverId, FleetId, OfferId, RequestId, RiderId, SessionId, TripId};
use crate::service::{ServiceSet, ServiceType};
use crate::trip::TripStatus;

fn p(lat: f64, lng: f64) -> LatLng {
    LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"))
}

fn did(s: &str) -> DriverId {
    DriverId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// An engine, a clock, and helpers to read what it said.
struct World {
    engine: Engine,
    now: Timestamp,
    next_session: u64,
    log: Vec<Effect>,
    /// Effects taken from the engine to read what a call said, not yet
    /// handed out by `drain`.
    held: Vec<Effect>,
}

const PICKUP: (f64, f64) = (37.5665, 126.9780);

impl World {
    fn new() -> Self {
        Self::with(Config::default())
    }

    fn with(config: Config) -> Self {
        Self {
            engine: Engine::new(config),
            now: Timestamp(1_000_000),
            next_session: 1,
            log: Vec::new(),
            held: Vec::new(),
        }
    }

    fn drain(&mut self) -> Vec<Effect> {
        let mut effects = std::mem::take(&mut self.held);
        effects.extend(self.engine.drain_effects());
        self.log.extend(effects.iter().cloned());
        effects
    }

    /// Connects a driver's session; returns the trip it resumed, if any,
    /// leaving the effects for `drain`.
    fn connect(&mut self, session: SessionId, hello: DriverHello) -> Option<Trip> {
        let start = self.engine.connect_driver(self.now, session, hello).unwrap_or_else(|e| panic!("{e}"));
        self.held.extend(self.engine.drain_effects());
        start.current_trip
    }

    fn session(&mut self) -> SessionId {
        self.next_session += 1;
        SessionId(self.next_session)
    }

    /// A driver `metres_north` of the pickup, available.
    fn driver(&mut self, id: &str, metres_north: f64) -> SessionId {
        self.driver_with(id, metres_north, ServiceSet::taxi(), false)
    }

    fn driver_with(&mut self, id: &str, metres_north: f64, services: ServiceSet, auto_accept: bool) -> SessionId {
        let session = self.session();
        let hello = DriverHello {
            driver: did(id),
            services,
            position: Some(north_of_pickup(metres_north)),
            available: true,
            auto_accept,
        };
        if let Err(e) = self.engine.connect_driver(self.now, session, hello) {
            panic!("{e}");
        }
        self.drain();
        session
    }

    fn request(&mut self, rider: &str) -> TripId {
        self.request_with(rider, rider, ServiceType::Taxi, None)
    }

    fn request_with(&mut self, rider: &str, key: &str, service: ServiceType, radius: Option<f64>) -> TripId {
        let request = RideRequest {
            rider: RiderId::new(rider).unwrap_or_else(|e| panic!("{e}")),
            request_id: RequestId::new(key).unwrap_or_else(|e| panic!("{e}")),
            pickup: p(PICKUP.0, PICKUP.1),
            dropoff: Some(p(37.5, 127.0)),
            service,
            max_pickup_distance_m: radius,
        };
        let taken = self.engine.request_ride(self.now, request);
        self.held.extend(self.engine.drain_effects());
        taken.trip.id
    }

    fn advance(&mut self, ms: i64) {
        self.now = self.now + ms;
        self.engine.tick(self.now);
    }

    fn status(&self, trip: TripId) -> TripStatus {
        self.engine.trip(trip).map(|t| t.status).unwrap_or_else(|| panic!("no trip {trip}"))
    }

    fn driver_of(&self, trip: TripId) -> Option<String> {
        self.engine.trip(trip).and_then(|t| t.driver.as_ref().map(|d| d.to_string()))
    }
}

fn north_of_pickup(metres: f64) -> LatLng {
    p(PICKUP.0 + metres / 111_195.0, PICKUP.1)
}

/// The offers in `effects`: (session, offer id, driver id).
fn offers(effects: &[Effect]) -> Vec<(SessionId, OfferId, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Driver { session, event: DriverEvent::Offer(o) } => Some((*session, o.id, o.driver.to_string())),
            _ => None,
        })
        .collect()
}

fn withdrawn(effects: &[Effect]) -> Vec<(OfferId, WithdrawReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Driver { event: DriverEvent::OfferWithdrawn { offer, reason, .. }, .. } => Some((*offer, *reason)),
            _ => None,
        })
        .collect()
}

fn driver_moves(effects: &[Effect]) -> Vec<(TripId, LatLng)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::DriverMoved { trip, position, .. } => Some((*trip, *position)),
            _ => None,
        })
        .collect()
}

fn rider_statuses(effects: &[Effect]) -> Vec<TripStatus> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Rider(t) => Some(t.status),
            _ => None,
        })
        .collect()
}

fn only_offer(effects: &[Effect]) -> (SessionId, OfferId, String) {
    let all = offers(effects);
    assert_eq!(all.len(), 1, "expected one offer in {effects:#?}");
    all[0].clone()
}

#[test]
fn the_nearest_available_driver_gets_the_offer() {
    let mut w = World::new();
    w.driver("far", 900.0);
    let near = w.driver("near", 100.0);
    w.driver("middle", 400.0);
    let trip = w.request("r1");
    let effects = w.drain();
    assert_eq!(rider_statuses(&effects), vec![TripStatus::Searching]);
    let (session, _, driver) = only_offer(&effects);
    assert_eq!((session, driver.as_str()), (near, "near"));
    assert!(effects.contains(&Effect::FirstOffer { trip, across: None }));
}

#[test]
fn ties_go_to_the_smaller_driver_id() {
    let mut w = World::new();
    for id in ["d-c", "d-a", "d-b"] {
        w.driver(id, 250.0);
    }
    w.request("r1");
    assert_eq!(only_offer(&w.drain()).2, "d-a");
}

#[test]
fn a_decline_passes_the_offer_to_the_next_nearest() {
    let mut w = World::new();
    let a = w.driver("a", 100.0);
    w.driver("b", 200.0);
    let trip = w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, a, offer, false).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert_eq!(withdrawn(&effects), vec![(offer, WithdrawReason::Declined)]);
    assert_eq!(only_offer(&effects).2, "b");
    assert_eq!(w.status(trip), TripStatus::Searching);
    assert_eq!(w.engine.stats().offers_declined, 1);
}

#[test]
fn an_expired_offer_is_withdrawn_and_passed_on() {
    let mut w = World::new();
    w.driver("a", 100.0);
    w.driver("b", 200.0);
    w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.advance(9_999);
    assert!(w.drain().is_empty(), "nothing is due before the offer timeout");
    w.advance(1);
    let effects = w.drain();
    assert_eq!(withdrawn(&effects), vec![(offer, WithdrawReason::Expired)]);
    assert_eq!(only_offer(&effects).2, "b");
    assert_eq!(w.engine.stats().offers_expired, 1);
}

#[test]
fn accepting_assigns_and_tells_rider_and_driver() {
    let mut w = World::new();
    let a = w.driver("a", 300.0);
    let trip = w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, a, offer, true).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    let assigned = effects.iter().find_map(|e| match e {
        Effect::Rider(t) => Some(t.clone()),
        _ => None,
    });
    let assigned = assigned.unwrap_or_else(|| panic!("rider not told: {effects:#?}"));
    assert_eq!(assigned.status, TripStatus::DriverAssigned);
    assert_eq!(assigned.driver, Some(did("a")));
    assert!(assigned.driver_position.is_some());
    let distance = assigned.pickup_distance_m.unwrap_or(-1.0);
    assert!((distance - 300.0).abs() < 1.0, "{distance}");
    assert!(effects.iter().any(|e| matches!(e, Effect::Driver { session, event: DriverEvent::Trip(t) }
        if *session == a && t.status == TripStatus::DriverAssigned)));
    // The accepted offer is closed: answering it again is refused.
    assert_eq!(w.engine.offer_reply(w.now, a, offer, true), Err(EngineError::UnknownOffer(offer)));
    assert_eq!(w.status(trip), TripStatus::DriverAssigned);
}

#[test]
fn auto_accept_drivers_are_assigned_without_an_offer() {
    let mut w = World::new();
    w.driver_with("auto", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    let effects = w.drain();
    assert!(offers(&effects).is_empty());
    assert_eq!(rider_statuses(&effects), vec![TripStatus::Searching, TripStatus::DriverAssigned]);
    assert_eq!(w.driver_of(trip).as_deref(), Some("auto"));
}

#[test]
fn only_drivers_who_can_serve_are_offered() {
    let mut w = World::new();
    w.driver("taxi-only", 50.0);
    let off = w.driver("off-duty", 10.0);
    w.engine.set_availability(w.now, off, false).unwrap_or_else(|e| panic!("{e}"));
    let s = w.session();
    // No position yet: not offerable.
    let hello = DriverHello {
        driver: did("no-fix"),
        services: ServiceSet::taxi().with(ServiceType::Premium),
        position: None,
        available: true,
        auto_accept: false,
    };
    w.engine.connect_driver(w.now, s, hello).unwrap_or_else(|e| panic!("{e}"));
    w.driver_with("premium", 900.0, ServiceSet::EMPTY.with(ServiceType::Premium), false);
    w.drain();
    w.request_with("r1", "k1", ServiceType::Premium, None);
    assert_eq!(only_offer(&w.drain()).2, "premium");
}

#[test]
fn outside_the_radius_the_trip_waits_then_a_driver_moving_in_gets_it() {
    let mut w = World::new();
    let s = w.driver("far", 6_000.0);
    let trip = w.request("r1");
    assert!(offers(&w.drain()).is_empty());
    w.advance(1_000);
    assert!(offers(&w.drain()).is_empty());
    w.engine
        .ping(w.now, s, Ping { position: north_of_pickup(4_000.0), timestamp: None })
        .unwrap_or_else(|e| panic!("{e}"));
    w.advance(0);
    assert_eq!(only_offer(&w.drain()).2, "far");
    assert_eq!(w.status(trip), TripStatus::Searching);
}

/// The radius as time: a minute at 22 km/h is 367 m, so a driver 400 m
/// off waits, whatever the radius in metres, and gets it at 300 m; under
/// a batch too.
#[test]
fn beyond_the_longest_pickup_eta_the_trip_waits_then_a_driver_moving_in_gets_it() {
    for policy in ["nearest", "batch:1s"] {
        let mut w = World::with(Config {
            max_pickup_eta_ms: 60_000,
            matching: policy.parse().unwrap_or_else(|e: String| panic!("{e}")),
            ..Config::default()
        });
        let s = w.driver("far", 400.0);
        let trip = w.request("r1");
        for _ in 0..3 {
            w.advance(1_000);
            assert!(offers(&w.drain()).is_empty(), "{policy}");
        }
        w.engine
            .ping(w.now, s, Ping { position: north_of_pickup(300.0), timestamp: None })
            .unwrap_or_else(|e| panic!("{e}"));
        w.advance(1_000);
        assert_eq!(only_offer(&w.drain()).2, "far", "{policy}");
        assert_eq!(w.status(trip), TripStatus::Searching);
    }
}

#[test]
fn moves_retry_waiting_trips_at_most_once_per_rematch_interval() {
    let mut w = World::new();
    let s = w.driver("d", 9_000.0);
    w.request("r1");
    w.advance(1_000);
    // A move just after a retry waits for the interval to pass.
    w.engine
        .ping(w.now, s, Ping { position: north_of_pickup(8_000.0), timestamp: None })
        .unwrap_or_else(|e| panic!("{e}"));
    w.advance(0);
    w.engine
        .ping(w.now, s, Ping { position: north_of_pickup(100.0), timestamp: None })
        .unwrap_or_else(|e| panic!("{e}"));
    w.advance(0);
    assert!(offers(&w.drain()).is_empty());
    assert_eq!(w.engine.next_deadline().map(|at| at.since(w.now)), Some(200));
    w.advance(200);
    assert_eq!(only_offer(&w.drain()).2, "d");
}

#[test]
fn a_requests_own_radius_overrides_the_default() {
    let mut w = World::new();
    w.driver("d", 2_000.0);
    w.request_with("r1", "k", ServiceType::Taxi, Some(1_000.0));
    assert!(offers(&w.drain()).is_empty());
    w.request_with("r2", "k", ServiceType::Taxi, Some(3_000.0));
    assert_eq!(only_offer(&w.drain()).2, "d");
}

#[test]
fn a_search_with_no_driver_times_out() {
    let mut w = World::new();
    let trip = w.request("r1");
    w.drain();
    w.advance(59_999);
    assert_eq!(w.status(trip), TripStatus::Searching);
    w.advance(1);
    assert_eq!(rider_statuses(&w.drain()), vec![TripStatus::NoDriverFound]);
    assert_eq!(w.engine.stats().trips_no_driver, 1);
}

#[test]
fn when_drivers_are_scarce_earlier_requests_come_first() {
    let mut w = World::new();
    let first = w.request("r1");
    let second = w.request("r2");
    w.drain();
    w.driver_with("d", 100.0, ServiceSet::taxi(), true);
    w.advance(0);
    assert_eq!(w.driver_of(first).as_deref(), Some("d"));
    assert_eq!(w.status(second), TripStatus::Searching);
}

#[test]
fn a_driver_freed_by_a_decline_goes_to_the_earlier_waiting_request() {
    let mut w = World::new();
    let a = w.driver("a", 100.0);
    let first = w.request_with("r1", "k", ServiceType::Taxi, Some(200.0));
    let (_, offer, _) = only_offer(&w.drain());
    let second = w.request("r2"); // waits: a is busy with an offer
    assert!(offers(&w.drain()).is_empty());
    w.engine.offer_reply(w.now, a, offer, false).unwrap_or_else(|e| panic!("{e}"));
    w.advance(0);
    // a declined the first trip, so the second gets a; the first waits.
    let effects = w.drain();
    assert_eq!(only_offer(&effects).2, "a");
    assert_eq!(w.engine.trip(second).map(|t| t.status), Some(TripStatus::Searching));
    assert_eq!(w.status(first), TripStatus::Searching);
}

#[test]
fn progress_must_come_in_order_and_completing_frees_the_driver() {
    let mut w = World::new();
    let s = w.driver_with("d", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    let out_of_order = w.engine.trip_progress(w.now, s, None, trip, TripStatus::InProgress);
    assert!(matches!(out_of_order, Err(EngineError::OutOfOrder { .. })), "{out_of_order:?}");
    let bad = w.engine.trip_progress(w.now, s, None, trip, TripStatus::Searching);
    assert_eq!(bad, Err(EngineError::NotADriverReport(TripStatus::Searching)));
    for status in [TripStatus::DriverArrived, TripStatus::InProgress, TripStatus::Completed] {
        w.engine.trip_progress(w.now, s, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
    }
    let effects = w.drain();
    assert_eq!(
        rider_statuses(&effects),
        vec![TripStatus::DriverArrived, TripStatus::InProgress, TripStatus::Completed]
    );
    assert_eq!(w.engine.stats().trips_completed, 1);
    // Free again: the next ride goes to the same driver.
    let next = w.request("r2");
    assert_eq!(w.driver_of(next).as_deref(), Some("d"));
    assert_eq!(
        w.engine.trip_progress(w.now, s, None, trip, TripStatus::Completed),
        Err(EngineError::NotDriversTrip(trip))
    );
}

#[test]
fn a_driver_who_cancels_before_pickup_returns_the_trip_to_search() {
    let mut w = World::new();
    let a = w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    w.driver("b", 500.0);
    w.engine.trip_progress(w.now, a, None, trip, TripStatus::Cancelled).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert!(effects.iter().any(|e| matches!(e, Effect::Driver { session, event: DriverEvent::Trip(t) }
        if *session == a && t.status == TripStatus::Cancelled)));
    assert_eq!(rider_statuses(&effects), vec![TripStatus::Searching]);
    // b gets it, and a is never offered it again even though a is nearer.
    assert_eq!(only_offer(&effects).2, "b");
    w.advance(10_000);
    let effects = w.drain();
    assert!(offers(&effects).is_empty(), "{effects:#?}");
}

#[test]
fn a_rider_cancel_withdraws_the_offer_or_frees_the_driver() {
    let mut w = World::new();
    let a = w.driver("a", 100.0);
    let trip = w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.cancel_ride(w.now, trip, "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.status(trip), TripStatus::Cancelled);
    assert_eq!(withdrawn(&w.drain()), vec![(offer, WithdrawReason::RiderCancelled)]);
    assert_eq!(w.engine.offer_reply(w.now, a, offer, true), Err(EngineError::UnknownOffer(offer)));

    let trip = w.request("r2");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, a, offer, true).unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    w.engine.cancel_ride(w.now, trip, "changed my mind").unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert!(effects.iter().any(|e| matches!(e, Effect::Driver { event: DriverEvent::Trip(t), .. }
        if t.status == TripStatus::Cancelled && t.cancel_reason.as_deref() == Some("changed my mind"))));
    // Cancelling again is harmless; after the pickup it is too late.
    assert_eq!(w.engine.cancel_ride(w.now, trip, "").map(|t| t.status), Ok(TripStatus::Cancelled));
    assert_eq!(w.status(trip), TripStatus::Cancelled);
    let trip = w.request("r3");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, a, offer, true).unwrap_or_else(|e| panic!("{e}"));
    for status in [TripStatus::DriverArrived, TripStatus::InProgress] {
        w.engine.trip_progress(w.now, a, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(matches!(w.engine.cancel_ride(w.now, trip, ""), Err(EngineError::TooLateToCancel { .. })));
    assert_eq!(w.engine.cancel_ride(w.now, TripId(999), ""), Err(EngineError::UnknownTrip(TripId(999))));
}

#[test]
fn the_same_request_id_follows_the_same_trip() {
    let mut w = World::new();
    let first = w.request_with("r1", "key", ServiceType::Taxi, None);
    let again = w.request_with("r1", "key", ServiceType::Taxi, None);
    let other_rider = w.request_with("r2", "key", ServiceType::Taxi, None);
    assert_eq!(first, again);
    assert_ne!(first, other_rider);
}

#[test]
fn a_lost_session_declines_its_offer_and_forgets_an_idle_driver() {
    let mut w = World::new();
    let a = w.driver("a", 100.0);
    w.driver("b", 200.0);
    w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.close_session(w.now, a);
    let effects = w.drain();
    assert_eq!(only_offer(&effects).2, "b");
    assert_eq!(w.engine.offer_reply(w.now, a, offer, true), Err(EngineError::SessionNotOpen));
    assert_eq!(w.engine.stats().drivers_connected, 1);
}

/// Roads where every point within 500 m north of the pickup is an island:
/// no road leaves it; elsewhere the drive is the straight line at 10 m/s.
#[derive(Debug)]
struct IslandRoads;

impl crate::roads::Roads for IslandRoads {
    fn legs_to(&self, from: &[LatLng], to: LatLng) -> Vec<Option<crate::roads::Leg>> {
        let island = |p: LatLng| (1.0..500.0).contains(&((p.lat() - PICKUP.0) * 111_195.0));
        from.iter()
            .map(|&p| {
                let metres = p.distance_m(to);
                Some(if island(p) != island(to) {
                    crate::roads::Leg::UNREACHABLE
                } else {
                    crate::roads::Leg { metres, seconds: metres / 10.0 }
                })
            })
            .collect()
    }

    fn top_speed_mps(&self) -> f64 {
        10.0
    }
}

/// A driver no road leads from is never offered the ride, nearest though
/// it is, under nearest-first and a batch; nor counted a fallback. With
/// more island drivers than the candidates ranked by road, the next
/// nearest are asked too.
#[test]
fn a_driver_on_an_island_is_never_offered_the_ride() {
    for policy in ["nearest", "batch:1s"] {
        let mut w = World::with(Config {
            matching: policy.parse().unwrap_or_else(|e: String| panic!("{e}")),
            ..Config::default()
        });
        w.engine.set_roads(std::sync::Arc::new(IslandRoads));
        for n in 0..20 {
            w.driver(&format!("island-{n:02}"), 100.0 + 10.0 * f64::from(n));
        }
        w.driver("mainland", 900.0);
        w.request("r1");
        w.advance(1_000);
        let (_, _, driver) = only_offer(&w.drain());
        assert_eq!(driver, "mainland", "{policy}");
        assert_eq!(w.engine.stats().road_fallbacks, 0, "{policy}");
    }
}

/// The pickup ETA, reckoned again as the car comes, at most every
/// `eta_refresh_ms`, with the car's position; the engine's trip shows the
/// newest; none once the car is there.
#[test]
fn the_pickup_eta_is_reckoned_again_as_the_car_comes() {
    let mut w = World::with(Config { rider_position_interval_ms: 0, eta_refresh_ms: 10_000, ..Config::default() });
    let s = w.driver_with("a", 1_000.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    let first = w.engine.trip(trip).and_then(|t| t.pickup_eta_ms);
    assert_eq!(first, Some(w.engine.config().eta_ms(1_000.0)));
    let etas = |effects: &[Effect]| -> Vec<Option<i64>> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::DriverMoved { pickup_eta_ms, .. } => Some(*pickup_eta_ms),
                _ => None,
            })
            .collect()
    };
    let mut seen = Vec::new();
    for step in 1..=8 {
        w.advance(4_000);
        let metres = 1_000.0 - 100.0 * f64::from(step);
        w.engine
            .ping(w.now, s, Ping { position: north_of_pickup(metres), timestamp: None })
            .unwrap_or_else(|e| panic!("{e}"));
        seen.extend(etas(&w.drain()));
    }
    // Pings at 4 s, 8 s, ... 32 s after the assignment: reckoned at 12 s
    // (700 m to go), 24 s (400 m), and not between.
    let config = w.engine.config().clone();
    let eta = |m: f64| Some(config.eta_ms(north_of_pickup(m).distance_m(p(PICKUP.0, PICKUP.1))));
    assert_eq!(seen, [None, None, eta(700.0), None, None, eta(400.0), None, None], "{seen:?}");
    assert_eq!(w.engine.trip(trip).and_then(|t| t.pickup_eta_ms), eta(400.0));
    w.engine.trip_progress(w.now, s, None, trip, TripStatus::DriverArrived).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        w.advance(10_000);
        w.engine
            .ping(w.now, s, Ping { position: north_of_pickup(0.0), timestamp: None })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(etas(&w.drain()), [None]);
    }
}

#[test]
fn a_driver_on_a_trip_keeps_it_across_a_reconnect() {
    let mut w = World::new();
    let old = w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    // A second session replaces the first, and learns about the trip.
    let new = w.session();
    let hello = DriverHello {
        driver: did("a"),
        services: ServiceSet::taxi(),
        position: None,
        available: true,
        auto_accept: true,
    };
    let current = w.connect(new, hello.clone());
    assert_eq!(current.map(|t| t.id), Some(trip));
    assert!(w.drain().contains(&Effect::EndSession { session: old, reason: SessionEnd::Replaced }));
    assert_eq!(
        w.engine.ping(w.now, old, Ping { position: p(0.0, 0.0), timestamp: None }),
        Err(EngineError::SessionNotOpen)
    );
    // The session drops; the driver keeps the trip and resumes on hello.
    w.engine.close_session(w.now, new);
    assert_eq!(w.status(trip), TripStatus::DriverAssigned);
    let third = w.session();
    let current = w.connect(third, hello);
    assert_eq!(current.map(|t| t.id), Some(trip));
    w.engine.trip_progress(w.now, third, None, trip, TripStatus::DriverArrived).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn riders_see_the_driver_move_at_most_once_a_second() {
    let mut w = World::new();
    let s = w.driver_with("a", 1_000.0, ServiceSet::taxi(), true);
    w.request("r1");
    w.drain();
    for i in 0..10 {
        w.now = w.now + 250;
        let at = north_of_pickup(1_000.0 - f64::from(i) * 10.0);
        w.engine.ping(w.now, s, Ping { position: at, timestamp: None }).unwrap_or_else(|e| panic!("{e}"));
    }
    let moves = driver_moves(&w.drain());
    assert_eq!(moves.len(), 2, "2.5 s of pings at 4 Hz: two updates");
    // Each carries the position of the ping that sent it (the 4th, 1 s
    // after the assignment, and the 8th).
    assert_eq!(moves[0].1, north_of_pickup(970.0));
    assert_eq!(moves[1].1, north_of_pickup(930.0));
}

#[test]
fn a_change_of_the_trip_shows_the_newest_position_though_no_update_was_due() {
    let mut w = World::new();
    let s = w.driver_with("a", 1_000.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    // Pings within the interval send nothing to the rider...
    let at = north_of_pickup(20.0);
    w.now = w.now + 400;
    w.engine.ping(w.now, s, Ping { position: at, timestamp: None }).unwrap_or_else(|e| panic!("{e}"));
    assert!(driver_moves(&w.drain()).is_empty());
    // ...but the trip's next change shows where the car is, to the rider
    // and in the log.
    w.engine.trip_progress(w.now, s, None, trip, TripStatus::DriverArrived).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    let shown = effects.iter().find_map(|e| match e {
        Effect::Rider(t) if t.status == TripStatus::DriverArrived => Some(t.driver_position),
        _ => None,
    });
    assert_eq!(shown, Some(Some(at)));
    let logged = persisted(&effects).last().map(|r| r.trip.driver_position);
    assert_eq!(logged, Some(Some(at)));
    assert_eq!(w.engine.trip(trip).and_then(|t| t.driver_position), Some(at));
}

#[test]
fn an_older_fix_never_moves_a_driver_back() {
    let mut w = World::new();
    let s = w.driver("a", 9_000.0);
    let near = north_of_pickup(100.0);
    w.engine
        .ping(w.now, s, Ping { position: near, timestamp: Some(Timestamp(2_000)) })
        .unwrap_or_else(|e| panic!("{e}"));
    let far = north_of_pickup(9_000.0);
    w.engine
        .ping(w.now, s, Ping { position: far, timestamp: Some(Timestamp(1_000)) })
        .unwrap_or_else(|e| panic!("{e}"));
    w.request("r1");
    assert_eq!(only_offer(&w.drain()).2, "a");
}

#[test]
fn fleets_register_drivers_and_cannot_take_held_ones() {
    let mut w = World::new();
    let own = w.driver("own-app", 5_000.0);
    let fleet = w.session();
    w.engine.connect_fleet(fleet, FleetId::new("f1").unwrap_or_else(|e| panic!("{e}")));
    let update = |id: &str, metres: f64| FleetDriverUpdate {
        driver: did(id),
        position: Some(Ping { position: north_of_pickup(metres), timestamp: None }),
        services: None,
        available: Some(true),
        auto_accept: false,
    };
    assert_eq!(
        w.engine.fleet_update(w.now, fleet, update("own-app", 10.0)),
        Err(EngineError::ForeignDriverName { driver: did("own-app"), why: "fleet f1 names its drivers f1/...".into() })
    );
    w.engine.fleet_update(w.now, fleet, update("f1/1", 100.0)).unwrap_or_else(|e| panic!("{e}"));
    // Nor another fleet's, even one not connected now (no squatting).
    assert!(matches!(
        w.engine.fleet_update(w.now, fleet, update("f2/1", 10.0)),
        Err(EngineError::ForeignDriverName { .. })
    ));
    // A driver's own app cannot take a fleet's driver either.
    let s = w.session();
    let hello = DriverHello {
        driver: did("f1/1"),
        services: ServiceSet::taxi(),
        position: None,
        available: true,
        auto_accept: false,
    };
    assert!(matches!(w.engine.connect_driver(w.now, s, hello), Err(EngineError::ForeignDriverName { .. })));
    w.drain();
    let trip = w.request("r1");
    let (session, offer, driver) = only_offer(&w.drain());
    assert_eq!((session, driver.as_str()), (fleet, "f1/1"));
    // Another fleet, or the driver's own app, cannot answer for it.
    assert_eq!(w.engine.offer_reply(w.now, own, offer, true), Err(EngineError::UnknownOffer(offer)));
    w.engine.offer_reply(w.now, fleet, offer, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        w.engine.trip_progress(w.now, fleet, Some(&did("own-app")), trip, TripStatus::DriverArrived),
        Err(EngineError::NotFleetDriver(did("own-app")))
    );
    w.engine
        .trip_progress(w.now, fleet, Some(&did("f1/1")), trip, TripStatus::DriverArrived)
        .unwrap_or_else(|e| panic!("{e}"));
    // When the fleet session ends its idle drivers go; f1/1 keeps its trip.
    w.engine.fleet_update(w.now, fleet, update("f1/2", 50.0)).unwrap_or_else(|e| panic!("{e}"));
    w.engine.close_session(w.now, fleet);
    assert_eq!(w.engine.stats().drivers_connected, 1);
    w.request("r2");
    assert!(offers(&w.drain()).is_empty());
}

#[test]
fn a_new_fleet_session_takes_over_the_fleets_drivers() {
    let mut w = World::new();
    let f1 = FleetId::new("f").unwrap_or_else(|e| panic!("{e}"));
    let old = w.session();
    w.engine.connect_fleet(old, f1.clone());
    let update = FleetDriverUpdate {
        driver: did("f/x"),
        position: Some(Ping { position: north_of_pickup(10.0), timestamp: None }),
        services: None,
        available: Some(true),
        auto_accept: true,
    };
    w.engine.fleet_update(w.now, old, update).unwrap_or_else(|e| panic!("{e}"));
    let trip = w.request("r1");
    let new = w.session();
    let started = w.engine.connect_fleet(new, f1.clone());
    assert_eq!(started.fleet, Some(f1));
    let effects = w.drain();
    // The old session ends; the new one gets its drivers' trips.
    let ended = effects.iter().position(|e| *e == Effect::EndSession { session: old, reason: SessionEnd::Replaced });
    assert!(ended.is_some(), "{effects:?}");
    let trips: Vec<TripId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Driver { session, event: DriverEvent::Trip(t) } if *session == new => Some(t.id),
            _ => None,
        })
        .collect();
    assert_eq!(trips, vec![trip]);
    w.engine
        .trip_progress(w.now, new, Some(&did("f/x")), trip, TripStatus::DriverArrived)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn nearby_lists_connected_drivers_nearest_first_with_filters() {
    let mut w = World::new();
    w.driver("d1", 100.0);
    w.driver("d2", 300.0);
    w.driver_with("d3", 200.0, ServiceSet::EMPTY.with(ServiceType::Van), false);
    let query = NearbyQuery {
        center: p(PICKUP.0, PICKUP.1),
        limit: 10,
        radius_m: None,
        services: ServiceSet::EMPTY,
        available_only: false,
    };
    let names = |q: &NearbyQuery, w: &World| {
        w.engine.nearby(q).drivers.iter().map(|d| d.driver.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(&query, &w), vec!["d1", "d3", "d2"]);
    let vans = NearbyQuery { services: ServiceSet::EMPTY.with(ServiceType::Van), ..query.clone() };
    assert_eq!(names(&vans, &w), vec!["d3"]);
    let close = NearbyQuery { radius_m: Some(250.0), limit: 1, ..query.clone() };
    assert_eq!(names(&close, &w), vec!["d1"]);
    w.request("r1"); // d1 now has an offer out
    let free = NearbyQuery { available_only: true, ..query };
    assert_eq!(names(&free, &w), vec!["d3", "d2"]);
}

#[test]
fn nearby_examines_a_bounded_number_of_drivers() {
    let mut w = World::new();
    // Many free taxis nearer than the only van.
    for n in 0..NEARBY_MAX_EXAMINED + 500 {
        w.driver(&format!("taxi-{n}"), n as f64 * 0.1);
    }
    w.driver_with("van", 5_000.0, ServiceSet::EMPTY.with(ServiceType::Van), false);
    let anywhere = NearbyQuery {
        center: p(PICKUP.0, PICKUP.1),
        limit: 10,
        radius_m: None,
        services: ServiceSet::EMPTY.with(ServiceType::Van),
        available_only: true,
    };
    let cut = w.engine.nearby(&anywhere);
    assert!(cut.drivers.is_empty(), "{:?}", cut.drivers);
    assert!(cut.exact_within_m < 1_100.0, "exact within {} m", cut.exact_within_m);
    // Without the filter the nearest are found at once, exact everywhere.
    let all = w.engine.nearby(&NearbyQuery { services: ServiceSet::EMPTY, ..anywhere });
    assert_eq!(all.drivers.len(), 10);
    assert_eq!(all.exact_within_m, crate::geo::MAX_DISTANCE_M);
}

#[test]
fn nearby_finds_the_free_driver_behind_many_busy_ones_and_merges_both_indexes() {
    let mut w = World::new();
    // Many off-duty drivers nearer than the only available one: the free
    // index alone is searched for available drivers, so none is examined.
    for n in 0..NEARBY_MAX_EXAMINED + 500 {
        let session = w.driver(&format!("busy-{n}"), 1.0 + n as f64 * 0.1);
        w.engine.set_availability(w.now, session, false).unwrap_or_else(|e| panic!("{e}"));
    }
    w.driver("free", 5_000.0);
    w.driver("nearest", 0.0);
    let query = NearbyQuery {
        center: p(PICKUP.0, PICKUP.1),
        limit: 3,
        radius_m: None,
        services: ServiceSet::EMPTY,
        available_only: true,
    };
    let free = w.engine.nearby(&query);
    let ids: Vec<_> = free.drivers.iter().map(|d| d.driver.as_str().to_owned()).collect();
    assert_eq!(ids, ["nearest", "free"]);
    assert_eq!(free.exact_within_m, crate::geo::MAX_DISTANCE_M);
    // Everyone: the nearest of both indexes, in distance order.
    let all = w.engine.nearby(&NearbyQuery { available_only: false, ..query });
    let ids: Vec<_> = all.drivers.iter().map(|d| (d.driver.as_str().to_owned(), d.available)).collect();
    assert_eq!(ids, [("nearest".to_owned(), true), ("busy-0".to_owned(), false), ("busy-1".to_owned(), false)]);
}

#[test]
fn ended_trips_are_forgotten_after_their_retention() {
    let mut w = World::with(Config { trip_retention_ms: 5_000, ..Config::default() });
    let trip = w.request("r1");
    w.engine.cancel_ride(w.now, trip, "").unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    w.advance(4_999);
    assert!(w.engine.trip(trip).is_some());
    w.advance(1);
    assert!(w.engine.trip(trip).is_none());
    assert!(w.drain().contains(&Effect::TripForgotten(trip)));
    // The request id is free again: a new trip, a new id.
    assert_ne!(w.request("r1"), trip);
}

fn hello_for(id: &str) -> DriverHello {
    DriverHello { driver: did(id), services: ServiceSet::taxi(), position: None, available: true, auto_accept: true }
}

/// What a replay of the log the effects wrote gives back.
fn persisted(effects: &[Effect]) -> Vec<TripRecord> {
    LogRecord::fold(effects.iter().filter_map(|e| match e {
        Effect::Persist(r) => Some(r.clone()),
        _ => None,
    }))
}

#[test]
fn a_dropped_driver_keeps_the_trip_for_the_grace_period_then_it_goes_to_someone_else() {
    let mut w = World::with(Config { driver_grace_ms: 30_000, ..Config::default() });
    let a = w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    w.engine.close_session(w.now, a);
    // Back within the grace period: the trip is still theirs.
    w.advance(29_000);
    let back = w.session();
    let current = w.connect(back, hello_for("a"));
    assert_eq!(current.map(|t| t.id), Some(trip));
    // The reconnect reset the clock: the old timer does nothing.
    w.engine.close_session(w.now, back);
    w.advance(2_000);
    assert_eq!(w.status(trip), TripStatus::DriverAssigned);
    w.driver("b", 500.0);
    w.drain();
    // Gone for the whole period: the rider is told it is searching, and the
    // trip goes to b (a, nearer but gone, is never offered it again).
    w.advance(28_000);
    let effects = w.drain();
    assert_eq!(rider_statuses(&effects), vec![TripStatus::Searching]);
    assert_eq!(only_offer(&effects).2, "b");
    let again = w.session();
    assert_eq!(w.connect(again, hello_for("a")), None);
}

#[test]
fn a_ride_in_progress_stays_with_its_driver_however_long_the_drop() {
    let mut w = World::with(Config { driver_grace_ms: 1_000, ..Config::default() });
    let a = w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    for status in [TripStatus::DriverArrived, TripStatus::InProgress] {
        w.engine.trip_progress(w.now, a, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
    }
    w.engine.close_session(w.now, a);
    w.advance(3_600_000);
    assert_eq!(w.status(trip), TripStatus::InProgress);
    assert_eq!(w.driver_of(trip).as_deref(), Some("a"));
    let back = w.session();
    let current = w.connect(back, hello_for("a"));
    assert_eq!(current.map(|t| t.status), Some(TripStatus::InProgress));
}

#[test]
fn every_change_a_rider_sees_is_persisted_first() {
    let mut w = World::new();
    let a = w.driver("a", 100.0);
    let trip = w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, a, offer, true).unwrap_or_else(|e| panic!("{e}"));
    w.engine.trip_progress(w.now, a, None, trip, TripStatus::DriverArrived).unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    let statuses: Vec<TripStatus> = w
        .log
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(LogRecord::Trip(r)) => Some(r.trip.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, vec![TripStatus::Searching, TripStatus::DriverAssigned, TripStatus::DriverArrived]);
    // A position refresh reaches the rider but is not logged.
    let later = w.now + 5_000;
    w.engine.ping(later, a, Ping { position: p(37.57, 126.98), timestamp: None }).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert!(persisted(&effects).is_empty());
    assert!(rider_statuses(&effects).is_empty(), "no new status");
    assert_eq!(driver_moves(&effects), vec![(trip, p(37.57, 126.98))]);
}

#[test]
fn a_restart_rebuilds_trips_from_the_log() {
    let config = Config { search_timeout_ms: 60_000, driver_grace_ms: 30_000, ..Config::default() };
    let mut w = World::with(config.clone());
    let a = w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let assigned = w.request("r1");
    let early = w.request_with("r2", "k2", ServiceType::Taxi, None);
    w.advance(50_000);
    let late = w.request_with("r3", "k3", ServiceType::Taxi, None);
    w.engine.trip_progress(w.now, a, None, assigned, TripStatus::DriverArrived).unwrap_or_else(|e| panic!("{e}"));
    w.advance(5_000);
    let searching = w.request_with("r4", "k4", ServiceType::Taxi, None);
    w.drain();
    let log = persisted(&w.log);

    // Back 20 s later: `early`'s deadline passed while the engine was down.
    let now = w.now + 20_000;
    let mut back = Engine::restore(config, now, log, 1, 1_000);
    assert_eq!(back.trip(early).map(|t| t.status), Some(TripStatus::NoDriverFound));
    // The assigned trip stays with its driver, who gets it back on hello.
    assert_eq!(back.trip(assigned).map(|t| t.status), Some(TripStatus::DriverArrived));
    let start = back.connect_driver(now, SessionId(77), hello_for("a")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(start.current_trip.map(|t| t.id), Some(assigned));
    // Searches with time left search again, with a full timeout from now.
    back.tick(now + 59_000);
    for trip in [late, searching] {
        assert_eq!(back.trip(trip).map(|t| t.status), Some(TripStatus::Searching));
    }
    // The same request id finds the same trip; a new one gets a new id.
    let retry = RideRequest {
        rider: RiderId::new("r1").unwrap_or_else(|e| panic!("{e}")),
        request_id: RequestId::new("r1").unwrap_or_else(|e| panic!("{e}")),
        pickup: p(PICKUP.0, PICKUP.1),
        dropoff: None,
        service: ServiceType::Taxi,
        max_pickup_distance_m: None,
    };
    let RideTaken { trip, created } = back.request_ride(now, retry.clone());
    assert_eq!((trip.id, created), (assigned, false));
    let fresh = RideRequest { request_id: RequestId::new("new").unwrap_or_else(|e| panic!("{e}")), ..retry };
    let RideTaken { trip, created } = back.request_ride(now, fresh);
    assert!(created && trip.id.0 > searching.0, "{} reused an id", trip.id);
    if let Err(broken) = back.check_invariants() {
        panic!("{broken}");
    }
}

#[test]
fn a_restored_driver_who_never_returns_loses_a_trip_not_yet_started() {
    let config = Config { driver_grace_ms: 30_000, ..Config::default() };
    let mut w = World::with(config.clone());
    w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    w.drain();
    let mut back = Engine::restore(config, w.now, persisted(&w.log), 1, 1_000);
    back.tick(w.now + 30_000);
    assert_eq!(back.trip(trip).map(|t| t.status), Some(TripStatus::Searching));
    let restored: Vec<TripStatus> = back
        .drain_effects()
        .filter_map(|e| match e {
            Effect::Persist(LogRecord::Trip(r)) => Some(r.trip.status),
            _ => None,
        })
        .collect();
    assert_eq!(restored, vec![TripStatus::Searching]);
}

#[test]
fn a_driver_who_declined_is_not_offered_the_trip_again_after_a_restart() {
    let mut w = World::new();
    let a = w.driver("a", 100.0);
    let trip = w.request("r1");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, a, offer, false).unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    let mut back = Engine::restore(w.engine.config().clone(), w.now, persisted(&w.log), 1, 1_000);
    let hello = DriverHello { auto_accept: false, position: Some(north_of_pickup(100.0)), ..hello_for("a") };
    back.connect_driver(w.now, SessionId(90), hello.clone()).unwrap_or_else(|e| panic!("{e}"));
    back.tick(w.now);
    let effects: Vec<Effect> = back.drain_effects().collect();
    assert!(offers(&effects).is_empty(), "{effects:#?}");
    let b = DriverHello { driver: did("b"), position: Some(north_of_pickup(900.0)), ..hello };
    back.connect_driver(w.now, SessionId(91), b).unwrap_or_else(|e| panic!("{e}"));
    back.tick(w.now);
    let effects: Vec<Effect> = back.drain_effects().collect();
    assert_eq!(only_offer(&effects).2, "b");
    assert_eq!(back.trip(trip).map(|t| t.status), Some(TripStatus::Searching));
}

#[test]
fn a_trip_offered_to_the_most_drivers_allowed_ends_no_driver_found_and_logs_each_decline_alone() {
    let mut w = World::with(Config { max_offers_per_trip: 3, ..Config::default() });
    let sessions: Vec<SessionId> = (0..5).map(|n| w.driver(&format!("d{n}"), 100.0 * f64::from(n + 1))).collect();
    let trip = w.request("r1");
    for round in 0..3 {
        let effects = w.drain();
        let offered = offers(&effects);
        assert_eq!(offered.len(), 1, "round {round}");
        let (session, offer, _) = offered[0].clone();
        w.engine.offer_reply(w.now, session, offer, false).unwrap_or_else(|e| panic!("{e}"));
    }
    let effects = w.drain();
    assert!(offers(&effects).is_empty(), "a fourth driver was offered the trip");
    assert_eq!(w.status(trip), TripStatus::NoDriverFound);
    assert!(w.engine.trip(trip).and_then(|t| t.cancel_reason.clone()).is_some_and(|r| r.contains('3')));
    // Each decline was logged as the one driver added, never the whole set.
    let tried: Vec<&LogRecord> = w
        .log
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(r @ LogRecord::Tried { .. }) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(tried.len(), 3);
    let whole_with_tried = w.log.iter().any(|e| {
        matches!(e, Effect::Persist(LogRecord::Trip(r)) if r.trip.status == TripStatus::Searching && !r.tried.is_empty())
    });
    assert!(!whole_with_tried, "a decline rewrote the whole trip");
    // A replay gives back the three drivers who passed.
    let replayed = persisted(&w.log);
    assert_eq!(replayed.iter().find(|r| r.trip.id == trip).map(|r| r.tried.len()), Some(3));
    let _ = sessions;
}

#[test]
fn drivers_past_the_limits_are_refused_and_nobody_else_is_touched() {
    let mut w = World::with(Config { max_drivers: 4, max_drivers_per_fleet: 2, ..Config::default() });
    w.driver("a", 100.0);
    let fleet = w.session();
    w.engine.connect_fleet(fleet, FleetId::new("f").unwrap_or_else(|e| panic!("{e}")));
    let update = |id: &str| FleetDriverUpdate {
        driver: did(id),
        position: Some(Ping { position: north_of_pickup(50.0), timestamp: None }),
        services: None,
        available: Some(true),
        auto_accept: false,
    };
    assert!(w.engine.fleet_update(w.now, fleet, update("f/1")).is_ok());
    assert!(w.engine.fleet_update(w.now, fleet, update("f/2")).is_ok());
    let third = w.engine.fleet_update(w.now, fleet, update("f/3"));
    assert!(matches!(third, Err(EngineError::TooManyDrivers { what: "this fleet", limit: 2 })), "{third:?}");
    w.driver("b", 200.0);
    let session = w.session();
    let over = w.engine.connect_driver(w.now, session, hello_for("c"));
    assert!(matches!(over, Err(EngineError::TooManyDrivers { what: "the server", limit: 4 })), "{over:?}");
    // Those already in are served as before.
    assert!(w.engine.fleet_update(w.now, fleet, update("f/1")).is_ok());
    assert_eq!(w.engine.stats().drivers_connected, 4);
}

#[test]
fn an_operator_can_end_a_ride_in_progress_whose_driver_never_came_back() {
    let mut w = World::new();
    let a = w.driver_with("a", 100.0, ServiceSet::taxi(), true);
    let trip = w.request("r1");
    for status in [TripStatus::DriverArrived, TripStatus::InProgress] {
        w.engine.trip_progress(w.now, a, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
    }
    w.engine.close_session(w.now, a);
    w.advance(10 * 3_600_000);
    assert_eq!(w.status(trip), TripStatus::InProgress, "held for the driver's return");
    // The rider may not, an operator may.
    assert!(w.engine.cancel_ride(w.now, trip, "").is_err());
    w.engine.cancel_by_operator(w.now, trip, "driver unreachable").unwrap_or_else(|e| panic!("{e}"));
    let ended = w.engine.trip(trip).unwrap_or_else(|| panic!("{trip} forgotten"));
    assert_eq!(ended.status, TripStatus::Cancelled);
    assert_eq!(ended.cancel_reason.as_deref(), Some("driver unreachable"));
    // The detached driver is forgotten: the engine holds nothing for it.
    assert_eq!(w.engine.stats().drivers_on_trip, 0);
    assert!(w.engine.check_invariants().is_ok());
    // A long reason is cut to the bound a record keeps.
    let other = w.request("r2");
    let long = "x".repeat(MAX_REASON_BYTES * 4);
    w.engine.cancel_ride(w.now, other, &long).unwrap_or_else(|e| panic!("{e}"));
    let ended = w.engine.trip(other).unwrap_or_else(|| panic!("{other} forgotten"));
    assert_eq!(ended.cancel_reason.map(|r| r.len()), Some(MAX_REASON_BYTES));
}

#[test]
fn the_map_shows_drivers_and_trips_zoomed_in_and_counts_per_cell_zoomed_out() {
    let mut w = World::new();
    let a = w.driver("a", 300.0);
    w.driver("b", 600.0);
    let off = w.driver("off", 900.0);
    w.engine.set_availability(w.now, off, false).unwrap_or_else(|e| panic!("{e}"));
    let trip = w.request("r1");
    let (to, _, _) = only_offer(&w.drain());
    assert_eq!(to, a);
    // A second rider far from every driver waits with no offer.
    let far = RideRequest {
        rider: RiderId::new("r2").unwrap_or_else(|e| panic!("{e}")),
        request_id: RequestId::new("k2").unwrap_or_else(|e| panic!("{e}")),
        pickup: p(35.1, 129.0),
        dropoff: None,
        service: ServiceType::Taxi,
        max_pickup_distance_m: None,
    };
    w.engine.request_ride(w.now, far);
    w.drain();
    assert!(w.engine.check_invariants().is_ok());

    let seoul = |max_drivers| {
        MapQuery::new(p(37.5, 126.9), p(37.7, 127.1), max_drivers, 1_000).unwrap_or_else(|| panic!("box"))
    };
    let view = w.engine.map_view(&seoul(100));
    let shades: Vec<_> = view.drivers.iter().map(|d| (d.driver.to_string(), d.shade, d.trip)).collect();
    assert_eq!(
        shades,
        [
            ("a".to_owned(), Shade::Offered, Some(trip)),
            ("b".to_owned(), Shade::Available, None),
            ("off".to_owned(), Shade::Unavailable, None)
        ]
    );
    assert_eq!(view.trips.len(), 1, "{view:?}");
    assert_eq!((view.trips[0].trip.id, view.trips[0].offered_to.clone()), (trip, Some(did("a"))));
    assert_eq!((view.drivers_in_view, view.waiting_in_view), (3, 1));

    // Zoomed out over the whole country: counts per cell, no drivers.
    let korea = MapQuery::new(p(33.0, 124.0), p(39.0, 131.0), 2, 100).unwrap_or_else(|| panic!("box"));
    let view = w.engine.map_view(&korea);
    assert!(view.drivers.is_empty());
    assert!(view.cells.len() <= 100 && view.cell_deg > CELL_DEG, "{view:?}");
    let mut total = CellCounts::default();
    for cell in &view.cells {
        for (t, n) in total.iter_mut().zip(cell.counts) {
            *t += n;
        }
    }
    // Available, offered, on a trip, unavailable, waiting (the offered
    // trip is not waiting: it searches with an offer out, but it still
    // counts as searching at its pickup).
    assert_eq!(total, [1, 1, 0, 1, 2]);
    assert_eq!(w.engine.stats().drivers_offered, 1);
    assert_eq!(w.engine.stats().drivers_unavailable, 1);

    // A box with nobody in it is empty; corners the wrong way are refused.
    let empty = MapQuery::new(p(10.0, 10.0), p(10.1, 10.1), 100, 100).unwrap_or_else(|| panic!("box"));
    assert_eq!(w.engine.map_view(&empty).drivers_in_view, 0);
    assert!(MapQuery::new(p(37.7, 126.9), p(37.5, 127.1), 1, 1).is_none());
    assert_eq!(w.engine.map_driver(&did("b")).map(|d| d.shade), Some(Shade::Available));
}

/// (trip, driver) of every offer in `effects`.
fn offered_trips(effects: &[Effect]) -> Vec<(TripId, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Driver { event: DriverEvent::Offer(o), .. } => Some((o.trip.id, o.driver.to_string())),
            _ => None,
        })
        .collect()
}

/// Two riders, two drivers: greedy gives the first rider the driver the
/// second needed (400 m + 1,900 m); the batch gives each its better driver
/// (900 m + 600 m). Only held requests are batched: the city must be busy
/// (a rider far away is already waiting), else the first is matched at once.
#[test]
fn a_batch_beats_nearest_first_where_the_first_rider_takes_the_second_ones_driver() {
    let run = |policy: &str| {
        let matching = policy.parse().unwrap_or_else(|e: String| panic!("{e}"));
        let mut w = World::with(Config { matching, ..Config::default() });
        w.driver("d1", 400.0);
        w.driver("d2", -900.0);
        let rider = |w: &mut World, id: &str, north_m: f64| {
            let request = RideRequest {
                rider: RiderId::new(id).unwrap_or_else(|e| panic!("{e}")),
                request_id: RequestId::new(id).unwrap_or_else(|e| panic!("{e}")),
                pickup: north_of_pickup(north_m),
                dropoff: None,
                service: ServiceType::Taxi,
                max_pickup_distance_m: None,
            };
            let trip = w.engine.request_ride(w.now, request).trip.id;
            w.held.extend(w.engine.drain_effects());
            w.advance(100);
            trip
        };
        rider(&mut w, "far", 40_000.0);
        let a = rider(&mut w, "a", 0.0);
        let b = rider(&mut w, "b", 1_000.0);
        let before_window = offered_trips(&w.drain());
        w.advance(2_000);
        let after_window = offered_trips(&w.drain());
        assert!(w.engine.check_invariants().is_ok());
        let mut all = before_window.clone();
        all.extend(after_window);
        let to = |trip| all.iter().find(|(t, _)| *t == trip).map(|(_, d)| d.clone()).unwrap_or_default();
        (before_window.len(), to(a), to(b))
    };
    // Nearest: each rider is offered a driver at once, the first the
    // nearest (d1), leaving the second rider d2, 1.9 km away.
    assert_eq!(run("nearest"), (2, "d1".to_owned(), "d2".to_owned()));
    // Batch: both wait for the window, then each gets its better driver.
    assert_eq!(run("batch:2s"), (0, "d2".to_owned(), "d1".to_owned()));
}

#[test]
fn a_batched_request_after_a_quiet_window_is_not_held() {
    let matching = "batch:2s".parse().unwrap_or_else(|e: String| panic!("{e}"));
    let mut w = World::with(Config { matching, ..Config::default() });
    w.driver("d1", 300.0);
    let trip = w.request("r1");
    assert_eq!(offered_trips(&w.drain()), [(trip, "d1".to_owned())]);
    assert!(w.engine.check_invariants().is_ok());
}

fn broadcast(k: usize) -> World {
    let matching = format!("broadcast:{k}").parse().unwrap_or_else(|e: String| panic!("{e}"));
    World::with(Config { matching, ..Config::default() })
}

/// `broadcast:3`: the three nearest get the offer at once; the first to
/// accept wins, and the other two see it withdrawn as taken, are free
/// again, and may be offered it again later (they did not pass on it).
#[test]
fn a_broadcast_goes_to_the_k_nearest_and_the_first_accept_wins() {
    let mut w = broadcast(3);
    w.driver("a", 100.0);
    let b = w.driver("b", 200.0);
    w.driver("c", 300.0);
    w.driver("far", 900.0);
    let trip = w.request("r1");
    let sent = offers(&w.drain());
    let to: Vec<&str> = sent.iter().map(|(_, _, d)| d.as_str()).collect();
    assert_eq!(to, ["a", "b", "c"]);
    assert!(w.engine.check_invariants().is_ok());
    // b, the second nearest, answers first.
    let (_, b_offer, _) = sent[1].clone();
    w.engine.offer_reply(w.now, b, b_offer, true).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert_eq!(w.driver_of(trip).as_deref(), Some("b"));
    assert_eq!(withdrawn(&effects), vec![(sent[0].1, WithdrawReason::Taken), (sent[2].1, WithdrawReason::Taken)]);
    assert!(w.engine.check_invariants().is_ok());
    // a answering late finds nothing.
    assert!(w.engine.offer_reply(w.now, sent[0].0, sent[0].1, true).is_err());
    let stats = w.engine.stats();
    assert_eq!((stats.drivers_on_trip, stats.drivers_available, stats.offers_withdrawn), (1, 3, 2));
    // Nothing of "taken" is logged as tried: b gives the trip back, and
    // the next broadcast may go to a and c again.
    let log = w.log.iter().filter(|e| matches!(e, Effect::Persist(LogRecord::Tried { .. }))).count();
    assert_eq!(log, 0);
    w.engine.trip_progress(w.now, b, None, trip, TripStatus::Cancelled).unwrap_or_else(|e| panic!("{e}"));
    let again: Vec<String> = offers(&w.drain()).into_iter().map(|o| o.2).collect();
    assert_eq!(again, ["a", "c", "far"]);
}

/// A decline of one broadcast offer waits for the others; only when every
/// one is closed does the trip go out again, to the next drivers.
#[test]
fn a_broadcast_searches_again_only_when_all_its_drivers_said_no() {
    let mut w = broadcast(2);
    let a = w.driver("a", 100.0);
    w.driver("b", 200.0);
    w.driver("c", 300.0);
    let trip = w.request("r1");
    let sent = offers(&w.drain());
    assert_eq!(sent.len(), 2);
    w.engine.offer_reply(w.now, a, sent[0].1, false).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert_eq!(withdrawn(&effects), vec![(sent[0].1, WithdrawReason::Declined)]);
    assert!(offers(&effects).is_empty(), "b still has it: {effects:?}");
    // b lets it lapse: now c gets it (a declined; b let it lapse).
    w.advance(Config::default().offer_timeout_ms);
    let effects = w.drain();
    assert_eq!(withdrawn(&effects), vec![(sent[1].1, WithdrawReason::Expired)]);
    assert_eq!(only_offer(&effects).2, "c");
    // The rider cancels: c's offer is withdrawn.
    w.engine.cancel_ride(w.now, trip, "").unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    assert_eq!(withdrawn(&effects).len(), 1);
    assert_eq!(w.status(trip), TripStatus::Cancelled);
    assert!(w.engine.check_invariants().is_ok());
}

/// An auto-accept driver among a broadcast's drivers takes the trip at
/// once, and nobody else is asked.
#[test]
fn an_auto_accept_driver_in_a_broadcast_takes_it_at_once() {
    let mut w = broadcast(3);
    w.driver("a", 100.0);
    w.driver_with("auto", 200.0, ServiceSet::taxi(), true);
    w.driver("c", 300.0);
    let trip = w.request("r1");
    let effects = w.drain();
    assert!(offers(&effects).is_empty(), "{effects:?}");
    assert_eq!(w.driver_of(trip).as_deref(), Some("auto"));
    assert!(w.engine.check_invariants().is_ok());
}

/// Acceptance-aware ranking: with `accept_weight_m` 1,000 a driver who
/// missed every recent offer ranks like one a kilometre farther, so a
/// nearer driver who ignores offers is passed over for a farther one who
/// takes them; at weight 0 distance alone decides.
#[test]
fn a_driver_who_ignores_offers_is_ranked_behind_one_who_takes_them() {
    let run = |weight: f64| {
        let mut w = World::with(Config { accept_weight_m: weight, ..Config::default() });
        let ignorer = w.driver("ignorer", 100.0);
        // The ignorer declines three rides in a row, each then taken by
        // "keen" (who accepts and finishes them).
        let keen = w.driver("keen", 600.0);
        for n in 0..3 {
            let trip = w.request(&format!("warm{n}"));
            let effects = w.drain();
            let (session, offer, driver) = only_offer(&effects);
            let accept = session == keen;
            w.engine.offer_reply(w.now, session, offer, accept).unwrap_or_else(|e| panic!("{e}"));
            if driver == "ignorer" {
                let (s, o, d) = only_offer(&w.drain());
                assert_eq!(d, "keen");
                w.engine.offer_reply(w.now, s, o, true).unwrap_or_else(|e| panic!("{e}"));
            }
            for status in [TripStatus::DriverArrived, TripStatus::InProgress, TripStatus::Completed] {
                w.engine.trip_progress(w.now, keen, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
            }
            w.drain();
        }
        let _ = ignorer;
        w.request("r1");
        only_offer(&w.drain()).2
    };
    assert_eq!(run(0.0), "ignorer");
    assert_eq!(run(1_000.0), "keen");
}

/// A world with forward dispatch on, and a driver "busy" 300 m north of the
/// pickup carrying a rider to a dropoff 200 m north of it.
fn forward_world() -> (World, SessionId, TripId) {
    let mut w = World::with(Config { forward_dispatch_m: 1_000.0, ..Config::default() });
    let busy = w.driver("busy", 300.0);
    let request = RideRequest {
        rider: RiderId::new("first").unwrap_or_else(|e| panic!("{e}")),
        request_id: RequestId::new("first").unwrap_or_else(|e| panic!("{e}")),
        pickup: north_of_pickup(300.0),
        dropoff: Some(north_of_pickup(200.0)),
        service: ServiceType::Taxi,
        max_pickup_distance_m: None,
    };
    w.engine.request_ride(w.now, request);
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, busy, offer, true).unwrap_or_else(|e| panic!("{e}"));
    let first = w.engine.trips().find(|t| t.rider.as_str() == "first").map(|t| t.id).unwrap_or_else(|| panic!());
    for status in [TripStatus::DriverArrived, TripStatus::InProgress] {
        w.engine.trip_progress(w.now, busy, None, first, status).unwrap_or_else(|e| panic!("{e}"));
    }
    w.drain();
    (w, busy, first)
}

/// Forward dispatch: a free driver 2 km away loses to the driver whose
/// ride ends 200 m from the pickup (100 m to go + 200 m on); once accepted
/// the trip is queued (the rider sees the driver, queued, 300 m); when the
/// ride in progress completes the driver sets off for it.
#[test]
fn a_driver_finishing_a_ride_nearby_gets_the_next_one_queued() {
    let (mut w, busy, first) = forward_world();
    w.driver("far", 2_000.0);
    let trip = w.request("r2");
    let effects = w.drain();
    let (session, offer, driver) = only_offer(&effects);
    assert_eq!((session, driver.as_str()), (busy, "busy"));
    assert!(w.engine.check_invariants().is_ok(), "{:?}", w.engine.check_invariants());
    w.engine.offer_reply(w.now, busy, offer, true).unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    let queued = w.engine.trip(trip).unwrap_or_else(|| panic!());
    assert_eq!(
        (queued.status, queued.driver.as_ref().map(|d| d.as_str()), queued.queued),
        (TripStatus::DriverAssigned, Some("busy"), true)
    );
    assert!((queued.pickup_distance_m.unwrap_or_default() - 300.0).abs() < 1.0, "{queued:?}");
    assert!(w.engine.check_invariants().is_ok(), "{:?}", w.engine.check_invariants());
    // Nothing happens at the queued pickup before the ride ends.
    assert!(w.engine.trip_progress(w.now, busy, None, trip, TripStatus::DriverArrived).is_err());
    // A third rider is not offered to the busy driver again (one queued).
    w.request("r3");
    assert_eq!(only_offer(&w.drain()).2, "far");
    w.engine.trip_progress(w.now, busy, None, first, TripStatus::Completed).unwrap_or_else(|e| panic!("{e}"));
    let effects = w.drain();
    let started = w.engine.trip(trip).unwrap_or_else(|| panic!());
    assert_eq!((started.status, started.queued), (TripStatus::DriverAssigned, false));
    let told: Vec<(TripId, TripStatus, bool)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Driver { session, event: DriverEvent::Trip(t) } if *session == busy => {
                Some((t.id, t.status, t.queued))
            }
            _ => None,
        })
        .collect();
    assert_eq!(told, [(first, TripStatus::Completed, false), (trip, TripStatus::DriverAssigned, false)]);
    assert!(rider_statuses(&effects).contains(&TripStatus::DriverAssigned), "the rider is told it is on its way");
    assert!(w.engine.check_invariants().is_ok(), "{:?}", w.engine.check_invariants());
    w.engine.trip_progress(w.now, busy, None, trip, TripStatus::DriverArrived).unwrap_or_else(|e| panic!("{e}"));
}

/// Off by default; and a free driver nearer than the route via the dropoff
/// wins.
#[test]
fn forward_dispatch_only_when_on_and_shorter_than_every_free_driver() {
    let (mut w, _, _) = forward_world();
    w.driver("near", 250.0);
    w.request("r2");
    assert_eq!(only_offer(&w.drain()).2, "near");

    let mut off = World::new();
    let busy = off.driver("busy", 300.0);
    off.request("first");
    let (_, offer, _) = only_offer(&off.drain());
    off.engine.offer_reply(off.now, busy, offer, true).unwrap_or_else(|e| panic!("{e}"));
    off.request("r2");
    assert!(offers(&off.drain()).is_empty(), "no forward dispatch unless asked for");
}

/// A queued ride given up by the driver, or cancelled by its rider, leaves
/// the ride in progress alone; the rider of a queued ride whose driver's
/// current ride is cancelled by an operator gets the driver at once.
#[test]
fn a_queued_ride_ends_or_starts_cleanly() {
    let (mut w, busy, first) = forward_world();
    let trip = w.request("r2");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, busy, offer, true).unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    w.engine.trip_progress(w.now, busy, None, trip, TripStatus::Cancelled).unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    assert_eq!(w.status(trip), TripStatus::Searching);
    assert_eq!(w.status(first), TripStatus::InProgress);
    assert!(w.engine.check_invariants().is_ok(), "{:?}", w.engine.check_invariants());
    // Searching again, not offered to the driver who gave it up: a new
    // rider is offered to the busy driver, then cancels.
    w.advance(Config::default().search_timeout_ms);
    let third = w.request("r3");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, busy, offer, true).unwrap_or_else(|e| panic!("{e}"));
    w.engine.cancel_ride(w.now, third, "").unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    assert_eq!((w.status(third), w.status(first)), (TripStatus::Cancelled, TripStatus::InProgress));
    assert!(w.engine.check_invariants().is_ok(), "{:?}", w.engine.check_invariants());
    // Queued again; the operator ends the ride in progress: the queued
    // ride starts.
    let fourth = w.request("r4");
    let (_, offer, _) = only_offer(&w.drain());
    w.engine.offer_reply(w.now, busy, offer, true).unwrap_or_else(|e| panic!("{e}"));
    w.engine.cancel_by_operator(w.now, first, "stuck").unwrap_or_else(|e| panic!("{e}"));
    w.drain();
    let started = w.engine.trip(fourth).unwrap_or_else(|| panic!());
    assert_eq!(
        (started.status, started.queued, started.driver.map(|d| d.to_string())),
        (TripStatus::DriverAssigned, false, Some("busy".to_owned()))
    );
    assert!(w.engine.check_invariants().is_ok(), "{:?}", w.engine.check_invariants());
}
