//! `dispatchd`: the dispatch server as a process. Reads flags (each also an
//! environment variable), sets up logging, binds, and serves until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod config_file;
mod sched;
use dispatch_auth::Role;
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_server::{Fsync, Keys, RateLimits, ServerConfig, TlsFiles, TripLogConfig};
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
    #[command(subcommand)]
    command: Option<Subcommand>,
    /// A TOML file of settings, one key per flag (`offer-timeout-ms =
    /// 5000`), under `DISPATCH_*` variables and flags.
    #[arg(long, env = "DISPATCH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The file holding the secret tokens are signed with (at least 32
    /// bytes). Without it the server checks no tokens, and so serves only a
    /// loopback address unless `--insecure`.
    #[arg(long, env = "DISPATCH_AUTH_SECRET_FILE", global = true)]
    auth_secret_file: Option<PathBuf>,
    /// During a key rotation: the previous secret, still accepted for
    /// `--auth-previous-grace` after start.
    #[arg(long, env = "DISPATCH_AUTH_PREVIOUS_SECRET_FILE")]
    auth_previous_secret_file: Option<PathBuf>,
    /// How long the previous secret stays accepted, e.g. `24h`.
    #[arg(long, env = "DISPATCH_AUTH_PREVIOUS_GRACE", default_value = "24h", value_parser = duration_ms)]
    auth_previous_grace: i64,
    /// Serve without checking tokens even on a non-loopback address. For a
    /// network you trust entirely; the log says so at every start.
    #[arg(long, env = "DISPATCH_INSECURE")]
    insecure: bool,
    /// TLS certificate chain (PEM); with `--tls-key`, every connection is TLS.
    #[arg(long, env = "DISPATCH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "DISPATCH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Location updates one driver may send per second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_DRIVER_UPDATES_PER_S", default_value_t = 10)]
    rate_driver_updates_per_s: u32,
    /// Ride requests one rider may make per minute (also the burst).
    #[arg(long, env = "DISPATCH_RATE_RIDER_REQUESTS_PER_MIN", default_value_t = 30)]
    rate_rider_requests_per_min: u32,
    /// Update batches one fleet may send per second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_FLEET_BATCHES_PER_S", default_value_t = 100)]
    rate_fleet_batches_per_s: u32,
    /// Offer replies and trip progress reports one fleet may send per
    /// second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_FLEET_MESSAGES_PER_S", default_value_t = 2_000)]
    rate_fleet_messages_per_s: u32,
    /// Offer replies, availability changes and trip progress reports one
    /// driver may send per second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_DRIVER_MESSAGES_PER_S", default_value_t = 10)]
    rate_driver_messages_per_s: u32,
    /// GetTrips of a trip that is not open (ended, or unknown) one rider or
    /// driver token may make per second (also the burst); reads of open
    /// trips, admin tokens and an open server are not counted.
    #[arg(long, env = "DISPATCH_RATE_TRIP_READS_PER_S", default_value_t = 20)]
    rate_trip_reads_per_s: u32,
    /// Services whose offers do not show the dropoff, comma-separated
    /// (`taxi,premium,van,designated-driver`), or `none`.
    #[arg(long, env = "DISPATCH_OFFER_HIDES_DROPOFF", default_value = "premium", value_parser = service_set)]
    offer_hides_dropoff: ServiceSet,
    /// Show drivers and fleets the rider's id in offers and trips (by
    /// default they never see it).
    #[arg(long, env = "DISPATCH_DRIVERS_SEE_RIDER_ID")]
    drivers_see_rider_id: bool,
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
    /// The least time between two updates of the car's position to a rider
    /// following a trip, in milliseconds (0: every ping). Each is a message
    /// on the rider's stream: longer means fewer on a loaded node.
    #[arg(long, env = "DISPATCH_RIDER_POSITION_INTERVAL_MS", default_value_t = 1_000,
        value_parser = clap::value_parser!(i64).range(0..=3_600_000))]
    rider_position_interval_ms: i64,
    /// How many drivers a ride is offered to (declined, lapsed or given
    /// back) before it ends NO_DRIVER_FOUND; at most 5,000, so every trip
    /// record fits the trip log's frame limit.
    #[arg(long, env = "DISPATCH_MAX_OFFERS_PER_TRIP", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=dispatch_core::engine::MAX_OFFERS_PER_TRIP as u64))]
    max_offers_per_trip: u64,
    /// The most drivers the engine knows at once (connected, or holding a
    /// trip); a new driver past it is refused RESOURCE_EXHAUSTED.
    #[arg(long, env = "DISPATCH_MAX_DRIVERS", default_value_t = 2_000_000)]
    max_drivers: usize,
    /// The most drivers one fleet may speak for at once.
    #[arg(long, env = "DISPATCH_MAX_DRIVERS_PER_FLEET", default_value_t = 100_000)]
    max_drivers_per_fleet: usize,
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
    /// The most location updates queued for the engine; past it updates
    /// are shed (counted, and `Rejected RESOURCE_EXHAUSTED`). The default
    /// holds a second of updates at 1,000,000 a second (~100 MB when full).
    #[arg(long, env = "DISPATCH_MAX_QUEUED_UPDATES", default_value_t = 1 << 20,
        value_parser = clap::value_parser!(u64).range(1..=1 << 26))]
    max_queued_updates: u64,
    /// The CPU slice every thread of the server asks the kernel for, in
    /// microseconds: a thread with work waits at most about this long for
    /// a busy core (Linux 6.12 and later takes 100 to 100,000; no privilege
    /// needed; the share of CPU is unchanged). 0 leaves the kernel's own
    /// (1.4 ms on two cores).
    #[arg(long, env = "DISPATCH_SCHED_SLICE_US", default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(0..=100_000))]
    sched_slice_us: u64,
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
    /// Address for the HTTP side (Prometheus `/metrics`, `/healthz`, the
    /// live map at `/`), or `off`. A non-loopback address needs
    /// `--auth-secret-file` (or `--insecure`), like gRPC.
    #[arg(long, env = "DISPATCH_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_parser = http_listen)]
    http_listen: HttpListen,
    /// Serve `/metrics` and `/healthz` without a token even when tokens are
    /// checked, for scrapers (the map and its API still need an admin
    /// token).
    #[arg(long, env = "DISPATCH_HTTP_OPEN_METRICS")]
    http_open_metrics: bool,
    /// A tile server for the live map's base layer, e.g.
    /// `http://tiles.internal/{z}/{x}/{y}.png`; without one the map draws a
    /// plain grid with coordinates.
    #[arg(long, env = "DISPATCH_MAP_TILE_URL")]
    map_tile_url: Option<String>,
    /// How rides are matched: `nearest` (each request at once to the
    /// nearest free driver), `batch:W` (requests gathered for a window
    /// such as `2s` or `250ms`, then one min-cost assignment) or
    /// `broadcast:K` (the K nearest at once, the first to accept wins), for
    /// every service or per service: `batch:2s,premium=nearest`.
    #[arg(long, env = "DISPATCH_MATCHING", default_value = "nearest", value_parser = policies)]
    matching: dispatch_core::engine::Policies,
    /// In a batch, leaving a request unmatched costs like a pickup this
    /// many metres long...
    #[arg(long, env = "DISPATCH_BATCH_UNMATCHED_M", default_value_t = 2_000.0, value_parser = positive_metres)]
    batch_unmatched_m: f64,
    /// ...plus this many metres for every second it has waited.
    #[arg(long, env = "DISPATCH_BATCH_UNMATCHED_PER_S_M", default_value_t = 100.0, value_parser = positive_metres)]
    batch_unmatched_per_s_m: f64,
    /// Acceptance-aware ranking: a driver who missed (declined or let
    /// lapse) all of their last 20 offers ranks like one this many metres
    /// farther (half of them, half as much); 0 ranks by distance alone.
    #[arg(long, alias = "accept-weight", env = "DISPATCH_ACCEPT_WEIGHT_M", default_value_t = 0.0, value_parser = metres_or_zero)]
    accept_weight_m: f64,
    /// Forward dispatch: a driver whose ride in progress ends within this
    /// many metres of a new pickup may be offered it next (queued), when
    /// the rest of the ride plus the drive on is shorter than every free
    /// driver's pickup; 0 turns it off.
    #[arg(long, env = "DISPATCH_FORWARD_DISPATCH_M", default_value_t = 0.0, value_parser = metres_or_zero)]
    forward_dispatch_m: f64,
    /// The straight-line speed at which a rider's estimated time to the
    /// pickup is reckoned from the distance (city driving, detours
    /// included).
    #[arg(long, env = "DISPATCH_ETA_SPEED_KMH", default_value_t = 22.0, value_parser = speed_kmh)]
    eta_speed_kmh: f64,
    /// Cluster mode: the NATS servers (JetStream) this node joins,
    /// comma-separated (`nats://127.0.0.1:4222,nats://127.0.0.1:4223`). The
    /// trip log is then a replicated stream, not `--data-dir`, and one node
    /// at a time runs the engine; see the README's "Cluster" section.
    #[arg(long, env = "DISPATCH_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's id in the cluster (default: the host name and the port).
    #[arg(long, env = "DISPATCH_NODE_ID")]
    node_id: Option<String>,
    /// Where this node's engine takes the connections other nodes relay to
    /// it while it owns the shard.
    #[arg(long, env = "DISPATCH_CLUSTER_LISTEN", default_value = "127.0.0.1:0")]
    cluster_listen: SocketAddr,
    /// Where this node's HTTP side takes the connections other nodes relay
    /// to it while it owns the shard.
    #[arg(long, env = "DISPATCH_CLUSTER_HTTP_LISTEN", default_value = "127.0.0.1:0")]
    cluster_http_listen: SocketAddr,
    /// The engine address other nodes are told (default: the one bound).
    #[arg(long, env = "DISPATCH_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// Copies JetStream keeps of the trip log and the lease: 3 for a
    /// three-server cluster, 1 for a single server.
    #[arg(long, env = "DISPATCH_CLUSTER_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_replicas: u8,
    /// How long an owner's lease lasts unrenewed: a dead owner is replaced
    /// after at most this plus reading the log back. Renewed every third.
    #[arg(long, env = "DISPATCH_LEASE_TTL", default_value = "3s", value_parser = duration_ms)]
    lease_ttl: i64,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log shippers).
    #[arg(long, env = "DISPATCH_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// Where the HTTP side listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpListen {
    Off,
    On(SocketAddr),
}

