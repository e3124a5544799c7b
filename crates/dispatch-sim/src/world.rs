//! One simulated city: the pure engine driven in virtual time by riders
//! replayed from real trips and drivers who drive straight lines at a
//! detour, or, with a road network, along its roads at their speeds.
//!
//! Event-driven: the next thing to happen is the earliest of the queued
//! events (a request, a driver's answer, an arrival, a drop-off, a ping)
//! and the engine's own next deadline; time jumps there. No clock, no
//! thread, no network: an hour of a city runs in well under a second.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use dispatch_core::Engine;
use dispatch_core::engine::{Config, DriverEvent, DriverHello, Effect, Ping, RideRequest};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, OfferId, RequestId, RiderId, SessionId, TripId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::TripStatus;
use dispatch_road::RoadNetwork;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SimError;
use crate::kpi::{Kpis, Tally};
use crate::trips::TripRow;

/// How the simulated drivers behave and the city works.
#[derive(Debug, Clone)]
pub struct World {
    /// How many drivers.
    pub drivers: usize,
    /// Straight-line speed, metres a second.
    pub speed_mps: f64,
    /// Road distance over straight-line distance.
    pub detour: f64,
    /// The chance a driver accepts an offer, on average over drivers.
    pub accept: f64,
    /// Drivers differ: each driver's own chance is drawn uniformly from
    /// `accept ± accept_spread` (within 0..=1) and kept for the run.
    pub accept_spread: f64,
    /// Seconds a driver takes to answer.
    pub think: Think,
    /// Seconds between a driver's position reports.
    pub ping_s: f64,
    /// The engine's rules (radius, timeouts, policy).
    pub engine: Config,
    /// The seed for everything random.
    pub seed: u64,
    /// Roads the cars drive along (a drive with no route, such as to a
    /// point off the network, goes straight at `speed_mps` and `detour`).
    pub roads: Option<Arc<RoadNetwork>>,
    /// Whether the engine ranks drivers by those roads, or by the straight
    /// line as it does without a road network.
    pub rank_by_road: bool,
}

impl Default for World {
    fn default() -> Self {
        Self {
            drivers: 900,
            speed_mps: 8.0,
            detour: 1.3,
            accept: 1.0,
            accept_spread: 0.0,
            think: Think::Uniform(0.0, 0.0),
            ping_s: 5.0,
            engine: Config { search_timeout_ms: 60_000, ..Config::default() },
            seed: 1,
            roads: None,
            rank_by_road: false,
        }
    }
}

/// How long drivers take to answer an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum Think {
    /// Drawn uniformly from `MIN..MAX` seconds.
    Uniform(f64, f64),
    /// Drawn from these seconds (real request-to-accept intervals).
    Sampled(Vec<f64>),
}

impl Think {
    fn draw(&self, rng: &mut impl Rng) -> f64 {
        match self {
            Self::Uniform(lo, hi) if hi > lo => rng.random_range(*lo..*hi),
            Self::Uniform(lo, _) => *lo,
            Self::Sampled(all) if all.is_empty() => 0.0,
            Self::Sampled(all) => all[rng.random_range(0..all.len())],
        }
    }
}

/// What happens next, at a time in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The `n`th replayed request arrives.
    Request(usize),
    /// A driver answers an offer.
    Reply { driver: usize, offer: OfferId, accept: bool },
    /// A driver reaches the pickup (and the rider gets in).
    Arrive { driver: usize, trip: TripId },
    /// A driver reaches the dropoff.
    Complete { driver: usize, trip: TripId },
    /// A driver reports where it is.
    Ping(usize),
}

/// A driver's leg, for its position at any time: straight, or along the
/// points of a route by road.
#[derive(Debug, Clone)]
struct Leg {
    from: LatLng,
    to: LatLng,
    depart_ms: i64,
    arrive_ms: i64,
    /// The route's points with the metres driven to each, if by road.
    path: Option<Arc<[(LatLng, f64)]>>,
}

