//! Bounded everything: a client that stops reading is cut off without
//! slowing anyone else, and sessions and message sizes have limits.

use dispatch_proto::pb::{self, driver_message::Kind as DriverMsg};
use dispatch_server::ServerConfig;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn a_driver_who_stops_reading_is_cut_off_and_its_offer_passes_on() {
    let config = ServerConfig { driver_session_queue: 8, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut slow = server.driver(hello("slow", 100.0)).await;
    let mut other = server.driver(hello("other", 900.0)).await;
    let mut rider = server.request("r1", "q1").await;
    // `slow` is offered the ride, then never reads again while its app
    // keeps sending (here: replies to an offer that does not exist, each
    // answered with a rejection it never reads).
    for _ in 0..20_000 {
        let junk = DriverMsg::OfferReply(pb::OfferReply { offer_id: "o-999".into(), accept: true });
        if !slow.try_send(junk).await {
            break; // The server ended the call.
        }
    }
    // Its session ends RESOURCE_EXHAUSTED, its offer counts as declined and
    // goes to the next driver; the rider never notices.
    let offer = other.expect_offer().await;
    assert_eq!(offer.trip.as_ref().map(|t| t.trip_id.as_str()), Some(rider.trip_id.as_str()));
    other.reply(&offer, true).await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    assert_eq!(trip.driver_id, "other");
    let status = slow.expect_end().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(server.stats().await.offers_declined, 1);
}

#[tokio::test]
async fn sessions_past_the_limit_are_refused() {
    let config = ServerConfig { max_sessions: 2, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut a = server.driver(hello("a", 100.0)).await;
    let _f = server.fleet("f").await;
    let mut c = server.open_driver(DriverMsg::Hello(hello("c", 100.0))).await;
    assert_eq!(c.expect_end().await.code(), Code::ResourceExhausted);
    // Those already in carry on.
    let rider = server.request("r1", "q1").await;
    let offer = a.expect_offer().await;
    assert_eq!(offer.trip.map(|t| t.trip_id), Some(rider.trip_id));
}

#[tokio::test]
async fn a_message_past_the_size_limit_is_refused() {
    let config = ServerConfig { max_message_bytes: 1_024, ..ServerConfig::default() };
    let server = TestServer::with(config).await;
    let mut fleet = server.fleet("f").await;
    let updates = (0..100).map(|i| update(&format!("f/{i}"), 10.0)).collect();
    fleet.batch(updates).await;
    assert_eq!(fleet.expect_end().await.code(), Code::OutOfRange);
    // Small ones still go through on a new session.
    let mut fleet = server.fleet("f").await;
    fleet.batch(vec![update("f/1", 10.0)]).await;
    assert!(fleet.next_before_barrier().await.is_none());
    assert_eq!(server.stats().await.drivers_connected, 1);
}
