//! The trip log's promises: what was committed comes back; a torn tail is
//! cut at the last whole record; any other damage is reported, the file
//! kept aside, and every good record before and after it read back (never
//! a refusal to start); compaction keeps every trip's latest state.

use std::fs::{self, OpenOptions};
use std::path::Path;

use dispatch_core::engine::{LogRecord, TripRecord};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, RequestId, RiderId, TripId};
use dispatch_core::service::ServiceType;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_store::{Fsync, Recovered, TripLog};
use proptest::prelude::*;

const STATUSES: [TripStatus; 5] = [
    TripStatus::Searching,
    TripStatus::DriverAssigned,
    TripStatus::DriverArrived,
    TripStatus::InProgress,
    TripStatus::Completed,
];

fn record(id: u64, status: TripStatus) -> TripRecord {
    let point = |lat, lng| LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"));
    let driver = DriverId::new(&format!("d{id}")).unwrap_or_else(|e| panic!("{e}"));
    TripRecord {
        trip: Trip {
            id: TripId(id),
            rider: RiderId::new(&format!("r{id}")).unwrap_or_else(|e| panic!("{e}")),
            request_id: RequestId::new("k").unwrap_or_else(|e| panic!("{e}")),
            driver: status.has_driver().then(|| driver.clone()),
            status,
            service: ServiceType::Premium,
            pickup: point(37.5, 127.0),
            dropoff: Some(point(37.6, 127.1)),
            driver_position: status.has_driver().then(|| point(37.51, 127.01)),
            pickup_distance_m: status.has_driver().then_some(812.5),
            requested_at: Timestamp(1_000),
            updated_at: Timestamp(2_000 + id as i64),
            cancel_reason: None,
            queued: false,
            pickup_eta_ms: status.has_driver().then_some(133_000),
        },
        radius_m: 3_000.0,
        tried: vec![DriverId::new("x").unwrap_or_else(|e| panic!("{e}"))],
        search_deadline: Timestamp(61_000),
        driver_fleet: status.has_driver().then(|| FleetId::new("fleet-a").unwrap_or_else(|e| panic!("{e}"))),
    }
}

fn open(dir: &Path) -> (TripLog, Recovered) {
    TripLog::open(dir, Fsync::Never, 1 << 30).unwrap_or_else(|e| panic!("{e}"))
}

/// The last record of each trip, by id.
fn latest(records: &[TripRecord]) -> Vec<TripRecord> {
    let mut by_id = std::collections::BTreeMap::new();
    for r in records {
        by_id.insert(r.trip.id, r.clone());
    }
    by_id.into_values().collect()
}

fn append(log: &mut TripLog, record: &TripRecord) {
    log.append(&LogRecord::Trip(record.clone())).unwrap_or_else(|e| panic!("{e}"));
}

fn write(dir: &Path, records: &[TripRecord]) {
    let (mut log, _) = open(dir);
    for r in records {
        append(&mut log, r);
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn committed_records_come_back_with_a_new_boot_and_the_next_trip_id() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records: Vec<TripRecord> = (1..=3).flat_map(|id| STATUSES.map(|s| record(id, s))).collect();
    write(dir.path(), &records);
    let (_, back) = open(dir.path());
    assert_eq!(back.records, latest(&records));
    assert_eq!(back.next_trip, 4);
    assert_eq!(back.boot, 2);
    assert_eq!(back.cut, None);
    let (_, again) = open(dir.path());
    assert_eq!(again.boot, 3);
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_record_at_every_byte() {
    torn_at_every_byte(false);
}

#[test]
fn a_write_torn_into_a_pre_zeroed_log_is_cut_at_the_last_whole_record_at_every_byte() {
    torn_at_every_byte(true);
}

/// Every length that tears a second write (a boot record, then a fourth
/// trip) after three trips gives back the first three, sets nothing aside,
/// and reports the cut unless it fell exactly between the two records; the
/// log goes on from the cut and reads back whole. With `pre_zeroed`, the
/// writes went into a pre-zeroed file: zeros follow what the crash left.
fn torn_at_every_byte(pre_zeroed: bool) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records: Vec<TripRecord> = (1..=4).map(|id| record(id, TripStatus::DriverAssigned)).collect();
    write(dir.path(), &records[..3]);
    let path = dir.path().join("trips.log");
    let before_last = fs::metadata(&path).map(|m| m.len()).unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), &records[3..]);
    let full = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut unreported = 0;
    for len in before_last as usize + 1..full.len() {
        let torn = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = full[..len].to_vec();
        if pre_zeroed {
            bytes.resize(full.len() + 64 * 1024, 0);
        }
        fs::write(torn.path().join("trips.log"), &bytes).unwrap_or_else(|e| panic!("{e}"));
        let (mut log, back) = open(torn.path());
        let ids: Vec<u64> = back.records.iter().map(|r| r.trip.id.0).collect();
        assert_eq!(ids, [1, 2, 3], "len {len}");
        assert!(back.set_aside.is_empty(), "len {len}: a torn write set the log aside");
        unreported += usize::from(back.cut.is_none());
        append(&mut log, &record(9, TripStatus::Completed));
        log.commit().unwrap_or_else(|e| panic!("{e}"));
        drop(log);
        let (_, after) = open(torn.path());
        assert_eq!(after.cut, None);
        assert_eq!(after.records.last().map(|r| r.trip.id.0), Some(9));
    }
    assert_eq!(unreported, 1, "only the one clean boundary goes unreported");
}

