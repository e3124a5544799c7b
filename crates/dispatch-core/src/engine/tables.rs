//! The driver and trip tables, each keeping its live counts as its rows
//! change, so that [`super::Engine::stats`] costs O(1) however many drivers
//! and kept trips there are.
//!
//! Every change to a row goes through a [`Tracked`] handle: taking one
//! removes the row's contribution from the counts, and dropping it adds the
//! row's new contribution back. The same handle keeps the [`Density`] map
//! (how many drivers of each kind, and trips waiting, per map cell) for the
//! operators' map: a row that stays in its cell and state costs two cell
//! computations and a compare. `Engine::check_invariants` recounts both by
//! brute force and compares.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};

use super::state::{Driver, EndedTrip, TripState};
use crate::geo::LatLng;
use crate::ids::{DriverId, RequestId, RiderId, TripId};
use crate::index::{DriverIndex, DriverKey};
use crate::time::Timestamp;
use crate::trip::{Trip, TripStatus};

/// Live counts of drivers and trips by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub drivers_connected: u64,
    pub drivers_available: u64,
    pub drivers_on_trip: u64,
    /// Drivers with an offer out.
    pub drivers_offered: u64,
    /// Connected drivers with no offer and no trip who cannot take one now
    /// (off duty, or no position yet).
    pub drivers_unavailable: u64,
    pub trips_searching: u64,
    pub trips_active: u64,
    pub trips_assigned: u64,
    pub trips_arrived: u64,
    pub trips_in_progress: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.zip(other, u64::wrapping_add);
    }

    fn sub(&mut self, other: Counts) {
        self.zip(other, u64::wrapping_sub);
    }

    fn zip(&mut self, other: Counts, f: fn(u64, u64) -> u64) {
        self.drivers_connected = f(self.drivers_connected, other.drivers_connected);
        self.drivers_available = f(self.drivers_available, other.drivers_available);
        self.drivers_on_trip = f(self.drivers_on_trip, other.drivers_on_trip);
        self.drivers_offered = f(self.drivers_offered, other.drivers_offered);
        self.drivers_unavailable = f(self.drivers_unavailable, other.drivers_unavailable);
        self.trips_searching = f(self.trips_searching, other.trips_searching);
        self.trips_active = f(self.trips_active, other.trips_active);
        self.trips_assigned = f(self.trips_assigned, other.trips_assigned);
        self.trips_arrived = f(self.trips_arrived, other.trips_arrived);
        self.trips_in_progress = f(self.trips_in_progress, other.trips_in_progress);
    }
}

/// The side of a map cell, in degrees of latitude and longitude (about a
/// kilometre in Korea): the finest density the map can show.
pub const CELL_DEG: f64 = 0.01;

/// A map cell: `floor(lat / CELL_DEG)`, `floor(lng / CELL_DEG)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    /// Row, from the equator.
    pub lat: i32,
    /// Column, from Greenwich.
    pub lng: i32,
}

impl CellKey {
    /// The cell `at` is in.
    pub fn of(at: LatLng) -> Self {
        // In range: |lat| <= 90 and |lng| <= 180 give at most 18,000.
        // Multiplied, not divided: this runs twice per ping.
        const PER_DEG: f64 = 1.0 / CELL_DEG;
        Self { lat: (at.lat() * PER_DEG).floor() as i32, lng: (at.lng() * PER_DEG).floor() as i32 }
    }
}

/// What a row shows on the map: the kinds of [`CellCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shade {
    /// A driver who could take an offer now.
    Available = 0,
    /// A driver with an offer out.
    Offered = 1,
    /// A driver with a trip.
    OnTrip = 2,
    /// A connected driver who cannot take an offer (off duty).
    Unavailable = 3,
    /// A trip searching for a driver, at its pickup.
    Waiting = 4,
}

/// Per cell: drivers available, offered, on a trip, unavailable, and trips
/// waiting, indexed by [`Shade`].
pub type CellCounts = [u32; 5];

/// How many levels the [`Density`] pyramid has: cells of 1, 2, 4, ... 128
/// base cells a side (up to 1.28°, a country on one screen).
pub const LEVELS: usize = 8;

impl CellKey {
    /// The cell of `level` (2^level base cells a side) this one is in.
    pub fn up(self, level: usize) -> Self {
        Self { lat: self.lat >> level, lng: self.lng >> level }
    }
}

