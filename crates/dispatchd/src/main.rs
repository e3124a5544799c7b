//! `dispatchd`: the dispatch server as a process. Reads flags (each also an
//! environment variable), sets up logging, binds, and serves until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dispatch_server::{Fsync, ServerConfig, TripLogConfig};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

// Location updates are allocated on the stream readers' threads and freed
// on the engine's; glibc's allocator spent a fifth of the server's time on
// that under load (perf, korea scenario). jemalloc frees across threads
// cheaply and returns memory to the system in the background.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Real-time ride dispatch over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// Address to serve gRPC on.
    #[arg(long, env = "DISPATCH_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where durable state lives; created if missing.
    #[arg(long, env = "DISPATCH_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// How long a driver has to answer an offer, in milliseconds.
    #[arg(long, env = "DISPATCH_OFFER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    offer_timeout_ms: i64,
    /// How long a ride request searches before it ends NO_DRIVER_FOUND, in
    /// milliseconds.
    #[arg(long, env = "DISPATCH_SEARCH_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(i64).range(1..))]
    search_timeout_ms: i64,
    /// The pickup radius when a request does not give one, in metres.
    #[arg(long, env = "DISPATCH_MAX_PICKUP_DISTANCE_M", default_value_t = 5_000.0, value_parser = positive_metres)]
    max_pickup_distance_m: f64,
    /// How long a finished trip stays readable with GetTrip (and its
    /// request id remembered), e.g. `24h`, `90m`.
    #[arg(long, env = "DISPATCH_TRIP_RETENTION", default_value = "24h", value_parser = duration_ms)]
    trip_retention: i64,
    /// How long a driver whose app dropped keeps a trip not yet in progress,
    /// in milliseconds, before it goes to another driver.
    #[arg(long, env = "DISPATCH_DRIVER_GRACE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(i64).range(0..))]
    driver_grace_ms: i64,
    /// When the trip log reaches the disk: `always` (every commit waits for
    /// fdatasync) or `never` (the OS decides: survives a process crash, not
    /// a power cut; for tests and benchmarks only).
    #[arg(long, env = "DISPATCH_FSYNC", default_value = "always")]
    fsync: FsyncFlag,
    /// Compact the trip log (snapshot plus a fresh log) once it passes this
    /// many bytes and the size of the last snapshot.
    #[arg(long, env = "DISPATCH_LOG_COMPACT_AFTER_BYTES", default_value_t = 64 << 20)]
    log_compact_after_bytes: u64,
    /// The most updates one fleet batch may carry.
    #[arg(long, env = "DISPATCH_MAX_FLEET_BATCH", default_value_t = 10_000)]
    max_fleet_batch: usize,
    /// The most driver and fleet sessions open at once.
    #[arg(long, env = "DISPATCH_MAX_SESSIONS", default_value_t = 1_000_000)]
    max_sessions: usize,
    /// The largest message a client may send, in bytes.
    #[arg(long, env = "DISPATCH_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// The most concurrent streams on one HTTP/2 connection.
    #[arg(long, env = "DISPATCH_MAX_STREAMS_PER_CONNECTION", default_value_t = 10_000)]
    max_streams_per_connection: u32,
    /// How long to wait for open calls to finish after a shutdown signal,
    /// in milliseconds.
    #[arg(long, env = "DISPATCH_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FsyncFlag {
    Always,
    Never,
}

fn duration_ms(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    match i64::try_from(d.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(format!("{s:?} is not a positive duration")),
    }
}

fn positive_metres(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!("{s:?} is not a positive number of metres")),
    }
}

impl Flags {
    fn server_config(&self) -> ServerConfig {
        let mut config = ServerConfig::default();
        config.engine.offer_timeout_ms = self.offer_timeout_ms;
        config.engine.search_timeout_ms = self.search_timeout_ms;
        config.engine.max_pickup_distance_m = self.max_pickup_distance_m;
        config.engine.trip_retention_ms = self.trip_retention;
        config.engine.driver_grace_ms = self.driver_grace_ms;
        config.max_fleet_batch = self.max_fleet_batch;
        config.max_sessions = self.max_sessions;
        config.max_message_bytes = self.max_message_bytes;
        config.max_streams_per_connection = self.max_streams_per_connection;
        let mut log = TripLogConfig::new(&self.data_dir);
        log.fsync = match self.fsync {
            FsyncFlag::Always => Fsync::Always,
            FsyncFlag::Never => Fsync::Never,
        };
        log.compact_after_bytes = self.log_compact_after_bytes;
        config.trip_log = Some(log);
        config
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    if let Err(err) = std::fs::create_dir_all(&flags.data_dir) {
        error!(dir = %flags.data_dir.display(), cause = %err, "cannot create the data directory");
        return ExitCode::FAILURE;
    }
    let listener = match TcpListener::bind(flags.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            error!(addr = %flags.listen, cause = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| flags.listen.to_string(), |a| a.to_string());
    if matches!(flags.fsync, FsyncFlag::Never) {
        warn!("--fsync never: trips survive a crash of this process but not of the machine; for tests only");
    }
    info!(%addr, data_dir = %flags.data_dir.display(), "dispatchd listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = Duration::from_millis(flags.shutdown_grace_ms);
    let shutdown = async move {
        wait_for_signal().await;
        let _ = stop_tx.send(());
    };
    let server = tokio::spawn(dispatch_server::run(listener, flags.server_config(), shutdown));
    let served = async {
        match server.await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(err)) => {
                error!(cause = %err, "server failed");
                ExitCode::FAILURE
            }
            Err(err) => {
                error!(cause = %err, "server task failed");
                ExitCode::FAILURE
            }
        }
    };
    tokio::pin!(served);
    tokio::select! {
        code = &mut served => code,
        _ = stop_rx => match tokio::time::timeout(grace, served).await {
            Ok(code) => code,
            Err(_) => {
                warn!(grace_ms = flags.shutdown_grace_ms, "calls still open after the grace period; exiting");
                ExitCode::SUCCESS
            }
        },
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
            Err(err) => {
                warn!(cause = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        info!("SIGINT received");
    }
}