/// Writes trips 1 to 5 (searching), damages the log with `damage` (given
/// the bytes and the offsets of its frames: boot, then the five trips),
/// reopens it; returns the damaged bytes and what came back.
fn damage_log(dir: &Path, damage: impl FnOnce(&mut Vec<u8>, &[usize])) -> (Vec<u8>, Recovered) {
    let records: Vec<TripRecord> = (1..=5).map(|id| record(id, TripStatus::Searching)).collect();
    write(dir, &records);
    let path = dir.join("trips.log");
    let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut offsets = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        offsets.push(at);
        at += 8 + u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    }
    assert_eq!(offsets.len(), 6);
    damage(&mut bytes, &offsets);
    fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let (_, back) = open(dir);
    (bytes, back)
}

#[test]
fn a_corrupt_record_in_the_middle_is_reported_kept_aside_and_the_records_after_it_come_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Damage trip 3's payload.
    let (bytes, back) = damage_log(dir.path(), |bytes, frames| bytes[frames[3] + 20] ^= 0x40);
    assert_eq!(back.cut, None, "damage before the end is not a torn tail");
    let ids: Vec<u64> = back.records.iter().map(|r| r.trip.id.0).collect();
    assert_eq!(ids, [1, 2, 4, 5], "the records after the damage were dropped");
    // The damaged file is kept as it was, for a fixed build to read.
    let aside = dir.path().join("trips.log.corrupt.1");
    assert_eq!(back.set_aside, std::slice::from_ref(&aside));
    assert_eq!(fs::read(&aside).unwrap_or_else(|e| panic!("{e}")), bytes);
    // What was saved went into sound files: the next start finds no damage.
    let (_, again) = open(dir.path());
    assert!(again.set_aside.is_empty());
    assert_eq!(again.records, back.records);
}

#[test]
fn a_length_out_of_range_in_the_middle_does_not_hide_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Trip 2's length claims 2 GiB: what the landed build's reader called
    // the end of the log, dropping every record after it.
    let (_, back) = damage_log(dir.path(), |bytes, frames| bytes[frames[2] + 3] = 0x80);
    let ids: Vec<u64> = back.records.iter().map(|r| r.trip.id.0).collect();
    assert_eq!(ids, [1, 3, 4, 5]);
    assert_eq!(back.set_aside.len(), 1);
}

#[test]
fn a_damaged_snapshot_is_kept_aside_and_every_trip_in_it_that_can_be_read_comes_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records: Vec<TripRecord> = (1..=30).map(|id| record(id, TripStatus::Completed)).collect();
    write(dir.path(), &records);
    let (mut log, _) = open(dir.path());
    log.compact().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let path = dir.path().join("trips.snapshot");
    let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x08;
    fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let (_, back) = open(dir.path());
    assert_eq!(back.records.len(), 29, "one trip's frame is damaged; the others come back");
    assert!(back.records.iter().all(|r| records.contains(r)));
    assert_eq!(back.set_aside, [dir.path().join("trips.snapshot.corrupt.1")]);
    assert_eq!(fs::read(dir.path().join("trips.snapshot.corrupt.1")).unwrap_or_default(), bytes);
    let (_, again) = open(dir.path());
    assert_eq!(again.records, back.records);
    assert!(again.set_aside.is_empty());
}

