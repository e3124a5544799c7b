//! The engine: one owner of the driver index and of every trip.
//!
//! Inputs are method calls that take the current time; outputs are the
//! [`Effect`]s the caller drains and carries out (send an offer, tell a rider,
//! end a session). No clock, channel or socket lives here, so every rule of
//! dispatch is testable with virtual time and the engine is fully
//! deterministic: the same calls give the same effects.

mod api;
mod batch;
mod borders;
mod drivers;
mod forward;
mod invariants;
mod lifecycle;
mod map;
mod matching;
mod offers;
mod policy;
mod queue;
mod recovery;
mod rides;
mod road;
mod sessions;
mod state;
mod tables;

pub use api::{
    Config, DriverEvent, DriverHello, Effect, FleetDriverUpdate, LogRecord, MAX_OFFERS_PER_TRIP, MAX_REASON_BYTES,
    NEARBY_MAX_EXAMINED, Nearby, NearbyDriver, NearbyQuery, Offer, Ping, RideRequest, RideTaken, SessionEnd,
    SessionStart, Stats, TripRecord, WithdrawReason,
};
pub use batch::{CANDIDATES, Row, assign};
pub use borders::{Candidate, CandidateQuery, DriverCard, ToShard};
pub use map::{MapCell, MapDriver, MapQuery, MapTrip, MapView};
pub use policy::{MAX_WINDOW_MS, Matching, MatchingSpec, Policies};
pub use state::Answers;
pub use tables::{CELL_DEG, CellCounts, Shade};

use std::collections::{BTreeSet, HashMap};

use crate::ids::TripId;
use crate::index::{DriverIndex, DriverKey};
use crate::time::Timestamp;
use crate::trip::Trip;
use offers::Offers;
use queue::MatchQueue;
use sessions::Sessions;
use state::{Driver, Timer};
use tables::{DriverTable, TripTable};

/// The engine's hash maps. Every ping looks a driver up by id, so the
/// hasher matters: foldhash (hashbrown's own default) is several times
/// faster than std's SipHash on short keys, and is seeded at random per
/// map, so a client choosing ids cannot aim them at one bucket.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The dispatch engine. See the module docs.
///
/// Its state lives with owners that keep their own rules (each has a
/// `check`): the driver table (rows, ids, the free and busy indexes, counts
/// and density), the trip table (open and ended trips, request keys,
/// retention, ids), the sessions, the offers and the match queue. The
/// engine coordinates them: each command reads and changes several, and
/// the engine alone produces effects.
pub struct Engine {
    config: Config,
    /// Driver records by slot, found by id, counted by state as they
    /// change, and the positioned ones in two spatial indexes (free, busy).
    drivers: DriverTable,
    /// Forward dispatch: drivers with a ride in progress and nothing queued,
    /// at that ride's dropoff.
    forward: DriverIndex,
    sessions: Sessions,
    /// Open trips, and ended ones for their retention.
    trips: TripTable,
    offers: Offers,
    queue: MatchQueue,
    /// Offer expiries, search deadlines and drivers' grace periods; an
    /// entry whose offer or trip has moved on is skipped when it comes due.
    timers: BTreeSet<(Timestamp, Timer)>,
    stats: Stats,
    effects: Vec<Effect>,
    /// With geo-shards: this engine's territory and its messages to other
    /// shards; `None` when the engine holds the whole map.
    borders: Option<borders::Borders>,
    /// The road network candidates are ranked by, if any.
    roads: Option<std::sync::Arc<dyn crate::roads::Roads>>,
}

impl Engine {
    /// An empty engine.
    pub fn new(config: Config) -> Self {
        Self {
            drivers: DriverTable::with_slack(config.index_slack_m),
            forward: DriverIndex::with_slack(0.0),
            sessions: Sessions::default(),
            trips: TripTable::default(),
            offers: Offers::starting_at(1),
            queue: MatchQueue::default(),
            timers: BTreeSet::new(),
            stats: Stats::default(),
            effects: Vec::new(),
            borders: None,
            roads: None,
            config,
        }
    }

    /// Ranks candidates by their drive to the pickup over `roads` from now
    /// on: the `Config::road_candidates` nearest by the straight line, and
    /// a trip's pickup distance and ETA are the road's.
    pub fn set_roads(&mut self, roads: std::sync::Arc<dyn crate::roads::Roads>) {
        self.roads = Some(roads);
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Takes the effects produced since the last call, in order.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// A trip by id, ended ones included until their retention runs out.
    /// A copy: an ended trip is kept packed.
    pub fn trip(&self, id: TripId) -> Option<Trip> {
        self.trips.trip(id)
    }

    /// Every trip kept, ended ones included.
    pub fn trips(&self) -> impl Iterator<Item = Trip> + '_ {
        self.trips.trips()
    }

    /// The trips not ended yet, without copying them.
    pub fn open_trips(&self) -> impl Iterator<Item = &Trip> {
        self.trips.values().map(|row| &row.trip)
    }

    /// Whether a trip is kept (open, or ended within its retention),
    /// without unpacking it.
    pub fn keeps(&self, id: TripId) -> bool {
        self.trips.get(&id).is_some() || self.trips.ended(&id).is_some()
    }

    /// Open driver and fleet sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The earliest time `tick` has work to do, if any: the caller sleeps
    /// until then (or until the next command).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let timer = self.timers.first().map(|(at, _)| *at);
        let rematch = self.queue.rematch_at(self.config.rematch_interval_ms);
        let retention = self.trips.next_forget(self.config.trip_retention_ms);
        [timer, rematch, retention, self.queue.next_batch()].into_iter().flatten().min()
    }

    /// Does what is due at `now`: expires offers (passing each trip on to its
    /// next driver), ends searches past their deadline, retries unmatched
    /// trips if drivers were freed or moved, and forgets ended trips past
    /// their retention. Call it after every batch of commands and at
    /// [`Engine::next_deadline`].
    pub fn tick(&mut self, now: Timestamp) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::OfferExpiry(offer) => self.expire_offer(now, offer),
                Timer::SearchDeadline(trip) => self.end_search(now, trip, at),
                Timer::DriverGrace(trip) => self.grace_over(now, trip, at),
            }
        }
        if self.queue.batch_due(now) {
            self.run_batch(now);
            self.schedule_batch(now);
        }
        if self.queue.rematch_due(now, self.config.rematch_interval_ms) {
            self.match_unmatched(now);
        } else if self.queue.has_freed() {
            self.match_freed(now);
        }
        for trip in self.trips.forget_ended_by(now, self.config.trip_retention_ms) {
            self.effects.push(Effect::Persist(LogRecord::Forget(trip)));
            self.effects.push(Effect::TripForgotten(trip));
        }
        self.hand_over_strays();
    }

    /// Live counts and totals, in O(1): the tables keep their counts as
    /// rows change. Latency percentiles are the caller's to fill in: they
    /// are measured in real time, which the engine never reads.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        stats.add(self.drivers.counts());
        stats.add(self.trips.counts());
        stats.driver_sessions = self.sessions.len().saturating_sub(self.sessions.fleet_count()) as u64;
        stats.fleet_sessions = self.sessions.fleet_count() as u64;
        stats
    }

    fn driver(&self, key: DriverKey) -> &Driver {
        match self.drivers.get(key) {
            Some(driver) => driver,
            // Keys come only from the table, sessions and trips, which are
            // kept in step with the table; a miss is a bug in this module.
            None => unreachable!("driver slot {key:?} is empty"),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
