//! Random sequences of commands through every shard's engine, including
//! drivers driving across borders (hand-overs), rides claimed across them,
//! and shards moved (rebuilt from their logs, as when a node dies): after
//! every step each engine's invariants hold, every driver is held by one
//! engine, no driver has two trips in two shards, and every trip a rider
//! was told of is still there.

use std::collections::HashMap;

use dispatch_core::Effect;
use dispatch_core::engine::{Config, DriverEvent, DriverHello, FleetDriverUpdate, Ping, RideRequest};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, OfferId, RequestId, RiderId, SessionId, TripId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::TripStatus;
use dispatch_shard::{LocalShards, ShardMap};
use proptest::prelude::*;

const FLEET: SessionId = SessionId(1_000_000);

#[derive(Debug, Clone)]
enum Op {
    Connect { driver: u8, at: (f64, f64) },
    Move { driver: u8, at: (f64, f64) },
    Request { at: (f64, f64) },
    Reply { pick: usize, accept: bool },
    Progress { pick: usize },
    Cancel { pick: usize },
    Close { driver: u8 },
    MoveShard { pick: usize },
    Tick { ms: u16 },
}

/// A point in a 12 km square around a corner where cells of three
/// shards meet, east of Seoul City Hall.
fn spot() -> impl Strategy<Value = (f64, f64)> {
    (-0.054f64..0.054, -0.068f64..0.068)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..40, spot()).prop_map(|(driver, at)| Op::Connect { driver, at }),
        6 => (0u8..40, spot()).prop_map(|(driver, at)| Op::Move { driver, at }),
        4 => spot().prop_map(|at| Op::Request { at }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, accept)| Op::Reply { pick, accept }),
        3 => any::<usize>().prop_map(|pick| Op::Progress { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (0u8..40).prop_map(|driver| Op::Close { driver }),
        1 => any::<usize>().prop_map(|pick| Op::MoveShard { pick }),
        2 => (1u16..15_000).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn point((dlat, dlng): (f64, f64)) -> LatLng {
    LatLng::new(37.5663 + dlat, 126.9779 + 0.1 + dlng).unwrap_or_else(|e| panic!("{e}"))
}

fn driver_id(n: u8) -> DriverId {
    let id = if n.is_multiple_of(2) { format!("partner/{n}") } else { format!("d-{n}") };
    DriverId::new(&id).unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Default)]
struct Seen {
    /// Trips riders were told of.
    trips: Vec<TripId>,
    /// Open offers: offer, driver.
    offers: Vec<(OfferId, DriverId)>,
    /// Trips with a driver: trip, driver, status.
    rides: HashMap<TripId, (DriverId, TripStatus)>,
    /// Driver apps connected: driver, session.
    apps: HashMap<u8, SessionId>,
}

impl Seen {
    fn note(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Driver { event: DriverEvent::Offer(offer), .. } => self.offers.push((offer.id, offer.driver)),
                Effect::Driver { event: DriverEvent::OfferWithdrawn { offer, .. }, .. } => {
                    self.offers.retain(|(o, _)| *o != offer);
                }
                Effect::Rider(trip) => {
                    if !self.trips.contains(&trip.id) {
                        self.trips.push(trip.id);
                    }
                    match (&trip.driver, trip.status) {
                        (Some(d), s) if s.has_driver() => {
                            self.offers.retain(|(_, o)| o != d);
                            self.rides.insert(trip.id, (d.clone(), s));
                        }
                        _ => {
                            self.rides.remove(&trip.id);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = Config { max_pickup_distance_m: 3_000.0, ..Config::default() };
    let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
    let mut shards = LocalShards::new(&config, map);
    let mut now = Timestamp(1_700_000_000_000);
    let fleet = FleetId::new("partner").unwrap_or_else(|e| panic!("{e}"));
    shards.connect_fleet(now, FLEET, fleet);
    let mut seen = Seen::default();
    let mut next_session = 1;
    let mut requests = 0;
    for (step, op) in ops.into_iter().enumerate() {
        now = now + 10;
        match op {
            Op::Connect { driver, at } | Op::Move { driver, at } => {
                let id = driver_id(driver);
                let position = point(at);
                if driver.is_multiple_of(2) {
                    let update = FleetDriverUpdate {
                        driver: id,
                        position: Some(Ping { position, timestamp: None }),
                        services: None,
                        available: Some(true),
                        auto_accept: false,
                    };
                    let _ = shards.fleet_update(now, FLEET, update);
                } else if let Some(&session) = seen.apps.get(&driver) {
                    let _ = shards.ping(now, session, Ping { position, timestamp: None });
                } else {
                    let session = SessionId(next_session);
                    next_session += 1;
                    let hello = DriverHello {
                        driver: id,
                        services: ServiceSet::taxi(),
                        position: Some(position),
                        available: true,
                        auto_accept: false,
                    };
                    if shards.connect_driver(now, session, hello).is_ok() {
                        seen.apps.insert(driver, session);
                    }
                }
            }
            Op::Request { at } => {
                requests += 1;
                let request = RideRequest {
                    rider: RiderId::new(&format!("r-{requests}")).unwrap_or_else(|e| panic!("{e}")),
                    request_id: RequestId::new("q").unwrap_or_else(|e| panic!("{e}")),
                    pickup: point(at),
                    dropoff: None,
                    service: ServiceType::Taxi,
                    max_pickup_distance_m: None,
                };
                shards.request_ride(now, request);
            }
            Op::Reply { pick, accept } => {
                if !seen.offers.is_empty() {
                    let (offer, driver) = seen.offers[pick % seen.offers.len()].clone();
                    let session = session_of(&seen, &driver);
                    let _ = shards.offer_reply(now, session, offer, accept);
                }
            }
            Op::Progress { pick } => {
                let mut rides: Vec<_> = seen.rides.iter().map(|(t, (d, s))| (*t, d.clone(), *s)).collect();
                rides.sort_by_key(|r| r.0);
                if !rides.is_empty() {
                    let (trip, driver, status) = rides[pick % rides.len()].clone();
                    let next = match status {
                        TripStatus::DriverAssigned => TripStatus::DriverArrived,
                        TripStatus::DriverArrived => TripStatus::InProgress,
                        _ => TripStatus::Completed,
                    };
                    let fleet_driver = driver.is_fleet_name().then_some(&driver);
                    let _ = shards.trip_progress(now, session_of(&seen, &driver), fleet_driver, trip, next);
                }
            }
            Op::Cancel { pick } => {
                if !seen.trips.is_empty() {
                    let _ = shards.cancel_ride(now, seen.trips[pick % seen.trips.len()], "");
                }
            }
            Op::Close { driver } => {
                if let Some(session) = seen.apps.remove(&driver) {
                    shards.close_session(now, session);
                }
            }
            Op::MoveShard { pick } => {
                let busy: Vec<u16> = seen.trips.iter().map(|t| t.shard()).collect();
                let shard = if busy.is_empty() { (pick % 16) as u16 } else { busy[pick % busy.len()] };
                let ended = shards.move_shard(now, shard);
                seen.apps.retain(|_, s| !ended.contains(s));
                // Offers of the moved shard's engine are gone with it.
                seen.offers.retain(|(o, _)| o.shard(16) != shard);
            }
            Op::Tick { ms } => {
                now = now + i64::from(ms);
                shards.tick(now);
            }
        }
        seen.note(shards.drain_effects());
        if let Err(broken) = shards.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step}: {broken}")));
        }
        for trip in &seen.trips {
            prop_assert!(shards.trip(*trip).is_some(), "step {}: trip {} is gone", step, trip);
        }
    }
    Ok(())
}

fn session_of(seen: &Seen, driver: &DriverId) -> SessionId {
    if driver.is_fleet_name() {
        return FLEET;
    }
    seen.apps.iter().find(|(n, _)| driver_id(**n) == *driver).map_or(SessionId(0), |(_, s)| *s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_across_shards_through_hand_overs_claims_and_moves(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}
