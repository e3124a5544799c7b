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

impl Leg {
    /// No drive leads there: both ends are on roads, but on parts no road
    /// joins (an island, another city). A driver so placed cannot come.
    pub const UNREACHABLE: Leg = Leg { metres: f64::INFINITY, seconds: f64::INFINITY };

    /// Whether a drive leads there (see [`Leg::UNREACHABLE`]).
    pub fn reachable(&self) -> bool {
        self.seconds.is_finite() && self.metres.is_finite()
    }
}

/// A road network the engine can ask for drives.
pub trait Roads: Send + Sync + std::fmt::Debug {
    /// The drive from each of `from` to `to`, in the same order: `None`
    /// where the router cannot say (a point too far from any road). The
    /// caller then reckons that one by the straight line, and says so. A
    /// [`Leg::UNREACHABLE`] where both are on roads no route joins: that
    /// one cannot come at all.
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

    /// The points a drive from `from` to `to` passes, the two ends first
    /// and last, for a map to draw; `None` where there is no drive, or the
    /// router does not say.
    fn way(&self, from: LatLng, to: LatLng) -> Option<Vec<LatLng>> {
        let _ = (from, to);
        None
    }
}
