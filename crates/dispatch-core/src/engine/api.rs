//! The engine's API types: what goes into it (commands' arguments, its
//! configuration) and what comes out (answers, effects, stats, log
//! records). Plain data: the engine does no I/O.

use crate::geo::LatLng;
use crate::ids::{DriverId, OfferId, RequestId, RiderId, SessionId, TripId};
use crate::service::{ServiceSet, ServiceType};
use crate::time::Timestamp;
use crate::trip::Trip;

/// The rules' numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How long a driver has to answer an offer.
    pub offer_timeout_ms: i64,
    /// How long a trip searches without an accepted offer before it ends
    /// `NoDriverFound`.
    pub search_timeout_ms: i64,
    /// The pickup radius when a request does not give one.
    pub max_pickup_distance_m: f64,
    /// The least time between two driver-position updates to a rider.
    pub rider_position_interval_ms: i64,
    /// How long an ended trip stays readable (and its request id remembered).
    pub trip_retention_ms: i64,
    /// The least time between two retries of waiting trips caused only by
    /// drivers moving (freed drivers retry at once).
    pub rematch_interval_ms: i64,
    /// How far a driver may move before its entry in the spatial index is
    /// moved too (searches stay exact; see [`crate::index`]).
    pub index_slack_m: f64,
    /// How long a driver whose session dropped keeps a trip not yet in
    /// progress before it goes back to searching for someone else.
    pub driver_grace_ms: i64,
    /// How many drivers a trip is offered to (declined, lapsed, or given
    /// back) before it ends `NoDriverFound`. At most [`MAX_OFFERS_PER_TRIP`],
    /// so every trip record fits the trip log's frame limit.
    pub max_offers_per_trip: usize,
    /// Drivers the engine knows at once (connected, or holding a trip); a
    /// new driver past this is refused.
    pub max_drivers: usize,
    /// Drivers one fleet may speak for at once.
    pub max_drivers_per_fleet: usize,
    /// How rides are matched, per service type.
    pub matching: super::Policies,
    /// In a batch: leaving a request unmatched costs as much as a pickup
    /// this many metres long...
    pub batch_unmatched_m: f64,
    /// ...plus this many metres for every second it has waited.
    pub batch_unmatched_per_s_m: f64,
    /// Acceptance-aware ranking: a driver who missed (declined or let
    /// lapse) every one of their recent offers ranks like one this many
    /// metres farther; one who missed half, half as much. 0 ranks by
    /// distance alone.
    pub accept_weight_m: f64,
    /// Forward dispatch: a driver whose ride in progress ends within this
    /// many metres of a new pickup may be offered that ride next, when the
    /// rest of the ride plus the drive from its dropoff is shorter than
    /// every free driver's pickup. 0 turns it off.
    pub forward_dispatch_m: f64,
    /// The speed, over the straight line, at which a pickup's estimated
    /// time is reckoned from its distance (city driving with its detours).
    pub eta_speed_kmh: f64,
    /// With a road network (see [`crate::Engine::set_roads`]): how many of
    /// the great-circle nearest offerable drivers are ranked by their drive
    /// to the pickup. The fastest driver by road is found when it is among
    /// them.
    pub road_candidates: usize,
    /// The pickup radius as time: no driver whose drive to the pickup
    /// takes longer is offered the ride (by road with a road network, else
    /// the straight line at `eta_speed_kmh`), whatever the radius in
    /// metres. 0 turns it off.
    pub max_pickup_eta_ms: i64,
    /// How often, at most, an assigned trip's pickup ETA is reckoned again
    /// from where the car is as it comes (by road with a road network),
    /// and shown to its riders with the car's position. 0 keeps the ETA of
    /// the assignment.
    pub eta_refresh_ms: i64,
}

/// The most drivers a trip may be offered to, whatever the configuration:
/// a trip record carries every one of their ids, and at this many ids of
/// [`crate::ids::MAX_ID_BYTES`] the record is still well under the trip
/// log's 1 MiB frame limit (a property test in `dispatch-store` holds the
/// two together).
pub const MAX_OFFERS_PER_TRIP: usize = 5_000;

/// The longest cancel reason a trip keeps, in bytes; a longer one is cut at
/// a character boundary (the gRPC edge refuses longer ones outright).
pub const MAX_REASON_BYTES: usize = 512;

