//! `dispatchd` as a user runs it: a process with flags and environment
//! variables, serving real gRPC, stopped by SIGTERM.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use dispatch_proto::pb::{
    self, driver_event::Kind as Event, driver_message::Kind as DriverMsg, driver_service_client::DriverServiceClient,
    rider_service_client::RiderServiceClient,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Endpoint;

/// Starts dispatchd with a fresh data directory.
fn start(extra: &[&str], env: &[(&str, &str)]) -> (Child, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("dispatchd-test-{}-{}", std::process::id(), extra.len()));
    let (child, addr) = common::start_in(&dir, extra, env);
    (child, addr, dir)
}

async fn next(events: &mut tonic::Streaming<pb::DriverEvent>) -> Result<Option<pb::DriverEvent>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), events.message()).await.unwrap_or_else(|_| panic!("no event"))
}

#[tokio::test]
async fn serves_a_ride_and_exits_cleanly_on_sigterm() {
    let (mut child, addr, dir) = start(&[], &[("DISPATCH_OFFER_TIMEOUT_MS", "200")]);
    assert!(dir.is_dir(), "the data dir is created");
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = pb::Hello {
        driver_id: "d1".into(),
        position: Some(pb::LatLng { lat: 37.5665, lng: 126.978 }),
        available: true,
        ..Default::default()
    };
    tx.send(pb::DriverMessage { kind: Some(DriverMsg::Hello(hello)) }).await.unwrap_or_else(|e| panic!("{e}"));
    let mut events = DriverServiceClient::new(channel.clone())
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(matches!(next(&mut events).await, Ok(Some(pb::DriverEvent { kind: Some(Event::SessionStarted(_)) }))));
    let request = pb::RideRequest {
        rider_id: "r1".into(),
        request_id: "q1".into(),
        pickup: Some(pb::LatLng { lat: 37.567, lng: 126.978 }),
        ..Default::default()
    };
    let mut rider =
        RiderServiceClient::new(channel).request_ride(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
    assert!(matches!(next(&mut events).await, Ok(Some(pb::DriverEvent { kind: Some(Event::Offer(_)) }))));
    // The flag from the environment took: the offer lapses after 200 ms.
    match next(&mut events).await {
        Ok(Some(pb::DriverEvent { kind: Some(Event::OfferWithdrawn(w)) })) => assert_eq!(w.reason, "expired"),
        other => panic!("expected the offer to expire, got {other:?}"),
    }
    let first = rider.message().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.map(|t| t.status()), Some(pb::TripStatus::Searching));

    common::sigterm(&child);
    let status = tokio::task::spawn_blocking(move || common::wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit status {status}");
    assert_eq!(next(&mut events).await.map(|_| ()).map_err(|s| s.code()), Err(Code::Unavailable));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .arg("--offer-timeout-ms=-5")
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("offer-timeout-ms"));
}
