//! Driver and fleet sessions: hello, positions, availability, batches, and
//! what happens when a session ends.

use std::collections::HashSet;

use super::state::{Driver, Session};
use super::{
    DriverEvent, DriverHello, Effect, Engine, FleetDriverUpdate, NEARBY_MAX_EXAMINED, Nearby, NearbyDriver,
    NearbyQuery, Ping, SessionEnd, SessionStart, WithdrawReason,
};
use crate::error::EngineError;
use crate::geo::MAX_DISTANCE_M;
use crate::ids::{DriverId, FLEET_SEPARATOR, FleetId, SessionId, TripId};
use crate::index::{DriverIndex, DriverKey, nearest_k_bounded_in};
use crate::time::Timestamp;
use crate::trip::{Trip, TripStatus};

impl Engine {
    /// A driver's app says hello on a new session. A session already open
    /// for the same driver is replaced (it gets [`SessionEnd::Replaced`]); a
    /// driver a fleet speaks for cannot be taken, and an app's id may not be
    /// a fleet's name. Answers with the driver's current trip, if it has
    /// one (it reconnected mid-trip).
    pub fn connect_driver(
        &mut self,
        now: Timestamp,
        session: SessionId,
        hello: DriverHello,
    ) -> Result<SessionStart, EngineError> {
        if hello.driver.is_fleet_name() {
            return Err(EngineError::ForeignDriverName {
                why: format!("a driver app's id may not contain {FLEET_SEPARATOR:?}; such names belong to fleets"),
                driver: hello.driver,
            });
        }
        let key = match self.drivers.key_of(&hello.driver) {
            Some(key) => {
                self.drivers.row(key).grace_until = None;
                match self.driver(key).session.and_then(|s| self.sessions.get(s).map(|kind| (s, kind))) {
                    Some((_, Session::Fleet(_))) => return Err(EngineError::DriverHeldElsewhere(hello.driver)),
                    Some((old, Session::Driver(_))) if old != session => {
                        self.sessions.close(old);
                        self.effects.push(Effect::EndSession { session: old, reason: SessionEnd::Replaced });
                    }
                    _ => {}
                }
                self.drivers.row(key).session = Some(session);
                key
            }
            None => {
                self.check_room_for_driver()?;
                self.add_driver(hello.driver.clone(), session)
            }
        };
        self.sessions.open_driver(session, key);
        {
            let mut driver = self.drivers.row(key);
            driver.fleet = None;
            driver.services =
                if hello.services.is_empty() { crate::service::ServiceSet::taxi() } else { hello.services };
            driver.available = hello.available;
            driver.auto_accept = hello.auto_accept;
        }
        if let Some(position) = hello.position {
            self.apply_fix(now, key, Ping { position, timestamp: None });
        }
        self.queue.freed(key);
        let current_trip = self.driver(key).trip.and_then(|trip| self.trip(trip));
        Ok(SessionStart { driver: Some(self.driver(key).id.clone()), fleet: None, current_trip })
    }

    /// A partner gateway says hello. A session already open for the same
    /// fleet is replaced and its drivers move to the new one, so a gateway
    /// restart loses nobody: the current trips of the drivers it takes over
    /// are sent down the new session.
    pub fn connect_fleet(&mut self, session: SessionId, fleet: FleetId) -> SessionStart {
        let mut drivers = HashSet::new();
        if let Some((old, moved)) = self.sessions.open_fleet(session, fleet.clone()) {
            self.effects.push(Effect::EndSession { session: old, reason: SessionEnd::Replaced });
            for &key in &moved {
                self.drivers.row(key).session = Some(session);
            }
            drivers = moved;
        }
        let trips: Vec<Trip> =
            drivers.iter().filter_map(|&key| self.driver(key).trip).filter_map(|t| self.trip(t)).collect();
        for trip in trips {
            self.effects.push(Effect::Driver { session, event: DriverEvent::Trip(trip) });
        }
        SessionStart { driver: None, fleet: Some(fleet), current_trip: None }
    }

    /// A position report from a driver's own session.
    pub fn ping(&mut self, now: Timestamp, session: SessionId, ping: Ping) -> Result<(), EngineError> {
        let key = self.session_driver(session, None)?;
        self.apply_fix(now, key, ping);
        Ok(())
    }

    /// A driver goes on or off duty. Going off duty with an offer out
    /// declines it.
    pub fn set_availability(&mut self, now: Timestamp, session: SessionId, available: bool) -> Result<(), EngineError> {
        let key = self.session_driver(session, None)?;
        self.set_available(now, key, available);
        Ok(())
    }

