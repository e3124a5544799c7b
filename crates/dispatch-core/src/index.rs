//! The spatial index of drivers: an R-tree over unit-sphere points.
//!
//! Points are stored as 3-D unit vectors (see [`crate::geo`]), so Euclidean
//! nearest-neighbour order is great-circle order, exact everywhere on Earth.
//! The index knows drivers only by their [`DriverKey`] (a dense slot number the
//! engine hands out); everything else about a driver lives in the engine's
//! driver table, which keeps the tree's entries small (32 bytes).

use rstar::RTree;
use rstar::primitives::GeomWithData;

use crate::geo::{LatLng, chord2_for_distance};

/// A driver's slot in the engine's driver table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverKey(pub u32);

type Entry = GeomWithData<[f64; 3], DriverKey>;

/// One driver found by a nearest search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Which driver.
    pub key: DriverKey,
    /// Squared chord between unit vectors: orders like great-circle distance.
    pub chord2: f64,
}

/// Every positioned driver, searchable nearest first.
#[derive(Default)]
pub struct DriverIndex {
    tree: RTree<Entry>,
    /// Where each key is in the tree, so a move can find its old entry
    /// without the caller remembering it. Indexed by `DriverKey.0`.
    points: Vec<Option<[f64; 3]>>,
}

impl DriverIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many drivers have a position.
    pub fn len(&self) -> usize {
        self.tree.size()
    }

    /// Whether no driver has a position.
    pub fn is_empty(&self) -> bool {
        self.tree.size() == 0
    }

    /// Puts `key` at `at`, moving it if it was elsewhere.
    ///
    /// Cost: O(log n) for a new driver, a remove plus an insert, each
    /// O(log n), for a move; a ping to the same point does nothing.
    ///
    /// ```
    /// use dispatch_core::{geo::LatLng, index::{DriverIndex, DriverKey}};
    /// let mut index = DriverIndex::new();
    /// index.locate_mut(DriverKey(0), LatLng::new(37.5, 127.0).unwrap());
    /// index.locate_mut(DriverKey(0), LatLng::new(37.6, 127.1).unwrap());
    /// assert_eq!(index.len(), 1);
    /// ```
    pub fn locate_mut(&mut self, key: DriverKey, at: LatLng) {
        let point = at.to_unit();
        let slot = key.0 as usize;
        if self.points.len() <= slot {
            self.points.resize(slot + 1, None);
        }
        if let Some(old) = self.points[slot] {
            if old == point {
                return;
            }
            self.tree.remove(&Entry::new(old, key));
        }
        self.tree.insert(Entry::new(point, key));
        self.points[slot] = Some(point);
    }

    /// Takes `key` out of the index; nothing happens if it was not in.
    ///
    /// Cost: O(log n).
    ///
    /// ```
    /// use dispatch_core::{geo::LatLng, index::{DriverIndex, DriverKey}};
    /// let mut index = DriverIndex::new();
    /// index.locate_mut(DriverKey(3), LatLng::new(0.0, 0.0).unwrap());
    /// index.remove(DriverKey(3));
    /// assert!(index.is_empty());
    /// ```
    pub fn remove(&mut self, key: DriverKey) {
        if let Some(old) = self.points.get_mut(key.0 as usize).and_then(Option::take) {
            self.tree.remove(&Entry::new(old, key));
        }
    }

    /// Drivers within `max_distance_m` of `at`, nearest first; equal
    /// distances come in no set order (the caller breaks ties).
    ///
    /// Cost: O(log n) to the first, then about O(log n) per driver taken; an
    /// iterator stopped early costs only what it took.
    ///
    /// ```
    /// use dispatch_core::{geo::LatLng, index::{DriverIndex, DriverKey}};
    /// let mut index = DriverIndex::new();
    /// index.locate_mut(DriverKey(0), LatLng::new(0.0, 179.99).unwrap());
    /// index.locate_mut(DriverKey(1), LatLng::new(0.0, 179.0).unwrap());
    /// let here = LatLng::new(0.0, -179.99).unwrap();
    /// let keys: Vec<_> = index.nearest_iter(here, 5_000.0).map(|n| n.key).collect();
    /// assert_eq!(keys, vec![DriverKey(0)]); // 2.2 km away across the antimeridian
    /// ```
    pub fn nearest_iter(&self, at: LatLng, max_distance_m: f64) -> impl Iterator<Item = Neighbor> + '_ {
        let limit = chord2_for_distance(max_distance_m);
        self.tree
            .nearest_neighbor_iter_with_distance_2(at.to_unit())
            .take_while(move |(_, chord2)| *chord2 <= limit)
            .map(|(entry, chord2)| Neighbor { key: entry.data, chord2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_and_same_point_pings_keep_one_entry() {
        let mut index = DriverIndex::new();
        let p = LatLng::new(1.0, 2.0).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..3 {
            index.locate_mut(DriverKey(9), p);
        }
        assert_eq!(index.len(), 1);
        index.remove(DriverKey(9));
        index.remove(DriverKey(9));
        index.remove(DriverKey(1_000));
        assert!(index.is_empty());
        assert_eq!(index.nearest_iter(p, 1e9).count(), 0);
    }
}
