//! `dispatch-loadgen`: plays a simulated city against a running `dispatchd`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dispatch_cli::{Connection, Dur};
use dispatch_loadgen::config::{Demand, Scenario};
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
    /// The server, or several (a cluster's nodes) comma-separated, each
    /// `http://HOST:PORT` or `https://` (with `--tls-ca`): connections
    /// take them in turn.
    #[command(flatten, next_help_heading = "Connection")]
    connection: Connection,
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
    /// Time between two position reports of a driver (`1s`, `250ms`).
    #[arg(long, value_parser = Dur::positive)]
    ping_interval: Option<Dur>,
    /// How long the run lasts (`30s`, `5m`).
    #[arg(long, value_parser = Dur::positive)]
    duration: Option<Dur>,
    /// Ride requests per second (Poisson arrivals).
    #[arg(long)]
    ride_rate: Option<f64>,
    /// Replay real trips from this CSV (NYC TLC layout, any city) instead
    /// of Poisson arrivals; drivers are placed where its pickups are.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Time compression of the replay (10: ten minutes of trips a minute).
    #[arg(long, default_value_t = 10.0)]
    speedup: f64,
    /// Writes a road network for the scenario's cities to this file (OSM
    /// XML: a grid of streets `--road-grid-spacing-m` apart over each
    /// city, for `dispatchd --road-network`) and exits without running.
    #[arg(long)]
    write_road_grid: Option<PathBuf>,
    /// The streets' spacing in the grid `--write-road-grid` writes.
    #[arg(long, default_value_t = 200.0)]
    road_grid_spacing_m: f64,
    /// How long a driver thinks before accepting.
    #[arg(long, value_parser = Dur::any)]
    think: Option<Dur>,
    /// Rides are assigned without offers (`--auto-accept`, or
    /// `--auto-accept false` against a preset that has it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    auto_accept: Option<bool>,
    /// How long a ride lasts from pickup to dropoff, whatever its length
    /// (time compression, for a steady state); `0s`: driven at car speed.
    #[arg(long, value_parser = Dur::any)]
    trip_duration: Option<Dur>,
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
    /// The report as JSON on stdout instead of the table (`--json FILE`,
    /// the earlier spelling, writes it to FILE beside the table).
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// The server's secret (its `--auth-secret-file`): every simulated
    /// driver, fleet and rider gets a token minted for it. (A harness plays
    /// many identities, so it takes the secret or a tokens file rather
    /// than one `--token`.)
    #[arg(long, env = "DISPATCH_AUTH_SECRET_FILE", conflicts_with = "tokens_file")]
    auth_secret_file: Option<PathBuf>,
    /// Ready-made tokens instead, one `role subject token` per line (from
    /// `dispatchd token`).
    #[arg(long)]
    tokens_file: Option<PathBuf>,

    // ------------------------ earlier spellings, hidden (they still work)
    #[arg(long, hide = true)]
    ping_interval_ms: Option<u64>,
    #[arg(long, hide = true)]
    duration_s: Option<u64>,
    #[arg(long, hide = true)]
    think_ms: Option<u64>,
    #[arg(long, hide = true)]
    trip_s: Option<f64>,
}

impl Flags {
    /// Takes the earlier spellings into today's flags, and says for each
    /// what to write instead.
    fn take_earlier_spellings(&mut self) -> Vec<String> {
        let mut said = Vec::new();
        let ms = |v: Option<u64>| v.map(|ms| Dur(Duration::from_millis(ms)));
        let s = |v: Option<f64>| v.map(|s| Dur(Duration::from_secs_f64(s.max(0.0))));
        for (old, new, value, into) in [
            ("ping-interval-ms", "ping-interval", ms(self.ping_interval_ms), &mut self.ping_interval),
            ("duration-s", "duration", ms(self.duration_s.map(|s| s.saturating_mul(1_000))), &mut self.duration),
            ("think-ms", "think", ms(self.think_ms), &mut self.think),
            ("trip-s", "trip-duration", s(self.trip_s), &mut self.trip_duration),
        ] {
            // Today's flag, when given, keeps its value.
            let mut taken = into.unwrap_or(Dur::ms(0));
            said.extend(dispatch_cli::earlier(old, new, value, into.is_some(), &mut taken));
            if value.is_some() {
                *into = Some(taken);
            }
        }
        if self.json.as_deref().is_some_and(|p| p != std::path::Path::new("-")) {
            said.push("--json FILE writes the report to FILE beside the table; --json alone prints it instead".into());
        }
        said
    }
}

/// Writes the grid of streets over `cities` (see `--write-road-grid`).
fn write_road_grid(path: &std::path::Path, cities: &[dispatch_loadgen::config::City], spacing_m: f64) -> ExitCode {
    let areas: Vec<_> = cities
        .iter()
        .filter_map(|c| dispatch_core::geo::LatLng::new(c.lat, c.lng).ok().map(|centre| (centre, c.radius_m)))
        .collect();
    match std::fs::write(path, dispatch_road::grid::grids_xml(&areas, spacing_m)) {
        Ok(()) => {
            tracing::info!(path = %path.display(), cities = areas.len(), spacing_m, "road grid written");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(cause = %e, path = %path.display(), "cannot write the road grid");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut flags = Flags::parse();
    for line in flags.take_earlier_spellings() {
        tracing::warn!("{line}");
    }
    let mut config = flags.scenario.config(flags.connection.target.clone());
    if let Some(path) = &flags.write_road_grid {
        return write_road_grid(path, &config.cities, flags.road_grid_spacing_m);
    }
    config.connect_timeout = flags.connection.timeout.0;
    if let Some(ca) = &flags.connection.tls_ca {
        match std::fs::read(ca) {
            Ok(pem) => config.tls_ca_pem = Some(pem),
            Err(e) => {
                tracing::error!(cause = %e, path = %ca.display(), "cannot read the TLS CA certificate");
                return ExitCode::FAILURE;
            }
        }
    }
    config.drivers = flags.drivers.unwrap_or(config.drivers);
    config.fleet_share = flags.fleet_share.unwrap_or(config.fleet_share);
    config.fleets = flags.fleets.unwrap_or(config.fleets);
    config.batch_size = flags.batch_size.unwrap_or(config.batch_size);
    config.ping_interval = flags.ping_interval.map_or(config.ping_interval, |d| d.0);
    config.duration = flags.duration.map_or(config.duration, |d| d.0);
    config.think_time = flags.think.map_or(config.think_time, |d| d.0);
    config.auto_accept = flags.auto_accept.unwrap_or(config.auto_accept);
    config.trip_s = flags.trip_duration.map_or(config.trip_s, |d| (!d.0.is_zero()).then_some(d.0.as_secs_f64()));
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
    let json_only = flags.json.as_deref() == Some(std::path::Path::new("-"));
    let written = if json_only {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::other)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        report.write_table(&mut out)
    };
    if let Err(e) = written {
        tracing::error!(cause = %e, "cannot write the report");
    }
    if let Some(path) = flags.json.filter(|_| !json_only) {
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
