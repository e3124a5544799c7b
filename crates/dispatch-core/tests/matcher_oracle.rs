//! The matcher against a brute-force oracle: in a seeded city where drivers
//! differ in availability, service types and busy-ness, every ride request
//! must be offered to the driver the oracle picks (nearest eligible by
//! haversine, ties by id), or to nobody when the oracle finds nobody; under
//! `broadcast:3`, to exactly the oracle's three nearest, in that order.

use std::collections::HashMap;

use dispatch_core::engine::{Config, DriverEvent, DriverHello, Effect, Engine};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, SessionId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_testkit::city::{CityShape, driver_id, ride_request};
use dispatch_testkit::rng;
use rand::Rng;

struct OracleDriver {
    id: DriverId,
    position: LatLng,
    available: bool,
    services: ServiceSet,
    busy: bool,
}

/// The `k` nearest eligible drivers within `radius`, nearest first, ties by
/// id.
fn oracle_pick(drivers: &[OracleDriver], pickup: LatLng, service: ServiceType, radius: f64, k: usize) -> Vec<DriverId> {
    let mut found: Vec<(f64, &DriverId)> = drivers
        .iter()
        .filter(|d| d.available && !d.busy && d.services.contains(service))
        .map(|d| (d.position.distance_m(pickup), &d.id))
        .filter(|(dist, _)| *dist <= radius)
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    found.into_iter().take(k).map(|(_, id)| id.clone()).collect()
}

fn run(seed: u64, city: CityShape, drivers: usize, requests: usize) {
    run_policy(seed, city, drivers, requests, "nearest");
}

fn run_policy(seed: u64, city: CityShape, drivers: usize, requests: usize, policy: &str) {
    let mut rng = rng(seed);
    let matching = policy.parse().unwrap_or_else(|e: String| panic!("{e}"));
    let k = Config { matching, ..Config::default() }.matching.default.fanout();
    let mut engine = Engine::new(Config { matching, ..Config::default() });
    let now = Timestamp(1_700_000_000_000);
    let mut oracle: Vec<OracleDriver> = Vec::new();
    let mut sessions = HashMap::new();
    for n in 0..drivers {
        let mut services = ServiceSet::taxi();
        if rng.random_ratio(1, 4) {
            services = ServiceSet::EMPTY.with(ServiceType::Premium);
        }
        // A few drivers share a spot, so ties by id are exercised.
        let position = if n % 50 == 1 { oracle[n - 1].position } else { city.point(&mut rng) };
        let available = rng.random_ratio(4, 5);
        let hello =
            DriverHello { driver: driver_id(n), services, position: Some(position), available, auto_accept: false };
        let session = SessionId(n as u64 + 1);
        if let Err(e) = engine.connect_driver(now, session, hello) {
            panic!("{e}");
        }
        sessions.insert(driver_id(n), session);
        oracle.push(OracleDriver { id: driver_id(n), position, available, services, busy: false });
    }
    engine.drain_effects().for_each(drop);
    let mut matched = 0;
    for n in 0..requests {
        let mut request = ride_request(&mut rng, &city, n);
        if rng.random_ratio(1, 3) {
            request.service = ServiceType::Premium;
        }
        let radius = [500.0, 2_000.0, 5_000.0][n % 3];
        request.max_pickup_distance_m = Some(radius);
        let want = oracle_pick(&oracle, request.pickup, request.service, radius, k);
        let trip = engine.request_ride(now, request.clone()).trip;
        let effects: Vec<Effect> = engine.drain_effects().collect();
        let offers: Vec<_> = effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Driver { event: DriverEvent::Offer(o), .. } => Some(o),
                _ => None,
            })
            .collect();
        let got: Vec<DriverId> = offers.iter().map(|o| o.driver.clone()).collect();
        assert_eq!(got, want, "seed {seed}, {policy}, request {n} at {}", request.pickup);
        let Some(offer) = offers.first() else {
            let _ = engine.cancel_ride(now, trip.id, "");
            continue;
        };
        matched += 1;
        // Half the matches are accepted and the driver stays busy; the rest
        // are cancelled, freeing the driver.
        if rng.random_bool(0.5) {
            let session = sessions[&offer.driver];
            if let Err(e) = engine.offer_reply(now, session, offer.id, true) {
                panic!("{e}");
            }
            if let Some(d) = oracle.iter_mut().find(|d| d.id == offer.driver) {
                d.busy = true;
            }
        } else if let Err(e) = engine.cancel_ride(now, trip.id, "") {
            panic!("{e}");
        }
        engine.drain_effects().for_each(drop);
        if let Err(broken) = engine.check_invariants() {
            panic!("{broken}");
        }
    }
    assert!(matched > requests / 4, "the city should match most requests, matched {matched}");
}

#[test]
fn matcher_agrees_with_brute_force_in_seoul() {
    run(11, CityShape::seoul(), 3_000, 1_500);
}

/// A broadcast goes to the three nearest eligible drivers, nearest first;
/// the nearest accepts (or the rider cancels), and the other two are free
/// for the next request.
#[test]
fn a_broadcast_goes_to_the_brute_force_three_nearest_in_seoul() {
    run_policy(14, CityShape::seoul(), 3_000, 1_500, "broadcast:3");
}

#[test]
fn matcher_agrees_with_brute_force_across_the_antimeridian() {
    let fiji = dispatch_testkit::geo::point(-16.5, 179.99);
    run(12, CityShape { centre: fiji, radius_m: 8_000.0 }, 1_000, 600);
}

#[test]
fn matcher_agrees_with_brute_force_at_the_pole() {
    let pole = dispatch_testkit::geo::point(89.99, 0.0);
    run(13, CityShape { centre: pole, radius_m: 8_000.0 }, 1_000, 600);
}
