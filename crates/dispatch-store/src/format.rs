//! The records, as protobuf messages (prost), and their conversion to and
//! from the engine's types. Field numbers are the format: never reuse one.

use dispatch_core::engine::TripRecord;
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, RequestId, RiderId, TripId};
use dispatch_core::service::ServiceType;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};

/// One record of `trips.log`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogEntry {
    /// Log sequence number: one more than the record before, across
    /// compactions, so a snapshot can say which records it covers.
    #[prost(uint64, tag = "1")]
    pub lsn: u64,
    /// What happened.
    #[prost(oneof = "Entry", tags = "2, 3, 4")]
    pub entry: Option<Entry>,
}

/// What a [`LogEntry`] records.
// Built and dropped one at a time while writing or reading; boxing the
// trip would cost an allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Entry {
    /// A trip's state after a change.
    #[prost(message, tag = "2")]
    Trip(StoredTrip),
    /// The server started; its offer ids are unique to this boot.
    #[prost(uint64, tag = "3")]
    Boot(u64),
    /// A driver joined those never offered a trip again: added to the
    /// trip's latest record on replay.
    #[prost(message, tag = "4")]
    Tried(TriedEntry),
}

/// A driver a trip must never be offered to again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TriedEntry {
    /// `t-N` as N.
    #[prost(uint64, tag = "1")]
    pub trip: u64,
    /// The driver.
    #[prost(string, tag = "2")]
    pub driver: String,
}

/// The field number of [`StoredTrip::tried`]: a stored trip followed by more
/// of these fields reads back as the trip with those drivers added.
pub const TRIED_FIELD: u32 = 16;

/// `driver` encoded as one more [`StoredTrip::tried`] entry, to append to a
/// stored trip's bytes.
pub fn encode_tried(driver: &str, out: &mut Vec<u8>) {
    prost::encoding::string::encode(TRIED_FIELD, &driver.to_owned(), out);
}

/// The first frame of `trips.snapshot`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// The last log record the snapshot includes.
    #[prost(uint64, tag = "1")]
    pub lsn: u64,
    /// The next trip id to mint.
    #[prost(uint64, tag = "2")]
    pub next_trip: u64,
    /// The boot count when it was written.
    #[prost(uint64, tag = "3")]
    pub boot: u64,
    /// How many trip frames follow.
    #[prost(uint64, tag = "4")]
    pub trips: u64,
}

/// A trip as the log keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredTrip {
    /// `t-N` as N.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The rider.
    #[prost(string, tag = "2")]
    pub rider_id: String,
    /// The rider's idempotency key.
    #[prost(string, tag = "3")]
    pub request_id: String,
    /// The driver, if one is or was assigned.
    #[prost(string, optional, tag = "4")]
    pub driver_id: Option<String>,
    /// 1 searching, 2 assigned, 3 arrived, 4 in progress, 5 completed,
    /// 6 cancelled, 7 no driver found.
    #[prost(uint32, tag = "5")]
    pub status: u32,
    /// 1 taxi, 2 premium, 3 van, 4 designated driver.
    #[prost(uint32, tag = "6")]
    pub service: u32,
    /// Pickup, degrees.
    #[prost(double, tag = "7")]
    pub pickup_lat: f64,
    /// Pickup, degrees.
    #[prost(double, tag = "8")]
    pub pickup_lng: f64,
    /// Dropoff, `[lat, lng]`, if given.
    #[prost(double, repeated, tag = "9")]
    pub dropoff: Vec<f64>,
    /// The driver's last position at the time of the record, `[lat, lng]`.
    #[prost(double, repeated, tag = "10")]
    pub driver_position: Vec<f64>,
    /// Metres from the driver to the pickup when assigned.
    #[prost(double, optional, tag = "11")]
    pub pickup_distance_m: Option<f64>,
    /// Unix ms.
    #[prost(int64, tag = "12")]
    pub requested_at_ms: i64,
    /// Unix ms.
    #[prost(int64, tag = "13")]
    pub updated_at_ms: i64,
    /// Why it was cancelled.
    #[prost(string, optional, tag = "14")]
    pub cancel_reason: Option<String>,
    /// The pickup radius, metres.
    #[prost(double, tag = "15")]
    pub radius_m: f64,
    /// Drivers never to offer it again.
    #[prost(string, repeated, tag = "16")]
    pub tried: Vec<String>,
    /// Unix ms when the current search ends.
    #[prost(int64, tag = "17")]
    pub search_deadline_ms: i64,
    /// The fleet that speaks for the driver, if one does.
    #[prost(string, optional, tag = "18")]
    pub driver_fleet: Option<String>,
    /// Queued behind the driver's current ride (forward dispatch).
    #[prost(bool, tag = "19")]
    pub queued: bool,
    /// The estimated time to the pickup when assigned, ms.
    #[prost(int64, optional, tag = "20")]
    pub pickup_eta_ms: Option<i64>,
}

