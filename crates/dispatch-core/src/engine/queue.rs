//! The match queue: searching trips with no offer out (waiting for a
//! driver, or held for the next batch), and what may let them match.

use std::collections::{BTreeMap, BTreeSet};

use super::tables::CellKey;
use crate::ids::TripId;
use crate::index::DriverKey;
use crate::time::Timestamp;

/// Its rules: a trip waits or is held for a batch, never both; while any
/// region holds requests, the next batch is due at the earliest region's
/// turn.
pub(super) struct MatchQueue {
    /// Trips nobody could take when last tried, oldest request first: when
    /// drivers are scarce, earlier requests are served first.
    waiting: BTreeSet<TripId>,
    /// Trips whose service is matched in batches, held for the next batch
    /// of their region, oldest first.
    held: BTreeSet<TripId>,
    /// The regions holding requests, each with when its batch is due
    /// (regions take turns, each on its own phase of the window).
    due: BTreeMap<CellKey, Timestamp>,
    /// The earliest of `due`.
    next_batch: Option<Timestamp>,
    /// When a batch-matched request last came: a request after a quiet
    /// window is matched at once rather than held for nothing.
    last_batch_request: Option<Timestamp>,
    /// Drivers who may have become offerable since the last retry (freed,
    /// came on duty, connected, got a first fix): the next tick offers
    /// them to the waiting trips, oldest first. A waiting trip had nobody
    /// in range when it was last tried, so only these drivers can change
    /// that (and moves, below). May hold stale or repeated keys; checked
    /// on use.
    freed: Vec<DriverKey>,
    /// Set when an idle driver moved: a move can bring a driver into some
    /// waiting trip's radius, but pings come by the hundred thousand a
    /// second, so these retries run at most once per
    /// `Config::rematch_interval_ms`.
    moved: bool,
    last_rematch: Timestamp,
}

impl Default for MatchQueue {
    fn default() -> Self {
        Self {
            waiting: BTreeSet::new(),
            held: BTreeSet::new(),
            due: BTreeMap::new(),
            next_batch: None,
            last_batch_request: None,
            freed: Vec::new(),
            moved: false,
            last_rematch: Timestamp(i64::MIN),
        }
    }
}

impl MatchQueue {
    /// Nobody can take `trip` now: it waits for a driver.
    pub fn wait(&mut self, trip: TripId) {
        self.waiting.insert(trip);
    }

    /// `trip` is no longer waiting (it has an offer, or is not searching).
    pub fn stop_waiting(&mut self, trip: TripId) {
        self.waiting.remove(&trip);
    }

    /// `trip` leaves the queue: offered, assigned, or ended.
    pub fn remove(&mut self, trip: TripId) {
        self.waiting.remove(&trip);
        self.held.remove(&trip);
    }

    /// Holds `trip` for the batch of `region`, due by `due` at the latest.
    pub fn hold(&mut self, trip: TripId, region: CellKey, due: Timestamp) {
        self.waiting.remove(&trip);
        self.held.insert(trip);
        self.set_due(region, due);
        self.next_batch = Some(self.next_batch.map_or(due, |at| at.min(due)));
    }

    /// A batch-matched request came at `now`: whether it is held for a
    /// batch. Not when nothing is held and no such request came for a
    /// whole window: nobody else is there to share the drivers with, and
    /// holding the rider would only make them wait.
    pub fn holds_request(&mut self, now: Timestamp, window_ms: i64) -> bool {
        let quiet = self.held.is_empty() && self.last_batch_request.is_none_or(|at| now.since(at) >= window_ms);
        self.last_batch_request = Some(now);
        !quiet
    }

    /// When the next batch is due, if any trip is held.
    pub fn next_batch(&self) -> Option<Timestamp> {
        self.next_batch
    }

    /// Whether a batch is due at `now`.
    pub fn batch_due(&self, now: Timestamp) -> bool {
        self.next_batch.is_some_and(|at| now >= at)
    }

    /// The regions whose turn it is at `now`, taken off the schedule.
    pub fn take_due_regions(&mut self, now: Timestamp) -> BTreeSet<CellKey> {
        let due: BTreeSet<CellKey> = self.due.iter().filter(|(_, at)| **at <= now).map(|(r, _)| *r).collect();
        self.due.retain(|region, _| !due.contains(region));
        self.next_batch = self.due.values().min().copied();
        due
    }