    /// One entry of a fleet's batch: registers the driver with the fleet if
    /// it is new, then applies what the entry carries. A fleet names its
    /// drivers `FLEET_ID/...`, so it can never take a name an app or another
    /// fleet needs; a driver held by another live session is refused too,
    /// and nothing changes.
    pub fn fleet_update(
        &mut self,
        now: Timestamp,
        session: SessionId,
        update: FleetDriverUpdate,
    ) -> Result<(), EngineError> {
        match self.sessions.get(session) {
            Some(Session::Fleet(fleet)) if !update.driver.belongs_to(&fleet.fleet) => {
                return Err(EngineError::ForeignDriverName {
                    why: format!("fleet {0} names its drivers {0}{FLEET_SEPARATOR}...", fleet.fleet),
                    driver: update.driver,
                });
            }
            Some(Session::Fleet(_)) => {}
            Some(Session::Driver(_)) => return Err(EngineError::WrongSessionKind("driver")),
            None => return Err(EngineError::SessionNotOpen),
        }
        let key = match self.drivers.key_of(&update.driver) {
            Some(key) => match self.driver(key).session {
                Some(holder) if holder == session => key,
                Some(_) => return Err(EngineError::DriverHeldElsewhere(update.driver)),
                // A detached driver (its session dropped mid-trip): the
                // namespace check above means it was this fleet's.
                None => {
                    self.check_room_in_fleet(session)?;
                    self.drivers.row(key).grace_until = None;
                    self.register_with_fleet(key, session)
                }
            },
            None => {
                self.check_room_for_driver()?;
                self.check_room_in_fleet(session)?;
                let key = self.add_driver(update.driver.clone(), session);
                self.register_with_fleet(key, session)
            }
        };
        let mut driver = self.drivers.row(key);
        let new_services = update.services.filter(|s| !s.is_empty() && *s != driver.services);
        if let Some(services) = new_services {
            driver.services = services;
        }
        driver.auto_accept = update.auto_accept;
        drop(driver);
        if new_services.is_some() {
            self.queue.freed(key);
        }
        // Availability before the position: a new driver's first fix then
        // files it straight in the index it belongs in.
        if let Some(available) = update.available {
            self.set_available(now, key, available);
        }
        if let Some(ping) = update.position {
            self.apply_fix(now, key, ping);
        }
        Ok(())
    }

    /// A session ended (app closed, network dropped, replaced). Its drivers
    /// stop being offered rides at once; an offer out counts as declined.
    /// A driver with a trip keeps it and may reconnect to resume, for
    /// `Config::driver_grace_ms` if the ride has not started (then it goes
    /// to someone else) and for good once it has; a driver without a trip
    /// is forgotten (positions are soft state and come back with the next
    /// hello).
    pub fn close_session(&mut self, now: Timestamp, session: SessionId) {
        let keys: Vec<DriverKey> = match self.sessions.close(session) {
            None => return,
            Some(Session::Driver(key)) => vec![key],
            Some(Session::Fleet(fleet)) => fleet.drivers.into_iter().collect(),
        };
        for key in keys {
            let mut driver = self.drivers.row(key);
            if driver.session != Some(session) {
                continue;
            }
            driver.session = None;
            let offer = driver.offer;
            drop(driver);
            if let Some(offer) = offer {
                self.stats.offers_declined += 1;
                if let Some(trip) = self.close_offer(offer, WithdrawReason::Declined) {
                    self.try_match(now, trip);
                }
            }
            match self.driver(key).trip {
                None => self.forget_driver(key),
                Some(trip) => self.hold_for_return(now, key, trip),
            }
        }
    }

    /// Drivers near a point, nearest first, for operators; bounded work
    /// (see [`NEARBY_MAX_EXAMINED`]).
    pub fn nearby(&self, query: &NearbyQuery) -> Nearby {
        let wanted = |key| {
            let d = self.driver(key);
            d.session.is_some()
                && (query.services.is_empty() || d.services.intersects(query.services))
                && (!query.available_only || d.is_offerable())
        };
        let by_id = |a, b| self.driver(a).id.cmp(&self.driver(b).id);
        let radius = query.radius_m.unwrap_or(MAX_DISTANCE_M);
        let indexes: &[&DriverIndex] =
            if query.available_only { &[self.drivers.free()] } else { &[self.drivers.free(), self.drivers.busy()] };
        let found =
            nearest_k_bounded_in(indexes, query.center, radius, query.limit, NEARBY_MAX_EXAMINED, wanted, by_id);
        let drivers = found
            .neighbors
            .into_iter()
            .filter_map(|n| {
                let d = self.driver(n.key);
                let position = d.position?;
                Some(NearbyDriver {
                    driver: d.id.clone(),
                    position,
                    distance_m: position.distance_m(query.center),
                    available: d.is_offerable(),
                })
            })
            .collect();
        Nearby { drivers, exact_within_m: found.exact_within_m }
    }

