//! Geo-shards: what an engine does at its shard's border.
//!
//! With a [`Territory`], an engine holds the drivers in its part of the map
//! and the trips whose pickups are there, and speaks to the engines of
//! other shards only through [`ToShard`] messages, which the caller carries
//! (in process or between nodes) and answers by calling the receiving
//! engine's methods here. Three exchanges:
//!
//! - **Gather.** A trip whose pickup radius reaches past the shard asks
//!   each shard it touches for its best candidates ([`Engine::candidates`],
//!   read-only), merges them with its own exactly as one engine would rank
//!   them all (by distance, then id; re-ranked by acceptance if that is
//!   on), and picks. Only the shards nearer than its own best candidates
//!   are asked, since a driver beyond them cannot win: a pickup with
//!   drivers close by asks nobody.
//! - **Claim.** A chosen driver of another shard is claimed from its
//!   engine ([`Engine::claim`]), which hands it over if it is still free to
//!   take the ride, or refuses; a refusal sends the trip back to gather.
//!   So a driver is in one engine at a time and two shards can never both
//!   offer it a ride: the claim is the reservation.
//! - **Hand-over.** A free driver outside its engine's shard (it drove
//!   across, or its offer or ride from another shard ended) is handed to
//!   the shard it is in ([`Engine::adopt`]). A driver with an offer or a
//!   ride stays with the engine that made it until it ends.
//!
//! Trips near no border never leave the engine: the common path does not
//! coordinate. Batch and forward dispatch see the drivers of their own
//! shard only.
//!
//! With a road network, a gather asks for the `Config::road_candidates`
//! nearest by the straight line, and the asking engine ranks the best of
//! them all by road (each candidate says where it is), as one engine would.
//! Should none of them be able to come, the next nearest are not gathered
//! (one engine would ask up to `MAX_ROAD_POOL` of the whole map; a trip
//! that gathered nobody waits and looks again, one that did not asks its
//! own shard's next nearest only).

use std::collections::HashSet;
use std::sync::Arc;

use super::state::{Answers, Driver};
use super::{CANDIDATES, Engine, Matching};
use crate::error::EngineError;
use crate::geo::LatLng;
use crate::ids::{DriverId, FleetId, SessionId, TripId};
use crate::index::DriverKey;
use crate::service::{ServiceSet, ServiceType};
use crate::territory::{Shard, Territory};
use crate::time::Timestamp;
use crate::trip::TripStatus;

/// What a trip near a border asks the shards it touches.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateQuery {
    /// The pickup.
    pub pickup: LatLng,
    /// The ride's service.
    pub service: ServiceType,
    /// The pickup radius.
    pub radius_m: f64,
    /// Drivers the trip must not be offered to again.
    pub tried: Vec<DriverId>,
    /// How many nearest drivers to answer (the asking engine ranks them).
    pub want: usize,
}

/// A driver another shard might offer a ride to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Who.
    pub driver: DriverId,
    /// Great-circle metres to the pickup.
    pub distance_m: f64,
    /// Where the driver is, for the asking engine to rank it by road.
    pub position: LatLng,
    /// The share of recent offers the driver missed, for acceptance-aware
    /// ranking.
    pub miss_rate: f64,
}

/// A free driver moving from one engine to another: everything the engine
/// knows of a driver with no offer and no trip.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverCard {
    /// Who.
    pub id: DriverId,
    /// The session that speaks for the driver.
    pub session: SessionId,
    /// The fleet whose session that is, if a fleet's.
    pub fleet: Option<FleetId>,
    /// Where.
    pub position: LatLng,
    /// The device time of the last fix applied.
    pub last_fix: Option<Timestamp>,
    /// What the driver serves.
    pub services: ServiceSet,
    /// On duty.
    pub available: bool,
    /// Takes rides without an offer round trip.
    pub auto_accept: bool,
    /// How the driver answered its last offers.
    pub answers: Answers,
}

