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
    /// The next offer's sequence number.
    next: u64,
    /// With geo-shards, an offer's id is `sequence × shards + shard`, so
    /// the id alone tells which engine made the offer (a fleet's reply
    /// names only the offer); `1` and `0` without.
    stride: u64,
    residue: u64,
}

impl Offers {
    /// No offer open; the first new one gets id `first` (at least 1).
    pub fn starting_at(first: u64) -> Self {
        Self { open: Map::default(), next: first.max(1), stride: 1, residue: 0 }
    }

    /// Ids from now on tell shard `shard` of `count` (see the type).
    pub fn spread(&mut self, count: u16, shard: u16) {
        self.stride = u64::from(count.max(1));
        self.residue = u64::from(shard);
    }

    /// Opens an offer of `trip` to `driver`.
    pub fn open(&mut self, trip: TripId, driver: DriverKey) -> OfferId {
        let id = self.id_of(self.next);
        self.next += 1;
        self.open.insert(id, OpenOffer { trip, driver });
        id
    }

    /// The id of the offer with sequence number `sequence`.
    fn id_of(&self, sequence: u64) -> OfferId {
        OfferId(sequence.saturating_mul(self.stride).saturating_add(self.residue))
    }

    /// The id the next new offer gets.
    #[cfg(test)]
    pub fn next_id(&self) -> u64 {
        self.id_of(self.next).0
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
            Some(id) if *id >= self.id_of(self.next) => {
                Err(format!("offer {id} is open, but the next new id is {}", self.id_of(self.next)))
            }
            _ => Ok(()),
        }
    }
}
