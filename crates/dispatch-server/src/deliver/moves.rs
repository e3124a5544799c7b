//! Drivers' positions on trips waiting to be delivered.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};

use dispatch_core::geo::LatLng;
use dispatch_core::ids::TripId;
use dispatch_core::time::Timestamp;

use crate::engine_task::Move;

/// Drivers' positions waiting to be delivered: the newest per trip, in the
/// order trips first had one ready. A position may be delivered once
/// every delivery about its trip that came before it has been (see
/// [`Move::after`]); until then it waits, gated. A snapshot of the trip
/// delivered after a position supersedes it (it shows a position at least
/// as new), so a trip's riders never see its driver go back.
#[derive(Default)]
pub(super) struct Moves {
    ready: HashMap<TripId, (Fix, u64)>,
    /// Trips in the order their positions became ready, each with the
    /// number its position was given; an entry whose number is not the
    /// trip's in `ready` is stale (superseded, or come again since).
    order: VecDeque<(TripId, u64)>,
    next: u64,
    /// Positions waiting for a delivery about their trip: the newest per
    /// trip, with the number of that delivery.
    gated: HashMap<TripId, (Fix, u64)>,
    /// `gated` by the delivery each waits for; an entry whose number is not
    /// the trip's in `gated` is stale.
    gates: BTreeSet<(u64, TripId)>,
}

/// Where a trip's driver is, when, and the pickup ETA reckoned from there
/// if it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Fix {
    pub position: LatLng,
    pub at: Timestamp,
    pub pickup_eta_ms: Option<i64>,
}

impl Fix {
    /// `self`, newer than `older`, keeping the ETA `older` brought if
    /// `self` brings none (it is still the newest reckoned).
    fn over(self, older: Option<&Fix>) -> Fix {
        Fix { pickup_eta_ms: self.pickup_eta_ms.or(older.and_then(|o| o.pickup_eta_ms)), ..self }
    }
}

impl Moves {
    /// A position came; `delivered` deliveries have been carried out.
    pub fn note(&mut self, moved: Move, delivered: u64) {
        let Move { trip, position, at, pickup_eta_ms, after } = moved;
        let fix = Fix { position, at, pickup_eta_ms };
        match after {
            Some(after) if after >= delivered => {
                // Only an ETA waiting behind the same delivery: one behind
                // an earlier one may be another driver's.
                let fix = fix.over(self.gated.get(&trip).filter(|(_, a)| *a == after).map(|(f, _)| f));
                self.gated.insert(trip, (fix, after));
                self.gates.insert((after, trip));
            }
            _ => {
                // Newer than anything gated for the trip.
                self.gated.remove(&trip);
                self.ready(trip, fix);
            }
        }
    }

    fn ready(&mut self, trip: TripId, fix: Fix) {
        match self.ready.entry(trip) {
            Entry::Occupied(mut waiting) => {
                let (older, number) = *waiting.get();
                waiting.insert((fix.over(Some(&older)), number));
            }
            Entry::Vacant(slot) => {
                self.next += 1;
                slot.insert((fix, self.next));
                self.order.push_back((trip, self.next));
                // Stale entries are dropped before they outnumber the live
                // ones, so the queue stays as small as the open trips.
                if self.order.len() > 2 * self.ready.len() + 1024 {
                    let ready = &self.ready;
                    self.order.retain(|(trip, number)| ready.get(trip).is_some_and(|waiting| waiting.1 == *number));
                }
            }
        }
    }

    /// `delivered` deliveries have been carried out: the positions that
    /// waited for them are ready.
    pub fn release(&mut self, delivered: u64) {
        while let Some(&(after, trip)) = self.gates.first() {
            if after >= delivered {
                break;
            }
            self.gates.pop_first();
            if let Entry::Occupied(gated) = self.gated.entry(trip)
                && gated.get().1 == after
            {
                let (fix, _) = gated.remove();
                self.ready(trip, fix);
            }
        }
    }

    /// A snapshot of `trip`, delivery number `number`, is about to be
    /// delivered: positions from before it are superseded.
    pub fn supersede(&mut self, trip: TripId, number: u64) {
        self.ready.remove(&trip);
        if let Entry::Occupied(gated) = self.gated.entry(trip)
            && gated.get().1 < number
        {
            gated.remove();
        }
    }

    /// The next ready position, oldest first.
    pub fn pop(&mut self) -> Option<(TripId, Fix)> {
        while let Some((trip, number)) = self.order.pop_front() {
            if let Entry::Occupied(waiting) = self.ready.entry(trip)
                && waiting.get().1 == number
            {
                let (fix, _) = waiting.remove();
                return Some((trip, fix));
            }
        }
        None
    }

    /// No position ready.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Positions waiting, ready or gated.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ready.len() + self.gated.len()
    }

    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.order.len()
    }
}
