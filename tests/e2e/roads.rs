//! Ranking by road through the real gRPC API, on the generated river city:
//! the driver across the river loses to the farther one on the same bank,
//! and the trip's pickup distance and ETA are the drive's.

use std::sync::Arc;

use dispatch_proto::pb;
use dispatch_testkit::roads::{self as city, at};

use crate::harness::*;

fn point(p: dispatch_core::geo::LatLng) -> pb::LatLng {
    pb::LatLng { lat: p.lat(), lng: p.lng() }
}

async fn server(by_road: bool) -> TestServer {
    server_matching(by_road, "nearest").await
}

/// The generated river city's road network.
fn river_city() -> Arc<dispatch_road::RoadNetwork> {
    let network = dispatch_road::from_xml(&city::xml(), dispatch_road::DEFAULT_SNAP_M);
    Arc::new(network.unwrap_or_else(|e| panic!("{e}")))
}

/// `rider` asks for a ride at `pickup`.
async fn ride(server: &TestServer, rider: &str, pickup: dispatch_core::geo::LatLng) -> RiderConn {
    server
        .request_with(pb::RideRequest {
            rider_id: rider.into(),
            request_id: format!("q-{rider}"),
            pickup: Some(point(pickup)),
            ..Default::default()
        })
        .await
}

async fn server_matching(by_road: bool, matching: &str) -> TestServer {
    let roads = by_road.then(|| river_city() as Arc<dyn dispatch_core::roads::Roads>);
    let mut config = dispatch_server::ServerConfig { roads, ..Default::default() };
    config.engine.matching = matching.parse().unwrap_or_else(|e: String| panic!("{e}"));
    TestServer::with(config).await
}