/// A message for another shard's engine. The caller delivers it and calls
/// back with the answer, as each variant says.
#[derive(Debug, Clone, PartialEq)]
pub enum ToShard {
    /// Ask each of `shards` for [`Engine::candidates`] with `query`, then
    /// give every answer together to this engine's [`Engine::gathered`].
    Gather {
        /// For which trip.
        trip: TripId,
        /// What to ask.
        query: Box<CandidateQuery>,
        /// Whom to ask (never this engine's own shard).
        shards: Vec<Shard>,
    },
    /// Ask `shard` to [`Engine::claim`] `driver` for a `service` ride, then
    /// give its answer to this engine's [`Engine::claimed`].
    Claim {
        /// For which trip.
        trip: TripId,
        /// Whom.
        driver: DriverId,
        /// The ride's service.
        service: ServiceType,
        /// The shard holding the driver.
        shard: Shard,
    },
    /// Give `card` to `shard`'s [`Engine::adopt`]: the driver is there now.
    HandOver {
        /// The driver.
        card: Box<DriverCard>,
        /// Where it goes.
        shard: Shard,
    },
    /// This engine forgot `driver` (nobody speaks for it and it has no
    /// trip): whoever keeps track of where drivers are may forget it too.
    Gone {
        /// Who.
        driver: DriverId,
    },
}

/// An engine's part in geo-sharding: its territory, and what it has yet
/// to say to other shards.
#[derive(Debug)]
pub(super) struct Borders {
    territory: Arc<dyn Territory>,
    /// Drivers that may have become free outside the territory since the
    /// last tick: checked there (a key may be stale by then; the check
    /// reads the row afresh).
    strays: Vec<DriverKey>,
    /// By driver slot: where the driver in it was last found in this shard,
    /// and how far around that point is this shard too. An update within
    /// it needs no check (placing a point costs about a microsecond, ten
    /// times a move in the index). A zone is a fact about the map, not the
    /// driver, so one left by a slot's earlier driver is still true.
    zones: Vec<Option<(LatLng, f64)>>,
    outbox: Vec<ToShard>,
}

impl Engine {
    /// This engine as the engine of `territory`'s shard: trip ids carry the
    /// shard, trips near its border gather candidates from the shards they
    /// touch, and free drivers outside it are handed to theirs.
    pub fn with_territory(mut self, territory: Arc<dyn Territory>) -> Self {
        self.trips.ids_from(TripId::first_of(territory.shard()).0);
        self.offers.spread(territory.count(), territory.shard());
        self.borders = Some(Borders { territory, strays: Vec::new(), zones: Vec::new(), outbox: Vec::new() });
        self
    }

    /// This engine's shard (0 without a territory).
    pub fn shard(&self) -> Shard {
        self.borders.as_ref().map_or(0, |b| b.territory.shard())
    }

    /// Takes the messages for other shards produced since the last call.
    pub fn drain_to_shards(&mut self) -> Vec<ToShard> {
        self.borders.as_mut().map(|b| std::mem::take(&mut b.outbox)).unwrap_or_default()
    }

    /// Whether this engine holds `driver` now.
    pub fn holds(&self, driver: &DriverId) -> bool {
        self.drivers.key_of(driver).is_some()
    }

    /// The drivers this engine holds now, by id.
    pub fn driver_ids(&self) -> impl Iterator<Item = &DriverId> {
        self.drivers.iter().map(|(_, d)| &d.id)
    }

    /// Another shard's trip asks who could take it: this shard's `want`
    /// nearest offerable drivers within the radius who serve the ride and
    /// are not in `tried`, nearest first (ties by id), each with its miss
    /// rate. Read-only.
    pub fn candidates(&self, query: &CandidateQuery) -> Vec<Candidate> {
        let tried: HashSet<DriverId> = query.tried.iter().cloned().collect();
        self.nearest_offerable(query.pickup, query.service, query.radius_m, &tried, query.want)
            .into_iter()
            .filter_map(|(key, distance_m)| self.candidate(key, distance_m))
            .collect()
    }

    /// `key` as a candidate `distance_m` from a pickup; `None` if it has no
    /// position (never one the index found).
    fn candidate(&self, key: DriverKey, distance_m: f64) -> Option<Candidate> {
        let driver = self.driver(key);
        Some(Candidate {
            driver: driver.id.clone(),
            distance_m,
            position: driver.position?,
            miss_rate: driver.answers.miss_rate(),
        })
    }

    /// Another shard claims `driver` for a `service` ride: the driver, if
    /// still here and free to take it, leaves this engine and its card is
    /// the answer; else `None`.
    pub fn claim(&mut self, driver: &DriverId, service: ServiceType) -> Option<DriverCard> {
        let key = self.drivers.key_of(driver)?;
        let d = self.driver(key);
        if !d.is_offerable() || !d.services.contains(service) {
            return None;
        }
        self.release(key)
    }

