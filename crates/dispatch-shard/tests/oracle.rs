//! Geo-shards against one engine holding the whole map: the same commands,
//! in the same order, to one engine and to sixteen shards' engines over a
//! city that straddles several shard borders. Every offer and every
//! assignment must be the same (the same driver for the same request, at
//! the same distance), while drivers move across borders, decline, let
//! offers lapse, take rides and finish them; a fleet's drivers span every
//! shard. After every step, each engine's invariants hold and every driver
//! is held by exactly one engine.

use std::collections::{BTreeSet, HashMap};

use dispatch_core::engine::{Config, DriverEvent, DriverHello, FleetDriverUpdate, Ping, RideRequest};
use dispatch_core::error::EngineError;
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, OfferId, RequestId, RiderId, SessionId, TripId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_core::{Effect, Engine};
use dispatch_shard::{LocalShards, ShardMap};
use dispatch_testkit::city::CityShape;
use dispatch_testkit::rng;
use rand::Rng;

/// One engine, or every shard's: the commands both take.
enum World {
    One(Box<Engine>),
    Sharded(Box<LocalShards>),
}

macro_rules! both {
    ($world:expr, $method:ident($($arg:expr),*)) => {
        match $world {
            World::One(engine) => {
                let done = engine.$method($($arg),*);
                engine.tick(NOW.with(|n| *n.borrow()));
                done
            }
            World::Sharded(shards) => shards.$method($($arg),*),
        }
    };
}

thread_local! {
    static NOW: std::cell::RefCell<Timestamp> = const { std::cell::RefCell::new(Timestamp(0)) };
}

impl World {
    fn drain(&mut self) -> Vec<Effect> {
        match self {
            World::One(engine) => engine.drain_effects().collect(),
            World::Sharded(shards) => shards.drain_effects(),
        }
    }

    fn tick(&mut self, now: Timestamp) {
        match self {
            World::One(engine) => engine.tick(now),
            World::Sharded(shards) => shards.tick(now),
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            World::One(engine) => engine.check_invariants(),
            World::Sharded(shards) => shards.check_invariants(),
        }
    }
}

/// What a step showed, comparable between worlds: offers and assignments
/// by request id and driver, with the pickup distance.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Offer { request: String, driver: String, distance_m: Option<u64> },
    Trip { request: String, status: TripStatus, driver: Option<String>, distance_m: Option<u64> },
}

/// What each world needs to answer for a request: its trip id, the open
/// offers and the driver it is assigned to.
#[derive(Default)]
struct Ledger {
    trips: HashMap<String, TripId>,
    offers: HashMap<String, Vec<(OfferId, DriverId)>>,
    assigned: HashMap<String, (DriverId, TripStatus)>,
    status: HashMap<String, TripStatus>,
}

impl Ledger {
    fn note(&mut self, effects: &[Effect]) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mm = |m: Option<f64>| m.map(|m| (m * 1000.0).round() as u64);
        for effect in effects {
            match effect {
                Effect::Driver { event: DriverEvent::Offer(offer), .. } => {
                    let request = offer.trip.request_id.to_string();
                    self.trips.insert(request.clone(), offer.trip.id);
                    self.offers.entry(request.clone()).or_default().push((offer.id, offer.driver.clone()));
                    seen.push(Seen::Offer {
                        request,
                        driver: offer.driver.to_string(),
                        distance_m: mm(offer.trip.pickup_distance_m),
                    });
                }
                Effect::Driver { event: DriverEvent::OfferWithdrawn { offer, .. }, .. } => {
                    for open in self.offers.values_mut() {
                        open.retain(|(id, _)| id != offer);
                    }
                }
                Effect::Rider(trip) => {
                    let request = trip.request_id.to_string();
                    self.trips.insert(request.clone(), trip.id);
                    self.status.insert(request.clone(), trip.status);
                    if trip.status.has_driver() {
                        if let Some(driver) = &trip.driver {
                            self.assigned.insert(request.clone(), (driver.clone(), trip.status));
                        }
                        self.offers.remove(&request);
                    } else {
                        self.assigned.remove(&request);
                    }
                    seen.push(Seen::Trip {
                        request,
                        status: trip.status,
                        driver: trip.driver.as_ref().map(ToString::to_string),
                        distance_m: mm(trip.pickup_distance_m),
                    });
                }
                _ => {}
            }
        }
        seen
    }
}

