//! `dispatchd` as a user runs it: a process with flags and environment
//! variables, serving real gRPC, stopped by SIGTERM.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use dispatch_proto::pb::{self, driver_event::Kind as Event, rider_service_client::RiderServiceClient};
use tonic::Code;

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
    let (mut child, addr, dir) = start(&[], &[("DISPATCH_OFFER_TIMEOUT", "200ms")]);
    assert!(dir.is_dir(), "the data dir is created");
    let channel = common::channel(&addr).await;
    let hello = pb::Hello {
        driver_id: "d1".into(),
        position: Some(pb::LatLng { lat: 37.5665, lng: 126.978 }),
        available: true,
        ..Default::default()
    };
    let (_tx, mut events) = common::open_driver(channel.clone(), hello).await;
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
        .arg("--offer-timeout=0s")
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("--offer-timeout") && said.contains("not a positive duration"), "{said}");
    // A duration needs its unit.
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd")).arg("--search-timeout=60").output();
    let output = output.unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--search-timeout"));
}

#[tokio::test]
async fn minted_tokens_open_a_secured_server_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-thirty-two-bytes\n").unwrap_or_else(|e| panic!("{e}"));
    let secret_arg = secret.to_string_lossy().into_owned();
    let minted = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["token", "--auth-secret-file", &secret_arg, "--role", "admin", "--sub", "ops", "--ttl", "1h"])
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");

    let data = dir.path().join("data");
    let (mut child, addr) = common::start_in(&data, &["--auth-secret-file", &secret_arg], &[]);
    let channel = common::channel(&addr).await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::GetStatsRequest {});
    let bearer = format!("Bearer {token}").parse().unwrap_or_else(|e| panic!("{e}"));
    request.metadata_mut().insert("authorization", bearer);
    assert!(admin.get_stats(request).await.is_ok());
    let refused = admin.get_stats(pb::GetStatsRequest {}).await.map(|_| ()).map_err(|s| s.code());
    assert_eq!(refused, Err(Code::Unauthenticated));
    common::sigterm(&child);
    let status = tokio::task::spawn_blocking(move || common::wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
}

#[test]
fn a_public_address_without_a_secret_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("without --auth-secret-file"));
    let (mut child, _addr) = common::start_in(dir.path(), &["--listen", "0.0.0.0:0", "--insecure"], &[]);
    common::sigterm(&child);
    assert!(common::wait_exit(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn a_config_file_sits_under_the_environment_and_the_flags() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("dispatch.toml");
    let settings = "offer-timeout = \"7s\"\nsearch_timeout = \"30s\"\nlisten = \"127.0.0.1:1\"\n\
                    offer-hides-dropoff = [\"premium\", \"van\"]\ndrivers-see-rider-id = true\nhttp-listen = \"off\"\n\
                    rider-position-interval = \"3s\"\n";
    std::fs::write(&file, settings).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:2", "config", "--print"])
        .env("DISPATCH_SEARCH_TIMEOUT", "45s")
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = |key: &str| {
        printed.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key}:\n{printed}"))
    };
    for (key, value, source) in [
        ("offer-timeout", "\"7s\"", "config file"),
        ("search-timeout", "\"45s\"", "environment"),
        ("listen", "\"127.0.0.1:2\"", "flag"),
        ("offer-hides-dropoff", "\"premium,van\"", "config file"),
        ("drivers-see-rider-id", "true", "config file"),
        ("max-drivers", "\"2000000\"", "default"),
        ("rider-position-interval", "\"3s\"", "config file"),
        ("driver-grace", "\"30s\"", "default"),
    ] {
        let l = line(key);
        assert!(l.contains(&format!("= {value} ")) && l.trim_end().ends_with(&format!("# {source}")), "{l}");
    }
    // What it prints is itself a config file that says the same.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).unwrap_or_else(|e| panic!("{e}"));
    let reprinted = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .arg("--config")
        .arg(&again)
        .args(["config", "--print"])
        .env("DISPATCH_SEARCH_TIMEOUT", "45s")
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let reprinted = String::from_utf8_lossy(&reprinted.stdout).into_owned();
    assert!(reprinted.lines().any(|l| l.starts_with("listen = \"127.0.0.1:2\"")), "{reprinted}");

    // A key the server does not know, or a value its flag refuses, stops it.
    std::fs::write(&file, "bogus = 1\n").unwrap_or_else(|e| panic!("{e}"));
    let bad = Command::new(env!("CARGO_BIN_EXE_dispatchd")).arg("--config").arg(&file).output();
    let bad = bad.unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown setting \"bogus\""));
    std::fs::write(&file, "offer-timeout = \"-3s\"\n").unwrap_or_else(|e| panic!("{e}"));
    let bad = Command::new(env!("CARGO_BIN_EXE_dispatchd")).arg("--config").arg(&file).output();
    let bad = bad.unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("offer-timeout"));

    // And the running server takes it: the file turns the HTTP side off.
    std::fs::write(&file, "http-listen = \"off\"\nlisten = \"127.0.0.1:0\"\n").unwrap_or_else(|e| panic!("{e}"));
    let (child, line) = spawn_until_listening(&[
        "--config",
        &file.to_string_lossy(),
        "--data-dir",
        &dir.path().join("d").to_string_lossy(),
    ]);
    assert!(line.contains(" http=off "), "{line}");
    child.stop();
}

