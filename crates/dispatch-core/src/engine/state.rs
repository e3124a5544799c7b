//! The engine's private records.

use std::collections::HashSet;

use crate::geo::LatLng;
use crate::ids::{DriverId, FleetId, OfferId, RequestId, RiderId, SessionId, TripId};
use crate::index::DriverKey;
use crate::service::{ServiceSet, ServiceType};
use crate::time::Timestamp;
use crate::trip::{Trip, TripStatus};

/// One driver the engine knows: connected now, or on a trip.
#[derive(Debug)]
pub(super) struct Driver {
    pub id: DriverId,
    /// The live session that speaks for the driver; `None` after it ended
    /// while the driver still had a trip.
    pub session: Option<SessionId>,
    pub position: Option<LatLng>,
    /// The device time of the last applied fix.
    pub last_fix: Option<Timestamp>,
    pub services: ServiceSet,
    pub available: bool,
    pub auto_accept: bool,
    pub offer: Option<OfferId>,
    pub trip: Option<TripId>,
    /// Forward dispatch: the ride queued behind `trip`, which is in
    /// progress; it becomes `trip` when that one ends.
    pub next: Option<TripId>,
    /// Set while the session is gone and a trip is held for the driver's
    /// return: when the hold ends. Tells the current grace timer from one
    /// left over from an earlier drop.
    pub grace_until: Option<Timestamp>,
    /// The fleet that registered the driver, if one did. Kept while the
    /// driver is detached, so only that fleet (or the driver's own app)
    /// may take it back.
    pub fleet: Option<FleetId>,
    /// How the driver answered its last offers.
    pub answers: Answers,
    /// When the riders of `trip` were last sent the driver's position. On
    /// the driver's row, which a ping reads anyway, so a ping with no
    /// update due does not look the trip up.
    pub last_position_push: Timestamp,
}

/// A driver's last [`Answers::KEPT`] answers to offers, for acceptance-aware
/// ranking: which were missed (declined, or left to lapse). A new driver
/// has none and ranks by distance alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answers {
    /// Bit `i` set: the `i`th most recent answer was a miss.
    missed: u32,
    /// How many answers are kept (at most `KEPT`).
    kept: u8,
}

impl Answers {
    /// Answers remembered.
    pub const KEPT: u8 = 20;

    /// Notes an answer: `missed` if declined or left to lapse.
    pub fn note(&mut self, missed: bool) {
        let mask = (1u32 << Self::KEPT) - 1;
        self.missed = ((self.missed << 1) | u32::from(missed)) & mask;
        self.kept = (self.kept + 1).min(Self::KEPT);
    }

    /// The share of the kept answers that were misses (0 with none).
    pub fn miss_rate(&self) -> f64 {
        if self.kept == 0 { 0.0 } else { f64::from(self.missed.count_ones()) / f64::from(self.kept) }
    }
}

impl Driver {
    pub fn new(id: DriverId, session: SessionId) -> Self {
        Self {
            id,
            session: Some(session),
            position: None,
            last_fix: None,
            services: ServiceSet::taxi(),
            available: false,
            auto_accept: false,
            offer: None,
            trip: None,
            next: None,
            grace_until: None,
            fleet: None,
            answers: Answers::default(),
            last_position_push: Timestamp(0),
        }
    }

    /// A driver known only from a recovered trip: no session until the app
    /// reconnects.
    pub fn detached(id: DriverId, trip: TripId, position: Option<LatLng>, fleet: Option<FleetId>) -> Self {
        Self { session: None, position, trip: Some(trip), fleet, ..Self::new(id, SessionId(0)) }
    }

    /// No offer out and no trip.
    pub fn is_idle(&self) -> bool {
        self.offer.is_none() && self.trip.is_none()
    }

    /// Could be offered a ride of some kind right now.
    pub fn is_offerable(&self) -> bool {
        self.session.is_some() && self.available && self.position.is_some() && self.is_idle()
    }
}

/// One open stream. The fleet variant is boxed so that the far more
/// numerous driver sessions stay 16 bytes.
#[derive(Debug)]
pub(super) enum Session {
    /// A driver's own app.
    Driver(DriverKey),
    /// A partner gateway and the drivers it registered.
    Fleet(Box<FleetSession>),
}