impl Leg {
    fn still(at: LatLng) -> Self {
        Self { from: at, to: at, depart_ms: 0, arrive_ms: 0, path: None }
    }

    /// Where the car is at `now_ms`: as far along as the time driven, at
    /// an even speed over the leg.
    fn at(&self, now_ms: i64) -> LatLng {
        if now_ms >= self.arrive_ms || self.arrive_ms <= self.depart_ms {
            return self.to;
        }
        let f = (now_ms - self.depart_ms) as f64 / (self.arrive_ms - self.depart_ms) as f64;
        let Some(path) = &self.path else { return between(self.from, self.to, f) };
        let total = path.last().map_or(0.0, |&(_, m)| m);
        let done = total * f;
        let next = path.partition_point(|&(_, m)| m < done).clamp(1, path.len().saturating_sub(1).max(1));
        match (path.get(next - 1), path.get(next)) {
            (Some(&(a, am)), Some(&(b, bm))) if bm > am => between(a, b, (done - am) / (bm - am)),
            (_, Some(&(b, _))) => b,
            _ => self.to,
        }
    }
}

fn between(a: LatLng, b: LatLng, f: f64) -> LatLng {
    let lat = a.lat() + (b.lat() - a.lat()) * f;
    let lng = a.lng() + (b.lng() - a.lng()) * f;
    LatLng::new(lat, lng).unwrap_or(b)
}

/// A drive: how long, how far, and the way (by road).
struct Drive {
    ms: i64,
    metres: f64,
    path: Option<Arc<[(LatLng, f64)]>>,
}

struct Sim<'a> {
    world: &'a World,
    trips: &'a [TripRow],
    engine: Engine,
    now: i64,
    queue: BinaryHeap<Reverse<(i64, u64, Event)>>,
    seq: u64,
    legs: Vec<Leg>,
    /// Each driver's chance of accepting an offer.
    accepts: Vec<f64>,
    /// Which replayed request each trip is.
    request_of: HashMap<TripId, usize>,
    /// Trips whose assignment is counted (a queued one is counted when
    /// queued, not again when its driver sets off).
    counted: std::collections::HashSet<TripId>,
    rng: ChaCha8Rng,
    tally: Tally,
}

fn session(driver: usize) -> SessionId {
    SessionId(driver as u64 + 1)
}

