//! The open sessions: which session speaks for which driver, and which
//! session each fleet speaks through now.

use std::collections::HashSet;

use super::Map;
use super::state::{FleetSession, Session};
use crate::ids::{FleetId, SessionId};
use crate::index::DriverKey;

/// Every open driver and fleet session. Its rule: a fleet is filed under
/// at most one session, and that session is open and the fleet's.
#[derive(Default)]
pub(super) struct Sessions {
    open: Map<SessionId, Session>,
    /// The session each fleet speaks through now.
    fleets: Map<FleetId, SessionId>,
}

impl Sessions {
    pub fn get(&self, session: SessionId) -> Option<&Session> {
        self.open.get(&session)
    }

    /// Open sessions, driver and fleet.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Open fleet sessions.
    pub fn fleet_count(&self) -> usize {
        self.fleets.len()
    }

    /// Opens a driver's own session for `key`.
    pub fn open_driver(&mut self, session: SessionId, key: DriverKey) {
        self.open.insert(session, Session::Driver(key));
    }

    /// Opens a fleet's session. A session the fleet had open is closed and
    /// its drivers move to the new one: returns it with them.
    pub fn open_fleet(&mut self, session: SessionId, fleet: FleetId) -> Option<(SessionId, HashSet<DriverKey>)> {
        let mut replaced = None;
        if let Some(old) = self.fleets.insert(fleet.clone(), session)
            && old != session
            && let Some(Session::Fleet(moved)) = self.open.remove(&old)
        {
            replaced = Some((old, moved.drivers));
        }
        let drivers = replaced.as_ref().map(|(_, drivers)| drivers.clone()).unwrap_or_default();
        self.open.insert(session, Session::Fleet(Box::new(FleetSession { fleet, drivers })));
        replaced
    }

    /// Closes a session: returns what it was, if it was open.
    pub fn close(&mut self, session: SessionId) -> Option<Session> {
        let closed = self.open.remove(&session)?;
        if let Session::Fleet(fleet) = &closed
            && self.fleets.get(&fleet.fleet) == Some(&session)
        {
            self.fleets.remove(&fleet.fleet);
        }
        Some(closed)
    }

    /// The fleet a session speaks for, if it is a fleet's.
    pub fn fleet_of(&self, session: SessionId) -> Option<&FleetSession> {
        match self.open.get(&session) {
            Some(Session::Fleet(fleet)) => Some(fleet),
            _ => None,
        }
    }

    /// Makes a fleet's session speak for `key` too.
    pub fn add_to_fleet(&mut self, session: SessionId, key: DriverKey) {
        if let Some(Session::Fleet(fleet)) = self.open.get_mut(&session) {
            fleet.drivers.insert(key);
        }
    }

    /// `key` moved to another shard's engine: a driver's own session is no
    /// longer open here, and a fleet's no longer speaks for it here (the
    /// session stays open for the fleet's other drivers). No stream ends:
    /// the session goes on, speaking for the driver elsewhere.
    pub fn detach(&mut self, session: SessionId, key: DriverKey) {
        match self.open.get_mut(&session) {
            Some(Session::Driver(k)) if *k == key => {
                self.open.remove(&session);
            }
            Some(Session::Fleet(fleet)) => {
                fleet.drivers.remove(&key);
            }
            _ => {}
        }
    }

    /// Whether `session` is open and speaks for `key`.
    pub fn speaks_for(&self, session: SessionId, key: DriverKey) -> bool {
        match self.open.get(&session) {
            Some(Session::Driver(k)) => *k == key,
            Some(Session::Fleet(fleet)) => fleet.drivers.contains(&key),
            None => false,
        }
    }

    /// This owner's rule (see the type).
    pub fn check(&self) -> Result<(), String> {
        for (fleet, session) in &self.fleets {
            match self.open.get(session) {
                Some(Session::Fleet(open)) if open.fleet == *fleet => {}
                _ => return Err(format!("fleet {fleet} is filed under session {session}, which is not its own")),
            }
        }
        Ok(())
    }
}