fn http_listen(s: &str) -> Result<HttpListen, String> {
    match s {
        "off" | "none" | "" => Ok(HttpListen::Off),
        addr => addr.parse().map(HttpListen::On).map_err(|e| format!("{addr:?}: {e} (an address, or `off`)")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Shows the configuration in force.
    Config {
        /// Print it as a TOML file, each value with where it came from.
        #[arg(long)]
        print: bool,
    },
    /// Prints a signed token (needs `--auth-secret-file`).
    Token {
        /// What the holder may do.
        #[arg(long)]
        role: Role,
        /// Who: the driver, rider or fleet id (any name for admin).
        #[arg(long)]
        sub: String,
        /// How long it is valid, e.g. `24h`, `30m`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn service_set(s: &str) -> Result<ServiceSet, String> {
    let mut set = ServiceSet::EMPTY;
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "none") {
        let service = match name {
            "taxi" => ServiceType::Taxi,
            "premium" => ServiceType::Premium,
            "van" => ServiceType::Van,
            "designated-driver" => ServiceType::DesignatedDriver,
            other => return Err(format!("unknown service {other:?}")),
        };
        set = set.with(service);
    }
    Ok(set)
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

fn policies(s: &str) -> Result<dispatch_core::engine::Policies, String> {
    s.parse()
}

fn positive_metres(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!("{s:?} is not a positive number of metres")),
    }
}

fn speed_kmh(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=300.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a speed from 1 to 300 km/h")),
    }
}

