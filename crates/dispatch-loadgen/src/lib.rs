//! The load harness: a simulated city played against a running `dispatchd`
//! through its real gRPC API, measuring what a production operator cares
//! about (updates sustained, ride latency, match rate, errors, memory).
//!
//! # Layout
//!
//! - [`config`]: presets (`smoke`, `seoul`, `korea`) and the knobs.
//! - [`sim`]: simulated cars and how they move.
//! - `drivers`: fleet gateways (batched) and per-driver sessions.
//! - [`riders`]: Poisson arrivals or a replay of real trips.
//! - [`metrics`]: counters and latency histograms shared by every task.
//! - [`report`]: the final numbers, as a table or JSON.

pub mod config;
pub mod credentials;
mod drivers;
pub mod metrics;
pub mod report;
pub mod riders;
pub mod sim;
mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatch_proto::pb::{self, admin_service_client::AdminServiceClient};
use rand::SeedableRng;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use config::{Demand, LoadConfig};
use credentials::{Credentials, authorize};
use dispatch_auth::Role;
use metrics::Metrics;
use report::Report;
use sim::{Car, random_point};

/// Why a run could not be carried out at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target address is not a URI.
    #[error("bad target {0:?}: {1}")]
    Target(String, String),
    /// The server could not be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, tonic::transport::Error),
    /// The server refused the stats call.
    #[error("GetStats failed: {0}")]
    Stats(tonic::Status),
    /// The replay file could not be read.
    #[error("replay: {0}")]
    Replay(#[from] riders::ReplayError),
}

/// State shared by every task of one run.
pub struct Run {
    /// What to do.
    pub config: LoadConfig,
    /// What happened.
    pub metrics: Metrics,
    /// When every task stops.
    pub deadline: Instant,
    protocol_errors: AtomicU64,
    /// The servers, for reconnecting.
    targets: Vec<String>,
}

impl Run {
    /// A stream broke or a call failed that should not have.
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// How many so far.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }

    /// The channel a session opens on: `first` the first time, then (with
    /// `--reconnect`) a new connection to the next target; `None` when the
    /// session is over.
    pub async fn session_channel(&self, first: &mut Option<Channel>, attempt: &mut usize) -> Option<Channel> {
        match first.take() {
            Some(channel) => Some(channel),
            None => self.reconnect(attempt).await,
        }
    }

    /// With `--reconnect`, before the deadline: a new connection to the
    /// next target after a broken stream (trying each in turn), counted.
    pub async fn reconnect(&self, attempt: &mut usize) -> Option<Channel> {
        if !self.config.reconnect {
            return None;
        }
        Metrics::add(&self.metrics.reconnects, 1);
        while Instant::now() < self.deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            *attempt += 1;
            let target = &self.targets[*attempt % self.targets.len().max(1)];
            if let Ok(channel) = connect(target, &self.config).await {
                return Some(channel);
            }
        }
        None
    }
}

