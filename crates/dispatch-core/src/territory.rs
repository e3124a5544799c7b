//! Where a shard's engine stands when the map is cut into shards.
//!
//! Geo-sharding runs one engine per shard. Each holds the drivers in its
//! shard's part of the map (and those it gave a ride to, wherever they
//! drive), and the trips whose pickups are there. The engine does not
//! compute the cut itself (that is the shard map's job, outside the core);
//! it asks through this trait, as it would ask for any other cost it cannot
//! compute. Without a territory an engine holds the whole map.

use std::fmt;

use crate::geo::LatLng;
use crate::ids::TripId;

/// A shard's number: `0..count`.
pub type Shard = u16;

/// An engine's place on a map cut into shards.
pub trait Territory: Send + Sync + fmt::Debug {
    /// How many shards the map has.
    fn count(&self) -> Shard;
    /// This engine's shard.
    fn shard(&self) -> Shard;
    /// The shard a point belongs to.
    fn shard_of(&self, point: LatLng) -> Shard;
    /// The shard a point belongs to, and a distance within which every
    /// point is in that shard too (0 if none is known): a driver moving
    /// less than that need not be placed again.
    fn room(&self, point: LatLng) -> (Shard, f64);
    /// Every shard with a point within `radius_m` of `point`, sorted; it
    /// may name a shard too many, never one too few.
    fn shards_within(&self, point: LatLng, radius_m: f64) -> Vec<Shard>;
}

/// Where a trip id keeps the shard that made it: `shard << SHARD_SHIFT`
/// plus a sequence number, so the id alone tells which engine holds the
/// trip. Shard 0's ids are the plain sequence, and the largest id (shard
/// 1023) stays below 2^53, exact in a JSON number.
pub const SHARD_SHIFT: u32 = 40;

impl TripId {
    /// The shard whose engine made (and holds) this trip.
    ///
    /// ```
    /// use dispatch_core::{ids::TripId, territory::SHARD_SHIFT};
    /// assert_eq!(TripId(42).shard(), 0);
    /// assert_eq!(TripId((7 << SHARD_SHIFT) + 42).shard(), 7);
    /// ```
    pub fn shard(self) -> Shard {
        // Ids past shard 65535 cannot be minted; the cast only keeps the
        // low bits of a forged one, and a forged id names no trip anyway.
        (self.0 >> SHARD_SHIFT) as Shard
    }

    /// The smallest id shard `shard` mints.
    ///
    /// ```
    /// use dispatch_core::ids::TripId;
    /// assert_eq!(TripId::first_of(3).shard(), 3);
    /// ```
    pub fn first_of(shard: Shard) -> TripId {
        TripId((u64::from(shard) << SHARD_SHIFT) + 1)
    }
}

impl crate::ids::OfferId {
    /// The shard whose engine made this offer, on a map of `count` shards
    /// (an engine with a territory mints `sequence × count + shard`).
    ///
    /// ```
    /// use dispatch_core::ids::OfferId;
    /// assert_eq!(OfferId(7 * 16 + 5).shard(16), 5);
    /// assert_eq!(OfferId(7).shard(1), 0);
    /// ```
    pub fn shard(self, count: Shard) -> Shard {
        // The remainder is below `count`, a u16.
        (self.0 % u64::from(count.max(1))) as Shard
    }
}
