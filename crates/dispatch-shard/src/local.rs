//! Every shard's engine in one place, and the routing between them:
//! synchronous and deterministic, so the rules of geo-sharding can be
//! checked against one engine holding the whole map, command by command.
//!
//! [`LocalShards`] takes the commands one engine takes, sends each to the
//! engine it concerns, and carries the engines' messages to one another
//! ([`ToShard`]) until none is left:
//!
//! - a driver's messages go to the engine holding the driver (the
//!   directory), and a new driver to the shard of its position;
//! - a ride request to the shard of its pickup; a trip's commands to the
//!   shard in its id; an offer's reply to the shard in the offer's id;
//! - a fleet's hello and goodbye to every shard;
//! - questions about drivers near a point to the shards the radius
//!   touches, merged.
//!
//! Each shard's trip log is kept folded (the latest record of each trip
//! the engine still keeps), so a shard can be moved: its engine rebuilt
//! from its log alone, as a node taking over a dead node's shard does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dispatch_core::engine::{
    Config, DriverHello, FleetDriverUpdate, Nearby, NearbyQuery, Ping, RideRequest, RideTaken, SessionStart, Stats,
    ToShard, TripRecord,
};
use dispatch_core::error::EngineError;
use dispatch_core::geo::MAX_DISTANCE_M;
use dispatch_core::ids::{DriverId, FleetId, OfferId, SessionId, TripId};
use dispatch_core::territory::Shard;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_core::{Effect, Engine};

use crate::territory::Home;
use crate::{ShardId, ShardMap};

/// Whom a session speaks for.
#[derive(Debug, Clone)]
enum Speaker {
    Driver(DriverId),
    Fleet(FleetId),
}

/// Every shard's engine and the routing between them (see the module
/// docs).
pub struct LocalShards {
    map: ShardMap,
    config: Config,
    engines: Vec<Engine>,
    /// Each shard's trip log, folded: the latest record of every trip.
    logs: Vec<HashMap<TripId, TripRecord>>,
    /// Shard moves so far: each rebuilt engine's offer ids start past the
    /// last one's.
    moves: u64,
    /// Which engine holds each driver it knows of.
    directory: HashMap<DriverId, Shard>,
    sessions: HashMap<SessionId, Speaker>,
    effects: Vec<Effect>,
    /// Messages between engines carried so far, by kind: gathers, claims,
    /// hand-overs.
    carried: [u64; 3],
}

impl LocalShards {
    /// One empty engine per shard of `map`, each with `config`.
    pub fn new(config: &Config, map: ShardMap) -> Self {
        let engines =
            map.all().map(|shard| Engine::new(config.clone()).with_territory(Arc::new(Home { map, shard }))).collect();
        Self {
            map,
            config: config.clone(),
            logs: vec![HashMap::new(); usize::from(map.count())],
            moves: 0,
            engines,
            directory: HashMap::new(),
            sessions: HashMap::new(),
            effects: Vec::new(),
            carried: [0; 3],
        }
    }

    /// Ranks drivers by `roads` in every shard's engine (see
    /// `Engine::set_roads`).
    pub fn set_roads(&mut self, roads: Arc<dyn dispatch_core::roads::Roads>) {
        for engine in &mut self.engines {
            engine.set_roads(Arc::clone(&roads));
        }
    }

    /// The engine of `shard`.
    pub fn engine(&self, shard: Shard) -> Option<&Engine> {
        self.engines.get(usize::from(shard))
    }

    /// The shard holding `driver`, if any does.
    pub fn holder_of(&self, driver: &DriverId) -> Option<Shard> {
        self.directory.get(driver).copied()
    }

    /// Gathers, claims and hand-overs carried so far.
    pub fn carried(&self) -> [u64; 3] {
        self.carried
    }