/// Counts per map cell at every level of a pyramid (level 0: the base
/// cells; each level up, 2 x 2 cells of the one below), kept as rows
/// change; empty cells are dropped. A view reads the level that gives it
/// few enough cells, so its cost is bounded by what it shows, never by the
/// drivers or the base cells under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Density(pub(super) [super::Map<CellKey, CellCounts>; LEVELS]);

impl Default for Density {
    fn default() -> Self {
        Self(std::array::from_fn(|_| super::Map::default()))
    }
}

impl Density {
    fn shift(&mut self, from: Option<(CellKey, Shade)>, to: Option<(CellKey, Shade)>) {
        for (level, cells) in self.0.iter_mut().enumerate() {
            let from = from.map(|(cell, shade)| (cell.up(level), shade));
            let to = to.map(|(cell, shade)| (cell.up(level), shade));
            if from == to {
                // The same above, too.
                return;
            }
            if let Some((cell, shade)) = from
                && let Some(counts) = cells.get_mut(&cell)
            {
                counts[shade as usize] = counts[shade as usize].saturating_sub(1);
                if counts.iter().all(|&n| n == 0) {
                    cells.remove(&cell);
                }
            }
            if let Some((cell, shade)) = to {
                cells.entry(cell).or_default()[shade as usize] += 1;
            }
        }
    }

    /// Every non-empty cell of `level`.
    pub fn cells(&self, level: usize) -> impl Iterator<Item = (CellKey, &CellCounts)> {
        self.0.get(level).into_iter().flat_map(|cells| cells.iter().map(|(k, v)| (*k, v)))
    }
}

/// Which of the driver table's two spatial indexes a positioned driver is
/// filed in: each driver is in exactly one, so a ping that moves it past
/// the slack, or a first fix, moves one tree entry, not two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shelf {
    /// Could take an offer now: what matching searches.
    Free,
    /// Has a position but cannot take an offer now (offered, on a trip,
    /// unavailable, or disconnected and held for its trip).
    Busy,
}

/// The counts a table keeps: by state, and by map cell; for drivers, also
/// the positioned drivers, in two indexes by whether they could take an
/// offer now (the trip table's stay empty).
#[derive(Default)]
pub(super) struct Tally {
    counts: Counts,
    density: Density,
    free: DriverIndex,
    busy: DriverIndex,
}

impl Tally {
    fn add<T: Counted>(&mut self, slot: DriverKey, row: &T) {
        self.counts.add(row.counts());
        self.density.shift(None, row.place());
        self.refile(slot, None, row.filed_at());
    }

    fn sub<T: Counted>(&mut self, slot: DriverKey, row: &T) {
        self.counts.sub(row.counts());
        self.density.shift(row.place(), None);
        self.refile(slot, row.filed_at(), None);
    }

    fn shelf(&mut self, shelf: Shelf) -> &mut DriverIndex {
        match shelf {
            Shelf::Free => &mut self.free,
            Shelf::Busy => &mut self.busy,
        }
    }

    /// Keeps the indexes in step with a row that was filed at `from` and is
    /// now filed at `to` (`None`: no position).
    fn refile(&mut self, slot: DriverKey, from: Option<(Shelf, LatLng)>, to: Option<(Shelf, LatLng)>) {
        if from == to {
            return;
        }
        if let Some((was, _)) = from
            && to.is_none_or(|(shelf, _)| shelf != was)
        {
            self.shelf(was).remove(slot);
        }
        if let Some((shelf, at)) = to {
            self.shelf(shelf).locate_mut(slot, at);
        }
    }
}

/// A row that counts towards [`Counts`] and the [`Density`] map.
pub(super) trait Counted {
    /// What this row adds to the counts.
    fn counts(&self) -> Counts;
    /// Where the row shows on the map, and as what.
    fn place(&self) -> Option<(CellKey, Shade)>;
    /// Which driver index the row belongs in, and where (a positioned
    /// driver).
    fn filed_at(&self) -> Option<(Shelf, LatLng)> {
        None
    }
}

impl Driver {
    /// Which driver index the driver belongs in once it has a position.
    fn shelf(&self) -> Shelf {
        if self.is_offerable() { Shelf::Free } else { Shelf::Busy }
    }

