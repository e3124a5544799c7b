//! A fleet whose drivers decline one trip thousands of times (ids of the
//! longest length, compaction running all along) while other trips are
//! assigned; then `SIGKILL` and a restart on the same data directory. Every
//! acknowledged trip must come back, the declined trip must still know who
//! declined it, and no file may have been set aside as damaged. The landed
//! build lost every trip here: the declined trip's record outgrew the
//! reader's frame limit and recovery cut the log at it.

mod common;

use std::collections::HashSet;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_proto::pb::{
    self, driver_event::Kind as Event, fleet_message::Kind as FleetMsg, fleet_service_client::FleetServiceClient,
    rider_service_client::RiderServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const STORM_DRIVERS: usize = 3_000;
/// Declines before the kill.
const DECLINES: usize = 2_500;
const CALM_DRIVERS: usize = 120;
const RIDES: usize = 100;
/// The declined trip's pickup, and 55 km north of it where the other rides go.
const A: (f64, f64) = (37.5665, 126.9780);
const B: (f64, f64) = (38.0665, 126.9780);

/// Kills dispatchd when dropped, so a failing test leaves no process.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn storm_id(i: usize) -> String {
    // 128 bytes, the longest id allowed.
    format!("storm/{i:0>122}")
}

fn at(base: (f64, f64), i: usize) -> pb::LatLng {
    let step = (i % 100) as f64 * 0.0002;
    pb::LatLng { lat: base.0 + step, lng: base.1 + (i / 100) as f64 * 0.0002 }
}

