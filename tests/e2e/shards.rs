//! `--shards N` in one process, through the real gRPC API: the same rides,
//! step by step, on a server with one engine for the map and on one with
//! the map in 16 shards, must go to the same drivers.

use std::collections::HashMap;

use dispatch_proto::pb::{self, driver_event::Kind as Event, fleet_message::Kind as FleetMsg};
use dispatch_server::ServerConfig;
use dispatch_shard::ShardMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::harness::{PICKUP, RiderConn, TestServer, within};

/// Shards of the sharded twin.
const SHARDS: u16 = 16;

/// Drivers per fleet; two fleets, each spread over the whole city.
const PER_FLEET: usize = 150;

/// Rides asked for, one at a time.
const RIDES: usize = 400;

/// A point of the city: `(lat, lng)` offsets in degrees from City Hall.
fn at(dlat: f64, dlng: f64) -> pb::LatLng {
    pb::LatLng { lat: PICKUP.0 + dlat, lng: PICKUP.1 + dlng }
}

/// A server with `shards`, offers and searches that never lapse during
/// the test (the steps decide every answer), and riders told of every
/// move of their car.
async fn server(shards: u16) -> TestServer {
    let mut config = ServerConfig { shards, ..ServerConfig::default() };
    config.engine.offer_timeout_ms = 600_000;
    config.engine.search_timeout_ms = 600_000;
    config.engine.rider_position_interval_ms = 0;
    TestServer::with(config).await
}