impl Default for Config {
    fn default() -> Self {
        Self {
            offer_timeout_ms: 10_000,
            search_timeout_ms: 60_000,
            max_pickup_distance_m: 5_000.0,
            rider_position_interval_ms: 1_000,
            trip_retention_ms: 24 * 3_600_000,
            rematch_interval_ms: 200,
            index_slack_m: crate::index::DEFAULT_SLACK_M,
            driver_grace_ms: 30_000,
            max_offers_per_trip: 300,
            max_drivers: 2_000_000,
            max_drivers_per_fleet: 100_000,
            matching: super::Policies::default(),
            batch_unmatched_m: 2_000.0,
            batch_unmatched_per_s_m: 100.0,
            accept_weight_m: 0.0,
            forward_dispatch_m: 0.0,
            eta_speed_kmh: 22.0,
            road_candidates: 16,
            max_pickup_eta_ms: 0,
            eta_refresh_ms: 10_000,
        }
    }
}

impl Config {
    /// The estimated milliseconds to drive `metres` (straight line) at
    /// `eta_speed_kmh`.
    pub fn eta_ms(&self, metres: f64) -> i64 {
        let mps = self.eta_speed_kmh.max(1.0) / 3.6;
        (metres.max(0.0) / mps * 1_000.0).round().min(i64::MAX as f64) as i64
    }
}

/// The first message of a driver's own session.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverHello {
    /// Who.
    pub driver: DriverId,
    /// What the driver serves; empty means taxi.
    pub services: ServiceSet,
    /// A first fix, if the app has one.
    pub position: Option<LatLng>,
    /// Ready for offers from the start.
    pub available: bool,
    /// Assign rides without an offer round trip.
    pub auto_accept: bool,
}

/// A driver's position report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ping {
    /// Where.
    pub position: LatLng,
    /// The device's time of the fix, if it sent one: a fix older than the
    /// last one applied is dropped, so reordered pings never move a driver
    /// back.
    pub timestamp: Option<Timestamp>,
}

/// One entry of a fleet's batch.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDriverUpdate {
    /// Which of the fleet's drivers.
    pub driver: DriverId,
    /// Where, if the gateway knows.
    pub position: Option<Ping>,
    /// What the driver serves; `None` leaves it as it was (taxi when new).
    pub services: Option<ServiceSet>,
    /// Ready for offers; `None` leaves it as it was (not available when new).
    pub available: Option<bool>,
    /// Assign rides without an offer round trip.
    pub auto_accept: bool,
}

/// A rider's request.
#[derive(Debug, Clone, PartialEq)]
pub struct RideRequest {
    /// Who.
    pub rider: RiderId,
    /// The rider's idempotency key.
    pub request_id: RequestId,
    /// Where.
    pub pickup: LatLng,
    /// To where, if known.
    pub dropoff: Option<LatLng>,
    /// What kind of ride.
    pub service: ServiceType,
    /// How far a driver may be; `None` takes the configured default.
    pub max_pickup_distance_m: Option<f64>,
}

/// An operator's question: who is near here?
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyQuery {
    /// Around where.
    pub center: LatLng,
    /// At most this many.
    pub limit: usize,
    /// Within this many metres; `None` is anywhere.
    pub radius_m: Option<f64>,
    /// Only drivers serving at least one of these; empty: any service.
    pub services: ServiceSet,
    /// Only drivers who could be offered a ride right now.
    pub available_only: bool,
}

/// The most index entries one [`NearbyQuery`] examines, so that no query
/// walks the whole tree while the engine waits (e.g. available drivers
/// anywhere while almost none is).
pub const NEARBY_MAX_EXAMINED: usize = 10_000;

/// The answer to a [`NearbyQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct Nearby {
    /// The drivers, nearest first.
    pub drivers: Vec<NearbyDriver>,
    /// The answer is exact within this many metres of the centre: the
    /// radius asked for (or the whole Earth), or less when the search
    /// examined [`NEARBY_MAX_EXAMINED`] drivers first.
    pub exact_within_m: f64,
}

/// One driver in a [`Nearby`] answer.
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyDriver {
    /// Who.
    pub driver: DriverId,
    /// Where.
    pub position: LatLng,
    /// Great-circle metres from the query's centre.
    pub distance_m: f64,
    /// Whether the driver could be offered a ride now: connected, available,
    /// no offer out and no trip.
    pub available: bool,
}

/// An offer of a trip to a driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Its id.
    pub id: OfferId,
    /// To whom.
    pub driver: DriverId,
    /// The trip offered.
    pub trip: Trip,
    /// When it lapses.
    pub expires_at: Timestamp,
}

/// Why an offer stopped being open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawReason {
    /// The driver said no.
    Declined,
    /// The driver did not answer in time.
    Expired,
    /// The rider cancelled the trip.
    RiderCancelled,
    /// The trip's search timed out.
    SearchTimedOut,
    /// Another driver of the same broadcast accepted first.
    Taken,
}

