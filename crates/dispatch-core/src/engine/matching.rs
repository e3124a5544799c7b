//! Finding the nearest offerable driver, offering, assigning, and what
//! happens when offers lapse and searches run out.

use std::collections::HashSet;

use super::state::Timer;
use super::{DriverEvent, Effect, Engine, LogRecord, MAX_OFFERS_PER_TRIP, Matching, Offer, WithdrawReason};
use crate::geo::LatLng;
use crate::ids::{DriverId, OfferId, TripId};
use crate::index::{DriverKey, DriverSet};
use crate::service::ServiceType;
use crate::time::Timestamp;
use crate::trip::TripStatus;

impl Engine {
    /// The driver who would be offered a ride at `pickup` right now, and
    /// their great-circle distance to it (by road, the drive's cost; see
    /// `road.rs`): the best-ranked offerable driver
    /// serving `service` within `radius_m` (the nearest, unless
    /// `Config::accept_weight_m` ranks drivers who miss offers lower), ties
    /// broken by the smaller id.
    ///
    /// Cost: O(log n) to the nearest driver in the index of free drivers,
    /// plus O(log n) for each nearer free driver who cannot take this ride
    /// (another service); busy and off-duty drivers are not in that index.
    pub fn nearest_offerable_driver(
        &self,
        pickup: LatLng,
        service: ServiceType,
        radius_m: f64,
    ) -> Option<(DriverId, f64)> {
        let (best, _) = self.ranked_offerable(pickup, service, radius_m, &HashSet::new(), 1);
        best.first().map(|&(key, distance_m)| (self.driver(key).id.clone(), distance_m))
    }

    /// What offering `key` a ride `distance_m` away costs in the ranking:
    /// the distance, plus `Config::accept_weight_m` times the share of
    /// their recent offers the driver missed.
    pub(super) fn rank_cost(&self, key: DriverKey, distance_m: f64) -> f64 {
        let weight = self.config.accept_weight_m;
        if weight > 0.0 { distance_m + weight * self.driver(key).answers.miss_rate() } else { distance_m }
    }

    /// The `want` best drivers who may be offered a trip, best first, each
    /// with their great-circle distance to the pickup. By distance (ties by
    /// the smaller id); with acceptance-aware ranking on, the nearest
    /// [`super::CANDIDATES`] (or `want`, if more) re-ranked by
    /// [`Engine::rank_cost`].
    /// With a road network, the nearest `Config::road_candidates` are
    /// ranked by road first, each with its drive's cost (see `road.rs`);
    /// the second value counts those ranked by the straight line instead.
    fn ranked_offerable(
        &self,
        pickup: LatLng,
        service: ServiceType,
        radius_m: f64,
        tried: &HashSet<DriverId>,
        want: usize,
    ) -> (Vec<(DriverKey, f64)>, u64) {
        let ranked = self.config.accept_weight_m > 0.0;
        let (mut found, fallbacks) = self.road_ranked(pickup, want, self.candidate_pool(want), |pool| {
            self.nearest_offerable(pickup, service, radius_m, tried, pool)
        });
        if ranked {
            // Stable: equal costs keep their distance (then id) order.
            found.sort_by(|a, b| self.rank_cost(a.0, a.1).total_cmp(&self.rank_cost(b.0, b.1)));
        }
        found.truncate(want);
        (found, fallbacks)
    }

    /// The `pool` nearest drivers who may be offered a `service` trip at
    /// `pickup`, nearest first (ties by the smaller id), not re-ranked.
    pub(super) fn nearest_offerable(
        &self,
        pickup: LatLng,
        service: ServiceType,
        radius_m: f64,
        tried: &HashSet<DriverId>,
        pool: usize,
    ) -> Vec<(DriverKey, f64)> {
        let offerable = |key| {
            let driver = self.driver(key);
            driver.is_offerable() && driver.services.contains(service) && !tried.contains(&driver.id)
        };
        let by_id = |a, b| self.driver(a).id.cmp(&self.driver(b).id);
        let nearest = self.drivers.free().nearest_k(pickup, self.eta_radius(radius_m), pool, offerable, by_id);
        nearest.into_iter().map(|n| (n.key, n.distance_m)).collect()
    }

