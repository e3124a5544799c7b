//! What a load run does: presets and the knobs that override them.

use std::path::PathBuf;
use std::time::Duration;

/// A disc of the simulated map where drivers start and riders ask.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct City {
    /// Its centre, degrees.
    pub lat: f64,
    /// Its centre, degrees.
    pub lng: f64,
    /// How far it spreads, metres.
    pub radius_m: f64,
    /// Its share of drivers and riders.
    pub weight: f64,
}

/// Seoul: the capital, about 71,000 taxis.
pub const SEOUL: City = City { lat: 37.5663, lng: 126.9779, radius_m: 15_000.0, weight: 71.0 };

/// Korea's largest taxi markets, weighted roughly by their fleets.
pub const KOREA: [City; 6] = [
    SEOUL,
    City { lat: 37.4563, lng: 126.7052, radius_m: 12_000.0, weight: 14.0 }, // Incheon
    City { lat: 35.1796, lng: 129.0756, radius_m: 14_000.0, weight: 24.0 }, // Busan
    City { lat: 35.8714, lng: 128.6014, radius_m: 12_000.0, weight: 17.0 }, // Daegu
    City { lat: 36.3504, lng: 127.3845, radius_m: 10_000.0, weight: 9.0 },  // Daejeon
    City { lat: 35.1595, lng: 126.8526, radius_m: 10_000.0, weight: 8.0 },  // Gwangju
];

/// Where riders come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Demand {
    /// Poisson arrivals at this many requests a second, over the cities.
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Real trips from a CSV in the NYC TLC layout, replayed in order with
    /// time compressed by `speedup` (10: ten minutes of trips a minute).
    Replay {
        /// The CSV file.
        path: PathBuf,
        /// Time compression.
        speedup: f64,
    },
}

/// One load run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// The server, e.g. `http://127.0.0.1:50051`.
    pub target: String,
    /// How many simulated drivers.
    pub drivers: usize,
    /// The share of drivers that speak through fleet gateways (0 to 1); the
    /// rest have a session each.
    pub fleet_share: f64,
    /// How many fleet gateways (one stream each) share the fleet drivers.
    pub fleets: usize,
    /// How many updates a fleet puts in one batch.
    pub batch_size: usize,
    /// How often every driver reports its position.
    pub ping_interval: Duration,
    /// How long the run lasts (then everything stops by itself).
    pub duration: Duration,
    /// Where riders come from.
    pub demand: Demand,
    /// The most rides in flight at once (requested, not yet assigned).
    pub max_open_requests: usize,
    /// How long a driver thinks before accepting an offer (0: at once).
    pub think_time: Duration,
    /// Drivers are assigned without offers.
    pub auto_accept: bool,
    /// How fast simulated cars drive, metres a second.
    pub speed_mps: f64,
    /// How long a ride lasts from pickup to dropoff, seconds, whatever its
    /// length (`None`: driven at `speed_mps`). Time compression: real rides
    /// last many minutes, so without it no trip ends within a run and open
    /// trips only pile up; with it trips end at the rate they start.
    pub trip_s: Option<f64>,
    /// The cities drivers and riders are spread over.
    pub cities: Vec<City>,
    /// Per-driver sessions share one HTTP/2 connection per this many.
    pub sessions_per_connection: usize,
    /// Seed of the simulated city.
    pub seed: u64,
    /// Tokens for a server that checks them; `None` for an open one.
    pub credentials: Option<crate::credentials::Credentials>,
    /// Read this process's resident memory (the server's) at the end.
    pub server_pid: Option<u32>,
    /// A broken stream is opened again through the next target (drivers
    /// say hello again, riders re-attach with their request id), as apps
    /// do when a cluster node dies; counted, not a protocol error.
    pub reconnect: bool,
    /// The CA certificate (PEM) of a TLS server (`https://` targets).
    pub tls_ca_pem: Option<Vec<u8>>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

/// The named presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Seconds, small: 200 drivers, 20 rides a second, fast cars; run by the
    /// tests so the harness cannot rot.
    Smoke,
    /// Seoul: 71,000 drivers pinging every 4 s, 300 rides a second.
    Seoul,
    /// Every taxi in Korea: 250,000 drivers pinging every second, 2,000
    /// rides a second, each lasting a minute from pickup (so after a minute
    /// trips end as fast as they start: a steady state with ~130,000 open).
    Korea,
}

impl Scenario {
    /// The preset's configuration against `target`.
    pub fn config(self, target: String) -> LoadConfig {
        let base = LoadConfig {
            target,
            drivers: 200,
            fleet_share: 0.5,
            fleets: 2,
            batch_size: 1_000,
            ping_interval: Duration::from_millis(1_000),
            duration: Duration::from_secs(5),
            demand: Demand::Poisson { rate: 20.0 },
            max_open_requests: 10_000,
            think_time: Duration::ZERO,
            auto_accept: false,
            speed_mps: 12.0,
            trip_s: None,
            cities: vec![SEOUL],
            sessions_per_connection: 100,
            seed: 1,
            credentials: None,
            server_pid: None,
            reconnect: false,
            tls_ca_pem: None,
            connect_timeout: Duration::from_secs(5),
        };
        match self {
            Scenario::Smoke => LoadConfig {
                ping_interval: Duration::from_millis(500),
                speed_mps: 2_000.0,
                cities: vec![City { radius_m: 3_000.0, ..SEOUL }],
                ..base
            },
            Scenario::Seoul => LoadConfig {
                drivers: 71_000,
                fleet_share: 0.9,
                fleets: 8,
                ping_interval: Duration::from_secs(4),
                duration: Duration::from_secs(60),
                demand: Demand::Poisson { rate: 300.0 },
                ..base
            },
            Scenario::Korea => LoadConfig {
                drivers: 250_000,
                fleet_share: 1.0,
                fleets: 16,
                ping_interval: Duration::from_secs(1),
                duration: Duration::from_secs(60),
                demand: Demand::Poisson { rate: 2_000.0 },
                auto_accept: true,
                trip_s: Some(60.0),
                cities: KOREA.to_vec(),
                ..base
            },
        }
    }
}
