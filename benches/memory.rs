//! Bytes held per driver, and per ended trip kept for its retention, in
//! each place that keeps one: a counting allocator around the system one,
//! a seeded city, and the differences. Run: `cargo bench --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use dispatch_core::Engine;
use dispatch_core::engine::{Config, DriverHello, Effect, RideRequest};
use dispatch_core::ids::SessionId;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::TripStatus;
use dispatch_store::{Fsync, TripLog};
use dispatch_testkit::city::{CityShape, driver_hello, engine_with_drivers, ride_request};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let mut out = std::io::stdout().lock();
    for drivers in [10_000, 250_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let (engine, placed) = engine_with_drivers(1, &CityShape::seoul(), drivers, Config::default());
        // The fixture's own list of positions is not the engine's.
        let fixture = placed.capacity() * std::mem::size_of_val(&placed[0]);
        let held = LIVE.load(Ordering::Relaxed) - before - fixture;
        let _ = writeln!(out, "engine/{drivers}_drivers: {} bytes per driver ({} MiB)", held / drivers, held >> 20);
        drop((engine, placed));
    }
    ended_trips(&mut out, 100_000);
    open_trips(&mut out, 100_000);
}

/// Bytes a bounded channel of `T` holds from the moment it is made (as a
/// rider's stream or a session's sender is): its first block of slots.
fn channel_bytes<T>(n: usize) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    let channels: Vec<_> = (0..n).map(|_| tokio::sync::mpsc::channel::<T>(256)).collect();
    let held = LIVE.load(Ordering::Relaxed) - before - channels.capacity() * std::mem::size_of_val(&channels[0]);
    drop(channels);
    held / n
}

