//! Riders asking and cancelling; drivers answering offers and moving their
//! trips on.

use std::collections::HashSet;

use super::state::{Session, TripState};
use super::{DriverEvent, Effect, Engine, RideRequest, RideTaken, WithdrawReason};
use crate::error::EngineError;
use crate::ids::{DriverId, OfferId, SessionId, TripId};
use crate::index::DriverKey;
use crate::time::Timestamp;
use crate::trip::{Trip, TripStatus};

impl Engine {
    /// A rider asks for a ride. Answers with the trip and whether it is
    /// new: the same rider with the same request id gets the trip it
    /// already has, so a retry never orders a second car. A new trip is
    /// offered at once to the nearest offerable driver, if there is one.
    /// Nothing in a request the types let through can be refused, so this
    /// cannot fail.
    pub fn request_ride(&mut self, now: Timestamp, request: RideRequest) -> RideTaken {
        if let Some(trip) =
            self.trips.by_request(&request.rider, &request.request_id).and_then(|id| self.trips.trip(id))
        {
            return RideTaken { trip, created: false };
        }
        let id = self.trips.new_id();
        let trip = Trip {
            id,
            rider: request.rider,
            request_id: request.request_id,
            driver: None,
            status: TripStatus::Searching,
            service: request.service,
            pickup: request.pickup,
            dropoff: request.dropoff,
            driver_position: None,
            pickup_distance_m: None,
            pickup_eta_ms: None,
            requested_at: now,
            updated_at: now,
            cancel_reason: None,
            queued: false,
        };
        let radius_m = request.max_pickup_distance_m.unwrap_or(self.config.max_pickup_distance_m);
        self.trips.insert(
            id,
            TripState {
                trip: trip.clone(),
                radius_m,
                tried: HashSet::new(),
                offers: Vec::new(),
                search_deadline: now + self.config.search_timeout_ms,
                offered_once: false,
                borders: None,
                asking: false,
                asked_across: false,
                claims: 0,
                eta_at: Timestamp(0),
            },
        );
        self.stats.ride_requests += 1;
        self.trip_changed(id);
        // Earlier requests waiting for drivers that were freed since the
        // last tick go first.
        if self.queue.has_freed() {
            self.match_freed(now);
        }
        self.start_search(now, id);
        RideTaken { trip, created: true }
    }

    /// The rider cancels, before the ride starts: an offer out is withdrawn,
    /// an assigned driver is told and is free again. Answers the trip as it
    /// ended; cancelling a cancelled trip again answers it as it is, so a
    /// retry is harmless.
    pub fn cancel_ride(&mut self, now: Timestamp, trip_id: TripId, reason: &str) -> Result<Trip, EngineError> {
        self.cancel(now, trip_id, reason, "cancelled by rider", |status| status.rider_may_cancel())
    }

    /// An operator ends a trip that has not ended, whatever its status: a
    /// ride in progress whose driver never came back would otherwise be
    /// held for good. The trip ends `Cancelled`; its driver, if connected,
    /// sees it so and is free, and one no session speaks for is forgotten.
    pub fn cancel_by_operator(&mut self, now: Timestamp, trip_id: TripId, reason: &str) -> Result<Trip, EngineError> {
        self.cancel(now, trip_id, reason, "cancelled by an operator", |status| !status.is_terminal())
    }

    fn cancel(
        &mut self,
        now: Timestamp,
        trip_id: TripId,
        reason: &str,
        default_reason: &str,
        may_cancel: impl Fn(TripStatus) -> bool,
    ) -> Result<Trip, EngineError> {
        let Some(state) = self.trips.get(&trip_id) else {
            let ended = self.trips.ended(&trip_id).ok_or(EngineError::UnknownTrip(trip_id))?;
            return match ended.status {
                TripStatus::Cancelled => Ok(ended.unpack(trip_id)),
                status => Err(EngineError::TooLateToCancel { trip: trip_id, status }),
            };
        };
        let status = state.trip.status;
        if !may_cancel(status) {
            return Err(EngineError::TooLateToCancel { trip: trip_id, status });
        }
        let offers = state.offers.clone();
        let driver = state.trip.driver.as_ref().and_then(|id| self.drivers.key_of(id));
        for offer in offers {
            self.close_offer(offer, WithdrawReason::RiderCancelled);
        }
        let reason = if reason.is_empty() { default_reason.to_owned() } else { bounded_reason(reason) };
        self.stats.trips_cancelled += 1;
        self.finish(now, trip_id, TripStatus::Cancelled, Some(reason));
        if let Some(key) = driver.filter(|_| status.has_driver()) {
            self.release_driver(now, key, trip_id);
        }
        self.trip(trip_id).ok_or(EngineError::UnknownTrip(trip_id))
    }

