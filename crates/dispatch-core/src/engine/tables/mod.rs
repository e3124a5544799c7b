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
//!
//! Files: here the counts, the density map and [`Tracked`]; `drivers` the
//! driver table, `trips` the trip table.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};

use super::state::{Driver, EndedTrip, TripState};
use super::{Map, Stats};
use crate::geo::LatLng;
use crate::ids::{DriverId, RequestId, RiderId, TripId};
use crate::index::{DriverIndex, DriverKey};
use crate::time::Timestamp;
use crate::trip::{Trip, TripStatus};

mod drivers;
mod trips;

pub(super) use drivers::DriverTable;
pub(super) use trips::TripTable;

/// Live counts of drivers and trips by state: a [`Stats`] whose totals
/// stay 0.
pub(super) type Counts = Stats;

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
