//! The engine's invariants, checked over its whole state. Tests and fuzzers
//! call this after every step; it costs O(drivers + trips + offers).
//!
//! Each owner checks its own rules; what is checked here holds between
//! owners: a trip and its driver name each other, an offer is known to its
//! trip and its driver, a queued trip is searching with no offer out.

use std::collections::HashMap;

use super::Engine;
use crate::trip::TripStatus;

impl Engine {
    /// Checks that the engine's tables agree with each other: one trip per
    /// driver, one driver per trip, at most one offer per driver and no more
    /// per trip than its policy sends at once, never an offer and a trip at once, every indexed driver known,
    /// no trip offered to more drivers than allowed.
    /// Returns what is broken, if anything.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.drivers.check()?;
        self.trips.check()?;
        self.sessions.check()?;
        self.offers.check()?;
        self.queue.check()?;
        let mut drivers_on_trips = HashMap::new();
        let mut drivers_queued = HashMap::new();
        let mut forward_expected = 0;
        for (id, state) in self.trips.iter() {
            let trip = &state.trip;
            // What bounds the size of its record in the trip log.
            let most = self.config.max_offers_per_trip.min(super::MAX_OFFERS_PER_TRIP);
            if state.tried.len() > most {
                return Err(format!("trip {id} was offered to {} drivers, more than {most}", state.tried.len()));
            }
            if trip.status.has_driver() {
                let Some(driver) = &trip.driver else {
                    return Err(format!("trip {id} is {:?} without a driver", trip.status));
                };
                // One trip per driver, but for one ride explicitly queued
                // behind a ride in progress (forward dispatch).
                let held = if trip.queued { &mut drivers_queued } else { &mut drivers_on_trips };
                if let Some(other) = held.insert(driver.clone(), *id) {
                    return Err(format!("driver {driver} has two trips: {other} and {id}"));
                }
                let key = self.drivers.key_of(driver).ok_or(format!("trip {id}: driver {driver} unknown"))?;
                let d = self.driver(key);
                if trip.queued {
                    let current = d.trip.and_then(|t| self.trips.get(&t)).map(|t| t.trip.status);
                    if d.next != Some(*id) || trip.status != TripStatus::DriverAssigned {
                        return Err(format!("trip {id} is queued for {driver}, whose next is {:?}", d.next));
                    }
                    if current != Some(TripStatus::InProgress) {
                        return Err(format!("trip {id} is queued behind a trip {current:?}, not one in progress"));
                    }
                } else if d.trip != Some(*id) {
                    return Err(format!("trip {id} names {driver}, whose trip is {:?}", d.trip));
                }
            } else if trip.queued {
                return Err(format!("trip {id} is queued while {:?}", trip.status));
            }
            let fanout = self.config.matching.of(trip.service).fanout();
            if state.offers.len() > fanout {
                return Err(format!("trip {id} has {} offers out; its policy allows {fanout}", state.offers.len()));
            }
            for offer in &state.offers {
                match self.offers.get(*offer) {
                    Some(o) if o.trip == *id => {}
                    _ => return Err(format!("trip {id} points at offer {offer}, which is not its open offer")),
                }
                if trip.status != TripStatus::Searching {
                    return Err(format!("trip {id} has an offer out while {:?}", trip.status));
                }
            }
            if self.queue.is_held(*id) && (trip.status != TripStatus::Searching || !state.offers.is_empty()) {
                return Err(format!("trip {id} is held for a batch while {:?} / {:?}", trip.status, state.offers));
            }
            if self.queue.is_held(*id) && !self.queue.has_turn(super::batch::region_of(trip.pickup)) {
                return Err(format!("trip {id} is held for a batch that is never due"));
            }
            if self.queue.is_waiting(*id) && (trip.status != TripStatus::Searching || !state.offers.is_empty()) {
                return Err(format!("trip {id} is waiting for a driver while {:?} / {:?}", trip.status, state.offers));
            }
        }
        for (offer_id, offer) in self.offers.iter() {
            let driver = self.drivers.get(offer.driver);
            let driver = driver.ok_or(format!("offer {offer_id} is to a free slot"))?;
            if driver.offer != Some(offer_id) {
                return Err(format!("offer {offer_id} is to {}, whose offer is {:?}", driver.id, driver.offer));
            }
            // An offer to a driver with a trip is a forward dispatch: the
            // ride in progress, nothing queued yet.
            if let Some(trip) = driver.trip {
                let status = self.trips.get(&trip).map(|t| t.trip.status);
                if self.config.forward_dispatch_m <= 0.0
                    || driver.next.is_some()
                    || status != Some(TripStatus::InProgress)
                {
                    return Err(format!("driver {} has an offer and trip {trip} ({status:?})", driver.id));
                }
            }
            match self.trips.get(&offer.trip) {
                Some(state) if state.offers.contains(&offer_id) => {}
                _ => return Err(format!("offer {offer_id} belongs to no trip that knows it")),
            }
        }
        for (key, driver) in self.drivers.iter() {
            if let Some(trip) = driver.trip
                && drivers_on_trips.get(&driver.id) != Some(&trip)
            {
                return Err(format!("driver {} thinks it has trip {trip}, which does not name it", driver.id));
            }
            if let Some(offer) = driver.offer
                && self.offers.get(offer).is_none()
            {
                return Err(format!("driver {} holds a closed offer {offer}", driver.id));
            }
            if let Some(next) = driver.next
                && (drivers_queued.get(&driver.id) != Some(&next) || driver.trip.is_none())
            {
                return Err(format!("driver {} thinks {next} is queued, which does not name it", driver.id));
            }
            let current = driver.trip.and_then(|t| self.trips.get(&t)).map(|t| &t.trip);
            let dropoff = current.filter(|t| t.status == TripStatus::InProgress).and_then(|t| t.dropoff);
            let should = dropoff.filter(|_| self.config.forward_dispatch_m > 0.0 && driver.next.is_none());
            if should.is_some_and(|at| !self.forward.holds_at(key, at)) {
                return Err(format!("driver {} is not in the dropoff index at its dropoff", driver.id));
            }
            forward_expected += usize::from(should.is_some());
            if driver.session.is_none() && driver.trip.is_none() {
                return Err(format!("driver {} has neither a session nor a trip", driver.id));
            }
            if let Some(session) = driver.session
                && !self.sessions.speaks_for(session, key)
            {
                return Err(format!("driver {}'s session {session} does not speak for it", driver.id));
            }
        }
        if self.forward.len() != forward_expected {
            return Err(format!("{} in the dropoff index, {forward_expected} expected", self.forward.len()));
        }
        if self.queue.settled() {
            self.check_no_missed_match()?;
        }
        Ok(())
    }

    /// With no retry pending, no waiting trip may have an offerable driver
    /// in range (checked by brute force over every driver): within its
    /// radius, and able to come within `max_pickup_eta_ms` (by road, with a
    /// road network, where a road leads from there at all).
    fn check_no_missed_match(&self) -> Result<(), String> {
        for trip_id in self.queue.waiting() {
            let Some(state) = self.trips.get(&trip_id) else { continue };
            let pickup = state.trip.pickup;
            let could_come = |at: crate::geo::LatLng| {
                let crow_m = at.distance_m(pickup);
                let leg = self.roads.as_ref().and_then(|roads| roads.legs_to(&[at], pickup).pop().flatten());
                let mps = self.config.eta_speed_kmh.max(1.0) / 3.6;
                crow_m <= state.radius_m && self.within_eta(leg.map_or(crow_m, |leg| leg.seconds * mps))
            };
            let missed = self.drivers.iter().map(|(_, d)| d).find(|d| {
                d.is_offerable()
                    && d.services.contains(state.trip.service)
                    && !state.tried.contains(&d.id)
                    && d.position.is_some_and(could_come)
            });
            if let Some(driver) = missed {
                return Err(format!("trip {trip_id} waits while {} could take it", driver.id));
            }
        }
        Ok(())
    }
}
