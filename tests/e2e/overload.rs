//! When the engine is behind, location updates are shed (and said to be),
//! while rides and offer replies still go through.

use dispatch_proto::pb;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn updates_are_shed_before_rides_and_replies() {
    // No room for queued updates at all: every ping and batch is shed.
    let config = dispatch_server::ServerConfig { max_queued_updates: 0, ..Default::default() };
    let server = TestServer::with(config).await;
    let mut d = server.driver(hello("d1", 100.0)).await;
    d.ping(north(50.0)).await;
    let r = d.expect_rejected(Code::ResourceExhausted).await;
    assert!(r.message.contains("shed"), "{}", r.message);
    let mut fleet = server.fleet("f").await;
    fleet.batch(vec![update("f/1", 10.0), update("f/2", 20.0)]).await;
    match fleet.next().await {
        pb::driver_event::Kind::Rejected(r) => assert_eq!(r.code, Code::ResourceExhausted as i32),
        other => panic!("{other:?}"),
    }
    // The ride and the reply are not location updates: they get through.
    let mut rider = server.request("r1", "q1").await;
    let offer = d.expect_offer().await;
    d.reply(&offer, true).await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    let stats = server.stats().await;
    assert_eq!(stats.location_updates_shed, 3);
    assert_eq!(stats.drivers_connected, 1, "the shed fleet drivers were never registered");
}