/// Starts dispatchd with exactly `args` and returns it with its
/// "dispatchd listening" log line; the rest of its log is drained.
fn spawn_until_listening(args: &[&str]) -> (common::Running, String) {
    let (child, line, _) = spawn_until_listening_in(args, &[]);
    (child, line)
}

/// [`spawn_until_listening`] with `env` set, also returning the lines
/// logged before it.
fn spawn_until_listening_in(args: &[&str], env: &[(&str, &str)]) -> (common::Running, String, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(args)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let child = common::Running(Some(child));
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let line = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("dispatchd listening") => break line,
            Some(Ok(line)) => before.push(line),
            other => panic!("dispatchd exited before listening: {other:?}\n{}", before.join("\n")),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, line, before)
}

#[test]
fn earlier_spellings_of_durations_still_work_and_say_what_to_write_now() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("old.toml");
    std::fs::write(&file, "driver-grace-ms = 45000\n").unwrap_or_else(|e| panic!("{e}"));
    let old = [("--offer-timeout-ms", "7000"), ("--config", &file.to_string_lossy())];
    let mut args: Vec<&str> = old.iter().flat_map(|(k, v)| [*k, *v]).collect();
    // What is in force: the earlier spelling's value, under today's name.
    let printed = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(&args)
        .arg("config")
        .env("DISPATCH_SEARCH_TIMEOUT_MS", "45000")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(printed.lines().any(|l| l.starts_with("offer-timeout-ms = \"7000\"")), "{printed}");
    // The server applies them and says what to write instead.
    let data = dir.path().join("d").to_string_lossy().into_owned();
    args.extend(["--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", &data]);
    let (child, _, before) = spawn_until_listening_in(&args, &[("DISPATCH_SEARCH_TIMEOUT_MS", "45000")]);
    let log = before.join("\n");
    for advice in ["write --offer-timeout 7s", "write --search-timeout 45s", "write --driver-grace 45s"] {
        assert!(log.contains(advice), "no {advice:?} in:\n{log}");
    }
    child.stop();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().to_string_lossy().into_owned();
    let args = ["--listen", "127.0.0.1:0", "--http-listen", "off", "--log-format", "json", "--data-dir", &data];
    let (child, line) = spawn_until_listening(&args);
    let object: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(object["timestamp"].is_string() && object["level"] == "INFO", "{object}");
    assert_eq!(object["fields"]["message"], "dispatchd listening", "{object}");
    assert!(object["fields"]["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{object}");
    child.stop();
}

/// Each thread of process `pid`: its name and the CPU slice it runs with
/// (`se.slice` in `/proc/PID/task/TID/sched`, in nanoseconds).
fn slices(pid: u32) -> Vec<(String, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("{e}"));
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?.trim().to_owned();
            Some((name, slice_in(&std::fs::read_to_string(task.path().join("sched")).ok()?)?))
        })
        .collect()
}

/// [`slices`] once every thread in `names` is there: a new thread takes
/// its name when it first runs, and on a busy machine that can be a while
/// after the server says it is listening (until then it shows its
/// creator's name).
fn slices_once_named(pid: u32, names: &[&str]) -> Vec<(String, u64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let threads = slices(pid);
        let named = names.iter().all(|name| threads.iter().any(|(n, _)| n == name));
        if named || std::time::Instant::now() > deadline {
            return threads;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn slice_in(sched: &str) -> Option<u64> {
    let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

#[test]
fn every_thread_of_the_server_runs_with_the_cpu_slice_it_asked_for() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, _addr) = common::start_in(dir.path(), &[], &[]);
    let running = common::Running(Some(child));
    let pid = running.0.as_ref().map_or(0, Child::id);
    let names = ["dispatch-engine", "dispatch-commit", "dispatch-delive", "tokio-rt-worker"];
    let threads = slices_once_named(pid, &names);
    for name in names {
        assert!(threads.iter().any(|(n, _)| n == name), "no thread {name} in {threads:?}");
    }
    assert!(threads.iter().all(|(_, slice)| *slice == 100_000), "{threads:?}");
    running.stop();

    // 0 leaves the kernel's own, as this test's threads have it.
    let own = slice_in(&std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default());
    let (child, _addr) = common::start_in(dir.path(), &["--sched-slice", "0"], &[]);
    let running = common::Running(Some(child));
    let threads = slices_once_named(running.0.as_ref().map_or(0, Child::id), &["dispatch-engine"]);
    let engine = threads.iter().find(|(n, _)| n == "dispatch-engine").map(|(_, slice)| *slice);
    assert!(own.is_some_and(|own| own != 100_000), "the test runs with a slice of {own:?}");
    assert_eq!(engine, own, "{threads:?}");
    running.stop();
}
