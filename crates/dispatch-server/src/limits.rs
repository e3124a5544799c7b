//! Per-identity rate limits (token buckets, `governor`): location updates
//! and other messages per driver, batches and other messages per fleet,
//! ride requests per rider, reads of trips that are not open per caller. Excess is refused with `RESOURCE_EXHAUSTED` (on
//! a stream, a `Rejected` event) and touches nobody else's budget.
//!
//! Buckets are keyed by the identity (the driver, fleet or rider id), not by
//! the session, so reconnecting does not refill them. Memory stays bounded:
//! a bucket that has refilled is the same as no bucket, and those are
//! dropped every few seconds ([`Limiters::forget_idle`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The rates, each also the burst allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Location updates one driver may send per second.
    pub driver_updates_per_s: u32,
    /// Other messages (offer replies, availability, trip progress) one
    /// driver may send per second.
    pub driver_messages_per_s: u32,
    /// Ride requests (retries included) one rider may make per minute.
    pub rider_requests_per_min: u32,
    /// Update batches one fleet may send per second.
    pub fleet_batches_per_s: u32,
    /// Offer replies and trip progress reports one fleet may send per second.
    pub fleet_messages_per_s: u32,
    /// `GetTrip`s of a trip that is not open (ended, or unknown) one rider or
    /// driver token may make per second: each is a command to the engine,
    /// so a flood of made-up ids would otherwise fill the queue that ride
    /// requests use. Reads of open trips are answered without the engine,
    /// and operators are trusted: neither is counted.
    pub trip_reads_per_s: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        // Apps ping about once a second; a gateway with 100,000 drivers in
        // batches of 10,000 sends 10 a second. A driver answers an offer or
        // moves a trip on a few times a minute; a fleet of 100,000 drivers at
        // Korea's record day sees a few hundred offers a second.
        Self {
            driver_updates_per_s: 10,
            driver_messages_per_s: 10,
            rider_requests_per_min: 30,
            fleet_batches_per_s: 100,
            fleet_messages_per_s: 2_000,
            trip_reads_per_s: 20,
        }
    }
}

fn quota(n: u32, per: Duration) -> Quota {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per / n.get()).unwrap_or_else(|| Quota::per_second(n)).allow_burst(n)
}

/// One kind of budget, by identity.
struct Buckets(DefaultKeyedRateLimiter<String>);

impl Buckets {
    fn new(n: u32, per: Duration) -> Self {
        Self(RateLimiter::keyed(quota(n, per)))
    }

    fn allow(&self, who: &str) -> bool {
        self.0.check_key(&who.to_owned()).is_ok()
    }

    fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

/// Every budget the server keeps. Cheap to clone: the buckets are shared.
#[derive(Clone)]
pub struct Limiters(Arc<[Buckets; 6]>);

/// Which budget a message draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// A driver's location update.
    DriverUpdate = 0,
    /// A driver's other messages.
    DriverMessage = 1,
    /// A rider's ride request.
    RiderRequest = 2,
    /// A fleet's update batch.
    FleetBatch = 3,
    /// A fleet's offer reply or trip progress.
    FleetMessage = 4,
    /// A read of a trip that is not open, by one caller.
    TripRead = 5,
}

impl Limiters {
    /// Empty buckets at `limits`.
    pub fn new(limits: &RateLimits) -> Self {
        let second = Duration::from_secs(1);
        Self(Arc::new([
            Buckets::new(limits.driver_updates_per_s, second),
            Buckets::new(limits.driver_messages_per_s, second),
            Buckets::new(limits.rider_requests_per_min, Duration::from_secs(60)),
            Buckets::new(limits.fleet_batches_per_s, second),
            Buckets::new(limits.fleet_messages_per_s, second),
            Buckets::new(limits.trip_reads_per_s, second),
        ]))
    }

    /// Whether `who` may spend one more of `budget` now.
    pub fn allow(&self, budget: Budget, who: &str) -> bool {
        self.0[budget as usize].allow(who)
    }

    /// Drops the buckets of those quiet long enough to be full again, so
    /// the maps hold only recent callers.
    pub fn forget_idle(&self) {
        for buckets in self.0.iter() {
            buckets.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_belong_to_the_identity_and_refilled_ones_are_forgotten() {
        let limits = RateLimits { driver_updates_per_s: 3, ..RateLimits::default() };
        let limiters = Limiters::new(&limits);
        let spent = (0..10).filter(|_| limiters.allow(Budget::DriverUpdate, "d1")).count();
        assert_eq!(spent, 3);
        // Another identity has its own budget; another kind of message too.
        assert!(limiters.allow(Budget::DriverUpdate, "d2"));
        assert!(limiters.allow(Budget::DriverMessage, "d1"));
        let held = |l: &Limiters| l.0.iter().map(|b| b.0.len()).sum::<usize>();
        assert_eq!(held(&limiters), 3);
        // Still empty for d1: forgetting keeps buckets that are not full.
        limiters.forget_idle();
        assert!(!limiters.allow(Budget::DriverUpdate, "d1"));
        // Full again once its theoretical arrival time is a period behind
        // the clock: (burst + 1) periods after the spend, 1.33 s here.
        // Waiting longer only makes that more true.
        std::thread::sleep(Duration::from_millis(2_000));
        limiters.forget_idle();
        assert_eq!(held(&limiters), 0, "refilled buckets were kept");
    }
}