const FLEET_SESSION: SessionId = SessionId(1_000_000);

fn fleet() -> FleetId {
    FleetId::new("partner").unwrap_or_else(|e| panic!("{e}"))
}

struct Driver {
    id: DriverId,
    session: SessionId,
    in_fleet: bool,
    at: LatLng,
}

fn step_toward(rng: &mut impl Rng, from: LatLng, city: &CityShape) -> LatLng {
    // A hop of up to ~2 km, kept in the city.
    let lat = from.lat() + rng.random_range(-0.018..0.018);
    let lng = from.lng() + rng.random_range(-0.022..0.022);
    let p = LatLng::new(lat, lng).unwrap_or(from);
    if p.distance_m(city.centre) > city.radius_m { from } else { p }
}

fn run(seed: u64, policy: &str, accept_weight_m: f64, steps: usize) -> [u64; 3] {
    run_with(seed, policy, accept_weight_m, steps, None)
}

/// A grid of streets 250 m apart over the city, for ranking by road.
fn city_roads() -> std::sync::Arc<dyn dispatch_core::roads::Roads> {
    let city = CityShape::seoul();
    let xml = dispatch_road::grid::grids_xml(&[(city.centre, 13_000.0)], 250.0);
    let network = dispatch_road::from_xml(&xml, dispatch_road::DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    std::sync::Arc::new(network)
}

fn run_with(
    seed: u64,
    policy: &str,
    accept_weight_m: f64,
    steps: usize,
    roads: Option<std::sync::Arc<dyn dispatch_core::roads::Roads>>,
) -> [u64; 3] {
    let matching = policy.parse().unwrap_or_else(|e: String| panic!("{e}"));
    // Offers and searches never lapse here: each step's command and its
    // consequences are the only thing happening (see the module docs).
    let config = Config {
        matching,
        accept_weight_m,
        max_pickup_distance_m: 3_000.0,
        offer_timeout_ms: 24 * 3_600_000,
        search_timeout_ms: 24 * 3_600_000,
        ..Config::default()
    };
    let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
    let mut worlds =
        [World::One(Box::new(Engine::new(config.clone()))), World::Sharded(Box::new(LocalShards::new(&config, map)))];
    if let Some(roads) = roads {
        for w in &mut worlds {
            match w {
                World::One(engine) => engine.set_roads(std::sync::Arc::clone(&roads)),
                World::Sharded(shards) => shards.set_roads(std::sync::Arc::clone(&roads)),
            }
        }
    }
    let mut ledgers = [Ledger::default(), Ledger::default()];
    // Around Seoul City Hall, 12 km: several cells, several shards.
    let city = CityShape { radius_m: 12_000.0, ..CityShape::seoul() };
    let mut rng = rng(seed);
    let mut now = Timestamp(1_700_000_000_000);
    NOW.with(|n| *n.borrow_mut() = now);

    let mut drivers = Vec::new();
    for w in &mut worlds {
        match w {
            World::One(engine) => {
                engine.connect_fleet(FLEET_SESSION, fleet());
            }
            World::Sharded(shards) => {
                shards.connect_fleet(now, FLEET_SESSION, fleet());
            }
        }
    }
    for n in 0..300 {
        let in_fleet = n % 3 == 0;
        let id = if in_fleet { format!("partner/{n:04}") } else { format!("d-{n:04}") };
        let id = DriverId::new(&id).unwrap_or_else(|e| panic!("{e}"));
        let at = city.point(&mut rng);
        let services = if n % 7 == 0 { ServiceSet::EMPTY.with(ServiceType::Premium) } else { ServiceSet::taxi() };
        let session = if in_fleet { FLEET_SESSION } else { SessionId(n as u64 + 1) };
        for w in &mut worlds {
            if in_fleet {
                let update = FleetDriverUpdate {
                    driver: id.clone(),
                    position: Some(Ping { position: at, timestamp: None }),
                    services: Some(services),
                    available: Some(true),
                    auto_accept: false,
                };
                both!(w, fleet_update(now, session, update)).unwrap_or_else(|e| panic!("{e}"));
            } else {
                let hello = DriverHello {
                    driver: id.clone(),
                    services,
                    position: Some(at),
                    available: true,
                    auto_accept: false,
                };
                both!(w, connect_driver(now, session, hello)).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        drivers.push(Driver { id, session, in_fleet, at });
    }
    if let World::Sharded(shards) = &worlds[1] {
        let held: BTreeSet<u16> = drivers.iter().filter_map(|d| shards.holder_of(&d.id)).collect();
        assert!(held.len() >= 4, "the city spans only shards {held:?}");
    }
    for (w, l) in worlds.iter_mut().zip(&mut ledgers) {
        let effects = w.drain();
        l.note(&effects);
    }

    let mut requests = 0usize;
    for step in 0..steps {
        now = now + 700;
        NOW.with(|n| *n.borrow_mut() = now);
        let roll = rng.random_range(0..100);
        // The same command to both worlds.
        let mut results: Vec<Result<(), EngineError>> = Vec::new();
        if roll < 35 {
            let d = &mut drivers[rng.random_range(0..300)];
            d.at = step_toward(&mut rng, d.at, &city);
            let ping = Ping { position: d.at, timestamp: None };
            for w in &mut worlds {
                results.push(if d.in_fleet {
                    let update = FleetDriverUpdate {
                        driver: d.id.clone(),
                        position: Some(ping),
                        services: None,
                        available: None,
                        auto_accept: false,
                    };
                    both!(w, fleet_update(now, FLEET_SESSION, update))
                } else {
                    both!(w, ping(now, d.session, ping))
                });
            }
        } else if roll < 60 {
            requests += 1;
            let request = RideRequest {
                rider: RiderId::new(&format!("r-{requests}")).unwrap_or_else(|e| panic!("{e}")),
                request_id: RequestId::new(&format!("q-{requests}")).unwrap_or_else(|e| panic!("{e}")),
                pickup: city.point(&mut rng),
                dropoff: Some(city.point(&mut rng)),
                service: if rng.random_ratio(1, 6) { ServiceType::Premium } else { ServiceType::Taxi },
                max_pickup_distance_m: None,
            };
            for w in &mut worlds {
                both!(w, request_ride(now, request.clone()));
            }
        } else if roll < 85 {
            // A driver answers an open offer: accept (most), or decline.
            let open: Vec<String> = {
                let mut open: Vec<String> =
                    ledgers[0].offers.iter().filter(|(_, o)| !o.is_empty()).map(|(r, _)| r.clone()).collect();
                open.sort();
                open
            };
            if !open.is_empty() {
                let request = &open[rng.random_range(0..open.len())];
                let accept = rng.random_ratio(2, 3);
                // Of a broadcast's drivers, the same one answers in both.
                let mut asked: Vec<&DriverId> = ledgers[0].offers[request].iter().map(|(_, d)| d).collect();
                asked.sort();
                let driver = asked[rng.random_range(0..asked.len())].clone();
                for (w, l) in worlds.iter_mut().zip(&ledgers) {
                    let (offer, driver) = l.offers[request]
                        .iter()
                        .find(|(_, d)| *d == driver)
                        .cloned()
                        .unwrap_or_else(|| panic!("step {step}: no offer of {request} to {driver}"));
                    let session = drivers.iter().find(|d| d.id == driver).map(|d| d.session).unwrap_or(FLEET_SESSION);
                    results.push(both!(w, offer_reply(now, session, offer, accept)));
                }
            }
        } else {
            // A driver moves a ride on: arrived, started, completed.
            let mut rides: Vec<String> = ledgers[0].assigned.keys().cloned().collect();
            rides.sort();
            if !rides.is_empty() {
                let request = &rides[rng.random_range(0..rides.len())];
                for (w, l) in worlds.iter_mut().zip(&ledgers) {
                    let (driver, status) = l.assigned[request].clone();
                    let next = match status {
                        TripStatus::DriverAssigned => TripStatus::DriverArrived,
                        TripStatus::DriverArrived => TripStatus::InProgress,
                        _ => TripStatus::Completed,
                    };
                    let d = drivers.iter().find(|d| d.id == driver).unwrap_or_else(|| panic!("{driver}"));
                    let fleet_driver = d.in_fleet.then_some(&d.id);
                    let trip = l.trips[request];
                    results.push(both!(w, trip_progress(now, d.session, fleet_driver, trip, next)));
                }
            }
        }
        for w in &mut worlds {
            w.tick(now);
        }
        if results.len() == 2 {
            assert_eq!(results[0].is_ok(), results[1].is_ok(), "step {step}: {results:?}");
        }
        let mut seen = Vec::new();
        for (w, l) in worlds.iter_mut().zip(&mut ledgers) {
            let effects = w.drain();
            let mut s = l.note(&effects);
            s.sort_by_key(|seen| format!("{seen:?}"));
            seen.push(s);
            w.check().unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
        assert_eq!(seen[0], seen[1], "step {step} (seed {seed}): one engine saw the first, the shards the second");
        // A rider nobody can be found for now gives up: no trip waits
        // across steps (see the module docs).
        let mut waiting: Vec<String> = ledgers[0]
            .status
            .iter()
            .filter(|(r, s)| **s == TripStatus::Searching && ledgers[0].offers.get(*r).is_none_or(Vec::is_empty))
            .map(|(r, _)| r.clone())
            .collect();
        waiting.sort();
        for request in waiting {
            for (w, l) in worlds.iter_mut().zip(&mut ledgers) {
                let trip = l.trips[&request];
                both!(w, cancel_ride(now, trip, "nobody near")).unwrap_or_else(|e| panic!("{e}"));
                let effects = w.drain();
                l.note(&effects);
            }
        }
    }
    let World::Sharded(shards) = &worlds[1] else { unreachable!() };
    let trips: Vec<Trip> = ledgers[1].trips.values().filter_map(|&id| shards.trip(id)).collect();
    assert!(trips.iter().map(|t| t.id.shard()).collect::<BTreeSet<_>>().len() >= 4, "trips in few shards");
    shards.carried()
}

#[test]
fn nearest_across_borders_is_the_nearest_one_engine_picks() {
    let mut carried = [0u64; 3];
    for seed in 1..=4 {
        let c = run(seed, "nearest", 0.0, 3_000);
        for i in 0..3 {
            carried[i] += c[i];
        }
    }
    // The borders were crossed: trips asked other shards, drivers were
    // claimed across a border and handed over as they drove.
    assert!(carried[0] > 1_000 && carried[1] > 150 && carried[2] > 150, "gathers, claims, hand-overs: {carried:?}");
}

#[test]
fn broadcast_across_borders_offers_the_same_three() {
    run(11, "broadcast:3", 0.0, 2_000);
}

#[test]
fn acceptance_aware_ranking_across_borders_ranks_as_one_engine() {
    run(21, "nearest", 500.0, 2_000);
}

#[test]
fn ranking_by_road_across_borders_ranks_as_one_engine() {
    let roads = city_roads();
    let mut carried = [0u64; 3];
    for (seed, policy) in [(31, "nearest"), (32, "broadcast:3")] {
        let c = run_with(seed, policy, 0.0, 2_000, Some(std::sync::Arc::clone(&roads)));
        for i in 0..3 {
            carried[i] += c[i];
        }
    }
    assert!(carried[0] > 300 && carried[1] > 30, "gathers, claims, hand-overs: {carried:?}");
    run_with(33, "nearest", 500.0, 1_500, Some(roads));
}