    /// After a batch: each region still holding requests gets its next
    /// turn (the earliest of those given), and the next batch is the
    /// earliest turn.
    pub fn schedule(&mut self, turns: impl IntoIterator<Item = (CellKey, Timestamp)>) {
        for (region, due) in turns {
            self.set_due(region, due);
        }
        self.next_batch = self.due.values().min().copied();
    }

    fn set_due(&mut self, region: CellKey, due: Timestamp) {
        let at = self.due.entry(region).or_insert(due);
        *at = (*at).min(due);
    }

    /// `trip` leaves the batch it was held for.
    pub fn release(&mut self, trip: TripId) {
        self.held.remove(&trip);
    }

    /// `key` may have become offerable.
    pub fn freed(&mut self, key: DriverKey) {
        self.freed.push(key);
    }

    /// These may have become offerable.
    pub fn freed_all(&mut self, keys: impl IntoIterator<Item = DriverKey>) {
        self.freed.extend(keys);
    }

    /// An idle driver moved (or, with geo-shards, a trip waits that only
    /// a retry can show drivers of other shards).
    pub fn moved(&mut self) {
        self.moved = true;
    }

    /// Whether drivers were freed since the last retry.
    pub fn has_freed(&self) -> bool {
        !self.freed.is_empty()
    }

    /// The drivers freed since the last retry, each once.
    pub fn take_freed(&mut self) -> Vec<DriverKey> {
        let mut freed = std::mem::take(&mut self.freed);
        freed.sort_unstable();
        freed.dedup();
        freed
    }

    /// When drivers' moves make a retry of every waiting trip due, if they
    /// do: no sooner than `interval_ms` after the last.
    pub fn rematch_at(&self, interval_ms: i64) -> Option<Timestamp> {
        (self.moved && !self.waiting.is_empty()).then(|| self.last_rematch + interval_ms)
    }

    /// Whether a retry of every waiting trip is due at `now`.
    pub fn rematch_due(&self, now: Timestamp, interval_ms: i64) -> bool {
        self.moved && now.since(self.last_rematch) >= interval_ms
    }

    /// Starts a retry of every waiting trip at `now`: it covers the freed
    /// drivers and the moves so far. Returns the trips, oldest first.
    pub fn start_rematch(&mut self, now: Timestamp) -> Vec<TripId> {
        self.freed.clear();
        self.moved = false;
        self.last_rematch = now;
        self.waiting()
    }

    /// Nothing freed or moved since the last retry: every waiting trip was
    /// tried against every driver who could take it.
    pub fn settled(&self) -> bool {
        self.freed.is_empty() && !self.moved
    }

    /// The waiting trips, oldest first.
    pub fn waiting(&self) -> Vec<TripId> {
        self.waiting.iter().copied().collect()
    }

    pub fn is_waiting(&self, trip: TripId) -> bool {
        self.waiting.contains(&trip)
    }

    /// The trips held for a batch, oldest first.
    pub fn held(&self) -> impl Iterator<Item = TripId> + '_ {
        self.held.iter().copied()
    }

    pub fn is_held(&self, trip: TripId) -> bool {
        self.held.contains(&trip)
    }

    /// Whether `region` has a batch coming.
    pub fn has_turn(&self, region: CellKey) -> bool {
        self.due.contains_key(&region)
    }

    /// Waiting trips, then held ones.
    pub fn queued(&self) -> impl Iterator<Item = TripId> + '_ {
        self.waiting.iter().chain(&self.held).copied()
    }

    /// This owner's rules (see the type).
    pub fn check(&self) -> Result<(), String> {
        if let Some(trip) = self.waiting.intersection(&self.held).next() {
            return Err(format!("trip {trip} both waits and is held for a batch"));
        }
        if self.next_batch != self.due.values().min().copied() {
            return Err(format!("the next batch is due {:?}, the earliest turn {:?}", self.next_batch, self.due));
        }
        if !self.held.is_empty() && self.next_batch.is_none() {
            return Err("trips are held for a batch that is never due".into());
        }
        Ok(())
    }
}
