//! `dispatchd`'s flags: each also a `DISPATCH_*` variable and a key of the
//! `--config` file, grouped under headings in `--help`, with defaults taken
//! from the server's own `Default` so they are stated once. Durations are
//! humantime (`10s`, `250ms`, `24h`) everywhere; the integer spellings of
//! earlier releases (`--offer-timeout-ms 10000`) are hidden aliases that
//! still work, with a warning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Parser, parser::ValueSource};
use dispatch_auth::Role;
use dispatch_core::engine::{Config as EngineConfig, MAX_OFFERS_PER_TRIP, MatchingSpec};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_server::{Fsync, Keys, RateLimits, ServerConfig, TlsFiles, TripLogConfig};

const LISTENING: &str = "Listening";
const MATCHING: &str = "Matching";
const LIMITS: &str = "Limits";
const DURABILITY: &str = "Durability";
const SECURITY: &str = "Security";
const CLUSTER: &str = "Cluster";
const HTTP: &str = "HTTP side";
const LOGGING: &str = "Logging and scheduling";

fn engine() -> EngineConfig {
    EngineConfig::default()
}

fn server() -> ServerConfig {
    ServerConfig::default()
}

fn rates() -> RateLimits {
    RateLimits::default()
}

/// Real-time ride dispatch over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Flags {
    /// What to do other than serve.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    /// A TOML file of settings, one key per flag (`offer-timeout = "5s"`),
    /// under `DISPATCH_*` variables and flags.
    #[arg(long, env = "DISPATCH_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    // ------------------------------------------------------------ listening
    /// Address to serve gRPC on.
    #[arg(long, env = "DISPATCH_LISTEN", default_value = "127.0.0.1:50051", help_heading = LISTENING)]
    pub listen: SocketAddr,
    /// How long to wait for open calls to finish after a shutdown signal.
    #[arg(long, env = "DISPATCH_SHUTDOWN_GRACE", default_value = "5s", value_parser = Dur::any, help_heading = LISTENING)]
    pub shutdown_grace: Dur,

    // ------------------------------------------------------------- matching
    /// How rides are matched: `nearest` (each request at once to the
    /// nearest free driver), `batch:W` (requests gathered for a window
    /// such as `2s` or `250ms`, then one min-cost assignment) or
    /// `broadcast:K` (the K nearest at once, the first to accept wins), for
    /// every service or per service: `batch:2s,premium=nearest`; then
    /// options for all, `+forward:M` and `+accept:M` (as
    /// `--forward-dispatch-m` and `--accept-weight-m`). The grammar of
    /// `dispatch-sim --compare`.
    #[arg(long, env = "DISPATCH_MATCHING", default_value = "nearest", value_parser = matching_spec, help_heading = MATCHING)]
    pub matching: MatchingSpec,
    /// How long a driver has to answer an offer.
    #[arg(long, env = "DISPATCH_OFFER_TIMEOUT", default_value_t = Dur::ms(engine().offer_timeout_ms),
        value_parser = Dur::positive, help_heading = MATCHING)]
    pub offer_timeout: Dur,
    /// How long a ride request searches before it ends NO_DRIVER_FOUND.
    #[arg(long, env = "DISPATCH_SEARCH_TIMEOUT", default_value_t = Dur::ms(engine().search_timeout_ms),
        value_parser = Dur::positive, help_heading = MATCHING)]
    pub search_timeout: Dur,
    /// The pickup radius when a request does not give one, in metres.
    #[arg(long, env = "DISPATCH_MAX_PICKUP_DISTANCE_M", default_value_t = engine().max_pickup_distance_m,
        value_parser = positive_metres, help_heading = MATCHING)]
    pub max_pickup_distance_m: f64,
    /// The pickup radius as time (`10m`): no driver whose drive to the
    /// pickup takes longer is offered the ride (by road with
    /// `--road-network`, else the straight line at `--eta-speed-kmh`),
    /// whatever the radius in metres; 0 turns it off.
    #[arg(long, env = "DISPATCH_MAX_PICKUP_ETA", default_value_t = Dur::ms(engine().max_pickup_eta_ms),
        value_parser = Dur::any, help_heading = MATCHING)]
    pub max_pickup_eta: Dur,
    /// How often, at most, an assigned trip's pickup ETA is reckoned again
    /// from where the car is (by road with `--road-network`) and sent to
    /// its riders with the car's position; 0 keeps the ETA of the
    /// assignment.
    #[arg(long, env = "DISPATCH_ETA_REFRESH", default_value_t = Dur::ms(engine().eta_refresh_ms),
        value_parser = Dur::any, help_heading = MATCHING)]
    pub eta_refresh: Dur,
    /// How many drivers a ride is offered to (declined, lapsed or given
    /// back) before it ends NO_DRIVER_FOUND; at most 5,000, so every trip
    /// record fits the trip log's frame limit.
    #[arg(long, env = "DISPATCH_MAX_OFFERS_PER_TRIP", default_value_t = engine().max_offers_per_trip as u64,
        value_parser = clap::value_parser!(u64).range(1..=MAX_OFFERS_PER_TRIP as u64), help_heading = MATCHING)]
    pub max_offers_per_trip: u64,
    /// In a batch, leaving a request unmatched costs like a pickup this
    /// many metres long...
    #[arg(long, env = "DISPATCH_BATCH_UNMATCHED_M", default_value_t = engine().batch_unmatched_m,
        value_parser = positive_metres, help_heading = MATCHING)]
    pub batch_unmatched_m: f64,
    /// ...plus this many metres for every second it has waited.
    #[arg(long, env = "DISPATCH_BATCH_UNMATCHED_PER_S_M", default_value_t = engine().batch_unmatched_per_s_m,
        value_parser = positive_metres, help_heading = MATCHING)]
    pub batch_unmatched_per_s_m: f64,
    /// Acceptance-aware ranking: a driver who missed (declined or let
    /// lapse) all of their last 20 offers ranks like one this many metres
    /// farther (half of them, half as much); 0 ranks by distance alone.
    #[arg(long, alias = "accept-weight", env = "DISPATCH_ACCEPT_WEIGHT_M", default_value_t = engine().accept_weight_m,
        value_parser = metres_or_zero, help_heading = MATCHING)]
    pub accept_weight_m: f64,
    /// Forward dispatch: a driver whose ride in progress ends within this
    /// many metres of a new pickup may be offered it next (queued), when
    /// the rest of the ride plus the drive on is shorter than every free
    /// driver's pickup; 0 turns it off.
    #[arg(long, env = "DISPATCH_FORWARD_DISPATCH_M", default_value_t = engine().forward_dispatch_m,
        value_parser = metres_or_zero, help_heading = MATCHING)]
    pub forward_dispatch_m: f64,
    /// The straight-line speed at which a rider's estimated time to the
    /// pickup is reckoned from the distance (city driving, detours
    /// included).
    #[arg(long, env = "DISPATCH_ETA_SPEED_KMH", default_value_t = engine().eta_speed_kmh, value_parser = speed_kmh,
        help_heading = MATCHING)]
    pub eta_speed_kmh: f64,
    /// An OpenStreetMap extract (`.osm.pbf`, or `.osm` XML) to rank drivers
    /// by their drive to the pickup over its roads: the nearest
    /// `--road-candidates` by the straight line are ranked by road, and a
    /// trip's pickup distance and ETA are the road's. Prepared at start and
    /// kept in `roads/` in the data directory, so a restart reads it back.
    /// Without it, drivers are ranked by the straight line.
    #[arg(long, env = "DISPATCH_ROAD_NETWORK", help_heading = MATCHING)]
    pub road_network: Option<PathBuf>,
    /// An external router to rank drivers by road instead of an extract:
    /// an OSRM server's address, `osrm:http://HOST:PORT` (its `table`
    /// service, one request per ranking).
    #[arg(long, env = "DISPATCH_ROUTER", conflicts_with = "road_network", help_heading = MATCHING)]
    pub router: Option<String>,
    /// How long a request to `--router` may take; one that fails leaves
    /// the router resting for 5 s, meanwhile drivers are ranked by the
    /// straight line.
    #[arg(long, env = "DISPATCH_ROUTER_TIMEOUT", default_value = "1s", value_parser = Dur::positive,
        help_heading = MATCHING)]
    pub router_timeout: Dur,
    /// How many of the nearest drivers by the straight line are ranked by
    /// road.
    #[arg(long, env = "DISPATCH_ROAD_CANDIDATES", default_value_t = u16::try_from(engine().road_candidates).unwrap_or(u16::MAX),
        value_parser = clap::value_parser!(u16).range(1..=1_000), help_heading = MATCHING)]
    pub road_candidates: u16,
    /// How far a driver or a pickup may be from the nearest road and still
    /// be routed; one farther is ranked by the straight line
    /// (`dispatch_road_fallbacks_total` counts them).
    #[arg(long, env = "DISPATCH_ROAD_SNAP_M", default_value_t = dispatch_road::DEFAULT_SNAP_M,
        value_parser = metres_or_zero, help_heading = MATCHING)]
    pub road_snap_m: f64,
    /// How long a driver whose app dropped keeps a trip not yet in progress
    /// before it goes to another driver.
    #[arg(long, env = "DISPATCH_DRIVER_GRACE", default_value_t = Dur::ms(engine().driver_grace_ms),
        value_parser = Dur::any, help_heading = MATCHING)]
    pub driver_grace: Dur,
    /// The least time between two updates of the car's position to a rider
    /// following a trip (`0s`: every ping; at most `1h`). Each is a message
    /// on the rider's stream: longer means fewer on a loaded node.
    #[arg(long, env = "DISPATCH_RIDER_POSITION_INTERVAL", default_value_t = Dur::ms(engine().rider_position_interval_ms),
        value_parser = up_to_an_hour, help_heading = MATCHING)]
    pub rider_position_interval: Dur,
    /// Services whose offers do not show the dropoff, comma-separated
    /// (`taxi,premium,van,designated-driver`), or `none`.
    #[arg(long, env = "DISPATCH_OFFER_HIDES_DROPOFF", default_value = "premium", value_parser = service_set,
        help_heading = MATCHING)]
    pub offer_hides_dropoff: ServiceSet,
    /// Show drivers and fleets the rider's id in offers and trips (by
    /// default they never see it).
    #[arg(long, env = "DISPATCH_DRIVERS_SEE_RIDER_ID", help_heading = MATCHING)]
    pub drivers_see_rider_id: bool,

    // --------------------------------------------------------------- limits
    /// The most drivers the engine knows at once (connected, or holding a
    /// trip); a new driver past it is refused RESOURCE_EXHAUSTED.
    #[arg(long, env = "DISPATCH_MAX_DRIVERS", default_value_t = engine().max_drivers, help_heading = LIMITS)]
    pub max_drivers: usize,
    /// The most drivers one fleet may speak for at once.
    #[arg(long, env = "DISPATCH_MAX_DRIVERS_PER_FLEET", default_value_t = engine().max_drivers_per_fleet,
        help_heading = LIMITS)]
    pub max_drivers_per_fleet: usize,
    /// The most updates one fleet batch may carry.
    #[arg(long, env = "DISPATCH_MAX_FLEET_BATCH", default_value_t = server().max_fleet_batch, help_heading = LIMITS)]
    pub max_fleet_batch: usize,
    /// The most driver and fleet sessions open at once.
    #[arg(long, env = "DISPATCH_MAX_SESSIONS", default_value_t = server().max_sessions, help_heading = LIMITS)]
    pub max_sessions: usize,
    /// The most location updates queued for the engine; past it updates
    /// are shed (counted, and `Rejected RESOURCE_EXHAUSTED`). The default
    /// holds a second of updates at 1,000,000 a second (~100 MB when full).
    #[arg(long, env = "DISPATCH_MAX_QUEUED_UPDATES", default_value_t = server().max_queued_updates as u64,
        value_parser = clap::value_parser!(u64).range(1..=1 << 26), help_heading = LIMITS)]
    pub max_queued_updates: u64,
    /// The largest message a client may send, in bytes.
    #[arg(long, env = "DISPATCH_MAX_MESSAGE_BYTES", default_value_t = server().max_message_bytes, help_heading = LIMITS)]
    pub max_message_bytes: usize,
    /// The most concurrent streams on one HTTP/2 connection.
    #[arg(long, env = "DISPATCH_MAX_STREAMS_PER_CONNECTION", default_value_t = server().max_streams_per_connection,
        help_heading = LIMITS)]
    pub max_streams_per_connection: u32,
    /// Location updates one driver may send per second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_DRIVER_UPDATES_PER_S", default_value_t = rates().driver_updates_per_s,
        help_heading = LIMITS)]
    pub rate_driver_updates_per_s: u32,
    /// Offer replies, availability changes and trip progress reports one
    /// driver may send per second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_DRIVER_MESSAGES_PER_S", default_value_t = rates().driver_messages_per_s,
        help_heading = LIMITS)]
    pub rate_driver_messages_per_s: u32,
    /// Ride requests one rider may make per minute (also the burst).
    #[arg(long, env = "DISPATCH_RATE_RIDER_REQUESTS_PER_MIN", default_value_t = rates().rider_requests_per_min,
        help_heading = LIMITS)]
    pub rate_rider_requests_per_min: u32,
    /// Update batches one fleet may send per second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_FLEET_BATCHES_PER_S", default_value_t = rates().fleet_batches_per_s,
        help_heading = LIMITS)]
    pub rate_fleet_batches_per_s: u32,
    /// Offer replies and trip progress reports one fleet may send per
    /// second (also the burst).
    #[arg(long, env = "DISPATCH_RATE_FLEET_MESSAGES_PER_S", default_value_t = rates().fleet_messages_per_s,
        help_heading = LIMITS)]
    pub rate_fleet_messages_per_s: u32,
    /// GetTrips of a trip that is not open (ended, or unknown) one rider or
    /// driver token may make per second (also the burst); reads of open
    /// trips, admin tokens and an open server are not counted.
    #[arg(long, env = "DISPATCH_RATE_TRIP_READS_PER_S", default_value_t = rates().trip_reads_per_s, help_heading = LIMITS)]
    pub rate_trip_reads_per_s: u32,

    // ----------------------------------------------------------- durability
    /// Where durable state lives; created if missing.
    #[arg(long, env = "DISPATCH_DATA_DIR", default_value = "./data", help_heading = DURABILITY)]
    pub data_dir: PathBuf,
    /// Shards of the map, each with its own engine thread and trip log
    /// (`shard-K` in the data directory), from 1 to 1024: more than one
    /// lets matching use more than one core. Fixed when the data directory
    /// is made; a start with another count is refused. Single node only.
    #[arg(long, env = "DISPATCH_SHARDS", default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=i64::from(dispatch_shard::MAX_SHARDS)), help_heading = DURABILITY)]
    pub shards: u16,
    /// When the trip log reaches the disk: `always` (every commit waits for
    /// fdatasync) or `never` (the OS decides: survives a process crash, not
    /// a power cut; for tests and benchmarks only).
    #[arg(long, env = "DISPATCH_FSYNC", default_value = "always", help_heading = DURABILITY)]
    pub fsync: FsyncFlag,
    /// Compact the trip log (snapshot plus a fresh log) once it passes this
    /// many bytes and the size of the last snapshot.
    #[arg(long, env = "DISPATCH_LOG_COMPACT_AFTER_BYTES", default_value_t = TripLogConfig::new("").compact_after_bytes,
        help_heading = DURABILITY)]
    pub log_compact_after_bytes: u64,
    /// How long a finished trip stays readable with GetTrip (and its
    /// request id remembered), e.g. `24h`, `90m`.
    #[arg(long, env = "DISPATCH_TRIP_RETENTION", default_value_t = Dur::ms(engine().trip_retention_ms),
        value_parser = Dur::positive, help_heading = DURABILITY)]
    pub trip_retention: Dur,

    // ------------------------------------------------------------- security
    /// The file holding the secret tokens are signed with (at least 32
    /// bytes). Without it the server checks no tokens, and so serves only a
    /// loopback address unless `--insecure`.
    #[arg(long, env = "DISPATCH_AUTH_SECRET_FILE", global = true, help_heading = SECURITY)]
    pub auth_secret_file: Option<PathBuf>,
    /// During a key rotation: the previous secret, still accepted for
    /// `--auth-previous-grace` after start.
    #[arg(long, env = "DISPATCH_AUTH_PREVIOUS_SECRET_FILE", help_heading = SECURITY)]
    pub auth_previous_secret_file: Option<PathBuf>,
    /// How long the previous secret stays accepted, e.g. `24h`.
    #[arg(long, env = "DISPATCH_AUTH_PREVIOUS_GRACE", default_value_t = Dur(Duration::from_secs(86_400)), value_parser = Dur::positive,
        help_heading = SECURITY)]
    pub auth_previous_grace: Dur,
    /// Serve without checking tokens even on a non-loopback address. For a
    /// network you trust entirely; the log says so at every start.
    #[arg(long, env = "DISPATCH_INSECURE", help_heading = SECURITY)]
    pub insecure: bool,
    /// TLS certificate chain (PEM); with `--tls-key`, every connection is TLS.
    #[arg(long, env = "DISPATCH_TLS_CERT", requires = "tls_key", help_heading = SECURITY)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "DISPATCH_TLS_KEY", requires = "tls_cert", help_heading = SECURITY)]
    pub tls_key: Option<PathBuf>,

    // -------------------------------------------------------------- cluster
    /// Cluster mode: the NATS servers (JetStream) this node joins,
    /// comma-separated (`nats://127.0.0.1:4222,nats://127.0.0.1:4223`). The
    /// trip log is then a replicated stream, not `--data-dir`, and one node
    /// at a time runs the engine (docs/cluster.md).
    #[arg(long, env = "DISPATCH_CLUSTER", value_delimiter = ',', help_heading = CLUSTER)]
    pub cluster: Vec<String>,
    /// This node's id in the cluster (default: the host name and the port).
    #[arg(long, env = "DISPATCH_NODE_ID", help_heading = CLUSTER)]
    pub node_id: Option<String>,
    /// Where this node's engine takes the connections other nodes relay to
    /// it while it owns the shard.
    #[arg(long, env = "DISPATCH_CLUSTER_LISTEN", default_value = "127.0.0.1:0", help_heading = CLUSTER)]
    pub cluster_listen: SocketAddr,
    /// Where this node's HTTP side takes the connections other nodes relay
    /// to it while it owns the shard.
    #[arg(long, env = "DISPATCH_CLUSTER_HTTP_LISTEN", default_value = "127.0.0.1:0", help_heading = CLUSTER)]
    pub cluster_http_listen: SocketAddr,
    /// The engine address other nodes are told (default: the one bound).
    #[arg(long, env = "DISPATCH_CLUSTER_ADVERTISE", help_heading = CLUSTER)]
    pub cluster_advertise: Option<String>,
    /// Copies JetStream keeps of the trip log and the lease: 3 for a
    /// three-server cluster, 1 for a single server.
    #[arg(long, env = "DISPATCH_CLUSTER_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5),
        help_heading = CLUSTER)]
    pub cluster_replicas: u8,
    /// How long an owner's lease lasts unrenewed: a dead owner is replaced
    /// after at most this plus reading the log back. Renewed every third.
    #[arg(long, env = "DISPATCH_LEASE_TTL", default_value = "3s", value_parser = Dur::positive, help_heading = CLUSTER)]
    pub lease_ttl: Dur,

    // ---------------------------------------------------------------- HTTP
    /// Address for the HTTP side (Prometheus `/metrics`, `/healthz`, the
    /// live map at `/`), or `off`. A non-loopback address needs
    /// `--auth-secret-file` (or `--insecure`), like gRPC.
    #[arg(long, env = "DISPATCH_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_parser = http_listen,
        help_heading = HTTP)]
    pub http_listen: HttpListen,
    /// Serve `/metrics` and `/healthz` without a token even when tokens are
    /// checked, for scrapers (the map and its API still need an admin
    /// token).
    #[arg(long, env = "DISPATCH_HTTP_OPEN_METRICS", help_heading = HTTP)]
    pub http_open_metrics: bool,
    /// A tile server for the live map's base layer, e.g.
    /// `http://tiles.internal/{z}/{x}/{y}.png`; without one the map draws a
    /// plain grid with coordinates.
    #[arg(long, env = "DISPATCH_MAP_TILE_URL", help_heading = HTTP)]
    pub map_tile_url: Option<String>,

    // ------------------------------------------------- logging, scheduling
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log shippers).
    #[arg(long, env = "DISPATCH_LOG_FORMAT", default_value = "text", help_heading = LOGGING)]
    pub log_format: LogFormat,
    /// The CPU slice every thread of the server asks the kernel for: a
    /// thread with work waits at most about this long for a busy core
    /// (Linux 6.12 and later takes 100us to 100ms; no privilege needed; the
    /// share of CPU is unchanged). `0s` leaves the kernel's own (1.4 ms on
    /// two cores).
    #[arg(long, env = "DISPATCH_SCHED_SLICE", default_value = "100us", value_parser = slice,
        help_heading = LOGGING)]
    pub sched_slice: Dur,

    // --------------------------------------- earlier spellings (hidden)
    #[arg(long, env = "DISPATCH_OFFER_TIMEOUT_MS", hide = true, value_parser = clap::value_parser!(i64).range(1..))]
    offer_timeout_ms: Option<i64>,
    #[arg(long, env = "DISPATCH_SEARCH_TIMEOUT_MS", hide = true, value_parser = clap::value_parser!(i64).range(1..))]
    search_timeout_ms: Option<i64>,
    #[arg(long, env = "DISPATCH_DRIVER_GRACE_MS", hide = true, value_parser = clap::value_parser!(i64).range(0..))]
    driver_grace_ms: Option<i64>,
    #[arg(long, env = "DISPATCH_RIDER_POSITION_INTERVAL_MS", hide = true,
        value_parser = clap::value_parser!(i64).range(0..=3_600_000))]
    rider_position_interval_ms: Option<i64>,
    #[arg(long, env = "DISPATCH_SHUTDOWN_GRACE_MS", hide = true, value_parser = clap::value_parser!(i64).range(0..))]
    shutdown_grace_ms: Option<i64>,
    #[arg(long, env = "DISPATCH_SCHED_SLICE_US", hide = true, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    sched_slice_us: Option<u64>,
}

