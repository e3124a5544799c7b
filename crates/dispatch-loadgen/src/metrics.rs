//! What the run counts and times, shared by every task of the run.
//!
//! Counters are atomics; histograms sit behind `std` mutexes held only to
//! record one value (never across an await).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hdrhistogram::Histogram;

/// Everything counted during a run.
pub struct Metrics {
    /// Location updates sent (pings and fleet entries).
    pub updates_sent: AtomicU64,
    /// Ride requests sent.
    pub requests_sent: AtomicU64,
    /// Offers that reached a simulated driver.
    pub offers: AtomicU64,
    /// Offers withdrawn because another driver of a broadcast took the
    /// ride first (the late accepts that follow are not errors).
    pub offers_taken: AtomicU64,
    /// Rides the riders saw assigned.
    pub assigned: AtomicU64,
    /// Rides that ended without a driver.
    pub no_driver: AtomicU64,
    /// Rides driven to the end.
    pub completed: AtomicU64,
    /// Requests not started because `max_open_requests` were in flight.
    pub requests_skipped: AtomicU64,
    /// Streams opened again after they broke (`--reconnect`).
    pub reconnects: AtomicU64,
    /// Streams that broke or calls that failed, and `Rejected` events, by
    /// gRPC code name.
    errors: Mutex<BTreeMap<String, u64>>,
    request_to_offer: Mutex<Histogram<u64>>,
    request_to_assigned: Mutex<Histogram<u64>>,
    /// The same since the last [`Metrics::take_window`].
    window_to_assigned: Mutex<Histogram<u64>>,
    pickup_distance: Mutex<Histogram<u64>>,
    /// How much longer than asked a sleeping thread slept (see `wake`),
    /// over the run and since the last [`Metrics::take_window`].
    wake_late: Mutex<Histogram<u64>>,
    window_wake_late: Mutex<Histogram<u64>>,
    /// For request-to-offer: the rider learns the trip id and the driver
    /// gets the offer in either order; whoever comes second records.
    pending: DashMap<String, Instant>,
}

// The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 *
// low, sigfig <= 5); nothing a client or the disk controls reaches here.
#[allow(clippy::expect_used)]
fn histogram() -> Mutex<Histogram<u64>> {
    // 1 µs to 10 min, three significant digits.
    Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid"))
}

fn record(h: &Mutex<Histogram<u64>>, value: u64) {
    let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
    h.saturating_record(value.max(1));
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            updates_sent: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            offers: AtomicU64::new(0),
            offers_taken: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            no_driver: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            requests_skipped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            request_to_offer: histogram(),
            request_to_assigned: histogram(),
            window_to_assigned: histogram(),
            pickup_distance: histogram(),
            wake_late: histogram(),
            window_wake_late: histogram(),
            pending: DashMap::new(),
        }
    }
}

/// Percentiles of one histogram, in its unit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

fn percentiles(h: &Mutex<Histogram<u64>>) -> Percentiles {
    let h = h.lock().unwrap_or_else(|p| p.into_inner());
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts an error by its gRPC code name.
    pub fn error(&self, code: tonic::Code) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(format!("{code:?}")).or_default() += 1;
    }

    /// Errors so far, by code.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The rider learned the id of the trip it asked for at `sent`.
    pub fn trip_requested(&self, trip_id: &str, sent: Instant) {
        if let Some((_, offered)) = self.pending.remove(trip_id) {
            record(&self.request_to_offer, micros(offered.saturating_duration_since(sent)));
        } else {
            self.pending.insert(trip_id.to_owned(), sent);
        }
    }

    /// A driver got the first offer (or assignment) of a trip.
    pub fn trip_offered(&self, trip_id: &str) {
        let now = Instant::now();
        if let Some((_, sent)) = self.pending.remove(trip_id) {
            record(&self.request_to_offer, micros(now.saturating_duration_since(sent)));
        } else {
            self.pending.insert(trip_id.to_owned(), now);
        }
    }

    /// The rider saw its driver assigned `after` the request, `distance_m`
    /// from the pickup.
    pub fn trip_assigned(&self, after: Duration, distance_m: f64) {
        Self::add(&self.assigned, 1);
        record(&self.request_to_assigned, micros(after));
        record(&self.window_to_assigned, micros(after));
        // Metres, stored as whole metres.
        record(&self.pickup_distance, distance_m.max(0.0).round() as u64);
    }

    /// A thread that asked to sleep woke `late` after the time it asked
    /// for.
    pub fn woke_late(&self, late: Duration) {
        record(&self.wake_late, micros(late));
        record(&self.window_wake_late, micros(late));
    }

    /// Request-to-assigned and wake-up lateness (µs) since the last call,
    /// and starts over.
    pub fn take_window(&self) -> (Percentiles, Percentiles) {
        let take = |h: &Mutex<Histogram<u64>>| {
            let window = percentiles(h);
            h.lock().unwrap_or_else(|p| p.into_inner()).reset();
            window
        };
        (take(&self.window_to_assigned), take(&self.window_wake_late))
    }

    /// Wake-up lateness over the run, µs.
    pub fn wake_late(&self) -> Percentiles {
        percentiles(&self.wake_late)
    }

    /// Request-to-offer (µs), request-to-assigned (µs), pickup distance (m).
    pub fn latencies(&self) -> (Percentiles, Percentiles, Percentiles) {
        (
            percentiles(&self.request_to_offer),
            percentiles(&self.request_to_assigned),
            percentiles(&self.pickup_distance),
        )
    }
}
