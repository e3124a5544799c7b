//! The spatial index of drivers: an R-tree over unit-sphere points whose
//! entries may lag a driver's true position by a bounded slack.
//!
//! Points are 3-D unit vectors (see [`crate::geo`]): Euclidean distance
//! between them (the chord) grows strictly with great-circle distance, so
//! nearest-first by chord is nearest-first on Earth, exact everywhere with
//! no special case at the antimeridian or the poles.
//!
//! Why slack: a car moves ten metres between pings, and moving an R-tree
//! entry (a remove and an insert) costs microseconds, while noting the new
//! position costs nanoseconds. So the tree keeps where each driver was last
//! *indexed* and is only updated once the driver has moved more than
//! `slack_m` from there; the exact position is kept beside it. A search
//! walks the tree nearest-first by indexed position and measures candidates
//! at their exact positions; by the triangle inequality no driver can be
//! nearer than its indexed chord minus the slack chord, which tells the
//! search exactly when to stop. Results are exact; only the work per query
//! grows (by the drivers within twice the slack of the answer).
//!
//! The index knows drivers only by [`DriverKey`] (a dense slot number the
//! engine hands out); everything else lives in the engine's driver table.

use std::cmp::Ordering;

use rstar::RTree;
use rstar::primitives::GeomWithData;

use crate::geo::{EARTH_RADIUS_M, LatLng, chord2_for_distance};

/// A driver's slot in the engine's driver table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverKey(pub u32);

type Entry = GeomWithData<[f64; 3], DriverKey>;

/// One driver found by a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Which driver.
    pub key: DriverKey,
    /// Great-circle metres from the query point to the driver's exact
    /// position.
    pub distance_m: f64,
}

/// The default slack: several pings of city driving. Larger makes updates
/// cheaper (fewer tree moves) and searches dearer (more candidates); at a
/// thousand updates per ride request, updates matter more.
pub const DEFAULT_SLACK_M: f64 = 100.0;

/// Every positioned driver, searchable nearest first.
pub struct DriverIndex {
    tree: RTree<Entry>,
    /// Where each key is in the tree. Indexed by `DriverKey.0`.
    indexed: Vec<Option<[f64; 3]>>,
    /// Where each key really is (within the slack of `indexed`).
    exact: Vec<Option<[f64; 3]>>,
    /// The slack as a chord between unit vectors, and squared.
    slack_chord: f64,
    slack_chord2: f64,
}

impl Default for DriverIndex {
    fn default() -> Self {
        Self::with_slack(DEFAULT_SLACK_M)
    }
}