impl WithdrawReason {
    /// The words sent to the driver.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declined => "declined",
            Self::Expired => "expired",
            Self::RiderCancelled => "rider cancelled",
            Self::SearchTimedOut => "search timed out",
            Self::Taken => "taken",
        }
    }
}

/// Something for a driver (and so for the session that speaks for it).
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEvent {
    /// A trip offered.
    Offer(Offer),
    /// An offer that is no longer open.
    OfferWithdrawn {
        /// Which.
        offer: OfferId,
        /// To whom it was.
        driver: DriverId,
        /// Why.
        reason: WithdrawReason,
    },
    /// The driver's current trip, at every change. A driver who cancels
    /// before the pickup sees it `Cancelled` (it is over for them) while the
    /// rider sees it `Searching` again.
    Trip(Trip),
}

/// Why the engine ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// A newer session took over the same driver or fleet.
    Replaced,
}

/// What the trip log keeps of a trip: enough to rebuild it on restart with
/// [`crate::Engine::restore`].
#[derive(Debug, Clone, PartialEq)]
pub struct TripRecord {
    /// The trip as riders see it.
    pub trip: Trip,
    /// Its pickup radius.
    pub radius_m: f64,
    /// Drivers it must not be offered to again (as of this record).
    pub tried: Vec<DriverId>,
    /// When its current search ends, if it is searching.
    pub search_deadline: Timestamp,
    /// The fleet that speaks for the trip's driver, if one does: after a
    /// restart only that fleet may take the driver back.
    pub driver_fleet: Option<crate::ids::FleetId>,
}

/// One record of the trip log.
// Most records are whole trips; boxing them would cost an allocation per
// change for the sake of the rarer, smaller variant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    /// A trip's whole state after a change of status (or a restart).
    Trip(TripRecord),
    /// A driver joined those never offered `trip` again (declined, let the
    /// offer lapse, lost the session). Logged alone, not as the whole trip
    /// again, so a trip offered to n drivers costs O(n) bytes, not O(n²).
    Tried {
        /// The trip.
        trip: TripId,
        /// The driver.
        driver: DriverId,
    },
    /// An ended trip passed its retention: the engine no longer keeps it,
    /// so the log need not either (its compaction leaves the trip out).
    Forget(TripId),
}

impl LogRecord {
    /// Adds this record to `latest`, the latest state of every trip so
    /// far (see [`LogRecord::fold`]).
    pub fn fold_into(self, latest: &mut std::collections::HashMap<TripId, TripRecord>) {
        match self {
            LogRecord::Trip(trip) => {
                latest.insert(trip.trip.id, trip);
            }
            LogRecord::Tried { trip, driver } => {
                // A driver is offered a trip once, so never twice here.
                if let Some(record) = latest.get_mut(&trip) {
                    record.tried.push(driver);
                }
            }
            LogRecord::Forget(trip) => {
                latest.remove(&trip);
            }
        }
    }

    /// Folds records, oldest first, into the latest state of every trip:
    /// what a replay of the log gives [`crate::Engine::restore`]. A
    /// [`LogRecord::Tried`] for a trip with no whole record before it is
    /// dropped (nothing to add it to).
    pub fn fold(records: impl IntoIterator<Item = LogRecord>) -> Vec<TripRecord> {
        let mut latest: std::collections::HashMap<TripId, TripRecord> = std::collections::HashMap::new();
        for record in records {
            record.fold_into(&mut latest);
        }
        let mut records: Vec<TripRecord> = latest.into_values().collect();
        records.sort_by_key(|r| r.trip.id);
        records
    }
}

/// Something the caller must carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Append this to the trip log. Everything after it in the same drain
    /// (the rider's update, the driver's event, the caller's reply) must
    /// wait until it is durable.
    Persist(LogRecord),
    /// Send `event` down `session`.
    Driver {
        /// The session that speaks for the driver.
        session: SessionId,
        /// What to send.
        event: DriverEvent,
    },
    /// Send the trip to everyone following it (the rider's streams), after
    /// a change of status (which comes after its [`Effect::Persist`]).
    Rider(Trip),
    /// The driver of a trip moved: everyone following it sees the new
    /// position. Soft state, with no [`Effect::Persist`]; it names the trip
    /// rather than carrying all of it, since it comes with nearly every
    /// ping of a driver on a trip.
    DriverMoved {
        /// Which trip.
        trip: TripId,
        /// Where its driver is.
        position: LatLng,
        /// When (the trip's `updated_at` from now on).
        at: Timestamp,
        /// The pickup ETA reckoned again from there, in milliseconds, when
        /// one was due (see `Config::eta_refresh_ms`).
        pickup_eta_ms: Option<i64>,
    },
    /// A trip got its first offer (or, with auto-accept, its driver): the
    /// caller measures request-to-offer latency from here. `across`, with
    /// geo-shards: whether the trip asked another shard for drivers first
    /// (`None` for an engine holding the whole map).
    FirstOffer {
        /// Which trip.
        trip: crate::ids::TripId,
        /// Whether it asked across a border.
        across: Option<bool>,
    },
    /// An ended trip passed its retention and was forgotten: `GetTrip`
    /// answers `NOT_FOUND` from now on.
    TripForgotten(crate::ids::TripId),
    /// End `session`; the engine has already forgotten it.
    EndSession {
        /// Which.
        session: SessionId,
        /// Why.
        reason: SessionEnd,
    },
}

