//! Bad input: a clear status or a `Rejected` event, the session goes on,
//! nothing already accepted is lost.

use dispatch_proto::pb::{self, driver_message::Kind as DriverMsg};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn bad_coordinates_on_a_stream_are_rejected_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut d = server.driver(hello("d1", 100.0)).await;
    let bad = [
        pb::LatLng { lat: f64::NAN, lng: 0.0 },
        pb::LatLng { lat: 0.0, lng: f64::INFINITY },
        pb::LatLng { lat: 90.5, lng: 0.0 },
        pb::LatLng { lat: 0.0, lng: -181.0 },
    ];
    for position in bad {
        d.ping(position).await;
        let r = d.expect_rejected(Code::InvalidArgument).await;
        assert!(r.message.contains("position"), "{}", r.message);
    }
    d.send(DriverMsg::Location(pb::LocationPing::default())).await;
    d.expect_rejected(Code::InvalidArgument).await;
    d.send(DriverMsg::Location(pb::LocationPing {
        position: Some(north(10.0)),
        timestamp_ms: -5,
        ..Default::default()
    }))
    .await;
    d.expect_rejected(Code::InvalidArgument).await;
    // Unknown, malformed and foreign offer ids; a second hello; bad statuses.
    d.send(DriverMsg::OfferReply(pb::OfferReply { offer_id: "o-77".into(), accept: true })).await;
    d.expect_rejected(Code::NotFound).await;
    d.send(DriverMsg::OfferReply(pb::OfferReply { offer_id: String::new(), accept: true })).await;
    d.expect_rejected(Code::InvalidArgument).await;
    d.send(DriverMsg::Hello(hello("d1", 0.0))).await;
    d.expect_rejected(Code::FailedPrecondition).await;
    d.send(DriverMsg::TripProgress(pb::TripProgress { trip_id: "t-1".into(), status: 42 })).await;
    d.expect_rejected(Code::InvalidArgument).await;
    d.send(DriverMsg::TripProgress(pb::TripProgress {
        trip_id: "t-1".into(),
        status: pb::TripStatus::Searching.into(),
    }))
    .await;
    d.expect_rejected(Code::InvalidArgument).await;
    d.send(DriverMsg::Hello(pb::Hello::default())).await;
    d.expect_rejected(Code::FailedPrecondition).await;
    // Still a driver in good standing: the offer comes.
    let _rider = server.request("r1", "q1").await;
    d.expect_offer().await;
}

#[tokio::test]
async fn a_driver_cannot_answer_another_drivers_offer() {
    let server = TestServer::start().await;
    let mut a = server.driver(hello("a", 100.0)).await;
    let mut b = server.driver(hello("b", 200.0)).await;
    let _rider = server.request("r1", "q1").await;
    let offer = a.expect_offer().await;
    b.reply(&offer, true).await;
    b.expect_rejected(Code::NotFound).await;
    // The offer is still a's to answer.
    a.reply(&offer, true).await;
    a.expect_trip(pb::TripStatus::DriverAssigned).await;
}

#[tokio::test]
async fn bad_ride_requests_get_invalid_argument() {
    let server = TestServer::start().await;
    let good = pb::RideRequest {
        rider_id: "r1".into(),
        request_id: "q1".into(),
        pickup: Some(pickup()),
        ..Default::default()
    };
    let cases = [
        pb::RideRequest { pickup: None, ..good.clone() },
        pb::RideRequest { pickup: Some(pb::LatLng { lat: f64::NAN, lng: 1.0 }), ..good.clone() },
        pb::RideRequest { dropoff: Some(pb::LatLng { lat: -91.0, lng: 1.0 }), ..good.clone() },
        pb::RideRequest { rider_id: String::new(), ..good.clone() },
        pb::RideRequest { rider_id: "r".repeat(129), ..good.clone() },
        pb::RideRequest { request_id: String::new(), ..good.clone() },
        pb::RideRequest { service_type: 17, ..good.clone() },
        pb::RideRequest { max_pickup_distance_m: -1.0, ..good.clone() },
        pb::RideRequest { max_pickup_distance_m: f64::INFINITY, ..good.clone() },
    ];
    for case in cases {
        let result = server.riders().request_ride(case.clone()).await;
        assert_eq!(result.map(|_| ()).map_err(|s| s.code()), Err(Code::InvalidArgument), "{case:?}");
    }
    // Nothing was created by the bad ones.
    assert_eq!(server.stats().await.trips_searching, 0);
}

#[tokio::test]
async fn unknown_and_malformed_trip_ids_answer_clearly() {
    let server = TestServer::start().await;
    let code = |r: Result<pb::Trip, tonic::Status>| r.map(|_| ()).map_err(|s| s.code());
    assert_eq!(code(server.get_trip("t-5").await), Err(Code::NotFound));
    assert_eq!(code(server.get_trip("nonsense").await), Err(Code::NotFound));
    assert_eq!(code(server.get_trip("").await), Err(Code::InvalidArgument));
    let cancel = |trip_id: &str, reason: String| {
        let mut riders = server.riders();
        let request = pb::CancelRideRequest { trip_id: trip_id.into(), reason };
        async move { riders.cancel_ride(request).await.map(|r| r.into_inner()) }
    };
    assert_eq!(code(cancel("t-5", String::new()).await), Err(Code::NotFound));
    let rider = server.request("r1", "q1").await;
    assert_eq!(code(cancel(&rider.trip_id, "x".repeat(10_000)).await), Err(Code::InvalidArgument));
    assert_eq!(code(cancel(&rider.trip_id, String::new()).await), Ok(()));
}