    /// A driver handed over (or claimed) from another shard joins this
    /// engine; a free one is offered to waiting trips like any other.
    /// Refused if this engine already holds a driver of that id (the
    /// caller's directory of who holds whom would be wrong).
    pub fn adopt(&mut self, card: DriverCard) -> Result<(), EngineError> {
        self.adopt_card(card).map(|_| ())
    }

    fn adopt_card(&mut self, card: DriverCard) -> Result<DriverKey, EngineError> {
        if self.drivers.key_of(&card.id).is_some() {
            return Err(EngineError::DriverHeldElsewhere(card.id));
        }
        let DriverCard { id, session, fleet, position, last_fix, services, available, auto_accept, answers } = card;
        let mut driver = Driver::new(id, session);
        driver.services = services;
        driver.available = available;
        driver.auto_accept = auto_accept;
        driver.answers = answers;
        driver.fleet = fleet.clone();
        let key = self.drivers.insert(driver);
        match fleet {
            // The fleet's session here, opened if this engine has not seen
            // it yet.
            Some(fleet) => {
                // The caller ends an older session's stream; here its
                // drivers move to this one.
                if self.sessions.fleet_of(session).is_none()
                    && let Some((_, moved)) = self.sessions.open_fleet(session, fleet)
                {
                    for moved in moved {
                        self.drivers.row(moved).session = Some(session);
                    }
                }
                self.sessions.add_to_fleet(session, key);
            }
            None => self.sessions.open_driver(session, key),
        }
        let moved = self.drivers.relocate(key, position, last_fix);
        if !moved {
            let mut row = self.drivers.row(key);
            row.position = Some(position);
            row.last_fix = last_fix;
        }
        self.queue.freed(key);
        self.stray(key);
        Ok(key)
    }

    /// Takes a free driver out of this engine: out of its session (which
    /// stays open, for the drivers it speaks for elsewhere) and its tables.
    fn release(&mut self, key: DriverKey) -> Option<DriverCard> {
        let d = self.driver(key);
        let (session, position) = (d.session?, d.position?);
        if !d.is_idle() {
            return None;
        }
        let card = DriverCard {
            id: d.id.clone(),
            session,
            fleet: d.fleet.clone(),
            position,
            last_fix: d.last_fix,
            services: d.services,
            available: d.available,
            auto_accept: d.auto_accept,
            answers: d.answers,
        };
        self.sessions.detach(session, key);
        self.remove_driver(key);
        Some(card)
    }

    /// Says that this engine forgot `driver`.
    pub(super) fn gone(&mut self, driver: DriverId) {
        if self.borders.is_some() {
            self.post(ToShard::Gone { driver });
        }
    }

    /// Notes that `key` may be a free driver outside this shard.
    pub(super) fn stray(&mut self, key: DriverKey) {
        if let Some(borders) = &mut self.borders {
            borders.strays.push(key);
        }
    }

    /// A free driver moved to `at`: a stray unless still inside the zone
    /// it was last found home in.
    pub(super) fn moved_to(&mut self, key: DriverKey, at: LatLng) {
        let Some(borders) = &mut self.borders else { return };
        let home = borders.zones.get(key.0 as usize).copied().flatten();
        if !home.is_some_and(|(centre, room_m)| centre.distance_m(at) < room_m) {
            borders.strays.push(key);
        }
    }

    /// Hands every free driver outside this shard to the shard it is in.
    pub(super) fn hand_over_strays(&mut self) {
        let Some(borders) = &mut self.borders else { return };
        if borders.strays.is_empty() {
            return;
        }
        let strays = std::mem::take(&mut borders.strays);
        let territory = Arc::clone(&borders.territory);
        let home = territory.shard();
        for key in strays {
            let Some(driver) = self.drivers.get(key) else { continue };
            let Some(position) = driver.position.filter(|_| driver.is_idle() && driver.session.is_some()) else {
                continue;
            };
            let (shard, room_m) = territory.room(position);
            if shard == home {
                if let Some(borders) = &mut self.borders {
                    let slot = key.0 as usize;
                    if borders.zones.len() <= slot {
                        borders.zones.resize(slot + 1, None);
                    }
                    borders.zones[slot] = Some((position, room_m));
                }
                continue;
            }
            if let Some(card) = self.release(key) {
                self.post(ToShard::HandOver { card: Box::new(card), shard });
            }
        }
    }