fn metres_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && (0.0..=1_000_000.0).contains(&m) => Ok(m),
        _ => Err(format!("{s:?} is not a number of metres from 0 to 1,000,000")),
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
        config.engine.rider_position_interval_ms = self.rider_position_interval_ms;
        // Fits: the parser caps it at MAX_OFFERS_PER_TRIP.
        config.engine.max_offers_per_trip = self.max_offers_per_trip as usize;
        config.engine.max_drivers = self.max_drivers;
        config.engine.max_drivers_per_fleet = self.max_drivers_per_fleet;
        config.engine.matching = self.matching;
        config.engine.batch_unmatched_m = self.batch_unmatched_m;
        config.engine.batch_unmatched_per_s_m = self.batch_unmatched_per_s_m;
        config.engine.accept_weight_m = self.accept_weight_m;
        config.engine.forward_dispatch_m = self.forward_dispatch_m;
        config.engine.eta_speed_kmh = self.eta_speed_kmh;
        config.max_fleet_batch = self.max_fleet_batch;
        config.max_sessions = self.max_sessions;
        // Fits: the parser caps it at 2^26.
        config.max_queued_updates = self.max_queued_updates as usize;
        config.max_message_bytes = self.max_message_bytes;
        config.max_streams_per_connection = self.max_streams_per_connection;
        let mut log = TripLogConfig::new(&self.data_dir);
        log.fsync = match self.fsync {
            FsyncFlag::Always => Fsync::Always,
            FsyncFlag::Never => Fsync::Never,
        };
        log.compact_after_bytes = self.log_compact_after_bytes;
        config.trip_log = Some(log);
        config.rate_limits = RateLimits {
            driver_updates_per_s: self.rate_driver_updates_per_s,
            rider_requests_per_min: self.rate_rider_requests_per_min,
            fleet_batches_per_s: self.rate_fleet_batches_per_s,
            fleet_messages_per_s: self.rate_fleet_messages_per_s,
            driver_messages_per_s: self.rate_driver_messages_per_s,
            trip_reads_per_s: self.rate_trip_reads_per_s,
        };
        config.offer_hides_dropoff = self.offer_hides_dropoff;
        config.drivers_see_rider_id = self.drivers_see_rider_id;
        config
    }

    /// The keys from the secret files, if any. Errors name the file, never
    /// its contents.
    fn keys(&self) -> Result<Option<Keys>, String> {
        let Some(path) = &self.auth_secret_file else { return Ok(None) };
        let read = |path: &PathBuf| -> Result<Vec<u8>, String> {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok(dispatch_auth::secret_from_file_contents(&bytes).to_vec())
        };
        let keys = Keys::new(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(previous) = &self.auth_previous_secret_file else { return Ok(Some(keys)) };
        let until = std::time::SystemTime::now() + Duration::from_millis(self.auth_previous_grace.unsigned_abs());
        keys.with_previous(&read(previous)?, until).map(Some).map_err(|e| format!("{}: {e}", previous.display()))
    }

    fn tls(&self) -> Result<Option<TlsFiles>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        Ok(Some(TlsFiles { cert_pem: read(cert)?, key_pem: read(key)? }))
    }
}