    /// Takes the effects of every engine since the last call, in the order
    /// the engines produced them (a fleet's session replaced in every
    /// shard ends once).
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        let mut ended = HashSet::new();
        std::mem::take(&mut self.effects)
            .into_iter()
            .filter(|e| match e {
                Effect::EndSession { session, .. } => ended.insert(*session),
                _ => true,
            })
            .collect()
    }

    /// A driver's app says hello: to the engine holding the driver, else
    /// to the shard of its first fix (shard 0 without one; the driver moves
    /// to its shard with its first fix).
    pub fn connect_driver(
        &mut self,
        now: Timestamp,
        session: SessionId,
        hello: DriverHello,
    ) -> Result<SessionStart, EngineError> {
        let id = hello.driver.clone();
        let shard = self.holder_of(&id).unwrap_or_else(|| hello.position.map_or(0, |p| self.map.shard_of(p).0));
        let started = self.engines[usize::from(shard)].connect_driver(now, session, hello);
        if started.is_ok() {
            self.directory.insert(id.clone(), shard);
            self.sessions.insert(session, Speaker::Driver(id));
        }
        self.settle(now);
        started
    }

    /// A fleet's gateway says hello: its session is opened in every shard,
    /// since its drivers may be anywhere.
    pub fn connect_fleet(&mut self, now: Timestamp, session: SessionId, fleet: FleetId) -> SessionStart {
        let mut start = None;
        for engine in &mut self.engines {
            start = Some(engine.connect_fleet(session, fleet.clone()));
        }
        self.sessions.insert(session, Speaker::Fleet(fleet.clone()));
        self.settle(now);
        start.unwrap_or(SessionStart { driver: None, fleet: Some(fleet), current_trip: None })
    }

    /// A position from a driver's own session.
    pub fn ping(&mut self, now: Timestamp, session: SessionId, ping: Ping) -> Result<(), EngineError> {
        let shard = self.session_shard(session)?;
        let done = self.engines[usize::from(shard)].ping(now, session, ping);
        self.settle(now);
        done
    }

    /// A driver goes on or off duty.
    pub fn set_availability(&mut self, now: Timestamp, session: SessionId, available: bool) -> Result<(), EngineError> {
        let shard = self.session_shard(session)?;
        let done = self.engines[usize::from(shard)].set_availability(now, session, available);
        self.settle(now);
        done
    }

    /// One entry of a fleet's batch: to the engine holding the driver, else
    /// to the shard of its position.
    pub fn fleet_update(
        &mut self,
        now: Timestamp,
        session: SessionId,
        update: FleetDriverUpdate,
    ) -> Result<(), EngineError> {
        let id = update.driver.clone();
        let shard =
            self.holder_of(&id).unwrap_or_else(|| update.position.map_or(0, |p| self.map.shard_of(p.position).0));
        let done = self.engines[usize::from(shard)].fleet_update(now, session, update);
        if done.is_ok() {
            self.directory.insert(id, shard);
        }
        self.settle(now);
        done
    }

    /// A session ended: a driver's in its engine, a fleet's in all.
    pub fn close_session(&mut self, now: Timestamp, session: SessionId) {
        match self.sessions.remove(&session) {
            Some(Speaker::Driver(id)) => {
                if let Some(shard) = self.holder_of(&id) {
                    self.engines[usize::from(shard)].close_session(now, session);
                }
                self.forget_gone(|d| *d == id);
            }
            Some(Speaker::Fleet(fleet)) => {
                for engine in &mut self.engines {
                    engine.close_session(now, session);
                }
                self.forget_gone(|d| d.belongs_to(&fleet));
            }
            None => {}
        }
        self.settle(now);
    }

    /// A rider asks: the shard of the pickup takes it.
    pub fn request_ride(&mut self, now: Timestamp, request: RideRequest) -> RideTaken {
        let shard = self.map.shard_of(request.pickup).0;
        let taken = self.engines[usize::from(shard)].request_ride(now, request);
        self.settle(now);
        taken
    }

    /// A rider cancels: the shard in the trip's id.
    pub fn cancel_ride(&mut self, now: Timestamp, trip: TripId, reason: &str) -> Result<Trip, EngineError> {
        let engine = self.engines.get_mut(usize::from(trip.shard())).ok_or(EngineError::UnknownTrip(trip))?;
        let done = engine.cancel_ride(now, trip, reason);
        self.settle(now);
        done
    }

    /// A driver answers an offer: the shard in the offer's id, which holds
    /// the driver while the offer is out.
    pub fn offer_reply(
        &mut self,
        now: Timestamp,
        session: SessionId,
        offer: OfferId,
        accept: bool,
    ) -> Result<(), EngineError> {
        let shard = offer.shard(self.map.count());
        let done = self.engines[usize::from(shard)].offer_reply(now, session, offer, accept);
        self.settle(now);
        done
    }

    /// A driver moves its trip on: the shard in the trip's id, which holds
    /// the driver until the trip ends.
    pub fn trip_progress(
        &mut self,
        now: Timestamp,
        session: SessionId,
        fleet_driver: Option<&DriverId>,
        trip: TripId,
        report: TripStatus,
    ) -> Result<(), EngineError> {
        let engine = self.engines.get_mut(usize::from(trip.shard())).ok_or(EngineError::UnknownTrip(trip))?;
        let done = engine.trip_progress(now, session, fleet_driver, trip, report);
        self.settle(now);
        done
    }

    /// Every engine's due work.
    pub fn tick(&mut self, now: Timestamp) {
        self.settle(now);
    }

    /// A trip by id, from the shard in its id.
    pub fn trip(&self, id: TripId) -> Option<Trip> {
        self.engines.get(usize::from(id.shard()))?.trip(id)
    }

    /// Drivers near a point, from every shard the radius touches, merged
    /// nearest first (ties by id, as one engine orders them).
    pub fn nearby(&self, query: &NearbyQuery) -> Nearby {
        let radius = query.radius_m.unwrap_or(MAX_DISTANCE_M);
        let shards = self.map.shards_within(query.center, radius);
        let mut exact_within_m = radius;
        let mut drivers = Vec::new();
        for ShardId(s) in shards {
            let answer = self.engines[usize::from(s)].nearby(query);
            exact_within_m = exact_within_m.min(answer.exact_within_m);
            drivers.extend(answer.drivers);
        }
        drivers.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m).then_with(|| a.driver.cmp(&b.driver)));
        drivers.retain(|d| d.distance_m <= exact_within_m);
        drivers.truncate(query.limit);
        Nearby { drivers, exact_within_m }
    }

    /// Every engine's counts added up; sessions counted once.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for engine in &self.engines {
            total.add(engine.stats());
        }
        total.fleet_sessions = self.sessions.values().filter(|s| matches!(s, Speaker::Fleet(_))).count() as u64;
        total
    }

    /// Moves `shard` as a node's death moves it: its engine is rebuilt from
    /// its trip log alone. Its trips come back (those searching search
    /// again; drivers on trips wait, detached, for their apps); its other
    /// drivers are gone, and the sessions of drivers' apps it held end, to
    /// be opened again. Fleets' sessions are opened on the new engine, as
    /// the front does for every fleet it serves. Answers the sessions
    /// ended.
    pub fn move_shard(&mut self, now: Timestamp, shard: Shard) -> Vec<SessionId> {
        let Some(slot) = self.engines.get_mut(usize::from(shard)) else { return Vec::new() };
        self.moves += 1;
        let records: Vec<TripRecord> = self.logs[usize::from(shard)].values().cloned().collect();
        let first_offer = self.moves.saturating_mul(1_000_000_000).saturating_add(1);
        let engine = Engine::restore(self.config.clone(), now, records, 1, first_offer)
            .with_territory(Arc::new(Home { map: self.map, shard: ShardId(shard) }));
        *slot = engine;
        let held: HashSet<DriverId> = self.engines[usize::from(shard)].driver_ids().cloned().collect();
        self.directory.retain(|id, s| *s != shard || held.contains(id));
        for id in held {
            self.directory.insert(id, shard);
        }
        let mut ended = Vec::new();
        let directory = &self.directory;
        self.sessions.retain(|session, speaker| match speaker {
            Speaker::Driver(id) if directory.get(id).is_none_or(|&s| s == shard) => {
                ended.push(*session);
                false
            }
            _ => true,
        });
        let fleets: Vec<(SessionId, FleetId)> = self
            .sessions
            .iter()
            .filter_map(|(s, speaker)| match speaker {
                Speaker::Fleet(f) => Some((*s, f.clone())),
                Speaker::Driver(_) => None,
            })
            .collect();
        for (session, fleet) in fleets {
            self.engines[usize::from(shard)].connect_fleet(session, fleet);
        }
        ended.sort_unstable();
        self.settle(now);
        ended
    }

    /// Each engine's invariants, then those between engines: every driver
    /// is held by one engine, the one the directory names, and a driver's
    /// trip is held by the engine holding the driver.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen: HashMap<&DriverId, Shard> = HashMap::new();
        for (shard, engine) in self.engines.iter().enumerate() {
            engine.check_invariants().map_err(|e| format!("shard {shard}: {e}"))?;
            let shard = shard as Shard;
            for id in engine.driver_ids() {
                if let Some(other) = seen.insert(id, shard) {
                    return Err(format!("driver {id} is held by shards {other} and {shard}"));
                }
                if self.directory.get(id) != Some(&shard) {
                    return Err(format!(
                        "driver {id} is in shard {shard}, the directory says {:?}",
                        self.directory.get(id)
                    ));
                }
            }
            for trip in engine.open_trips() {
                if trip.id.shard() != shard {
                    return Err(format!("trip {} of shard {} is held by shard {shard}", trip.id, trip.id.shard()));
                }
                if let Some(driver) = trip.driver.as_ref().filter(|_| trip.status.has_driver())
                    && seen.get(driver).is_some_and(|&s| s != shard)
                {
                    return Err(format!("trip {} in shard {shard} has driver {driver} held elsewhere", trip.id));
                }
            }
        }
        for (id, shard) in &self.directory {
            if seen.get(id) != Some(shard) {
                return Err(format!("the directory names shard {shard} for {id}, which does not hold it"));
            }
        }
        // One trip per driver across every shard (a ride queued behind
        // one in progress, by forward dispatch, aside).
        let mut riding: HashMap<&DriverId, TripId> = HashMap::new();
        for engine in &self.engines {
            for trip in engine.open_trips().filter(|t| t.status.has_driver() && !t.queued) {
                if let Some(driver) = &trip.driver
                    && let Some(other) = riding.insert(driver, trip.id)
                {
                    return Err(format!("driver {driver} has trips {other} and {} in two shards", trip.id));
                }
            }
        }
        Ok(())
    }

    fn session_shard(&self, session: SessionId) -> Result<Shard, EngineError> {
        match self.sessions.get(&session) {
            Some(Speaker::Driver(id)) => self.holder_of(id).ok_or(EngineError::SessionNotOpen),
            Some(Speaker::Fleet(_)) => Err(EngineError::WrongSessionKind("fleet")),
            None => Err(EngineError::SessionNotOpen),
        }
    }

    /// Drops directory entries, among those `which` picks, of drivers no
    /// engine holds any more.
    fn forget_gone(&mut self, which: impl Fn(&DriverId) -> bool) {
        let engines = &self.engines;
        self.directory
            .retain(|id, shard| !which(id) || engines[usize::from(*shard)].driver_ids().any(|held| held == id));
    }

    /// Runs every engine's due work and carries their messages to one
    /// another until there are none.
    fn settle(&mut self, now: Timestamp) {
        loop {
            let mut mail = Vec::new();
            for (shard, engine) in self.engines.iter_mut().enumerate() {
                engine.tick(now);
                for effect in engine.drain_effects() {
                    if let Effect::Persist(record) = &effect {
                        record.clone().fold_into(&mut self.logs[shard]);
                    }
                    self.effects.push(effect);
                }
                mail.extend(engine.drain_to_shards().into_iter().map(|m| (shard as Shard, m)));
            }
            if mail.is_empty() {
                return;
            }
            for (from, message) in mail {
                self.carry(now, from, message);
            }
        }
    }

    fn carry(&mut self, now: Timestamp, from: Shard, message: ToShard) {
        match message {
            ToShard::Gather { trip, query, shards } => {
                self.carried[0] += 1;
                let mut answers = Vec::new();
                for shard in shards {
                    let found = self.engines[usize::from(shard)].candidates(&query);
                    answers.extend(found.into_iter().map(|c| (shard, c)));
                }
                self.engines[usize::from(from)].gathered(now, trip, answers);
            }
            ToShard::Claim { trip, driver, service, shard } => {
                self.carried[1] += 1;
                let card = self.engines[usize::from(shard)].claim(&driver, service);
                if card.is_some() {
                    self.directory.insert(driver, from);
                }
                // A refusal of the card here would mean two engines held
                // one driver; the invariants check catches it.
                let _ = self.engines[usize::from(from)].claimed(now, trip, card);
            }
            ToShard::Gone { driver } => {
                if self.directory.get(&driver) == Some(&from) {
                    self.directory.remove(&driver);
                }
            }
            ToShard::HandOver { card, shard } => {
                self.carried[2] += 1;
                let id = card.id.clone();
                if self.engines[usize::from(shard)].adopt(*card).is_ok() {
                    self.directory.insert(id, shard);
                }
            }
        }
    }
}
