//! Ranking by road: with a road network set ([`Engine::set_roads`]), the
//! great-circle nearest candidates are ranked by their drive to the
//! pickup (nearest-first and broadcast), a forward-dispatch candidate by
//! its drive via its dropoff, and an assigned trip's pickup distance and
//! ETA are the road's. A batch costs each request's candidates by road too.
//!
//! A drive's cost in the ranking is its seconds at `Config::eta_speed_kmh`
//! in metres, the unit every other cost here is in (a miss-rate weight,
//! a batch's unmatched penalty), so a candidate with no drive to be had
//! (off the roads, no route), ranked by its straight line, compares with
//! the others as its crow-flight ETA would.

use super::Engine;
use super::borders::Candidate;
use crate::geo::LatLng;
use crate::index::DriverKey;
use crate::roads::Leg;
use crate::territory::Shard;

/// The most candidates by the straight line a ride's ranking by road asks
/// when the nearest cannot come.
pub const MAX_ROAD_POOL: usize = 256;

impl Engine {
    /// Ranks `found` (each with its great-circle distance, nearest first)
    /// by road, in place: each distance becomes the drive's cost in metres
    /// (see the module docs), best first, ties keeping their order; one
    /// from where no road leads is dropped. Answers how many fell back to
    /// the straight line; a no-op without a road network.
    ///
    /// A router that batches (see [`crate::roads::Roads::batches`]) is asked
    /// for every candidate at once. Else lazily, and exactly: a candidate
    /// `d` metres away cannot drive there in less than
    /// `d / Roads::top_speed_mps()`, so once `want` candidates cost (with
    /// their miss-rate weight) no more than that, it and every farther one
    /// are dropped unasked.
    pub(super) fn rank_by_road(&self, pickup: LatLng, found: &mut Vec<(DriverKey, f64)>, want: usize) -> u64 {
        let Some(roads) = &self.roads else { return 0 };
        let mps = self.config.eta_speed_kmh.max(1.0) / 3.6;
        // The least cost per metre of straight line (a fallback's is 1).
        let floor = (mps / roads.top_speed_mps().max(0.1)).min(1.0);
        let mut best: Vec<f64> = Vec::with_capacity(want + 1);
        let mut fallbacks = 0;
        let mut asked = 0;
        // A router that batches is asked for every candidate in one call.
        let all: Option<Vec<Option<Leg>>> = roads.batches().then(|| {
            let at: Vec<Option<LatLng>> = found.iter().map(|&(key, _)| self.driver(key).position).collect();
            let known: Vec<LatLng> = at.iter().flatten().copied().collect();
            let mut legs = roads.legs_to(&known, pickup).into_iter();
            at.iter().map(|p| p.and_then(|_| legs.next().flatten())).collect()
        });
        for (n, candidate) in found.iter_mut().enumerate() {
            let (key, crow_m) = *candidate;
            // Asked one by one, stop where no farther one can win; every
            // drive already had, rank them all.
            if all.is_none() && want > 0 && best.len() >= want && crow_m * floor >= best[want - 1] {
                break;
            }
            asked += 1;
            let leg = match &all {
                Some(all) => all.get(n).copied().flatten(),
                None => self.driver(key).position.and_then(|at| roads.legs_to(&[at], pickup).pop().flatten()),
            };
            match leg {
                Some(leg) if leg.reachable() => candidate.1 = leg.seconds.max(0.0) * mps,
                // No road leads from there: that driver cannot come.
                Some(_) => {
                    candidate.1 = f64::INFINITY;
                    continue;
                }
                None => fallbacks += 1,
            }
            let cost = self.rank_cost(key, candidate.1);
            let at = best.partition_point(|&c| c <= cost);
            best.insert(at, cost);
            best.truncate(want.max(1));
        }
        found.truncate(asked);
        found.retain(|c| c.1.is_finite());
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        fallbacks
    }

    /// The best `want` candidates for `pickup` from `nearest(pool)` (the
    /// `pool` nearest by the straight line), ranked by road (see
    /// [`Engine::rank_by_road`]) and able to come within
    /// `Config::max_pickup_eta_ms`; with the fallbacks counted. Should
    /// fewer than `want` be left of a full pool (none of the nearest has a
    /// road that brings it in time: across a river, on an island), the next
    /// nearest are asked too, up to [`MAX_ROAD_POOL`].
    pub(super) fn road_ranked(
        &self,
        pickup: LatLng,
        want: usize,
        pool: usize,
        mut nearest: impl FnMut(usize) -> Vec<(DriverKey, f64)>,
    ) -> (Vec<(DriverKey, f64)>, u64) {
        let mut pool = self.road_pool(pool);
        loop {
            let mut found = nearest(pool);
            let full = found.len() >= pool;
            let fallbacks = self.rank_by_road(pickup, &mut found, want);
            found.retain(|&(_, cost_m)| self.within_eta(cost_m));
            if found.len() >= want || !full || !self.by_road() || pool >= MAX_ROAD_POOL {
                return (found, fallbacks);
            }
            pool = (pool * 4).min(MAX_ROAD_POOL);
        }
    }

