//! The server's settings: the engine's rules plus the sizes of its queues.

/// Everything `run` needs besides a listener and a shutdown signal.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The dispatch rules.
    pub engine: dispatch_core::engine::Config,
    /// Commands other than location updates waiting for the engine task, at
    /// most (callers wait when it is full).
    pub command_queue: usize,
    /// Location updates (pings and fleet batch entries) waiting for the
    /// engine task, at most; past that, updates are shed (about a second of
    /// 250,000 drivers).
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            engine: dispatch_core::engine::Config::default(),
            command_queue: 65_536,
            max_queued_updates: 262_144,
            driver_session_queue: 256,
            fleet_session_queue: 65_536,
            rider_queue: 256,
            max_fleet_batch: 10_000,
        }
    }
}
