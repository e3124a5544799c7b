//! Conversions between `dispatch.v1` messages and core types.
//!
//! Inbound, every field a client controls is checked here, once: ids are 1
//! to 128 bytes, coordinates finite and in range, enums known, distances
//! finite and not negative. A failure is an [`InvalidInput`] naming the
//! field; nothing a client sends can panic. Outbound conversions cannot fail.

use dispatch_core::engine::{
    DriverEvent, DriverHello, FleetDriverUpdate, Nearby, NearbyDriver, NearbyQuery, Offer, Ping, RideRequest, Stats,
    WithdrawReason,
};
use dispatch_core::geo::{LatLng, checked_radius};
use dispatch_core::ids::{DriverId, FleetId, OfferId, RequestId, RiderId, TripId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};

use crate::pb;

/// The most drivers one `NearbyDrivers` call may ask for.
pub const MAX_NEARBY_LIMIT: u32 = 1_000;
/// What `NearbyDrivers` answers when the limit is 0.
pub const DEFAULT_NEARBY_LIMIT: u32 = 10;

/// A client's message that cannot be taken as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidInput {
    /// A field is missing, malformed or out of range.
    #[error("{field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed id of something this server never made (so it is
    /// unknown, like any id not found).
    #[error("{field} {id:?} not found")]
    UnknownId {
        /// Which field.
        field: &'static str,
        /// The id given.
        id: String,
    },
}

fn bad(field: &'static str, reason: impl ToString) -> InvalidInput {
    InvalidInput::Field { field, reason: reason.to_string() }
}

/// A required point.
pub fn lat_lng(field: &'static str, point: Option<&pb::LatLng>) -> Result<LatLng, InvalidInput> {
    let point = point.ok_or_else(|| bad(field, "is required"))?;
    LatLng::new(point.lat, point.lng).map_err(|e| bad(field, e))
}

fn optional_lat_lng(field: &'static str, point: Option<&pb::LatLng>) -> Result<Option<LatLng>, InvalidInput> {
    point.map(|p| lat_lng(field, Some(p))).transpose()
}

/// A driver id.
pub fn driver_id(id: &str) -> Result<DriverId, InvalidInput> {
    DriverId::new(id).map_err(|e| bad("driver_id", e))
}

/// A rider id.
pub fn rider_id(id: &str) -> Result<RiderId, InvalidInput> {
    RiderId::new(id).map_err(|e| bad("rider_id", e))
}

/// A fleet id.
pub fn fleet_id(id: &str) -> Result<FleetId, InvalidInput> {
    FleetId::new(id).map_err(|e| bad("fleet_id", e))
}

/// An offer id as the server minted it (`o-N`).
pub fn offer_id(id: &str) -> Result<OfferId, InvalidInput> {
    minted(id, "offer_id")
}

/// A trip id as the server minted it (`t-N`); any other text names no trip.
pub fn trip_id(id: &str) -> Result<TripId, InvalidInput> {
    minted(id, "trip_id")
}

fn minted<T: std::str::FromStr>(id: &str, field: &'static str) -> Result<T, InvalidInput> {
    if id.is_empty() {
        return Err(bad(field, "is required"));
    }
    if id.len() > dispatch_core::ids::MAX_ID_BYTES {
        return Err(bad(field, "is longer than 128 bytes"));
    }
    id.parse().map_err(|_| InvalidInput::UnknownId { field, id: id.to_owned() })
}

/// A service type; `UNSPECIFIED` is taxi.
pub fn service_type(field: &'static str, value: i32) -> Result<ServiceType, InvalidInput> {
    match pb::ServiceType::try_from(value) {
        Ok(pb::ServiceType::Unspecified | pb::ServiceType::Taxi) => Ok(ServiceType::Taxi),
        Ok(pb::ServiceType::Premium) => Ok(ServiceType::Premium),
        Ok(pb::ServiceType::Van) => Ok(ServiceType::Van),
        Ok(pb::ServiceType::DesignatedDriver) => Ok(ServiceType::DesignatedDriver),
        Err(_) => Err(bad(field, format!("unknown service type {value}"))),
    }
}

fn service_set(values: &[i32]) -> Result<ServiceSet, InvalidInput> {
    values.iter().map(|&v| service_type("service_types", v)).collect()
}

