//! The engine: one owner of the driver index and of every trip.
//!
//! Inputs are method calls that take the current time; outputs are the
//! [`Effect`]s the caller drains and carries out (send an offer, tell a rider,
//! end a session). No clock, channel or socket lives here, so every rule of
//! dispatch is testable with virtual time and the engine is fully
//! deterministic: the same calls give the same effects.

mod batch;
mod drivers;
mod forward;
mod invariants;
mod io;
mod map;
mod matching;
mod policy;
mod recovery;
mod rides;
mod state;
mod tables;

pub use batch::{CANDIDATES, Row, assign};
pub use io::{
    Config, DriverEvent, DriverHello, Effect, FleetDriverUpdate, LogRecord, MAX_OFFERS_PER_TRIP, MAX_REASON_BYTES,
    NEARBY_MAX_EXAMINED, Nearby, NearbyDriver, NearbyQuery, Offer, Ping, RideRequest, SessionEnd, Stats, TripRecord,
    WithdrawReason,
};
pub use map::{MapCell, MapDriver, MapQuery, MapTrip, MapView};
pub use policy::{MAX_WINDOW_MS, Matching, MatchingSpec, Policies};
pub use tables::{CELL_DEG, CellCounts, Shade};

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::ids::{DriverId, OfferId, SessionId, TripId};
use crate::index::{DriverIndex, DriverKey};
use crate::time::Timestamp;
use crate::trip::Trip;
use state::{Driver, OpenOffer, Session, Timer};
use tables::{DriverTable, TripTable};

/// The engine's hash maps. Every ping looks a driver up by id, so the
/// hasher matters: foldhash (hashbrown's own default) is several times
/// faster than std's SipHash on short keys, and is seeded at random per
/// map, so a client choosing ids cannot aim them at one bucket.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The dispatch engine. See the module docs.
pub struct Engine {
    config: Config,
    /// Forward dispatch: drivers with a ride in progress and nothing queued,
    /// at that ride's dropoff.
    forward: DriverIndex,
    /// Driver records by slot, counted by state as they change, and the
    /// positioned ones in two spatial indexes (free, busy).
    drivers: DriverTable,
    driver_keys: Map<DriverId, DriverKey>,
    sessions: Map<SessionId, Session>,
    fleet_sessions: Map<crate::ids::FleetId, SessionId>,
    trips: TripTable,
    offers: Map<OfferId, OpenOffer>,
    /// Searching trips with no offer out, oldest request first: when drivers
    /// are scarce, earlier requests are served first.
    unmatched: BTreeSet<TripId>,
    /// Searching trips with no offer out whose service is matched in
    /// batches: held for the next batch (`next_batch`), oldest first.
    batch_pool: BTreeSet<TripId>,
    /// The regions holding requests, each with when its batch is due
    /// (regions take turns, each on its own phase of the window).
    batch_due: std::collections::BTreeMap<tables::CellKey, Timestamp>,
    /// The earliest of `batch_due`.
    next_batch: Option<Timestamp>,
    /// When a batch-matched request last came: a request after a quiet
    /// window is matched at once rather than held for nothing.
    last_batch_request: Option<Timestamp>,
    /// Offer expiries and search deadlines; an entry whose offer or trip has
    /// moved on is skipped when it comes due.
    timers: BTreeSet<(Timestamp, Timer)>,
    /// Ended trips by end time, dropped after `Config::trip_retention_ms`.
    finished: VecDeque<(Timestamp, TripId)>,
    /// Drivers who may have become offerable since the last retry (freed,
    /// came on duty, connected, got a first fix): the next `tick` offers
    /// them to the waiting trips, oldest first. A waiting trip had nobody in
    /// range when it was last tried, so only these drivers can change that
    /// (and moves, below). May hold stale or repeated keys; checked on use.
    freed: Vec<DriverKey>,
    /// Set when an idle driver moved: a move can bring a driver into some
    /// waiting trip's radius, but pings come by the hundred thousand a
    /// second, so these retries run at most once per
    /// `Config::rematch_interval_ms`.
    drivers_moved: bool,
    last_rematch: Timestamp,
    next_trip: u64,
    next_offer: u64,
    stats: Stats,
    effects: Vec<Effect>,
}

impl Engine {
    /// An empty engine.
    pub fn new(config: Config) -> Self {
        Self {
            forward: DriverIndex::with_slack(0.0),
            drivers: DriverTable::with_slack(config.index_slack_m),
            driver_keys: Map::default(),
            sessions: Map::default(),
            fleet_sessions: Map::default(),
            trips: TripTable::default(),
            offers: Map::default(),
            unmatched: BTreeSet::new(),
            batch_pool: BTreeSet::new(),
            batch_due: std::collections::BTreeMap::new(),
            next_batch: None,
            last_batch_request: None,
            timers: BTreeSet::new(),
            finished: VecDeque::new(),
            freed: Vec::new(),
            drivers_moved: false,
            last_rematch: Timestamp(i64::MIN),
            next_trip: 1,
            next_offer: 1,
            stats: Stats::default(),
            effects: Vec::new(),
            config,
        }
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
        let rematch = (self.drivers_moved && !self.unmatched.is_empty())
            .then(|| self.last_rematch + self.config.rematch_interval_ms);
        let timer = match (timer, rematch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retention = self.finished.front().map(|(at, _)| *at + self.config.trip_retention_ms);
        [timer, retention, self.next_batch].into_iter().flatten().min()
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
        if self.next_batch.is_some_and(|at| now >= at) {
            self.next_batch = None;
            self.run_batch(now);
            self.schedule_batch(now);
        }
        let moved_due = self.drivers_moved && now.since(self.last_rematch) >= self.config.rematch_interval_ms;
        if moved_due {
            self.match_unmatched(now);
        } else if !self.freed.is_empty() {
            self.match_freed(now);
        }
        while let Some(&(ended, trip)) = self.finished.front() {
            if ended + self.config.trip_retention_ms > now {
                break;
            }
            self.finished.pop_front();
            if self.trips.forget_ended(trip) {
                self.effects.push(Effect::TripForgotten(trip));
            }
        }
    }

    /// Live counts and totals, in O(1): the tables keep their counts as
    /// rows change. Latency percentiles are the caller's to fill in: they
    /// are measured in real time, which the engine never reads.
    pub fn stats(&self) -> Stats {
        let drivers = self.drivers.counts();
        let trips = self.trips.counts();
        Stats {
            drivers_connected: drivers.drivers_connected,
            drivers_available: drivers.drivers_available,
            drivers_on_trip: drivers.drivers_on_trip,
            drivers_offered: drivers.drivers_offered,
            drivers_unavailable: drivers.drivers_unavailable,
            trips_searching: trips.trips_searching,
            trips_active: trips.trips_active,
            trips_assigned: trips.trips_assigned,
            trips_arrived: trips.trips_arrived,
            trips_in_progress: trips.trips_in_progress,
            driver_sessions: self.sessions.len().saturating_sub(self.fleet_sessions.len()) as u64,
            fleet_sessions: self.fleet_sessions.len() as u64,
            ..self.stats.clone()
        }
    }

    fn driver(&self, key: DriverKey) -> &Driver {
        match self.drivers.get(key) {
            Some(driver) => driver,
            // Keys come only from `driver_keys`, sessions and trips, which are
            // kept in step with the table; a miss is a bug in this module.
            None => unreachable!("driver slot {key:?} is empty"),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
