//! Where the time from a ride request to its first offer goes.
//!
//! A request passes five stages on its way to the driver's sender:
//! - `queue`: from the handler to the engine task taking the command;
//! - `engine`: from there to the end of the engine's round that made the
//!   offer (the rest of the round, and any rounds the trip waited for a
//!   driver);
//! - `commit_wait`: the round's batch waiting for the commit stage (busy
//!   with the previous group's sync);
//! - `commit`: appending the group's records and `fdatasync`;
//! - `deliver`: the delivery stage finishing earlier groups, and the
//!   deliveries ahead of the offer in its own.
//!
//! Each has a histogram, as does their sum (`total`, the figure `GetStats`
//! has always called the match latency) and every group commit on its own
//! (`log_commit`, whether or not an offer waited on it). With shards, the
//! sum is also kept apart for trips that asked no other shard
//! (`within_shard`) and those that asked another before their first offer
//! (`across_shards`): the cost of a border. These histograms
//! are the one record of those latencies: `GetStats` reads its percentiles
//! from them, and `/metrics` its two histograms
//! ([`crate::meters::REQUEST_TO_OFFER`], [`crate::meters::LOG_COMMIT`]).
//! Written on the commit and delivery stages' threads, read for
//! `GetStats` and `/metrics`: a `std` mutex held only to record or read,
//! never across an await.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_proto::pb;
use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The stages, in order.
pub const STAGES: [&str; 5] = ["queue", "engine", "commit_wait", "commit", "deliver"];

/// When one request passed each point on its way to its first offer.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    /// The handler had it.
    pub received: Instant,
    /// The engine task took it.
    pub taken: Instant,
}

/// When the group that carried an offer was committed.
#[derive(Debug, Clone, Copy)]
pub struct GroupMarks {
    /// The round that made the offer handed its batch over.
    pub flushed: Instant,
    /// The commit stage began appending the group.
    pub commit_start: Instant,
    /// The group was durable.
    pub commit_end: Instant,
}

struct Histograms {
    stages: [Histogram<u64>; 5],
    total: Histogram<u64>,
    log_commit: Histogram<u64>,
    /// With shards, `total` of trips that asked no other shard, and of
    /// those that did.
    within_shard: Histogram<u64>,
    across_shards: Histogram<u64>,
    /// The total again, one histogram per second of the last minute
    /// (seconds since `epoch`), for what operators watch live.
    recent: VecDeque<(u64, Histogram<u64>)>,
    epoch: Instant,
}

/// How many seconds `recent` covers.
const WINDOW_S: u64 = 60;

/// The latency histograms, shared between the commit and delivery stages
/// and `GetStats`.
#[derive(Clone)]
pub struct Latency(Arc<Mutex<Histograms>>);

fn histogram() -> Option<Histogram<u64>> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

