//! A trip's life: searches started and ended, every change logged before
//! anyone hears of it, and the end of a trip.

use super::state::Timer;
use super::{Effect, Engine, LogRecord, TripRecord, WithdrawReason};
use crate::ids::{DriverId, TripId};
use crate::time::Timestamp;
use crate::trip::TripStatus;

impl Engine {
    /// Ends a search that ran out of time; `deadline` tells a current timer
    /// from one left over from an earlier search of the same trip.
    pub(super) fn end_search(&mut self, now: Timestamp, trip_id: TripId, deadline: Timestamp) {
        let Some(state) = self.trips.get(&trip_id) else { return };
        if state.trip.status != TripStatus::Searching || state.search_deadline != deadline {
            return;
        }
        for offer in state.offers.clone() {
            self.close_offer(offer, WithdrawReason::SearchTimedOut);
        }
        self.stats.trips_no_driver += 1;
        self.finish(now, trip_id, TripStatus::NoDriverFound, None);
    }

    /// Moves a trip to a terminal status and tells the rider.
    pub(super) fn finish(&mut self, now: Timestamp, trip_id: TripId, status: TripStatus, reason: Option<String>) {
        self.queue.remove(trip_id);
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return };
        state.trip.status = status;
        state.trip.updated_at = now;
        state.trip.cancel_reason = reason;
        // The rider sees where the driver is only while the driver is theirs.
        state.trip.driver_position = None;
        state.trip.queued = false;
        drop(state);
        self.trip_changed(trip_id);
        self.trips.end(now, trip_id);
    }

    /// A trip's state changed: log it, then tell the rider.
    pub(super) fn trip_changed(&mut self, trip_id: TripId) {
        self.show_driver_position(trip_id);
        self.persist(trip_id);
        if let Some(state) = self.trips.get(&trip_id) {
            self.effects.push(Effect::Rider(state.trip.clone()));
        }
    }

    /// Puts the driver's newest position on their trip: pings only do so
    /// when its riders are due an update (`rider_position_interval_ms`),
    /// and a change shows where the car is now.
    fn show_driver_position(&mut self, trip_id: TripId) {
        let Some(state) = self.trips.get(&trip_id) else { return };
        if !state.trip.status.has_driver() {
            return;
        }
        let Some(key) = state.trip.driver.as_ref().and_then(|d| self.drivers.key_of(d)) else { return };
        let driver = self.driver(key);
        // A ride queued behind the driver's current one (forward
        // dispatch) shows where the driver was when it was assigned.
        if driver.trip != Some(trip_id) {
            return;
        }
        if let Some(position) = driver.position {
            self.trips.show_driver_at(trip_id, position, None);
        }
    }

    /// Logs a trip's whole state as it is now.
    fn persist(&mut self, trip_id: TripId) {
        let Some(state) = self.trips.get(&trip_id) else { return };
        let mut tried: Vec<DriverId> = state.tried.iter().cloned().collect();
        tried.sort_unstable();
        let driver_fleet = state
            .trip
            .driver
            .as_ref()
            .filter(|_| state.trip.status.has_driver())
            .and_then(|d| self.drivers.key_of(d))
            .and_then(|key| self.driver(key).fleet.clone());
        self.effects.push(Effect::Persist(LogRecord::Trip(TripRecord {
            trip: state.trip.clone(),
            radius_m: state.radius_m,
            tried,
            search_deadline: state.search_deadline,
            driver_fleet,
        })));
    }

    /// Starts (or restarts) a trip's search: a fresh deadline, then a match.
    pub(super) fn start_search(&mut self, now: Timestamp, trip_id: TripId) {
        let deadline = now + self.config.search_timeout_ms;
        if let Some(mut state) = self.trips.get_mut(&trip_id) {
            state.search_deadline = deadline;
            self.timers.insert((deadline, Timer::SearchDeadline(trip_id)));
        }
        self.try_match(now, trip_id);
    }
}