/// A session that started: what [`crate::Engine::connect_driver`] and
/// [`crate::Engine::connect_fleet`] answer. The caller opens the session's
/// stream with it before anything the same call emitted for the session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStart {
    /// The driver it speaks for (a driver's own session).
    pub driver: Option<DriverId>,
    /// The fleet it speaks for (a fleet gateway's session).
    pub fleet: Option<crate::ids::FleetId>,
    /// A reconnecting driver's trip under way, if any.
    pub current_trip: Option<Trip>,
}

/// A ride request taken: what [`crate::Engine::request_ride`] answers. The
/// caller attaches the rider's stream with it before anything the same call
/// emitted for the trip.
#[derive(Debug, Clone, PartialEq)]
pub struct RideTaken {
    /// The trip, as it was when the request was taken: a new trip
    /// searching, or, for a retry, the trip the same rider's same request
    /// id already has, as it is now.
    pub trip: Trip,
    /// Whether the request made the trip (false for a retry).
    pub created: bool,
}

/// Writes out [`Stats`] and the sums the tables keep their counts with,
/// from one list of fields.
macro_rules! stats {
    ($(#[doc = $doc:literal])* pub struct Stats { $($(#[doc = $fdoc:literal])* pub $field:ident: u64,)* }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct Stats {
            $($(#[doc = $fdoc])* pub $field: u64,)*
        }

        impl Stats {
            /// Adds `other`'s counts to these.
            pub fn add(&mut self, other: Stats) {
                $(self.$field = self.$field.wrapping_add(other.$field);)*
            }

            /// Takes `other`'s counts from these.
            pub(crate) fn sub(&mut self, other: Stats) {
                $(self.$field = self.$field.wrapping_sub(other.$field);)*
            }
        }
    };
}

stats! {
/// Live counts and running totals. The tables keep the live counts as
/// their rows change (each row counts as a `Stats` with ones where it
/// belongs); the engine keeps the totals.
pub struct Stats {
    /// Drivers with a live session.
    pub drivers_connected: u64,
    /// Connected drivers who could take an offer now.
    pub drivers_available: u64,
    /// Drivers with a trip.
    pub drivers_on_trip: u64,
    /// Drivers with an offer out.
    pub drivers_offered: u64,
    /// Connected drivers with no offer and no trip who cannot take one now
    /// (off duty, or no position yet).
    pub drivers_unavailable: u64,
    /// Trips searching now.
    pub trips_searching: u64,
    /// Trips with a driver now.
    pub trips_active: u64,
    /// Trips whose driver is on the way.
    pub trips_assigned: u64,
    /// Trips whose driver is at the pickup.
    pub trips_arrived: u64,
    /// Trips with the rider on board.
    pub trips_in_progress: u64,
    /// Trips completed, in total.
    pub trips_completed: u64,
    /// Trips cancelled, in total.
    pub trips_cancelled: u64,
    /// Trips that found no driver, in total.
    pub trips_no_driver: u64,
    /// Offers sent (auto-accept assignments included), in total.
    pub offers_sent: u64,
    /// Offers accepted (auto-accept assignments included), in total.
    pub offers_accepted: u64,
    /// Offers declined (or lost with their driver's session), in total.
    pub offers_declined: u64,
    /// Offers that timed out, in total.
    pub offers_expired: u64,
    /// Offers taken back because the trip ended (cancelled, or its search
    /// timed out) while they were out, in total.
    pub offers_withdrawn: u64,
    /// Position reports applied, in total.
    pub location_updates: u64,
    /// With a road network: candidates ranked by the straight line because
    /// no drive to the pickup was to be had (off the roads, or no route),
    /// in total.
    pub road_fallbacks: u64,
    /// Pickup ETAs reckoned again as cars came (`Config::eta_refresh_ms`),
    /// in total.
    pub eta_refreshes: u64,
    /// Ride requests that made a trip (a retry with the same request id
    /// excluded), in total.
    pub ride_requests: u64,
    /// Open driver app sessions.
    pub driver_sessions: u64,
    /// Open fleet gateway sessions.
    pub fleet_sessions: u64,
}
}