    /// What the driver shows as on the map (and in the counts).
    pub fn shade(&self) -> Shade {
        if self.trip.is_some() {
            Shade::OnTrip
        } else if self.offer.is_some() {
            Shade::Offered
        } else if self.is_offerable() {
            Shade::Available
        } else {
            Shade::Unavailable
        }
    }
}

impl Counted for Driver {
    fn counts(&self) -> Counts {
        let connected = self.session.is_some();
        let idle = self.is_idle();
        Counts {
            drivers_connected: u64::from(connected),
            drivers_available: u64::from(self.is_offerable()),
            drivers_on_trip: u64::from(self.trip.is_some()),
            drivers_offered: u64::from(self.offer.is_some()),
            drivers_unavailable: u64::from(connected && idle && !self.is_offerable()),
            ..Counts::default()
        }
    }

    fn place(&self) -> Option<(CellKey, Shade)> {
        // A driver known only from a trip it holds while its app is away
        // still shows, on its trip; one with no session and no trip is not
        // kept at all.
        Some((CellKey::of(self.position?), self.shade()))
    }

    fn filed_at(&self) -> Option<(Shelf, LatLng)> {
        Some((self.shelf(), self.position?))
    }
}

impl Counted for TripState {
    fn counts(&self) -> Counts {
        let status = self.trip.status;
        Counts {
            trips_searching: u64::from(status == TripStatus::Searching),
            trips_active: u64::from(status.has_driver()),
            trips_assigned: u64::from(status == TripStatus::DriverAssigned),
            trips_arrived: u64::from(status == TripStatus::DriverArrived),
            trips_in_progress: u64::from(status == TripStatus::InProgress),
            ..Counts::default()
        }
    }

    fn place(&self) -> Option<(CellKey, Shade)> {
        (self.trip.status == TripStatus::Searching).then(|| (CellKey::of(self.trip.pickup), Shade::Waiting))
    }
}

/// A row borrowed for change; its counts are settled when it is dropped.
pub(super) struct Tracked<'a, T: Counted> {
    row: &'a mut T,
    tally: &'a mut Tally,
    /// The row's slot, for the driver indexes.
    slot: DriverKey,
    counts: Counts,
    place: Option<(CellKey, Shade)>,
    filed_at: Option<(Shelf, LatLng)>,
}

impl<'a, T: Counted> Tracked<'a, T> {
    fn new(slot: DriverKey, row: &'a mut T, tally: &'a mut Tally) -> Self {
        let (counts, place, filed_at) = (row.counts(), row.place(), row.filed_at());
        Self { row, tally, slot, counts, place, filed_at }
    }
}

impl<T: Counted> Deref for Tracked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.row
    }
}

impl<T: Counted> DerefMut for Tracked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.row
    }
}

impl<T: Counted> Drop for Tracked<'_, T> {
    fn drop(&mut self) {
        let counts = self.row.counts();
        if counts != self.counts {
            self.tally.counts.sub(self.counts);
            self.tally.counts.add(counts);
        }
        self.tally.density.shift(self.place, self.row.place());
        self.tally.refile(self.slot, self.filed_at, self.row.filed_at());
    }
}

/// Driver records by slot, with free slots reused, and every positioned
/// driver in one of two indexes: those who could take an offer now
/// (matching searches that, so its cost does not grow with the busy drivers
/// around a pickup, at a peak most of them, and a retry of hundreds of
/// waiting trips stays cheap) and the rest (operators' searches and map
/// look at both).
#[derive(Default)]
pub(super) struct DriverTable {
    slots: Vec<Option<Driver>>,
    /// Each driver's slot by id.
    keys: super::Map<DriverId, DriverKey>,
    /// Empty slots, reused first.
    unused: Vec<DriverKey>,
    tally: Tally,
}

impl DriverTable {
    /// The slot of the driver with this id, if the engine knows it.
    pub fn key_of(&self, id: &DriverId) -> Option<DriverKey> {
        self.keys.get(id).copied()
    }

