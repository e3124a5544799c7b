//! `dispatch-loadgen`: plays a simulated city against a running `dispatchd`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dispatch_loadgen::config::{Demand, NEW_YORK, Scenario};
use dispatch_loadgen::credentials::Credentials;
use dispatch_loadgen::metrics::Metrics;
use indicatif::{ProgressBar, ProgressStyle};

// The harness shares the server's cores, so what it spends is taken from
// the server: under the korea scenario glibc's allocator was a seventh of
// its time (perf), jemalloc's share is far smaller.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Load-test dispatchd over real gRPC with a simulated city.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// The server, or several (a cluster's nodes), comma-separated:
    /// connections take them in turn.
    #[arg(long, env = "DISPATCH_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// A preset; the flags below override it.
    #[arg(long, value_enum, default_value = "smoke")]
    scenario: Scenario,
    /// Simulated drivers.
    #[arg(long)]
    drivers: Option<usize>,
    /// Share of drivers speaking through fleet gateways (0 to 1).
    #[arg(long)]
    fleet_share: Option<f64>,
    /// Fleet gateways (streams) sharing the fleet drivers.
    #[arg(long)]
    fleets: Option<usize>,
    /// Updates per fleet batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Milliseconds between two position reports of a driver.
    #[arg(long)]
    ping_interval_ms: Option<u64>,
    /// Seconds the run lasts.
    #[arg(long)]
    duration_s: Option<u64>,
    /// Ride requests per second (Poisson arrivals).
    #[arg(long)]
    ride_rate: Option<f64>,
    /// Replay real trips from this CSV (NYC TLC layout) instead of Poisson
    /// arrivals; drivers are placed around New York.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Time compression of the replay (10: ten minutes of trips a minute).
    #[arg(long, default_value_t = 10.0)]
    speedup: f64,
    /// Milliseconds a driver thinks before accepting.
    #[arg(long)]
    think_ms: Option<u64>,
    /// Drivers are assigned without offers.
    #[arg(long)]
    auto_accept: Option<bool>,
    /// Seconds a ride lasts from pickup to dropoff, whatever its length
    /// (time compression, for a steady state); 0: driven at car speed.
    #[arg(long)]
    trip_s: Option<f64>,
    /// Per-driver sessions per HTTP/2 connection.
    #[arg(long)]
    sessions_per_connection: Option<usize>,
    /// The server's pid, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Open a broken stream again through the next target (drivers say
    /// hello again, riders re-attach with their request id), as apps do
    /// when a cluster node dies: for runs that kill nodes.
    #[arg(long)]
    reconnect: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server's secret (its `--auth-secret-file`): every simulated
    /// driver, fleet and rider gets a token minted for it.
    #[arg(long, env = "DISPATCH_AUTH_SECRET_FILE", conflicts_with = "tokens_file")]
    auth_secret_file: Option<PathBuf>,
    /// Ready-made tokens instead, one `role subject token` per line (from
    /// `dispatchd token`).
    #[arg(long)]
    tokens_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let flags = Flags::parse();
    let mut config = flags.scenario.config(flags.target.clone());
    config.drivers = flags.drivers.unwrap_or(config.drivers);
    config.fleet_share = flags.fleet_share.unwrap_or(config.fleet_share);
    config.fleets = flags.fleets.unwrap_or(config.fleets);
    config.batch_size = flags.batch_size.unwrap_or(config.batch_size);
    config.ping_interval = flags.ping_interval_ms.map_or(config.ping_interval, Duration::from_millis);
    config.duration = flags.duration_s.map_or(config.duration, Duration::from_secs);
    config.think_time = flags.think_ms.map_or(config.think_time, Duration::from_millis);
    config.auto_accept = flags.auto_accept.unwrap_or(config.auto_accept);
    config.trip_s = flags.trip_s.map_or(config.trip_s, |s| (s > 0.0).then_some(s));
    config.sessions_per_connection = flags.sessions_per_connection.unwrap_or(config.sessions_per_connection);
    config.server_pid = flags.server_pid;
    config.reconnect = flags.reconnect;
    let credentials = match (&flags.auth_secret_file, &flags.tokens_file) {
        (Some(path), _) => Some(Credentials::from_secret_file(path)),
        (None, Some(path)) => Some(Credentials::from_tokens_file(path)),
        (None, None) => None,
    };
    config.credentials = match credentials.transpose() {
        Ok(credentials) => credentials,
        Err(cause) => {
            tracing::error!(%cause, "cannot load credentials");
            return ExitCode::FAILURE;
        }
    };
    if let Some(rate) = flags.ride_rate {
        config.demand = Demand::Poisson { rate };
    }
    if let Some(path) = flags.replay.clone() {
        config.demand = Demand::Replay { path, speedup: flags.speedup };
        config.cities = vec![NEW_YORK];
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(cause = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    let result = runtime.block_on(dispatch_loadgen::run(config, |run, elapsed| {
        let m = &run.metrics;
        bar.set_message(format!(
            "{:>4}s  updates sent {:>10}  requests {:>7}  assigned {:>7}  completed {:>6}  errors {}",
            elapsed.as_secs(),
            Metrics::get(&m.updates_sent),
            Metrics::get(&m.requests_sent),
            Metrics::get(&m.assigned),
            Metrics::get(&m.completed),
            run.protocol_errors(),
        ));
        bar.tick();
    }));
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            tracing::error!(cause = %e, "the run could not be carried out");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = report.write_table(&mut out) {
        tracing::error!(cause = %e, "cannot write the report");
    }
    if let Some(path) = flags.json {
        let written =
            serde_json::to_vec_pretty(&report).map_err(std::io::Error::other).and_then(|j| std::fs::write(&path, j));
        if let Err(e) = written {
            tracing::error!(cause = %e, path = %path.display(), "cannot write the JSON report");
            return ExitCode::FAILURE;
        }
    }
    if report.protocol_errors > 0 {
        tracing::error!(protocol_errors = report.protocol_errors, "the run saw protocol errors");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