    /// Ranks a gather's candidates (here and in other shards, nearest
    /// first) by road, in place, as [`Engine::road_ranked`] ranks one
    /// engine's: each distance becomes its drive's cost, best first, ties
    /// keeping their order; one no road leads from, or that cannot come
    /// within `Config::max_pickup_eta_ms`, is dropped. Answers how many
    /// fell back to the straight line; a no-op without a road network.
    pub(super) fn rank_gathered_by_road(&self, pickup: LatLng, all: &mut Vec<(Shard, Candidate)>) -> u64 {
        let Some(roads) = &self.roads else { return 0 };
        let mps = self.config.eta_speed_kmh.max(1.0) / 3.6;
        let at: Vec<LatLng> = all.iter().map(|(_, c)| c.position).collect();
        let mut fallbacks = 0;
        for ((_, candidate), leg) in all.iter_mut().zip(roads.legs_to(&at, pickup)) {
            match leg {
                Some(leg) if leg.reachable() => candidate.distance_m = leg.seconds.max(0.0) * mps,
                Some(_) => candidate.distance_m = f64::INFINITY,
                None => fallbacks += 1,
            }
        }
        all.retain(|(_, c)| self.within_eta(c.distance_m));
        all.sort_by(|a, b| a.1.distance_m.total_cmp(&b.1.distance_m));
        fallbacks
    }

    /// The drive of `key` to `pickup` by road: straight there, or, with a
    /// ride in progress, to that ride's dropoff and on from there; `None`
    /// without a road network or a drive to be had.
    fn road_route(&self, key: DriverKey, pickup: LatLng) -> Option<Leg> {
        let roads = self.roads.as_ref()?;
        let at = self.driver(key).position?;
        let leg = |from: LatLng, to: LatLng| roads.legs_to(&[from], to).into_iter().next().flatten();
        match self.dropoff_in_progress(key) {
            Some(dropoff) => {
                let (first, then) = (leg(at, dropoff)?, leg(dropoff, pickup)?);
                Some(Leg { metres: first.metres + then.metres, seconds: first.seconds + then.seconds })
            }
            None => leg(at, pickup),
        }
    }

    /// The pickup distance (metres) and ETA (milliseconds) of `key`: the
    /// road's (see [`Engine::road_route`]), with a road network and a
    /// drive to be had, else `distance_m` (the straight line) at the ETA
    /// speed.
    pub(super) fn pickup_leg(&self, key: DriverKey, pickup: LatLng, distance_m: f64) -> (f64, i64) {
        match self.road_route(key, pickup) {
            Some(leg) if leg.reachable() => {
                (leg.metres, (leg.seconds.max(0.0) * 1_000.0).round().min(i64::MAX as f64) as i64)
            }
            _ => (distance_m, self.config.eta_ms(distance_m)),
        }
    }

    /// A forward-dispatch candidate's cost to `pickup` in the ranking's
    /// unit (see the module docs): by road when it can be had, else
    /// `route_m`, its straight-line route.
    pub(super) fn forward_cost(&self, key: DriverKey, pickup: LatLng, route_m: f64) -> f64 {
        let mps = self.config.eta_speed_kmh.max(1.0) / 3.6;
        self.road_route(key, pickup).map_or(route_m, |leg| leg.seconds.max(0.0) * mps)
    }

    /// How many candidates to draw from the index for `want` offers: with
    /// a road network, at least `Config::road_candidates`.
    pub(super) fn road_pool(&self, pool: usize) -> usize {
        if self.roads.is_some() { pool.max(self.config.road_candidates) } else { pool }
    }

    /// Whether a candidate whose cost is `cost_m` in the ranking's unit
    /// (see the module docs) reaches the pickup within
    /// `Config::max_pickup_eta_ms`: always, when that is off.
    pub(super) fn within_eta(&self, cost_m: f64) -> bool {
        let max_ms = self.config.max_pickup_eta_ms;
        // An infinite cost: no road leads from there.
        cost_m.is_finite()
            && (max_ms <= 0 || cost_m <= max_ms as f64 / 1_000.0 * (self.config.eta_speed_kmh.max(1.0) / 3.6))
    }

    /// `radius_m` cut to where a driver could still reach the pickup within
    /// `Config::max_pickup_eta_ms`: the straight line at the ETA speed, or,
    /// by road, at the network's top speed (no drive is quicker).
    pub(super) fn eta_radius(&self, radius_m: f64) -> f64 {
        let max_ms = self.config.max_pickup_eta_ms;
        if max_ms <= 0 {
            return radius_m;
        }
        let mps = match &self.roads {
            Some(roads) => roads.top_speed_mps().max(self.config.eta_speed_kmh.max(1.0) / 3.6),
            None => self.config.eta_speed_kmh.max(1.0) / 3.6,
        };
        radius_m.min(max_ms as f64 / 1_000.0 * mps)
    }

    /// Whether candidates are ranked by road.
    pub(super) fn by_road(&self) -> bool {
        self.roads.is_some()
    }
}