#[test]
fn drivers_tried_are_logged_one_at_a_time_and_come_back_through_compaction() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = open(dir.path());
    let mut trip = record(1, TripStatus::Searching);
    append(&mut log, &trip);
    let before = log.log_bytes();
    for n in 0..1_000 {
        let driver = DriverId::new(&format!("{n:0>120}")).unwrap_or_else(|e| panic!("{e}"));
        trip.tried.push(driver.clone());
        log.append(&LogRecord::Tried { trip: TripId(1), driver }).unwrap_or_else(|e| panic!("{e}"));
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    // Linear: about one id per decline, not the whole set again each time.
    let per_decline = (log.log_bytes() - before) / 1_000;
    assert!(per_decline < 160, "{per_decline} bytes per decline");
    drop(log);
    let (mut log, back) = open(dir.path());
    assert_eq!(back.records, std::slice::from_ref(&trip));
    log.compact().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (_, back) = open(dir.path());
    assert_eq!(back.snapshot_trips, 1);
    assert_eq!(back.records, [trip]);
}

#[test]
fn compaction_keeps_the_latest_state_and_drops_forgotten_trips() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Always, 0).unwrap_or_else(|e| panic!("{e}"));
    let mut all = Vec::new();
    for id in 1..=50 {
        for s in STATUSES {
            all.push(record(id, s));
            append(&mut log, &record(id, s));
        }
    }
    log.forget(TripId(7));
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    let before = log.log_bytes();
    assert!(log.compaction_due());
    // The log as it was, to put back as if the crash came between the
    // snapshot's rename and the log's reset.
    let stale = fs::read(dir.path().join("trips.log")).unwrap_or_else(|e| panic!("{e}"));
    log.compact().unwrap_or_else(|e| panic!("{e}"));
    assert!(log.log_bytes() < before / 10, "{} bytes after", log.log_bytes());
    append(&mut log, &record(51, TripStatus::Searching));
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    drop(log);

    let expected: Vec<TripRecord> = latest(&all)
        .into_iter()
        .filter(|r| r.trip.id != TripId(7))
        .chain([record(51, TripStatus::Searching)])
        .collect();
    let (_, back) = open(dir.path());
    assert_eq!(latest(&back.records), expected);
    assert_eq!(back.next_trip, 52);

    fs::write(dir.path().join("trips.log"), &stale).unwrap_or_else(|e| panic!("{e}"));
    let (_, back) = open(dir.path());
    let without_51: Vec<TripRecord> = expected.iter().filter(|r| r.trip.id.0 != 51).cloned().collect();
    assert_eq!(latest(&back.records), without_51, "records the snapshot covers were replayed over it");
    assert_eq!(back.next_trip, 51);
}

#[test]
fn boot_numbers_survive_compaction() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, first) = open(dir.path());
    log.compact().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (_, second) = open(dir.path());
    assert!(second.boot > first.boot);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Cut the file anywhere: what comes back is exactly a prefix of what
    /// was written, and never a record that was not. Flip a byte anywhere:
    /// at most the one record holding it is lost, never one after it, and
    /// never silently.
    #[test]
    fn any_cut_gives_back_a_prefix(
        steps in proptest::collection::vec((1..6u64, 0..5usize), 1..40),
        cut in any::<prop::sample::Index>(),
        flip in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let records: Vec<TripRecord> = steps.iter().map(|&(id, s)| record(id, STATUSES[s])).collect();
        write(dir.path(), &records);
        let path = dir.path().join("trips.log");
        let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let at = cut.index(bytes.len());
        if flip {
            bytes[at] ^= 0xff;
        } else {
            bytes.truncate(at);
        }
        let file = OpenOptions::new().write(true).truncate(true).open(&path);
        drop(file);
        fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let (_, back) = open(dir.path());
        if flip {
            let lost_at_most_one = (0..=records.len()).any(|skip| {
                let kept: Vec<TripRecord> =
                    records.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, r)| r.clone()).collect();
                latest(&kept) == back.records
            });
            prop_assert!(lost_at_most_one, "{:?}", back.records);
            if back.records != latest(&records) {
                // A flipped length that runs past the end is a torn tail
                // to the reader, and cut: reported either way.
                prop_assert!(!back.set_aside.is_empty() || back.cut.is_some(), "a record was lost silently");
            }
        } else {
            let prefix = (0..=records.len()).any(|n| latest(&records[..n]) == back.records);
            prop_assert!(prefix, "{:?}", back.records);
            prop_assert!(back.set_aside.is_empty());
        }
    }
}