    /// A driver (or the fleet that speaks for it) answers an offer.
    pub fn offer_reply(
        &mut self,
        now: Timestamp,
        session: SessionId,
        offer_id: OfferId,
        accept: bool,
    ) -> Result<(), EngineError> {
        let key = self.offer_addressee(session, offer_id)?;
        let trip_id = self.offers.get(offer_id).map(|o| o.trip).ok_or(EngineError::UnknownOffer(offer_id))?;
        if accept {
            self.offers.close(offer_id);
            self.stats.offers_accepted += 1;
            self.drivers.row(key).answers.note(false);
            let trip = self.trips.get(&trip_id).ok_or(EngineError::UnknownTrip(trip_id))?;
            let distance_m = self.pickup_route_m(key, trip.trip.pickup);
            self.assign(now, trip_id, key, distance_m);
        } else {
            self.stats.offers_declined += 1;
            self.close_offer(offer_id, WithdrawReason::Declined);
            self.try_match(now, trip_id);
        }
        Ok(())
    }

    /// Which driver an offer reply speaks for, checked: the offer must be
    /// open and addressed to the session's driver (or, in a fleet session, to
    /// one of that fleet's drivers).
    fn offer_addressee(&self, session: SessionId, offer_id: OfferId) -> Result<DriverKey, EngineError> {
        self.sessions.get(session).ok_or(EngineError::SessionNotOpen)?;
        let offer = self.offers.get(offer_id).ok_or(EngineError::UnknownOffer(offer_id))?;
        if self.sessions.speaks_for(session, offer.driver) {
            Ok(offer.driver)
        } else {
            Err(EngineError::UnknownOffer(offer_id))
        }
    }

    /// The driver a message in `session` speaks for: the session's own
    /// driver, or the named driver of a fleet session.
    pub(super) fn session_driver(
        &self,
        session: SessionId,
        fleet_driver: Option<&DriverId>,
    ) -> Result<DriverKey, EngineError> {
        match (self.sessions.get(session), fleet_driver) {
            (None, _) => Err(EngineError::SessionNotOpen),
            (Some(Session::Driver(key)), None) => Ok(*key),
            (Some(Session::Fleet(fleet)), Some(id)) => self
                .drivers
                .key_of(id)
                .filter(|key| fleet.drivers.contains(key))
                .ok_or_else(|| EngineError::NotFleetDriver(id.clone())),
            (Some(Session::Driver(_)), Some(_)) => Err(EngineError::WrongSessionKind("driver")),
            (Some(Session::Fleet(_)), None) => Err(EngineError::WrongSessionKind("fleet")),
        }
    }

