//! The driver and trip tables, each keeping its live counts as its rows
//! change, so that [`super::Engine::stats`] costs O(1) however many drivers
//! and kept trips there are.
//!
//! Every change to a row goes through a [`Tracked`] handle: taking one
//! removes the row's contribution from the counts, and dropping it adds the
//! row's new contribution back. `Engine::check_invariants` recounts by brute
//! force and compares.

use std::ops::{Deref, DerefMut};

use super::state::{Driver, TripState};
use crate::ids::TripId;
use crate::index::DriverKey;
use crate::trip::TripStatus;

/// Live counts of drivers and trips by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub drivers_connected: u64,
    pub drivers_available: u64,
    pub drivers_on_trip: u64,
    pub trips_searching: u64,
    pub trips_active: u64,
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
        self.trips_searching = f(self.trips_searching, other.trips_searching);
        self.trips_active = f(self.trips_active, other.trips_active);
    }
}

/// A row that counts towards [`Counts`].
pub(super) trait Counted {
    /// What this row adds to the counts.
    fn counts(&self) -> Counts;
}

impl Counted for Driver {
    fn counts(&self) -> Counts {
        Counts {
            drivers_connected: u64::from(self.session.is_some()),
            drivers_available: u64::from(self.is_offerable()),
            drivers_on_trip: u64::from(self.trip.is_some()),
            ..Counts::default()
        }
    }
}

impl Counted for TripState {
    fn counts(&self) -> Counts {
        Counts {
            trips_searching: u64::from(self.trip.status == TripStatus::Searching),
            trips_active: u64::from(self.trip.status.has_driver()),
            ..Counts::default()
        }
    }
}

/// A row borrowed for change; its counts are settled when it is dropped.
pub(super) struct Tracked<'a, T: Counted> {
    row: &'a mut T,
    counts: &'a mut Counts,
}

impl<'a, T: Counted> Tracked<'a, T> {
    fn new(row: &'a mut T, counts: &'a mut Counts) -> Self {
        counts.sub(row.counts());
        Self { row, counts }
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
        self.counts.add(self.row.counts());
    }
}

/// Driver records by slot, with free slots reused.
#[derive(Default)]
pub(super) struct DriverTable {
    slots: Vec<Option<Driver>>,
    free: Vec<DriverKey>,
    counts: Counts,
}

impl DriverTable {
    pub fn get(&self, key: DriverKey) -> Option<&Driver> {
        self.slots.get(key.0 as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, key: DriverKey) -> Option<Tracked<'_, Driver>> {
        let row = self.slots.get_mut(key.0 as usize).and_then(Option::as_mut)?;
        Some(Tracked::new(row, &mut self.counts))
    }

    /// The driver in `key`'s slot, for change. Keys come only from
    /// `driver_keys`, sessions and trips, which the engine keeps in step
    /// with this table; a miss is a bug in the engine.
    pub fn row(&mut self, key: DriverKey) -> Tracked<'_, Driver> {
        match self.get_mut(key) {
            Some(row) => row,
            None => unreachable!("driver slot {key:?} is empty"),
        }
    }

    /// Files a driver in a free slot (or a new one) and returns its key.
    pub fn insert(&mut self, driver: Driver) -> DriverKey {
        self.counts.add(driver.counts());
        match self.free.pop() {
            Some(key) => {
                self.slots[key.0 as usize] = Some(driver);
                key
            }
            None => {
                let key = DriverKey(u32::try_from(self.slots.len()).unwrap_or(u32::MAX));
                self.slots.push(Some(driver));
                key
            }
        }
    }

    pub fn remove(&mut self, key: DriverKey) -> Option<Driver> {
        let driver = self.slots.get_mut(key.0 as usize).and_then(Option::take)?;
        self.counts.sub(driver.counts());
        self.free.push(key);
        Some(driver)
    }

    /// Every driver with its key.
    pub fn iter(&self) -> impl Iterator<Item = (DriverKey, &Driver)> {
        self.slots.iter().enumerate().filter_map(|(slot, d)| Some((DriverKey(slot as u32), d.as_ref()?)))
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }
}

/// Trips by id, ended ones included until their retention runs out.
///
/// Rows are boxed: the table grows to hundreds of thousands of trips, and
/// growing a hash table moves every row at once. Moving a pointer instead
/// of a ~300-byte row keeps that pause (on the engine's thread, where every
/// ride waits) at milliseconds rather than hundreds of them.
#[derive(Default)]
pub(super) struct TripTable {
    rows: super::Map<TripId, Box<TripState>>,
    counts: Counts,
}

impl TripTable {
    pub fn get(&self, id: &TripId) -> Option<&TripState> {
        self.rows.get(id).map(|row| &**row)
    }

    pub fn get_mut(&mut self, id: &TripId) -> Option<Tracked<'_, TripState>> {
        let row = self.rows.get_mut(id)?;
        Some(Tracked::new(&mut **row, &mut self.counts))
    }

    /// Files a trip, replacing any row under the same id.
    pub fn insert(&mut self, id: TripId, state: TripState) {
        self.counts.add(state.counts());
        if let Some(old) = self.rows.insert(id, Box::new(state)) {
            self.counts.sub(old.counts());
        }
    }

    pub fn remove(&mut self, id: &TripId) -> Option<TripState> {
        let state = self.rows.remove(id)?;
        self.counts.sub(state.counts());
        Some(*state)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TripId, &TripState)> {
        self.rows.iter().map(|(id, row)| (id, &**row))
    }

    pub fn values(&self) -> impl Iterator<Item = &TripState> {
        self.rows.values().map(|row| &**row)
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }
}