#[test]
fn a_background_compaction_lets_appends_go_on() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Always, 0).unwrap_or_else(|e| panic!("{e}"));
    let mut all = Vec::new();
    for id in 1..=200 {
        all.push(record(id, TripStatus::DriverAssigned));
        append(&mut log, all.last().unwrap_or_else(|| panic!("empty")));
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    assert!(log.compaction_due());
    log.start_compaction().unwrap_or_else(|e| panic!("{e}"));
    assert!(!log.compaction_due(), "a second compaction must wait for the first");
    for id in 150..=250 {
        all.push(record(id, TripStatus::Completed));
        append(&mut log, all.last().unwrap_or_else(|| panic!("empty")));
        log.commit().unwrap_or_else(|e| panic!("{e}"));
    }
    log.finish_compaction().unwrap_or_else(|e| panic!("{e}"));
    assert!(!dir.path().join("trips.log.prev").exists());
    drop(log);
    let (_, back) = open(dir.path());
    assert_eq!(latest(&back.records), latest(&all));
}

#[test]
fn a_crash_during_a_background_snapshot_recovers_from_the_log_set_aside() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records: Vec<TripRecord> = (1..=20).map(|id| record(id, TripStatus::InProgress)).collect();
    write(dir.path(), &records);
    // The state the crash left: the log set aside, a half-written
    // snapshot, a fresh log holding only its magic.
    fs::rename(dir.path().join("trips.log"), dir.path().join("trips.log.prev")).unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.path().join("trips.snapshot.tmp"), b"DSPSNAP1 half").unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.path().join("trips.log"), b"DSPTLOG1").unwrap_or_else(|e| panic!("{e}"));
    let (_, back) = open(dir.path());
    assert_eq!(latest(&back.records), records);
    assert_eq!(back.next_trip, 21);
    // The interrupted compaction was finished on open.
    assert!(!dir.path().join("trips.log.prev").exists());
    assert!(dir.path().join("trips.snapshot").exists());
    let (_, again) = open(dir.path());
    assert_eq!(latest(&again.records), records);
    assert!(again.boot > back.boot);
}

#[test]
fn ended_trips_are_held_on_disk_only_and_come_back_through_every_compaction() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Always, 0).unwrap_or_else(|e| panic!("{e}"));
    let mut all: Vec<TripRecord> = (1..=100).map(|id| record(id, TripStatus::Completed)).collect();
    all.extend((101..=110).map(|id| record(id, TripStatus::InProgress)));
    for r in &all {
        append(&mut log, r);
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.live_trips(), 10, "ended trips are held in memory");
    log.start_compaction().unwrap_or_else(|e| panic!("{e}"));
    log.finish_compaction().unwrap_or_else(|e| panic!("{e}"));

    // More trips end; an ended trip in the snapshot and one in the log
    // are forgotten; an open one ends.
    all.extend((111..=130).map(|id| record(id, TripStatus::Completed)));
    all.push(record(101, TripStatus::Completed));
    for r in &all[110..] {
        append(&mut log, r);
    }
    log.forget(TripId(5));
    log.forget(TripId(111));
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    log.start_compaction().unwrap_or_else(|e| panic!("{e}"));
    log.finish_compaction().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.live_trips(), 9, "only the open trips 102..=110 are held");
    drop(log);

    let expected: Vec<TripRecord> = latest(&all).into_iter().filter(|r| ![5, 111].contains(&r.trip.id.0)).collect();
    let (mut log, back) = open(dir.path());
    assert_eq!(latest(&back.records), expected);
    assert_eq!(back.snapshot_trips, expected.len(), "the snapshot's count names every trip it holds");
    // After recovery the engine drops one (past its retention): the ended
    // trips read back are let go, and the next snapshot leaves it out.
    assert_eq!(log.live_trips(), expected.len());
    log.retain(|id| id != TripId(50));
    assert_eq!(log.live_trips(), 9);
    log.compact().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (_, back) = open(dir.path());
    let expected: Vec<TripRecord> = expected.into_iter().filter(|r| r.trip.id != TripId(50)).collect();
    assert_eq!(latest(&back.records), expected);
}

