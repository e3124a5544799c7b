//! Batched matching: the requests held for a window and the drivers free
//! now get one min-cost assignment, instead of each request taking the
//! nearest driver in arrival order (which can send two riders 300 m apart
//! drivers 2 km away because the first took the driver the second needed).
//!
//! The graph is sparse: each request's candidates are its `CANDIDATES`
//! nearest offerable drivers from the index, never every pair. Requests
//! that share no candidate are solved apart (connected components), each
//! component with the Hungarian method (`pathfinding`'s Kuhn-Munkres) on a
//! matrix of its own requests by its own candidates plus one "unmatched"
//! column per request.

use std::collections::{BTreeMap, HashMap};

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;

use super::Engine;
use super::tables::CellKey;
use crate::geo::LatLng;
use crate::ids::TripId;
use crate::index::DriverKey;
use crate::time::Timestamp;
use crate::trip::TripStatus;

/// Candidates per request.
pub const CANDIDATES: usize = 8;

/// The most requests solved together: a larger component (a dense city at
/// its peak chains everyone together) is solved in pieces of this many,
/// oldest first, each with the drivers the earlier pieces left. Bounds a
/// piece at O(64^2 x 8 x 64), so a batch costs the engine milliseconds, not
/// seconds, whatever the load.
pub const MAX_ROWS: usize = 64;

/// In the tests: a cost of leaving a request out above any set of pickups,
/// so the answer matches as many requests as it can.
#[cfg(test)]
const UNMATCHED: i64 = 1_000_000_000;
/// An edge that does not exist.
const NO_EDGE: i64 = 1_000_000_000_000_000;

/// One request of an assignment problem: candidate columns and their costs,
/// and what leaving it unmatched costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `(driver column, cost)`.
    pub candidates: Vec<(usize, i64)>,
    /// The cost of no driver.
    pub unmatched: i64,
}

