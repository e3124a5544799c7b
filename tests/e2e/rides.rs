//! Rides: matching, offers, progress, cancels, idempotency.

use dispatch_proto::pb::{self, driver_event::Kind as Event};
use tonic::Code;

use crate::drivers::wait_for_available;
use crate::harness::*;

#[tokio::test]
async fn the_first_message_is_the_trip_searching_and_the_nearest_driver_gets_the_offer() {
    let server = TestServer::start().await;
    let mut far = server.driver(hello("far", 2_000.0)).await;
    let mut near = server.driver(hello("near", 300.0)).await;
    let stream = server
        .riders()
        .request_ride(pb::RideRequest {
            rider_id: "r1".into(),
            request_id: "q1".into(),
            pickup: Some(pickup()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rider = RiderConn { stream: stream.into_inner(), trip_id: String::new(), requested_at_ms: 0 };
    let first = rider.next().await;
    assert_eq!(first.status(), pb::TripStatus::Searching);
    assert!(first.trip_id.starts_with("t-"), "{}", first.trip_id);
    assert_eq!(first.rider_id, "r1");
    let offer = near.expect_offer().await;
    assert_eq!(offer.driver_id, "near");
    let trip = offer.trip.unwrap_or_else(|| panic!("offer without trip"));
    assert_eq!(trip.trip_id, first.trip_id);
    assert!(offer.expires_at_ms > trip.requested_at_ms);
    assert_eq!(far.next_before_barrier().await, None, "only one driver at a time");
}

#[tokio::test]
async fn a_decline_withdraws_the_offer_and_the_next_nearest_gets_it() {
    let server = TestServer::start().await;
    let mut a = server.driver(hello("a", 100.0)).await;
    let mut b = server.driver(hello("b", 200.0)).await;
    let mut c = server.driver(hello("c", 300.0)).await;
    let mut rider = server.request("r1", "q1").await;
    let offer = a.expect_offer().await;
    a.reply(&offer, false).await;
    match a.next().await {
        Event::OfferWithdrawn(w) => {
            assert_eq!(
                (w.offer_id.as_str(), w.reason.as_str(), w.reason_code()),
                (offer.offer_id.as_str(), "declined", pb::WithdrawReason::Declined)
            )
        }
        other => panic!("{other:?}"),
    }
    let offer = b.expect_offer().await;
    b.reply(&offer, false).await;
    let offer = c.expect_offer().await;
    c.reply(&offer, true).await;
    assert_eq!(rider.until(pb::TripStatus::DriverAssigned).await.driver_id, "c");
}

#[tokio::test]
async fn an_expired_offer_is_withdrawn_and_passed_on() {
    let server = TestServer::with_timeouts(300, 60_000).await;
    let mut a = server.driver(hello("a", 100.0)).await;
    let mut b = server.driver(hello("b", 200.0)).await;
    let _rider = server.request("r1", "q1").await;
    let offer = a.expect_offer().await;
    match a.next().await {
        Event::OfferWithdrawn(w) => {
            assert_eq!(
                (w.offer_id.as_str(), w.reason.as_str(), w.reason_code()),
                (offer.offer_id.as_str(), "expired", pb::WithdrawReason::Expired)
            )
        }
        other => panic!("{other:?}"),
    }
    b.expect_offer().await;
    // Answering the lapsed offer is refused; the session goes on.
    a.reply(&offer, true).await;
    a.expect_rejected(Code::NotFound).await;
    assert_eq!(server.stats().await.offers_expired, 1);
}

#[tokio::test]
async fn an_auto_accept_driver_first_sees_the_trip_assigned() {
    let server = TestServer::start().await;
    let mut d = server.driver(auto_hello("auto", 400.0)).await;
    let mut rider = server.request("r1", "q1").await;
    let trip = d.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert_eq!(trip.trip_id, rider.trip_id);
    let seen = rider.until(pb::TripStatus::DriverAssigned).await;
    assert_eq!(seen.driver_id, "auto");
    assert!(seen.driver_position.is_some());
    assert!((seen.pickup_distance_m - 400.0).abs() < 2.0, "{}", seen.pickup_distance_m);
}

#[tokio::test]
async fn a_trip_runs_to_completion_and_the_rider_sees_the_car_coming() {
    let server = TestServer::start().await;
    let mut d = server.driver(hello("d1", 1_000.0)).await;
    let mut rider = server.request("r1", "q1").await;
    let offer = d.expect_offer().await;
    d.reply(&offer, true).await;
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    // Pings at 10 Hz for 1.2 s: the rider sees the car come closer, but at
    // most about once a second (one or two updates, not twelve).
    for i in 1..=12 {
        d.ping(north(1_000.0 - f64::from(i) * 50.0)).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut moves = Vec::new();
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
        d.progress(&rider.trip_id, status).await;
        d.expect_trip(status).await;
        if status == pb::TripStatus::DriverArrived {
            loop {
                let update = rider.next().await;
                if update.status() == status {
                    break;
                }
                moves.push(update.driver_position.map(|p| p.lat).unwrap_or_default());
            }
        }
    }
    assert!((1..=2).contains(&moves.len()), "position updates: {moves:?}");
    assert!(moves.iter().all(|&lat| lat < north(1_000.0).lat), "the rider sees the driver closer: {moves:?}");
    rider.until(pb::TripStatus::Completed).await;
    rider.expect_end().await;
    // Free again: the next ride comes to the same driver.
    let _next = server.request("r2", "q2").await;
    d.expect_offer().await;
    let stats = server.stats().await;
    assert_eq!((stats.trips_completed, stats.offers_accepted), (1, 1));
}

#[tokio::test]
async fn progress_out_of_order_or_for_another_trip_is_rejected() {
    let server = TestServer::start().await;
    let mut d = server.driver(auto_hello("d1", 100.0)).await;
    let rider = server.request("r1", "q1").await;
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    d.progress(&rider.trip_id, pb::TripStatus::Completed).await;
    d.expect_rejected(Code::FailedPrecondition).await;
    d.progress("t-999999", pb::TripStatus::DriverArrived).await;
    d.expect_rejected(Code::FailedPrecondition).await;
    // Nothing changed, and the session goes on.
    assert_eq!(
        server.get_trip(&rider.trip_id).await.map(|t| t.status()).map_err(|s| s.code()),
        Ok(pb::TripStatus::DriverAssigned)
    );
    d.progress(&rider.trip_id, pb::TripStatus::DriverArrived).await;
    d.expect_trip(pb::TripStatus::DriverArrived).await;
}

#[tokio::test]
async fn a_driver_cancel_before_pickup_sends_the_trip_to_someone_else() {
    let server = TestServer::start().await;
    let mut a = server.driver(auto_hello("a", 100.0)).await;
    let mut rider = server.request("r1", "q1").await;
    a.expect_trip(pb::TripStatus::DriverAssigned).await;
    let mut b = server.driver(hello("b", 600.0)).await;
    a.progress(&rider.trip_id, pb::TripStatus::Cancelled).await;
    a.expect_trip(pb::TripStatus::Cancelled).await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    let again = rider.next().await;
    assert_eq!((again.status(), again.driver_id.as_str()), (pb::TripStatus::Searching, ""));
    let offer = b.expect_offer().await;
    assert_eq!(offer.trip.map(|t| t.trip_id), Some(rider.trip_id.clone()));
    assert_eq!(a.next_before_barrier().await, None, "a is not offered the trip it gave up");
}

#[tokio::test]
async fn a_rider_cancel_withdraws_the_offer_or_frees_the_driver() {
    let server = TestServer::start().await;
    let mut d = server.driver(hello("d1", 100.0)).await;
    let mut rider = server.request("r1", "q1").await;
    let offer = d.expect_offer().await;
    let cancel = |trip_id: String| {
        let mut riders = server.riders();
        async move { riders.cancel_ride(pb::CancelRideRequest { trip_id, reason: "late".into() }).await }
    };
    let trip = cancel(rider.trip_id.clone()).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
    assert_eq!((trip.status(), trip.cancel_reason.as_str()), (pb::TripStatus::Cancelled, "late"));
    match d.next().await {
        Event::OfferWithdrawn(w) => assert_eq!(
            (w.reason_code(), w.offer_id, w.reason.as_str()),
            (pb::WithdrawReason::RiderCancelled, offer.offer_id, "rider cancelled")
        ),
        other => panic!("{other:?}"),
    }
    rider.until(pb::TripStatus::Cancelled).await;
    rider.expect_end().await;

    let rider = server.request("r1", "q2").await;
    let offer = d.expect_offer().await;
    d.reply(&offer, true).await;
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    cancel(rider.trip_id.clone()).await.unwrap_or_else(|e| panic!("{e}"));
    d.expect_trip(pb::TripStatus::Cancelled).await;

    let rider = server.request("r1", "q3").await;
    let offer = d.expect_offer().await;
    d.reply(&offer, true).await;
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress] {
        d.progress(&rider.trip_id, status).await;
        d.expect_trip(status).await;
    }
    let late = cancel(rider.trip_id.clone()).await.map(|_| ());
    assert_eq!(late.map_err(|s| s.code()), Err(Code::FailedPrecondition));
}

#[tokio::test]
async fn the_same_request_id_follows_the_same_trip() {
    let server = TestServer::start().await;
    let mut d = server.driver(hello("d1", 100.0)).await;
    let mut first = server.request("r1", "same").await;
    let offer = d.expect_offer().await;
    let second = server.request("r1", "same").await;
    assert_eq!(second.trip_id, first.trip_id);
    assert_eq!(d.next_before_barrier().await, None, "no second offer, no second car");
    d.reply(&offer, true).await;
    first.until(pb::TripStatus::DriverAssigned).await;
    let mut second = second;
    second.until(pb::TripStatus::DriverAssigned).await;
    assert_eq!(server.stats().await.trips_searching + server.stats().await.trips_active, 1);
}

#[tokio::test]
async fn a_dropped_rider_stream_loses_nothing_and_get_trip_reads_the_trip() {
    let server = TestServer::start().await;
    let mut d = server.driver(auto_hello("d1", 100.0)).await;
    let rider = server.request("r1", "q1").await;
    let trip_id = rider.trip_id.clone();
    drop(rider);
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    let trip = server.get_trip(&trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((trip.status(), trip.driver_id.as_str()), (pb::TripStatus::DriverAssigned, "d1"));
    // Re-attaching with the same request id resumes the stream where it is.
    let mut again = server.request("r1", "q1").await;
    assert_eq!(again.trip_id, trip_id);
    d.progress(&trip_id, pb::TripStatus::DriverArrived).await;
    again.until(pb::TripStatus::DriverArrived).await;
    assert_eq!(server.get_trip("t-424242").await.map_err(|s| s.code()), Err(Code::NotFound));
}

#[tokio::test]
async fn with_nobody_in_range_the_trip_searches_then_ends_no_driver_found() {
    let server = TestServer::with_timeouts(10_000, 600).await;
    let mut d = server.driver(hello("far", 8_000.0)).await;
    let mut rider = server.request("r1", "q1").await;
    assert_eq!(d.next_before_barrier().await, None);
    let end = rider.until(pb::TripStatus::NoDriverFound).await;
    assert_eq!(end.driver_id, "");
    rider.expect_end().await;
    assert_eq!(server.stats().await.trips_no_driver, 1);
}

#[tokio::test]
async fn a_driver_moving_into_range_gets_the_waiting_trip() {
    let server = TestServer::start().await;
    let mut d = server.driver(hello("d1", 7_000.0)).await;
    let mut rider = server
        .request_with(pb::RideRequest {
            rider_id: "r1".into(),
            request_id: "q1".into(),
            pickup: Some(pickup()),
            max_pickup_distance_m: 2_000.0,
            ..Default::default()
        })
        .await;
    assert_eq!(d.next_before_barrier().await, None);
    d.ping(north(1_500.0)).await;
    let offer = d.expect_offer().await;
    d.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    assert!((trip.pickup_distance_m - 1_500.0).abs() < 2.0, "{}", trip.pickup_distance_m);
}

#[tokio::test]
async fn when_drivers_are_scarce_earlier_requests_are_served_first() {
    let server = TestServer::start().await;
    let mut first = server.request("r1", "q1").await;
    let mut second = server.request("r2", "q2").await;
    let mut d = server.driver(hello("d1", 100.0)).await;
    let offer = d.expect_offer().await;
    assert_eq!(offer.trip.as_ref().map(|t| t.trip_id.clone()), Some(first.trip_id.clone()));
    d.reply(&offer, true).await;
    first.until(pb::TripStatus::DriverAssigned).await;
    let d2 = server.driver(auto_hello("d2", 100.0)).await;
    assert_eq!(second.until(pb::TripStatus::DriverAssigned).await.driver_id, "d2");
    drop(d2);
    wait_for_available(&server, 0).await;
}

#[tokio::test]
async fn only_drivers_of_the_requested_service_type_are_offered() {
    let server = TestServer::start().await;
    let mut taxi = server.driver(hello("taxi", 100.0)).await;
    let mut van =
        server.driver(pb::Hello { service_types: vec![pb::ServiceType::Van.into()], ..hello("van", 900.0) }).await;
    let _rider = server
        .request_with(pb::RideRequest {
            rider_id: "r1".into(),
            request_id: "q1".into(),
            pickup: Some(pickup()),
            service_type: pb::ServiceType::Van.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(van.expect_offer().await.driver_id, "van");
    assert_eq!(taxi.next_before_barrier().await, None);
}

#[tokio::test]
async fn an_ended_trip_is_read_whole_from_the_engine_and_its_request_id_still_finds_it() {
    let server = TestServer::start().await;
    let mut d = server.driver(hello("d1", 1_000.0)).await;
    let mut rider = server.request("r1", "q1").await;
    let offer = d.expect_offer().await;
    d.reply(&offer, true).await;
    let assigned = d.expect_trip(pb::TripStatus::DriverAssigned).await;
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
        d.progress(&rider.trip_id, status).await;
        d.expect_trip(status).await;
    }
    rider.until(pb::TripStatus::Completed).await;
    // Ended, the trip is no longer in the table of open trips: GetTrip is
    // answered by the engine, from its packed copy, with nothing lost.
    let ended = server.get_trip(&rider.trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (ended.status(), ended.driver_id.as_str(), ended.rider_id.as_str()),
        (pb::TripStatus::Completed, "d1", "r1")
    );
    assert_eq!(ended.pickup_distance_m, assigned.pickup_distance_m);
    assert!(ended.pickup_distance_m > 900.0, "{ended:?}");
    assert_eq!(ended.pickup_eta_s, assigned.pickup_eta_s);
    assert_eq!(ended.dropoff, Some(north(3_000.0)));
    assert_eq!(ended.driver_position, None, "an ended trip shows no driver position");
    // A retry of the same request finds the ended trip, not a new ride.
    let mut again = server.request("r1", "q1").await;
    assert_eq!(again.trip_id, rider.trip_id);
    // Its one update was the trip as it ended; then the stream ends.
    again.expect_end().await;
    assert_eq!(server.stats().await.ride_requests, 1);
}

/// A server whose riders hear of the car moving at most every
/// `interval_ms`, with a trip assigned to a driver 1 km away.
async fn assigned_with_position_interval(interval_ms: i64) -> (TestServer, DriverConn, RiderConn) {
    let mut config = dispatch_server::ServerConfig::default();
    config.engine.rider_position_interval_ms = interval_ms;
    let server = TestServer::with(config).await;
    let mut d = server.driver(auto_hello("d1", 1_000.0)).await;
    let mut rider = server.request("r1", "q1").await;
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    (server, d, rider)
}

#[tokio::test]
async fn the_rider_position_interval_sets_how_often_a_rider_sees_the_car_move() {
    let same = |seen: Option<pb::LatLng>, at: &pb::LatLng| {
        seen.is_some_and(|p| (p.lat - at.lat).abs() < 1e-9 && (p.lng - at.lng).abs() < 1e-9)
    };
    // 0: every ping reaches the rider, however close together.
    let (server, d, mut rider) = assigned_with_position_interval(0).await;
    for i in 1..=3 {
        let at = north(1_000.0 - f64::from(i) * 100.0);
        d.ping(at).await;
        let seen = rider.next().await;
        assert_eq!(seen.status(), pb::TripStatus::DriverAssigned);
        assert!(same(seen.driver_position, &at), "ping {i}: {:?}", seen.driver_position);
    }
    server.shutdown().await;

    // An hour: no ping reaches the rider by itself; the next change (the
    // car arriving) shows where the car is.
    let (server, d, mut rider) = assigned_with_position_interval(3_600_000).await;
    let before = server.stats().await.location_updates;
    let at = north(100.0);
    d.ping(at).await;
    server.stats_until("the ping to be applied", |s| s.location_updates > before).await;
    d.progress(&rider.trip_id, pb::TripStatus::DriverArrived).await;
    let seen = rider.next().await;
    assert_eq!(seen.status(), pb::TripStatus::DriverArrived, "a position update came first: {seen:?}");
    assert!(same(seen.driver_position, &at), "{:?}", seen.driver_position);
}