    /// Drivers known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, key: DriverKey) -> Option<&Driver> {
        self.slots.get(key.0 as usize).and_then(Option::as_ref)
    }

    /// An empty table whose indexes lag by up to `slack_m` (see
    /// [`DriverIndex::with_slack`]).
    pub fn with_slack(slack_m: f64) -> Self {
        let tally = Tally {
            free: DriverIndex::with_slack(slack_m),
            busy: DriverIndex::with_slack(slack_m),
            ..Tally::default()
        };
        Self { tally, ..Self::default() }
    }

    pub fn get_mut(&mut self, key: DriverKey) -> Option<Tracked<'_, Driver>> {
        let row = self.slots.get_mut(key.0 as usize).and_then(Option::as_mut)?;
        Some(Tracked::new(key, row, &mut self.tally))
    }

    /// The drivers who could take an offer now, by position.
    pub fn free(&self) -> &DriverIndex {
        &self.tally.free
    }

    /// The positioned drivers who cannot take an offer now, by position.
    pub fn busy(&self) -> &DriverIndex {
        &self.tally.busy
    }

    /// Notes that the driver's position was just sent to their trip's
    /// riders; what a driver counts as does not depend on it.
    pub fn pushed(&mut self, key: DriverKey, now: crate::time::Timestamp) {
        if let Some(Some(row)) = self.slots.get_mut(key.0 as usize) {
            row.last_position_push = now;
        }
    }

    /// Moves a driver that already has a position, and notes its fix time:
    /// the ping path. Its counts cannot change (they depend on having a
    /// position, not on where), so only its map cell is looked at. Returns
    /// false, changing nothing, if the driver has no position yet (its first
    /// fix goes through [`DriverTable::row`]).
    pub fn relocate(&mut self, key: DriverKey, at: crate::geo::LatLng, fix: Option<crate::time::Timestamp>) -> bool {
        let Some(Some(row)) = self.slots.get_mut(key.0 as usize) else { return false };
        let Some(old) = row.position else { return false };
        row.position = Some(at);
        row.last_fix = fix.or(row.last_fix);
        let shelf = row.shelf();
        self.tally.shelf(shelf).locate_mut(key, at);
        let (from, to) = (CellKey::of(old), CellKey::of(at));
        if from != to {
            let shade = row.shade();
            self.tally.density.shift(Some((from, shade)), Some((to, shade)));
        }
        true
    }

    /// The driver in `key`'s slot, for change. Keys come only from
    /// this table, sessions and trips, which the engine keeps in step
    /// with this table; a miss is a bug in the engine.
    pub fn row(&mut self, key: DriverKey) -> Tracked<'_, Driver> {
        match self.get_mut(key) {
            Some(row) => row,
            None => unreachable!("driver slot {key:?} is empty"),
        }
    }

    /// Files a driver in a free slot (or a new one) and returns its key.
    pub fn insert(&mut self, driver: Driver) -> DriverKey {
        let key = match self.unused.pop() {
            Some(key) => key,
            None => {
                let key = DriverKey(u32::try_from(self.slots.len()).unwrap_or(u32::MAX));
                self.slots.push(None);
                key
            }
        };
        self.tally.add(key, &driver);
        self.keys.insert(driver.id.clone(), key);
        self.slots[key.0 as usize] = Some(driver);
        key
    }

    pub fn remove(&mut self, key: DriverKey) -> Option<Driver> {
        let driver = self.slots.get_mut(key.0 as usize).and_then(Option::take)?;
        self.tally.sub(key, &driver);
        self.keys.remove(&driver.id);
        self.unused.push(key);
        Some(driver)
    }

    /// Every driver with its key.
    pub fn iter(&self) -> impl Iterator<Item = (DriverKey, &Driver)> {
        self.slots.iter().enumerate().filter_map(|(slot, d)| Some((DriverKey(slot as u32), d.as_ref()?)))
    }

    pub fn counts(&self) -> Counts {
        self.tally.counts
    }

    pub fn density(&self) -> &Density {
        &self.tally.density
    }

    /// This table's rules: every driver filed under its id, the counts and
    /// the map's density what a recount gives, and each positioned driver
    /// in the index its state says (the free one holding exactly the
    /// offerable drivers), at its position.
    pub fn check(&self) -> Result<(), String> {
        let mut recount = Counts::default();
        for (key, driver) in self.iter() {
            if self.keys.get(&driver.id) != Some(&key) {
                return Err(format!("driver {} is not filed under its slot", driver.id));
            }
            recount.add(driver.counts());
            let Some(at) = driver.position else { continue };
            let index = if driver.is_offerable() { self.free() } else { self.busy() };
            if !index.holds_at(key, at) {
                return Err(format!("driver {} is not in the index its state says, where it is", driver.id));
            }
        }
        if self.keys.len() != self.iter().count() {
            return Err(format!("{} driver ids filed for {} drivers", self.keys.len(), self.iter().count()));
        }
        if recount != self.counts() {
            return Err(format!("driver counts {:?} differ from a recount {recount:?}", self.counts()));
        }
        let positioned = self.iter().filter(|(_, d)| d.position.is_some()).count();
        if self.free().len() + self.busy().len() != positioned {
            return Err("the indexes and the positioned drivers differ".into());
        }
        let offerable = self.iter().filter(|(_, d)| d.is_offerable()).count();
        if self.free().len() != offerable {
            return Err(format!("{} in the free index, {offerable} offerable", self.free().len()));
        }
        if !density_matches(self.iter().filter_map(|(_, d)| d.place()), self.density()) {
            return Err("the drivers' map density differs from a recount".to_owned());
        }
        Ok(())
    }
}