    /// Makes `session` (a fleet's) speak for `key`.
    fn register_with_fleet(&mut self, key: DriverKey, session: SessionId) -> DriverKey {
        let fleet_id = self.sessions.fleet_of(session).map(|f| f.fleet.clone());
        let mut driver = self.drivers.row(key);
        driver.session = Some(session);
        driver.fleet = fleet_id;
        self.sessions.add_to_fleet(session, key);
        key
    }

    /// Whether one more driver fits under `Config::max_drivers`.
    fn check_room_for_driver(&self) -> Result<(), EngineError> {
        let limit = self.config.max_drivers;
        if self.drivers.len() >= limit {
            return Err(EngineError::TooManyDrivers { what: "the server", limit });
        }
        Ok(())
    }

    /// Whether a fleet session may take one more driver.
    fn check_room_in_fleet(&self, session: SessionId) -> Result<(), EngineError> {
        let limit = self.config.max_drivers_per_fleet;
        match self.sessions.fleet_of(session) {
            Some(fleet) if fleet.drivers.len() >= limit => {
                Err(EngineError::TooManyDrivers { what: "this fleet", limit })
            }
            _ => Ok(()),
        }
    }

    fn add_driver(&mut self, id: DriverId, session: SessionId) -> DriverKey {
        self.drivers.insert(Driver::new(id, session))
    }

    /// The driver is gone: nobody speaks for it and it has no trip.
    pub(super) fn forget_driver(&mut self, key: DriverKey) {
        if let Some(driver) = self.remove_driver(key) {
            self.gone(driver.id);
        }
    }

    /// Takes the driver out of every table.
    pub(super) fn remove_driver(&mut self, key: DriverKey) -> Option<Driver> {
        self.forward.remove(key);
        self.drivers.remove(key)
    }

    fn set_available(&mut self, now: Timestamp, key: DriverKey, available: bool) {
        let mut driver = self.drivers.row(key);
        driver.available = available;
        let offer = driver.offer;
        drop(driver);
        if available {
            self.queue.freed(key);
        } else if let Some(offer) = offer {
            self.stats.offers_declined += 1;
            if let Some(trip) = self.close_offer(offer, WithdrawReason::Declined) {
                self.try_match(now, trip);
            }
        }
    }

    /// Applies a position fix unless it is older than the last one, and
    /// keeps the rider of an assigned trip posted (at most once per
    /// `rider_position_interval_ms`).
    fn apply_fix(&mut self, now: Timestamp, key: DriverKey, ping: Ping) {
        let driver = self.driver(key);
        if let (Some(at), Some(last)) = (ping.timestamp, driver.last_fix)
            && at < last
        {
            return;
        }
        let (idle, trip, last_push) = (driver.is_idle(), driver.trip, driver.last_position_push);
        // A move keeps the driver's counts; only a first fix changes them.
        let first_fix = !self.drivers.relocate(key, ping.position, ping.timestamp);
        if first_fix {
            let mut driver = self.drivers.row(key);
            driver.last_fix = ping.timestamp.or(driver.last_fix);
            driver.position = Some(ping.position);
        }
        self.stats.location_updates += 1;
        if first_fix {
            self.queue.freed(key);
        } else if idle {
            self.queue.moved();
        }
        if idle {
            self.moved_to(key, ping.position);
        }
        // The trip is looked up only when its riders are due an update;
        // a change of the trip shows the newest position anyway.
        let Some(trip) = trip else { return };
        if now.since(last_push) < self.config.rider_position_interval_ms {
            return;
        }
        if self.trips.show_driver_at(trip, ping.position, Some(now)) {
            self.drivers.pushed(key, now);
            let pickup_eta_ms = self.refresh_eta(now, key, trip);
            self.effects.push(Effect::DriverMoved { trip, position: ping.position, at: now, pickup_eta_ms });
        }
    }

    /// Reckons the pickup ETA of `trip` again from where its driver `key`
    /// is now, if the trip still waits for the car and its ETA was last
    /// reckoned `Config::eta_refresh_ms` ago or more; answers the new one.
    fn refresh_eta(&mut self, now: Timestamp, key: DriverKey, trip: TripId) -> Option<i64> {
        let every = self.config.eta_refresh_ms;
        let state = self.trips.get(&trip)?;
        if every <= 0 || state.trip.status != TripStatus::DriverAssigned || now.since(state.eta_at) < every {
            return None;
        }
        let pickup = state.trip.pickup;
        let crow_m = self.driver(key).position?.distance_m(pickup);
        let (_, eta_ms) = self.pickup_leg(key, pickup, crow_m);
        let mut state = self.trips.get_mut(&trip)?;
        state.eta_at = now;
        state.trip.pickup_eta_ms = Some(eta_ms);
        drop(state);
        self.stats.eta_refreshes += 1;
        Some(eta_ms)
    }
}
