//! Matching policies through the real gRPC API.

use dispatch_proto::pb;
use dispatch_server::ServerConfig;

use crate::harness::*;

/// Over gRPC, the batch gives each of two riders its better driver where
/// nearest-first would have sent the first rider's nearest driver away
/// from the second (400 m + 1,900 m against 900 m + 600 m).
#[tokio::test]
async fn a_batch_gives_two_riders_their_better_drivers() {
    let mut config = ServerConfig::default();
    config.engine.matching = "batch:1s".parse().unwrap_or_else(|e: String| panic!("{e}"));
    let server = TestServer::with(config).await;
    let mut d1 = server.driver(hello("d1", 400.0)).await;
    let mut d2 = server.driver(hello("d2", -900.0)).await;
    let ride = |rider: &str, metres: f64| pb::RideRequest {
        rider_id: rider.into(),
        request_id: rider.into(),
        pickup: Some(north(metres)),
        ..Default::default()
    };
    // A rider far away keeps the city busy: later requests are batched.
    let _far = server.request_with(ride("far", 40_000.0)).await;
    let a = server.request_with(ride("a", 0.0)).await;
    let b = server.request_with(ride("b", 1_000.0)).await;
    let to_d1 = d1.expect_offer().await;
    let to_d2 = d2.expect_offer().await;
    let trip = |o: &pb::Offer| o.trip.as_ref().map(|t| t.trip_id.clone()).unwrap_or_default();
    assert_eq!((trip(&to_d1), trip(&to_d2)), (b.trip_id.clone(), a.trip_id.clone()));
}