/// One step of [`compactions_carry_every_kept_trip_and_no_forgotten_one`].
#[derive(Debug, Clone)]
enum Step {
    Append(u64, usize),
    Forget(u64),
    Compact,
    CompactInBackground,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (1..16u64, 0..5usize).prop_map(|(id, s)| Step::Append(id, s)),
        1 => (1..16u64).prop_map(Step::Forget),
        1 => Just(Step::Compact),
        1 => Just(Step::CompactInBackground),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the order of appends, forgets, compactions and restarts,
    /// what comes back is every kept trip's latest record, although the
    /// log holds only open trips in memory. A forgotten trip may
    /// come back (forgetting is not logged: the engine drops it again by
    /// its retention) until the next snapshot, never after it.
    #[test]
    fn compactions_carry_every_kept_trip_and_no_forgotten_one(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut kept = std::collections::BTreeMap::new();
        let mut ghosts = std::collections::BTreeMap::new();
        let (mut log, _) = open(dir.path());
        let check = |back: &Recovered, kept: &std::collections::BTreeMap<u64, TripRecord>,
                     ghosts: &std::collections::BTreeMap<u64, TripRecord>| {
            let back = latest(&back.records);
            let real: Vec<TripRecord> = back.iter().filter(|r| !ghosts.contains_key(&r.trip.id.0)).cloned().collect();
            prop_assert_eq!(real, kept.values().cloned().collect::<Vec<_>>());
            for r in back.iter().filter(|r| ghosts.contains_key(&r.trip.id.0)) {
                prop_assert_eq!(Some(r), ghosts.get(&r.trip.id.0), "a forgotten trip came back changed");
            }
            Ok(())
        };
        for step in steps {
            match step {
                Step::Append(id, s) => {
                    let r = record(id, STATUSES[s]);
                    append(&mut log, &r);
                    kept.insert(id, r);
                    ghosts.remove(&id);
                }
                Step::Forget(id) => {
                    log.forget(TripId(id));
                    if let Some(r) = kept.remove(&id) {
                        ghosts.insert(id, r);
                    }
                }
                Step::Compact => {
                    log.compact().unwrap_or_else(|e| panic!("{e}"));
                    ghosts.clear();
                }
                Step::CompactInBackground => {
                    log.start_compaction().unwrap_or_else(|e| panic!("{e}"));
                    log.finish_compaction().unwrap_or_else(|e| panic!("{e}"));
                    ghosts.clear();
                }
                Step::Reopen => {
                    log.commit().unwrap_or_else(|e| panic!("{e}"));
                    drop(log);
                    let back;
                    (log, back) = open(dir.path());
                    check(&back, &kept, &ghosts)?;
                    log.retain(|id| kept.contains_key(&id.0));
                }
            }
            let open_trips = kept.values().filter(|r| !r.trip.status.is_terminal()).count();
            prop_assert_eq!(log.live_trips(), open_trips, "the log holds more than the open trips");
        }
        log.commit().unwrap_or_else(|e| panic!("{e}"));
        drop(log);
        let (_, back) = open(dir.path());
        check(&back, &kept, &ghosts)?;
    }
}

