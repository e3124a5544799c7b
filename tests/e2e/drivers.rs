//! Driver sessions: hello first, one session per driver, what a lost
//! session means.

use dispatch_proto::pb::{self, driver_event::Kind as Event, driver_message::Kind as DriverMsg};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn the_first_message_must_be_hello() {
    let server = TestServer::start().await;
    let mut conn = server.open_driver(DriverMsg::Availability(pb::SetAvailability { available: true })).await;
    assert_eq!(conn.expect_end().await.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_bad_hello_ends_the_stream_with_invalid_argument() {
    let server = TestServer::start().await;
    let mut conn = server.open_driver(DriverMsg::Hello(hello("", 0.0))).await;
    assert_eq!(conn.expect_end().await.code(), Code::InvalidArgument);
    let mut conn = server.open_driver(DriverMsg::Hello(hello(&"x".repeat(129), 0.0))).await;
    assert_eq!(conn.expect_end().await.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn hello_is_answered_with_session_started() {
    let server = TestServer::start().await;
    let mut conn = server.open_driver(DriverMsg::Hello(hello("d1", 10.0))).await;
    match conn.next().await {
        Event::SessionStarted(s) => {
            assert_eq!(s.driver_id, "d1");
            assert!(s.server_time_ms > 1_600_000_000_000, "{}", s.server_time_ms);
            assert!(s.current_trip.is_none());
        }
        other => panic!("{other:?}"),
    }
}

/// A location sent right behind the hello, on a thousand sessions at once
/// and again, is applied after the hello and never refused as coming
/// before it (hellos and locations travel in different queues to the
/// engine), with one engine and with the map in shards. The barrier after
/// it, a reply to an offer no shard made, is refused as unknown whichever
/// shard holds the driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_right_behind_the_hello_is_never_taken_before_it() {
    const DRIVERS: usize = 1_000;
    const WAVES: usize = 3;
    for shards in [1, 16] {
        let server =
            std::sync::Arc::new(TestServer::with(dispatch_server::ServerConfig { shards, ..Default::default() }).await);
        let mut conns = Vec::new();
        for wave in 0..WAVES {
            let opening: Vec<_> = (0..DRIVERS)
                .map(|n| {
                    let server = std::sync::Arc::clone(&server);
                    tokio::spawn(async move {
                        // No position in the hello: the location is the first fix.
                        let driver_id = format!("d{wave}-{n}");
                        let first = pb::Hello { driver_id, available: true, ..Default::default() };
                        let mut conn = server.open_driver(DriverMsg::Hello(first)).await;
                        conn.ping(north(10.0 * n as f64)).await;
                        match conn.next().await {
                            Event::SessionStarted(_) => conn,
                            other => panic!("expected session_started, got {other:?}"),
                        }
                    })
                })
                .collect();
            for task in opening {
                conns.push(within("a driver's session", task).await.unwrap_or_else(|e| panic!("{e}")));
            }
            let sent = ((wave + 1) * DRIVERS) as u64;
            let stats =
                server.stats_until("every driver's first location applied", |s| s.location_updates >= sent).await;
            assert_eq!(stats.location_updates, sent, "with {shards} shard(s)");
        }
        for conn in &mut conns {
            assert_eq!(conn.next_before_barrier().await, None, "with {shards} shard(s)");
        }
    }
}

#[tokio::test]
async fn a_second_session_for_a_driver_ends_the_first_with_aborted() {
    let server = TestServer::start().await;
    let mut first = server.driver(hello("d1", 10.0)).await;
    let mut second = server.driver(hello("d1", 10.0)).await;
    assert_eq!(first.expect_end().await.code(), Code::Aborted);
    // The second session is the driver now: it gets the offer.
    let _rider = server.request("r1", "q1").await;
    second.expect_offer().await;
}

#[tokio::test]
async fn a_lost_session_stops_offers_at_once_and_its_offer_passes_on() {
    let server = TestServer::start().await;
    let mut near = server.driver(hello("near", 100.0)).await;
    let mut far = server.driver(hello("far", 900.0)).await;
    let mut rider = server.request("r1", "q1").await;
    near.expect_offer().await;
    near.hang_up();
    // The offer counts as declined: the next nearest gets it.
    let offer = far.expect_offer().await;
    far.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    assert_eq!(trip.driver_id, "far");
    // And the driver who left is never offered anything again.
    let _second = server.request("r2", "q2").await;
    let stats = server.stats().await;
    assert_eq!(stats.drivers_connected, 1);
    assert_eq!(stats.offers_declined, 1);
}

#[tokio::test]
async fn a_driver_reconnecting_mid_trip_gets_the_trip_in_session_started() {
    let server = TestServer::start().await;
    let conn = server.driver(auto_hello("d1", 100.0)).await;
    let mut rider = server.request("r1", "q1").await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    conn.hang_up();
    let mut again = server.open_driver(DriverMsg::Hello(hello("d1", 50.0))).await;
    match again.next().await {
        Event::SessionStarted(s) => {
            let trip = s.current_trip.unwrap_or_else(|| panic!("no current trip"));
            assert_eq!(trip.trip_id, rider.trip_id);
            assert_eq!(trip.status(), pb::TripStatus::DriverAssigned);
        }
        other => panic!("{other:?}"),
    }
    again.progress(&rider.trip_id, pb::TripStatus::DriverArrived).await;
    again.expect_trip(pb::TripStatus::DriverArrived).await;
    rider.until(pb::TripStatus::DriverArrived).await;
}

#[tokio::test]
async fn going_off_duty_stops_offers() {
    let server = TestServer::start().await;
    let off = server.driver(hello("off", 10.0)).await;
    let mut on = server.driver(hello("on", 800.0)).await;
    off.send(DriverMsg::Availability(pb::SetAvailability { available: false })).await;
    // The availability change and the request travel different streams:
    // wait until the engine has applied it.
    wait_for_available(&server, 1).await;
    let _rider = server.request("r1", "q1").await;
    assert_eq!(on.expect_offer().await.driver_id, "on");
}

/// Waits until the engine counts `n` drivers available.
pub async fn wait_for_available(server: &TestServer, n: u64) {
    server.stats_until("drivers to become available", |s| s.drivers_available == n).await;
}
