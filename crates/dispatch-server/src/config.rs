//! The server's settings: the engine's rules, the trip log, and the sizes
//! of its queues and limits.

use std::path::PathBuf;

pub use dispatch_auth::Keys;
use dispatch_core::service::{ServiceSet, ServiceType};
pub use dispatch_store::Fsync;

pub use crate::limits::RateLimits;

/// A certificate chain and its private key, PEM.
#[derive(Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsFiles").field("cert_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

/// Where and how the trip log is kept.
#[derive(Debug, Clone)]
pub struct TripLogConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Whether commits wait for the disk.
    pub fsync: Fsync,
    /// Compact once the log passes this many bytes (and the last snapshot's
    /// size).
    pub compact_after_bytes: u64,
}

impl TripLogConfig {
    /// The log in `dir`, synced at every commit.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), fsync: Fsync::Always, compact_after_bytes: 64 << 20 }
    }
}

/// Everything `run` needs besides a listener and a shutdown signal.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The dispatch rules.
    pub engine: dispatch_core::engine::Config,
    /// Commands other than location updates waiting for the engine task, at
    /// most; past that a call gets `RESOURCE_EXHAUSTED` at once (only a
    /// session's close waits for room).
    pub command_queue: usize,
    /// Location updates (pings and fleet batch entries) waiting for the
    /// engine task, at most; past that, updates are shed (a second of
    /// updates at 1,000,000 a second, so a burst or a moment the engine
    /// thread waits for a core is absorbed, not shed).
    pub max_queued_updates: usize,
    /// Events waiting to be read by one driver's session, at most; a session
    /// that falls this far behind is ended with `RESOURCE_EXHAUSTED`.
    pub driver_session_queue: usize,
    /// The same for a fleet session, which carries many drivers' events.
    pub fleet_session_queue: usize,
    /// Trip updates waiting to be read by one rider stream, at most.
    pub rider_queue: usize,
    /// The most driver updates one fleet batch may carry.
    pub max_fleet_batch: usize,
    /// The trip log; `None` keeps nothing across restarts.
    pub trip_log: Option<TripLogConfig>,
    /// Shards of the map, each with its own engine thread and trip log
    /// (1 to 1,024; 1 is one engine for the whole map). Fixed when the
    /// trip log's directory is made.
    pub shards: u16,
    /// This node's name in a cluster, shown as the holder of its shards;
    /// empty on a single node.
    pub node: String,
    /// Rounds of engine output waiting for the trip log, at most; past
    /// that the engine waits for the disk.
    pub commit_queue: usize,
    /// Open driver and fleet sessions, at most; a hello past that gets
    /// `RESOURCE_EXHAUSTED`.
    pub max_sessions: usize,
    /// The largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent streams on one HTTP/2 connection, at most.
    pub max_streams_per_connection: u32,
    /// The keys tokens are checked with; `None` serves everyone without
    /// checking (for loopback only: the binary refuses otherwise).
    pub auth: Option<Keys>,
    /// TLS for every connection; `None` is plaintext.
    pub tls: Option<TlsFiles>,
    /// Per-identity rate limits.
    pub rate_limits: RateLimits,
    /// Services whose offers do not show the driver the dropoff (the trip
    /// shows it once accepted).
    pub offer_hides_dropoff: ServiceSet,
    /// Whether drivers and fleets see the rider's id in offers and trips.
    /// Off: a driver learns nothing of who the rider is.
    pub drivers_see_rider_id: bool,
    /// The road network candidates are ranked by (see
    /// `dispatch_core::roads`); `None` ranks by the straight line.
    pub roads: Option<std::sync::Arc<dyn dispatch_core::roads::Roads>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            engine: dispatch_core::engine::Config::default(),
            command_queue: 65_536,
            max_queued_updates: 1 << 20,
            driver_session_queue: 256,
            fleet_session_queue: 65_536,
            rider_queue: 256,
            max_fleet_batch: 10_000,
            trip_log: None,
            shards: 1,
            node: String::new(),
            commit_queue: 4_096,
            max_sessions: 1_000_000,
            max_message_bytes: 4 << 20,
            max_streams_per_connection: 10_000,
            auth: None,
            tls: None,
            rate_limits: RateLimits::default(),
            offer_hides_dropoff: ServiceSet::EMPTY.with(ServiceType::Premium),
            drivers_see_rider_id: false,
            roads: None,
        }
    }
}
