//! Shutdown: open streams end with UNAVAILABLE and `run` returns.

use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let server = TestServer::start().await;
    let mut driver = server.driver(hello("far", 9_000.0)).await;
    let mut fleet = server.fleet("f").await;
    let mut rider = server.request("r1", "q1").await;
    let ended = tokio::spawn(async move {
        (driver.expect_end().await.code(), fleet.expect_end().await.code(), rider.end_status().await.code())
    });
    server.shutdown().await;
    let codes = within("streams to end", ended).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(codes, (Code::Unavailable, Code::Unavailable, Code::Unavailable));
}
