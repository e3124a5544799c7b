//! The load harness's smoke scenario against a real server, so the harness
//! cannot rot: drivers through fleets and their own sessions, riders, trips
//! driven to the end, and no protocol error.

use dispatch_loadgen::config::Scenario;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_runs_clean() {
    let server = TestServer::start().await;
    let mut config = Scenario::Smoke.config(format!("http://{}", server.addr));
    // The server runs in this process: its CPU is this process's.
    config.server_pid = Some(std::process::id());
    let report = dispatch_loadgen::run(config, |_, _| {}).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.protocol_errors, 0, "{report:#?}");
    let cpu = report.server_cpu.unwrap_or_else(|| panic!("no CPU figures: {report:#?}"));
    assert!(cpu.seconds > 0.0 && cpu.cores > 0.0, "{cpu:?}");
    assert!((cpu.per_million_updates_s - cpu.seconds / (report.updates_applied as f64 / 1e6)).abs() < 1e-6, "{cpu:?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!(report.drivers_connected, 200, "{report:#?}");
    assert!(report.updates_applied >= 1_000, "{report:#?}");
    assert!(report.requests_sent >= 20, "{report:#?}");
    assert!(report.match_rate > 0.9, "{report:#?}");
    assert!(report.completed > 0, "{report:#?}");
    assert_eq!(report.request_to_assigned_us.count, report.assigned);
    // The server's breakdown reaches the report: every ride's first offer
    // through each stage, and the trip log's commits.
    let stages: Vec<&str> = report.server_stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, ["queue", "engine", "commit_wait", "commit", "deliver", "log_commit"], "{report:#?}");
    assert!(report.server_stages.iter().all(|s| s.count >= report.assigned && s.p99_us >= s.p50_us), "{report:#?}");
    // How late a sleeping thread woke is measured throughout the run (a
    // 1 ms nap after another for 5 s), over it and per window.
    let wake = &report.wake_late_us;
    assert!(wake.count >= 500 && wake.p50 <= wake.p99 && wake.p99 <= wake.max, "{report:#?}");
    assert!(report.windows.iter().all(|w| w.wake_late_us.count > 0), "{report:#?}");
    let stats = server.stats().await;
    assert!(stats.trips_completed > 0 && stats.offers_accepted >= report.assigned, "{stats:?}");
}

/// The smoke scenario against a server whose map is in sixteen shards:
/// drivers' own sessions and fleets' drivers moving in several shards,
/// rides matched and driven to the end, with no protocol error, and the
/// shards' counts adding up to the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_runs_clean_over_sixteen_shards() {
    let server = TestServer::with(dispatch_server::ServerConfig { shards: 16, ..Default::default() }).await;
    let config = Scenario::Smoke.config(format!("http://{}", server.addr));
    let report = dispatch_loadgen::run(config, |_, _| {}).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.protocol_errors, 0, "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!(report.drivers_connected, 200, "{report:#?}");
    assert!(report.match_rate > 0.9 && report.completed > 0, "{report:#?}");
    let stats = server.stats().await;
    assert_eq!(stats.shards.len(), 16, "{stats:?}");
    // The run is over and its drivers gone; what they did stays counted.
    let updated = stats.shards.iter().filter(|s| s.location_updates > 0).count();
    let asked = stats.shards.iter().filter(|s| s.ride_requests > 0).count();
    assert!(updated >= 2 && asked >= 1, "the smoke city's drivers moved in {updated} shard(s), rides in {asked}");
    let sum = |f: fn(&dispatch_proto::pb::ShardStats) -> u64| stats.shards.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.drivers_connected), stats.drivers_connected, "{stats:?}");
    assert_eq!(sum(|s| s.trips_open), stats.trips_searching + stats.trips_active, "{stats:?}");
    assert_eq!(sum(|s| s.ride_requests), stats.ride_requests, "{stats:?}");
    // Every first offer is counted once more, by whether its trip asked
    // across a border.
    let count = |name: &str| report.server_stages.iter().find(|s| s.stage == name).map_or(0, |s| s.count);
    assert!(count("queue") > 0, "{report:#?}");
    assert_eq!(count("within_shard") + count("across_shards"), count("queue"), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_runs_against_a_secured_server_with_minted_tokens() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret_file = dir.path().join("secret");
    let secret = b"loadgen-test-secret-0123456789abcdef";
    std::fs::write(&secret_file, secret).unwrap_or_else(|e| panic!("{e}"));
    let keys = dispatch_server::Keys::new(secret).unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::with(dispatch_server::ServerConfig { auth: Some(keys), ..Default::default() }).await;
    let mut config = Scenario::Smoke.config(format!("http://{}", server.addr));
    // Without credentials the harness is refused outright.
    assert!(dispatch_loadgen::run(config.clone(), |_, _| {}).await.is_err());
    config.credentials = Some(
        dispatch_loadgen::credentials::Credentials::from_secret_file(&secret_file).unwrap_or_else(|e| panic!("{e}")),
    );
    let report = dispatch_loadgen::run(config, |_, _| {}).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.protocol_errors, 0, "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!(report.drivers_connected, 200, "{report:#?}");
    assert!(report.completed > 0, "{report:#?}");
}

/// The harness replays any city's trips: the example file's Seoul trips
/// are requested where they were, with the drivers placed around them
/// (none would be near if they stood in New York).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_seoul_trips_places_drivers_in_seoul_and_matches_them() {
    let server = TestServer::start().await;
    let mut config = Scenario::Smoke.config(format!("http://{}", server.addr));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/trips.csv");
    config.demand = dispatch_loadgen::config::Demand::Replay { path, speedup: 120.0 };
    config.duration = std::time::Duration::from_secs(6);
    let report = dispatch_loadgen::run(config, |_, _| {}).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.protocol_errors, 0, "{report:#?}");
    assert!(report.requests_sent >= 20, "20 minutes of trips at 120x is 10 s; 6 s sends most: {report:#?}");
    // Within the 5 km pickup radius of Seoul's pickups: drivers placed in
    // New York, as before, would match none.
    assert!(report.match_rate > 0.9, "{report:#?}");
}

/// The harness loads a TLS server: `https://` targets with the CA that
/// signed the server's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_runs_against_a_tls_server() {
    let (tls, cert_pem) = localhost_tls();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut log = dispatch_server::TripLogConfig::new(dir.path());
    log.fsync = dispatch_server::Fsync::Never;
    let server_config = dispatch_server::ServerConfig { tls: Some(tls), trip_log: Some(log), ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dispatch_server::run(listener, server_config, async {
        let _ = stopped.await;
    }));
    let mut config = Scenario::Smoke.config(format!("https://localhost:{port}"));
    config.duration = std::time::Duration::from_secs(3);
    config.tls_ca_pem = Some(cert_pem.clone().into_bytes());
    let report = dispatch_loadgen::run(config, |_, _| {}).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.protocol_errors, 0, "{report:#?}");
    assert!(report.updates_applied > 0 && report.assigned > 0, "{report:#?}");
    let _ = stop.send(());
    let _ = within("the server to stop", server).await;
}