/// Whether `density` holds, at every level, what counting `places` gives.
fn density_matches(places: impl Iterator<Item = (CellKey, Shade)>, density: &Density) -> bool {
    let places: Vec<_> = places.collect();
    (0..LEVELS).all(|level| {
        let mut cells: HashMap<CellKey, CellCounts> = HashMap::new();
        for (cell, shade) in &places {
            cells.entry(cell.up(level)).or_default()[*shade as usize] += 1;
        }
        cells == density.cells(level).map(|(k, v)| (k, *v)).collect::<HashMap<_, _>>()
    })
}

/// The slot trips pass to [`Tracked`]: a trip is never in a driver index.
const NO_SLOT: DriverKey = DriverKey(u32::MAX);

/// Trips by id: open ones as a row the engine matches and moves on, ended
/// ones packed ([`EndedTrip`]) until their retention runs out.
///
/// Rows are boxed: the table grows to hundreds of thousands of trips, and
/// growing a hash table moves every row at once. Moving a pointer instead
/// of a ~300-byte row keeps that pause (on the engine's thread, where every
/// ride waits) at milliseconds rather than hundreds of them.
///
/// Trips are also found by their rider's idempotency key: an index of
/// trip ids alone, hashed by the key and compared with the rider and
/// request id the row holds, so no key is stored twice (a `HashMap` keyed by
/// the two ids would hold 40 bytes more per kept trip).
#[derive(Default)]
pub(super) struct TripTable {
    rows: super::Map<TripId, Box<TripState>>,
    ended: super::Map<TripId, Box<EndedTrip>>,
    /// Each kept trip's id with the hash of its request key: growing the
    /// table moves the pairs by their stored hash, without looking a
    /// single row up (rehashing from the rows cost ~170 ms of engine time
    /// at 475,000 kept trips, and doubles with every growth).
    by_request: hashbrown::HashTable<(u64, TripId)>,
    /// Seeded at random per table, like the maps: a client choosing ids
    /// cannot aim them at one bucket.
    hasher: foldhash::fast::RandomState,
    tally: Tally,
    /// Ended trips by end time, forgotten after their retention.
    finished: VecDeque<(Timestamp, TripId)>,
    /// The id of the next new trip (ids start at 1).
    next_id: u64,
}

type Rows = super::Map<TripId, Box<TripState>>;
type Ended = super::Map<TripId, Box<EndedTrip>>;

/// The rider and request id a kept trip was asked with.
fn key_of<'a>(rows: &'a Rows, ended: &'a Ended, id: TripId) -> Option<(&'a str, &'a str)> {
    match rows.get(&id) {
        Some(row) => Some((row.trip.rider.as_str(), row.trip.request_id.as_str())),
        None => ended.get(&id).map(|row| row.key()),
    }
}

fn hash_key(hasher: &foldhash::fast::RandomState, (rider, request): (&str, &str)) -> u64 {
    hasher.hash_one((rider, request))
}

impl TripTable {
    /// An id for a new trip: never one used before (see
    /// [`TripTable::ids_from`]).
    pub fn new_id(&mut self) -> TripId {
        let id = TripId(self.next_id.max(1));
        self.next_id = id.0 + 1;
        id
    }