fn chord2(a: [f64; 3], b: [f64; 3]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

fn chord_to_m(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (chord / 2.0).clamp(0.0, 1.0).asin()
}

impl DriverIndex {
    /// An empty index with the default slack.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index whose tree entries may lag by up to `slack_m` metres
    /// (0: every move updates the tree).
    pub fn with_slack(slack_m: f64) -> Self {
        let slack_chord2 = chord2_for_distance(slack_m.max(0.0));
        Self {
            tree: RTree::new(),
            indexed: Vec::new(),
            exact: Vec::new(),
            slack_chord: slack_chord2.sqrt(),
            slack_chord2,
        }
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
    /// Cost: O(1) for a move that stays within the slack of where the
    /// driver was indexed (most pings); otherwise a remove plus an insert,
    /// each O(log n).
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
        if self.exact.len() <= slot {
            self.exact.resize(slot + 1, None);
            self.indexed.resize(slot + 1, None);
        }
        self.exact[slot] = Some(point);
        if let Some(old) = self.indexed[slot] {
            if chord2(old, point) <= self.slack_chord2 {
                return;
            }
            self.tree.remove(&Entry::new(old, key));
        }
        self.tree.insert(Entry::new(point, key));
        self.indexed[slot] = Some(point);
    }

    /// Whether `key` is in the index with `at` as its exact position.
    pub fn holds_at(&self, key: DriverKey, at: LatLng) -> bool {
        self.exact.get(key.0 as usize).is_some_and(|p| *p == Some(at.to_unit()))
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
        let slot = key.0 as usize;
        if let Some(old) = self.indexed.get_mut(slot).and_then(Option::take) {
            self.tree.remove(&Entry::new(old, key));
        }
        if let Some(exact) = self.exact.get_mut(slot) {
            *exact = None;
        }
    }

    /// The `k` nearest drivers within `max_distance_m` of `at` that `accept`
    /// lets through, nearest first by exact great-circle distance; drivers
    /// at the same distance are ordered by `tie`. `accept` may be called for
    /// drivers that end up farther than the answer.
    ///
    /// Cost: O(log n) to the first candidate, then about O(log n) for each
    /// driver within the answer's distance plus twice the slack (refused
    /// ones included); nothing beyond.
    ///
    /// ```
    /// use dispatch_core::{geo::LatLng, index::{DriverIndex, DriverKey}};
    /// let mut index = DriverIndex::new();
    /// index.locate_mut(DriverKey(0), LatLng::new(0.0, 179.99).unwrap());
    /// index.locate_mut(DriverKey(1), LatLng::new(0.0, 179.0).unwrap());
    /// index.locate_mut(DriverKey(2), LatLng::new(0.0, -179.995).unwrap());
    /// let here = LatLng::new(0.0, -179.99).unwrap();
    /// let found = index.nearest_k(here, 5_000.0, 2, |_| true, |a, b| a.cmp(&b));
    /// let keys: Vec<_> = found.iter().map(|n| n.key).collect();
    /// assert_eq!(keys, vec![DriverKey(2), DriverKey(0)]); // across the antimeridian
    /// ```
    pub fn nearest_k(
        &self,
        at: LatLng,
        max_distance_m: f64,
        k: usize,
        accept: impl FnMut(DriverKey) -> bool,
        tie: impl Fn(DriverKey, DriverKey) -> Ordering,
    ) -> Vec<Neighbor> {
        self.nearest_k_bounded(at, max_distance_m, k, usize::MAX, accept, tie).neighbors
    }

    /// [`DriverIndex::nearest_k`] that examines at most `max_examined`
    /// entries, so that no query can walk the whole tree (say, nearest
    /// available driver anywhere while almost none is). When the bound cuts
    /// the walk short, the answer is what is exact: the nearest accepted
    /// drivers within [`Nearest::exact_within_m`], which is then less than
    /// `max_distance_m`.
    pub fn nearest_k_bounded(
        &self,
        at: LatLng,
        max_distance_m: f64,
        k: usize,
        max_examined: usize,
        mut accept: impl FnMut(DriverKey) -> bool,
        tie: impl Fn(DriverKey, DriverKey) -> Ordering,
    ) -> Nearest {
        let mut nearest = Nearest { neighbors: Vec::new(), exact_within_m: max_distance_m };
        if k == 0 {
            return nearest;
        }
        let query = at.to_unit();
        let mut max_chord = chord2_for_distance(max_distance_m).sqrt();
        // (exact chord, key), sorted, at most k.
        let mut best: Vec<(f64, DriverKey)> = Vec::new();
        for (examined, (entry, indexed_chord2)) in self.tree.nearest_neighbor_iter_with_distance_2(query).enumerate() {
            let lower_bound = indexed_chord2.sqrt() - self.slack_chord;
            if lower_bound > max_chord || (best.len() == k && best.last().is_some_and(|(c, _)| lower_bound > *c)) {
                break;
            }
            if examined == max_examined {
                // Nothing left unexamined is nearer than this entry's bound.
                max_chord = lower_bound.max(0.0);
                nearest.exact_within_m = chord_to_m(max_chord);
                best.retain(|(c, _)| *c <= max_chord);
                break;
            }
            let key = entry.data;
            let Some(Some(exact)) = self.exact.get(key.0 as usize) else { continue };
            let chord = chord2(*exact, query).sqrt();
            if chord > max_chord || (best.len() == k && best.last().is_some_and(|(c, _)| chord > *c)) {
                continue;
            }
            if !accept(key) {
                continue;
            }
            let place = best.partition_point(|(c, other)| *c < chord || (*c == chord && tie(*other, key).is_lt()));
            best.insert(place, (chord, key));
            best.truncate(k);
        }
        nearest.neighbors =
            best.into_iter().map(|(chord, key)| Neighbor { key, distance_m: chord_to_m(chord) }).collect();
        nearest
    }
}

impl DriverIndex {
    /// Drivers whose indexed position may lie in the box from `south_west`
    /// to `north_east` (not across the antimeridian), at most `limit` of
    /// them: every driver in the box is among them unless the limit cut the
    /// walk short, and a few just outside may be too (within the slack);
    /// the caller checks exact positions.
    ///
    /// Cost: O(log n) plus the entries in the box's bounding volume.
    ///
    /// ```
    /// use dispatch_core::{geo::LatLng, index::{DriverIndex, DriverKey}};
    /// let mut index = DriverIndex::new();
    /// index.locate_mut(DriverKey(0), LatLng::new(37.55, 126.95).unwrap());
    /// index.locate_mut(DriverKey(1), LatLng::new(35.1, 129.0).unwrap());
    /// let sw = LatLng::new(37.5, 126.9).unwrap();
    /// let ne = LatLng::new(37.6, 127.0).unwrap();
    /// assert_eq!(index.in_box(sw, ne, 10), vec![DriverKey(0)]);
    /// ```
    pub fn in_box(&self, south_west: LatLng, north_east: LatLng, limit: usize) -> Vec<DriverKey> {
        let (lo, hi) = box_bounds(south_west, north_east, self.slack_chord);
        let envelope = rstar::AABB::from_corners(lo, hi);
        self.tree.locate_in_envelope(envelope).take(limit).map(|entry| entry.data).collect()
    }
}

/// The range of `f` over `[a, b]` (radians), given the points inside where
/// it peaks: the ends and whichever of `critical` fall inside.
fn range_over(a: f64, b: f64, f: fn(f64) -> f64, critical: &[f64]) -> (f64, f64) {
    let inside = critical.iter().copied().filter(|c| (a..=b).contains(c));
    [a, b]
        .into_iter()
        .chain(inside)
        .map(f)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// The bounding box, in unit-sphere coordinates, of a latitude/longitude
/// box, widened by `margin`. Exact: each coordinate is a product of a
/// function of latitude and one of longitude, each monotone between the
/// critical points checked.
fn box_bounds(south_west: LatLng, north_east: LatLng, margin: f64) -> ([f64; 3], [f64; 3]) {
    use std::f64::consts::{FRAC_PI_2, PI};
    let (s, n) = (south_west.lat().to_radians(), north_east.lat().to_radians());
    let (w, e) = (south_west.lng().to_radians(), north_east.lng().to_radians());
    let (cos_lat_lo, cos_lat_hi) = range_over(s, n, f64::cos, &[0.0]);
    let (cos_lng_lo, cos_lng_hi) = range_over(w, e, f64::cos, &[0.0, PI, -PI]);
    let (sin_lng_lo, sin_lng_hi) = range_over(w, e, f64::sin, &[FRAC_PI_2, -FRAC_PI_2]);
    // cos(lat) >= 0, so the extremes of a product are at the corners.
    let product = |lo: f64, hi: f64| {
        let corners = [cos_lat_lo * lo, cos_lat_lo * hi, cos_lat_hi * lo, cos_lat_hi * hi];
        corners.into_iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
    };
    let (x_lo, x_hi) = product(cos_lng_lo, cos_lng_hi);
    let (y_lo, y_hi) = product(sin_lng_lo, sin_lng_hi);
    let (z_lo, z_hi) = (s.sin(), n.sin());
    ([x_lo - margin, y_lo - margin, z_lo - margin], [x_hi + margin, y_hi + margin, z_hi + margin])
}

/// A few drivers at their exact positions, built for one matching round:
/// searchable nearest first, and shrinking as drivers are taken. Finding
/// the nearest of `f` drivers for each of `w` waiting trips costs
/// O((f + w) log f), not O(f * w).
pub struct DriverSet {
    tree: RTree<Entry>,
}

impl DriverSet {
    /// The set of these drivers (bulk-loaded).
    pub fn new(drivers: impl IntoIterator<Item = (DriverKey, LatLng)>) -> Self {
        Self { tree: RTree::bulk_load(drivers.into_iter().map(|(key, at)| Entry::new(at.to_unit(), key)).collect()) }
    }

    /// Whether every driver was taken.
    pub fn is_empty(&self) -> bool {
        self.tree.size() == 0
    }

    /// The nearest driver within `max_distance_m` of `at` that `accept`
    /// lets through; drivers at the same distance are ordered by `tie`.
    pub fn nearest(
        &self,
        at: LatLng,
        max_distance_m: f64,
        mut accept: impl FnMut(DriverKey) -> bool,
        tie: impl Fn(DriverKey, DriverKey) -> Ordering,
    ) -> Option<Neighbor> {
        let query = at.to_unit();
        let max_chord2 = chord2_for_distance(max_distance_m);
        let mut best: Option<(f64, DriverKey)> = None;
        for (entry, d2) in self.tree.nearest_neighbor_iter_with_distance_2(query) {
            if d2 > max_chord2 || best.is_some_and(|(b, _)| d2 > b) {
                break;
            }
            let key = entry.data;
            if !accept(key) {
                continue;
            }
            best = match best {
                Some((b, other)) if b == d2 && tie(other, key).is_le() => Some((b, other)),
                _ => Some((d2, key)),
            };
        }
        best.map(|(d2, key)| Neighbor { key, distance_m: chord_to_m(d2.sqrt()) })
    }

    /// Takes `key`, which is at `at`, out of the set.
    pub fn remove(&mut self, key: DriverKey, at: LatLng) {
        self.tree.remove(&Entry::new(at.to_unit(), key));
    }
}

/// [`DriverIndex::nearest_k_bounded`] over several indexes that hold
/// different drivers (say, the free ones and the busy ones), as if they
/// were one: the `k` nearest accepted across all of them, exact within the
/// least distance any one of them is exact to. Each index examines at most
/// `max_examined` entries.
pub fn nearest_k_bounded_in(
    indexes: &[&DriverIndex],
    at: LatLng,
    max_distance_m: f64,
    k: usize,
    max_examined: usize,
    mut accept: impl FnMut(DriverKey) -> bool,
    tie: impl Fn(DriverKey, DriverKey) -> Ordering,
) -> Nearest {
    let mut merged = Nearest { neighbors: Vec::new(), exact_within_m: max_distance_m };
    for index in indexes {
        let found = index.nearest_k_bounded(at, max_distance_m, k, max_examined, &mut accept, &tie);
        merged.exact_within_m = merged.exact_within_m.min(found.exact_within_m);
        merged.neighbors.extend(found.neighbors);
    }
    let exact = merged.exact_within_m;
    merged.neighbors.retain(|n| n.distance_m <= exact);
    merged.neighbors.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m).then_with(|| tie(a.key, b.key)));
    merged.neighbors.truncate(k);
    merged
}