/// One server and its fleets' streams, the events of all merged.
struct Twin {
    server: TestServer,
    fleets: Vec<mpsc::Sender<pb::FleetMessage>>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Twin {
    async fn start(shards: u16) -> Self {
        let server = server(shards).await;
        let (tx, events) = mpsc::unbounded_channel();
        let mut fleets = Vec::new();
        for f in 0..2 {
            let (fleet, mut stream) = server.fleet(&format!("fleet-{f}")).await.into_parts();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(kind) = event.kind
                        && tx.send(kind).is_err()
                    {
                        return;
                    }
                }
            });
            fleets.push(fleet);
        }
        Self { server, fleets, events }
    }

    async fn place(&self, fleet: usize, moves: &[(String, pb::LatLng)]) {
        let updates = moves
            .iter()
            .map(|(id, p)| pb::DriverUpdate {
                driver_id: id.clone(),
                position: Some(*p),
                available: Some(true),
                ..Default::default()
            })
            .collect();
        self.send(fleet, FleetMsg::Updates(pb::DriverUpdateBatch { updates })).await;
    }

    async fn send(&self, fleet: usize, kind: FleetMsg) {
        self.fleets[fleet].send(pb::FleetMessage { kind: Some(kind) }).await.unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Waits until every driver is held by an engine at the position the
    /// test last gave it (none in flight between shards).
    async fn settled(&self, drivers: &HashMap<String, (usize, pb::LatLng)>) {
        let request =
            pb::NearbyRequest { center: Some(at(0.0, 0.0)), limit: 1_000, radius_m: 40_000.0, ..Default::default() };
        within("every driver in place", async {
            loop {
                let seen = self.server.admin().nearby_drivers(request.clone()).await.unwrap_or_else(|e| panic!("{e}"));
                let seen: HashMap<String, pb::LatLng> =
                    seen.into_inner().drivers.into_iter().filter_map(|d| Some((d.driver_id, d.position?))).collect();
                if seen.len() == drivers.len() && drivers.iter().all(|(id, (_, p))| seen.get(id) == Some(p)) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await;
    }

    /// The next offer to any of the fleets' drivers.
    async fn offer(&mut self) -> pb::Offer {
        within("an offer", async {
            loop {
                match self.events.recv().await {
                    Some(Event::Offer(offer)) => return offer,
                    Some(Event::Rejected(r)) => panic!("rejected: {r:?}"),
                    Some(_) => {}
                    None => panic!("the fleets' streams ended"),
                }
            }
        })
        .await
    }

    async fn reply(&self, fleet: usize, offer: &pb::Offer, accept: bool) {
        let reply = pb::OfferReply { offer_id: offer.offer_id.clone(), accept };
        self.send(fleet, FleetMsg::OfferReply(reply)).await;
    }

    async fn progress(&self, fleet: usize, driver: &str, trip_id: &str, status: pb::TripStatus) {
        let progress =
            pb::FleetTripProgress { driver_id: driver.into(), trip_id: trip_id.into(), status: status.into() };
        self.send(fleet, FleetMsg::TripProgress(progress)).await;
    }

    async fn request(&self, n: usize, pickup: pb::LatLng) -> RiderConn {
        self.server
            .request_with(pb::RideRequest {
                rider_id: format!("rider-{n}"),
                request_id: format!("ride-{n}"),
                pickup: Some(pickup),
                dropoff: Some(at(0.1, 0.1)),
                ..Default::default()
            })
            .await
    }
}

/// Thousands of seeded steps over Seoul, where 16 shards put several
/// borders: drivers of two fleets (each spread over every shard) move, some
/// across borders; rides are asked for, declined and accepted, and
/// completed. At every offer the sharded server offers the same driver
/// the single engine does, and some of those wins cross a border.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_shards_offer_every_ride_to_the_driver_one_engine_offers() {
    let mut one = Twin::start(1).await;
    let mut many = Twin::start(SHARDS).await;
    let map = ShardMap::new(u32::from(SHARDS)).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = StdRng::seed_from_u64(26);
    let mut drivers: HashMap<String, (usize, pb::LatLng)> = HashMap::new();
    let shard_of = |p: &pb::LatLng| map.shard_of(dispatch_testkit::geo::point(p.lat, p.lng)).0;
    for fleet in 0..2 {
        let placed: Vec<(String, pb::LatLng)> = (0..PER_FLEET)
            .map(|i| (format!("fleet-{fleet}/d{i}"), at(rng.random_range(-0.12..0.12), rng.random_range(-0.15..0.15))))
            .collect();
        for twin in [&one, &many] {
            twin.place(fleet, &placed).await;
        }
        drivers.extend(placed.into_iter().map(|(id, p)| (id, (fleet, p))));
    }
    let shards_used: std::collections::HashSet<u16> = drivers.values().map(|(_, p)| shard_of(p)).collect();
    assert!(shards_used.len() >= 4, "the city spans only {} shards", shards_used.len());
    // Trips under way: driver, its fleet, and each twin's trip id and
    // rider stream.
    let mut busy: Vec<(String, usize, [RiderConn; 2])> = Vec::new();
    let (mut offers, mut across) = (0, 0);
    for n in 0..RIDES {
        // Idle drivers move; some cross a border.
        let mut moves: [Vec<(String, pb::LatLng)>; 2] = Default::default();
        let mut idle: Vec<String> = drivers.keys().filter(|id| !busy.iter().any(|(d, ..)| d == *id)).cloned().collect();
        idle.sort();
        for _ in 0..6 {
            let id = idle[rng.random_range(0..idle.len())].clone();
            let fleet = drivers[&id].0;
            let to = at(rng.random_range(-0.12..0.12), rng.random_range(-0.15..0.15));
            moves[fleet].push((id.clone(), to));
            drivers.insert(id, (fleet, to));
        }
        for twin in [&one, &many] {
            for (fleet, moved) in moves.iter().enumerate() {
                twin.place(fleet, moved).await;
            }
            twin.settled(&drivers).await;
        }
        // A ride near the centre, offered until one driver accepts.
        let pickup = at(rng.random_range(-0.05..0.05), rng.random_range(-0.06..0.06));
        let mut riders = [one.request(n, pickup).await, many.request(n, pickup).await];
        let mut declines = 0;
        let driver = loop {
            let (a, b) = (one.offer().await, many.offer().await);
            assert_eq!(
                a.driver_id, b.driver_id,
                "ride {n}: one engine offered {}, sixteen shards {}",
                a.driver_id, b.driver_id
            );
            let distance = |o: &pb::Offer| o.trip.as_ref().map(|t| t.pickup_distance_m);
            assert_eq!(distance(&a), distance(&b), "ride {n}: the offers' pickup distances differ");
            offers += 1;
            if shard_of(&drivers[&a.driver_id].1) != shard_of(&pickup) {
                across += 1;
            }
            let accept = declines == 2 || rng.random_bool(0.7);
            let fleet = drivers[&a.driver_id].0;
            one.reply(fleet, &a, accept).await;
            many.reply(fleet, &b, accept).await;
            if accept {
                break a.driver_id;
            }
            declines += 1;
        };
        for rider in &mut riders {
            rider.until(pb::TripStatus::DriverAssigned).await;
        }
        busy.push((driver.clone(), drivers[&driver].0, riders));
        // Now and then the oldest ride ends.
        if busy.len() > 12 || rng.random_bool(0.4) {
            let (driver, fleet, mut riders) = busy.remove(0);
            for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
                for (twin, rider) in [&one, &many].into_iter().zip(&riders) {
                    twin.progress(fleet, &driver, &rider.trip_id, status).await;
                }
                for rider in &mut riders {
                    rider.until(status).await;
                }
            }
        }
    }
    assert!(across >= 10, "only {across} of {offers} offers went to a driver across a border");
    let (a, b) = (one.server.stats().await, many.server.stats().await);
    assert_eq!((a.trips_completed, a.drivers_connected), (b.trips_completed, b.drivers_connected));
    assert_eq!(b.drivers_connected, drivers.len() as u64);
    one.server.shutdown().await;
    many.server.shutdown().await;
}

/// A point `metres` east of `from` (west for negative metres).
fn east(from: pb::LatLng, metres: f64) -> pb::LatLng {
    let moved = dispatch_testkit::geo::destination(
        dispatch_testkit::geo::point(from.lat, from.lng),
        std::f64::consts::FRAC_PI_2,
        metres,
    );
    pb::LatLng { lat: moved.lat(), lng: moved.lng() }
}

/// A border of the 16-shard map east of City Hall: the last point, in
/// steps of 10 m, still in City Hall's shard, and the shards either side.
fn border(map: &ShardMap) -> (pb::LatLng, u16, u16) {
    let shard = |p: pb::LatLng| map.shard_of(dispatch_testkit::geo::point(p.lat, p.lng)).0;
    let start = at(0.0, 0.0);
    let home = shard(start);
    let mut metres = 0.0;
    while shard(east(start, metres + 10.0)) == home {
        metres += 10.0;
        assert!(metres < 100_000.0, "no border within 100 km east of City Hall");
    }
    (east(start, metres + 5.0), home, shard(east(start, metres + 10.0)))
}

/// A driver's app drives across a border mid-offer, accepts, drives to and
/// fro across it on the trip (the rider's stream follows every move), ends
/// the trip on the far side and takes the next ride there: its session
/// follows it from shard to shard, nothing is lost and it never holds two
/// rides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_crossing_borders_mid_offer_and_mid_trip_keeps_its_session_and_its_ride() {
    let map = ShardMap::new(u32::from(SHARDS)).unwrap_or_else(|e| panic!("{e}"));
    let (line, west_shard, east_shard) = border(&map);
    let (west, far_east) = (east(line, -400.0), east(line, 400.0));
    let shard = |p: pb::LatLng| map.shard_of(dispatch_testkit::geo::point(p.lat, p.lng)).0;
    assert_eq!((shard(west), shard(far_east)), (west_shard, east_shard));
    let server = server(SHARDS).await;
    let hello = pb::Hello { driver_id: "d1".into(), position: Some(west), available: true, ..Default::default() };
    let mut driver = server.driver(hello).await;
    let pickup = east(west, -200.0);
    let mut rider = server.request_with(ride("r1", pickup)).await;
    let offer = driver.expect_offer().await;
    // Mid-offer, across the border and back, then across again.
    for p in [far_east, west, far_east] {
        driver.ping(p).await;
    }
    driver.reply(&offer, true).await;
    let assigned = driver.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert_eq!(rider.until(pb::TripStatus::DriverAssigned).await.driver_id, "d1");
    // Mid-trip, to and fro: the rider sees each position.
    for (i, metres) in [300.0, -300.0, 350.0, -350.0, 380.0].into_iter().enumerate() {
        let p = east(line, metres + i as f64);
        driver.ping(p).await;
        within("the rider to see the car move", async {
            loop {
                let trip = rider.next().await;
                if trip.driver_position == Some(p) {
                    return;
                }
            }
        })
        .await;
    }
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
        driver.progress(&assigned.trip_id, status).await;
        driver.expect_trip(status).await;
        rider.until(status).await;
    }
    // Free on the east side: the next ride there is offered to it.
    let mut second = server.request_with(ride("r2", east(far_east, 100.0))).await;
    let offer = driver.expect_offer().await;
    driver.reply(&offer, true).await;
    driver.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert_eq!(second.until(pb::TripStatus::DriverAssigned).await.driver_id, "d1");
    let stats = server.stats().await;
    assert_eq!((stats.drivers_connected, stats.drivers_on_trip, stats.trips_completed), (1, 1, 1));
    // Hanging up reaches the shard holding it now.
    driver.hang_up();
    server.stats_until("the driver gone", |s| s.drivers_connected == 0).await;
    server.shutdown().await;
}

