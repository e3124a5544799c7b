//! The writer and the reader agree on one frame limit, and no record the
//! engine can make is over it: the largest ids, the longest cancel reason
//! and the most drivers a trip may be offered to, whole or logged one
//! decline at a time, all come back.

use dispatch_core::engine::{LogRecord, MAX_OFFERS_PER_TRIP, MAX_REASON_BYTES, TripRecord};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, MAX_ID_BYTES, RequestId, RiderId, TripId};
use dispatch_core::service::ServiceType;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_store::{Fsync, MAX_PAYLOAD, TripLog};
use proptest::prelude::*;

/// An id of exactly `bytes` bytes (some of them multi-byte characters),
/// distinct for each `n`.
fn id_of(bytes: usize, n: usize) -> String {
    let head = format!("{n}-");
    let mut id = head;
    while id.len() + 3 <= bytes {
        id.push('한');
    }
    while id.len() < bytes {
        id.push('x');
    }
    id
}

fn huge_record(id_bytes: usize, tried: usize) -> TripRecord {
    let point = |lat, lng| LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"));
    let mut reason = String::new();
    while reason.len() + 3 <= MAX_REASON_BYTES {
        reason.push('취');
    }
    TripRecord {
        trip: Trip {
            id: TripId(u64::MAX - 1),
            rider: RiderId::new(&id_of(id_bytes, 0)).unwrap_or_else(|e| panic!("{e}")),
            request_id: RequestId::new(&id_of(id_bytes, 1)).unwrap_or_else(|e| panic!("{e}")),
            driver: Some(DriverId::new(&id_of(id_bytes, 2)).unwrap_or_else(|e| panic!("{e}"))),
            status: TripStatus::Cancelled,
            service: ServiceType::DesignatedDriver,
            pickup: point(-89.999, 179.999),
            dropoff: Some(point(89.999, -179.999)),
            driver_position: Some(point(0.000_001, -0.000_001)),
            pickup_distance_m: Some(f64::MAX),
            requested_at: Timestamp(i64::MIN),
            updated_at: Timestamp(i64::MAX),
            cancel_reason: Some(reason),
            queued: true,
            pickup_eta_ms: Some(i64::MAX),
        },
        radius_m: f64::MAX,
        tried: (0..tried).map(|n| DriverId::new(&id_of(id_bytes, n + 10)).unwrap_or_else(|e| panic!("{e}"))).collect(),
        search_deadline: Timestamp(i64::MAX),
        driver_fleet: Some(FleetId::new(&id_of(id_bytes, 3)).unwrap_or_else(|e| panic!("{e}"))),
    }
}

/// Writes `record` whole with its first `whole` tried drivers, then the rest
/// one decline at a time; reads it back, compacts, reads it back again.
fn round_trip(record: &TripRecord, whole: usize) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    let mut first = record.clone();
    first.tried.truncate(whole);
    log.append(&LogRecord::Trip(first)).unwrap_or_else(|e| panic!("{e}"));
    for driver in &record.tried[whole..] {
        let tried = LogRecord::Tried { trip: record.trip.id, driver: driver.clone() };
        log.append(&tried).unwrap_or_else(|e| panic!("{e}"));
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (mut log, back) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.records, std::slice::from_ref(record));
    log.compact().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (_, back) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.snapshot_trips, 1, "the snapshot frame was refused");
    assert_eq!(back.records, std::slice::from_ref(record));
}

#[test]
fn the_largest_record_the_engine_can_make_fits_whole_and_one_decline_at_a_time() {
    let record = huge_record(MAX_ID_BYTES, MAX_OFFERS_PER_TRIP);
    round_trip(&record, MAX_OFFERS_PER_TRIP);
    round_trip(&record, 0);
    round_trip(&record, MAX_OFFERS_PER_TRIP / 2);
}

#[test]
fn a_record_over_the_limit_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    let small = huge_record(8, 1);
    log.append(&LogRecord::Trip(small.clone())).unwrap_or_else(|e| panic!("{e}"));
    let before = log.log_bytes();
    let over = huge_record(MAX_ID_BYTES, MAX_PAYLOAD / MAX_ID_BYTES + 1);
    assert!(log.append(&LogRecord::Trip(over)).is_err());
    assert_eq!(log.log_bytes(), before);
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (_, back) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.records, [small]);
    assert!(back.set_aside.is_empty() && back.cut.is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_record_within_the_engine_bounds_comes_back(
        id_bytes in 8..=MAX_ID_BYTES,
        tried in 0..=MAX_OFFERS_PER_TRIP,
        whole in any::<prop::sample::Index>(),
    ) {
        let record = huge_record(id_bytes, tried);
        round_trip(&record, whole.index(tried + 1));
    }
}
