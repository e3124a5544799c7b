//! Running dispatchd as a process, shared by the process tests.

#![allow(dead_code)] // Each test binary uses a different part.

pub mod cluster;

use std::io::{BufRead, BufReader};

use dispatch_proto::pb::{self, driver_message::Kind as DriverMsg, driver_service_client::DriverServiceClient};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Starts dispatchd (on a free loopback port unless `extra` says where)
/// with its data in `dir` and
/// returns it with the address it logged.
pub fn start_in(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let (child, grpc, _) = start_with_http(dir, extra, env);
    (child, grpc)
}

/// [`start_in`], also returning the HTTP side's address (`off` if it is).
pub fn start_with_http(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatchd"));
    if !extra.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--http-listen") {
        command.args(["--http-listen", "127.0.0.1:0"]);
    }
    command.arg("--data-dir").arg(dir).args(extra).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn dispatchd: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let field = |line: &str, name: &str| {
        line.split(&format!(" {name}="))
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
    };
    let mut seen = std::collections::VecDeque::new();
    let (addr, http) = loop {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            other => {
                panic!("dispatchd exited before listening ({other:?}); its last lines:\n{}", Vec::from(seen).join("\n"))
            }
        };
        if seen.len() == 20 {
            seen.pop_front();
        }
        seen.push_back(line.clone());
        if line.contains("dispatchd listening")
            && let (Some(addr), Some(http)) = (field(&line, "addr"), field(&line, "http"))
        {
            break (addr, http);
        }
    };
    // Keep draining the log so the process never blocks on a full pipe;
    // with DISPATCH_TEST_LOGS=DIR, into DIR/dispatchd-PID.log.
    let keep = std::env::var_os("DISPATCH_TEST_LOGS")
        .and_then(|dir| std::fs::File::create(Path::new(&dir).join(format!("dispatchd-{}.log", child.id()))).ok());
    std::thread::spawn(move || {
        use std::io::Write;
        let mut keep = keep;
        for line in lines.map_while(Result::ok) {
            if let Some(file) = &mut keep {
                let _ = writeln!(file, "{line}");
            }
        }
    });
    (child, addr, http)
}

/// A dispatchd that is killed if the test fails before stopping it.
pub struct Running(pub Option<Child>);

impl Running {
    /// Stops it with SIGTERM and checks it exits cleanly.
    pub fn stop(mut self) {
        if let Some(mut child) = self.0.take() {
            sigterm(&child);
            assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM failed");
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("dispatchd did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a driver session with `hello`; returns the sender (keep it, or the
/// A plaintext channel to the dispatchd at `addr`.
pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// session ends) and the event stream, nothing read yet.
pub async fn open_driver(
    channel: Channel,
    hello: pb::Hello,
) -> (tokio::sync::mpsc::Sender<pb::DriverMessage>, tonic::Streaming<pb::DriverEvent>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::DriverMessage { kind: Some(DriverMsg::Hello(hello)) }).await.unwrap_or_else(|e| panic!("{e}"));
    let events = DriverServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    (tx, events)
}

/// Every `dispatch_*` metric the Grafana dashboard and the Prometheus
/// alert rules in `deploy/` query, without the `_bucket`/`_sum`/`_count`
/// of a histogram's series.
pub fn deployed_metrics() -> std::collections::BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut names = std::collections::BTreeSet::new();
    for file in ["grafana/dispatch.json", "prometheus/alerts.yml"] {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("dispatch_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            names.insert(base.to_owned());
        }
    }
    names
}
