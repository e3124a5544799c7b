//! The shard map: cells dealt into shards, and the shards a radius touches.

use std::collections::{HashSet, VecDeque};

use dispatch_core::geo::{EARTH_RADIUS_M, LatLng};
use h3o::{CellIndex, Resolution};

use crate::sphere::{angle, angle_to_arc, arc_within};
use crate::{MAX_SHARDS, ShardError, ShardId};

/// The H3 resolution of the cells dealt into shards: cells of about 250 km²
/// (edges about 9 km), so Seoul is three or four cells and a pickup radius
/// of a few kilometres touches at most a few.
pub const RESOLUTION: Resolution = Resolution::Five;

/// A search visiting more cells than this gives up on finding which shards
/// a radius touches and answers every shard: still exact (it never leaves
/// one out), and it bounds the work a huge radius costs.
const MOST_CELLS: usize = 512;

/// More than any cell's centre is from its farthest corner at
/// [`RESOLUTION`] (edges average 8.5 km and are at most 10 km; twice
/// that, for distortion near the icosahedron's vertices and pentagons).
const FARTHEST_CORNER_M: f64 = 20_000.0;

/// Added to every radius before cells are tested against it, so rounding
/// in the spherical arithmetic can only add a shard, never drop one.
const SLACK_M: f64 = 1.0;

/// Which shard every point on Earth belongs to, for a fixed shard count.
///
/// ```
/// use dispatch_core::geo::LatLng;
/// use dispatch_shard::ShardMap;
/// let map = ShardMap::new(16).unwrap();
/// let city_hall = LatLng::new(37.5663, 126.9779).unwrap();
/// let shard = map.shard_of(city_hall);
/// assert!(shard.0 < 16);
/// // A radius of zero touches the point's own shard only.
/// assert_eq!(map.shards_within(city_hall, 0.0), vec![shard]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    shards: u16,
}

impl ShardMap {
    /// A map of `shards` shards (1 to [`MAX_SHARDS`]).
    pub fn new(shards: u32) -> Result<Self, ShardError> {
        match u16::try_from(shards) {
            Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(Self { shards: n }),
            _ => Err(ShardError::BadCount(shards)),
        }
    }

    /// How many shards.
    pub fn count(&self) -> u16 {
        self.shards
    }

    /// Every shard, in order.
    pub fn all(&self) -> impl Iterator<Item = ShardId> + use<> {
        (0..self.shards).map(ShardId)
    }

    /// The cell a point is in. Cost: one H3 index computation (about
    /// 100 ns).
    pub fn cell_of(&self, point: LatLng) -> CellIndex {
        h3(point).to_cell(RESOLUTION)
    }

    /// The shard a cell is dealt to: a fixed hash of its index (XXH3, whose
    /// output is specified and so never changes), modulo the count. Every
    /// node and every version agrees on it.
    pub fn shard_of_cell(&self, cell: CellIndex) -> ShardId {
        let hash = xxhash_rust::xxh3::xxh3_64(&u64::from(cell).to_le_bytes());
        // The remainder is below `self.shards`, a u16.
        ShardId((hash % u64::from(self.shards)) as u16)
    }

    /// The shard a point belongs to.
    pub fn shard_of(&self, point: LatLng) -> ShardId {
        self.shard_of_cell(self.cell_of(point))
    }

