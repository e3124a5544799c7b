//! The numbers a run ends with: a table for people, JSON for machines.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use dispatch_proto::pb;

use crate::Run;
use crate::metrics::{Metrics, Percentiles};

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// How long it ran, seconds.
    pub duration_s: f64,
    /// Drivers through fleet gateways.
    pub fleet_drivers: usize,
    /// Drivers with their own session.
    pub session_drivers: usize,
    /// Location updates the harness sent.
    pub updates_sent: u64,
    /// Location updates the server applied during the run (from GetStats).
    pub updates_applied: u64,
    /// `updates_applied` per second: the sustained rate.
    pub updates_per_s: f64,
    /// Ride requests sent.
    pub requests_sent: u64,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Requests not made because too many were open.
    pub requests_skipped: u64,
    /// Offers the simulated drivers received.
    pub offers: u64,
    /// Of those, withdrawn because another driver took the ride first.
    pub offers_taken: u64,
    /// Rides the riders saw assigned.
    pub assigned: u64,
    /// `assigned / requests_sent`.
    pub match_rate: f64,
    /// Rides that ended without a driver.
    pub no_driver: u64,
    /// Rides driven to the end.
    pub completed: u64,
    /// Request to the offer reaching the driver, µs (client-measured).
    pub request_to_offer_us: Percentiles,
    /// Request to the rider seeing its driver assigned, µs (client-measured).
    pub request_to_assigned_us: Percentiles,
    /// Request received to first offer sent, µs (server-measured, p50/p99,
    /// over the server's whole life).
    pub server_match_p50_us: u64,
    /// The same, 99th percentile.
    pub server_match_p99_us: u64,
    /// Where the server's request-to-first-offer time goes, stage by stage,
    /// and its trip log's group commits (over the server's whole life).
    pub server_stages: Vec<Stage>,
    /// Location updates the server shed during the run (engine behind).
    pub updates_shed: u64,
    /// Driver to pickup at assignment, metres.
    pub pickup_distance_m: Percentiles,
    /// How much longer than 1 ms a thread of the harness that asked for
    /// 1 ms of sleep slept, µs: how long a waking thread waited for a core
    /// on this machine during the run (a noisy hour shows here).
    pub wake_late_us: Percentiles,
    /// Failed calls, broken streams and rejections, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Calls and streams that failed when they should not have.
    pub protocol_errors: u64,
    /// Streams opened again after they broke (`--reconnect`).
    pub reconnects: u64,
    /// The server's resident memory at the end, KiB, when its pid was given.
    pub server_rss_kib: Option<u64>,
    /// The server's CPU over the run (user and system), when its pid was
    /// given: what a unit of work costs, whatever the hour.
    pub server_cpu: Option<ServerCpu>,
    /// Drivers connected at the end (from GetStats).
    pub drivers_connected: u64,
    /// Client request-to-assigned latency window by window (30 s each).
    pub windows: Vec<Window>,
}

/// One stretch of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Window {
    /// Seconds into the run at its end.
    pub end_s: u64,
    /// Request to assigned in this window, µs (client-measured).
    pub request_to_assigned_us: Percentiles,
    /// Trips open on the server at its end (searching or with a driver).
    pub trips_open: u64,
    /// The server's request-to-first-offer p99 so far (over its life), µs.
    pub server_match_p99_us: u64,
    /// Location updates the server applied in this window.
    pub updates_applied: u64,
    /// Location updates the server shed in this window.
    pub updates_shed: u64,
    /// Wake-up lateness in this window, µs (see [`Report::wake_late_us`]).
    pub wake_late_us: Percentiles,
}