async fn connect(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Opens a fleet session and puts `drivers` on duty; returns the sender
/// and the events.
async fn fleet(
    channel: Channel,
    fleet_id: &str,
    drivers: Vec<pb::DriverUpdate>,
) -> (mpsc::Sender<pb::FleetMessage>, tonic::Streaming<pb::DriverEvent>) {
    let (tx, rx) = mpsc::channel(64);
    let hello = FleetMsg::Hello(pb::FleetHello { fleet_id: fleet_id.into() });
    tx.send(pb::FleetMessage { kind: Some(hello) }).await.unwrap_or_else(|e| panic!("{e}"));
    let mut events = FleetServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    match events.message().await {
        Ok(Some(pb::DriverEvent { kind: Some(Event::SessionStarted(_)) })) => {}
        other => panic!("{fleet_id}: expected session_started, got {other:?}"),
    }
    for chunk in drivers.chunks(1_000) {
        let batch = FleetMsg::Updates(pb::DriverUpdateBatch { updates: chunk.to_vec() });
        tx.send(pb::FleetMessage { kind: Some(batch) }).await.unwrap_or_else(|e| panic!("{e}"));
    }
    (tx, events)
}

fn storm_drivers() -> Vec<pb::DriverUpdate> {
    (0..STORM_DRIVERS)
        .map(|i| pb::DriverUpdate {
            driver_id: storm_id(i),
            position: Some(at(A, i)),
            available: Some(true),
            ..Default::default()
        })
        .collect()
}

/// What the declining fleet learned: drivers whose decline the server
/// surely logged (it offered the trip to someone else after it).
#[derive(Default)]
struct Storm {
    trip_id: String,
    confirmed: HashSet<String>,
    last_declined: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_declined_thousands_of_times_loses_nothing_across_sigkill() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flags = [
        "--max-offers-per-trip",
        "5000",
        "--search-timeout",
        "10m",
        "--driver-grace",
        "10m",
        "--log-compact-after-bytes",
        "65536",
        "--rate-fleet-messages-per-s",
        "100000",
    ];
    let (child, addr) = common::start_in(dir.path(), &flags, &[]);
    let mut daemon = Daemon(child);
    let channel = connect(&addr).await;

    // The other rides' drivers, auto-accepting, far from the storm.
    let calm: Vec<pb::DriverUpdate> = (0..CALM_DRIVERS)
        .map(|i| pb::DriverUpdate {
            driver_id: format!("calm/{i}"),
            position: Some(at(B, i)),
            available: Some(true),
            auto_accept: true,
            ..Default::default()
        })
        .collect();
    let (_calm_tx, mut calm_events) = fleet(channel.clone(), "calm", calm).await;
    tokio::spawn(async move { while let Ok(Some(_)) = calm_events.message().await {} });

    let (storm_tx, mut storm_events) = fleet(channel.clone(), "storm", storm_drivers()).await;
    let storm = Arc::new(Mutex::new(Storm::default()));
    let decliner = {
        let storm = storm.clone();
        tokio::spawn(async move {
            let mut declined = 0;
            while declined < DECLINES {
                let Ok(Some(event)) = storm_events.message().await else { panic!("the storm fleet's stream ended") };
                let Some(Event::Offer(offer)) = event.kind else { continue };
                {
                    let mut s = storm.lock().unwrap_or_else(|e| panic!("{e}"));
                    s.trip_id = offer.trip.map(|t| t.trip_id).unwrap_or_default();
                    if let Some(previous) = s.last_declined.replace(offer.driver_id.clone()) {
                        s.confirmed.insert(previous);
                    }
                }
                let reply = FleetMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id, accept: false });
                storm_tx.send(pb::FleetMessage { kind: Some(reply) }).await.unwrap_or_else(|e| panic!("{e}"));
                declined += 1;
            }
            storm_events
        })
    };

    let mut riders = RiderServiceClient::new(channel.clone());
    let storm_request = pb::RideRequest {
        rider_id: "unlucky".into(),
        request_id: "storm".into(),
        pickup: Some(pb::LatLng { lat: A.0, lng: A.1 }),
        max_pickup_distance_m: 4_000.0,
        ..Default::default()
    };
    let mut storm_stream =
        riders.request_ride(storm_request.clone()).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
    let storm_trip = storm_stream.message().await.unwrap_or_else(|e| panic!("{e}")).map(|t| t.trip_id);
    let storm_trip = storm_trip.unwrap_or_else(|| panic!("no storm trip"));

    // Meanwhile, other rides are requested and assigned.
    let mut assigned = Vec::new();
    for n in 0..RIDES {
        let request = pb::RideRequest {
            rider_id: format!("rider-{n}"),
            request_id: format!("ride-{n}"),
            pickup: Some(pb::LatLng { lat: B.0 + 0.001, lng: B.1 + 0.001 }),
            ..Default::default()
        };
        let mut stream = riders.request_ride(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
        let trip = loop {
            match stream.message().await {
                Ok(Some(t)) if t.status() == pb::TripStatus::DriverAssigned => break t,
                Ok(Some(_)) => {}
                other => panic!("ride {n}: {other:?}"),
            }
        };
        assigned.push(trip);
    }
    let storm_events = tokio::time::timeout(Duration::from_secs(240), decliner)
        .await
        .unwrap_or_else(|_| panic!("{DECLINES} declines took over 4 minutes"))
        .unwrap_or_else(|e| panic!("{e}"));
    let confirmed = storm.lock().map(|s| s.confirmed.clone()).unwrap_or_default();
    assert_eq!(storm.lock().map(|s| s.trip_id.clone()).unwrap_or_default(), storm_trip);
    assert!(confirmed.len() >= DECLINES - 1);

    daemon.0.kill().unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    let _ = daemon.0.wait();
    drop((storm_events, storm_stream));

    let (child, addr) = common::start_in(dir.path(), &flags, &[]);
    let mut daemon = Daemon(child);
    let channel = connect(&addr).await;
    let mut riders = RiderServiceClient::new(channel.clone());
    for trip in &assigned {
        let now = riders
            .get_trip(pb::GetTripRequest { trip_id: trip.trip_id.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged trip {} lost: {e}", trip.trip_id))
            .into_inner();
        assert_eq!(now.status(), pb::TripStatus::DriverAssigned, "{}", trip.trip_id);
        assert_eq!(now.driver_id, trip.driver_id);
        assert_eq!(now.rider_id, trip.rider_id);
    }
    let storm_now = riders
        .get_trip(pb::GetTripRequest { trip_id: storm_trip.clone() })
        .await
        .unwrap_or_else(|e| panic!("the declined trip was lost: {e}"))
        .into_inner();
    assert_eq!(storm_now.status(), pb::TripStatus::Searching);
    let set_aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.contains("corrupt"))
        .collect();
    assert!(set_aside.is_empty(), "recovery found damage: {set_aside:?}");

    // The storm fleet comes back with every driver: the trip goes to one who
    // has not declined it, never again to one who has.
    let (_tx, mut events) = fleet(channel.clone(), "storm", storm_drivers()).await;
    let offer = loop {
        match events.message().await {
            Ok(Some(pb::DriverEvent { kind: Some(Event::Offer(offer)) })) => break offer,
            Ok(Some(_)) => {}
            other => panic!("no offer after the restart: {other:?}"),
        }
    };
    assert_eq!(offer.trip.map(|t| t.trip_id), Some(storm_trip));
    assert!(!confirmed.contains(&offer.driver_id), "{} declined the trip before the crash", offer.driver_id);
    // The same request finds the same trip.
    let mut again = riders.request_ride(storm_request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
    let first = again.message().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.map(|t| t.trip_id), storm_now.trip_id.clone().into());
    common::sigterm(&daemon.0);
    let status = common::wait_exit(&mut daemon.0, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}