/// `dispatchd token`: prints a token to stdout.
fn print_token(flags: &Flags, role: Role, sub: &str, ttl: Duration) -> ExitCode {
    let keys = match flags.keys() {
        Ok(Some(keys)) => keys,
        Ok(None) => {
            error!("dispatchd token needs --auth-secret-file (or DISPATCH_AUTH_SECRET_FILE)");
            return ExitCode::FAILURE;
        }
        Err(cause) => {
            error!(%cause, "cannot load the secret");
            return ExitCode::FAILURE;
        }
    };
    match keys.mint(role, sub, ttl) {
        Ok(token) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{token}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(cause) => {
            error!(%cause, "cannot mint a token");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

/// Reads the flags over the environment over the config file, or exits
/// with clap's message.
fn read_flags() -> Result<Flags, ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Flags::command().args_override_self(true);
    let given: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (args, from_file) = match config_file::layered(given.clone(), &command) {
        Ok(layered) => layered,
        Err(cause) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "dispatchd: {cause}");
            return Err(ExitCode::FAILURE);
        }
    };
    let matches = command.clone().try_get_matches_from(&args).unwrap_or_else(|e| e.exit());
    let flags = Flags::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(Subcommand::Config { print }) = &flags.command {
        use std::io::Write;
        let text = config_file::print(&matches, &command, &from_file, &given);
        let shown = if *print { write!(std::io::stdout(), "{text}") } else { Ok(()) };
        return Err(if shown.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    Ok(flags)
}

fn main() -> ExitCode {
    let flags = match read_flags() {
        Ok(flags) => flags,
        Err(code) => return code,
    };
    init_logs(flags.log_format);
    // Before any other thread starts, so that all of them inherit it.
    ask_for_slice(flags.sched_slice_us);
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(flags)),
        Err(cause) => {
            error!(%cause, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}

/// Asks the kernel for short slices (`--sched-slice-us`), and says what it
/// came to.
fn ask_for_slice(us: u64) {
    if us == 0 {
        return;
    }
    match sched::ask(Duration::from_micros(us)) {
        Ok(sched::Outcome::Set(ns)) => info!(slice_us = ns / 1_000, "threads run with short CPU slices"),
        Ok(sched::Outcome::Kept(ns)) => {
            warn!(
                asked_us = us,
                slice_us = ns / 1_000,
                "the kernel gave another CPU slice (it takes 100 µs to 100 ms per thread, from Linux 6.12)"
            );
        }
        Ok(sched::Outcome::OtherPolicy(policy)) => {
            info!(policy, "threads keep the scheduling policy they were started with")
        }
        Err(cause) => warn!(%cause, "cannot ask for short CPU slices"),
    }
}

/// Everything after the flags: binds, starts the server and serves until a
/// signal.
async fn serve(flags: Flags) -> ExitCode {
    if let Some(Subcommand::Token { role, sub, ttl }) = &flags.command {
        return print_token(&flags, *role, sub, *ttl);
    }
    let mut config = flags.server_config();
    match flags.keys() {
        Ok(keys) => config.auth = keys,
        Err(cause) => {
            error!(%cause, "cannot load the auth secret");
            return ExitCode::FAILURE;
        }
    }
    match flags.tls() {
        Ok(tls) => config.tls = tls,
        Err(cause) => {
            error!(%cause, "cannot load the TLS certificate or key");
            return ExitCode::FAILURE;
        }
    }
    if config.auth.is_none() {
        if flags.listen.ip().is_loopback() {
            warn!(
                "NO AUTHENTICATION: no --auth-secret-file, so every caller may act as any driver, rider, fleet or \
                 operator; serving on loopback only"
            );
        } else if flags.insecure {
            warn!(addr = %flags.listen, "NO AUTHENTICATION on a non-loopback address (--insecure): anyone who can reach this port can act as anyone");
        } else {
            error!(addr = %flags.listen, "refusing to serve a non-loopback address without --auth-secret-file (or --insecure)");
            return ExitCode::FAILURE;
        }
    }
    if let HttpListen::On(addr) = flags.http_listen
        && !addr.ip().is_loopback()
        && config.auth.is_none()
        && !flags.insecure
    {
        error!(%addr, "refusing to serve HTTP on a non-loopback address without --auth-secret-file (or --insecure)");
        return ExitCode::FAILURE;
    }
    if let Err(err) = std::fs::create_dir_all(&flags.data_dir) {
        error!(dir = %flags.data_dir.display(), cause = %err, "cannot create the data directory");
        return ExitCode::FAILURE;
    }
    let signalled = hook_signals();
    let listener = match TcpListener::bind(flags.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            error!(addr = %flags.listen, cause = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| flags.listen.to_string(), |a| a.to_string());
    if !flags.cluster.is_empty() {
        return run_cluster(&flags, config, listener, addr, signalled).await;
    }
    // The recorder goes in before the server starts, so the handles the
    // server takes record into it.
    let http = match flags.http_listen {
        HttpListen::Off => None,
        HttpListen::On(at) => match (TcpListener::bind(at).await, dispatch_http::Metrics::install()) {
            (Ok(listener), Ok(metrics)) => Some((listener, metrics)),
            (Err(err), _) => {
                error!(addr = %at, cause = %err, "cannot listen for HTTP (--http-listen off to go without)");
                return ExitCode::FAILURE;
            }
            (_, Err(err)) => {
                error!(cause = %err, "cannot set up metrics");
                return ExitCode::FAILURE;
            }
        },
    };
    if matches!(flags.fsync, FsyncFlag::Never) {
        warn!("--fsync never: trips survive a crash of this process but not of the machine; for tests only");
    }
    let http_config = dispatch_http::HttpConfig {
        keys: config.auth.clone(),
        open_metrics: flags.http_open_metrics,
        map_tile_url: flags.map_tile_url.clone(),
    };
    let server = match dispatch_server::Server::start(config).await {
        Ok(server) => server,
        Err(err) => {
            error!(cause = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signalled.await;
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http_addr = match http {
        None => "off".to_owned(),
        Some((listener, metrics)) => {
            let http_addr = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let app = dispatch_http::App { operator: server.operator(), metrics: Some(metrics), config: http_config };
            let stop = stopping(stop_rx.clone());
            tokio::spawn(async move {
                if let Err(err) = dispatch_http::serve(listener, app, stop).await {
                    error!(cause = %err, "HTTP side failed");
                }
            });
            http_addr
        }
    };
    info!(%addr, http = %http_addr, data_dir = %flags.data_dir.display(), "dispatchd listening");
    let grace = Duration::from_millis(flags.shutdown_grace_ms);
    let server = tokio::spawn(server.serve(listener, stopping(stop_rx.clone())));
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
        () = stopping(stop_rx) => match tokio::time::timeout(grace, served).await {
            Ok(code) => code,
            Err(_) => {
                warn!(grace_ms = flags.shutdown_grace_ms, "calls still open after the grace period; exiting");
                ExitCode::SUCCESS
            }
        },
    }
}

/// Cluster mode: joins the NATS cluster and serves clients on `listener`,
/// as the owner or relaying to it, until a signal.
async fn run_cluster(
    flags: &Flags,
    config: ServerConfig,
    listener: TcpListener,
    addr: String,
    signalled: impl std::future::Future<Output = ()> + Send + 'static,
) -> ExitCode {
    // The HTTP side: a front door here like gRPC's, served by the owner.
    let side = match flags.http_listen {
        HttpListen::Off => None,
        HttpListen::On(at) => {
            let bound = (TcpListener::bind(at).await, TcpListener::bind(flags.cluster_http_listen).await);
            let (public, engine) = match bound {
                (Ok(public), Ok(engine)) => (public, engine),
                (Err(err), _) | (_, Err(err)) => {
                    error!(addr = %at, cause = %err, "cannot listen for HTTP (--http-listen off to go without)");
                    return ExitCode::FAILURE;
                }
            };
            let metrics = match dispatch_http::Metrics::install() {
                Ok(metrics) => metrics,
                Err(err) => {
                    error!(cause = %err, "cannot set up metrics");
                    return ExitCode::FAILURE;
                }
            };
            metrics.keep_up();
            let http_config = dispatch_http::HttpConfig {
                keys: config.auth.clone(),
                open_metrics: flags.http_open_metrics,
                map_tile_url: flags.map_tile_url.clone(),
            };
            let serve: dispatch_cluster::SideServe = std::sync::Arc::new(move |operator, connections, stop| {
                let app = dispatch_http::App { operator, metrics: Some(metrics.clone()), config: http_config.clone() };
                Box::pin(async move {
                    if let Err(err) = dispatch_http::serve_connections(connections, app, stop).await {
                        error!(cause = %err, "HTTP side failed");
                    }
                })
            });
            Some(dispatch_cluster::Side { public, engine, serve })
        }
    };
    let http_addr =
        side.as_ref().and_then(|s| s.public.local_addr().ok()).map_or_else(|| "off".to_owned(), |a| a.to_string());
    let node_id = flags.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        format!("{host}:{}", listener.local_addr().map(|a| a.port()).unwrap_or_default())
    });
    let cluster = dispatch_cluster::ClusterConfig {
        servers: flags.cluster.clone(),
        node_id: node_id.clone(),
        engine_listen: flags.cluster_listen,
        advertise: flags.cluster_advertise.clone(),
        replicas: usize::from(flags.cluster_replicas),
        lease_ttl: Duration::from_millis(u64::try_from(flags.lease_ttl).unwrap_or(3_000)),
        shard: 0,
    };
    let node = match dispatch_cluster::Node::join(cluster, Duration::from_secs(60)).await {
        Ok(node) => node,
        Err(cause) => {
            error!(%cause, "cannot join the cluster");
            return ExitCode::FAILURE;
        }
    };
    info!(%addr, http = %http_addr, node = %node_id, engine = %node.engine_addr(), "dispatchd listening");
    match node.run(listener, side, config, signalled).await {
        Ok(()) => {
            info!("dispatchd stopped");
            ExitCode::SUCCESS
        }
        Err(cause) => {
            error!(%cause, "cluster node failed");
            ExitCode::FAILURE
        }
    }
}

/// Hooks SIGINT and SIGTERM now (before the server says it is listening,
/// so a signal sent right after that line is never missed) and resolves
/// when one arrives.
fn hook_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => info!("SIGINT received"),
                        _ = term.recv() => info!("SIGTERM received"),
                    }
                }
                (Err(err), _) | (_, Err(err)) => {
                    warn!(cause = %err, "cannot hook SIGTERM/SIGINT; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            info!("SIGINT received");
        }
    }
}