impl Window {
    /// A window ending `at` into the run; `start` is the server's stats
    /// when it began, `end` at its end.
    pub fn new(
        at: Duration,
        (request_to_assigned_us, wake_late_us): (Percentiles, Percentiles),
        start: &pb::Stats,
        end: &pb::Stats,
    ) -> Self {
        Self {
            wake_late_us,
            end_s: at.as_secs(),
            request_to_assigned_us,
            trips_open: end.trips_searching + end.trips_active,
            server_match_p99_us: end.match_latency_p99_us,
            updates_applied: end.location_updates.saturating_sub(start.location_updates),
            updates_shed: end.location_updates_shed.saturating_sub(start.location_updates_shed),
        }
    }
}

/// One stage of the server's request-to-first-offer time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    /// Its name (`queue`, `engine`, `commit_wait`, `commit`, `deliver`,
    /// and `log_commit` for every group commit).
    pub stage: String,
    /// Samples.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest, µs.
    pub max_us: u64,
}

/// The server's CPU over a run, and per unit of work.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ServerCpu {
    /// CPU seconds (user and system) over the run.
    pub seconds: f64,
    /// Cores busy on average.
    pub cores: f64,
    /// CPU seconds per million location updates applied.
    pub per_million_updates_s: f64,
    /// CPU seconds per thousand rides requested.
    pub per_thousand_rides_s: f64,
}

