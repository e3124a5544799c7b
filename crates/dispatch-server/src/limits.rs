//! Per-identity rate limits (token buckets, `governor`): location updates
//! per driver, ride requests per rider, batches per fleet. Excess is
//! refused with `RESOURCE_EXHAUSTED` (on a stream, a `Rejected` event) and
//! touches nobody else's budget.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The rates, each also the burst allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Location updates one driver's session may send per second.
    pub driver_updates_per_s: u32,
    /// Ride requests (retries included) one rider may make per minute.
    pub rider_requests_per_min: u32,
    /// Update batches one fleet session may send per second.
    pub fleet_batches_per_s: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        // Apps ping about once a second; a gateway with 100,000 drivers in
        // batches of 10,000 sends 10 a second.
        Self { driver_updates_per_s: 10, rider_requests_per_min: 30, fleet_batches_per_s: 100 }
    }
}

fn quota(n: u32, per: Duration) -> Quota {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per / n.get()).unwrap_or_else(|| Quota::per_second(n)).allow_burst(n)
}

impl RateLimits {
    /// A bucket for one driver session's location updates. One session
    /// speaks for a driver at a time (a new one replaces the old), so a
    /// bucket per session is a bucket per driver.
    pub fn driver_session(&self) -> DefaultDirectRateLimiter {
        RateLimiter::direct(quota(self.driver_updates_per_s, Duration::from_secs(1)))
    }

    /// A bucket for one fleet session's batches (one session per fleet).
    pub fn fleet_session(&self) -> DefaultDirectRateLimiter {
        RateLimiter::direct(quota(self.fleet_batches_per_s, Duration::from_secs(1)))
    }

    /// Buckets for riders' requests, by rider id.
    pub fn riders(&self) -> RiderLimiter {
        RiderLimiter(Arc::new(RateLimiter::keyed(quota(self.rider_requests_per_min, Duration::from_secs(60)))))
    }
}

/// Ride request buckets by rider. Cheap to clone.
#[derive(Clone)]
pub struct RiderLimiter(Arc<DefaultKeyedRateLimiter<String>>);

impl RiderLimiter {
    /// Whether `rider` may make one more request now.
    pub fn allow(&self, rider: &str) -> bool {
        self.0.check_key(&rider.to_owned()).is_ok()
    }

    /// Drops the buckets of riders who have been quiet long enough to be
    /// full again, so the map holds only recent riders.
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}