/// `n` rides in progress, each with its driver connected and its rider
/// following it, and where each holds memory: the engine's row, the server's
/// table of open trips (`pb::Trip`, for `GetTrip`), the trip log's copy for
/// its next snapshot, and the channel behind the rider's stream.
fn open_trips(out: &mut impl Write, n: usize) {
    let city = CityShape::seoul();
    let mut rng = dispatch_testkit::rng(4);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(Config::default());
    let mut hellos = Vec::with_capacity(n);
    for i in 0..n {
        let hello = DriverHello { auto_accept: true, ..driver_hello(&mut rng, &city, i) };
        engine.connect_driver(Timestamp(0), SessionId(i as u64 + 1), hello.clone()).unwrap_or_else(|e| panic!("{e}"));
        hellos.push(hello);
    }
    engine.drain_effects().for_each(drop);
    let requests: Vec<RideRequest> = hellos
        .iter()
        .enumerate()
        .map(|(i, h)| RideRequest { pickup: h.position.unwrap_or(city.centre), ..ride_request(&mut rng, &city, i) })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut records = Vec::new();
    let mut trips = Vec::with_capacity(n);
    for (i, request) in requests.into_iter().enumerate() {
        let session = SessionId(i as u64 + 1);
        let trip = engine.request_ride(Timestamp(1), request).trip.id;
        engine.drain_effects().for_each(drop);
        for status in [TripStatus::DriverArrived, TripStatus::InProgress] {
            engine.trip_progress(Timestamp(1), session, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
        }
        let at = LIVE.load(Ordering::Relaxed);
        records.extend(engine.drain_effects().filter_map(|e| match e {
            Effect::Persist(record) => Some(record),
            _ => None,
        }));
        // Held here for the log's turn, not by the engine.
        LIVE.fetch_sub(LIVE.load(Ordering::Relaxed) - at, Ordering::Relaxed);
        trips.push(trip);
    }
    let in_engine = LIVE.load(Ordering::Relaxed) - before;
    let before = LIVE.load(Ordering::Relaxed);
    let table: dashmap::DashMap<_, _> = dashmap::DashMap::with_shard_amount(64);
    for trip in trips.iter().filter_map(|&id| engine.trip(id)) {
        table.insert(trip.id, dispatch_proto::pb::Trip::from(&trip));
    }
    let in_table = LIVE.load(Ordering::Relaxed) - before;
    let before = LIVE.load(Ordering::Relaxed);
    for record in &records {
        log.append(record).unwrap_or_else(|e| panic!("{e}"));
    }
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    let in_log = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let rider_stream = channel_bytes::<dispatch_server::RiderUpdate>(n);
    let rider_stream_inline = channel_bytes::<Result<dispatch_proto::pb::Trip, tonic::Status>>(n);
    let _ = writeln!(
        out,
        "open_trips/{n} (in progress, rider following): engine {} B, table of open trips {} B, trip log {} B, \
         rider stream's channel {rider_stream} B ({rider_stream_inline} B with trips inline) per trip",
        in_engine / n,
        in_table / n,
        in_log / n,
    );
    let session = channel_bytes::<Box<dispatch_proto::pb::DriverEvent>>(n);
    let session_inline = channel_bytes::<dispatch_proto::pb::DriverEvent>(n);
    let _ = writeln!(out, "driver session's sender channel: {session} B ({session_inline} B with events inline)");
    drop((engine, table, log, records));
}

/// Runs `n` rides through to the end (a driver connects, is assigned,
/// drives, completes, leaves), handing every record to a trip log as the
/// server does, then counts what the engine keeps of them and what the log
/// keeps in memory (after a snapshot, too). The server's table of replies
/// holds open trips only: an ended trip leaves it, which
/// `deliver::tests::an_ended_trip_leaves_the_table_of_open_trips` checks.
fn ended_trips(out: &mut impl Write, n: usize) {
    let city = CityShape::seoul();
    let mut rng = dispatch_testkit::rng(3);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let before = LIVE.load(Ordering::Relaxed);
    let (mut log, _) = TripLog::open(dir.path(), Fsync::Never, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    let empty_log = LIVE.load(Ordering::Relaxed) - before;
    let before = LIVE.load(Ordering::Relaxed);
    // What the log's calls allocated, net: the rest is the engine's.
    let mut in_log = 0isize;
    let mut logged = |log: &mut TripLog, record: &dispatch_core::engine::LogRecord| {
        let at = LIVE.load(Ordering::Relaxed) as isize;
        log.append(record).unwrap_or_else(|e| panic!("{e}"));
        in_log += LIVE.load(Ordering::Relaxed) as isize - at;
    };
    let mut engine = Engine::new(Config::default());
    let mut ended = Vec::with_capacity(n);
    for i in 0..n {
        let now = Timestamp(i as i64);
        let session = SessionId(i as u64 + 1);
        let hello = DriverHello { auto_accept: true, ..driver_hello(&mut rng, &city, i) };
        let request = RideRequest { pickup: hello.position.unwrap_or(city.centre), ..ride_request(&mut rng, &city, i) };
        engine.connect_driver(now, session, hello).unwrap_or_else(|e| panic!("{e}"));
        let trip = engine.request_ride(now, request).trip.id;
        for effect in engine.drain_effects() {
            if let Effect::Persist(record) = effect {
                logged(&mut log, &record);
            }
        }
        for status in [TripStatus::DriverArrived, TripStatus::InProgress, TripStatus::Completed] {
            engine.trip_progress(now, session, None, trip, status).unwrap_or_else(|e| panic!("{e}"));
        }
        engine.close_session(now, session);
        for effect in engine.drain_effects() {
            if let Effect::Persist(record) = effect {
                logged(&mut log, &record);
            }
        }
        ended.push(trip);
    }
    // Timers still pending (search deadlines) run out within minutes, not
    // the day the trips are kept.
    engine.tick(Timestamp(n as i64 + 3_600_000));
    engine.drain_effects().for_each(drop);
    let at = LIVE.load(Ordering::Relaxed) as isize;
    log.commit().unwrap_or_else(|e| panic!("{e}"));
    log.start_compaction().unwrap_or_else(|e| panic!("{e}"));
    log.finish_compaction().unwrap_or_else(|e| panic!("{e}"));
    let after_snapshot = in_log + LIVE.load(Ordering::Relaxed) as isize - at;
    let in_engine = (LIVE.load(Ordering::Relaxed) - before) as isize - after_snapshot;
    assert!(ended.iter().all(|&id| engine.trip(id).is_some_and(|t| t.status == TripStatus::Completed)));
    let per = |bytes: isize| bytes / n as isize;
    let _ = writeln!(
        out,
        "ended_trips/{n}: engine {} B, trip log {} B until a snapshot, {} B after, per trip (empty log {} KiB)",
        per(in_engine),
        per(in_log),
        per(after_snapshot),
        empty_log >> 10
    );
    drop((engine, log));
}
