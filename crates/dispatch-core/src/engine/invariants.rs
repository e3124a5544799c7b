//! The engine's invariants, checked over its whole state. Tests and fuzzers
//! call this after every step; it costs O(drivers + trips + offers).

use std::collections::HashMap;

use super::Engine;
use super::state::Session;
use super::tables::{CellCounts, CellKey, Counted, Counts, Density, LEVELS, Shade};
use crate::trip::TripStatus;

impl Engine {
    /// Checks that the engine's tables agree with each other: one trip per
    /// driver, one driver per trip, at most one offer per driver and no more
    /// per trip than its policy sends at once, never an offer and a trip at once, every indexed driver known,
    /// no trip offered to more drivers than allowed.
    /// Returns what is broken, if anything.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut drivers_on_trips = HashMap::new();
        let mut drivers_queued = HashMap::new();
        let mut forward_expected = 0;
        for (id, state) in self.trips.iter() {
            let trip = &state.trip;
            if trip.id != *id {
                return Err(format!("trip {id} is filed under another id {}", trip.id));
            }
            if trip.status.is_terminal() {
                return Err(format!("trip {id} is {:?} but still filed as open", trip.status));
            }
            if self.trips.ended(id).is_some() {
                return Err(format!("trip {id} is filed both open and ended"));
            }
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
                let key = self.driver_keys.get(driver).ok_or(format!("trip {id}: driver {driver} unknown"))?;
                let d = self.driver(*key);
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
                match self.offers.get(offer) {
                    Some(o) if o.trip == *id => {}
                    _ => return Err(format!("trip {id} points at offer {offer}, which is not its open offer")),
                }
                if trip.status != TripStatus::Searching {
                    return Err(format!("trip {id} has an offer out while {:?}", trip.status));
                }
            }
            if self.batch_pool.contains(id)
                && (trip.status != TripStatus::Searching || !state.offers.is_empty() || self.unmatched.contains(id))
            {
                return Err(format!("trip {id} is held for a batch while {:?} / {:?}", trip.status, state.offers));
            }
            if self.batch_pool.contains(id)
                && (self.next_batch.is_none() || !self.batch_due.contains_key(&super::batch::region_of(trip.pickup)))
            {
                return Err(format!("trip {id} is held for a batch that is never due"));
            }
            if self.unmatched.contains(id) && (trip.status != TripStatus::Searching || !state.offers.is_empty()) {
                return Err(format!("trip {id} is waiting for a driver while {:?} / {:?}", trip.status, state.offers));
            }
        }
        for (offer_id, offer) in &self.offers {
            let driver = self.drivers.get(offer.driver);
            let driver = driver.ok_or(format!("offer {offer_id} is to a free slot"))?;
            if driver.offer != Some(*offer_id) {
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
                Some(state) if state.offers.contains(offer_id) => {}
                _ => return Err(format!("offer {offer_id} belongs to no trip that knows it")),
            }
        }
        for (key, driver) in self.drivers.iter() {
            if self.driver_keys.get(&driver.id) != Some(&key) {
                return Err(format!("driver {} is not filed under its slot", driver.id));
            }
            if let Some(trip) = driver.trip
                && drivers_on_trips.get(&driver.id) != Some(&trip)
            {
                return Err(format!("driver {} thinks it has trip {trip}, which does not name it", driver.id));
            }
            if let Some(offer) = driver.offer
                && !self.offers.contains_key(&offer)
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
            if let Some(session) = driver.session {
                let speaks = match self.sessions.get(&session) {
                    Some(Session::Driver(k)) => *k == key,
                    Some(Session::Fleet(fleet)) => fleet.drivers.contains(&key),
                    None => false,
                };
                if !speaks {
                    return Err(format!("driver {}'s session {session} does not speak for it", driver.id));
                }
            }
        }
        if self.forward.len() != forward_expected {
            return Err(format!("{} in the dropoff index, {forward_expected} expected", self.forward.len()));
        }
        let indexed = self.drivers.free().len() + self.drivers.busy().len();
        if indexed != self.drivers.iter().filter(|(_, d)| d.position.is_some()).count() {
            return Err("the indexes and the positioned drivers differ".into());
        }
        for (key, driver) in self.drivers.iter() {
            let Some(at) = driver.position else { continue };
            if !driver.is_offerable() && !self.drivers.busy().holds_at(key, at) {
                return Err(format!("driver {} is not offerable but not in the busy index where it is", driver.id));
            }
        }
        // The free index holds exactly the offerable drivers, each findable
        // at its position.
        let offerable: Vec<_> = self.drivers.iter().filter(|(_, d)| d.is_offerable()).collect();
        if self.drivers.free().len() != offerable.len() {
            return Err(format!("{} in the free index, {} offerable", self.drivers.free().len(), offerable.len()));
        }
        for (key, driver) in offerable {
            let Some(at) = driver.position else { continue };
            if !self.drivers.free().holds_at(key, at) {
                return Err(format!("driver {} is offerable but not in the free index where it is", driver.id));
            }
        }
        self.check_counts()?;
        self.check_ended()?;
        if self.freed.is_empty() && !self.drivers_moved {
            self.check_no_missed_match()?;
        }
        Ok(())
    }

    /// Every ended trip is packed and waits its turn to be forgotten; every
    /// kept trip is what its request id leads to, and nothing else is filed.
    fn check_ended(&self) -> Result<(), String> {
        let waiting: std::collections::HashSet<_> = self.finished.iter().map(|(_, id)| *id).collect();
        for (id, ended) in self.trips.ended_rows() {
            if !ended.status.is_terminal() {
                return Err(format!("trip {id} is filed as ended while {:?}", ended.status));
            }
            if !waiting.contains(&id) {
                return Err(format!("ended trip {id} is never forgotten"));
            }
            let trip = ended.unpack(id);
            if self.trips.by_request(&trip.rider, &trip.request_id) != Some(id) {
                return Err(format!("ended trip {id} is not found by its request id"));
            }
        }
        for (&id, state) in self.trips.iter() {
            if self.trips.by_request(&state.trip.rider, &state.trip.request_id) != Some(id) {
                return Err(format!("trip {id} is not found by its request id"));
            }
        }
        let kept = self.trips.iter().count() + self.trips.ended_rows().count();
        if self.trips.indexed_requests() != kept {
            return Err(format!("{} request keys filed for {kept} trips", self.trips.indexed_requests()));
        }
        Ok(())
    }

    /// The counts the tables keep match a recount.
    fn check_counts(&self) -> Result<(), String> {
        let mut recount = Counts::default();
        for (_, driver) in self.drivers.iter() {
            recount.add(driver.counts());
        }
        if recount != self.drivers.counts() {
            return Err(format!("driver counts {:?} differ from a recount {recount:?}", self.drivers.counts()));
        }
        let mut recount = Counts::default();
        for state in self.trips.values() {
            recount.add(state.counts());
        }
        if recount != self.trips.counts() {
            return Err(format!("trip counts {:?} differ from a recount {recount:?}", self.trips.counts()));
        }
        let recount = |places: Vec<(CellKey, Shade)>, density: &Density| {
            (0..LEVELS).all(|level| {
                let mut cells: HashMap<CellKey, CellCounts> = HashMap::new();
                for (cell, shade) in &places {
                    cells.entry(cell.up(level)).or_default()[*shade as usize] += 1;
                }
                cells == density.cells(level).map(|(k, v)| (k, *v)).collect::<HashMap<_, _>>()
            })
        };
        if !recount(self.drivers.iter().filter_map(|(_, d)| d.place()).collect(), self.drivers.density()) {
            return Err("the drivers' map density differs from a recount".to_owned());
        }
        if !recount(self.trips.values().filter_map(Counted::place).collect(), self.trips.density()) {
            return Err("the waiting trips' map density differs from a recount".to_owned());
        }
        Ok(())
    }

    /// With no retry pending, no waiting trip may have an offerable driver
    /// in range (checked by brute force over every driver).
    fn check_no_missed_match(&self) -> Result<(), String> {
        for trip_id in &self.unmatched {
            let Some(state) = self.trips.get(trip_id) else { continue };
            let missed = self.drivers.iter().map(|(_, d)| d).find(|d| {
                d.is_offerable()
                    && d.services.contains(state.trip.service)
                    && !state.tried.contains(&d.id)
                    && d.position.is_some_and(|p| p.distance_m(state.trip.pickup) <= state.radius_m)
            });
            if let Some(driver) = missed {
                return Err(format!("trip {trip_id} waits while {} could take it", driver.id));
            }
        }
        Ok(())
    }
}
