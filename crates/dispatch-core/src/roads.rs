//! Travel over a road network, as the engine asks about it: how long and
//! how far the drive is from where each candidate driver is to a pickup.
//!
//! The engine holds a router ([`Engine::set_roads`](crate::Engine::set_roads))
//! and ranks the great-circle nearest candidates by it; a router is pure
//! computation over a graph in memory, no I/O, and answers the same
//! question the same way every time, so the engine stays deterministic.

use crate::geo::LatLng;

/// One drive by road.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leg {
    /// Its length, in metres.
    pub metres: f64,
    /// How long it takes at the roads' speeds, in seconds.
    pub seconds: f64,
}

/// A road network the engine can ask for drives.
pub trait Roads: Send + Sync + std::fmt::Debug {
    /// The drive from each of `from` to `to`, in the same order: `None`
    /// where there is none to be had (a point too far from any road, or
    /// no route between them). The caller then reckons that one by the
    /// straight line, and says so.
    fn legs_to(&self, from: &[LatLng], to: LatLng) -> Vec<Option<Leg>>;

    /// A speed no drive beats over the straight line between its ends, in
    /// metres a second: a drive from a point `d` metres away takes at least
    /// `d / top_speed_mps()` seconds. The engine skips candidates too far
    /// to beat those it has already ranked.
    fn top_speed_mps(&self) -> f64;

    /// Whether many drives in one call cost about what one does (a router
    /// across the network, one round trip a call): the engine then asks
    /// for all its candidates at once rather than one by one.
    fn batches(&self) -> bool {
        false
    }
}