    /// Every shard with a point within `radius_m` of `point` (great-circle),
    /// sorted, the point's own among them. Exact in the sense that matters:
    /// a shard holding any point of the disk is always in the answer (a
    /// shard only grazing it, within a metre, may be too).
    ///
    /// Cost: one distance test per cell edge for each cell the disk
    /// touches and each of their neighbours; past [`MOST_CELLS`] cells it
    /// stops and answers every shard.
    pub fn shards_within(&self, point: LatLng, radius_m: f64) -> Vec<ShardId> {
        if self.shards == 1 {
            return vec![ShardId(0)];
        }
        // Most often asked of a disk well inside its cell: one test.
        let (home, room_m) = self.room(point);
        if radius_m.max(0.0) + SLACK_M <= room_m {
            return vec![home];
        }
        let Some(cells) = self.cells_within(point, radius_m) else { return self.all().collect() };
        let mut shards: Vec<ShardId> = cells.into_iter().map(|cell| self.shard_of_cell(cell)).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// The shard of `point`, and how far every point around it stays in
    /// that shard: at least the distance to the edge of its cell (less a
    /// metre for rounding), so a driver moving less than that since it was
    /// last placed need not be placed again. Cost: one cell boundary (about
    /// a microsecond).
    pub fn room(&self, point: LatLng) -> (ShardId, f64) {
        let cell = self.cell_of(point);
        let inside = angle_to_cell(point.to_unit(), cell) * EARTH_RADIUS_M;
        (self.shard_of_cell(cell), (inside - SLACK_M).max(0.0))
    }

    /// Every cell with a point within `radius_m` of `point`, the point's own
    /// first; `None` past [`MOST_CELLS`]. The cells a disk touches are
    /// connected (through shared edges), so a walk out from the point's own
    /// cell that keeps only cells within reach finds them all.
    pub fn cells_within(&self, point: LatLng, radius_m: f64) -> Option<Vec<CellIndex>> {
        let reach = (radius_m.max(0.0) + SLACK_M) / EARTH_RADIUS_M;
        if reach >= std::f64::consts::FRAC_PI_2 {
            return None;
        }
        let p = point.to_unit();
        let (cos_reach, sin_reach) = (reach.cos(), reach.sin());
        let home = self.cell_of(point);
        let mut found = vec![home];
        let mut seen: HashSet<CellIndex> = HashSet::from([home]);
        let mut next = VecDeque::from([home]);
        while let Some(cell) = next.pop_front() {
            for near in cell.grid_disk::<Vec<_>>(1) {
                if !seen.insert(near) {
                    continue;
                }
                if angle(p, centre_of(near)) > reach + FARTHEST_CORNER_M / EARTH_RADIUS_M {
                    // Its nearest point is farther than the reach: no need
                    // to trace its edges.
                    continue;
                }
                if cell_within(p, near, cos_reach, sin_reach) {
                    if found.len() == MOST_CELLS {
                        return None;
                    }
                    found.push(near);
                    next.push_back(near);
                }
            }
        }
        Some(found)
    }
}

/// The angle from `p` to the nearest edge of `cell`: for a point outside
/// the cell, the angle to the cell; for one inside, how far it is from
/// leaving it.
fn angle_to_cell(p: [f64; 3], cell: CellIndex) -> f64 {
    with_shape(cell, |shape| {
        let corners = &shape.corners;
        (0..corners.len())
            .map(|i| angle_to_arc(p, corners[i], corners[(i + 1) % corners.len()]))
            .fold(f64::INFINITY, f64::min)
    })
}

/// Whether an edge of `cell` (which `p` is outside) comes within the
/// reach whose cosine and sine are given: the cell is within it.
fn cell_within(p: [f64; 3], cell: CellIndex, cos_reach: f64, sin_reach: f64) -> bool {
    with_shape(cell, |shape| {
        let corners = &shape.corners;
        (0..corners.len()).any(|i| arc_within(p, corners[i], corners[(i + 1) % corners.len()], cos_reach, sin_reach))
    })
}

/// A cell's centre as a unit vector.
fn centre_of(cell: CellIndex) -> [f64; 3] {
    with_shape(cell, |shape| shape.centre)
}

/// A cell's centre and corners as unit vectors: what the searches test
/// against, worked out once per cell (H3 computes a boundary with a dozen
/// sines and arctangents).
struct Shape {
    centre: [f64; 3],
    corners: Vec<[f64; 3]>,
}

/// The most cell shapes a thread keeps; past it they are worked out
/// afresh (a city's searches touch a few dozen cells).
const MOST_SHAPES: usize = 4_096;

thread_local! {
    static SHAPES: std::cell::RefCell<std::collections::HashMap<CellIndex, Shape>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Calls `f` with `cell`'s shape, kept per thread.
fn with_shape<T>(cell: CellIndex, f: impl FnOnce(&Shape) -> T) -> T {
    SHAPES.with(|shapes| {
        let mut shapes = shapes.borrow_mut();
        if shapes.len() >= MOST_SHAPES && !shapes.contains_key(&cell) {
            shapes.clear();
        }
        let shape = shapes.entry(cell).or_insert_with(|| {
            let c = h3o::LatLng::from(cell);
            Shape {
                centre: unit(c.lat_radians(), c.lng_radians()),
                corners: cell.boundary().iter().map(|ll| unit(ll.lat_radians(), ll.lng_radians())).collect(),
            }
        });
        f(shape)
    })
}

fn unit(lat: f64, lng: f64) -> [f64; 3] {
    [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
}

/// A checked point as h3o's: both check for finite coordinates, and ours
/// also for their ranges, so this cannot fail.
fn h3(point: LatLng) -> h3o::LatLng {
    match h3o::LatLng::new(point.lat(), point.lng()) {
        Ok(ll) => ll,
        Err(_) => unreachable!("a checked LatLng is finite"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The point `distance_m` from `from` on bearing `bearing` (radians).
    fn destination(from: LatLng, bearing: f64, distance_m: f64) -> LatLng {
        let d = distance_m / EARTH_RADIUS_M;
        let (lat1, lng1) = (from.lat().to_radians(), from.lng().to_radians());
        let lat2 = (lat1.sin() * d.cos() + lat1.cos() * d.sin() * bearing.cos()).asin();
        let lng2 = lng1 + (bearing.sin() * d.sin() * lat1.cos()).atan2(d.cos() - lat1.sin() * lat2.sin());
        let lng2 = (lng2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
        at(lat2.to_degrees().clamp(-90.0, 90.0), lng2)
    }

    #[test]
    fn counts_outside_one_to_the_most_are_refused() {
        assert_eq!(ShardMap::new(0), Err(ShardError::BadCount(0)));
        assert_eq!(ShardMap::new(1025), Err(ShardError::BadCount(1025)));
        assert_eq!(ShardMap::new(70_000), Err(ShardError::BadCount(70_000)));
        assert!(ShardMap::new(1).is_ok() && ShardMap::new(1024).is_ok());
    }

    #[test]
    fn the_deal_is_fixed_across_versions() {
        // Pinned: if the hash or the resolution changed, a cluster's nodes
        // of two versions would disagree on who owns what.
        let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
        let cell = map.cell_of(at(37.5663, 126.9779));
        assert_eq!(u64::from(cell), 0x0853_0e1d_bfff_ffff);
        let shards: Vec<u16> = [(37.5663, 126.9779), (40.7580, -73.9855), (0.0, 0.0), (-33.8688, 151.2093)]
            .into_iter()
            .map(|(lat, lng)| map.shard_of(at(lat, lng)).0)
            .collect();
        assert_eq!(shards, [0, 5, 12, 11]);
    }

    #[test]
    fn cells_spread_evenly_over_the_shards() {
        // Every cell of the whole Earth at the resolution, dealt into 16:
        // each shard within 1% of its fair share.
        let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
        let mut per = [0u64; 16];
        let mut total = 0u64;
        for base in CellIndex::base_cells() {
            for cell in base.children(Resolution::Three) {
                for child in cell.children(RESOLUTION) {
                    per[usize::from(map.shard_of_cell(child).0)] += 1;
                    total += 1;
                }
            }
        }
        let fair = total as f64 / 16.0;
        for (shard, &n) in per.iter().enumerate() {
            assert!((n as f64 - fair).abs() / fair < 0.01, "shard {shard}: {n} cells, fair {fair}");
        }
    }

    #[test]
    fn a_huge_radius_touches_every_shard() {
        let map = ShardMap::new(8).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.shards_within(at(10.0, 10.0), 20_000_000.0), map.all().collect::<Vec<_>>());
        assert_eq!(map.shards_within(at(10.0, 10.0), 500_000.0), map.all().collect::<Vec<_>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Against brute force: every point sampled in the disk (on rings
        /// out to its edge) is in a cell and a shard the answer names.
        #[test]
        fn every_point_of_the_disk_is_in_a_shard_named(
            lat in -89.0f64..89.0,
            lng in -180.0f64..180.0,
            radius_m in 0.0f64..30_000.0,
        ) {
            let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
            let centre = at(lat, lng);
            let cells = map.cells_within(centre, radius_m);
            let shards = map.shards_within(centre, radius_m);
            prop_assert!(shards.contains(&map.shard_of(centre)));
            for ring in 1..=12 {
                let d = radius_m * f64::from(ring) / 12.0;
                for step in 0..72 {
                    let q = destination(centre, f64::from(step) * 5f64.to_radians(), d);
                    prop_assert!(shards.contains(&map.shard_of(q)), "{q} at {d} m not in {shards:?}");
                    if let Some(cells) = &cells {
                        prop_assert!(cells.contains(&map.cell_of(q)), "{q} at {d} m: its cell is missed");
                    }
                }
            }
        }

        /// A point's room is room indeed: every point sampled within it is
        /// in the same shard (and the same cell).
        #[test]
        fn every_point_within_a_points_room_is_in_its_shard(
            lat in -85.0f64..85.0,
            lng in -180.0f64..180.0,
        ) {
            let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
            let centre = at(lat, lng);
            let (shard, room) = map.room(centre);
            prop_assert_eq!(shard, map.shard_of(centre));
            prop_assert!(room < 12_000.0);
            for ring in 1..=8 {
                let d = room * f64::from(ring) / 8.0;
                for step in 0..72 {
                    let q = destination(centre, f64::from(step) * 5f64.to_radians(), d);
                    prop_assert_eq!(map.cell_of(q), map.cell_of(centre), "{} at {} m", q, d);
                }
            }
        }

        /// And no cell far out of reach is named: each cell in the answer
        /// has a corner or edge within the radius plus a cell's width.
        #[test]
        fn no_cell_far_out_of_reach_is_named(
            lat in -80.0f64..80.0,
            lng in -180.0f64..180.0,
            radius_m in 0.0f64..20_000.0,
        ) {
            let map = ShardMap::new(16).unwrap_or_else(|e| panic!("{e}"));
            let centre = at(lat, lng);
            if let Some(cells) = map.cells_within(centre, radius_m) {
                for cell in cells {
                    let middle = h3o::LatLng::from(cell);
                    let middle = at(middle.lat(), middle.lng());
                    // A cell's centre is at most about 10 km from its edge.
                    prop_assert!(centre.distance_m(middle) <= radius_m + 12_000.0);
                }
            }
        }
    }
}
