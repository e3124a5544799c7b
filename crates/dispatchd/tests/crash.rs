//! The crash test: dispatchd as a process, rides running through every
//! state under load, `SIGKILL` at a random moment, a restart on the same
//! data directory, and then every trip any client saw acknowledged must be
//! there, at least as far along, none duplicated, and its driver must get it
//! back on reconnect. Three kills in a row on one directory.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_proto::pb::{
    self, driver_event::Kind as Event, driver_message::Kind as DriverMsg, driver_service_client::DriverServiceClient,
    fleet_message::Kind as FleetMsg, fleet_service_client::FleetServiceClient,
    rider_service_client::RiderServiceClient,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const DRIVERS: usize = 40;
const RIDERS: usize = 60;
const FLEET_DRIVERS: usize = 500;
const CENTER: (f64, f64) = (37.5665, 126.9780);

/// What clients were told about one trip: the furthest status anyone saw.
#[derive(Debug, Clone)]
struct Acked {
    status: pb::TripStatus,
    driver: String,
    rider: String,
}

#[derive(Default)]
struct World {
    /// By trip id.
    trips: HashMap<String, Acked>,
    /// (rider, request id) to trip id, for every RequestRide answered.
    requests: HashMap<(String, String), String>,
}

type Shared = Arc<Mutex<World>>;

fn rank(s: pb::TripStatus) -> u8 {
    match s {
        pb::TripStatus::Unspecified => 0,
        pb::TripStatus::Searching => 1,
        pb::TripStatus::DriverAssigned => 2,
        pb::TripStatus::DriverArrived => 3,
        pb::TripStatus::InProgress => 4,
        pb::TripStatus::Completed | pb::TripStatus::Cancelled | pb::TripStatus::NoDriverFound => 5,
    }
}

fn is_terminal(s: pb::TripStatus) -> bool {
    rank(s) == 5
}

fn saw(world: &Shared, trip: &pb::Trip) {
    let Ok(mut w) = world.lock() else { return };
    let entry = w.trips.entry(trip.trip_id.clone()).or_insert_with(|| Acked {
        status: trip.status(),
        driver: String::new(),
        rider: trip.rider_id.clone(),
    });
    if rank(trip.status()) >= rank(entry.status) {
        entry.status = trip.status();
    }
    if !trip.driver_id.is_empty() {
        entry.driver = trip.driver_id.clone();
    }
    // Drivers see trips without the rider's id; the rider's own stream has it.
    if !trip.rider_id.is_empty() {
        entry.rider = trip.rider_id.clone();
    }
}

fn near(rng: &mut StdRng) -> pb::LatLng {
    pb::LatLng { lat: CENTER.0 + rng.random_range(-0.01..0.01), lng: CENTER.1 + rng.random_range(-0.01..0.01) }
}

async fn connect(addr: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {addr}");
}

/// A driver app: accepts most offers and drives each trip to its end,
/// until the server goes away.
async fn driver(channel: Channel, id: String, world: Shared, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello { driver_id: id, position: Some(near(&mut rng)), available: true, ..Default::default() };
    if tx.send(pb::DriverMessage { kind: Some(DriverMsg::Hello(hello)) }).await.is_err() {
        return;
    }
    let Ok(response) = DriverServiceClient::new(channel).connect(ReceiverStream::new(rx)).await else { return };
    let mut events = response.into_inner();
    let send = |kind| {
        let tx = tx.clone();
        async move { tx.send(pb::DriverMessage { kind: Some(kind) }).await.is_ok() }
    };
    while let Ok(Some(event)) = events.message().await {
        match event.kind {
            Some(Event::Offer(offer)) => {
                let accept = rng.random_bool(0.85);
                send(DriverMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id, accept })).await;
            }
            // A trip from before the last crash comes back with the hello.
            Some(Event::Trip(trip))
            | Some(Event::SessionStarted(pb::SessionStarted { current_trip: Some(trip), .. })) => {
                saw(&world, &trip);
                let next = match trip.status() {
                    pb::TripStatus::DriverAssigned => pb::TripStatus::DriverArrived,
                    pb::TripStatus::DriverArrived => pb::TripStatus::InProgress,
                    pb::TripStatus::InProgress => pb::TripStatus::Completed,
                    _ => continue,
                };
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
                let progress = pb::TripProgress { trip_id: trip.trip_id, status: next.into() };
                send(DriverMsg::TripProgress(progress)).await;
            }
            _ => {}
        }
    }
}