/// A trip status a client reports.
pub fn trip_status(value: i32) -> Result<TripStatus, InvalidInput> {
    match pb::TripStatus::try_from(value) {
        Ok(pb::TripStatus::Searching) => Ok(TripStatus::Searching),
        Ok(pb::TripStatus::DriverAssigned) => Ok(TripStatus::DriverAssigned),
        Ok(pb::TripStatus::DriverArrived) => Ok(TripStatus::DriverArrived),
        Ok(pb::TripStatus::InProgress) => Ok(TripStatus::InProgress),
        Ok(pb::TripStatus::Completed) => Ok(TripStatus::Completed),
        Ok(pb::TripStatus::Cancelled) => Ok(TripStatus::Cancelled),
        Ok(pb::TripStatus::NoDriverFound) => Ok(TripStatus::NoDriverFound),
        Ok(pb::TripStatus::Unspecified) | Err(_) => Err(bad("status", format!("not a trip status: {value}"))),
    }
}

fn device_time(ms: i64) -> Result<Option<Timestamp>, InvalidInput> {
    match ms {
        0 => Ok(None),
        ms if ms > 0 => Ok(Some(Timestamp(ms))),
        _ => Err(bad("timestamp_ms", "must not be negative")),
    }
}

impl TryFrom<&pb::Hello> for DriverHello {
    type Error = InvalidInput;

    fn try_from(hello: &pb::Hello) -> Result<Self, InvalidInput> {
        Ok(DriverHello {
            driver: driver_id(&hello.driver_id)?,
            services: service_set(&hello.service_types)?,
            position: optional_lat_lng("position", hello.position.as_ref())?,
            available: hello.available,
            auto_accept: hello.auto_accept,
        })
    }
}

impl TryFrom<&pb::LocationPing> for Ping {
    type Error = InvalidInput;

    fn try_from(ping: &pb::LocationPing) -> Result<Self, InvalidInput> {
        Ok(Ping { position: lat_lng("position", ping.position.as_ref())?, timestamp: device_time(ping.timestamp_ms)? })
    }
}

impl TryFrom<&pb::DriverUpdate> for FleetDriverUpdate {
    type Error = InvalidInput;

    fn try_from(update: &pb::DriverUpdate) -> Result<Self, InvalidInput> {
        let position = optional_lat_lng("position", update.position.as_ref())?;
        let timestamp = device_time(update.timestamp_ms)?;
        let services = service_set(&update.service_types)?;
        Ok(FleetDriverUpdate {
            driver: driver_id(&update.driver_id)?,
            position: position.map(|position| Ping { position, timestamp }),
            services: (!services.is_empty()).then_some(services),
            available: update.available,
            auto_accept: update.auto_accept,
        })
    }
}

impl TryFrom<&pb::RideRequest> for RideRequest {
    type Error = InvalidInput;

    fn try_from(request: &pb::RideRequest) -> Result<Self, InvalidInput> {
        let radius = checked_radius(request.max_pickup_distance_m).map_err(|e| bad("max_pickup_distance_m", e))?;
        Ok(RideRequest {
            rider: rider_id(&request.rider_id)?,
            request_id: RequestId::new(&request.request_id).map_err(|e| bad("request_id", e))?,
            pickup: lat_lng("pickup", request.pickup.as_ref())?,
            dropoff: optional_lat_lng("dropoff", request.dropoff.as_ref())?,
            service: service_type("service_type", request.service_type)?,
            max_pickup_distance_m: (radius > 0.0).then_some(radius),
        })
    }
}

impl TryFrom<&pb::NearbyRequest> for NearbyQuery {
    type Error = InvalidInput;