async fn connect(target: &str, config: &LoadConfig) -> Result<Channel, LoadError> {
    let mut endpoint = Endpoint::from_shared(target.to_owned())
        .map_err(|e| LoadError::Target(target.to_owned(), e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(config.connect_timeout)
        // Riders hang up on their trip's stream while the server still
        // sends to it (as apps do). HTTP/2 remembers only 10 such streams by
        // default, and counts every later frame for a forgotten one towards
        // a limit of 1,024 that closes the connection: thousands of riders
        // a second share a connection here, so remember them all.
        .http2_max_concurrent_reset_streams(1 << 20);
    if let Some(pem) = &config.tls_ca_pem {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| LoadError::Target(target.to_owned(), e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| LoadError::Connect(target.to_owned(), e))
}

async fn stats(channel: &Channel, credentials: Option<&Credentials>) -> Result<pb::Stats, LoadError> {
    let mut admin = AdminServiceClient::new(channel.clone());
    let request = authorize(credentials, Role::Admin, "dispatch-loadgen", pb::GetStatsRequest {});
    admin.get_stats(request).await.map(|r| r.into_inner()).map_err(LoadError::Stats)
}

/// How often the report notes latency so far: a steady state shows as the
/// same numbers window after window, a leak as numbers that grow.
const WINDOW: Duration = Duration::from_secs(30);

/// Runs the load described by `config` and reports. `on_tick` is called
/// about once a second with the numbers so far (for a progress line).
pub async fn run(config: LoadConfig, mut on_tick: impl FnMut(&Run, Duration)) -> Result<Report, LoadError> {
    let mut config = config;
    let replay = match &config.demand {
        Demand::Replay { path, .. } => {
            let replay = riders::read_replay(path)?;
            if replay.dropped.total() > 0 {
                tracing::warn!(file = %path.display(), "{}", replay.dropped);
            }
            // The drivers are where the file's riders are, whatever city.
            config.cities = vec![replay.city];
            Some(replay.trips)
        }
        Demand::Poisson { .. } => None,
    };
    // Several servers (a cluster's nodes, comma-separated): connections
    // take them in turn.
    let mut targets: Vec<String> =
        config.target.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    if targets.is_empty() {
        targets.push(config.target.clone());
    }
    let target = |i: usize| targets[i % targets.len()].as_str();
    let admin = connect(target(0), &config).await?;
    let before = stats(&admin, config.credentials.as_ref()).await?;
    let cpu_before = config.server_pid.and_then(report::cpu_seconds);
    let started = Instant::now();
    let run = Arc::new(Run {
        deadline: started + config.duration,
        config,
        metrics: Metrics::default(),
        protocol_errors: AtomicU64::new(0),
        targets: targets.clone(),
    });
    let config = &run.config;
    let probe = wake::spawn(run.clone());

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let cars: Vec<Car> =
        (0..config.drivers).map(|i| Car::new(format!("lg-{:07}", i), random_point(&mut rng, &config.cities))).collect();
    let fleet_cars = ((config.drivers as f64) * config.fleet_share.clamp(0.0, 1.0)).round() as usize;
    let (fleet_cars, solo_cars) = cars.split_at(fleet_cars.min(cars.len()));
    let mut tasks = Vec::new();
    let fleets = config.fleets.max(1);
    for (f, share) in fleet_cars.chunks(fleet_cars.len().div_ceil(fleets).max(1)).enumerate() {
        let channel = connect(target(f), config).await?;
        let fleet_id = format!("lg-fleet-{f}");
        // A fleet names its drivers in its own namespace, `FLEET_ID/...`.
        let share = share.iter().map(|car| car.in_fleet(&fleet_id)).collect();
        tasks.push(tokio::spawn(drivers::fleet(
            run.clone(),
            channel,
            fleet_id,
            share,
            config.seed + f as u64,
            (f, fleets),
        )));
    }
    for (c, group) in solo_cars.chunks(config.sessions_per_connection.max(1)).enumerate() {
        let channel = connect(target(fleets + c), config).await?;
        for (i, car) in group.iter().enumerate() {
            let seed = config.seed.wrapping_mul(31).wrapping_add((c * 1_000_003 + i) as u64);
            tasks.push(tokio::spawn(drivers::solo(run.clone(), channel.clone(), car.clone(), seed)));
        }
    }
    // Riders start once every driver has reported at least once.
    let mut rider_channels = Vec::new();
    for r in 0..4.max(targets.len()) {
        rider_channels.push(connect(target(r), config).await?);
    }
    let warm_up = config.ping_interval.min(Duration::from_secs(2));
    let riders_run = run.clone();
    tasks.push(tokio::spawn(async move {
        tokio::time::sleep(warm_up).await;
        riders::riders(riders_run, rider_channels, replay).await;
    }));

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut windows = Vec::new();
    let mut window_start = Instant::now();
    let mut window_stats = before.clone();
    while Instant::now() < run.deadline {
        ticker.tick().await;
        on_tick(&run, started.elapsed());
        if window_start.elapsed() >= WINDOW && Instant::now() + WINDOW / 2 < run.deadline {
            window_start = Instant::now();
            let server = stats(&admin, run.config.credentials.as_ref()).await?;
            windows.push(report::Window::new(started.elapsed(), run.metrics.take_window(), &window_stats, &server));
            window_stats = server;
        }
    }
    // Read the server before the simulated drivers hang up (they stop a
    // moment after the deadline).
    let elapsed = started.elapsed();
    let after = stats(&admin, run.config.credentials.as_ref()).await?;
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(probe) = probe {
        // It stops at the deadline, a nap after at most.
        let _ = tokio::task::spawn_blocking(move || probe.join()).await;
    }
    windows.push(report::Window::new(elapsed, run.metrics.take_window(), &window_stats, &after));
    let mut report = Report::new(&run, elapsed, &before, &after, fleet_cars.len(), solo_cars.len(), cpu_before);
    report.windows = windows;
    Ok(report)
}
