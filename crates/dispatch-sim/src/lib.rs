//! `dispatch-sim`: the replay simulator. Real trips drive the pure engine
//! in virtual time (no network, no clock), through a fleet of simulated
//! drivers, and come out as the KPIs a dispatcher is judged by, so
//! matching policies can be compared on the same seeded city.
//!
//! - [`trips`]: one reader per data format;
//! - [`world`]: the simulated city, event by event;
//! - [`kpi`]: the counts and the KPIs;
//! - [`plot`]: SVG plots of a comparison.

pub mod kpi;
pub mod plot;
pub mod trips;
pub mod world;

use dispatch_core::geo::LatLng;

pub use kpi::Kpis;
pub use trips::{Format, TripRow};
pub use world::World;

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The data could not be read or had nothing usable.
    #[error("data: {0}")]
    Data(String),
    /// A flag made no sense.
    #[error("{0}")]
    Input(String),
}

/// Where drivers start: pickups of the hour before `start_s` if the data
/// has them, else of the window's first hour (real drivers wait where
/// rides begin).
pub fn seed_points(trips: &[TripRow], start_s: f64) -> Vec<LatLng> {
    let before: Vec<LatLng> =
        trips.iter().filter(|t| (start_s - 3_600.0..start_s).contains(&t.at_s)).map(|t| t.pickup).collect();
    if !before.is_empty() {
        return before;
    }
    trips.iter().filter(|t| (start_s..start_s + 3_600.0).contains(&t.at_s)).map(|t| t.pickup).collect()
}

/// `HH:MM` as seconds since midnight (hours up to 48, for data that runs on
/// past midnight).
pub fn clock(s: &str) -> Result<f64, String> {
    let (h, m) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected HH:MM"))?;
    let (h, m): (u32, u32) =
        (h.parse().map_err(|_| format!("{s:?}: hour"))?, m.parse().map_err(|_| format!("{s:?}: minute"))?);
    if h > 48 || m > 59 {
        return Err(format!("{s:?}: not a time of day"));
    }
    Ok(f64::from(h * 3_600 + m * 60))
}