fn ride(rider: &str, pickup: pb::LatLng) -> pb::RideRequest {
    pb::RideRequest {
        rider_id: rider.into(),
        request_id: format!("{rider}-ride"),
        pickup: Some(pickup),
        dropoff: Some(at(0.1, 0.1)),
        ..Default::default()
    }
}

/// Two rides on both sides of a border race for the one driver on it,
/// round after round: exactly one gets it, the other its side's next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rides_across_a_border_racing_for_one_driver_never_share_it() {
    let map = ShardMap::new(u32::from(SHARDS)).unwrap_or_else(|e| panic!("{e}"));
    let (line, _, _) = border(&map);
    let (west, east_pickup) = (east(line, -300.0), east(line, 300.0));
    let server = server(SHARDS).await;
    let auto = |id: &str, p: pb::LatLng| pb::Hello {
        driver_id: id.into(),
        position: Some(p),
        available: true,
        auto_accept: true,
        ..Default::default()
    };
    let _middle = server.driver(auto("middle", line)).await;
    let _western = server.driver(auto("western", east(west, -500.0))).await;
    let _eastern = server.driver(auto("eastern", east(east_pickup, 500.0))).await;
    let mut middle_won = [0, 0];
    for round in 0..20 {
        let (mut a, mut b) = tokio::join!(
            server.request_with(ride(&format!("w{round}"), west)),
            server.request_with(ride(&format!("e{round}"), east_pickup))
        );
        let (a_trip, b_trip) =
            tokio::join!(a.until(pb::TripStatus::DriverAssigned), b.until(pb::TripStatus::DriverAssigned));
        match (a_trip.driver_id.as_str(), b_trip.driver_id.as_str()) {
            ("middle", "eastern") => middle_won[0] += 1,
            ("western", "middle") => middle_won[1] += 1,
            other => panic!("round {round}: the rides went to {other:?}"),
        }
        for trip in [&a_trip, &b_trip] {
            let cancel = pb::CancelRideRequest { trip_id: trip.trip_id.clone(), ..Default::default() };
            within("cancel", server.riders().cancel_ride(cancel)).await.unwrap_or_else(|e| panic!("cancel: {e}"));
        }
        server.stats_until("all three free", |s| s.drivers_available == 3).await;
    }
    assert_eq!(middle_won[0] + middle_won[1], 20);
    server.shutdown().await;
}

