//! What happens at a shard border, step by step: two requests racing for
//! one driver from both sides, a driver driving across mid-offer and
//! mid-ride, and a trip waiting at a border for a driver freed across it.

use std::sync::Arc;

use dispatch_core::engine::{Config, DriverEvent, DriverHello, Ping, RideRequest, ToShard};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, RequestId, RiderId, SessionId, TripId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::territory::Shard;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::TripStatus;
use dispatch_core::{Effect, Engine};
use dispatch_shard::{Home, LocalShards, ShardId, ShardMap};

fn map() -> ShardMap {
    ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"))
}

fn at(lat: f64, lng: f64) -> LatLng {
    LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"))
}

/// A point `east_m` metres east of `from` (small distances).
fn east(from: LatLng, east_m: f64) -> LatLng {
    let per_degree = 111_320.0 * from.lat().to_radians().cos();
    at(from.lat(), from.lng() + east_m / per_degree)
}

/// A border crossed going east from Seoul City Hall: the last point west
/// of it (in shard `a`) and the shard `b` east of it.
fn border(map: &ShardMap) -> (LatLng, Shard, Shard) {
    let mut p = at(37.5663, 126.9779);
    let a = map.shard_of(p);
    loop {
        let next = east(p, 10.0);
        let b = map.shard_of(next);
        if b != a {
            return (p, a.0, b.0);
        }
        p = next;
    }
}

fn hello(id: &str, position: LatLng) -> DriverHello {
    DriverHello {
        driver: DriverId::new(id).unwrap_or_else(|e| panic!("{e}")),
        services: ServiceSet::taxi(),
        position: Some(position),
        available: true,
        auto_accept: false,
    }
}

fn request(n: u32, pickup: LatLng) -> RideRequest {
    RideRequest {
        rider: RiderId::new(&format!("r-{n}")).unwrap_or_else(|e| panic!("{e}")),
        request_id: RequestId::new(&format!("q-{n}")).unwrap_or_else(|e| panic!("{e}")),
        pickup,
        dropoff: None,
        service: ServiceType::Taxi,
        max_pickup_distance_m: Some(2_000.0),
    }
}

/// The drivers offered each trip, in the effects.
fn offers(effects: &[Effect]) -> Vec<(TripId, String, dispatch_core::ids::OfferId)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Driver { event: DriverEvent::Offer(o), .. } => Some((o.trip.id, o.driver.to_string(), o.id)),
            _ => None,
        })
        .collect()
}

/// Every shard's engine, carried by hand so a test can order the
/// messages.
struct ByHand {
    engines: Vec<Engine>,
    effects: Vec<Effect>,
}

impl ByHand {
    fn new(map: ShardMap) -> Self {
        let engines = map
            .all()
            .map(|shard| Engine::new(Config::default()).with_territory(Arc::new(Home { map, shard })))
            .collect();
        Self { engines, effects: Vec::new() }
    }

    fn engine(&mut self, shard: Shard) -> &mut Engine {
        &mut self.engines[usize::from(shard)]
    }

    /// The messages `shard`'s engine has for others.
    fn mail(&mut self, shard: Shard) -> Vec<ToShard> {
        let engine = &mut self.engines[usize::from(shard)];
        let mail = engine.drain_to_shards();
        self.effects.extend(engine.drain_effects());
        mail
    }

    /// Carries one message from `from` and its answer back.
    fn carry(&mut self, now: Timestamp, from: Shard, message: ToShard) {
        match message {
            ToShard::Gather { trip, query, shards } => {
                let answers = shards
                    .into_iter()
                    .flat_map(|s| self.engines[usize::from(s)].candidates(&query).into_iter().map(move |c| (s, c)))
                    .collect();
                self.engine(from).gathered(now, trip, answers);
            }
            ToShard::Claim { trip, driver, service, shard } => {
                let card = self.engine(shard).claim(&driver, service);
                self.engine(from).claimed(now, trip, card).unwrap_or_else(|e| panic!("{e}"));
            }
            ToShard::HandOver { card, shard } => self.engine(shard).adopt(*card).unwrap_or_else(|e| panic!("{e}")),
            ToShard::Gone { .. } => {}
        }
    }

