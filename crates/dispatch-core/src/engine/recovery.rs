//! Coming back: drivers returning after their session dropped, and the
//! engine rebuilt from the trip log after a restart.

use std::collections::HashMap;

use super::state::{Driver, Timer, TripState};
use super::{Engine, TripRecord};
use crate::ids::TripId;
use crate::index::DriverKey;
use crate::time::Timestamp;
use crate::trip::TripStatus;

impl Engine {
    /// Holds `trip` for a driver whose session just ended, until the grace
    /// period runs out.
    pub(super) fn hold_for_return(&mut self, now: Timestamp, key: DriverKey, trip: TripId) {
        let until = now + self.config.driver_grace_ms;
        let mut driver = self.drivers.row(key);
        driver.grace_until = Some(until);
        let next = driver.next;
        drop(driver);
        self.timers.insert((until, Timer::DriverGrace(trip)));
        // A ride queued behind it has not started either: the same hold.
        if let Some(next) = next {
            self.timers.insert((until, Timer::DriverGrace(next)));
        }
    }

    /// A disconnected driver did not come back in time: a trip not yet in
    /// progress goes back to searching (never to that driver again); one in
    /// progress stays, since the rider is in the car.
    pub(super) fn grace_over(&mut self, now: Timestamp, trip_id: TripId, until: Timestamp) {
        let Some(state) = self.trips.get(&trip_id) else { return };
        if !matches!(state.trip.status, TripStatus::DriverAssigned | TripStatus::DriverArrived) {
            return;
        }
        let Some(key) = state.trip.driver.as_ref().and_then(|d| self.drivers.key_of(d)) else { return };
        let driver = self.driver(key);
        let holds = driver.trip == Some(trip_id) || driver.next == Some(trip_id);
        if driver.session.is_some() || driver.grace_until != Some(until) || !holds {
            return;
        }
        self.reassign(now, trip_id, key);
    }

    /// An engine rebuilt from the trip log at `now`, after a restart.
    ///
    /// `records` are every record read, oldest first; the last one for each
    /// trip wins. Then:
    /// - an ended trip is kept until its retention runs out (so `GetTrip`
    ///   and request-id retries still find it), counted from when it ended;
    /// - a trip with a driver stays with that driver, who has no session
    ///   yet: the app gets the trip back on reconnect, within
    ///   `Config::driver_grace_ms` of `now` if the ride has not started;
    /// - a searching trip whose deadline passed ends `NoDriverFound`; any
    ///   other searches again with a fresh deadline (its offers are void).
    ///
    /// Trip ids continue from `next_trip` or past the largest id seen,
    /// whichever is larger, so none is reused. Offer ids start at
    /// `first_offer`: the caller makes it unique to this run, so a reply to
    /// an offer from before the restart can never hit a new one.
    ///
    /// What changed on the way (searches ended, trips moved off a driver
    /// who has another) comes out as effects, to be logged like any other.
    pub fn restore(
        config: super::Config,
        now: Timestamp,
        records: impl IntoIterator<Item = TripRecord>,
        next_trip: u64,
        first_offer: u64,
    ) -> Self {
        let mut latest: HashMap<TripId, TripRecord> = HashMap::new();
        for record in records {
            latest.insert(record.trip.id, record);
        }
        let mut records: Vec<TripRecord> = latest.into_values().collect();
        // Ended trips in the order they ended, so retention drops the
        // oldest first; then the rest by id, the order they were requested.
        records.sort_by_key(|r| (!r.trip.status.is_terminal(), r.trip.updated_at, r.trip.id));
        let mut engine = Engine::new(config);
        engine.offers = super::offers::Offers::starting_at(first_offer);
        engine.trips.ids_from(next_trip);
        let mut searching = Vec::new();
        for record in records {
            let TripRecord { trip, radius_m, tried, search_deadline, driver_fleet } = record;
            engine.trips.ids_from(trip.id.0.saturating_add(1));
            let ended_at = trip.updated_at;
            if trip.status.is_terminal() && ended_at + engine.config.trip_retention_ms <= now {
                continue;
            }
            let id = trip.id;
            let status = trip.status;
            if status.is_terminal() {
                engine.trips.insert_ended(trip);
                continue;
            }
            // A ride queued behind another (forward dispatch) is not put
            // back on its driver: it searches again, like one whose driver
            // has another trip.
            let queued = trip.queued;
            let driver = trip.driver.clone().filter(|_| status.has_driver());
            let position = trip.driver_position;
            engine.trips.insert(
                id,
                TripState {
                    trip,
                    radius_m,
                    tried: tried.into_iter().collect(),
                    offers: Vec::new(),
                    search_deadline,
                    offered_once: true,
                    borders: None,
                    asking: false,
                    asked_across: false,
                    claims: 0,
                    eta_at: Timestamp(0),
                },
            );
            if let Some(driver) = driver {
                if engine.drivers.key_of(&driver).is_some() || queued {
                    // Two live trips for one driver cannot come from a log
                    // this engine wrote; keep the first, search for the other.
                    searching.push((id, true));
                    continue;
                }
                let key = engine.drivers.insert(Driver::detached(driver, id, position, driver_fleet));
                if status != TripStatus::InProgress {
                    engine.hold_for_return(now, key, id);
                }
                engine.refresh_forward(key);
            } else {
                searching.push((id, false));
            }
        }
        for (id, lost_driver) in searching {
            let timeout = engine.config.search_timeout_ms;
            let Some(mut state) = engine.trips.get_mut(&id) else { continue };
            if !lost_driver && state.search_deadline <= now {
                drop(state);
                engine.stats.trips_no_driver += 1;
                engine.finish(now, id, TripStatus::NoDriverFound, None);
                continue;
            }
            if lost_driver {
                state.trip.status = TripStatus::Searching;
                state.trip.driver = None;
                state.trip.driver_position = None;
                state.trip.pickup_distance_m = None;
                state.trip.pickup_eta_ms = None;
                state.trip.queued = false;
                state.trip.updated_at = now;
            }
            // The new deadline is logged, so a second restart counts from
            // this one and not from the original request.
            state.search_deadline = now + timeout;
            drop(state);
            engine.trip_changed(id);
            engine.start_search(now, id);
        }
        engine
    }
}