/// A sharded server's trips come back from their shards' logs after a
/// restart; a start with another shard count is refused, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_recovers_its_trips_and_the_count_is_fixed_with_the_data() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().to_path_buf();
    let config = || {
        let mut config = ServerConfig { shards: 4, ..ServerConfig::default() };
        let mut log = dispatch_server::TripLogConfig::new(&path);
        log.fsync = dispatch_server::Fsync::Never;
        config.trip_log = Some(log);
        config
    };
    let server = TestServer::in_dir(config(), dir).await;
    // Rides across the city, so that several shards log some.
    let map = ShardMap::new(4).unwrap_or_else(|e| panic!("{e}"));
    let mut trips = Vec::new();
    let mut shards = std::collections::HashSet::new();
    for n in 0..12 {
        let pickup = at(-0.3 + 0.05 * n as f64, -0.3 + 0.05 * n as f64);
        shards.insert(map.shard_of(dispatch_testkit::geo::point(pickup.lat, pickup.lng)));
        trips.push(server.request_with(ride(&format!("r{n}"), pickup)).await.trip_id);
    }
    assert!(shards.len() >= 3, "the pickups fall in {} shards", shards.len());
    let dir = server.stop_keeping_data().await;
    let server = TestServer::in_dir(config(), dir).await;
    for id in &trips {
        let trip = server.get_trip(id).await.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(trip.status(), pb::TripStatus::Searching, "{id}");
    }
    let dir = server.stop_keeping_data().await;
    let mut other = config();
    other.shards = 2;
    match dispatch_server::Server::start(other).await {
        Err(dispatch_server::ServerError::Shards(why)) => assert!(why.contains("--shards 4"), "{why}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a start with 2 shards over the logs of 4 was not refused"),
    }
    drop(dir);
}

