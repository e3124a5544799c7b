//! Real trips, one reader per format: when each was asked for (seconds into
//! the replay), where from and where to. Rows with 0/0 or unreadable fields
//! are dropped, and rows come back sorted by time (no source file is).

use std::path::Path;

use dispatch_core::geo::LatLng;
use rand::Rng;
use serde::Deserialize;

use crate::SimError;

/// One trip to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripRow {
    /// Seconds since midnight of the replayed day.
    pub at_s: f64,
    /// Where the rider was picked up.
    pub pickup: LatLng,
    /// Where the rider got out.
    pub dropoff: LatLng,
}

/// The layouts read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// NYC TLC 2013 (`pickup_time, dropoff_time, distance_miles,
    /// pickup_lat, pickup_lon, dropoff_lat, dropoff_lon`), GPS points, local
    /// time.
    Nyc,
    /// City of Chicago taxi trips (`trip_start_timestamp` in Unix seconds
    /// holding local time, rounded to 15 minutes; community-area
    /// centroids). Four years are folded onto one day by time of day, each
    /// trip put at a random second of its 15-minute slot.
    Chicago,
}

impl Format {
    /// The format a data folder's file is in, from its name.
    pub fn guess(path: &Path) -> Option<Self> {
        let name = path.to_string_lossy().to_lowercase();
        if name.contains("nyc") {
            Some(Self::Nyc)
        } else if name.contains("chicago") {
            Some(Self::Chicago)
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
struct NycRow {
    pickup_time: String,
    pickup_lat: f64,
    pickup_lon: f64,
    dropoff_lat: f64,
    dropoff_lon: f64,
}

#[derive(Deserialize)]
struct ChicagoRow {
    trip_start_timestamp: Option<i64>,
    pickup_latitude: Option<f64>,
    pickup_longitude: Option<f64>,
    dropoff_latitude: Option<f64>,
    dropoff_longitude: Option<f64>,
}

fn point(lat: f64, lng: f64) -> Option<LatLng> {
    if lat == 0.0 && lng == 0.0 {
        return None;
    }
    LatLng::new(lat, lng).ok()
}

/// Reads every usable trip of `path`, sorted by time.
pub fn read(path: &Path, format: Format, rng: &mut impl Rng) -> Result<Vec<TripRow>, SimError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| SimError::Data(format!("{}: {e}", path.display())))?;
    let mut trips = Vec::new();
    match format {
        Format::Nyc => {
            for row in reader.deserialize::<NycRow>().flatten() {
                let Ok(at) = chrono::NaiveDateTime::parse_from_str(&row.pickup_time, "%Y-%m-%d %H:%M:%S") else {
                    continue;
                };
                let at_s = f64::from(chrono::Timelike::num_seconds_from_midnight(&at.time()));
                if let (Some(pickup), Some(dropoff)) =
                    (point(row.pickup_lat, row.pickup_lon), point(row.dropoff_lat, row.dropoff_lon))
                {
                    trips.push(TripRow { at_s, pickup, dropoff });
                }
            }
        }
        Format::Chicago => {
            for row in reader.deserialize::<ChicagoRow>().flatten() {
                let (Some(at), Some(plat), Some(plng), Some(dlat), Some(dlng)) = (
                    row.trip_start_timestamp,
                    row.pickup_latitude,
                    row.pickup_longitude,
                    row.dropoff_latitude,
                    row.dropoff_longitude,
                ) else {
                    continue;
                };
                let slot = at.rem_euclid(86_400) as f64;
                let at_s = slot + rng.random_range(0.0..900.0);
                if let (Some(pickup), Some(dropoff)) = (point(plat, plng), point(dlat, dlng)) {
                    trips.push(TripRow { at_s, pickup, dropoff });
                }
            }
        }
    }
    if trips.is_empty() {
        return Err(SimError::Data(format!("{}: no usable trips", path.display())));
    }
    trips.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(trips)
}