/// The answer of [`DriverIndex::nearest_k_bounded`].
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    /// The nearest accepted drivers, nearest first.
    pub neighbors: Vec<Neighbor>,
    /// The answer is exact within this many metres: the distance asked
    /// for, or less when the walk reached its bound.
    pub exact_within_m: f64,
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
        assert!(index.nearest_k(p, 1e9, 10, |_| true, |a, b| a.cmp(&b)).is_empty());
    }

    proptest::proptest! {
        /// Drivers split between two indexes are found as if they were in
        /// one: the same drivers at the same distances, in the same order,
        /// and a walk cut short is exact to the nearer of the two cuts.
        #[test]
        fn two_indexes_answer_as_one(
            drivers in proptest::collection::vec((37.4f64..37.7, 126.8f64..127.2, proptest::bool::ANY), 0..300),
            k in 1usize..20,
            max_examined in 1usize..400,
            odd_only in proptest::bool::ANY,
        ) {
            let (mut free, mut busy, mut all) = (DriverIndex::new(), DriverIndex::new(), DriverIndex::new());
            for (n, (lat, lng, is_free)) in drivers.iter().enumerate() {
                let at = LatLng::new(*lat, *lng).unwrap_or_else(|e| panic!("{e}"));
                let key = DriverKey(n as u32);
                if *is_free { free.locate_mut(key, at) } else { busy.locate_mut(key, at) }
                all.locate_mut(key, at);
            }
            let at = LatLng::new(37.55, 127.0).unwrap_or_else(|e| panic!("{e}"));
            let accept = |key: DriverKey| !odd_only || key.0 % 2 == 1;
            let tie = |a: DriverKey, b: DriverKey| a.cmp(&b);
            let both = nearest_k_bounded_in(&[&free, &busy], at, 30_000.0, k, usize::MAX, accept, tie);
            let one = all.nearest_k_bounded(at, 30_000.0, k, usize::MAX, accept, tie);
            proptest::prop_assert_eq!(&both, &one);
            // Cut short: whatever is within the exact distance is the same.
            let cut = nearest_k_bounded_in(&[&free, &busy], at, 30_000.0, k, max_examined, accept, tie);
            let within: Vec<_> = one.neighbors.iter().filter(|n| n.distance_m <= cut.exact_within_m).collect();
            proptest::prop_assert_eq!(cut.neighbors.iter().collect::<Vec<_>>(), within);
        }
    }
}