    /// Offers a searching trip with no offer out to its best offerable
    /// driver, or to its `k` best under `broadcast:k` (or assigns it, for
    /// an auto-accept driver); a trip nobody can take now waits in
    /// `unmatched`. A trip whose radius reaches other shards gathers their
    /// candidates first (see `borders.rs`). A trip already offered to `Config::max_offers_per_trip`
    /// drivers ends `NoDriverFound`: that bounds what it keeps (and logs) of
    /// the drivers who passed on it.
    pub(super) fn try_match(&mut self, now: Timestamp, trip_id: TripId) {
        let Some(state) = self.trips.get(&trip_id) else { return };
        if state.asking || state.claims > 0 {
            // Its gather or claims will answer.
            return;
        }
        if state.trip.status != TripStatus::Searching || !state.offers.is_empty() {
            self.queue.stop_waiting(trip_id);
            return;
        }
        let most = self.config.max_offers_per_trip.min(MAX_OFFERS_PER_TRIP);
        if state.tried.len() >= most {
            self.stats.trips_no_driver += 1;
            let reason = format!("offered to {most} drivers; none took it");
            self.finish(now, trip_id, TripStatus::NoDriverFound, Some(reason));
            return;
        }
        let policy = self.config.matching.of(state.trip.service);
        let batch = match policy {
            Matching::Batch { window_ms } => Some(window_ms),
            Matching::Nearest | Matching::Broadcast { .. } => None,
        };
        if let Some(window_ms) = batch
            && self.queue.holds_request(now, window_ms)
        {
            self.hold_for_batch(now, trip_id, window_ms);
            return;
        }
        // A broadcast never takes a trip past its limit of drivers tried.
        let want = policy.fanout().min(most - state.tried.len());
        if self.borders.is_some() {
            let borders = self.trip_borders(trip_id);
            if !borders.is_empty() {
                // Only the shards nearer than this shard's own candidates
                // can change the choice: usually none.
                let pool = self.road_pool(self.candidate_pool(want));
                let touched = self.shards_that_could_beat(trip_id, &borders, pool);
                if !touched.is_empty() {
                    self.gather(trip_id, touched, pool);
                    return;
                }
            }
        }
        let Some(state) = self.trips.get(&trip_id) else { return };
        let (found, fallbacks) =
            self.ranked_offerable(state.trip.pickup, state.trip.service, state.radius_m, &state.tried, want);
        self.stats.road_fallbacks += fallbacks;
        // Forward dispatch, for a ride offered to one driver at a time: a
        // driver finishing a ride nearby, if that is quicker than any free
        // driver (by distance driven).
        if want == 1
            && let Some((key, route_m)) =
                self.forward_candidate(state.trip.pickup, state.trip.service, state.radius_m, &state.tried)
            && let route_m = self.forward_cost(key, state.trip.pickup, route_m)
            && self.within_eta(route_m)
            && found.first().is_none_or(|&(_, free_m)| route_m < free_m)
        {
            self.offer_to(now, trip_id, key, route_m);
            return;
        }
        if found.is_empty() {
            self.no_candidate_now(now, trip_id, policy);
            return;
        }
        self.offer_all(now, trip_id, found);
    }

    /// Offers `trip` to each of `drivers` (best first) at once. An
    /// auto-accept driver among them answers before anyone can, so the
    /// best of those is assigned and nobody else is asked; the others are
    /// handed back to the next retry as freed.
    pub(super) fn offer_all(&mut self, now: Timestamp, trip_id: TripId, drivers: Vec<(DriverKey, f64)>) {
        if let Some(&(key, distance_m)) = drivers.iter().find(|(key, _)| self.driver(*key).auto_accept) {
            self.queue.freed_all(drivers.iter().map(|d| d.0).filter(|&other| other != key));
            self.offer_to(now, trip_id, key, distance_m);
            return;
        }
        for (key, distance_m) in drivers {
            self.offer_to(now, trip_id, key, distance_m);
        }
    }

    pub(super) fn hold_for_batch(&mut self, now: Timestamp, trip_id: TripId, window_ms: i64) {
        let Some(state) = self.trips.get(&trip_id) else { return };
        let region = super::batch::region_of(state.trip.pickup);
        self.queue.hold(trip_id, region, super::batch::due_in(now, region, window_ms));
    }