    /// Carries everything until no engine has mail.
    fn settle(&mut self, now: Timestamp) {
        loop {
            let mut all = Vec::new();
            for s in 0..self.engines.len() {
                self.engines[s].tick(now);
                all.extend(self.mail(s as Shard).into_iter().map(|m| (s as Shard, m)));
            }
            if all.is_empty() {
                return;
            }
            for (from, m) in all {
                self.carry(now, from, m);
            }
        }
    }
}

#[test]
fn two_requests_racing_for_one_driver_across_a_border_one_gets_it_the_other_the_next() {
    let map = map();
    let (edge, a, b) = border(&map);
    let mut shards = ByHand::new(map);
    let now = Timestamp(1_000_000);
    // The prize 50 m inside shard a; the next best 400 m inside it.
    let prize = east(edge, -50.0);
    let next = east(edge, -400.0);
    shards.engine(a).connect_driver(now, SessionId(1), hello("prize", prize)).unwrap_or_else(|e| panic!("{e}"));
    shards.engine(a).connect_driver(now, SessionId(2), hello("next", next)).unwrap_or_else(|e| panic!("{e}"));
    shards.settle(now);
    // Shard b's request (60 m across the border) gathers, and its claim on
    // the prize is on its way...
    let across = east(edge, 70.0);
    assert_eq!(map.shard_of(across), ShardId(b));
    shards.engine(b).request_ride(now, request(1, across));
    let gather = shards.mail(b);
    assert!(matches!(gather.as_slice(), [ToShard::Gather { .. }]), "{gather:?}");
    for m in gather {
        shards.carry(now, b, m);
    }
    let claim = shards.mail(b);
    assert!(
        matches!(claim.as_slice(), [ToShard::Claim { driver, shard, .. }] if driver.as_str() == "prize" && *shard == a),
        "{claim:?}"
    );
    // ...when shard a's own request, as near the border, gathers too and
    // offers the prize first.
    let here = east(edge, -10.0);
    let mine = shards.engine(a).request_ride(now, request(2, here)).trip.id;
    for m in shards.mail(a) {
        shards.carry(now, a, m);
    }
    let offered = offers(&shards.engine(a).drain_effects().collect::<Vec<_>>());
    assert_eq!(offered.iter().map(|o| (o.0, o.1.as_str())).collect::<Vec<_>>(), vec![(mine, "prize")]);
    // The claim is refused; shard b looks again and gets the next driver.
    for m in claim {
        shards.carry(now, b, m);
    }
    shards.settle(now);
    let offered = offers(&shards.effects);
    let theirs: Vec<&str> = offered.iter().filter(|o| o.0.shard() == b).map(|o| o.1.as_str()).collect();
    assert_eq!(theirs, vec!["next"], "{offered:?}");
    for engine in &shards.engines {
        engine.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }
    let holders: Vec<usize> =
        (0..16).filter(|&s| shards.engines[s].driver_ids().any(|d| d.as_str() == "prize")).collect();
    assert_eq!(holders, vec![usize::from(a)], "the prize is held once, where its offer is");
}

#[test]
fn a_driver_crossing_mid_offer_and_mid_ride_stays_with_its_trip_then_moves_to_its_shard() {
    let map = map();
    let (edge, a, b) = border(&map);
    let config = Config { offer_timeout_ms: 3_600_000, ..Config::default() };
    let mut shards = LocalShards::new(&config, map);
    let mut now = Timestamp(1_000_000);
    let session = SessionId(7);
    let driver = DriverId::new("crosser").unwrap_or_else(|e| panic!("{e}"));
    shards.connect_driver(now, session, hello("crosser", east(edge, -300.0))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shards.holder_of(&driver), Some(a));
    let trip = shards.request_ride(now, request(1, east(edge, -500.0))).trip.id;
    let effects = shards.drain_effects();
    let (_, _, offer) = offers(&effects).pop().unwrap_or_else(|| panic!("no offer: {effects:?}"));
    // Mid-offer, across the border: the driver stays with the offer's shard.
    now = now + 1_000;
    shards.ping(now, session, Ping { position: east(edge, 200.0), timestamp: None }).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shards.holder_of(&driver), Some(a));
    shards.offer_reply(now, session, offer, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shards.trip(trip).map(|t| t.status), Some(TripStatus::DriverAssigned));
    // Mid-ride, deep into shard b: still with the trip's shard, and the
    // rider follows the car.
    shards.drain_effects();
    for step in 1..=5 {
        now = now + 2_000;
        let p = east(edge, 200.0 + 300.0 * f64::from(step));
        shards.ping(now, session, Ping { position: p, timestamp: None }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shards.holder_of(&driver), Some(a), "step {step}");
        let moved: Vec<_> = shards
            .drain_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::DriverMoved { trip: t, position, .. } if t == trip => Some(position),
                _ => None,
            })
            .collect();
        assert_eq!(moved, vec![p], "step {step}: the rider sees the car where it is");
        shards.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }
    for report in [TripStatus::DriverArrived, TripStatus::InProgress, TripStatus::Completed] {
        shards.trip_progress(now, session, None, trip, report).unwrap_or_else(|e| panic!("{e}"));
    }
    // Free, in shard b's part of the map: handed to shard b.
    assert_eq!(shards.holder_of(&driver), Some(b));
    shards.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    // And shard b offers it a ride of its own, locally.
    let here = shards.request_ride(now, request(2, east(edge, 1_800.0))).trip.id;
    assert_eq!(here.shard(), b);
    let offered = offers(&shards.drain_effects());
    assert_eq!(offered.iter().map(|o| (o.0, o.1.as_str())).collect::<Vec<_>>(), vec![(here, "crosser")]);
    assert_eq!(offered[0].2.shard(16), b);
}