/// A stored record the engine's types refuse (a bug or corruption that
/// slipped past the checksum).
#[derive(Debug, thiserror::Error)]
#[error("bad stored trip {id}: {what}")]
pub struct BadRecord {
    id: u64,
    what: String,
}

impl StoredTrip {
    /// Whether the trip had ended (completed, cancelled, no driver found).
    pub fn ended(&self) -> bool {
        [TripStatus::Completed, TripStatus::Cancelled, TripStatus::NoDriverFound]
            .iter()
            .any(|&s| status_code(s) == self.status)
    }
}

fn status_code(s: TripStatus) -> u32 {
    match s {
        TripStatus::Searching => 1,
        TripStatus::DriverAssigned => 2,
        TripStatus::DriverArrived => 3,
        TripStatus::InProgress => 4,
        TripStatus::Completed => 5,
        TripStatus::Cancelled => 6,
        TripStatus::NoDriverFound => 7,
    }
}

fn service_code(s: ServiceType) -> u32 {
    match s {
        ServiceType::Taxi => 1,
        ServiceType::Premium => 2,
        ServiceType::Van => 3,
        ServiceType::DesignatedDriver => 4,
    }
}

fn pair(p: Option<LatLng>) -> Vec<f64> {
    p.map_or_else(Vec::new, |p| vec![p.lat(), p.lng()])
}

impl From<&TripRecord> for StoredTrip {
    fn from(r: &TripRecord) -> Self {
        let t = &r.trip;
        Self {
            id: t.id.0,
            rider_id: t.rider.to_string(),
            request_id: t.request_id.to_string(),
            driver_id: t.driver.as_ref().map(|d| d.to_string()),
            status: status_code(t.status),
            service: service_code(t.service),
            pickup_lat: t.pickup.lat(),
            pickup_lng: t.pickup.lng(),
            dropoff: pair(t.dropoff),
            driver_position: pair(t.driver_position),
            pickup_distance_m: t.pickup_distance_m,
            requested_at_ms: t.requested_at.0,
            updated_at_ms: t.updated_at.0,
            cancel_reason: t.cancel_reason.clone(),
            radius_m: r.radius_m,
            tried: r.tried.iter().map(|d| d.to_string()).collect(),
            search_deadline_ms: r.search_deadline.0,
            driver_fleet: r.driver_fleet.as_ref().map(|f| f.to_string()),
            queued: t.queued,
            pickup_eta_ms: t.pickup_eta_ms,
        }
    }
}

impl TryFrom<StoredTrip> for TripRecord {
    type Error = BadRecord;

    fn try_from(s: StoredTrip) -> Result<Self, BadRecord> {
        let id = s.id;
        let bad = |what: String| BadRecord { id, what };
        let point = |lat, lng| LatLng::new(lat, lng).map_err(|e| bad(e.to_string()));
        let maybe_point = |v: &[f64]| match v {
            [] => Ok(None),
            [lat, lng] => point(*lat, *lng).map(Some),
            _ => Err(bad("a position needs two numbers".into())),
        };
        let status = match s.status {
            1 => TripStatus::Searching,
            2 => TripStatus::DriverAssigned,
            3 => TripStatus::DriverArrived,
            4 => TripStatus::InProgress,
            5 => TripStatus::Completed,
            6 => TripStatus::Cancelled,
            7 => TripStatus::NoDriverFound,
            n => return Err(bad(format!("unknown status {n}"))),
        };
        let service = match s.service {
            1 => ServiceType::Taxi,
            2 => ServiceType::Premium,
            3 => ServiceType::Van,
            4 => ServiceType::DesignatedDriver,
            n => return Err(bad(format!("unknown service {n}"))),
        };
        let driver = |d: &str| DriverId::new(d).map_err(|e| bad(e.to_string()));
        let trip = Trip {
            id: TripId(s.id),
            rider: RiderId::new(&s.rider_id).map_err(|e| bad(e.to_string()))?,
            request_id: RequestId::new(&s.request_id).map_err(|e| bad(e.to_string()))?,
            driver: s.driver_id.as_deref().map(driver).transpose()?,
            status,
            service,
            pickup: point(s.pickup_lat, s.pickup_lng)?,
            dropoff: maybe_point(&s.dropoff)?,
            driver_position: maybe_point(&s.driver_position)?,
            pickup_distance_m: s.pickup_distance_m,
            requested_at: Timestamp(s.requested_at_ms),
            updated_at: Timestamp(s.updated_at_ms),
            cancel_reason: s.cancel_reason,
            queued: s.queued,
            pickup_eta_ms: s.pickup_eta_ms,
        };
        Ok(TripRecord {
            trip,
            radius_m: s.radius_m,
            tried: s.tried.iter().map(|d| driver(d)).collect::<Result<_, _>>()?,
            search_deadline: Timestamp(s.search_deadline_ms),
            driver_fleet: s.driver_fleet.as_deref().map(FleetId::new).transpose().map_err(|e| bad(e.to_string()))?,
        })
    }
}
