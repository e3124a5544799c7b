//! The open offers, and the ids of new ones.

use super::Map;
use super::state::OpenOffer;
use crate::ids::{OfferId, TripId};
use crate::index::DriverKey;

/// Every open offer. Its rule: ids are never reused within a run, and a
/// restarted engine starts where the caller says (past every id a driver
/// may still answer).
pub(super) struct Offers {
    open: Map<OfferId, OpenOffer>,
    next: u64,
}

impl Offers {
    /// No offer open; the first new one gets id `first` (at least 1).
    pub fn starting_at(first: u64) -> Self {
        Self { open: Map::default(), next: first.max(1) }
    }

    /// Opens an offer of `trip` to `driver`.
    pub fn open(&mut self, trip: TripId, driver: DriverKey) -> OfferId {
        let id = OfferId(self.next);
        self.next += 1;
        self.open.insert(id, OpenOffer { trip, driver });
        id
    }

    /// The id the next new offer gets.
    #[cfg(test)]
    pub fn next_id(&self) -> u64 {
        self.next
    }

    pub fn get(&self, id: OfferId) -> Option<&OpenOffer> {
        self.open.get(&id)
    }

    /// Closes an offer: returns it, if it was open.
    pub fn close(&mut self, id: OfferId) -> Option<OpenOffer> {
        self.open.remove(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (OfferId, &OpenOffer)> {
        self.open.iter().map(|(id, offer)| (*id, offer))
    }

    /// This owner's rule (see the type).
    pub fn check(&self) -> Result<(), String> {
        match self.open.keys().max() {
            Some(id) if id.0 >= self.next => Err(format!("offer {id} is open, but the next new id is {}", self.next)),
            _ => Ok(()),
        }
    }
}
