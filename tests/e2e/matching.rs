//! Matching policies through the real gRPC API.

use dispatch_proto::pb;
use dispatch_proto::pb::driver_event::Kind as Event;
use dispatch_server::ServerConfig;

use crate::harness::*;

/// Over gRPC, the batch gives each of two riders its better driver where
/// nearest-first would have sent the first rider's nearest driver away
/// from the second (400 m + 1,900 m against 900 m + 600 m). Both riders
/// wait before any driver is there, and both drivers arrive in one fleet
/// batch (applied in one engine round), so the batch that offers them sees
/// both riders and both drivers however slow the machine is.
#[tokio::test]
async fn a_batch_gives_two_riders_their_better_drivers() {
    let mut config = ServerConfig::default();
    config.engine.matching = "batch:1s".parse().unwrap_or_else(|e: String| panic!("{e}"));
    let server = TestServer::with(config).await;
    let mut fleet = server.fleet("f").await;
    let ride = |rider: &str, metres: f64| pb::RideRequest {
        rider_id: rider.into(),
        request_id: rider.into(),
        pickup: Some(north(metres)),
        ..Default::default()
    };
    let a = server.request_with(ride("a", 0.0)).await;
    let b = server.request_with(ride("b", 1_000.0)).await;
    fleet.batch(vec![update("f/d1", 400.0), update("f/d2", -900.0)]).await;
    let mut offered = std::collections::BTreeMap::new();
    while offered.len() < 2 {
        match fleet.next().await {
            Event::Offer(o) => offered.insert(o.driver_id.clone(), o.trip.map(|t| t.trip_id).unwrap_or_default()),
            other => panic!("expected offers, got {other:?}"),
        };
    }
    let offered: Vec<(&str, &str)> = offered.iter().map(|(d, t)| (d.as_str(), t.as_str())).collect();
    assert_eq!(offered, [("f/d1", b.trip_id.as_str()), ("f/d2", a.trip_id.as_str())]);
}

/// Over gRPC, `broadcast:3` offers a ride to the three nearest at once
/// (two app drivers and a fleet's driver); the first to accept gets the
/// trip, the rider sees that driver, and the others see the offer
/// withdrawn as `taken` and are free for the next ride.
#[tokio::test]
async fn a_broadcast_goes_to_three_drivers_and_the_first_accept_wins() {
    let mut config = ServerConfig::default();
    config.engine.matching = "broadcast:3".parse().unwrap_or_else(|e: String| panic!("{e}"));
    let server = TestServer::with(config).await;
    let mut near = server.driver(hello("near", 100.0)).await;
    let mut second = server.driver(hello("second", 300.0)).await;
    let mut fleet = server.fleet("partner").await;
    fleet.batch(vec![update("partner/p-1", 200.0)]).await;
    let mut far = server.driver(hello("far", 2_000.0)).await;
    server.stats_until("four drivers available", |s| s.drivers_available == 4).await;
    let mut rider = server.request("r1", "k1").await;
    let to_near = near.expect_offer().await;
    let to_second = second.expect_offer().await;
    let to_fleet = match fleet.next().await {
        Event::Offer(offer) => offer,
        other => panic!("expected an offer to the fleet, got {other:?}"),
    };
    assert_eq!(to_fleet.driver_id, "partner/p-1");
    assert_eq!(far.next_before_barrier().await, None, "the fourth driver is not asked");
    // The second nearest answers first.
    second.reply(&to_second, true).await;
    let trip = second.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert_eq!(trip.driver_id, "second");
    assert_eq!(rider.until(pb::TripStatus::DriverAssigned).await.driver_id, "second");
    for (who, event, offer) in [("near", near.next().await, &to_near), ("fleet", fleet.next().await, &to_fleet)] {
        match event {
            Event::OfferWithdrawn(w) => {
                assert_eq!(
                    (w.offer_id.as_str(), w.reason.as_str(), w.reason_code()),
                    (offer.offer_id.as_str(), "taken", pb::WithdrawReason::Taken),
                    "{who}"
                )
            }
            other => panic!("{who}: expected the offer withdrawn, got {other:?}"),
        }
    }
    // The near driver's late accept finds nothing, and it is free again.
    near.reply(&to_near, true).await;
    near.expect_rejected(tonic::Code::NotFound).await;
    let stats = server.stats_until("three free, one on a trip", |s| s.drivers_available == 3).await;
    assert_eq!((stats.drivers_on_trip, stats.offers_withdrawn), (1, 2));
}

/// Over gRPC, forward dispatch: a driver carrying a rider to a dropoff
/// 200 m from a new pickup is offered it before a free driver 3 km away;
/// the rider sees that driver, `queued` and the estimated time to the door,
/// and, when the ride in progress completes, the same driver on the way
/// (`queued` false).
#[tokio::test]
async fn forward_dispatch_queues_the_next_ride_for_a_driver_finishing_nearby() {
    let mut config = ServerConfig::default();
    config.engine.forward_dispatch_m = 1_000.0;
    let server = TestServer::with(config).await;
    let mut busy = server.driver(hello("busy", 300.0)).await;
    let first = server
        .request_with(pb::RideRequest {
            rider_id: "first".into(),
            request_id: "first".into(),
            pickup: Some(north(300.0)),
            dropoff: Some(north(200.0)),
            ..Default::default()
        })
        .await;
    let offer = busy.expect_offer().await;
    busy.reply(&offer, true).await;
    busy.expect_trip(pb::TripStatus::DriverAssigned).await;
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress] {
        busy.progress(&first.trip_id, status).await;
        busy.expect_trip(status).await;
    }
    let mut far = server.driver(hello("far", 3_000.0)).await;
    server.stats_until("the far driver is available", |s| s.drivers_available == 1).await;
    let mut rider = server.request("second", "k2").await;
    let offer = busy.expect_offer().await;
    assert_eq!(offer.trip.as_ref().map(|t| t.trip_id.as_str()), Some(rider.trip_id.as_str()));
    assert_eq!(far.next_before_barrier().await, None, "the free driver 3 km away is not asked");
    busy.reply(&offer, true).await;
    let queued = busy.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert!(queued.queued && queued.trip_id == rider.trip_id, "{queued:?}");
    let seen = rider.until(pb::TripStatus::DriverAssigned).await;
    assert_eq!((seen.driver_id.as_str(), seen.queued), ("busy", true));
    assert!((seen.pickup_distance_m - 300.0).abs() < 5.0, "100 m to the dropoff and 200 m on: {seen:?}");
    // And the time to the door, at the default 22 km/h: about 49 s.
    assert!((seen.pickup_eta_s - seen.pickup_distance_m / (22.0 / 3.6)).abs() < 0.01, "{seen:?}");
    // The queued pickup cannot be reached before the ride ends.
    busy.progress(&rider.trip_id, pb::TripStatus::DriverArrived).await;
    busy.expect_rejected(tonic::Code::FailedPrecondition).await;
    busy.progress(&first.trip_id, pb::TripStatus::Completed).await;
    busy.expect_trip(pb::TripStatus::Completed).await;
    let started = busy.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert!(!started.queued && started.trip_id == rider.trip_id, "{started:?}");
    let seen = rider.next().await;
    assert_eq!((seen.status(), seen.queued, seen.driver_id.as_str()), (pb::TripStatus::DriverAssigned, false, "busy"));
    busy.progress(&rider.trip_id, pb::TripStatus::DriverArrived).await;
    busy.expect_trip(pb::TripStatus::DriverArrived).await;
}
