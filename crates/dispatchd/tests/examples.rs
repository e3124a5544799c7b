//! The files in `examples/` as a user runs them: the commented config file
//! is accepted and complete, and the Python client requests a ride from a
//! real server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dispatch_proto::pb;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The long names `dispatchd --help` lists (hidden earlier spellings are
/// not listed).
fn listed_flags() -> Vec<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_dispatchd")).arg("--help").output();
    let help = String::from_utf8_lossy(&help.unwrap_or_else(|e| panic!("{e}")).stdout).into_owned();
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', ',', '=']).next())
        .filter(|f| !matches!(*f, "help" | "version" | "config"))
        .map(str::to_owned)
        .collect();
    flags.dedup();
    flags
}

#[test]
fn the_example_config_is_accepted_and_names_every_setting() {
    let file = examples().join("dispatch.toml");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .arg("--config")
        .arg(&file)
        .arg("config")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let flags = listed_flags();
    assert!(flags.len() > 40, "{flags:?}");
    for flag in &flags {
        let set = text.lines().any(|l| l.starts_with(&format!("{flag} = ")));
        let commented = text.lines().any(|l| l.starts_with(&format!("# {flag} = ")));
        assert!(set || commented, "examples/dispatch.toml does not name {flag}");
        if set {
            // Every value is the default, so printing it back says so, and
            // it was read from the file.
            let line = printed.lines().find(|l| l.starts_with(&format!("{flag} = ")));
            let line = line.unwrap_or_else(|| panic!("config does not print {flag}:\n{printed}"));
            // A switch left off (`= false`) is no flag at all, so it reads
            // as its default.
            let off = text.lines().any(|l| l.starts_with(&format!("{flag} = false")));
            let source = if off { "# default" } else { "# config file" };
            assert!(line.trim_end().ends_with(source), "{line}");
        }
    }
    // And it says nothing the defaults do not: the same settings as none.
    let bare = Command::new(env!("CARGO_BIN_EXE_dispatchd")).arg("config").output();
    let bare = String::from_utf8_lossy(&bare.unwrap_or_else(|e| panic!("{e}")).stdout).into_owned();
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split('#').next())
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let normalise = |v: Vec<String>| -> Vec<String> {
        // The file spells a list as a list and durations its own way; both
        // print as what the flag holds.
        v.into_iter().map(|l| l.replace("[\"premium\"]", "\"premium\"")).collect()
    };
    assert_eq!(normalise(values(&printed)), normalise(values(&bare)));
}

/// A Python with grpcio and grpcio-tools: `$DISPATCH_PYTHON`, or a venv in
/// `target/py-grpc` made on first use from PyPI, as `.ci/run` does.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("DISPATCH_PYTHON") {
        return path.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-grpc");
    let python = venv.join("bin/python3");
    let ready = |python: &Path| {
        Command::new(python).args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        eprintln!("installing grpcio and grpcio-tools into {} (PyPI)", venv.display());
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
        let installed = made.is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "grpcio==1.76.0", "grpcio-tools==1.76.0"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(installed && ready(&python), "no Python with grpcio: set DISPATCH_PYTHON");
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_requests_a_ride_and_sees_its_driver() {
    let python = python();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, addr) = common::start_in(dir.path(), &["--http-listen", "off"], &[]);
    let child = common::Running(Some(child));
    let channel = common::channel(&addr).await;
    let hello = pb::Hello {
        driver_id: "py-driver".into(),
        position: Some(pb::LatLng { lat: 37.5700, lng: 126.9800 }),
        available: true,
        auto_accept: true,
        ..Default::default()
    };
    let (_tx, mut events) = common::open_driver(channel, hello).await;
    let started = tokio::time::timeout(Duration::from_secs(10), events.message()).await;
    assert!(matches!(started, Ok(Ok(Some(_)))), "{started:?}");
    let script = examples().join("python/request_ride.py");
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--target", &addr, "--rider", "py-rider", "--from", "37.5665,126.9780", "--to", "37.5500,126.9900"])
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{said}\n{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines.first().is_some_and(|l| l.ends_with(" TRIP_STATUS_SEARCHING")), "{said}");
    let assigned = lines.last().unwrap_or_else(|| panic!("no output"));
    assert!(assigned.contains("TRIP_STATUS_DRIVER_ASSIGNED driver=py-driver pickup_distance_m=427"), "{said}");
    child.stop();
}