fn driver_at(id: &str, position: dispatch_core::geo::LatLng) -> pb::Hello {
    pb::Hello { driver_id: id.into(), position: Some(point(position)), available: true, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_across_the_river_loses_to_the_farther_one_on_the_same_bank() {
    let pickup = at(6.0, 10.0);
    // Nearest-first, and a batch (its candidates costed by road too).
    for (by_road, matching) in [(true, "nearest"), (false, "nearest"), (true, "batch:1s"), (false, "batch:1s")] {
        let server = server_matching(by_road, matching).await;
        // 100 m away over the water, 1.7 km by the nearer bridge.
        let mut across = server.driver(driver_at("across", at(5.0, 10.0))).await;
        // 500 m away along the same street.
        let mut same_bank = server.driver(driver_at("same-bank", at(6.0, 15.0))).await;
        let mut rider = ride(&server, "r1", pickup).await;
        let (winner, loser) = if by_road { (&mut same_bank, &mut across) } else { (&mut across, &mut same_bank) };
        let offer = winner.expect_offer().await;
        winner.reply(&offer, true).await;
        let trip = rider.until(pb::TripStatus::DriverAssigned).await;
        assert_eq!(loser.next_before_barrier().await, None, "by road: {by_road}, {matching}");
        if by_road {
            assert_eq!(trip.driver_id, "same-bank");
            assert!((trip.pickup_distance_m - 500.0).abs() < 5.0, "{trip:?}");
            // Residential streets at 30 km/h: a minute.
            assert!((trip.pickup_eta_s - 500.0 / (30.0 / 3.6)).abs() < 1.0, "{trip:?}");
        } else {
            assert_eq!(trip.driver_id, "across");
            assert!((trip.pickup_distance_m - 100.0).abs() < 1.0, "{trip:?}");
        }
        assert_eq!(server.stats().await.road_fallbacks, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_street_counts_and_a_pickup_off_the_map_falls_back_to_the_straight_line() {
    let server = server(true).await;
    let row = city::ONEWAY_ROW as f64;
    // East of the pickup on the one-way (eastward) street: 300 m straight,
    // but round the block, 500 m. West of it: 400 m, driven straight.
    let mut against = server.driver(driver_at("against", at(row, 13.0))).await;
    let mut with = server.driver(driver_at("with", at(row, 6.0))).await;
    let mut rider = ride(&server, "r1", at(row, 10.0)).await;
    let offer = with.expect_offer().await;
    with.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    assert!((trip.pickup_distance_m - 400.0).abs() < 5.0, "{trip:?}");
    assert_eq!(against.next_before_barrier().await, None);
    // A pickup a kilometre out at sea: no road reaches it, so the last
    // driver is ranked (and its ETA reckoned) by the straight line, and
    // the server counts it.
    let sea = at(-10.0, 13.0);
    let mut rider = ride(&server, "r2", sea).await;
    let offer = against.expect_offer().await;
    against.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    let crow = at(row, 13.0).distance_m(sea);
    assert!((trip.pickup_distance_m - crow).abs() < 1.0, "{trip:?}, straight line {crow}");
    assert_eq!(server.stats().await.road_fallbacks, 1);
}

/// `max_pickup_eta` by road: the driver 100 m away across the river is
/// 1.7 km and over three minutes by road, so with two minutes at most it
/// is never offered the ride, which waits for a driver who can come in
/// time (a minute along the same bank).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_too_many_minutes_away_by_road_is_not_offered_the_ride() {
    let roads = Some(river_city() as Arc<dyn dispatch_core::roads::Roads>);
    let mut config = dispatch_server::ServerConfig { roads, ..Default::default() };
    config.engine.max_pickup_eta_ms = 120_000;
    let server = TestServer::with(config).await;
    let mut across = server.driver(driver_at("across", at(5.0, 10.0))).await;
    let mut rider = ride(&server, "r1", at(6.0, 10.0)).await;
    let mut same_bank = server.driver(driver_at("same-bank", at(6.0, 15.0))).await;
    let offer = same_bank.expect_offer().await;
    same_bank.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    assert_eq!(trip.driver_id, "same-bank");
    assert!(trip.pickup_eta_s <= 120.0, "{trip:?}");
    assert_eq!(across.next_before_barrier().await, None);
}

/// The rider's stream updates the ETA by road as the car comes: the driver
/// across the river drives round by the bridge, and each position the
/// rider sees comes with the drive from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_riders_eta_follows_the_car_by_road() {
    let network = river_city();
    let roads = Some(network.clone() as Arc<dyn dispatch_core::roads::Roads>);
    let mut config = dispatch_server::ServerConfig { roads, ..Default::default() };
    config.engine.rider_position_interval_ms = 0;
    config.engine.eta_refresh_ms = 50;
    let server = TestServer::with(config).await;
    let pickup = at(6.0, 10.0);
    let mut driver = server.driver(driver_at("across", at(5.0, 10.0))).await;
    let mut rider = ride(&server, "r1", pickup).await;
    let offer = driver.expect_offer().await;
    driver.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    let mut last = trip.pickup_eta_s;
    let mut seen_at = unix_ms();
    // East along the far bank, over the bridge, back west.
    for (row, col) in [(5.0, 14.0), (5.0, 18.0), (6.0, 18.0), (6.0, 14.0)] {
        // Past the refresh interval since the last one was seen (so since
        // the engine reckoned it).
        wait_until_past(seen_at + 50).await;
        driver.ping(point(at(row, col))).await;
        let update = loop {
            let update = rider.next().await;
            if update.driver_position.is_some_and(|p| (p.lat, p.lng) == (at(row, col).lat(), at(row, col).lng())) {
                break update;
            }
        };
        seen_at = unix_ms();
        let drive = network.leg(at(row, col), pickup).unwrap_or_else(|| panic!("no drive"));
        assert!((update.pickup_eta_s - drive.seconds).abs() < 0.01, "{update:?} against {drive:?}");
        assert!(update.pickup_eta_s < last, "{update:?} after {last}");
        last = update.pickup_eta_s;
    }
    let fetched = server.get_trip(&trip.trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetched.pickup_eta_s, last);
}
