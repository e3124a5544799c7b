//! `dispatchctl` against a real `dispatchd`: a driver and a rider played
//! in two "terminals" make a whole ride, and the operators' commands see it.

mod common;

use std::time::Duration;

use clap::Parser;
use dispatchctl::{Cli, run};

/// Runs `dispatchctl ARGS` and returns what it printed.
async fn ctl(target: &str, args: &[&str]) -> Result<String, dispatchctl::CtlError> {
    let mut argv = vec!["dispatchctl", "--target", target];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    run(cli, &mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn ok(target: &str, args: &[&str]) -> String {
    match tokio::time::timeout(Duration::from_secs(30), ctl(target, args)).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("dispatchctl {args:?}: {e}"),
        Err(_) => panic!("dispatchctl {args:?} did not finish"),
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Asks `dispatchctl stats --json` until `ready` holds, for at most 10 s.
async fn stats_until(target: &str, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = json(ok(target, &["stats", "--json"]).await.trim());
        if ready(&stats) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_and_a_rider_played_by_dispatchctl_make_a_whole_ride() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, addr) = common::start_in(dir.path(), &[], &[]);
    let child = common::Running(Some(child));
    let target = format!("http://{addr}");

    let drive_target = target.clone();
    let driver = tokio::spawn(async move {
        let args = [
            "drive",
            "--id",
            "D1",
            "--at",
            "37.5700,126.9800",
            "--speed-kmh",
            "14400",
            "--tick",
            "50ms",
            "--board",
            "50ms",
            "--trips",
            "1",
        ];
        ok(&drive_target, &args).await
    });
    // The driver is on duty when the server says so.
    stats_until(&target, "the driver on duty", |s| s["drivers"]["available"] == 1).await;
    let nearby = ok(&target, &["nearby", "--at", "37.5665,126.9780", "--limit", "5"]).await;
    assert!(nearby.starts_with("D1 ") && nearby.contains("available"), "{nearby}");

    let ride = ok(&target, &["ride", "--from", "37.5665,126.9780", "--to", "37.5500,126.9900", "--rider", "r1"]).await;
    let statuses: Vec<&str> = ride.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(statuses.first(), Some(&"searching"), "{ride}");
    assert_eq!(statuses.last(), Some(&"completed"), "{ride}");
    for step in ["assigned", "arrived", "in_progress"] {
        assert!(statuses.contains(&step), "no {step} in\n{ride}");
    }
    let driven = tokio::time::timeout(Duration::from_secs(30), driver)
        .await
        .unwrap_or_else(|_| panic!("the driver did not stop"))
        .unwrap_or_else(|e| panic!("{e}"));
    for line in ["on duty: D1", "offer: o-", "reported: t-1 arrived", "reported: t-1 completed", "off duty: 1 trips"] {
        assert!(driven.contains(line), "no {line:?} in\n{driven}");
    }
    let trip = json(ok(&target, &["trip", "t-1", "--json"]).await.trim());
    assert_eq!((trip["status"].as_str(), trip["driver"].as_str()), (Some("completed"), Some("D1")), "{trip}");

    // An operator watches while a rider asks with nobody on duty, and
    // cancels the ride.
    let watch_target = target.clone();
    let watch = tokio::spawn(async move { ok(&watch_target, &["watch", "--count", "2"]).await });
    stats_until(&target, "the watch started", |s| s["sessions"]["trip_watchers"] == 1).await;
    let rider_target = target.clone();
    let waiting = tokio::spawn(async move {
        ok(&rider_target, &["ride", "--from", "37.5665,126.9780", "--rider", "r2", "--request-id", "w1"]).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let cancelled = loop {
        match ctl(&target, &["cancel", "t-2", "--reason", "testing"]).await {
            Ok(out) => break out,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "cannot cancel t-2: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(cancelled.contains("t-2") && cancelled.contains("cancelled"), "{cancelled}");
    let waited = waiting.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(waited.trim_end().ends_with("reason \"testing\""), "{waited}");
    let watched = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap_or_else(|_| panic!("watch did not see two changes"))
        .unwrap_or_else(|e| panic!("{e}"));
    let seen: Vec<&str> = watched.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(seen, ["searching", "cancelled"], "{watched}");

    let table = ok(&target, &["stats"]).await;
    for row in ["trips completed", "trips cancelled", "offers accepted"] {
        let line = table.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no {row} in\n{table}"));
        assert!(line.trim_end().ends_with(" 1"), "{line}");
    }
    assert!(
        matches!(ctl(&target, &["trip", "t-99"]).await, Err(dispatchctl::CtlError::Status(s)) if s.code() == tonic::Code::NotFound)
    );
    child.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatchctl_sends_the_token_from_a_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-thirty-two-bytes\n").unwrap_or_else(|e| panic!("{e}"));
    let keys = dispatch_auth::Keys::new(b"a-secret-of-at-least-thirty-two-bytes").unwrap_or_else(|e| panic!("{e}"));
    let admin =
        keys.mint(dispatch_auth::Role::Admin, "ops", Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{admin}\n")).unwrap_or_else(|e| panic!("{e}"));
    let secret = secret.to_string_lossy().into_owned();
    let (child, addr) = common::start_in(&dir.path().join("data"), &["--auth-secret-file", &secret], &[]);
    let child = common::Running(Some(child));
    let target = format!("http://{addr}");
    let refused = ctl(&target, &["stats"]).await;
    assert!(matches!(refused, Err(dispatchctl::CtlError::Status(s)) if s.code() == tonic::Code::Unauthenticated));
    let token_file = token_file.to_string_lossy().into_owned();
    let table = ok(&target, &["--token-file", &token_file, "stats"]).await;
    assert!(table.contains("drivers available"), "{table}");
    child.stop();
}

/// `--timeout` bounds the wait for a server that takes the connection and
/// never answers.
#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let target = format!("http://{addr}");
    let answer = tokio::time::timeout(Duration::from_secs(20), ctl(&target, &["--timeout", "300ms", "stats"])).await;
    match answer {
        Ok(Err(dispatchctl::CtlError::Timeout(t))) => assert_eq!(t.to_string(), "300ms"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    held.abort();
}

/// Shell completions name the subcommands and their options.
#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let cli = Cli::try_parse_from(["dispatchctl", "completions", shell]).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        run(cli, &mut out).await.unwrap_or_else(|e| panic!("{e}"));
        let script = String::from_utf8_lossy(&out);
        assert!(script.contains("nearby") && script.contains("speed-kmh") && script.contains("timeout"), "{shell}");
    }
}

/// `dispatchctl shards` against `dispatchd --shards 4`: one line per
/// shard, each driver and open trip counted in the shard of its position,
/// and the rates measured between two looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatchctl_shards_shows_each_shard_with_what_it_holds() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, addr) = common::start_in(dir.path(), &["--shards", "4"], &[]);
    let child = common::Running(Some(child));
    let target = format!("http://{addr}");
    let map = dispatch_shard::ShardMap::new(4).unwrap_or_else(|e| panic!("{e}"));
    let shard_of =
        |lat, lng| map.shard_of(dispatch_core::geo::LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"))).0;
    // A driver in Busan, a ride in Seoul that no driver is near.
    let (busan, seoul) = ((35.1796, 129.0756), (37.5665, 126.9780));
    let driver_target = target.clone();
    let driver =
        tokio::spawn(async move { ok(&driver_target, &["drive", "--id", "B1", "--at", "35.1796,129.0756"]).await });
    let rider_target = target.clone();
    let rider = tokio::spawn(async move { ok(&rider_target, &["ride", "--from", "37.5665,126.9780"]).await });
    stats_until(&target, "the driver and the ride", |s| {
        s["drivers"]["connected"] == 1 && s["trips_open"]["searching"] == 1
    })
    .await;
    let shown = json(ok(&target, &["shards", "--over", "200ms", "--json"]).await.trim());
    let rows = shown["shards"].as_array().unwrap_or_else(|| panic!("no shards in {shown}"));
    assert_eq!(rows.len(), 4, "{shown}");
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(row["shard"], n, "{shown}");
        assert_eq!(row["node"], "", "{shown}");
        let shard = n as u16;
        assert_eq!(row["drivers_connected"], u64::from(shard == shard_of(busan.0, busan.1)), "{shown}");
        assert_eq!(row["trips_open"], u64::from(shard == shard_of(seoul.0, seoul.1)), "{shown}");
        assert!(row["rides_per_s"].as_f64().is_some_and(|r| r == 0.0), "no ride came between the looks: {shown}");
    }
    let table = ok(&target, &["shards", "--over", "50ms"]).await;
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.contains("this server")), "{table}");
    driver.abort();
    rider.abort();
    child.stop();
}
