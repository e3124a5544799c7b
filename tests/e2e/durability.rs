//! Nothing acknowledged is lost: trips come back after a restart on the
//! same data directory, and a driver who drops keeps a trip for the grace
//! period only.

use dispatch_proto::pb::{self, driver_event::Kind as Event, driver_message::Kind as DriverMsg};
use dispatch_server::ServerConfig;

use crate::harness::*;

#[tokio::test]
async fn trips_come_back_after_a_restart_where_they_were() {
    let server = TestServer::start().await;
    let d1 = server.driver(auto_hello("d1", 100.0)).await;
    let mut arrived = server.request("r1", "q1").await;
    arrived.until(pb::TripStatus::DriverAssigned).await;
    d1.progress(&arrived.trip_id, pb::TripStatus::DriverArrived).await;
    arrived.until(pb::TripStatus::DriverArrived).await;
    // d1 is busy and nobody else is on: this one searches.
    let searching = server.request("r2", "q2").await;
    let cancelled = server.request("r3", "q3").await;
    let mut riders = server.riders();
    let cancel = pb::CancelRideRequest { trip_id: cancelled.trip_id.clone(), reason: "late".into() };
    within("cancel", riders.cancel_ride(cancel)).await.unwrap_or_else(|e| panic!("{e}"));
    let dir = server.stop_keeping_data().await;

    let server = TestServer::in_dir(ServerConfig::default(), dir).await;
    let trip = server.get_trip(&arrived.trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((trip.status(), trip.driver_id.as_str()), (pb::TripStatus::DriverArrived, "d1"));
    let trip = server.get_trip(&cancelled.trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((trip.status(), trip.cancel_reason.as_str()), (pb::TripStatus::Cancelled, "late"));
    assert_eq!(server.get_trip(&searching.trip_id).await.map(|t| t.status()).ok(), Some(pb::TripStatus::Searching));

    // The driver gets the trip back in session_started and carries on.
    let mut d1 = server.open_driver(DriverMsg::Hello(hello("d1", 20.0))).await;
    match d1.next().await {
        Event::SessionStarted(s) => {
            let current = s.current_trip.unwrap_or_else(|| panic!("no current trip after the restart"));
            assert_eq!(
                (current.trip_id.as_str(), current.status()),
                (arrived.trip_id.as_str(), pb::TripStatus::DriverArrived)
            );
        }
        other => panic!("{other:?}"),
    }
    // The rider re-attaches with the same request id: same trip, same place.
    let again = server.reattach("r1", "q1").await;
    assert_eq!(again.trip_id, arrived.trip_id);
    d1.progress(&arrived.trip_id, pb::TripStatus::InProgress).await;
    d1.expect_trip(pb::TripStatus::InProgress).await;

    // The search goes on: a driver who comes on duty gets it.
    let mut d2 = server.driver(hello("d2", 300.0)).await;
    let offer = d2.expect_offer().await;
    assert_eq!(offer.trip.map(|t| t.trip_id), Some(searching.trip_id.clone()));
    // And a new request never reuses an id.
    let fresh = server.request("r4", "q4").await;
    for old in [&arrived.trip_id, &searching.trip_id, &cancelled.trip_id] {
        assert_ne!(&fresh.trip_id, old);
    }
}

#[tokio::test]
async fn a_search_whose_deadline_passed_while_down_ends_no_driver_found() {
    let mut config = ServerConfig::default();
    config.engine.search_timeout_ms = 300;
    let server = TestServer::with(config.clone()).await;
    let rider = server.request("r1", "q1").await;
    let requested_at = rider.requested_at_ms;
    let dir = server.stop_keeping_data().await;
    // The deadline passes while the server is down.
    wait_until_past(requested_at + 300).await;
    let server = TestServer::in_dir(config, dir).await;
    assert_eq!(server.get_trip(&rider.trip_id).await.map(|t| t.status()).ok(), Some(pb::TripStatus::NoDriverFound));
}

fn with_grace(ms: i64) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.engine.driver_grace_ms = ms;
    config
}

#[tokio::test]
async fn a_driver_gone_past_the_grace_period_loses_the_trip_to_another() {
    let server = TestServer::with(with_grace(300)).await;
    let d1 = server.driver(auto_hello("d1", 100.0)).await;
    let mut rider = server.request("r1", "q1").await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    let mut d2 = server.driver(hello("d2", 900.0)).await;
    d1.hang_up();
    // Nothing for the grace period, then the rider hears it is searching
    // and the trip goes to d2 (never back to d1).
    let back = rider.next().await;
    assert_eq!((back.status(), back.driver_id.as_str()), (pb::TripStatus::Searching, ""));
    let offer = d2.expect_offer().await;
    assert_eq!(offer.trip.map(|t| t.trip_id), Some(rider.trip_id.clone()));
    let mut d1 = server.open_driver(DriverMsg::Hello(hello("d1", 100.0))).await;
    match d1.next().await {
        Event::SessionStarted(s) => assert!(s.current_trip.is_none(), "{s:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_ride_in_progress_waits_for_its_driver() {
    let server = TestServer::with(with_grace(200)).await;
    let d1 = server.driver(auto_hello("d1", 100.0)).await;
    let mut rider = server.request("r1", "q1").await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress] {
        d1.progress(&rider.trip_id, status).await;
        rider.until(status).await;
    }
    d1.hang_up();
    // The engine has seen the driver go, and has ticked past the grace
    // period counted from then.
    server.stats_until("d1's session to close", |s| s.drivers_connected == 0).await;
    server.engine_past(unix_ms() + 200).await;
    assert_eq!(server.get_trip(&rider.trip_id).await.map(|t| t.status()).ok(), Some(pb::TripStatus::InProgress));
    let mut d1 = server.open_driver(DriverMsg::Hello(hello("d1", 100.0))).await;
    match d1.next().await {
        Event::SessionStarted(s) => {
            assert_eq!(s.current_trip.map(|t| t.status()), Some(pb::TripStatus::InProgress));
        }
        other => panic!("{other:?}"),
    }
    d1.progress(&rider.trip_id, pb::TripStatus::Completed).await;
    rider.until(pb::TripStatus::Completed).await;
}

#[tokio::test]
async fn a_rider_who_drops_re_attaches_with_the_same_request_id() {
    let server = TestServer::start().await;
    let first = server.request("r1", "q1").await;
    let trip_id = first.trip_id.clone();
    drop(first);
    let mut d1 = server.driver(hello("d1", 100.0)).await;
    let offer = d1.expect_offer().await;
    d1.reply(&offer, true).await;
    d1.expect_trip(pb::TripStatus::DriverAssigned).await;
    let mut again = server.reattach("r1", "q1").await;
    assert_eq!(again.trip_id, trip_id);
    d1.progress(&trip_id, pb::TripStatus::DriverArrived).await;
    again.until(pb::TripStatus::DriverArrived).await;
}
