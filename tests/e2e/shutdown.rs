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

/// Every service marked serving is marked not serving at shutdown, so a
/// load balancer watching any of them stops sending calls.
#[tokio::test]
async fn shutdown_marks_every_service_not_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let server = TestServer::start().await;
    let mut watches = Vec::new();
    for service in ["DriverService", "FleetService", "RiderService", "AdminService"] {
        let service = format!("dispatch.v1.{service}");
        let request = HealthCheckRequest { service: service.clone() };
        let mut watch =
            HealthClient::new(server.channel()).watch(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
        let first = within("the first health status", watch.message()).await;
        assert_eq!(first.ok().flatten().map(|r| r.status()), Some(ServingStatus::Serving), "{service}");
        watches.push((service, watch));
    }
    let stopped = tokio::spawn(server.shutdown());
    for (service, mut watch) in watches {
        let next = within("the status at shutdown", watch.message()).await;
        assert_eq!(next.ok().flatten().map(|r| r.status()), Some(ServingStatus::NotServing), "{service}");
    }
    within("the server to stop", stopped).await.unwrap_or_else(|e| panic!("{e}"));
}

/// A server that stops leaves no task of its own running, however many
/// start and stop in one process (as a cluster node starts one at each term
/// of ownership).
#[test]
fn a_stopped_server_leaves_no_task_behind() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let before = alive();
        for _ in 0..3 {
            TestServer::start().await.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive() > before {
            assert!(tokio::time::Instant::now() < deadline, "{} tasks outlive their servers", alive() - before);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}