/// The min-cost assignment of `rows` to `drivers` columns (each driver to
/// at most one request): for each row, the column it gets, if any.
pub fn assign(rows: &[Row], drivers: usize) -> Vec<Option<usize>> {
    // Connected components over shared candidates (union-find on rows).
    let mut parent: Vec<usize> = (0..rows.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner: Vec<Option<usize>> = vec![None; drivers];
    for (r, row) in rows.iter().enumerate() {
        for &(col, _) in &row.candidates {
            let Some(slot) = owner.get_mut(col) else { continue };
            match *slot {
                None => *slot = Some(r),
                Some(other) => {
                    let (a, b) = (root(&mut parent, r), root(&mut parent, other));
                    parent[a] = b;
                }
            }
        }
    }
    let mut components: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for r in 0..rows.len() {
        components.entry(root(&mut parent, r)).or_default().push(r);
    }
    let mut chosen = vec![None; rows.len()];
    let mut taken = vec![false; drivers];
    for members in components.values() {
        for piece in members.chunks(MAX_ROWS) {
            solve(rows, piece, &mut taken, &mut chosen);
        }
    }
    chosen
}

/// Solves the rows of `members` over the columns not yet `taken`.
fn solve(rows: &[Row], members: &[usize], taken: &mut [bool], chosen: &mut [Option<usize>]) {
    let mut cols: Vec<usize> = members.iter().flat_map(|&r| rows[r].candidates.iter().map(|c| c.0)).collect();
    cols.sort_unstable();
    cols.dedup();
    cols.retain(|&c| taken.get(c).is_some_and(|t| !t));
    let local: HashMap<usize, usize> = cols.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let n = members.len();
    let mut matrix = Matrix::new(n, cols.len() + n, NO_EDGE);
    for (i, &r) in members.iter().enumerate() {
        for &(col, cost) in &rows[r].candidates {
            if let Some(&j) = local.get(&col) {
                matrix[(i, j)] = cost.min(matrix[(i, j)]);
            }
        }
        matrix[(i, cols.len() + i)] = rows[r].unmatched;
    }
    let (_, assignment) = kuhn_munkres_min(&matrix);
    for (i, &j) in assignment.iter().enumerate() {
        if j < cols.len() && matrix[(i, j)] < NO_EDGE {
            chosen[members[i]] = Some(cols[j]);
            taken[cols[j]] = true;
        }
    }
}

/// How many base map cells a batch region spans a side, as a level of the
/// density pyramid: 2^4 = 16 cells of 0.01°, about 18 by 14 km in Seoul,
/// three times the default pickup radius, so few requests compete for a
/// driver with another region's (8 cells cost the NYC replay 2 to 9 points
/// of match rate at short supply; 16 cost 0 to 2).
const REGION_LEVEL: usize = 4;

/// The batch region a pickup is in.
pub(super) fn region_of(pickup: LatLng) -> CellKey {
    CellKey::of(pickup).up(REGION_LEVEL)
}

/// When `region`'s next batch is due after `now`, for a window of
/// `window_ms`: each region on a phase of its own (a hash of its key), so
/// a busy country's batches are spread over the window instead of all
/// falling at once (at 2,000 rides a second, one batch of 4,000 requests
/// held the engine for ~160 ms). Within `(now, now + window_ms]`.
pub(super) fn due_in(now: Timestamp, region: CellKey, window_ms: i64) -> Timestamp {
    let window_ms = window_ms.max(1);
    let phase =
        (i64::from(region.lat).wrapping_mul(7_919) ^ i64::from(region.lng).wrapping_mul(104_729)).rem_euclid(window_ms);
    let into = (now.0 - phase).rem_euclid(window_ms);
    now + (window_ms - into)
}

impl Engine {
    /// Runs the batches due at `now`: every request held in a region whose
    /// turn it is gets its best driver of one assignment over those
    /// regions, or waits for the region's next turn.
    pub(super) fn run_batch(&mut self, now: Timestamp) {
        let due = self.queue.take_due_regions(now);
        let held: Vec<TripId> = self
            .queue
            .held()
            .filter(|id| self.trips.get(id).is_none_or(|s| due.contains(&region_of(s.trip.pickup))))
            .collect();
        let mut trips = Vec::new();
        let mut rows = Vec::new();
        // Per row, the candidates' distances (costs may add a ranking
        // penalty; offers carry the distance).
        let mut distances: Vec<Vec<f64>> = Vec::new();
        let mut columns: Vec<DriverKey> = Vec::new();
        let mut column_of: HashMap<DriverKey, usize> = HashMap::new();
        let mut fallbacks = 0;
        for trip_id in held {
            let Some(state) = self.trips.get(&trip_id) else {
                self.queue.release(trip_id);
                continue;
            };
            if state.trip.status != TripStatus::Searching || !state.offers.is_empty() {
                self.queue.release(trip_id);
                continue;
            }
            let service = state.trip.service;
            let offerable = |key| {
                let driver = self.driver(key);
                driver.is_offerable() && driver.services.contains(service) && !state.tried.contains(&driver.id)
            };
            let by_id = |a, b| self.driver(a).id.cmp(&self.driver(b).id);
            let radius_m = self.eta_radius(state.radius_m);
            // With a road network, the best `CANDIDATES` by road, each
            // costed by its drive (see `road.rs`).
            let (mut near, asked_by_road) = self.road_ranked(state.trip.pickup, CANDIDATES, CANDIDATES, |pool| {
                let found = self.drivers.free().nearest_k(state.trip.pickup, radius_m, pool, offerable, by_id);
                found.into_iter().map(|n| (n.key, n.distance_m)).collect()
            });
            fallbacks += asked_by_road;
            near.truncate(CANDIDATES);
            let mut found: Vec<(DriverKey, f64, f64)> =
                near.into_iter().map(|(key, cost_m)| (key, cost_m, self.rank_cost(key, cost_m))).collect();
            // Forward dispatch: the best driver finishing a ride nearby is
            // one more candidate, costed by the route via its dropoff (by
            // road, with a road network).
            if let Some((key, route_m)) =
                self.forward_candidate(state.trip.pickup, service, state.radius_m, &state.tried)
            {
                let route_m = self.forward_cost(key, state.trip.pickup, route_m);
                if self.within_eta(route_m) {
                    found.push((key, route_m, self.rank_cost(key, route_m)));
                }
            }
            let mut candidates = Vec::with_capacity(found.len());
            let mut metres = Vec::with_capacity(found.len());
            for (key, distance_m, cost) in found {
                let col = *column_of.entry(key).or_insert_with(|| {
                    columns.push(key);
                    columns.len() - 1
                });
                candidates.push((col, cost.round() as i64));
                metres.push(distance_m);
            }
            // Leaving a request out costs as much as a pickup of
            // `unmatched_m`, plus `unmatched_per_s_m` for every second it
            // has waited: a far driver is not sent at once when a nearer one
            // may come free in the next windows (the "wild goose chase"),
            // and an older request always wins in the end (nobody starves).
            let waited_s = now.since(state.trip.requested_at).max(0) as f64 / 1_000.0;
            let unmatched = self.config.batch_unmatched_m + self.config.batch_unmatched_per_s_m * waited_s;
            rows.push(Row { candidates, unmatched: unmatched.round() as i64 });
            distances.push(metres);
            trips.push(trip_id);
        }
        self.stats.road_fallbacks += fallbacks;
        let chosen = assign(&rows, columns.len());
        for (((trip_id, row), metres), choice) in trips.into_iter().zip(&rows).zip(&distances).zip(chosen) {
            let Some(col) = choice else { continue };
            let Some(i) = row.candidates.iter().position(|(c, _)| *c == col) else { continue };
            self.offer_to(now, trip_id, columns[col], metres[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every assignment of rows to distinct candidate columns (or none).
    fn brute_force(rows: &[Row], r: usize, used: &mut Vec<bool>) -> i64 {
        let Some(row) = rows.get(r) else { return 0 };
        let mut best = row.unmatched + brute_force(rows, r + 1, used);
        for &(col, cost) in &row.candidates {
            if !used[col] {
                used[col] = true;
                best = best.min(cost + brute_force(rows, r + 1, used));
                used[col] = false;
            }
        }
        best
    }

    fn cost(rows: &[Row], chosen: &[Option<usize>]) -> i64 {
        rows.iter()
            .zip(chosen)
            .map(|(row, c)| match c {
                Some(col) => row.candidates.iter().find(|(x, _)| x == col).map_or(i64::MAX / 4, |(_, cost)| *cost),
                None => row.unmatched,
            })
            .sum()
    }

    #[test]
    fn the_hungarian_answer_is_the_brute_force_optimum_on_small_instances() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for case in 0..2_000 {
            let (n, m) = (rng.random_range(1..=5), rng.random_range(1..=6));
            let rows: Vec<Row> = (0..n)
                .map(|_| {
                    let mut candidates: Vec<(usize, i64)> = Vec::new();
                    for c in 0..m {
                        if rng.random_bool(0.5) {
                            candidates.push((c, rng.random_range(0..5_000)));
                        }
                    }
                    candidates.truncate(CANDIDATES);
                    Row { candidates, unmatched: UNMATCHED + rng.random_range(0..10_000) }
                })
                .collect();
            let chosen = assign(&rows, m);
            let mut taken = vec![false; m];
            for col in chosen.iter().flatten() {
                assert!(!std::mem::replace(&mut taken[*col], true), "case {case}: column {col} given twice");
            }
            for (row, c) in rows.iter().zip(&chosen) {
                assert!(c.is_none_or(|c| row.candidates.iter().any(|(x, _)| *x == c)), "case {case}: not a candidate");
            }
            let want = brute_force(&rows, 0, &mut vec![false; m]);
            assert_eq!(cost(&rows, &chosen), want, "case {case}: {rows:?} -> {chosen:?}");
        }
    }

    /// Each region's turn falls within the window from now, and the
    /// regions of a city take their turns spread over the window, not all
    /// at once.
    #[test]
    fn regions_take_turns_spread_over_the_window() {
        let mut dues = std::collections::BTreeSet::new();
        for lat in 0..10 {
            for lng in 0..10 {
                let region = region_of(
                    LatLng::new(35.0 + 0.16 * f64::from(lat), 126.0 + 0.16 * f64::from(lng))
                        .unwrap_or_else(|e| panic!("{e}")),
                );
                for now in [0_i64, 1, 1_999, 2_000, 1_700_000_000_123] {
                    let due = due_in(Timestamp(now), region, 2_000);
                    assert!(due.0 > now && due.0 <= now + 2_000, "{region:?} at {now}: {due:?}");
                    assert_eq!(due_in(due, region, 2_000).0, due.0 + 2_000, "a region's turns are a window apart");
                }
                dues.insert(due_in(Timestamp(0), region, 2_000).0);
            }
        }
        // 100 regions: their turns fall at many distinct moments.
        assert!(dues.len() >= 80, "{dues:?}");
        let spread = dues.last().copied().unwrap_or_default() - dues.first().copied().unwrap_or_default();
        assert!(spread >= 1_800, "{dues:?}");
    }

    /// A component larger than `MAX_ROWS` is solved in pieces: still no
    /// driver twice, only candidates, and every request matched while its
    /// candidates last.
    #[test]
    fn a_large_component_is_solved_in_pieces_that_never_share_a_driver() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (n, m) = (500, 2_000);
        // Requests along a line, each with candidates around its place,
        // so everyone is chained into one component.
        let rows: Vec<Row> = (0..n)
            .map(|r| {
                let centre = r * m / n;
                let candidates = (0..CANDIDATES)
                    .map(|_| ((centre + rng.random_range(0..12)).min(m - 1), rng.random_range(0..3_000)))
                    .collect();
                Row { candidates, unmatched: UNMATCHED }
            })
            .collect();
        let chosen = assign(&rows, m);
        let mut taken = vec![false; m];
        for (row, c) in rows.iter().zip(&chosen) {
            let Some(c) = c else { continue };
            assert!(row.candidates.iter().any(|(x, _)| x == c), "not a candidate");
            assert!(!std::mem::replace(&mut taken[*c], true), "column {c} given twice");
        }
        assert!(chosen.iter().filter(|c| c.is_some()).count() >= n * 95 / 100, "{chosen:?}");
    }
}