    /// After a batch: each region still holding requests gets its next
    /// turn (on its own phase, of the shortest window among them), and the
    /// engine's next batch is the earliest of those.
    pub(super) fn schedule_batch(&mut self, now: Timestamp) {
        let turns: Vec<_> = self
            .queue
            .held()
            .filter_map(|id| self.trips.get(&id))
            .filter_map(|state| match self.config.matching.of(state.trip.service) {
                Matching::Batch { window_ms } => {
                    let region = super::batch::region_of(state.trip.pickup);
                    Some((region, super::batch::due_in(now, region, window_ms)))
                }
                Matching::Nearest | Matching::Broadcast { .. } => None,
            })
            .collect();
        self.queue.schedule(turns);
    }

    /// Offers `trip` to `key` (or assigns it, for an auto-accept driver).
    pub(super) fn offer_to(&mut self, now: Timestamp, trip_id: TripId, key: DriverKey, distance_m: f64) {
        self.queue.remove(trip_id);
        self.stats.offers_sent += 1;
        if let Some(mut state) = self.trips.get_mut(&trip_id)
            && !std::mem::replace(&mut state.offered_once, true)
        {
            let across = self.borders.as_ref().map(|_| state.asked_across);
            drop(state);
            self.effects.push(Effect::FirstOffer { trip: trip_id, across });
        }
        if self.driver(key).auto_accept {
            self.stats.offers_accepted += 1;
            self.assign(now, trip_id, key, distance_m);
            return;
        }
        let offer_id = self.offers.open(trip_id, key);
        let expires_at = now + self.config.offer_timeout_ms;
        self.timers.insert((expires_at, Timer::OfferExpiry(offer_id)));
        let mut driver = self.drivers.row(key);
        driver.offer = Some(offer_id);
        let (driver_id, session) = (driver.id.clone(), driver.session);
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return };
        state.offers.push(offer_id);
        if let Some(session) = session {
            let offer = Offer { id: offer_id, driver: driver_id, trip: state.trip.clone(), expires_at };
            self.effects.push(Effect::Driver { session, event: DriverEvent::Offer(offer) });
        }
    }

    /// Offers the freed drivers to the waiting trips, oldest request first:
    /// each trip gets the nearest freed driver who may take it (its `k`
    /// nearest under `broadcast:k`). Just as exact as a full retry, since
    /// nobody else became offerable, and cheaper: the freed drivers go into
    /// a throwaway R-tree, so a round costs O((freed + waiting) log freed),
    /// never freed x waiting (a mass reconnect frees hundreds of thousands
    /// at once). It stops as soon as every freed driver has an offer.
    pub(super) fn match_freed(&mut self, now: Timestamp) {
        let positioned = self.queue.take_freed().into_iter().filter_map(|key| {
            let driver = self.drivers.get(key).filter(|d| d.is_offerable())?;
            Some((key, driver.position?))
        });
        let mut set = DriverSet::new(positioned.collect::<Vec<_>>());
        let waiting = self.queue.waiting();
        let most = self.config.max_offers_per_trip.min(MAX_OFFERS_PER_TRIP);
        // Trips near a border rank these drivers against other shards'
        // too: they look again (a gather) if one of them could take them.
        // So does every trip when ranking by road: a freed driver nearer
        // by the straight line may be the farther by road.
        let mut retry = Vec::new();
        for trip_id in waiting {
            if set.is_empty() {
                break;
            }
            let Some(state) = self.trips.get(&trip_id) else { continue };
            if self.by_road() || state.borders.as_ref().is_some_and(|b| !b.is_empty()) {
                let eligible = |key| {
                    let driver = self.driver(key);
                    driver.services.contains(state.trip.service) && !state.tried.contains(&driver.id)
                };
                let by_id = |a, b| self.driver(a).id.cmp(&self.driver(b).id);
                if set.nearest(state.trip.pickup, state.radius_m, eligible, by_id).is_some() {
                    retry.push(trip_id);
                }
                continue;
            }
            let want = self.config.matching.of(state.trip.service).fanout().min(most.saturating_sub(state.tried.len()));
            let mut found = Vec::with_capacity(want);
            while found.len() < want {
                let eligible = |key| {
                    let driver = self.driver(key);
                    driver.services.contains(state.trip.service) && !state.tried.contains(&driver.id)
                };
                let by_id = |a, b| self.driver(a).id.cmp(&self.driver(b).id);
                let Some(next) = set.nearest(state.trip.pickup, state.radius_m, eligible, by_id) else { break };
                if let Some(at) = self.driver(next.key).position {
                    set.remove(next.key, at);
                }
                found.push((next.key, next.distance_m));
            }
            if !found.is_empty() {
                self.offer_all(now, trip_id, found);
            }
        }
        for trip_id in retry {
            self.try_match(now, trip_id);
        }
    }

    /// Retries every unmatched trip, oldest request first.
    pub(super) fn match_unmatched(&mut self, now: Timestamp) {
        for trip in self.queue.start_rematch(now) {
            self.try_match(now, trip);
        }
    }

    /// Gives `trip` to `key`: the driver is told, and so is the rider. A
    /// driver with a ride in progress (forward dispatch) gets it queued.
    pub(super) fn assign(&mut self, now: Timestamp, trip_id: TripId, key: DriverKey, distance_m: f64) {
        let mut driver = self.drivers.row(key);
        driver.offer = None;
        let queued = driver.trip.is_some();
        if queued {
            driver.next = Some(trip_id);
        } else {
            driver.trip = Some(trip_id);
            driver.last_position_push = now;
        }
        let (driver_id, position, session) = (driver.id.clone(), driver.position, driver.session);
        drop(driver);
        // By road with a road network (via the dropoff of a ride in
        // progress, for one queued behind it).
        let (distance_m, eta_ms) = match self.trips.get(&trip_id) {
            Some(state) => self.pickup_leg(key, state.trip.pickup, distance_m),
            None => (distance_m, self.config.eta_ms(distance_m)),
        };
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return };
        // The other drivers of a broadcast, if any: told it is taken below.
        let others = std::mem::take(&mut state.offers);
        state.eta_at = now;
        let trip = &mut state.trip;
        trip.status = TripStatus::DriverAssigned;
        trip.driver = Some(driver_id);
        trip.driver_position = position;
        trip.pickup_distance_m = Some(distance_m);
        trip.pickup_eta_ms = Some(eta_ms);
        trip.updated_at = now;
        trip.queued = queued;
        let trip = trip.clone();
        drop(state);
        self.refresh_forward(key);
        self.trip_changed(trip_id);
        if let Some(session) = session {
            self.effects.push(Effect::Driver { session, event: DriverEvent::Trip(trip) });
        }
        for offer in others {
            self.close_offer(offer, WithdrawReason::Taken);
        }
    }

    /// Closes an open offer: the driver is told why and is free again, and
    /// (unless another driver took the trip) the trip never goes back to
    /// that driver. The caller decides what the trip does next.
    pub(super) fn close_offer(&mut self, offer_id: OfferId, reason: WithdrawReason) -> Option<TripId> {
        let offer = self.offers.close(offer_id)?;
        let missed = matches!(reason, WithdrawReason::Declined | WithdrawReason::Expired);
        if !missed {
            self.stats.offers_withdrawn += 1;
        }
        let mut driver = self.drivers.row(offer.driver);
        driver.offer = None;
        if missed {
            driver.answers.note(true);
        }
        let (driver_id, session) = (driver.id.clone(), driver.session);
        drop(driver);
        if let Some(session) = session {
            let event = DriverEvent::OfferWithdrawn { offer: offer_id, driver: driver_id.clone(), reason };
            self.effects.push(Effect::Driver { session, event });
        }
        if let Some(mut state) = self.trips.get_mut(&offer.trip) {
            state.offers.retain(|&o| o != offer_id);
            // A broadcast's other drivers did not pass on the trip: it may
            // come back to them if the winner gives it up.
            if reason != WithdrawReason::Taken {
                state.tried.insert(driver_id.clone());
                // So a restart never offers the trip to this driver again.
                self.effects.push(Effect::Persist(LogRecord::Tried { trip: offer.trip, driver: driver_id }));
            }
        }
        self.queue.freed(offer.driver);
        self.stray(offer.driver);
        Some(offer.trip)
    }

    pub(super) fn expire_offer(&mut self, now: Timestamp, offer_id: OfferId) {
        if let Some(trip) = self.close_offer(offer_id, WithdrawReason::Expired) {
            self.stats.offers_expired += 1;
            self.try_match(now, trip);
        }
    }
}
