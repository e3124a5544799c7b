//! Cluster mode, run as a user runs it: three `nats-server`s in one
//! JetStream cluster and three `dispatchd --cluster` nodes, started here on
//! free loopback ports and killed at the end (also when a test fails).
//!
//! - the rules of dispatch hold through a node that does not own the shard;
//! - every node's HTTP side (`/healthz`, `/metrics`, `/api/stats`) answers
//!   for the owner's engine;
//! - the owner `SIGKILL`ed under load (drivers with sessions of their own
//!   and through fleets, riders, on every node), three times: every trip a rider saw
//!   acknowledged is there, at least as far along, none duplicated, no
//!   driver with two trips; failover times reported;
//! - the `nats-server` leading the trip stream `SIGKILL`ed under load:
//!   nothing lost, writes wait only for the stream's new leader;
//! - a paused owner (`SIGSTOP` past its lease) is fenced: after `SIGCONT`
//!   none of its writes lands, and it relays to the new owner;
//! - the shard count is the cluster's, fixed when it is created: a node
//!   with another `--shards` is refused, saying why; every node keeps a
//!   live key, and a node stopping gives up its lease and its key.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, signal};
use dispatch_proto::pb::{
    self, admin_service_client::AdminServiceClient, driver_event::Kind as Event, driver_message::Kind as DriverMsg,
    fleet_message::Kind as FleetMsg, fleet_service_client::FleetServiceClient,
    rider_service_client::RiderServiceClient,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// One cluster at a time: each is six processes, and the machines have two
/// cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Area `k`: centres 20 km apart, so each rule's drivers see only its rider.
fn area(k: usize) -> (f64, f64) {
    (37.2 + k as f64 * 0.18, 127.0)
}

/// A point `metres` north of `centre`.
fn north(centre: (f64, f64), metres: f64) -> pb::LatLng {
    pb::LatLng { lat: centre.0 + metres / 111_195.0, lng: centre.1 }
}

struct Driver {
    tx: mpsc::Sender<pb::DriverMessage>,
    events: tonic::Streaming<pb::DriverEvent>,
}

impl Driver {
    async fn open(channel: Channel, id: &str, at: pb::LatLng, auto_accept: bool) -> Self {
        let hello =
            pb::Hello { driver_id: id.into(), position: Some(at), available: true, auto_accept, ..Default::default() };
        let (tx, events) = within("driver connect", common::open_driver(channel, hello)).await;
        let mut driver = Self { tx, events };
        match driver.next().await {
            Event::SessionStarted(_) => driver,
            other => panic!("expected session_started, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Event {
        let event = within("a driver event", self.events.message()).await;
        event
            .unwrap_or_else(|e| panic!("driver stream: {e}"))
            .and_then(|e| e.kind)
            .unwrap_or_else(|| panic!("no event"))
    }

    async fn offer(&mut self) -> pb::Offer {
        loop {
            if let Event::Offer(offer) = self.next().await {
                return offer;
            }
        }
    }

    async fn send(&self, kind: DriverMsg) {
        self.tx.send(pb::DriverMessage { kind: Some(kind) }).await.unwrap_or_else(|e| panic!("send: {e}"));
    }

    async fn reply(&self, offer: &pb::Offer, accept: bool) {
        self.send(DriverMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id.clone(), accept })).await;
    }
}

fn ride(rider: &str, request_id: &str, pickup: pb::LatLng) -> pb::RideRequest {
    pb::RideRequest {
        rider_id: rider.into(),
        request_id: request_id.into(),
        pickup: Some(pickup),
        dropoff: Some(pb::LatLng { lat: pickup.lat + 0.02, lng: pickup.lng }),
        ..Default::default()
    }
}

async fn request(channel: &Channel, request: pb::RideRequest) -> tonic::Streaming<pb::Trip> {
    within("request_ride", RiderServiceClient::new(channel.clone()).request_ride(request))
        .await
        .unwrap_or_else(|e| panic!("request_ride: {e}"))
        .into_inner()
}

/// Reads rider updates until one has `status`.
async fn until_status(stream: &mut tonic::Streaming<pb::Trip>, status: pb::TripStatus) -> pb::Trip {
    loop {
        let trip = within("a rider update", stream.message()).await;
        let trip = trip.unwrap_or_else(|e| panic!("rider stream: {e}")).unwrap_or_else(|| panic!("rider stream ended"));
        if trip.status == status as i32 {
            return trip;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_hold_through_a_node_that_does_not_own_the_shard() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&["--offer-timeout", "1500ms"]);
    let owner = cluster.owner(Duration::from_secs(60)).await;
    let gateway = (owner + 1) % 3;
    let ch = cluster.channel(gateway);

    // Nearest first; a decline passes the ride to the next nearest.
    let mut near = Driver::open(ch.clone(), "d-near", north(area(0), 300.0), false).await;
    let mut far = Driver::open(ch.clone(), "d-far", north(area(0), 900.0), false).await;
    let mut rider = request(&ch, ride("r-1", "q-1", north(area(0), 0.0))).await;
    let first = within("first update", rider.message()).await.ok().flatten().unwrap_or_else(|| panic!("no trip"));
    assert_eq!(first.status, pb::TripStatus::Searching as i32);
    let offer = near.offer().await;
    assert_eq!(offer.trip.as_ref().map(|t| t.trip_id.as_str()), Some(first.trip_id.as_str()));
    near.reply(&offer, false).await;
    let offer = far.offer().await;
    far.reply(&offer, true).await;
    let assigned = until_status(&mut rider, pb::TripStatus::DriverAssigned).await;
    assert_eq!(assigned.driver_id, "d-far");

    // The driver moves the trip to its end; the rider sees each step.
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
        let progress = pb::TripProgress { trip_id: first.trip_id.clone(), status: status as i32 };
        far.send(DriverMsg::TripProgress(progress)).await;
        until_status(&mut rider, status).await;
    }

    // The same request again (a retry) is the same trip, not a new one.
    let mut again = request(&ch, ride("r-1", "q-1", north(area(0), 0.0))).await;
    let same = within("retry", again.message()).await.ok().flatten().unwrap_or_else(|| panic!("no trip"));
    assert_eq!(same.trip_id, first.trip_id);
    assert_eq!(same.status, pb::TripStatus::Completed as i32);

    // An offer nobody answers lapses and goes to the next driver.
    let mut silent = Driver::open(ch.clone(), "d-silent", north(area(1), 200.0), false).await;
    let mut next = Driver::open(ch.clone(), "d-next", north(area(1), 700.0), false).await;
    let mut rider = request(&ch, ride("r-2", "q-2", north(area(1), 0.0))).await;
    silent.offer().await;
    let offer = next.offer().await;
    next.reply(&offer, true).await;
    assert_eq!(until_status(&mut rider, pb::TripStatus::DriverAssigned).await.driver_id, "d-next");

    // A driver on auto-accept is assigned without an offer round trip.
    let mut auto = Driver::open(ch.clone(), "d-auto", north(area(2), 300.0), true).await;
    let mut rider = request(&ch, ride("r-3", "q-3", north(area(2), 0.0))).await;
    assert_eq!(until_status(&mut rider, pb::TripStatus::DriverAssigned).await.driver_id, "d-auto");
    loop {
        if let Event::Trip(trip) = auto.next().await {
            assert_eq!(trip.status, pb::TripStatus::DriverAssigned as i32);
            break;
        }
    }

    // A fleet speaks for its drivers: updates in a batch, offers out.
    let (fleet_tx, fleet_rx) = mpsc::channel(16);
    let fleet_send = |kind| pb::FleetMessage { kind: Some(kind) };
    fleet_tx.send(fleet_send(FleetMsg::Hello(pb::FleetHello { fleet_id: "f1".into() }))).await.ok();
    let mut fleet = within("fleet connect", FleetServiceClient::new(ch.clone()).connect(ReceiverStream::new(fleet_rx)))
        .await
        .unwrap_or_else(|e| panic!("fleet connect: {e}"))
        .into_inner();
    let update = pb::DriverUpdate {
        driver_id: "f1/car-1".into(),
        position: Some(north(area(3), 400.0)),
        available: Some(true),
        ..Default::default()
    };
    fleet_tx.send(fleet_send(FleetMsg::Updates(pb::DriverUpdateBatch { updates: vec![update] }))).await.ok();
    // The update is in once the engine reports the driver.
    let mut admin = AdminServiceClient::new(ch.clone());
    loop {
        let nearby = pb::NearbyRequest { center: Some(north(area(3), 0.0)), radius_m: 1_000.0, ..Default::default() };
        let found = within("nearby", admin.nearby_drivers(nearby)).await.map(|r| r.into_inner().drivers.len());
        if found.is_ok_and(|n| n == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rider = request(&ch, ride("r-4", "q-4", north(area(3), 0.0))).await;
    let offer = loop {
        let event = within("a fleet event", fleet.message()).await.ok().flatten().and_then(|e| e.kind);
        if let Some(Event::Offer(offer)) = event {
            break offer;
        }
    };
    assert_eq!(offer.driver_id, "f1/car-1");
    let reply = pb::OfferReply { offer_id: offer.offer_id.clone(), accept: true };
    fleet_tx.send(fleet_send(FleetMsg::OfferReply(reply))).await.ok();
    assert_eq!(until_status(&mut rider, pb::TripStatus::DriverAssigned).await.driver_id, "f1/car-1");

    // A rider cancels a search; everyone reading the trip sees it.
    let mut rider = request(&ch, ride("r-5", "q-5", north(area(4), 0.0))).await;
    let searching = until_status(&mut rider, pb::TripStatus::Searching).await;
    let cancel = pb::CancelRideRequest { trip_id: searching.trip_id.clone(), reason: "changed my mind".into() };
    let cancelled = within("cancel", RiderServiceClient::new(ch.clone()).cancel_ride(cancel))
        .await
        .unwrap_or_else(|e| panic!("cancel: {e}"))
        .into_inner();
    assert_eq!(cancelled.status, pb::TripStatus::Cancelled as i32);
    until_status(&mut rider, pb::TripStatus::Cancelled).await;
    // Read through the owner too: one engine, whichever node is asked.
    let got = RiderServiceClient::new(cluster.channel(owner))
        .get_trip(pb::GetTripRequest { trip_id: searching.trip_id.clone() })
        .await
        .unwrap_or_else(|e| panic!("get_trip: {e}"))
        .into_inner();
    assert_eq!(got.status, pb::TripStatus::Cancelled as i32);
}

async fn http_get(url: &str) -> (u16, String) {
    let response =
        reqwest::Client::new().get(url).timeout(STEP).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_side_answers_for_the_owner_on_every_node() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&["--http-listen", "127.0.0.1:0"]);
    let owner = cluster.owner(Duration::from_secs(60)).await;
    let gateway = (owner + 1) % 3;
    // A ride through one node...
    let mut rider = request(&cluster.channel(gateway), ride("r-h", "q-h", north(CENTRE, 0.0))).await;
    until_status(&mut rider, pb::TripStatus::Searching).await;
    // ...is counted by the owner's metrics and seen by its map API, read
    // through every node's HTTP side.
    for node in 0..3 {
        let http = &cluster.http[node];
        assert_eq!(http_get(&format!("http://{http}/healthz")).await.0, 200, "healthz on n{node}");
        let (status, metrics) = http_get(&format!("http://{http}/metrics")).await;
        assert_eq!(status, 200);
        assert!(
            metrics.lines().any(|l| l.starts_with("dispatch_ride_requests_total") && l.ends_with(" 1")),
            "n{node}'s /metrics does not show the owner's one ride"
        );
        let (status, stats) = http_get(&format!("http://{http}/api/stats")).await;
        assert_eq!(status, 200);
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap_or_else(|e| panic!("stats: {e}"));
        assert_eq!(stats["trips_open"]["searching"].as_u64(), Some(1), "n{node}'s /api/stats: {stats}");
        // The owner's epoch, which deploy/'s lease alerts and dashboard
        // watch, is there whichever node is asked.
        for name in common::deployed_metrics().iter().filter(|n| n.starts_with("dispatch_cluster_")) {
            let line = metrics.lines().find(|l| l.starts_with(&format!("{name} ")));
            let value = line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok());
            assert!(value.is_some_and(|v| v >= 1.0), "n{node}'s /metrics: {name} is {line:?}");
        }
    }
}

/// How far along a status is: a trip may only move up.
fn rank(status: i32) -> u8 {
    match pb::TripStatus::try_from(status) {
        Ok(pb::TripStatus::Searching) => 1,
        Ok(pb::TripStatus::DriverAssigned) => 2,
        Ok(pb::TripStatus::DriverArrived) => 3,
        Ok(pb::TripStatus::InProgress) => 4,
        Ok(pb::TripStatus::Completed | pb::TripStatus::Cancelled | pb::TripStatus::NoDriverFound) => 5,
        _ => 0,
    }
}

/// What the clients of a load saw.
#[derive(Default)]
struct Book {
    /// Request id -> (trip id, the furthest status a rider was told).
    acked: HashMap<String, (String, i32)>,
    /// When each acknowledgement arrived.
    acked_at: Vec<Instant>,
    /// A retried request that came back as another trip.
    duplicates: Vec<String>,
}

type Shared = Arc<Mutex<Book>>;

fn book(shared: &Shared) -> std::sync::MutexGuard<'_, Book> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drivers and riders on every node, reconnecting through the next node
/// whenever a stream breaks.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    book: Shared,
}