#[derive(Debug)]
pub(super) struct FleetSession {
    pub fleet: FleetId,
    pub drivers: HashSet<DriverKey>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct OpenOffer {
    pub trip: TripId,
    pub driver: DriverKey,
}

/// A trip plus what the engine needs to match it.
#[derive(Debug)]
pub(super) struct TripState {
    pub trip: Trip,
    pub radius_m: f64,
    /// Drivers offered this trip already (declined, let it lapse, lost their
    /// session, or cancelled it): never offered it again.
    pub tried: HashSet<DriverId>,
    /// The offers out: at most one, or up to `k` under `broadcast:k`.
    pub offers: Vec<OfferId>,
    /// When the current search ends without a driver.
    pub search_deadline: Timestamp,
    /// Whether an offer (or assignment) was ever made.
    pub offered_once: bool,
    /// With geo-shards: the other shards the pickup radius reaches, once
    /// reckoned (empty: none, the trip is matched here alone).
    pub borders: Option<Box<[crate::territory::Shard]>>,
    /// A gather is out for the trip: it is not matched until it answers.
    pub asking: bool,
    /// The trip asked another shard for drivers before its first offer.
    pub asked_across: bool,
    /// Claims out for the trip's drivers in other shards.
    pub claims: u32,
    /// When the pickup ETA was last reckoned (at assignment, then at most
    /// every `Config::eta_refresh_ms` as the car comes).
    pub eta_at: Timestamp,
}

/// An ended trip as kept for its retention (a day by default): the facts
/// of its [`Trip`] without what only an open trip has (no search state,
/// no driver position, never queued), packed: 104 bytes and one string
/// (rider id, request id and cancel reason end to end) against the 304
/// bytes, two shared ids and the set of drivers tried of an open trip's
/// row. A record day ends millions of trips, so this row is most of what
/// the engine holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EndedTrip {
    /// The rider id, the request id, then the cancel reason, if any.
    text: Box<str>,
    driver: Option<DriverId>,
    pickup: LatLng,
    /// The pickup again when there was no dropoff (see `has`).
    dropoff: LatLng,
    pickup_distance_m: f64,
    pickup_eta_ms: i64,
    requested_at: Timestamp,
    pub updated_at: Timestamp,
    pub status: TripStatus,
    service: ServiceType,
    /// Which of the optional fields are set: [`EndedTrip::DROPOFF`] and
    /// the others.
    has: u8,
    /// Bytes of `text` that are the rider id (ids are at most 128 bytes).
    rider_len: u8,
    /// Bytes of `text` after it that are the request id.
    request_len: u8,
}

impl EndedTrip {
    const DROPOFF: u8 = 1;
    const DISTANCE: u8 = 2;
    const ETA: u8 = 4;
    const REASON: u8 = 8;

    /// Packs an ended trip. What an ended trip never shows (the driver's
    /// position, `queued`) is not kept.
    pub fn pack(trip: Trip) -> Self {
        debug_assert!(trip.status.is_terminal(), "{} is not over", trip.id);
        let flag = |set: bool, flag: u8| if set { flag } else { 0 };
        let has = flag(trip.dropoff.is_some(), Self::DROPOFF)
            | flag(trip.pickup_distance_m.is_some(), Self::DISTANCE)
            | flag(trip.pickup_eta_ms.is_some(), Self::ETA)
            | flag(trip.cancel_reason.is_some(), Self::REASON);
        let (rider, request) = (trip.rider.as_str(), trip.request_id.as_str());
        let reason = trip.cancel_reason.as_deref().unwrap_or("");
        let mut text = String::with_capacity(rider.len() + request.len() + reason.len());
        text.extend([rider, request, reason]);
        Self {
            text: text.into_boxed_str(),
            // Ids are checked to be at most `MAX_ID_BYTES` (128) long.
            rider_len: u8::try_from(rider.len()).unwrap_or(u8::MAX),
            request_len: u8::try_from(request.len()).unwrap_or(u8::MAX),
            driver: trip.driver,
            pickup: trip.pickup,
            dropoff: trip.dropoff.unwrap_or(trip.pickup),
            pickup_distance_m: trip.pickup_distance_m.unwrap_or(0.0),
            pickup_eta_ms: trip.pickup_eta_ms.unwrap_or(0),
            requested_at: trip.requested_at,
            updated_at: trip.updated_at,
            status: trip.status,
            service: trip.service,
            has,
        }
    }

