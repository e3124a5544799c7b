//! What one round of the engine task produces: the trip records to make
//! durable, then what to deliver once they are, in order, and drivers'
//! positions on trips, which go to the delivery stage straight.

use std::collections::HashMap;

use dispatch_core::EngineError;
use dispatch_core::engine::{DriverEvent, LogRecord};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, SessionId, TripId};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::Trip;
use tokio::time::Instant;
use tonic::Status;

use crate::latency::Marks;
use crate::streams::{RiderSender, SessionSender};

/// One thing to deliver once the records before it are durable.
pub enum Delivery {
    /// A driver or fleet session opened: remember its sender, send `started`.
    Open { session: SessionId, sender: SessionSender, name: String, started: Started },
    /// One message of a session refused (`driver`: which of a fleet's
    /// drivers it spoke for); the session goes on.
    Rejected { session: SessionId, error: EngineError, driver: String },
    /// An engine event for a session.
    Driver { session: SessionId, event: DriverEvent },
    /// End a session with a status.
    End { session: SessionId, status: Status },
    /// A session's stream is gone (the client hung up): forget its sender.
    Closed(SessionId),
    /// A trip changed: update `GetTrip`, tell riders.
    Rider(Trip),
    /// A rider follows a trip. `resume` is the trip as it is, for a rider
    /// re-attaching; `marks` are when a new request arrived and was taken,
    /// to measure the time to its first offer.
    Watch { trip: TripId, rider: RiderSender, resume: Option<Trip>, marks: Option<Marks> },
    /// A trip got its first offer; `across`: whether it asked another
    /// shard first (with shards).
    FirstOffer { trip: TripId, across: Option<bool> },
    /// A trip passed its retention.
    Forget(TripId),
    /// Answer a caller.
    Reply(Box<dyn FnOnce() + Send>),
    /// End every stream with `UNAVAILABLE`.
    Shutdown,
}

/// What a session's first event says: who it speaks for, the server's
/// clock, a driver's trip under way.
pub struct Started {
    pub driver: Option<DriverId>,
    pub fleet: Option<FleetId>,
    pub now: Timestamp,
    pub current_trip: Option<Trip>,
}

/// What one round of the engine task produced, for the commit stage.
#[derive(Default)]
pub struct Round {
    /// Trip log records to make durable first.
    pub records: Vec<LogRecord>,
    /// Then these, in order.
    pub deliveries: Vec<Delivery>,
    /// When the engine task handed it over.
    pub flushed: Option<Instant>,
}

impl Round {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.deliveries.is_empty()
    }
}

/// A trip's driver moved: update `GetTrip`, tell riders. Soft state, sent
/// to the delivery stage straight, never through the commit stage.
#[derive(Debug, Clone, Copy)]
pub struct Move {
    pub trip: TripId,
    pub position: LatLng,
    /// When (the trip's `updated_at` from now on).
    pub at: Timestamp,
    /// The pickup ETA reckoned again from there, if it was.
    pub pickup_eta_ms: Option<i64>,
    /// The number (counting every delivery the engine task ever handed
    /// over, from 0) of the last delivery about this trip before the move,
    /// if one may not have been delivered yet: the move waits for it, so
    /// nobody sees a position before the trip change that came first.
    pub after: Option<u64>,
}

/// Drivers' positions handed from the engine task to the delivery stage
/// beside the rounds: the engine task adds to it without waiting, the
/// delivery stage empties it before each group it delivers (so a position
/// is always seen before a later round) and when woken for it.
#[derive(Default)]
pub struct Mailbox {
    held: std::sync::Mutex<Vec<Move>>,
    /// A wake-up is on its way to the stage: at most one at a time, so
    /// wake-ups never fill the queue that the groups wait in.
    woken: std::sync::atomic::AtomicBool,
}

/// The most positions the mailbox holds: past this (the delivery stage
/// stalled for seconds) new ones are dropped, soft state as they are, and
/// each driver's next ping brings a newer one.
const MAILBOX_MOST: usize = 1 << 20;

impl Mailbox {
    /// Adds `moves`; returns whether the stage must be sent a wake-up:
    /// the mailbox was empty (the stage may be asleep) and no wake-up is
    /// on its way.
    pub fn post(&self, moves: &mut Vec<Move>) -> bool {
        let Ok(mut held) = self.held.lock() else { return false };
        let was_empty = held.is_empty();
        if held.len() + moves.len() <= MAILBOX_MOST {
            held.append(moves);
        } else {
            moves.clear();
        }
        was_empty && !self.woken.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Everything posted so far, oldest first.
    pub fn take(&self) -> Vec<Move> {
        self.held.lock().map(|mut held| std::mem::take(&mut *held)).unwrap_or_default()
    }

    /// The stage got its wake-up: a later post may send another.
    pub fn woke(&self) {
        self.woken.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// For each trip, the number of the last delivery about it (a trip
/// change, a rider attaching, the trip forgotten), so that a move can wait
/// for it. Entries the delivery stage has passed are pruned.
#[derive(Default)]
pub struct Gates {
    last: HashMap<TripId, u64>,
    /// Deliveries handed over so far.
    handed: u64,
    /// Size after the last pruning.
    kept: usize,
}

impl Gates {
    /// Counts a delivery handed over, noting the trip it is about.
    pub fn handed(&mut self, delivery: &Delivery) {
        if let Delivery::Rider(Trip { id, .. }) | Delivery::Watch { trip: id, .. } | Delivery::Forget(id) = delivery {
            self.last.insert(*id, self.handed);
        }
        self.handed += 1;
    }

    /// The move of `trip`'s driver, waiting for what it must.
    pub fn gate(&self, trip: TripId, position: LatLng, at: Timestamp, pickup_eta_ms: Option<i64>) -> Move {
        Move { trip, position, at, pickup_eta_ms, after: self.last.get(&trip).copied() }
    }

    /// Forgets the trips whose last delivery is among the first
    /// `delivered`, once the table doubled since last time: a move of those
    /// need not wait.
    pub fn prune(&mut self, delivered: u64) {
        if self.last.len() > 2 * self.kept + 1_024 {
            self.last.retain(|_, number| *number >= delivered);
            self.kept = self.last.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moves() -> Vec<Move> {
        let position = LatLng::new(37.5, 127.0).unwrap_or_else(|e| panic!("{e}"));
        vec![Move { trip: TripId(1), position, at: Timestamp(0), pickup_eta_ms: None, after: None }]
    }

    #[test]
    fn the_stage_is_woken_for_positions_once_until_it_wakes() {
        let mailbox = Mailbox::default();
        assert!(mailbox.post(&mut moves()), "not woken for positions in an empty mailbox");
        assert!(!mailbox.post(&mut moves()), "woken for a mailbox already waiting");
        assert_eq!(mailbox.take().len(), 2);
        assert!(!mailbox.post(&mut moves()), "a second wake-up queued before the first arrived");
        mailbox.woke();
        assert_eq!(mailbox.take().len(), 1);
        assert!(mailbox.post(&mut moves()), "not woken again after the first wake-up arrived");
    }
}