/// A rider app: asks for rides one after another and follows each, now and
/// then cancelling, until the server goes away.
async fn rider(channel: Channel, id: String, world: Shared, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = RiderServiceClient::new(channel);
    for n in 0.. {
        let request_id = format!("{id}-q{n}-{seed}");
        let request = pb::RideRequest {
            rider_id: id.clone(),
            request_id: request_id.clone(),
            pickup: Some(near(&mut rng)),
            dropoff: Some(near(&mut rng)),
            ..Default::default()
        };
        let Ok(response) = client.request_ride(request).await else { return };
        let mut updates = response.into_inner();
        let cancel_at = rng.random_bool(0.15).then(|| rng.random_range(1..3u8));
        loop {
            let trip = match updates.message().await {
                Ok(Some(trip)) => trip,
                Ok(None) => break,
                Err(_) => return,
            };
            if let Ok(mut w) = world.lock() {
                w.requests.insert((id.clone(), request_id.clone()), trip.trip_id.clone());
            }
            saw(&world, &trip);
            if is_terminal(trip.status()) {
                break;
            }
            if cancel_at == Some(rank(trip.status())) {
                let cancel = pb::CancelRideRequest { trip_id: trip.trip_id.clone(), reason: "changed plans".into() };
                match client.cancel_ride(cancel).await {
                    Ok(reply) => saw(&world, &reply.into_inner()),
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
                    Err(_) => return,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
    }
}

/// A partner gateway pinging for many drivers: the load the kill lands in.
async fn fleet(channel: Channel, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (tx, rx) = mpsc::channel(16);
    let hello = FleetMsg::Hello(pb::FleetHello { fleet_id: "load".into() });
    if tx.send(pb::FleetMessage { kind: Some(hello) }).await.is_err() {
        return;
    }
    let Ok(response) = FleetServiceClient::new(channel).connect(ReceiverStream::new(rx)).await else { return };
    let mut events = response.into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    loop {
        let updates = (0..FLEET_DRIVERS)
            .map(|i| pb::DriverUpdate {
                driver_id: format!("load/{i}"),
                position: Some(near(&mut rng)),
                // Never on duty: load for the engine, no rides taken.
                ..Default::default()
            })
            .collect();
        let batch = FleetMsg::Updates(pb::DriverUpdateBatch { updates });
        if tx.send(pb::FleetMessage { kind: Some(batch) }).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the restarted server against what clients saw; returns the
/// drivers who should get a trip back.
async fn check(channel: Channel, world: &World) -> Vec<(String, String)> {
    let mut client = RiderServiceClient::new(channel);
    let mut resumable = Vec::new();
    let mut ids = HashSet::new();
    for (trip_id, acked) in &world.trips {
        assert!(ids.insert(trip_id.clone()));
        let now = client
            .get_trip(pb::GetTripRequest { trip_id: trip_id.clone() })
            .await
            .unwrap_or_else(|e| panic!("trip {trip_id} ({acked:?}) lost in the crash: {e}"))
            .into_inner();
        assert!(
            rank(now.status()) >= rank(acked.status),
            "trip {trip_id} went back from {:?} to {:?}",
            acked.status,
            now.status()
        );
        if is_terminal(acked.status) {
            assert_eq!(now.status(), acked.status, "trip {trip_id} changed after it ended");
        }
        // Known only if the rider's stream showed it before the kill.
        if !acked.rider.is_empty() {
            assert_eq!(now.rider_id, acked.rider);
        }
        if matches!(
            now.status(),
            pb::TripStatus::DriverAssigned | pb::TripStatus::DriverArrived | pb::TripStatus::InProgress
        ) {
            resumable.push((now.driver_id.clone(), trip_id.clone()));
        }
    }
    // The same request id finds the same trip: no ride was ordered twice.
    for ((rider, request_id), trip_id) in &world.requests {
        let request = pb::RideRequest {
            rider_id: rider.clone(),
            request_id: request_id.clone(),
            pickup: Some(pb::LatLng { lat: CENTER.0, lng: CENTER.1 }),
            ..Default::default()
        };
        let mut stream = client.request_ride(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
        let first = stream.message().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.map(|t| t.trip_id).as_ref(), Some(trip_id), "{rider}/{request_id} got a second trip");
    }
    resumable
}

/// Every driver with a trip gets it back in `session_started`, and can
/// drive it on.
async fn resume(channel: Channel, resumable: Vec<(String, String)>) {
    for (driver_id, trip_id) in resumable {
        let hello = pb::Hello { driver_id: driver_id.clone(), ..Default::default() };
        let (_tx, mut events) = common::open_driver(channel.clone(), hello).await;
        let started = match events.message().await {
            Ok(Some(pb::DriverEvent { kind: Some(Event::SessionStarted(s)) })) => s,
            other => panic!("{driver_id}: expected session_started, got {other:?}"),
        };
        let current = started.current_trip.unwrap_or_else(|| panic!("{driver_id} did not get {trip_id} back"));
        assert_eq!(current.trip_id, trip_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_trip_survives_sigkill() {
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay the same kill times)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flags = ["--driver-grace", "10m", "--log-compact-after-bytes", "200000"];
    let mut total = 0;
    for round in 0..3u64 {
        let (mut child, addr) = common::start_in(dir.path(), &flags, &[]);
        let channel = connect(&addr).await;
        let world: Shared = Arc::default();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(fleet(channel.clone(), seed ^ round)));
        for i in 0..DRIVERS {
            let id = format!("d{i}");
            tasks.push(tokio::spawn(driver(channel.clone(), id, world.clone(), seed ^ (round << 8) ^ i as u64)));
        }
        for i in 0..RIDERS {
            let id = format!("r{i}");
            tasks.push(tokio::spawn(rider(channel.clone(), id, world.clone(), seed ^ (round << 16) ^ i as u64)));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2_500))).await;
        child.kill().unwrap_or_else(|e| panic!("SIGKILL: {e}"));
        let _ = child.wait();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let world = match Arc::try_unwrap(world) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| panic!("{e}")),
            Err(_) => panic!("a client task outlived the server"),
        };
        let active = world.trips.values().filter(|t| !is_terminal(t.status)).count();
        eprintln!("round {round}: {} trips seen ({active} not ended) when killed", world.trips.len());
        assert!(world.trips.len() >= 5, "too little happened before the kill to test anything");
        total += world.trips.len();

        let (mut child, addr) = common::start_in(dir.path(), &flags, &[]);
        let channel = connect(&addr).await;
        let resumable = check(channel.clone(), &world).await;
        resume(channel, resumable).await;
        common::sigterm(&child);
        let status = tokio::task::spawn_blocking(move || common::wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "exit status {status}");
    }
    eprintln!("{total} acknowledged trips checked across three kills");
}