#[test]
fn a_trip_waiting_at_a_border_gets_a_driver_who_comes_on_duty_across_it() {
    let map = map();
    let (edge, a, b) = border(&map);
    let config = Config::default();
    let mut shards = LocalShards::new(&config, map);
    let mut now = Timestamp(1_000_000);
    let session = SessionId(3);
    let mut off_duty = hello("late", east(edge, 300.0));
    off_duty.available = false;
    shards.connect_driver(now, session, off_duty).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shards.holder_of(&DriverId::new("late").unwrap_or_else(|e| panic!("{e}"))), Some(b));
    let trip = shards.request_ride(now, request(1, east(edge, -300.0))).trip.id;
    assert_eq!(trip.shard(), a);
    assert!(offers(&shards.drain_effects()).is_empty());
    now = now + 100;
    shards.set_availability(now, session, true).unwrap_or_else(|e| panic!("{e}"));
    // Shard a hears nothing of it until its waiting trips are retried,
    // at most a retry interval later.
    now = now + config.rematch_interval_ms;
    shards.tick(now);
    let offered = offers(&shards.drain_effects());
    assert_eq!(offered.iter().map(|o| (o.0, o.1.as_str())).collect::<Vec<_>>(), vec![(trip, "late")]);
    shards.check_invariants().unwrap_or_else(|e| panic!("{e}"));
}

/// A pickup whose radius reaches across a border asks the other shard only
/// when a driver there could be nearer than its own: with a driver of its
/// shard close by, nobody is asked; with that driver taken, the other
/// shard's driver wins through a gather and a claim.
#[test]
fn a_pickup_near_a_border_asks_across_only_when_a_driver_there_could_be_nearer() {
    let map = map();
    let (edge, a, b) = border(&map);
    let mut shards = LocalShards::new(&Config::default(), map);
    let now = Timestamp(1_000_000);
    let pickup = east(edge, -400.0);
    assert!(map.shards_within(pickup, 2_000.0).contains(&ShardId(b)), "the pickup's radius reaches shard {b}");
    shards.connect_driver(now, SessionId(1), hello("near", east(pickup, -50.0))).unwrap_or_else(|e| panic!("{e}"));
    shards.connect_driver(now, SessionId(2), hello("across", east(edge, 300.0))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shards.holder_of(&DriverId::new("across").unwrap_or_else(|e| panic!("{e}"))), Some(b));
    shards.request_ride(now, request(1, pickup));
    let offered = offers(&shards.drain_effects());
    assert_eq!(offered.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), ["near"]);
    assert_eq!(shards.carried(), [0, 0, 0], "a pickup with a driver 50 m away asked another shard");
    // With the near driver taken, the one across the border is the best.
    shards.offer_reply(now, SessionId(1), offered[0].2, true).unwrap_or_else(|e| panic!("{e}"));
    shards.request_ride(now, request(2, pickup));
    let offered = offers(&shards.drain_effects());
    assert!(offered.iter().any(|o| o.1 == "across"), "{offered:?}");
    assert_eq!(shards.carried()[..2], [1, 1], "gathers and claims");
    assert_eq!(shards.holder_of(&DriverId::new("across").unwrap_or_else(|e| panic!("{e}"))), Some(a));
}