    /// The id the next new trip gets.
    #[cfg(test)]
    pub fn next_id(&self) -> u64 {
        self.next_id.max(1)
    }

    /// New ids start at `next` or later (after a restart, past every id
    /// the log holds).
    pub fn ids_from(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// The trip asked for with this rider's request id, if it is kept.
    pub fn by_request(&self, rider: &RiderId, request: &RequestId) -> Option<TripId> {
        let key = (rider.as_str(), request.as_str());
        let hash = hash_key(&self.hasher, key);
        let (rows, ended) = (&self.rows, &self.ended);
        self.by_request.find(hash, |&(h, id)| h == hash && key_of(rows, ended, id) == Some(key)).map(|&(_, id)| id)
    }

    /// Files `id` under its request key (its row is filed already).
    fn index_request(&mut self, id: TripId) {
        let (rows, ended, hasher) = (&self.rows, &self.ended, &self.hasher);
        let Some(key) = key_of(rows, ended, id) else { return };
        let hash = hash_key(hasher, key);
        let same = |&(h, other): &(u64, TripId)| h == hash && key_of(rows, ended, other) == Some(key);
        match self.by_request.entry(hash, same, |&(h, _)| h) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = (hash, id),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert((hash, id));
            }
        }
    }

    /// How many trips the request index holds (every kept trip).
    pub fn indexed_requests(&self) -> usize {
        self.by_request.len()
    }

    /// An open trip (or one ended in the command under way, until
    /// [`TripTable::end`]).
    pub fn get(&self, id: &TripId) -> Option<&TripState> {
        self.rows.get(id).map(|row| &**row)
    }

    pub fn get_mut(&mut self, id: &TripId) -> Option<Tracked<'_, TripState>> {
        let row = self.rows.get_mut(id)?;
        Some(Tracked::new(NO_SLOT, &mut **row, &mut self.tally))
    }

    /// Puts the driver's position on an open trip that has a driver, and
    /// with `at`, stamps the trip updated then. Neither changes what the
    /// trip counts as, so no [`Tracked`] row is needed: this is the ping
    /// path. Returns whether the trip has a driver.
    pub fn show_driver_at(&mut self, id: TripId, position: LatLng, at: Option<crate::time::Timestamp>) -> bool {
        let Some(row) = self.rows.get_mut(&id) else { return false };
        if !row.trip.status.has_driver() {
            return false;
        }
        row.trip.driver_position = Some(position);
        if let Some(at) = at {
            row.trip.updated_at = at;
        }
        true
    }

    /// Files a new open trip (a new id: the engine mints them), found by
    /// its request key too.
    pub fn insert(&mut self, id: TripId, state: TripState) {
        self.tally.add(NO_SLOT, &state);
        if let Some(old) = self.rows.insert(id, Box::new(state)) {
            self.tally.sub(NO_SLOT, &*old);
        }
        self.index_request(id);
    }

    /// Files a trip that ended, packed, found by its request key too.
    pub fn insert_ended(&mut self, trip: Trip) {
        let id = trip.id;
        self.finished.push_back((trip.updated_at, id));
        self.ended.insert(id, Box::new(EndedTrip::pack(trip)));
        self.index_request(id);
    }

    /// Packs a trip that just ended (its status is terminal): from now on
    /// only [`TripTable::trip`] and [`TripTable::ended`] find it. Its
    /// request key stays filed (the index holds the id alone).
    pub fn end(&mut self, now: Timestamp, id: TripId) {
        let Some(state) = self.rows.remove(&id) else { return };
        self.finished.push_back((now, id));
        self.tally.sub(NO_SLOT, &*state);
        self.ended.insert(id, Box::new(EndedTrip::pack(state.trip)));
    }

    /// An ended trip.
    pub fn ended(&self, id: &TripId) -> Option<&EndedTrip> {
        self.ended.get(id).map(|row| &**row)
    }

    /// When the next ended trip passes a retention of `retention_ms`.
    pub fn next_forget(&self, retention_ms: i64) -> Option<Timestamp> {
        self.finished.front().map(|(at, _)| *at + retention_ms)
    }

    /// Forgets the ended trips that passed a retention of `retention_ms`
    /// at `now`, and returns them.
    pub fn forget_ended_by(&mut self, now: Timestamp, retention_ms: i64) -> Vec<TripId> {
        let mut forgotten = Vec::new();
        while let Some(&(ended, trip)) = self.finished.front() {
            if ended + retention_ms > now {
                break;
            }
            self.finished.pop_front();
            if self.forget_ended(trip) {
                forgotten.push(trip);
            }
        }
        forgotten
    }

    /// Forgets an ended trip (its retention ran out), and its request key.
    fn forget_ended(&mut self, id: TripId) -> bool {
        let Some(row) = self.ended.get(&id) else { return false };
        let hash = hash_key(&self.hasher, row.key());
        if let Ok(entry) = self.by_request.find_entry(hash, |&(_, other)| other == id) {
            entry.remove();
        }
        self.ended.remove(&id);
        true
    }

    /// Any trip kept, open or ended, as the rider sees it.
    pub fn trip(&self, id: TripId) -> Option<Trip> {
        match self.rows.get(&id) {
            Some(row) => Some(row.trip.clone()),
            None => self.ended.get(&id).map(|row| row.unpack(id)),
        }
    }

    /// Every trip kept, open ones first.
    pub fn trips(&self) -> impl Iterator<Item = Trip> + '_ {
        self.rows.values().map(|row| row.trip.clone()).chain(self.ended.iter().map(|(id, row)| row.unpack(*id)))
    }

    /// Every ended trip.
    pub fn ended_rows(&self) -> impl Iterator<Item = (TripId, &EndedTrip)> {
        self.ended.iter().map(|(id, row)| (*id, &**row))
    }

    /// Open trips.
    pub fn iter(&self) -> impl Iterator<Item = (&TripId, &TripState)> {
        self.rows.iter().map(|(id, row)| (id, &**row))
    }

    /// Open trips.
    pub fn values(&self) -> impl Iterator<Item = &TripState> {
        self.rows.values().map(|row| &**row)
    }

    pub fn counts(&self) -> Counts {
        self.tally.counts
    }

    pub fn density(&self) -> &Density {
        &self.tally.density
    }
    /// This table's rules: every open trip filed under its id and not
    /// ended, every ended one packed and waiting its turn to be forgotten,
    /// every kept trip what its request id leads to and nothing else filed,
    /// and the counts and the map's density what a recount gives.
    pub fn check(&self) -> Result<(), String> {
        let mut recount = Counts::default();
        for (&id, state) in self.iter() {
            if state.trip.id != id {
                return Err(format!("trip {id} is filed under another id {}", state.trip.id));
            }
            if state.trip.status.is_terminal() {
                return Err(format!("trip {id} is {:?} but still filed as open", state.trip.status));
            }
            if self.ended.contains_key(&id) {
                return Err(format!("trip {id} is filed both open and ended"));
            }
            if self.by_request(&state.trip.rider, &state.trip.request_id) != Some(id) {
                return Err(format!("trip {id} is not found by its request id"));
            }
            recount.add(state.counts());
        }
        let waiting: HashSet<_> = self.finished.iter().map(|(_, id)| *id).collect();
        for (id, ended) in self.ended_rows() {
            if !ended.status.is_terminal() {
                return Err(format!("trip {id} is filed as ended while {:?}", ended.status));
            }
            if !waiting.contains(&id) {
                return Err(format!("ended trip {id} is never forgotten"));
            }
            let trip = ended.unpack(id);
            if self.by_request(&trip.rider, &trip.request_id) != Some(id) {
                return Err(format!("ended trip {id} is not found by its request id"));
            }
        }
        let kept = self.rows.len() + self.ended.len();
        if self.indexed_requests() != kept {
            return Err(format!("{} request keys filed for {kept} trips", self.indexed_requests()));
        }
        if let Some(id) = self.rows.keys().chain(self.ended.keys()).find(|id| id.0 >= self.next_id.max(1)) {
            return Err(format!("trip {id} is kept, but the next new id is {}", self.next_id));
        }
        if recount != self.counts() {
            return Err(format!("trip counts {:?} differ from a recount {recount:?}", self.counts()));
        }
        if !density_matches(self.values().filter_map(Counted::place), self.density()) {
            return Err("the waiting trips' map density differs from a recount".to_owned());
        }
        Ok(())
    }
}
