//! Partner fleets: many drivers in one stream.

use dispatch_proto::pb::{self, driver_event::Kind as Event, fleet_message::Kind as FleetMsg};
use tonic::Code;

use crate::drivers::wait_for_available;
use crate::harness::*;

#[tokio::test]
async fn a_fleet_registers_drivers_answers_offers_and_drives_trips() {
    let server = TestServer::start().await;
    let mut fleet = server.fleet("partner").await;
    fleet.batch(vec![update("partner/p-1", 300.0), update("partner/p-2", 100.0), update("partner/p-3", 500.0)]).await;
    wait_for_available(&server, 3).await;
    let mut rider = server.request("r1", "q1").await;
    let offer = match fleet.next().await {
        Event::Offer(offer) => offer,
        other => panic!("{other:?}"),
    };
    assert_eq!(offer.driver_id, "partner/p-2");
    fleet.send(FleetMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id.clone(), accept: true })).await;
    match fleet.next().await {
        Event::Trip(t) => {
            assert_eq!((t.status(), t.driver_id.as_str()), (pb::TripStatus::DriverAssigned, "partner/p-2"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rider.until(pb::TripStatus::DriverAssigned).await.driver_id, "partner/p-2");
    let progress = |driver: &str, status: pb::TripStatus| {
        FleetMsg::TripProgress(pb::FleetTripProgress {
            driver_id: driver.into(),
            trip_id: rider.trip_id.clone(),
            status: status.into(),
        })
    };
    // Another of the fleet's drivers cannot move partner/p-2's trip.
    fleet.send(progress("partner/p-1", pb::TripStatus::DriverArrived)).await;
    match fleet.next().await {
        Event::Rejected(r) => {
            assert_eq!((r.code, r.driver_id.as_str()), (Code::FailedPrecondition as i32, "partner/p-1"))
        }
        other => panic!("{other:?}"),
    }
    fleet.send(progress("partner/p-2", pb::TripStatus::DriverArrived)).await;
    match fleet.next().await {
        Event::Trip(t) => assert_eq!(t.status(), pb::TripStatus::DriverArrived),
        other => panic!("{other:?}"),
    }
    rider.until(pb::TripStatus::DriverArrived).await;
}

#[tokio::test]
async fn a_bad_entry_is_rejected_by_name_and_the_rest_of_the_batch_applies() {
    let server = TestServer::start().await;
    let mut fleet = server.fleet("partner").await;
    let bad = pb::DriverUpdate { position: Some(pb::LatLng { lat: 95.0, lng: 0.0 }), ..update("partner/bad", 0.0) };
    let nan = pb::DriverUpdate { position: Some(pb::LatLng { lat: f64::NAN, lng: 0.0 }), ..update("partner/nan", 0.0) };
    fleet.batch(vec![update("partner/good-1", 100.0), bad, update("partner/good-2", 200.0), nan]).await;
    let mut refused = Vec::new();
    for _ in 0..2 {
        match fleet.next().await {
            Event::Rejected(r) => {
                assert_eq!(r.code, Code::InvalidArgument as i32);
                refused.push(r.driver_id);
            }
            other => panic!("{other:?}"),
        }
    }
    refused.sort();
    assert_eq!(refused, vec!["partner/bad", "partner/nan"]);
    wait_for_available(&server, 2).await;
}

#[tokio::test]
async fn a_fleet_names_only_drivers_in_its_own_namespace() {
    let server = TestServer::start().await;
    let mut fleet = server.fleet("partner").await;
    // An app's name (whether or not the app is connected) and a rival's.
    fleet.batch(vec![update("mine", 5.0), update("rival/r-1", 5.0), update("partner/p-1", 50.0)]).await;
    for wanted in ["mine", "rival/r-1"] {
        match fleet.next().await {
            Event::Rejected(r) => {
                assert_eq!((r.code, r.driver_id.as_str()), (Code::PermissionDenied as i32, wanted));
                assert!(r.message.contains("partner/..."), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
    }
    wait_for_available(&server, 1).await;
    // The app driver whose name was tried connects as usual.
    let mut own = server.driver(hello("mine", 100.0)).await;
    let mut rival = server.fleet("rival").await;
    rival.batch(vec![update("partner/p-1", 5.0)]).await;
    match rival.next().await {
        Event::Rejected(r) => {
            assert_eq!((r.code, r.driver_id.as_str()), (Code::PermissionDenied as i32, "partner/p-1"))
        }
        other => panic!("{other:?}"),
    }
    // The partner's driver is nearer, so it gets the ride; the app's driver
    // gets the next.
    let _first = server.request("r1", "q1").await;
    match fleet.next().await {
        Event::Offer(offer) => assert_eq!(offer.driver_id, "partner/p-1"),
        other => panic!("{other:?}"),
    }
    let _second = server.request("r2", "q2").await;
    assert_eq!(own.expect_offer().await.driver_id, "mine");
}

#[tokio::test]
async fn when_the_fleet_session_ends_its_drivers_stop_being_offered() {
    let server = TestServer::start().await;
    let fleet = server.fleet("partner").await;
    fleet.batch(vec![update("partner/p-1", 100.0)]).await;
    wait_for_available(&server, 1).await;
    drop(fleet);
    wait_for_available(&server, 0).await;
    let mut backup = server.driver(hello("own", 3_000.0)).await;
    let _rider = server.request("r1", "q1").await;
    assert_eq!(backup.expect_offer().await.driver_id, "own");
}

#[tokio::test]
async fn an_oversized_batch_is_rejected_and_the_session_goes_on() {
    let config = dispatch_server::ServerConfig { max_fleet_batch: 100, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut fleet = server.fleet("partner").await;
    fleet.batch((0..101).map(|i| update(&format!("partner/p-{i}"), 100.0)).collect()).await;
    match fleet.next().await {
        Event::Rejected(r) => assert_eq!(r.code, Code::InvalidArgument as i32),
        other => panic!("{other:?}"),
    }
    fleet.batch((0..100).map(|i| update(&format!("partner/p-{i}"), 100.0)).collect()).await;
    wait_for_available(&server, 100).await;
    assert_eq!(fleet.next_before_barrier().await, None);
}