/// CPU seconds process `pid` has used so far (user and system), from
/// `/proc/PID/stat` in clock ticks of 100 a second (Linux's `USER_HZ`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces) in parentheses: the
    // 14th and 15th fields are utime and stime.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Report {
    /// Collects the run's numbers.
    pub fn new(
        run: &Run,
        elapsed: Duration,
        before: &pb::Stats,
        after: &pb::Stats,
        fleet_drivers: usize,
        session_drivers: usize,
        cpu_before: Option<f64>,
    ) -> Self {
        let m = &run.metrics;
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let (request_to_offer_us, request_to_assigned_us, pickup_distance_m) = m.latencies();
        let requests_sent = Metrics::get(&m.requests_sent);
        let assigned = Metrics::get(&m.assigned);
        let updates_applied = after.location_updates.saturating_sub(before.location_updates);
        Report {
            duration_s: seconds,
            fleet_drivers,
            session_drivers,
            updates_sent: Metrics::get(&m.updates_sent),
            updates_applied,
            updates_per_s: updates_applied as f64 / seconds,
            requests_sent,
            requests_per_s: requests_sent as f64 / seconds,
            requests_skipped: Metrics::get(&m.requests_skipped),
            offers: Metrics::get(&m.offers),
            offers_taken: Metrics::get(&m.offers_taken),
            assigned,
            match_rate: if requests_sent == 0 { 0.0 } else { assigned as f64 / requests_sent as f64 },
            no_driver: Metrics::get(&m.no_driver),
            completed: Metrics::get(&m.completed),
            request_to_offer_us,
            request_to_assigned_us,
            server_match_p50_us: after.match_latency_p50_us,
            server_match_p99_us: after.match_latency_p99_us,
            server_stages: after
                .match_stages
                .iter()
                .map(|s| Stage {
                    stage: s.stage.clone(),
                    count: s.count,
                    p50_us: s.p50_us,
                    p99_us: s.p99_us,
                    max_us: s.max_us,
                })
                .collect(),
            updates_shed: after.location_updates_shed.saturating_sub(before.location_updates_shed),
            pickup_distance_m,
            wake_late_us: m.wake_late(),
            errors: m.errors(),
            protocol_errors: run.protocol_errors(),
            reconnects: Metrics::get(&m.reconnects),
            server_rss_kib: run.config.server_pid.and_then(rss_kib),
            server_cpu: run.config.server_pid.and_then(cpu_seconds).zip(cpu_before).map(|(end, start)| {
                let used = (end - start).max(0.0);
                ServerCpu {
                    seconds: used,
                    cores: used / seconds,
                    per_million_updates_s: used / (updates_applied as f64 / 1e6).max(1e-9),
                    per_thousand_rides_s: used / (requests_sent as f64 / 1e3).max(1e-9),
                }
            }),
            drivers_connected: after.drivers_connected,
            windows: Vec::new(),
        }
    }

    /// The report as a table.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let p = |x: &Percentiles, unit: &str| {
            format!("p50 {} p90 {} p99 {} p99.9 {} max {} {unit} (n={})", x.p50, x.p90, x.p99, x.p999, x.max, x.count)
        };
        let mut rows = vec![
            ("duration", format!("{:.1} s", self.duration_s)),
            ("drivers", format!("{} via fleets, {} own sessions", self.fleet_drivers, self.session_drivers)),
            ("drivers connected (server)", self.drivers_connected.to_string()),
            ("location updates sent", self.updates_sent.to_string()),
            ("location updates applied", format!("{} ({:.0}/s sustained)", self.updates_applied, self.updates_per_s)),
            ("location updates shed", self.updates_shed.to_string()),
            (
                "ride requests",
                format!("{} ({:.1}/s), {} skipped", self.requests_sent, self.requests_per_s, self.requests_skipped),
            ),
            ("offers", format!("{} ({} taken first by another driver)", self.offers, self.offers_taken)),
            ("assigned", format!("{} (match rate {:.1}%)", self.assigned, self.match_rate * 100.0)),
            ("no driver found", self.no_driver.to_string()),
            ("trips completed", self.completed.to_string()),
            ("request -> offer (client)", p(&self.request_to_offer_us, "µs")),
            ("request -> assigned (client)", p(&self.request_to_assigned_us, "µs")),
            (
                "request -> first offer (server)",
                format!("p50 {} p99 {} µs", self.server_match_p50_us, self.server_match_p99_us),
            ),
        ];
        for s in &self.server_stages {
            let (name, stage) =
                if s.stage == "log_commit" { ("  every log commit", "") } else { ("  stage", &*s.stage) };
            let value = format!("{stage:<13} p50 {} p99 {} max {} µs (n={})", s.p50_us, s.p99_us, s.max_us, s.count);
            rows.push((name, value));
        }
        rows.extend([
            ("pickup distance", p(&self.pickup_distance_m, "m")),
            ("wake-up late (this machine)", p(&self.wake_late_us, "µs")),
            ("errors", if self.errors.is_empty() { "none".into() } else { format!("{:?}", self.errors) }),
            ("protocol errors", self.protocol_errors.to_string()),
            ("reconnects", self.reconnects.to_string()),
            (
                "server RSS",
                self.server_rss_kib.map_or("unknown (pass --server-pid)".into(), |kib| {
                    let per_driver = (kib * 1024) / (self.fleet_drivers + self.session_drivers).max(1) as u64;
                    format!("{} MiB ({per_driver} B per driver, all in)", kib / 1024)
                }),
            ),
            (
                "server CPU",
                self.server_cpu.map_or("unknown (pass --server-pid)".into(), |c| {
                    format!(
                        "{:.2} cores: {:.2} s per million updates, {:.2} s per thousand rides",
                        c.cores, c.per_million_updates_s, c.per_thousand_rides_s
                    )
                }),
            ),
        ]);
        for (name, value) in rows {
            writeln!(out, "{name:<32} {value}")?;
        }
        let mut start = 0;
        for w in &self.windows {
            let a = &w.request_to_assigned_us;
            writeln!(
                out,
                "{:<32} assigned p50 {} p99 {} max {} µs (n={}); {} trips open; server p99 so far {} µs; \
                 updates applied {}, shed {}; wake-up late p99 {} max {} µs",
                format!("  {start:>4}-{:<4} s", w.end_s),
                a.p50,
                a.p99,
                a.max,
                a.count,
                w.trips_open,
                w.server_match_p99_us,
                w.updates_applied,
                w.updates_shed,
                w.wake_late_us.p99,
                w.wake_late_us.max
            )?;
            start = w.end_s;
        }
        Ok(())
    }
}
