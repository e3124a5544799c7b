//! The engine task's clock: unix milliseconds, read from a monotonic
//! clock so that time never runs backwards under the engine.

use dispatch_core::time::Timestamp;
use tokio::time::Instant;

/// Unix milliseconds from a monotonic clock: wall time read once at start,
/// then a monotonic `Instant`, so offer expiries never jump with the wall
/// clock.
pub(super) struct Clock {
    start: Instant,
    start_unix_ms: i64,
}

impl Clock {
    pub(super) fn new() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { start: Instant::now(), start_unix_ms: i64::try_from(unix.as_millis()).unwrap_or(i64::MAX) }
    }

    pub(super) fn now(&self) -> Timestamp {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.start_unix_ms.saturating_add(elapsed))
    }

    pub(super) fn instant(&self, at: Timestamp) -> Instant {
        let ms = u64::try_from(at.since(Timestamp(self.start_unix_ms))).unwrap_or(0);
        self.start + std::time::Duration::from_millis(ms)
    }
}
