//! `dispatchd`: the dispatch server as a process. Reads flags (each also an
//! environment variable), sets up logging, binds, and serves until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dispatch_server::ServerConfig;
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
    /// How long a finished trip stays readable with GetTrip, in seconds.
    #[arg(long, env = "DISPATCH_TRIP_RETENTION_S", default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(1..))]
    trip_retention_s: i64,
    /// The most updates one fleet batch may carry.
    #[arg(long, env = "DISPATCH_MAX_FLEET_BATCH", default_value_t = 10_000)]
    max_fleet_batch: usize,
    /// How long to wait for open calls to finish after a shutdown signal,
    /// in milliseconds.
    #[arg(long, env = "DISPATCH_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    shutdown_grace_ms: u64,
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
        config.engine.trip_retention_ms = self.trip_retention_s.saturating_mul(1_000);
        config.max_fleet_batch = self.max_fleet_batch;
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