/// What to do other than serve.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Prints the configuration in force as a TOML file `--config` accepts,
    /// each value with where it came from (default, file, environment,
    /// flag).
    Config {
        /// Accepted for scripts of earlier releases; printing is what
        /// `config` does.
        #[arg(long, hide = true)]
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
        #[arg(long, default_value = "24h", value_parser = Dur::positive)]
        ttl: Dur,
    },
}

pub use dispatch_cli::Dur;

fn up_to_an_hour(s: &str) -> Result<Dur, String> {
    match s.parse::<Dur>()? {
        Dur(d) if d <= Duration::from_secs(3_600) => Ok(Dur(d)),
        _ => Err(format!("{s:?} is longer than an hour")),
    }
}

fn slice(s: &str) -> Result<Dur, String> {
    match s.parse::<Dur>()? {
        Dur(d) if d <= Duration::from_millis(100) => Ok(Dur(d)),
        _ => Err(format!("{s:?} is longer than the kernel's longest slice, 100ms")),
    }
}

/// Where the HTTP side listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// Not at all.
    Off,
    /// On this address.
    On(SocketAddr),
}

fn http_listen(s: &str) -> Result<HttpListen, String> {
    match s {
        "off" | "none" | "" => Ok(HttpListen::Off),
        addr => addr.parse().map(HttpListen::On).map_err(|e| format!("{addr:?}: {e} (an address, or `off`)")),
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

/// When the trip log reaches the disk.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FsyncFlag {
    /// Every commit waits for fdatasync.
    Always,
    /// The OS decides.
    Never,
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

fn matching_spec(s: &str) -> Result<MatchingSpec, String> {
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

/// Where a value came from: given (flag, file, environment) or a default.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

impl Flags {
    /// Takes the earlier integer spellings into their humantime flags, and
    /// says for each what to write instead. A spelling of today given too
    /// wins.
    pub fn take_earlier_spellings(&mut self, matches: &ArgMatches) -> Vec<String> {
        let mut said = Vec::new();
        let mut take = |old: &str, new: &str, value: Option<Dur>, into: &mut Dur| {
            said.extend(dispatch_cli::earlier(old, new, value, given(matches, &new.replace('-', "_")), into));
        };
        take("offer-timeout-ms", "offer-timeout", self.offer_timeout_ms.map(Dur::ms), &mut self.offer_timeout);
        take("search-timeout-ms", "search-timeout", self.search_timeout_ms.map(Dur::ms), &mut self.search_timeout);
        take("driver-grace-ms", "driver-grace", self.driver_grace_ms.map(Dur::ms), &mut self.driver_grace);
        let interval = self.rider_position_interval_ms.map(Dur::ms);
        take("rider-position-interval-ms", "rider-position-interval", interval, &mut self.rider_position_interval);
        take("shutdown-grace-ms", "shutdown-grace", self.shutdown_grace_ms.map(Dur::ms), &mut self.shutdown_grace);
        let slice = self.sched_slice_us.map(|us| Dur(Duration::from_micros(us)));
        take("sched-slice-us", "sched-slice", slice, &mut self.sched_slice);
        said
    }

    /// The server's configuration from the flags.
    pub fn server_config(&self) -> ServerConfig {
        let mut config = ServerConfig::default();
        config.engine.offer_timeout_ms = self.offer_timeout.as_ms();
        config.engine.search_timeout_ms = self.search_timeout.as_ms();
        config.engine.max_pickup_distance_m = self.max_pickup_distance_m;
        config.engine.max_pickup_eta_ms = self.max_pickup_eta.as_ms();
        config.engine.eta_refresh_ms = self.eta_refresh.as_ms();
        config.engine.trip_retention_ms = self.trip_retention.as_ms();
        config.engine.driver_grace_ms = self.driver_grace.as_ms();
        config.engine.rider_position_interval_ms = self.rider_position_interval.as_ms();
        // Fits: the parser caps it at MAX_OFFERS_PER_TRIP.
        config.engine.max_offers_per_trip = self.max_offers_per_trip as usize;
        config.engine.max_drivers = self.max_drivers;
        config.engine.max_drivers_per_fleet = self.max_drivers_per_fleet;
        config.engine.matching = self.matching.policies;
        config.engine.batch_unmatched_m = self.batch_unmatched_m;
        config.engine.batch_unmatched_per_s_m = self.batch_unmatched_per_s_m;
        // `--matching ...+accept:M+forward:M` says it in the same breath.
        config.engine.accept_weight_m = self.matching.accept_weight_m.unwrap_or(self.accept_weight_m);
        config.engine.forward_dispatch_m = self.matching.forward_dispatch_m.unwrap_or(self.forward_dispatch_m);
        config.engine.eta_speed_kmh = self.eta_speed_kmh;
        config.engine.road_candidates = usize::from(self.road_candidates);
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
        config.shards = self.shards;
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
    pub fn keys(&self) -> Result<Option<Keys>, String> {
        let Some(path) = &self.auth_secret_file else { return Ok(None) };
        let read = |path: &PathBuf| -> Result<Vec<u8>, String> {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok(dispatch_auth::secret_from_file_contents(&bytes).to_vec())
        };
        let keys = Keys::new(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(previous) = &self.auth_previous_secret_file else { return Ok(Some(keys)) };
        let until = std::time::SystemTime::now() + self.auth_previous_grace.0;
        keys.with_previous(&read(previous)?, until).map(Some).map_err(|e| format!("{}: {e}", previous.display()))
    }

    /// The TLS certificate and key, if given.
    pub fn tls(&self) -> Result<Option<TlsFiles>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        Ok(Some(TlsFiles { cert_pem: read(cert)?, key_pem: read(key)? }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_of_intervals_and_slices_hold() {
        assert!(up_to_an_hour("61m").is_err() && up_to_an_hour("0s").is_ok());
        assert!(slice("1s").is_err() && slice("100us").is_ok() && slice("0").is_ok());
        assert!(Dur::positive("0s").is_err());
    }

    #[test]
    fn matching_takes_the_simulators_grammar() {
        let flags = Flags::parse_from([
            "dispatchd",
            "--matching",
            "batch:2s,premium=nearest+forward:1000",
            "--accept-weight-m",
            "300",
        ]);
        let config = flags.server_config();
        assert_eq!(config.engine.matching.default.to_string(), "batch:2s");
        assert_eq!((config.engine.forward_dispatch_m, config.engine.accept_weight_m), (1_000.0, 300.0));
    }

    #[test]
    fn the_defaults_are_the_servers_own() {
        let flags = Flags::parse_from(["dispatchd"]);
        let (ours, theirs) = (flags.server_config(), ServerConfig::default());
        assert_eq!(ours.engine, theirs.engine);
        assert_eq!(ours.rate_limits, theirs.rate_limits);
        assert_eq!(
            (ours.max_fleet_batch, ours.max_sessions, ours.max_queued_updates, ours.max_message_bytes),
            (theirs.max_fleet_batch, theirs.max_sessions, theirs.max_queued_updates, theirs.max_message_bytes)
        );
        assert_eq!(ours.offer_hides_dropoff, theirs.offer_hides_dropoff);
    }
}
