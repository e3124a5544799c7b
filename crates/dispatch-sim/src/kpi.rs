//! What riders and operators judge a dispatcher by, counted as the
//! simulation runs.

use serde::Serialize;

/// Running counts.
#[derive(Debug, Default)]
pub struct Tally {
    /// Rides asked for.
    pub requests: u64,
    /// Offers made.
    pub offers: u64,
    /// Offers declined.
    pub declined: u64,
    /// Searches that ran out.
    pub no_driver: u64,
    /// Rides driven to the end.
    pub completed: u64,
    /// Per assignment: wait (ms), straight-line pickup distance (m),
    /// pickup drive (ms).
    waits_ms: Vec<i64>,
    pickup_m: Vec<f64>,
    pickup_eta_ms: Vec<i64>,
    /// Metres driven to pickups.
    pub empty_m: f64,
    /// Driver time with a rider aboard.
    pub busy_ms: i64,
}

impl Tally {
    /// A driver was assigned after `waited_ms`, `straight_m` from the
    /// pickup, `drive_ms` away, driving `road_m` empty.
    pub fn assigned(&mut self, waited_ms: i64, straight_m: f64, drive_ms: i64, road_m: f64) {
        self.waits_ms.push(waited_ms.max(0));
        self.pickup_m.push(straight_m);
        self.pickup_eta_ms.push(drive_ms);
        self.empty_m += road_m;
    }

    /// The KPIs of a run of `drivers` over `duration_ms` of requests.
    pub fn kpis(mut self, drivers: usize, duration_ms: f64, minutes: f64) -> Kpis {
        let matched = self.waits_ms.len() as u64;
        self.waits_ms.sort_unstable();
        self.pickup_eta_ms.sort_unstable();
        self.pickup_m.sort_by(f64::total_cmp);
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let q = |v: &[f64], p: f64| if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * p).round() as usize] };
        let secs = |v: &[i64]| v.iter().map(|&ms| ms as f64 / 1_000.0).collect::<Vec<_>>();
        let (waits, etas) = (secs(&self.waits_ms), secs(&self.pickup_eta_ms));
        Kpis {
            drivers,
            requests: self.requests,
            requests_per_min: self.requests as f64 / minutes.max(1e-9),
            matched,
            match_rate: matched as f64 / (self.requests.max(1)) as f64,
            no_driver_found: self.no_driver,
            completed: self.completed,
            wait_mean_s: mean(&waits),
            wait_p50_s: q(&waits, 0.5),
            wait_p90_s: q(&waits, 0.9),
            pickup_mean_m: mean(&self.pickup_m),
            pickup_p90_m: q(&self.pickup_m, 0.9),
            pickup_eta_mean_s: mean(&etas),
            pickup_eta_p90_s: q(&etas, 0.9),
            utilisation: self.busy_ms as f64 / (drivers as f64 * duration_ms).max(1.0),
            empty_km: self.empty_m / 1_000.0,
            offers_per_trip: self.offers as f64 / (self.requests.max(1)) as f64,
            decline_rate: self.declined as f64 / (self.offers.max(1)) as f64,
            waits_s: Samples(waits),
            pickups_m: Samples(self.pickup_m),
        }
    }
}

/// One run's KPIs.
#[derive(Debug, Clone, Serialize)]
pub struct Kpis {
    /// Fleet size.
    pub drivers: usize,
    /// Rides asked for.
    pub requests: u64,
    /// Rides asked for, per minute.
    pub requests_per_min: f64,
    /// Rides a driver accepted.
    pub matched: u64,
    /// `matched / requests`.
    pub match_rate: f64,
    /// Searches that ran out.
    pub no_driver_found: u64,
    /// Rides driven to the end within the run.
    pub completed: u64,
    /// Request to assignment, seconds.
    pub wait_mean_s: f64,
    /// Its median.
    pub wait_p50_s: f64,
    /// Its 90th percentile.
    pub wait_p90_s: f64,
    /// Great-circle metres from the driver to the pickup at assignment.
    pub pickup_mean_m: f64,
    /// Its 90th percentile.
    pub pickup_p90_m: f64,
    /// The drive to the pickup, seconds.
    pub pickup_eta_mean_s: f64,
    /// Its 90th percentile.
    pub pickup_eta_p90_s: f64,
    /// Share of driver time with a rider aboard.
    pub utilisation: f64,
    /// Kilometres driven to pickups.
    pub empty_km: f64,
    /// Offers made per request.
    pub offers_per_trip: f64,
    /// Offers declined, per offer made.
    pub decline_rate: f64,
    /// Every wait to assignment, seconds, sorted (for the plots).
    #[serde(skip)]
    pub waits_s: Samples,
    /// Every pickup distance, metres, sorted (for the plots).
    #[serde(skip)]
    pub pickups_m: Samples,
}

/// Sorted samples of one KPI; printed as their count.
#[derive(Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} samples", self.0.len())
    }
}