    fn post(&mut self, message: ToShard) {
        if let Some(borders) = &mut self.borders {
            borders.outbox.push(message);
        }
    }

    /// The other shards a trip's pickup radius reaches, computed once per
    /// trip; none without a territory.
    pub(super) fn trip_borders(&mut self, trip_id: TripId) -> Vec<Shard> {
        let Some(borders) = &self.borders else { return Vec::new() };
        let territory = Arc::clone(&borders.territory);
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return Vec::new() };
        if state.borders.is_none() {
            let home = territory.shard();
            let touched = territory.shards_within(state.trip.pickup, state.radius_m);
            state.borders = Some(touched.into_iter().filter(|&s| s != home).collect());
        }
        state.borders.as_deref().map(<[Shard]>::to_vec).unwrap_or_default()
    }

    /// Of the shards `borders` a trip's radius reaches, those that could
    /// hold one of its `pool` best drivers: the shards within the distance
    /// of this shard's `pool`-th nearest offerable driver (all of
    /// `borders` if this shard has fewer). A driver elsewhere is farther
    /// than its shard's nearest edge, so the shards beyond that distance
    /// cannot change the choice, and a pickup with drivers close by asks
    /// nobody. The pickup's room (the distance within which every point is
    /// in its shard) answers most cases without walking cells.
    pub(super) fn shards_that_could_beat(&self, trip_id: TripId, borders: &[Shard], pool: usize) -> Vec<Shard> {
        let (Some(state), Some(b)) = (self.trips.get(&trip_id), &self.borders) else { return borders.to_vec() };
        let (pickup, radius_m) = (state.trip.pickup, state.radius_m);
        let local = self.nearest_offerable(pickup, state.trip.service, radius_m, &state.tried, pool);
        let reach = match local.last() {
            Some(&(_, distance_m)) if local.len() >= pool => distance_m,
            _ => return borders.to_vec(),
        };
        let (shard, room_m) = b.territory.room(pickup);
        if shard == b.territory.shard() && reach < room_m {
            return Vec::new();
        }
        b.territory.shards_within(pickup, reach).into_iter().filter(|s| borders.contains(s)).collect()
    }

    /// Starts a gather for a trip near a border (see the module docs).
    pub(super) fn gather(&mut self, trip_id: TripId, shards: Vec<Shard>, want: usize) {
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return };
        state.asking = true;
        state.asked_across = true;
        let mut tried: Vec<DriverId> = state.tried.iter().cloned().collect();
        tried.sort_unstable();
        let query = CandidateQuery {
            pickup: state.trip.pickup,
            service: state.trip.service,
            radius_m: state.radius_m,
            tried,
            want,
        };
        drop(state);
        self.queue.stop_waiting(trip_id);
        self.post(ToShard::Gather { trip: trip_id, query: Box::new(query), shards });
    }

    /// The answers to a trip's gather, from every shard asked: the trip is
    /// offered to the best drivers of all, here and there, exactly as one
    /// engine holding them all would rank them. Those here are offered at
    /// once; those elsewhere are claimed first.
    pub fn gathered(&mut self, now: Timestamp, trip_id: TripId, answers: Vec<(Shard, Candidate)>) {
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return };
        if !std::mem::replace(&mut state.asking, false) {
            return;
        }
        if state.trip.status != TripStatus::Searching || !state.offers.is_empty() {
            return;
        }
        let (pickup, service, radius_m) = (state.trip.pickup, state.trip.service, state.radius_m);
        let tried = state.tried.clone();
        let policy = self.config.matching.of(service);
        let most = self.config.max_offers_per_trip.min(super::MAX_OFFERS_PER_TRIP);
        let want = policy.fanout().min(most.saturating_sub(tried.len()));
        drop(state);
        let pool = self.road_pool(self.candidate_pool(want));
        let here = self.shard();
        let mut all: Vec<(Shard, Candidate)> = self
            .nearest_offerable(pickup, service, radius_m, &tried, pool)
            .into_iter()
            .filter_map(|(key, distance_m)| Some((here, self.candidate(key, distance_m)?)))
            .chain(answers.into_iter().filter(|(_, c)| !tried.contains(&c.driver)))
            .collect();
        all.sort_by(|a, b| a.1.distance_m.total_cmp(&b.1.distance_m).then_with(|| a.1.driver.cmp(&b.1.driver)));
        all.dedup_by(|a, b| a.1.driver == b.1.driver);
        all.truncate(pool);
        self.stats.road_fallbacks += self.rank_gathered_by_road(pickup, &mut all);
        if self.config.accept_weight_m > 0.0 {
            let cost = |c: &Candidate| c.distance_m + self.config.accept_weight_m * c.miss_rate;
            all.sort_by(|a, b| cost(&a.1).total_cmp(&cost(&b.1)));
        }
        all.truncate(want);
        // Forward dispatch, from this shard's drivers finishing rides.
        if want == 1
            && let Some((key, route_m)) = self.forward_candidate(pickup, service, radius_m, &tried)
            && let route_m = self.forward_cost(key, pickup, route_m)
            && self.within_eta(route_m)
            && all.first().is_none_or(|(_, best)| route_m < best.distance_m)
        {
            self.offer_to(now, trip_id, key, route_m);
            return;
        }
        if all.is_empty() {
            self.no_candidate_now(now, trip_id, policy);
            return;
        }
        let mut local = Vec::new();
        let mut claims = 0;
        for (shard, candidate) in all {
            if shard == here {
                if let Some(key) = self.drivers.key_of(&candidate.driver) {
                    local.push((key, candidate.distance_m));
                }
            } else {
                claims += 1;
                self.post(ToShard::Claim { trip: trip_id, driver: candidate.driver, service, shard });
            }
        }
        if claims > 0
            && let Some(mut state) = self.trips.get_mut(&trip_id)
        {
            state.claims = claims;
        }
        if !local.is_empty() {
            self.offer_all(now, trip_id, local);
        }
    }

    /// The answer to a claim: the driver (who joins this engine and is
    /// offered the trip, if it still wants one) or a refusal (the trip
    /// looks again once its other claims are answered).
    /// Refused (and the driver not taken in) only if this engine already
    /// holds a driver of that id, as [`Engine::adopt`]; the trip goes on
    /// as after a refused claim.
    pub fn claimed(&mut self, now: Timestamp, trip_id: TripId, card: Option<DriverCard>) -> Result<(), EngineError> {
        let (adopted, refused) = match card.map(|card| self.adopt_card(card)) {
            Some(Ok(key)) => (Some(key), Ok(())),
            Some(Err(error)) => (None, Err(error)),
            None => (None, Ok(())),
        };
        let Some(mut state) = self.trips.get_mut(&trip_id) else { return refused };
        state.claims = state.claims.saturating_sub(1);
        let open = state.claims == 0;
        let searching = state.trip.status == TripStatus::Searching;
        let wants = self.config.matching.of(state.trip.service).fanout() > state.offers.len();
        let pickup = state.trip.pickup;
        drop(state);
        match adopted {
            Some(key) if searching && wants => {
                let distance_m = self.pickup_route_m(key, pickup);
                self.offer_to(now, trip_id, key, distance_m);
            }
            // The trip moved on: the driver is free here (and handed on
            // at the next tick if outside this shard).
            _ => {
                if open && searching {
                    self.try_match(now, trip_id);
                }
            }
        }
        refused
    }

    /// A trip nobody can take now: it waits for drivers (or its batch).
    /// One near a border cannot hear of drivers freed or moving in the
    /// other shards, so it looks again (a gather) at every retry of the
    /// waiting trips, which then come every `Config::rematch_interval_ms`
    /// while it waits, whether or not drivers here move.
    pub(super) fn no_candidate_now(&mut self, now: Timestamp, trip_id: TripId, policy: Matching) {
        match policy {
            Matching::Batch { window_ms } => self.hold_for_batch(now, trip_id, window_ms),
            Matching::Nearest | Matching::Broadcast { .. } => {
                self.queue.wait(trip_id);
                if self.trips.get(&trip_id).and_then(|t| t.borders.as_ref()).is_some_and(|b| !b.is_empty()) {
                    self.queue.moved();
                }
            }
        }
    }

    /// How many nearest drivers a ranking of `want` looks at: `want`, or
    /// [`CANDIDATES`] with acceptance-aware ranking on.
    pub(super) fn candidate_pool(&self, want: usize) -> usize {
        if self.config.accept_weight_m > 0.0 { want.max(CANDIDATES) } else { want }
    }
}