    fn try_from(request: &pb::NearbyRequest) -> Result<Self, InvalidInput> {
        if request.limit > MAX_NEARBY_LIMIT {
            return Err(bad("limit", format!("at most {MAX_NEARBY_LIMIT}")));
        }
        let limit = if request.limit == 0 { DEFAULT_NEARBY_LIMIT } else { request.limit };
        let radius = checked_radius(request.radius_m).map_err(|e| bad("radius_m", e))?;
        // `service_types` is the filter (empty: any); the deprecated
        // `service_type` reads UNSPECIFIED as any, as v1 first did.
        #[allow(deprecated)]
        let legacy = request.service_type;
        let services = match (legacy, request.service_types.is_empty()) {
            (0, _) => service_set(&request.service_types)?,
            (value, true) => ServiceSet::EMPTY.with(service_type("service_type", value)?),
            (_, false) => return Err(bad("service_type", "give service_types or service_type, not both")),
        };
        Ok(NearbyQuery {
            center: lat_lng("center", request.center.as_ref())?,
            limit: limit as usize,
            radius_m: (radius > 0.0).then_some(radius),
            services,
            available_only: request.available_only,
        })
    }
}

impl From<LatLng> for pb::LatLng {
    fn from(p: LatLng) -> Self {
        pb::LatLng { lat: p.lat(), lng: p.lng() }
    }
}

impl From<ServiceType> for pb::ServiceType {
    fn from(s: ServiceType) -> Self {
        match s {
            ServiceType::Taxi => pb::ServiceType::Taxi,
            ServiceType::Premium => pb::ServiceType::Premium,
            ServiceType::Van => pb::ServiceType::Van,
            ServiceType::DesignatedDriver => pb::ServiceType::DesignatedDriver,
        }
    }
}

impl From<TripStatus> for pb::TripStatus {
    fn from(s: TripStatus) -> Self {
        match s {
            TripStatus::Searching => pb::TripStatus::Searching,
            TripStatus::DriverAssigned => pb::TripStatus::DriverAssigned,
            TripStatus::DriverArrived => pb::TripStatus::DriverArrived,
            TripStatus::InProgress => pb::TripStatus::InProgress,
            TripStatus::Completed => pb::TripStatus::Completed,
            TripStatus::Cancelled => pb::TripStatus::Cancelled,
            TripStatus::NoDriverFound => pb::TripStatus::NoDriverFound,
        }
    }
}

impl From<&Trip> for pb::Trip {
    fn from(t: &Trip) -> Self {
        pb::Trip {
            trip_id: t.id.to_string(),
            rider_id: t.rider.to_string(),
            driver_id: t.driver.as_ref().map(ToString::to_string).unwrap_or_default(),
            status: pb::TripStatus::from(t.status).into(),
            service_type: pb::ServiceType::from(t.service).into(),
            pickup: Some(t.pickup.into()),
            dropoff: t.dropoff.map(Into::into),
            driver_position: t.driver_position.map(Into::into),
            pickup_distance_m: t.pickup_distance_m.unwrap_or_default(),
            requested_at_ms: t.requested_at.0,
            updated_at_ms: t.updated_at.0,
            cancel_reason: t.cancel_reason.clone().unwrap_or_default(),
            queued: t.queued,
            pickup_eta_s: t.pickup_eta_ms.map_or(0.0, |ms| ms as f64 / 1_000.0),
        }
    }
}

/// The first event of a driver's or a fleet's session: who it speaks for
/// (`driver` or `fleet`), the server's clock, and a driver's trip under way.
pub fn session_started(
    driver: Option<&DriverId>,
    fleet: Option<&FleetId>,
    now: Timestamp,
    current_trip: Option<&Trip>,
) -> pb::DriverEvent {
    let started = pb::SessionStarted {
        driver_id: driver.map(ToString::to_string).unwrap_or_default(),
        server_time_ms: now.0,
        current_trip: current_trip.map(Into::into),
        fleet_id: fleet.map(ToString::to_string).unwrap_or_default(),
    };
    pb::DriverEvent { kind: Some(pb::driver_event::Kind::SessionStarted(started)) }
}

impl From<&Offer> for pb::Offer {
    fn from(o: &Offer) -> Self {
        pb::Offer {
            offer_id: o.id.to_string(),
            driver_id: o.driver.to_string(),
            trip: Some((&o.trip).into()),
            expires_at_ms: o.expires_at.0,
        }
    }
}

impl From<WithdrawReason> for pb::WithdrawReason {
    fn from(reason: WithdrawReason) -> Self {
        match reason {
            WithdrawReason::Declined => Self::Declined,
            WithdrawReason::Expired => Self::Expired,
            WithdrawReason::RiderCancelled => Self::RiderCancelled,
            WithdrawReason::SearchTimedOut => Self::SearchTimedOut,
            WithdrawReason::Taken => Self::Taken,
        }
    }
}