/// A log with `Fsync::Always` that has moved into a pre-zeroed file
/// (`trips.log.next` taken as `trips.log`), holding trips 1 to N (N over 7,000); the
/// records written, latest per trip.
fn pre_zeroed_log(dir: &Path) -> (TripLog, Vec<TripRecord>) {
    use dispatch_store::TripStore;
    let (mut log, _) = TripLog::open(dir, Fsync::Always, 2 << 20).unwrap_or_else(|e| panic!("{e}"));
    let mut all = Vec::new();
    // Appends and housekeeping, as the server does them, until the log has
    // passed a MiB (the size at which a spare is made), the spare is
    // written on its thread, and the log has moved into it.
    let start = std::time::Instant::now();
    let mut id = 0;
    while !log.preallocated() {
        for _ in 0..100 {
            id += 1;
            all.push(record(id, TripStatus::DriverAssigned));
            append(&mut log, all.last().unwrap_or_else(|| panic!("empty")));
        }
        log.commit().unwrap_or_else(|e| panic!("{e}"));
        log.maintain().unwrap_or_else(|e| panic!("{e}"));
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the log never moved into a spare");
    }
    assert!(id > 7_000, "moved into a spare after {id} records, before the log passed a MiB");
    log.finish_compaction().unwrap_or_else(|e| panic!("{e}"));
    for id in id - 10..=id + 10 {
        all.push(record(id, TripStatus::InProgress));
        append(&mut log, all.last().unwrap_or_else(|| panic!("empty")));
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    (log, latest(&all))
}

fn open_synced(dir: &Path) -> (TripLog, Recovered) {
    TripLog::open(dir, Fsync::Always, 2 << 20).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_busy_log_moves_into_a_pre_zeroed_file_and_a_restart_keeps_it_so() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (log, all) = pre_zeroed_log(dir.path());
    let path = dir.path().join("trips.log");
    let size = fs::metadata(&path).unwrap_or_else(|e| panic!("{e}")).len();
    // Compaction at 2 MiB: a spare of 2.5 MiB.
    assert_eq!(size, 5 << 19, "the log is the spare's size (the records end well before)");
    assert!(log.log_bytes() < size);
    drop(log);
    let (mut log, back) = open_synced(dir.path());
    assert_eq!(latest(&back.records), all);
    assert_eq!(back.cut, None);
    assert!(back.set_aside.is_empty());
    assert!(log.preallocated(), "a restart cut the zeros off");
    assert_eq!(fs::metadata(&path).unwrap_or_else(|e| panic!("{e}")).len(), size);
    // Appends go on where the records end, not at the file's end.
    let more = record(1_000_000, TripStatus::Completed);
    append(&mut log, &more);
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let (_, again) = open_synced(dir.path());
    let mut expected = all;
    expected.push(more);
    assert_eq!(latest(&again.records), latest(&expected));
    assert_eq!(fs::metadata(&path).unwrap_or_else(|e| panic!("{e}")).len(), size);
}

#[test]
fn a_write_torn_into_the_zeros_of_a_pre_zeroed_log_is_cut_not_set_aside() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (log, all) = pre_zeroed_log(dir.path());
    let end = log.log_bytes();
    drop(log);
    // What a crash mid-write leaves in a pre-zeroed file: a frame header
    // and the first part of its payload, then the zeros that were there.
    let path = dir.path().join("trips.log");
    let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let at = usize::try_from(end).unwrap_or_else(|e| panic!("{e}"));
    bytes[at..at + 4].copy_from_slice(&300u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    bytes[at + 8..at + 120].fill(0xab);
    fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let (_, back) = open_synced(dir.path());
    assert_eq!(latest(&back.records), all, "a committed record was lost");
    assert!(back.cut.is_some(), "the torn write was not cut");
    assert!(back.set_aside.is_empty(), "a torn write is not damage: {:?}", back.set_aside);
}

#[test]
fn damage_inside_a_pre_zeroed_log_is_set_aside_and_the_records_after_it_come_back() {
    for zero_header in [false, true] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (log, all) = pre_zeroed_log(dir.path());
        drop(log);
        let path = dir.path().join("trips.log");
        let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        // The second frame after the magic (the first is the boot entry).
        let first_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let second = 8 + 8 + first_len;
        if zero_header {
            // A zero header with records after it is not where the zeros begin.
            bytes[second..second + 8].fill(0);
        } else {
            bytes[second + 12] ^= 0x40;
        }
        fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let (_, back) = open_synced(dir.path());
        assert_eq!(back.cut, None, "damage before the end is not a torn tail");
        assert_eq!(back.set_aside, [dir.path().join("trips.log.corrupt.1")]);
        // Only the damaged frame's record is missing.
        let lost: Vec<_> = all.iter().filter(|r| !back.records.contains(r)).collect();
        assert_eq!(lost.len(), 1, "zero header {zero_header}: lost {lost:?}");
    }
}