    /// A driver moves its current trip on: arrived, started, completed, or
    /// cancelled (before the pickup the trip goes back to searching for
    /// someone else; after it, the trip ends cancelled).
    pub fn trip_progress(
        &mut self,
        now: Timestamp,
        session: SessionId,
        fleet_driver: Option<&DriverId>,
        trip_id: TripId,
        report: TripStatus,
    ) -> Result<(), EngineError> {
        if !report.is_driver_report() {
            return Err(EngineError::NotADriverReport(report));
        }
        let key = self.session_driver(session, fleet_driver)?;
        let queued = self.driver(key).next == Some(trip_id);
        if self.driver(key).trip != Some(trip_id) && !queued {
            return Err(EngineError::NotDriversTrip(trip_id));
        }
        let state = self.trips.get(&trip_id).ok_or(EngineError::UnknownTrip(trip_id))?;
        let from = state.trip.status;
        if queued && report != TripStatus::Cancelled {
            // Nothing happens at a queued pickup before the ride in
            // progress ends; giving it up is the one report allowed.
            return Err(EngineError::OutOfOrder { trip: trip_id, from, to: report });
        }
        let to = from.after_driver_report(report).ok_or(EngineError::OutOfOrder { trip: trip_id, from, to: report })?;
        match to {
            TripStatus::Completed | TripStatus::Cancelled => {
                if to == TripStatus::Completed {
                    self.stats.trips_completed += 1;
                } else {
                    self.stats.trips_cancelled += 1;
                }
                let reason = (to == TripStatus::Cancelled).then(|| "cancelled by driver".to_owned());
                self.finish(now, trip_id, to, reason);
                self.release_driver(now, key, trip_id);
            }
            TripStatus::Searching => self.reassign(now, trip_id, key),
            _ => {
                let Some(mut state) = self.trips.get_mut(&trip_id) else { return Ok(()) };
                state.trip.status = to;
                state.trip.updated_at = now;
                let trip = state.trip.clone();
                drop(state);
                self.trip_changed(trip_id);
                if let Some(session) = self.driver(key).session {
                    self.effects.push(Effect::Driver { session, event: DriverEvent::Trip(trip) });
                }
                self.refresh_forward(key);
            }
        }
        Ok(())
    }

    /// The driver gave the trip up before the pickup: the driver sees it
    /// cancelled and is free; the rider sees it searching again, with a fresh
    /// search deadline, and it is never offered to that driver again.
    pub(super) fn reassign(&mut self, now: Timestamp, trip_id: TripId, key: DriverKey) {
        let driver_id = self.driver(key).id.clone();
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return };
        let mut driver_view = state.trip.clone();
        driver_view.status = TripStatus::Cancelled;
        driver_view.cancel_reason = Some("cancelled by driver".to_owned());
        driver_view.updated_at = now;
        state.tried.insert(driver_id);
        let trip = &mut state.trip;
        trip.status = TripStatus::Searching;
        trip.driver = None;
        trip.driver_position = None;
        trip.pickup_distance_m = None;
        trip.pickup_eta_ms = None;
        trip.queued = false;
        trip.updated_at = now;
        state.search_deadline = now + self.config.search_timeout_ms;
        drop(state);
        self.trip_changed(trip_id);
        self.free_driver_of(now, key, driver_view);
        self.start_search(now, trip_id);
    }

    /// The trip ended for the driver: they get it as it ended and are free
    /// (or go on to the ride queued behind it).
    pub(super) fn release_driver(&mut self, now: Timestamp, key: DriverKey, trip_id: TripId) {
        if let Some(trip) = self.trip(trip_id) {
            self.free_driver_of(now, key, trip);
        }
    }

    /// `trip_seen` is over for the driver, who is told. If it was the ride
    /// queued behind their current one, they keep the current one; if it
    /// was the current one, the queued ride (if any) starts; else they are
    /// free.
    fn free_driver_of(&mut self, now: Timestamp, key: DriverKey, trip_seen: Trip) {
        let mut driver = self.drivers.row(key);
        let session = driver.session;
        let next = if driver.next == Some(trip_seen.id) {
            driver.next = None;
            None
        } else {
            let next = driver.next.take();
            driver.trip = next;
            next
        };
        let free = driver.trip.is_none();
        drop(driver);
        if let Some(session) = session {
            self.effects.push(Effect::Driver { session, event: DriverEvent::Trip(trip_seen) });
        }
        if let Some(next) = next {
            self.start_queued(now, key, next);
        }
        self.refresh_forward(key);
        if free {
            self.queue.freed(key);
            self.stray(key);
            if session.is_none() {
                // Nobody speaks for this driver any more and its trip is
                // over: forget it, as if its session had just ended.
                self.forget_driver(key);
            }
        }
    }
}

/// `reason`, cut to at most [`super::MAX_REASON_BYTES`] at a character
/// boundary: a trip record stays bounded whatever a caller sends.
fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(super::MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}