impl From<&DriverEvent> for pb::DriverEvent {
    fn from(event: &DriverEvent) -> Self {
        use pb::driver_event::Kind;
        let kind = match event {
            DriverEvent::Offer(offer) => Kind::Offer(offer.into()),
            DriverEvent::OfferWithdrawn { offer, driver, reason } => Kind::OfferWithdrawn(pb::OfferWithdrawn {
                offer_id: offer.to_string(),
                driver_id: driver.to_string(),
                reason: reason.as_str().to_owned(),
                reason_code: pb::WithdrawReason::from(*reason).into(),
            }),
            DriverEvent::Trip(trip) => Kind::Trip(trip.into()),
        };
        pb::DriverEvent { kind: Some(kind) }
    }
}

impl From<&NearbyDriver> for pb::NearbyDriver {
    fn from(d: &NearbyDriver) -> Self {
        pb::NearbyDriver {
            driver_id: d.driver.to_string(),
            position: Some(d.position.into()),
            distance_m: d.distance_m,
            available: d.available,
        }
    }
}

impl From<&Nearby> for pb::NearbyResponse {
    fn from(n: &Nearby) -> Self {
        pb::NearbyResponse { drivers: n.drivers.iter().map(Into::into).collect(), exact_within_m: n.exact_within_m }
    }
}

impl From<&Stats> for pb::Stats {
    /// The engine's counts; latency percentiles and uptime are the server's
    /// to fill in.
    fn from(s: &Stats) -> Self {
        pb::Stats {
            drivers_connected: s.drivers_connected,
            drivers_available: s.drivers_available,
            drivers_on_trip: s.drivers_on_trip,
            trips_searching: s.trips_searching,
            trips_active: s.trips_active,
            trips_completed: s.trips_completed,
            trips_cancelled: s.trips_cancelled,
            trips_no_driver: s.trips_no_driver,
            offers_sent: s.offers_sent,
            offers_accepted: s.offers_accepted,
            offers_declined: s.offers_declined,
            offers_expired: s.offers_expired,
            location_updates: s.location_updates,
            road_fallbacks: s.road_fallbacks,
            eta_refreshes: s.eta_refreshes,
            match_latency_p50_us: 0,
            match_latency_p99_us: 0,
            uptime_s: 0,
            location_updates_shed: 0,
            match_stages: Vec::new(),
            drivers_offered: s.drivers_offered,
            drivers_unavailable: s.drivers_unavailable,
            trips_assigned: s.trips_assigned,
            trips_arrived: s.trips_arrived,
            trips_in_progress: s.trips_in_progress,
            offers_withdrawn: s.offers_withdrawn,
            driver_sessions: s.driver_sessions,
            fleet_sessions: s.fleet_sessions,
            rider_streams: 0,
            queue_urgent: 0,
            queue_locations: 0,
            last_minute: None,
            trip_watchers: 0,
            ride_requests: s.ride_requests,
            // The server fills in its shards.
            shards: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_points_and_ids_are_refused() {
        let nan = pb::LatLng { lat: f64::NAN, lng: 0.0 };
        assert!(lat_lng("pickup", Some(&nan)).is_err());
        assert!(lat_lng("pickup", None).is_err());
        assert!(driver_id("").is_err());
        assert!(matches!(trip_id("t-x"), Err(InvalidInput::UnknownId { .. })));
        assert!(matches!(trip_id(""), Err(InvalidInput::Field { .. })));
        assert!(service_type("service_type", 99).is_err());
        assert!(trip_status(0).is_err());
    }

    #[test]
    fn ride_request_defaults() {
        let request = pb::RideRequest {
            rider_id: "r1".into(),
            pickup: Some(pb::LatLng { lat: 37.5, lng: 127.0 }),
            request_id: "q1".into(),
            ..Default::default()
        };
        let converted = RideRequest::try_from(&request).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(converted.service, ServiceType::Taxi);
        assert_eq!(converted.max_pickup_distance_m, None);
        assert_eq!(converted.dropoff, None);
        let negative = pb::RideRequest { max_pickup_distance_m: -1.0, ..request };
        assert!(RideRequest::try_from(&negative).is_err());
    }
}