impl Sim<'_> {
    fn at(&mut self, at_ms: i64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, event)));
    }

    /// The drive from `from` to `to`: along the roads if there are any and
    /// a route, else straight at the detour.
    fn drive(&self, from: LatLng, to: LatLng) -> Drive {
        if let Some(route) = self.world.roads.as_ref().and_then(|roads| roads.route(from, to)) {
            let mut metres = 0.0;
            let mut path = Vec::with_capacity(route.points.len());
            for (n, &p) in route.points.iter().enumerate() {
                if n > 0 {
                    metres += route.points[n - 1].distance_m(p);
                }
                path.push((p, metres));
            }
            let ms = (route.leg.seconds * 1_000.0).round() as i64;
            return Drive { ms, metres: route.leg.metres, path: Some(path.into()) };
        }
        let metres = from.distance_m(to) * self.world.detour;
        Drive { ms: (metres / self.world.speed_mps * 1_000.0).round() as i64, metres, path: None }
    }

    fn set_off(&mut self, driver: usize, from: LatLng, to: LatLng, drive: Drive) {
        self.legs[driver] = Leg { from, to, depart_ms: self.now, arrive_ms: self.now + drive.ms, path: drive.path };
    }

    /// Reads what the engine said and schedules what people do about it.
    fn react(&mut self) {
        let effects: Vec<Effect> = self.engine.drain_effects().collect();
        for effect in effects {
            match effect {
                Effect::Driver { session, event: DriverEvent::Offer(offer) } => {
                    let driver = (session.0 - 1) as usize;
                    self.tally.offers += 1;
                    let think = self.world.think.draw(&mut self.rng);
                    let accept = self.rng.random::<f64>() < self.accepts[driver];
                    let at = self.now + (think * 1_000.0) as i64;
                    self.at(at, Event::Reply { driver, offer: offer.id, accept });
                }
                Effect::Driver { session, event: DriverEvent::Trip(trip) }
                    if trip.status == TripStatus::DriverAssigned && trip.queued =>
                {
                    // Forward dispatch: the driver finishes the ride under
                    // way (its leg ends at that dropoff), then drives on.
                    let driver = (session.0 - 1) as usize;
                    let (to, arrive_ms) = (self.legs[driver].to, self.legs[driver].arrive_ms);
                    let on = self.drive(to, trip.pickup);
                    if let Some(&n) = self.request_of.get(&trip.id) {
                        let waited = self.now - (self.trips[n].at_s * 1_000.0) as i64;
                        let eta = (arrive_ms - self.now).max(0) + on.ms;
                        let route = trip.pickup_distance_m.unwrap_or_default();
                        self.tally.assigned(waited, route, eta, on.metres);
                        self.counted.insert(trip.id);
                    }
                }
                Effect::Driver { session, event: DriverEvent::Trip(trip) }
                    if trip.status == TripStatus::DriverAssigned =>
                {
                    let driver = (session.0 - 1) as usize;
                    let from = self.legs[driver].at(self.now);
                    let drive = self.drive(from, trip.pickup);
                    let (ms, metres) = (drive.ms, drive.metres);
                    self.set_off(driver, from, trip.pickup, drive);
                    if let Some(&n) = self.request_of.get(&trip.id)
                        && self.counted.insert(trip.id)
                    {
                        let waited = self.now - (self.trips[n].at_s * 1_000.0) as i64;
                        self.tally.assigned(waited, from.distance_m(trip.pickup), ms, metres);
                    }
                    self.at(self.now + ms, Event::Arrive { driver, trip: trip.id });
                }
                Effect::Rider(trip) if trip.status == TripStatus::NoDriverFound => self.tally.no_driver += 1,
                _ => {}
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let now = Timestamp(self.now);
        match event {
            Event::Request(n) => {
                let row = self.trips[n];
                let (Ok(rider), Ok(request_id)) = (RiderId::new(&format!("r{n}")), RequestId::new(&format!("q{n}")))
                else {
                    return;
                };
                self.tally.requests += 1;
                let request = RideRequest {
                    rider,
                    request_id,
                    pickup: row.pickup,
                    dropoff: Some(row.dropoff),
                    service: ServiceType::Taxi,
                    max_pickup_distance_m: None,
                };
                let taken = self.engine.request_ride(now, request);
                if taken.created {
                    self.request_of.insert(taken.trip.id, n);
                }
            }
            Event::Reply { driver, offer, accept } => {
                if self.engine.offer_reply(now, session(driver), offer, accept).is_ok() && !accept {
                    self.tally.declined += 1;
                }
            }
            Event::Arrive { driver, trip } => {
                let s = session(driver);
                let arrived = self.engine.trip_progress(now, s, None, trip, TripStatus::DriverArrived);
                let aboard = self.engine.trip_progress(now, s, None, trip, TripStatus::InProgress);
                if arrived.is_err() || aboard.is_err() {
                    return;
                }
                let Some(&n) = self.request_of.get(&trip) else { return };
                let row = self.trips[n];
                let drive = self.drive(row.pickup, row.dropoff);
                let ms = drive.ms;
                self.set_off(driver, row.pickup, row.dropoff, drive);
                self.tally.busy_ms += ms;
                self.at(self.now + ms, Event::Complete { driver, trip });
            }
            Event::Complete { driver, trip } => {
                if self.engine.trip_progress(now, session(driver), None, trip, TripStatus::Completed).is_ok() {
                    self.tally.completed += 1;
                }
            }
            Event::Ping(driver) => {
                let position = self.legs[driver].at(self.now);
                let _ = self.engine.ping(now, session(driver), Ping { position, timestamp: None });
                let every = (self.world.ping_s * 1_000.0) as i64;
                self.at(self.now + every.max(1), Event::Ping(driver));
            }
        }
    }
}

/// The engine of `world`: ranking by its roads if it says so.
fn engine(world: &World) -> Engine {
    let mut engine = Engine::new(world.engine.clone());
    if let (Some(roads), true) = (&world.roads, world.rank_by_road) {
        engine.set_roads(roads.clone());
    }
    engine
}

/// Runs `trips` (those asked for from `start_s` to `end_s`) through a city
/// of `world.drivers` placed at pickups drawn from `seed_points`, and
/// returns the KPIs.
pub fn run(
    world: &World,
    trips: &[TripRow],
    seed_points: &[LatLng],
    start_s: f64,
    end_s: f64,
) -> Result<Kpis, SimError> {
    if seed_points.is_empty() {
        return Err(SimError::Data("no pickups to place drivers at".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(world.seed);
    let start_ms = (start_s * 1_000.0) as i64;
    let mut sim = Sim {
        world,
        trips,
        engine: engine(world),
        now: start_ms,
        queue: BinaryHeap::new(),
        seq: 0,
        legs: Vec::with_capacity(world.drivers),
        accepts: Vec::with_capacity(world.drivers),
        request_of: HashMap::new(),
        counted: std::collections::HashSet::new(),
        rng: ChaCha8Rng::seed_from_u64(world.seed ^ 0xacce97),
        tally: Tally::default(),
    };
    for d in 0..world.drivers {
        let at = seed_points[rng.random_range(0..seed_points.len())];
        sim.legs.push(Leg::still(at));
        let spread = world.accept_spread.abs();
        let own = if spread > 0.0 { world.accept + rng.random_range(-spread..spread) } else { world.accept };
        sim.accepts.push(own.clamp(0.0, 1.0));
        let driver = DriverId::new(&format!("d{d}")).map_err(|e| SimError::Data(e.to_string()))?;
        let hello = DriverHello {
            driver,
            services: ServiceSet::taxi(),
            position: Some(at),
            available: true,
            auto_accept: false,
        };
        sim.engine.connect_driver(Timestamp(start_ms), session(d), hello).map_err(|e| SimError::Data(e.to_string()))?;
        // Pings spread over the interval, as real phones are.
        let phase = rng.random_range(0.0..world.ping_s.max(0.001));
        sim.at(start_ms + (phase * 1_000.0) as i64, Event::Ping(d));
    }
    sim.react();
    for (n, trip) in trips.iter().enumerate() {
        if (start_s..end_s).contains(&trip.at_s) {
            sim.at((trip.at_s * 1_000.0) as i64, Event::Request(n));
        }
    }
    // After the last request, until every search has ended: trips still
    // under way then are not judged further.
    let end_ms = (end_s * 1_000.0) as i64 + world.engine.search_timeout_ms + world.engine.offer_timeout_ms;
    loop {
        let next_event = sim.queue.peek().map(|Reverse((at, _, _))| *at);
        let next_deadline = sim.engine.next_deadline().map(|t| t.0);
        let next = match (next_event, next_deadline) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        if next > end_ms {
            break;
        }
        sim.now = sim.now.max(next);
        while let Some(Reverse((at, _, _))) = sim.queue.peek() {
            if *at > sim.now {
                break;
            }
            let Some(Reverse((_, _, event))) = sim.queue.pop() else { break };
            sim.handle(event);
            sim.react();
        }
        sim.engine.tick(Timestamp(sim.now));
        sim.react();
    }
    let minutes = (end_s - start_s) / 60.0;
    Ok(sim.tally.kpis(world.drivers, (end_s - start_s) * 1_000.0, minutes))
}
