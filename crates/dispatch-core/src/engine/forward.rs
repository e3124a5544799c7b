//! Forward dispatch: a driver about to drop a rider next to a new pickup
//! can be offered that ride next, when finishing the ride and driving on
//! from its dropoff beats every free driver's pickup.
//!
//! Such a driver is in `forward`, an index of dropoffs: drivers with a ride
//! in progress (with a dropoff) and nothing queued. Once they accept, the
//! new trip is their `next`: assigned to them and `queued`, and it becomes
//! their trip when the current one ends. A queued trip is the one
//! exception to one trip per driver, and it is explicit (`Driver::next`,
//! `Trip::queued`).

use std::collections::HashSet;

use super::{CANDIDATES, DriverEvent, Effect, Engine};
use crate::geo::LatLng;
use crate::ids::{DriverId, TripId};
use crate::index::DriverKey;
use crate::service::ServiceType;
use crate::time::Timestamp;
use crate::trip::TripStatus;

impl Engine {
    /// Puts `key` in the dropoff index, or takes it out, as it now
    /// qualifies: forward dispatch on, a ride in progress with a dropoff,
    /// nothing queued.
    pub(super) fn refresh_forward(&mut self, key: DriverKey) {
        let dropoff = (self.config.forward_dispatch_m > 0.0)
            .then(|| self.drivers.get(key))
            .flatten()
            .filter(|d| d.next.is_none())
            .and_then(|d| self.trips.get(&d.trip?))
            .filter(|t| t.trip.status == TripStatus::InProgress)
            .and_then(|t| t.trip.dropoff);
        match dropoff {
            Some(at) => {
                // A waiting trip near that dropoff may now be served by
                // this driver: retry the waiting trips (at the rate of
                // moves).
                self.forward.locate_mut(key, at);
                self.queue.moved();
            }
            None => self.forward.remove(key),
        }
    }

    /// The metres `key` drives to `pickup`: straight there, or, with a ride
    /// in progress, to that ride's dropoff and on from there.
    pub(super) fn pickup_route_m(&self, key: DriverKey, pickup: LatLng) -> f64 {
        let Some(position) = self.driver(key).position else { return 0.0 };
        match self.dropoff_in_progress(key) {
            Some(dropoff) => position.distance_m(dropoff) + dropoff.distance_m(pickup),
            None => position.distance_m(pickup),
        }
    }

    /// The dropoff of `key`'s ride in progress, if it has one.
    pub(super) fn dropoff_in_progress(&self, key: DriverKey) -> Option<LatLng> {
        self.driver(key)
            .trip
            .and_then(|t| self.trips.get(&t))
            .filter(|t| t.trip.status == TripStatus::InProgress)
            .and_then(|t| t.trip.dropoff)
    }

    /// The best driver to offer a ride at `pickup` next, by forward
    /// dispatch: among those whose dropoff is within
    /// `Config::forward_dispatch_m` of it (the nearest few), the shortest
    /// route via the dropoff, with its length; never a route longer than
    /// `radius_m`, the farthest a free driver could be sent from.
    pub(super) fn forward_candidate(
        &self,
        pickup: LatLng,
        service: ServiceType,
        radius_m: f64,
        tried: &HashSet<DriverId>,
    ) -> Option<(DriverKey, f64)> {
        let radius = self.config.forward_dispatch_m;
        if radius <= 0.0 || self.forward.is_empty() {
            return None;
        }
        let eligible = |key| {
            let d = self.driver(key);
            // Where the driver is must be known to reckon the route.
            d.session.is_some()
                && d.position.is_some()
                && d.available
                && d.offer.is_none()
                && d.next.is_none()
                && d.services.contains(service)
                && !tried.contains(&d.id)
        };
        let by_id = |a, b| self.driver(a).id.cmp(&self.driver(b).id);
        let near = self.forward.nearest_k(pickup, radius, CANDIDATES, eligible, by_id);
        near.into_iter()
            .map(|n| (n.key, self.pickup_route_m(n.key, pickup)))
            .filter(|&(_, route_m)| route_m <= radius_m)
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| by_id(a.0, b.0)))
    }

    /// The driver's ride ended and `next` was queued behind it: it is now
    /// their trip, no longer queued, and both the rider and the driver are
    /// told.
    pub(super) fn start_queued(&mut self, now: Timestamp, key: DriverKey, next: TripId) {
        let (position, session) = (self.driver(key).position, self.driver(key).session);
        // From where the driver is now: by road with a road network.
        let pickup = self.trips.get(&next).map(|state| state.trip.pickup);
        let leg = pickup.zip(position).map(|(pickup, at)| self.pickup_leg(key, pickup, at.distance_m(pickup)));
        let Some(mut state) = self.trips.get_mut(&next) else { return };
        state.trip.queued = false;
        state.trip.updated_at = now;
        state.trip.driver_position = position;
        state.trip.pickup_distance_m = leg.map(|(metres, _)| metres);
        state.trip.pickup_eta_ms = leg.map(|(_, eta_ms)| eta_ms);
        state.eta_at = now;
        let trip = state.trip.clone();
        drop(state);
        self.drivers.pushed(key, now);
        self.trip_changed(next);
        if let Some(session) = session {
            self.effects.push(Effect::Driver { session, event: DriverEvent::Trip(trip) });
        }
    }
}