/// Ranking by road across a border: on a grid of streets 100 m apart
/// straddling a border, the pickup's nearest driver by the straight line
/// is in its own shard (3 blocks north and 2 east: 361 m, 500 m by road),
/// and the nearest by road in the next shard (4 blocks east along the
/// street: 400 m). With the roads the ride goes across the border, at the
/// road's distance and ETA, exactly as one engine would; without, it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_road_the_quicker_driver_across_a_border_gets_the_ride() {
    let map = ShardMap::new(u32::from(SHARDS)).unwrap_or_else(|e| panic!("{e}"));
    let (edge, home, _) = border(&map);
    let centre = dispatch_testkit::geo::point(edge.lat, edge.lng);
    let xml = dispatch_road::grid::grids_xml(&[(centre, 1_500.0)], 100.0);
    let roads = dispatch_road::from_xml(&xml, dispatch_road::DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    let roads: std::sync::Arc<dyn dispatch_core::roads::Roads> = std::sync::Arc::new(roads);
    // The grid's nodes: `north` and `east` blocks from the centre.
    let node = |north: f64, east_blocks: f64| {
        let p = dispatch_testkit::geo::destination(centre, 0.0, north * 100.0);
        let p = dispatch_testkit::geo::destination(p, std::f64::consts::FRAC_PI_2, east_blocks * 100.0);
        pb::LatLng { lat: p.lat(), lng: p.lng() }
    };
    let shard = |p: pb::LatLng| map.shard_of(dispatch_testkit::geo::point(p.lat, p.lng)).0;
    // The pickup two blocks west of the border's edge; the street driver
    // four blocks east of it, over the border; the diagonal one three
    // blocks north (or south) and two east, on the pickup's side.
    let pickup = node(0.0, -2.0);
    let street = node(0.0, 2.0);
    let diagonal = [node(3.0, 0.0), node(-3.0, 0.0)]
        .into_iter()
        .find(|&p| shard(p) == home)
        .unwrap_or_else(|| panic!("the border runs north-south here"));
    assert_eq!(shard(pickup), home);
    assert_ne!(shard(street), home, "four blocks east is over the border");

    for by_road in [true, false] {
        let mut config =
            ServerConfig { shards: SHARDS, roads: by_road.then(|| roads.clone()), ..ServerConfig::default() };
        config.engine.offer_timeout_ms = 600_000;
        let server = TestServer::with(config).await;
        let hello = |id: &str, at: pb::LatLng| pb::Hello {
            driver_id: id.into(),
            position: Some(at),
            available: true,
            ..Default::default()
        };
        let mut across = server.driver(hello("across", street)).await;
        let mut near = server.driver(hello("near", diagonal)).await;
        let request = pb::RideRequest {
            rider_id: "r".into(),
            request_id: "q".into(),
            pickup: Some(pickup),
            ..Default::default()
        };
        let mut rider = server.request_with(request).await;
        let (winner, loser) = if by_road { (&mut across, &mut near) } else { (&mut near, &mut across) };
        let offer = winner.expect_offer().await;
        winner.reply(&offer, true).await;
        let trip = rider.until(pb::TripStatus::DriverAssigned).await;
        assert_eq!(loser.next_before_barrier().await, None, "by road: {by_road}");
        if by_road {
            assert_eq!(trip.driver_id, "across");
            assert!((trip.pickup_distance_m - 400.0).abs() < 5.0, "{trip:?}");
            // Residential streets at 30 km/h: 12 s a block.
            assert!((trip.pickup_eta_s - 48.0).abs() < 1.0, "{trip:?}");
            assert_eq!(server.stats().await.road_fallbacks, 0);
        } else {
            assert_eq!(trip.driver_id, "near");
            assert!((trip.pickup_distance_m - 360.6).abs() < 2.0, "{trip:?}");
        }
    }
}
