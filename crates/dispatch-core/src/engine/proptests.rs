//! Random sequences of everything clients can do, checked after every step:
//! the engine's tables agree (see `check_invariants`), statuses only move
//! forward (but for a driver's cancel before the pickup), an ended trip never
//! changes again, and no trip is lost; every change a rider sees was logged
//! first, and an engine rebuilt from that log at any moment (a restart) has
//! every trip where the live one had it.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::geo::LatLng;
use crate::ids::{DriverId, FleetId, OfferId, RequestId, RiderId, SessionId, TripId};
use crate::service::{ServiceSet, ServiceType};
use crate::trip::{Trip, TripStatus};

const DRIVERS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Hello {
        driver: usize,
        north_m: u16,
        available: bool,
        auto_accept: bool,
        premium: bool,
    },
    FleetUpdate {
        driver: usize,
        north_m: u16,
        available: Option<bool>,
    },
    Ping {
        driver: usize,
        north_m: u16,
    },
    Availability {
        driver: usize,
        available: bool,
    },
    Request {
        rider: u8,
        key: u8,
        premium: bool,
        radius_m: Option<u16>,
        dropoff_m: Option<u16>,
    },
    Reply {
        pick: usize,
        accept: bool,
    },
    Progress {
        driver: usize,
        status: u8,
    },
    /// Arrives and starts every trip the driver holds, in one go (and
    /// completes it, with `finish`).
    Drive {
        driver: usize,
        finish: bool,
    },
    Cancel {
        pick: usize,
    },
    Close {
        driver: usize,
    },
    CloseFleet,
    Tick {
        ms: u16,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DRIVERS;
    prop_oneof![
        1 => (d.clone(), 0..6_000u16, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(driver, north_m, available, auto_accept, premium)| Op::Hello {
                driver,
                north_m,
                available,
                auto_accept,
                premium
            }
        ),
        1 => (d.clone(), 0..6_000u16, proptest::option::of(any::<bool>()))
            .prop_map(|(driver, north_m, available)| Op::FleetUpdate { driver, north_m, available }),
        1 => (d.clone(), 0..6_000u16).prop_map(|(driver, north_m)| Op::Ping { driver, north_m }),
        1 => (d.clone(), any::<bool>()).prop_map(|(driver, available)| Op::Availability { driver, available }),
        1 => (0..4u8, 0..3u8, any::<bool>(), proptest::option::of(100..8_000u16), proptest::option::of(0..6_000u16))
            .prop_map(|(rider, key, premium, radius_m, dropoff_m)| Op::Request { rider, key, premium, radius_m, dropoff_m }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, accept)| Op::Reply { pick, accept }),
        1 => (d.clone(), 0..8u8).prop_map(|(driver, status)| Op::Progress { driver, status }),
        3 => (d.clone(), any::<bool>()).prop_map(|(driver, finish)| Op::Drive { driver, finish }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => d.prop_map(|driver| Op::Close { driver }),
        1 => Just(Op::CloseFleet),
        1 => (0..15_000u16).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Restart),
    ]
}

fn point(north_m: u16) -> LatLng {
    LatLng::new(37.5 + f64::from(north_m) / 111_195.0, 127.0).unwrap_or_else(|e| panic!("{e}"))
}

fn status(n: u8) -> TripStatus {
    [
        TripStatus::Searching,
        TripStatus::DriverAssigned,
        TripStatus::DriverArrived,
        TripStatus::InProgress,
        TripStatus::Completed,
        TripStatus::Cancelled,
        TripStatus::NoDriverFound,
        TripStatus::DriverArrived,
    ][usize::from(n) % 8]
}

/// What the test saw of the world through effects alone.
#[derive(Default)]
struct Seen {
    statuses: HashMap<TripId, TripStatus>,
    /// Open offers and the session each went to.
    offers: Vec<(OfferId, SessionId)>,
    driver_sessions: HashMap<usize, SessionId>,
    /// The trip log: every `Persist`, in order.
    log: Vec<LogRecord>,
}