const CENTRE: (f64, f64) = (37.5665, 126.9780);

impl Load {
    fn start(cluster: &Cluster, drivers: usize, riders: usize) -> Self {
        let channels: Arc<Vec<Channel>> = Arc::new((0..3).map(|i| cluster.channel(i)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let book = Shared::default();
        let mut tasks = Vec::new();
        // Half the drivers have sessions of their own, half speak through
        // three fleets (one starting on each node).
        let own = drivers / 2;
        for d in 0..own {
            tasks.push(tokio::spawn(drive(d, channels.clone(), stop.clone())));
        }
        for f in 0..3 {
            let cars: Vec<usize> = (own..drivers).filter(|d| d % 3 == f).collect();
            tasks.push(tokio::spawn(fleet(f, cars, channels.clone(), stop.clone())));
        }
        for r in 0..riders {
            tasks.push(tokio::spawn(ride_on(r, channels.clone(), stop.clone(), book.clone())));
        }
        Self { stop, tasks, book }
    }

    fn acked(&self) -> usize {
        book(&self.book).acked.len()
    }

    async fn wait_for_acks(&self, more: usize, limit: Duration) {
        let target = self.acked() + more;
        let start = Instant::now();
        while self.acked() < target {
            assert!(start.elapsed() < limit, "fewer than {more} rides acknowledged within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Book {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(STEP, task).await;
        }
        Arc::try_unwrap(self.book).map_or_else(
            |shared| std::mem::take(&mut *book(&shared)),
            |m| m.into_inner().unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// A driver on auto-accept that moves every trip it gets to its end.
async fn drive(d: usize, channels: Arc<Vec<Channel>>, stop: Arc<AtomicBool>) {
    let id = format!("drv-{d}");
    let at = north(CENTRE, 100.0 + d as f64 * 60.0);
    let mut attempt = d;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let channel = channels[attempt % channels.len()].clone();
        let hello = pb::Hello {
            driver_id: id.clone(),
            position: Some(at),
            available: true,
            auto_accept: true,
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.send(pb::DriverMessage { kind: Some(DriverMsg::Hello(hello)) }).await;
        let Ok(response) =
            pb::driver_service_client::DriverServiceClient::new(channel).connect(ReceiverStream::new(rx)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut events = response.into_inner();
        let mut trip: Option<(String, i32)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(150));
        loop {
            tokio::select! {
                event = events.message() => {
                    let Ok(Some(event)) = event else { break };
                    match event.kind {
                        Some(Event::SessionStarted(started)) => trip = started.current_trip.map(|t| (t.trip_id, t.status)),
                        Some(Event::Trip(t)) => trip = Some((t.trip_id, t.status)),
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some((trip_id, status)) = &trip {
                        let Some(next) = next_status(*status) else { continue };
                        let progress = pb::TripProgress { trip_id: trip_id.clone(), status: next as i32 };
                        let _ = tx.send(pb::DriverMessage { kind: Some(DriverMsg::TripProgress(progress)) }).await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next status a driver moves its trip to, if any.
fn next_status(status: i32) -> Option<pb::TripStatus> {
    match pb::TripStatus::try_from(status) {
        Ok(pb::TripStatus::DriverAssigned) => Some(pb::TripStatus::DriverArrived),
        Ok(pb::TripStatus::DriverArrived) => Some(pb::TripStatus::InProgress),
        Ok(pb::TripStatus::InProgress) => Some(pb::TripStatus::Completed),
        _ => None,
    }
}

/// A fleet gateway speaking for `cars` (drivers `fleet-F/car-D`, on
/// auto-accept): their positions in a batch every 300 ms, every trip moved
/// to its end; a broken session is opened again through the next node, and
/// the cars registered again.
async fn fleet(f: usize, cars: Vec<usize>, channels: Arc<Vec<Channel>>, stop: Arc<AtomicBool>) {
    let fleet_id = format!("fleet-{f}");
    let send = |kind| pb::FleetMessage { kind: Some(kind) };
    // Trip id -> (driver, status), across sessions.
    let mut trips: HashMap<String, (String, i32)> = HashMap::new();
    let mut attempt = f;
    while !stop.load(Ordering::Relaxed) {
        let channel = channels[attempt % channels.len()].clone();
        attempt += 1;
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.send(send(FleetMsg::Hello(pb::FleetHello { fleet_id: fleet_id.clone() }))).await;
        let Ok(response) = FleetServiceClient::new(channel).connect(ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut events = response.into_inner();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                event = events.message() => {
                    let Ok(Some(event)) = event else { break };
                    if let Some(Event::Trip(trip)) = event.kind {
                        trips.insert(trip.trip_id.clone(), (trip.driver_id.clone(), trip.status));
                    }
                }
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let updates = cars
                        .iter()
                        .map(|d| pb::DriverUpdate {
                            driver_id: format!("{fleet_id}/car-{d}"),
                            position: Some(north(CENTRE, 100.0 + *d as f64 * 60.0)),
                            available: Some(true),
                            auto_accept: true,
                            ..Default::default()
                        })
                        .collect();
                    if tx.send(send(FleetMsg::Updates(pb::DriverUpdateBatch { updates }))).await.is_err() {
                        break;
                    }
                    trips.retain(|_, (_, status)| next_status(*status).is_some());
                    for (trip_id, (driver_id, status)) in &trips {
                        if let Some(next) = next_status(*status) {
                            let progress = pb::FleetTripProgress { driver_id: driver_id.clone(), trip_id: trip_id.clone(), status: next as i32 };
                            let _ = tx.send(send(FleetMsg::TripProgress(progress))).await;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rider asking for one ride after another; a broken stream is picked up
/// again with the same request id through another node.
async fn ride_on(r: usize, channels: Arc<Vec<Channel>>, stop: Arc<AtomicBool>, shared: Shared) {
    let mut n = 0;
    let mut attempt = r;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (rider, request_id) = (format!("rider-{r}-{n}"), format!("q-{r}-{n}"));
        let request = ride(&rider, &request_id, north(CENTRE, (r * 150) as f64));
        let mut known: Option<String> = None;
        'attach: while !stop.load(Ordering::Relaxed) {
            attempt += 1;
            let channel = channels[attempt % channels.len()].clone();
            let mut client = RiderServiceClient::new(channel);
            let call = client.request_ride(request.clone());
            let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(3), call).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = response.into_inner();
            while let Ok(Ok(Some(trip))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                let mut book = book(&shared);
                match &known {
                    None => {
                        known = Some(trip.trip_id.clone());
                        book.acked_at.push(Instant::now());
                    }
                    Some(id) if *id != trip.trip_id => book.duplicates.push(request_id.clone()),
                    Some(_) => {}
                }
                let entry = book.acked.entry(request_id.clone()).or_insert((trip.trip_id.clone(), trip.status));
                if rank(trip.status) > rank(entry.1) {
                    entry.1 = trip.status;
                }
                if rank(trip.status) == 5 {
                    break 'attach;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every acknowledged trip is there and at least as far along; no driver
/// holds two open trips. Returns how many trips fleet drivers and drivers
/// with their own sessions got.
async fn check_nothing_lost(cluster: &Cluster, book: &Book) -> (usize, usize) {
    let (mut by_fleets, mut by_own) = (0, 0);
    assert!(book.duplicates.is_empty(), "requests that became two trips: {:?}", book.duplicates);
    let alive = (0..3).find(|i| cluster.nodes[*i].is_some()).unwrap_or_else(|| panic!("no node alive"));
    let mut riders = RiderServiceClient::new(cluster.channel(alive));
    let mut open_by_driver: HashMap<String, Vec<String>> = HashMap::new();
    for (request_id, (trip_id, seen)) in &book.acked {
        let mut tries = 0;
        let trip = loop {
            match riders.get_trip(pb::GetTripRequest { trip_id: trip_id.clone() }).await {
                Ok(trip) => break trip.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("acknowledged trip {trip_id} (request {request_id}) lost: {status}"),
            }
        };
        assert!(
            rank(trip.status) >= rank(*seen),
            "trip {trip_id} went back: riders saw {seen}, the cluster has {}",
            trip.status
        );
        if trip.driver_id.starts_with("fleet-") {
            by_fleets += 1;
        } else if !trip.driver_id.is_empty() {
            by_own += 1;
        }
        if !trip.driver_id.is_empty() && rank(trip.status) < 5 {
            open_by_driver.entry(trip.driver_id.clone()).or_default().push(trip_id.clone());
        }
    }
    for (driver, trips) in open_by_driver {
        assert!(trips.len() <= 1, "driver {driver} holds {trips:?}");
    }
    (by_fleets, by_own)
}

/// Waits until a node other than `dead` owns the shard and answers.
async fn failover(cluster: &Cluster, dead: usize) -> Duration {
    let start = Instant::now();
    loop {
        let owner = cluster.owner(Duration::from_secs(30)).await;
        if owner != dead {
            let mut admin = AdminServiceClient::new(cluster.channel(owner));
            if admin.get_stats(pb::GetStatsRequest::default()).await.is_ok() {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no new owner within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_under_load_loses_no_acknowledged_trip() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(&[]);
    cluster.owner(Duration::from_secs(60)).await;
    let load = Load::start(&cluster, 30, 8);
    load.wait_for_acks(20, Duration::from_secs(30)).await;
    let mut times = Vec::new();
    for _ in 0..3 {
        let owner = cluster.owner(Duration::from_secs(30)).await;
        // A moment chosen by the load, not by the clock: some rides are in
        // flight at every kill.
        load.wait_for_acks(5 + rand::random_range(0..10), Duration::from_secs(30)).await;
        cluster.kill_node(owner);
        let took = failover(&cluster, owner).await;
        times.push(took);
        cluster.start_node(owner);
        load.wait_for_acks(10, Duration::from_secs(30)).await;
    }
    let book = load.stop().await;
    times.sort();
    eprintln!(
        "failover after SIGKILL of the owner (lease 2 s): {:?} (median {:?}, max {:?}); {} rides acknowledged",
        times,
        times[times.len() / 2],
        times[times.len() - 1],
        book.acked.len()
    );
    for took in &times {
        assert!(*took < Duration::from_secs(5), "failover took {took:?}, over the 5 s target");
    }
    let (by_fleets, by_own) = check_nothing_lost(&cluster, &book).await;
    assert!(by_fleets > 0 && by_own > 0, "trips by fleet drivers {by_fleets}, by own sessions {by_own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_server_under_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(&[]);
    cluster.owner(Duration::from_secs(60)).await;
    let load = Load::start(&cluster, 30, 8);
    load.wait_for_acks(20, Duration::from_secs(30)).await;
    // The server leading the trip stream: the hardest one to lose.
    let leader = stream_leader(&cluster).await;
    let killed_at = Instant::now();
    cluster.nats.kill_server(leader);
    load.wait_for_acks(30, Duration::from_secs(30)).await;
    cluster.nats.start_server(leader);
    load.wait_for_acks(10, Duration::from_secs(30)).await;
    let book = load.stop().await;
    let mut times: Vec<Instant> = book.acked_at.iter().copied().filter(|t| *t >= killed_at).collect();
    times.sort();
    let stall = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let first = times.first().map(|t| *t - killed_at).unwrap_or_default();
    eprintln!(
        "after SIGKILL of the nats-server leading the trip stream: first ride acknowledged after {first:?}, \
         longest gap {stall:?}"
    );
    // Writes wait for the stream's replicas to elect a new leader; the
    // servers' Raft election timeout is 4 to 9 s, so that is the floor.
    assert!(first.max(stall) < Duration::from_secs(12), "dispatch stalled {:?}", first.max(stall));
    check_nothing_lost(&cluster, &book).await;
}

/// `dispatchd --cluster URLS --lease-ttl TTL --shards N` as a node joining,
/// run to its end: whether it succeeded, and what it said.
fn join_with(urls: &str, ttl: &str, shards: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["--cluster", urls, "--node-id", "n9", "--listen", "127.0.0.1:0", "--http-listen", "off"])
        .args(["--cluster-listen", "127.0.0.1:0", "--lease-ttl", ttl, "--shards", shards, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The live nodes' ids, as their keys in `dispatch_nodes` say.
async fn live_nodes(cluster: &Cluster) -> Vec<String> {
    let js = cluster.jetstream().await;
    let Ok(kv) = js.get_key_value("dispatch_nodes").await else { return Vec::new() };
    let Ok(keys) = kv.keys().await else { return Vec::new() };
    let keys: Vec<String> = futures::TryStreamExt::try_collect(keys).await.unwrap_or_default();
    let mut nodes: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("node-"))
        .filter_map(|hex| {
            let bytes: Option<Vec<u8>> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
            String::from_utf8(bytes?).ok()
        })
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_count_is_the_clusters_and_nodes_say_they_are_live() {
    let _serial = SERIAL.lock().await;
    // A new cluster is not created with more shards than a cluster runs,
    // and nothing is stored on the way.
    {
        let nats = common::cluster::Nats::start();
        let urls = nats.urls();
        let joined = tokio::task::spawn_blocking(move || join_with(&urls, "2s", "2"));
        // A new JetStream cluster elects its leader first: give it a minute.
        let joined = tokio::time::timeout(Duration::from_secs(90), joined).await;
        let (ok, said) = joined.unwrap_or_else(|_| panic!("no answer")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!ok && said.contains("--shards 2") && said.contains("1 shard for now"), "{said}");
        let client = async_nats::connect(nats.urls().split(',').map(str::to_owned).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|e| panic!("connect to NATS: {e}"));
        let js = async_nats::jetstream::new(client);
        let meta = js.get_key_value("dispatch_cluster").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(meta.get("shards").await.unwrap_or_else(|e| panic!("{e}")).is_none());
    }

    let mut cluster = Cluster::start(&[]);
    let owner = cluster.owner(Duration::from_secs(60)).await;
    let js = cluster.jetstream().await;
    let meta = js.get_key_value("dispatch_cluster").await.unwrap_or_else(|e| panic!("{e}"));
    let count = meta.get("shards").await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_default();
    assert_eq!(&count[..], b"1");
    let all: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    let start = Instant::now();
    while live_nodes(&cluster).await != all {
        assert!(start.elapsed() < STEP, "live nodes: {:?}", live_nodes(&cluster).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A node with another count is refused, and says what to do.
    let urls = cluster.nats.urls();
    let joined = tokio::task::spawn_blocking(move || join_with(&urls, "2s", "4"));
    let (ok, said) = within("a refused join", joined).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!ok, "{said}");
    assert!(said.contains("in 1 shard(s)") && said.contains("--shards 4") && said.contains("--shards 1"), "{said}");
    // So is one with another lease TTL: it would renew too seldom.
    let urls = cluster.nats.urls();
    let joined = tokio::task::spawn_blocking(move || join_with(&urls, "6s", "1"));
    let (ok, said) = within("a refused join", joined).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!ok && said.contains("--lease-ttl 2s"), "{said}");

    // The owner stopping (SIGTERM) deletes its live key and gives its
    // lease up: another node holds it, and the stopped node is not live.
    let node = cluster.nodes[owner].take().unwrap_or_else(|| panic!("the owner runs"));
    signal(&node, "-TERM");
    let mut node = node;
    assert!(common::wait_exit(&mut node, STEP).success());
    // Deleted, not left to expire: its key's last word is a delete.
    let hex: String = format!("n{owner}").bytes().map(|b| format!("{b:02x}")).collect();
    let nodes = js.get_key_value("dispatch_nodes").await.unwrap_or_else(|e| panic!("{e}"));
    let last = nodes.entry(format!("node-{hex}")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(last.map(|e| e.operation), Some(async_nats::jetstream::kv::Operation::Delete));
    let next = cluster.owner(STEP).await;
    assert_ne!(next, owner);
    let rest: Vec<String> = all.iter().filter(|n| **n != format!("n{owner}")).cloned().collect();
    let start = Instant::now();
    while live_nodes(&cluster).await != rest {
        assert!(start.elapsed() < STEP, "live nodes: {:?}", live_nodes(&cluster).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_and_steps_down() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[]);
    let old = cluster.owner(Duration::from_secs(60)).await;
    let to_old = cluster.channel(old);
    // A trip the old owner acknowledged.
    let mut before = request(&to_old, ride("r-old", "q-old", north(CENTRE, 0.0))).await;
    let kept = until_status(&mut before, pb::TripStatus::Searching).await;
    // Paused with a request in its socket: it reads it only after waking.
    let stopped = cluster.nodes[old].as_ref().unwrap_or_else(|| panic!("no owner process"));
    signal(stopped, "-STOP");
    let late = tokio::spawn({
        let to_old = to_old.clone();
        async move { RiderServiceClient::new(to_old).request_ride(ride("r-late", "q-late", north(CENTRE, 50.0))).await }
    });
    // Another node takes over once the lease runs out.
    let start = Instant::now();
    let new = loop {
        if let Some(node) = cluster.holder().await
            && node != old
        {
            break node;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "nobody took over from the paused owner");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let to_new = cluster.channel(new);
    let mut after = request(&to_new, ride("r-new", "q-new", north(CENTRE, 100.0))).await;
    let fresh = until_status(&mut after, pb::TripStatus::Searching).await;
    signal(stopped, "-CONT");
    // The request the old owner read after waking was never acknowledged
    // by it: either refused, or answered by the new owner after a relay.
    if let Ok(Ok(Ok(response))) = tokio::time::timeout(STEP, late).await {
        let mut stream = response.into_inner();
        if let Ok(Ok(Some(trip))) = tokio::time::timeout(STEP, stream.message()).await {
            let got = RiderServiceClient::new(to_new.clone())
                .get_trip(pb::GetTripRequest { trip_id: trip.trip_id.clone() })
                .await;
            assert!(got.is_ok(), "a trip acknowledged after the pause is not in the new owner's log");
        }
    }
    // The old node now relays to the new owner: both trips through it.
    let start = Instant::now();
    loop {
        let mut riders = RiderServiceClient::new(to_old.clone());
        let a = riders.get_trip(pb::GetTripRequest { trip_id: kept.trip_id.clone() }).await;
        let b = riders.get_trip(pb::GetTripRequest { trip_id: fresh.trip_id.clone() }).await;
        if a.is_ok() && b.is_ok() {
            break;
        }
        assert!(start.elapsed() < STEP, "the old owner does not relay: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.holder().await, Some(new), "the lease moved back to the paused node");
    // No record written under the old epoch after the new owner's marker.
    let (markers, late_writes) = writes_by_epoch(&cluster).await;
    assert_eq!(markers, 1, "the stream keeps the newest owner marker only");
    assert_eq!(late_writes, 0, "records of a deposed owner landed after the new owner's marker");
}

/// Which nats-server leads the trip stream's replicas.
async fn stream_leader(cluster: &Cluster) -> usize {
    let mut stream =
        cluster.jetstream().await.get_stream("DISPATCH_SHARD_0").await.unwrap_or_else(|e| panic!("stream: {e}"));
    let info = stream.info().await.unwrap_or_else(|e| panic!("stream info: {e}"));
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).unwrap_or_default();
    leader.strip_prefix("nats").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("no stream leader: {leader:?}"))
}

/// Reads the whole trip stream: how many owner markers it holds, and how
/// many records carry an epoch older than the newest marker before them.
async fn writes_by_epoch(cluster: &Cluster) -> (usize, usize) {
    let js = cluster.jetstream().await;
    let stream = js.get_stream("DISPATCH_SHARD_0").await.unwrap_or_else(|e| panic!("stream: {e}"));
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut messages = consumer.messages().await.unwrap_or_else(|e| panic!("messages: {e}"));
    let (mut markers, mut late, mut epoch) = (0, 0, 0u64);
    while let Some(Ok(message)) = messages.next().await {
        let info_pending = message.info().map(|i| i.pending).unwrap_or(0);
        let written: u64 = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Dispatch-Epoch"))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        if message.subject.ends_with(".epoch") {
            markers += 1;
            epoch = epoch.max(written);
        } else if written < epoch {
            late += 1;
        }
        if info_pending == 0 {
            break;
        }
    }
    (markers, late)
}