    /// The rider id and the request id.
    pub fn key(&self) -> (&str, &str) {
        let (rider, request) = (usize::from(self.rider_len), usize::from(self.request_len));
        (self.text.get(..rider).unwrap_or(""), self.text.get(rider..rider + request).unwrap_or(""))
    }

    /// The trip as it ended.
    pub fn unpack(&self, id: TripId) -> Trip {
        let has = |flag: u8| self.has & flag != 0;
        let (rider, request) = self.key();
        let reason = self.text.get(rider.len() + request.len()..).unwrap_or("");
        Trip {
            id,
            rider: RiderId::already_checked(rider),
            request_id: RequestId::already_checked(request),
            driver: self.driver.clone(),
            status: self.status,
            service: self.service,
            pickup: self.pickup,
            dropoff: has(Self::DROPOFF).then_some(self.dropoff),
            driver_position: None,
            pickup_distance_m: has(Self::DISTANCE).then_some(self.pickup_distance_m),
            pickup_eta_ms: has(Self::ETA).then_some(self.pickup_eta_ms),
            requested_at: self.requested_at,
            updated_at: self.updated_at,
            cancel_reason: has(Self::REASON).then(|| reason.to_owned()),
            queued: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_trip_packs_to_104_bytes_and_unpacks_as_it_was() {
        assert_eq!(std::mem::size_of::<EndedTrip>(), 104);
        let at = |lat| LatLng::new(lat, 127.0).unwrap_or_else(|e| panic!("{e}"));
        let id = |s: &str| RiderId::new(s).unwrap_or_else(|e| panic!("{e}"));
        let full = Trip {
            id: TripId(7),
            rider: id("r"),
            request_id: RequestId::new("q").unwrap_or_else(|e| panic!("{e}")),
            driver: Some(DriverId::new("d").unwrap_or_else(|e| panic!("{e}"))),
            status: TripStatus::Completed,
            service: ServiceType::Premium,
            pickup: at(37.5),
            dropoff: Some(at(37.6)),
            driver_position: None,
            pickup_distance_m: Some(812.5),
            pickup_eta_ms: Some(132_000),
            requested_at: Timestamp(1_000),
            updated_at: Timestamp(9_000),
            cancel_reason: None,
            queued: false,
        };
        let bare = Trip {
            driver: None,
            status: TripStatus::Cancelled,
            dropoff: None,
            pickup_distance_m: None,
            pickup_eta_ms: None,
            cancel_reason: Some("changed my mind".into()),
            ..full.clone()
        };
        let longest = "x".repeat(crate::ids::MAX_ID_BYTES);
        let long = Trip {
            rider: id(&longest),
            request_id: RequestId::new(&longest).unwrap_or_else(|e| panic!("{e}")),
            cancel_reason: Some(String::new()),
            ..bare.clone()
        };
        for trip in [full, bare, long] {
            assert_eq!(EndedTrip::pack(trip.clone()).unpack(trip.id), trip);
        }
    }

    #[test]
    fn answers_keep_the_last_twenty() {
        let mut a = Answers::default();
        assert_eq!(a.miss_rate(), 0.0);
        a.note(true);
        assert_eq!(a.miss_rate(), 1.0);
        for _ in 0..19 {
            a.note(false);
        }
        assert_eq!(a.miss_rate(), 1.0 / 20.0);
        a.note(false);
        assert_eq!(a.miss_rate(), 0.0, "the miss fell out of the window");
        for _ in 0..100 {
            a.note(true);
        }
        assert_eq!(a.miss_rate(), 1.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    OfferExpiry(OfferId),
    SearchDeadline(TripId),
    /// A disconnected driver's hold on this trip runs out.
    DriverGrace(TripId),
}