fn check_effects(seen: &mut Seen, effects: &[Effect]) -> Result<(), TestCaseError> {
    for effect in effects {
        match effect {
            Effect::Persist(record) => seen.log.push(record.clone()),
            Effect::Rider(trip) => {
                if seen.statuses.get(&trip.id) != Some(&trip.status) {
                    let logged = seen.log.iter().rev().find_map(|r| match r {
                        LogRecord::Trip(r) if r.trip.id == trip.id => Some(r.trip.status),
                        _ => None,
                    });
                    prop_assert_eq!(logged, Some(trip.status), "{} told the rider before it was logged", trip.id);
                }
                if let Some(&before) = seen.statuses.get(&trip.id) {
                    prop_assert!(
                        !before.is_terminal() || before == trip.status,
                        "{} changed after {before:?}",
                        trip.id
                    );
                    let back_to_search = trip.status == TripStatus::Searching
                        && matches!(before, TripStatus::DriverAssigned | TripStatus::DriverArrived);
                    prop_assert!(
                        trip.status.rank() >= before.rank() || back_to_search,
                        "{} went from {before:?} to {:?}",
                        trip.id,
                        trip.status
                    );
                }
                seen.statuses.insert(trip.id, trip.status);
            }
            Effect::Driver { session, event: DriverEvent::Offer(offer) } => seen.offers.push((offer.id, *session)),
            Effect::Driver { event: DriverEvent::OfferWithdrawn { offer, .. }, .. } => {
                seen.offers.retain(|(o, _)| o != offer);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Roads along the line the tests' points lie on: the drive is the
/// distance half again, plus 3 km round a river 1 km north of the origin
/// for a drive that crosses it; a point between 5,000 and 5,500 m north is
/// off the roads, and one between 3,000 and 3,500 m on an island no road
/// leaves.
#[derive(Debug)]
struct LineRoads;

impl crate::roads::Roads for LineRoads {
    fn legs_to(&self, from: &[LatLng], to: LatLng) -> Vec<Option<crate::roads::Leg>> {
        let north = |p: LatLng| (p.lat() - 37.5) * 111_195.0;
        let off = |m: f64| (5_000.0..5_500.0).contains(&m);
        from.iter()
            .map(|&p| {
                let (a, b) = (north(p), north(to));
                if off(a) || off(b) {
                    return None;
                }
                let island = |m: f64| (3_000.0..3_500.0).contains(&m);
                if island(a) != island(b) {
                    return Some(crate::roads::Leg::UNREACHABLE);
                }
                let river = if (a < 1_000.0) != (b < 1_000.0) { 3_000.0 } else { 0.0 };
                let metres = (a - b).abs() * 1.5 + river;
                Some(crate::roads::Leg { metres, seconds: metres / (30.0 / 3.6) })
            })
            .collect()
    }

    fn top_speed_mps(&self) -> f64 {
        // Half again the line's length at 30 km/h: never faster than 20.
        20.0 / 3.6
    }
}

fn run(ops: Vec<Op>, policies: &str, tune: impl Fn(&mut Config)) -> Result<(), TestCaseError> {
    run_on(ops, policies, tune, false)
}

/// [`run`], ranking by [`LineRoads`] if `roads`.
fn run_on(ops: Vec<Op>, policies: &str, tune: impl Fn(&mut Config), roads: bool) -> Result<(), TestCaseError> {
    let with_roads = |mut engine: Engine| {
        if roads {
            engine.set_roads(std::sync::Arc::new(LineRoads));
        }
        engine
    };
    // Retry on every move, so that after each tick no waiting trip may have
    // an offerable driver in range (`check_invariants` checks it).
    let mut config = Config {
        rematch_interval_ms: 0,
        driver_grace_ms: 5_000,
        max_offers_per_trip: 2,
        matching: policies.parse().unwrap_or_else(|e: String| panic!("{e}")),
        ..Config::default()
    };
    tune(&mut config);
    let mut engine = with_roads(Engine::new(config.clone()));
    let mut now = Timestamp(1_700_000_000_000);
    let mut seen = Seen::default();
    let mut next_session = 100u64;
    let fleet = SessionId(1);
    engine.connect_fleet(fleet, FleetId::new("fleet").unwrap_or_else(|e| panic!("{e}")));
    let driver_id = |n: usize| DriverId::new(&format!("d{n}")).unwrap_or_else(|e| panic!("{e}"));
    let fleet_driver_id = |n: usize| DriverId::new(&format!("fleet/d{n}")).unwrap_or_else(|e| panic!("{e}"));
    for op in ops {
        match op {
            Op::Hello { driver, north_m, available, auto_accept, premium } => {
                next_session += 1;
                let session = SessionId(next_session);
                let services = if premium { ServiceSet::taxi().with(ServiceType::Premium) } else { ServiceSet::taxi() };
                let hello = DriverHello {
                    driver: driver_id(driver),
                    services,
                    position: Some(point(north_m)),
                    available,
                    auto_accept,
                };
                if engine.connect_driver(now, session, hello).is_ok() {
                    seen.driver_sessions.insert(driver, session);
                }
            }
            Op::FleetUpdate { driver, north_m, available } => {
                let update = FleetDriverUpdate {
                    driver: fleet_driver_id(driver),
                    position: Some(Ping { position: point(north_m), timestamp: None }),
                    services: None,
                    available,
                    auto_accept: false,
                };
                let _ = engine.fleet_update(now, fleet, update);
            }
            Op::Ping { driver, north_m } => {
                if let Some(&s) = seen.driver_sessions.get(&driver) {
                    let _ = engine.ping(now, s, Ping { position: point(north_m), timestamp: None });
                }
            }
            Op::Availability { driver, available } => {
                if let Some(&s) = seen.driver_sessions.get(&driver) {
                    let _ = engine.set_availability(now, s, available);
                }
            }
            Op::Request { rider, key, premium, radius_m, dropoff_m } => {
                let request = RideRequest {
                    rider: RiderId::new(&format!("r{rider}")).unwrap_or_else(|e| panic!("{e}")),
                    request_id: RequestId::new(&format!("k{key}")).unwrap_or_else(|e| panic!("{e}")),
                    pickup: point(0),
                    dropoff: dropoff_m.map(point),
                    service: if premium { ServiceType::Premium } else { ServiceType::Taxi },
                    max_pickup_distance_m: radius_m.map(f64::from),
                };
                let taken = engine.request_ride(now, request);
                if !taken.created {
                    prop_assert!(seen.statuses.contains_key(&taken.trip.id), "a retry found a trip never seen");
                }
            }
            Op::Reply { pick, accept } => {
                if !seen.offers.is_empty() {
                    let (offer, session) = seen.offers[pick % seen.offers.len()];
                    if engine.offer_reply(now, session, offer, accept).is_ok() {
                        seen.offers.retain(|(o, _)| *o != offer);
                    }
                }
            }
            Op::Progress { driver, status: s } => {
                let trips: Vec<TripId> = seen.statuses.keys().copied().collect();
                for trip in trips {
                    let session = seen.driver_sessions.get(&driver).copied().unwrap_or(fleet);
                    let fleet_driver = (session == fleet).then(|| fleet_driver_id(driver));
                    let _ = engine.trip_progress(now, session, fleet_driver.as_ref(), trip, status(s));
                }
            }
            Op::Drive { driver, finish } => {
                let trips: Vec<TripId> = seen.statuses.keys().copied().collect();
                let session = seen.driver_sessions.get(&driver).copied().unwrap_or(fleet);
                let fleet_driver = (session == fleet).then(|| fleet_driver_id(driver));
                for trip in trips {
                    let steps: &[TripStatus] = if finish {
                        &[TripStatus::Completed]
                    } else {
                        &[TripStatus::DriverArrived, TripStatus::InProgress]
                    };
                    for &s in steps {
                        let _ = engine.trip_progress(now, session, fleet_driver.as_ref(), trip, s);
                    }
                }
            }
            Op::Cancel { pick } => {
                let mut trips: Vec<TripId> = seen.statuses.keys().copied().collect();
                trips.sort();
                if !trips.is_empty() {
                    let _ = engine.cancel_ride(now, trips[pick % trips.len()], "");
                }
            }
            Op::Close { driver } => {
                if let Some(s) = seen.driver_sessions.remove(&driver) {
                    engine.close_session(now, s);
                }
            }
            Op::CloseFleet => {
                engine.close_session(now, fleet);
                engine.connect_fleet(fleet, FleetId::new("fleet").unwrap_or_else(|e| panic!("{e}")));
            }
            Op::Tick { ms } => {
                now = now + i64::from(ms);
                engine.tick(now);
            }
            Op::Restart => {
                let first_offer = engine.offers.next_id() + 1_000;
                let before = std::mem::replace(
                    &mut engine,
                    with_roads(Engine::restore(config.clone(), now, LogRecord::fold(seen.log.clone()), 1, first_offer)),
                );
                for (id, live) in before.trips.iter() {
                    // Soft state, not logged: the driver's position, and
                    // the pickup ETA of a car on its way (reckoned again as
                    // it comes; the next ping after the restart does so).
                    let soft = |t: &Trip| Trip {
                        driver_position: None,
                        updated_at: now,
                        pickup_eta_ms: if t.status == TripStatus::DriverAssigned && !t.queued {
                            None
                        } else {
                            t.pickup_eta_ms
                        },
                        ..t.clone()
                    };
                    let back = engine.trip(*id).map(|t| soft(&t));
                    let mut live = soft(&live.trip);
                    if live.queued {
                        // A ride queued behind another searches again.
                        live = Trip {
                            status: TripStatus::Searching,
                            driver: None,
                            pickup_distance_m: None,
                            pickup_eta_ms: None,
                            queued: false,
                            ..live
                        };
                    }
                    prop_assert_eq!(back, Some(live), "trip {} came back different", id);
                }
                prop_assert!(engine.trips.next_id() >= before.trips.next_id(), "trip ids would be reused");
                seen.driver_sessions.clear();
                seen.offers.clear();
                engine.connect_fleet(fleet, FleetId::new("fleet").unwrap_or_else(|e| panic!("{e}")));
            }
        }
        engine.tick(now);
        let effects: Vec<Effect> = engine.drain_effects().collect();
        check_effects(&mut seen, &effects)?;
        // An accepted offer disappears without a withdrawal: keep only open ones.
        seen.offers.retain(|(o, _)| engine.offers.get(*o).is_some());
        if let Err(broken) = engine.check_invariants() {
            return Err(TestCaseError::fail(broken));
        }
        for (trip, status) in &seen.statuses {
            let now_status = engine.trip(*trip).map(|t| t.status);
            prop_assert_eq!(now_status, Some(*status), "trip {} lost or out of step", trip);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, "nearest", |_| {})?;
    }

    /// The same with taxis matched in batches of a second and premium cars
    /// nearest-first, side by side in one engine.
    #[test]
    fn invariants_hold_under_any_sequence_with_batches(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, "batch:1s,premium=nearest", |_| {})?;
    }

    /// Taxis broadcast to three drivers at once and premium cars batched,
    /// with acceptance-aware ranking on: one driver per trip and one trip
    /// per driver still, whoever answers first, and a trip never offered
    /// past its limit (four: a second broadcast is cut to one).
    #[test]
    fn invariants_hold_under_any_sequence_with_broadcasts(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, "broadcast:3,premium=batch:1s", |c| {
            c.max_offers_per_trip = 4;
            c.accept_weight_m = 1_500.0;
        })?;
    }

}

proptest! {
    // More cases: a forward dispatch needs a ride in progress, a request
    // near its dropoff, an accept, then the ride's end, in that order.
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    /// Nearest-first (taxis) and batches (premium) with forward dispatch: a
    /// driver whose ride in progress
    /// ends near a pickup may be offered it next; still one driver per
    /// trip, and one trip per driver but for one explicitly queued behind a
    /// ride in progress, whatever is cancelled, declined, dropped or
    /// restarted.
    #[test]
    fn invariants_hold_under_any_sequence_with_forward_dispatch(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, "nearest,premium=batch:1s", |c| c.forward_dispatch_m = 3_000.0)?;
    }

    /// Ranking by road (a river to go round, points off the roads that
    /// fall back to the straight line), nearest-first and broadcast with
    /// forward dispatch: the same invariants.
    #[test]
    fn invariants_hold_under_any_sequence_ranking_by_road(ops in proptest::collection::vec(op(), 1..120)) {
        run_on(ops, "nearest,premium=broadcast:2", |c| {
            c.forward_dispatch_m = 3_000.0;
            c.road_candidates = 3;
        }, true)?;
    }

    /// Batches costing their candidates by road, with forward dispatch and
    /// a longest pickup of ten minutes.
    #[test]
    fn invariants_hold_under_any_sequence_batching_by_road(ops in proptest::collection::vec(op(), 1..120)) {
        run_on(ops, "batch:1s,premium=nearest", |c| {
            c.forward_dispatch_m = 3_000.0;
            c.road_candidates = 3;
            c.max_pickup_eta_ms = 600_000;
        }, true)?;
    }
}