fn window_histogram() -> Option<Histogram<u64>> {
    // Two significant digits: 60 of these stay small.
    Histogram::new_with_bounds(1, 60_000_000, 2).ok()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Latency {
    /// Empty histograms (`None` only if hdrhistogram refuses its bounds).
    pub fn new() -> Option<Self> {
        let stages = [histogram()?, histogram()?, histogram()?, histogram()?, histogram()?];
        // Refuse now, not at the first offer, if the bounds are refused.
        window_histogram()?;
        let histograms = Histograms {
            stages,
            total: histogram()?,
            log_commit: histogram()?,
            within_shard: histogram()?,
            across_shards: histogram()?,
            recent: VecDeque::new(),
            epoch: Instant::now(),
        };
        Some(Self(Arc::new(Mutex::new(histograms))))
    }

    /// A first offer left at `delivered`; `across`, with shards: whether
    /// the trip asked another shard first.
    pub fn offer(&self, request: Marks, group: GroupMarks, delivered: Instant, across: Option<bool>) {
        let points = [request.received, request.taken, group.flushed, group.commit_start, group.commit_end, delivered];
        if let Ok(mut h) = self.0.lock() {
            for (stage, pair) in points.windows(2).enumerate() {
                h.stages[stage].saturating_record(micros(pair[1].saturating_duration_since(pair[0])));
            }
            let total = micros(delivered.saturating_duration_since(request.received));
            h.total.saturating_record(total);
            match across {
                Some(true) => h.across_shards.saturating_record(total),
                Some(false) => h.within_shard.saturating_record(total),
                None => {}
            }
            let second = delivered.saturating_duration_since(h.epoch).as_secs();
            if h.recent.back().is_none_or(|(s, _)| *s != second)
                && let Some(fresh) = window_histogram()
            {
                h.recent.push_back((second, fresh));
            }
            while h.recent.front().is_some_and(|(s, _)| s + WINDOW_S <= second) {
                h.recent.pop_front();
            }
            if let Some((_, last)) = h.recent.back_mut() {
                last.saturating_record(total);
            }
        }
    }

    /// A group commit (append and sync) took `took`.
    pub fn commit(&self, took: Duration) {
        if let Ok(mut h) = self.0.lock() {
            h.log_commit.saturating_record(micros(took));
        }
    }

    /// The request-to-offer and log-commit histograms in Prometheus's text
    /// format, in seconds, with [`crate::meters::SECONDS_BUCKETS`].
    pub fn prometheus(&self) -> String {
        use crate::meters::{LOG_COMMIT, REQUEST_TO_OFFER};
        let Ok(h) = self.0.lock() else { return String::new() };
        let mut text = String::new();
        for (name, help, histogram) in [
            (REQUEST_TO_OFFER, "From a ride request to its first offer leaving.", &h.total),
            (LOG_COMMIT, "One group commit of the trip log: append plus fdatasync.", &h.log_commit),
        ] {
            prometheus_histogram(&mut text, name, help, histogram);
        }
        text
    }

    /// Writes the match latency and its breakdown into `stats`.
    pub fn fill(&self, stats: &mut pb::Stats) {
        let Ok(h) = self.0.lock() else { return };
        let now = Instant::now().saturating_duration_since(h.epoch).as_secs();
        if let Some(mut minute) = window_histogram() {
            for (_, second) in h.recent.iter().filter(|(s, _)| s + WINDOW_S > now) {
                let _ = minute.add(second);
            }
            stats.last_minute = Some(pb::StageLatency {
                stage: "request_to_offer_last_minute".to_owned(),
                count: minute.len(),
                p50_us: minute.value_at_quantile(0.5),
                p99_us: minute.value_at_quantile(0.99),
                max_us: minute.max(),
            });
        }
        stats.match_latency_p50_us = h.total.value_at_quantile(0.5);
        stats.match_latency_p99_us = h.total.value_at_quantile(0.99);
        // The split by border only where there are borders.
        let border = [(&"within_shard", &h.within_shard), (&"across_shards", &h.across_shards)];
        let border = border.into_iter().filter(|_| h.within_shard.len() + h.across_shards.len() > 0);
        let named = STAGES.iter().zip(&h.stages).chain(std::iter::once((&"log_commit", &h.log_commit))).chain(border);
        stats.match_stages = named
            .map(|(name, h)| pb::StageLatency {
                stage: (*name).to_owned(),
                count: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            })
            .collect();
    }
}

/// Appends one histogram of microseconds to `text` as Prometheus's
/// cumulative buckets of seconds.
fn prometheus_histogram(text: &mut String, name: &str, help: &str, histogram: &Histogram<u64>) {
    use std::fmt::Write;
    let bounds = crate::meters::SECONDS_BUCKETS;
    let mut counts = vec![0u64; bounds.len()];
    let mut sum_us = 0.0;
    for value in histogram.iter_recorded() {
        let (us, n) = (histogram.highest_equivalent(value.value_iterated_to()), value.count_at_value());
        sum_us += us as f64 * n as f64;
        for (count, bound) in counts.iter_mut().zip(bounds) {
            if us as f64 <= bound * 1e6 {
                *count += n;
            }
        }
    }
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (count, bound) in counts.iter().zip(bounds) {
        let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let total = histogram.len();
    let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {}\n{name}_count {total}", sum_us / 1e6);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_shards_offers_are_also_kept_by_whether_they_asked_across_a_border() {
        let Some(latency) = Latency::new() else { panic!("histogram bounds refused") };
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let request = Marks { received: t0, taken: ms(1) };
        let group = GroupMarks { flushed: ms(2), commit_start: ms(2), commit_end: ms(3) };
        latency.offer(request, group, ms(4), Some(false));
        latency.offer(request, group, ms(4), Some(false));
        latency.offer(request, group, ms(9), Some(true));
        let mut stats = pb::Stats::default();
        latency.fill(&mut stats);
        let split: Vec<_> =
            stats.match_stages[6..].iter().map(|s| (s.stage.as_str(), s.count, s.p99_us / 1_000)).collect();
        assert_eq!(split, [("within_shard", 2, 4), ("across_shards", 1, 9)]);
        assert_eq!(stats.match_stages.iter().find(|s| s.stage == "queue").map(|s| s.count), Some(3));
    }

    #[test]
    fn each_stage_gets_its_own_share_and_the_total_their_sum() {
        let Some(latency) = Latency::new() else { panic!("histogram bounds refused") };
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let request = Marks { received: t0, taken: ms(1) };
        let group = GroupMarks { flushed: ms(3), commit_start: ms(6), commit_end: ms(10) };
        latency.offer(request, group, ms(15), None);
        latency.commit(Duration::from_millis(4));
        let mut stats = pb::Stats::default();
        latency.fill(&mut stats);
        let p50: Vec<_> = stats.match_stages.iter().map(|s| (s.stage.as_str(), s.p50_us / 1_000)).collect();
        assert_eq!(
            p50,
            [("queue", 1), ("engine", 2), ("commit_wait", 3), ("commit", 4), ("deliver", 5), ("log_commit", 4)]
        );
        assert_eq!(stats.match_latency_p99_us / 1_000, 15);
        let minute = stats.last_minute.unwrap_or_default();
        assert_eq!((minute.count, minute.p99_us / 1_000), (1, 15));
        let text = latency.prometheus();
        for line in [
            "dispatch_request_to_offer_seconds_bucket{le=\"0.01\"} 0",
            "dispatch_request_to_offer_seconds_bucket{le=\"0.025\"} 1",
            "dispatch_request_to_offer_seconds_count 1",
            "dispatch_log_commit_seconds_bucket{le=\"0.003\"} 0",
            "dispatch_log_commit_seconds_bucket{le=\"0.005\"} 1",
            "dispatch_log_commit_seconds_bucket{le=\"+Inf\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
