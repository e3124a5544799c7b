//! Real trips, one reader per format: when each was asked for (seconds into
//! the replay), where from and where to. Rows with 0/0 or unreadable fields
//! are left out and counted by why, and rows come back sorted by time (no
//! source file is).

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
    /// Seconds from the request to a driver's accept, where the data has
    /// it (Austin).
    pub accept_after_s: Option<f64>,
}

/// The layouts read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// NYC TLC 2013 (`pickup_time, dropoff_time, distance_miles,
    /// pickup_lat, pickup_lon, dropoff_lat, dropoff_lon`), GPS points, local
    /// time. NREL HIVE's RideAustin files (`hive_aus_*.csv`) have the same
    /// columns and are read the same way.
    Nyc,
    /// RideAustin 2017 as shipped by the City of Toronto's triplinker
    /// (`request_datetime, driver_accept_datetime, ..., pickup_latitude,
    /// pickup_longitude, ..., dropoff_latitude, dropoff_longitude`):
    /// requests at their request time (seconds since midnight of the
    /// first day, so the day's last hours past midnight run on past 24:00),
    /// from the pickup point (the request columns are garbage upstream), and
    /// the real request-to-accept interval of each.
    Austin,
    /// City of Chicago taxi trips (`trip_start_timestamp` in Unix seconds
    /// holding local time, rounded to 15 minutes; community-area
    /// centroids). Four years are folded onto one day by time of day, each
    /// trip put at a random second of its 15-minute slot.
    Chicago,
}

impl Format {
    /// The format of a file, from the columns its header names.
    pub fn sniff(path: &Path) -> Result<Self, SimError> {
        let mut reader =
            csv::Reader::from_path(path).map_err(|e| SimError::Data(format!("{}: {e}", path.display())))?;
        let header = reader.headers().map_err(|e| SimError::Data(format!("{}: {e}", path.display())))?;
        let has = |column: &str| header.iter().any(|h| h.trim() == column);
        if has("pickup_time") && has("pickup_lat") {
            Ok(Self::Nyc)
        } else if has("request_datetime") && has("driver_accept_datetime") {
            Ok(Self::Austin)
        } else if has("trip_start_timestamp") {
            Ok(Self::Chicago)
        } else {
            Err(SimError::Input(format!(
                "{}: its columns are none of the layouts read (nyc, austin, chicago); see --format",
                path.display()
            )))
        }
    }
}

/// Rows of a trip file left out, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Rows that are not the layout (a missing or unparsable column).
    pub malformed: u64,
    /// Rows without a readable time.
    pub bad_time: u64,
    /// Rows with a 0/0 or impossible pickup or dropoff.
    pub bad_position: u64,
}

impl Dropped {
    /// Every row left out.
    pub fn total(&self) -> u64 {
        self.malformed + self.bad_time + self.bad_position
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows left out: {} malformed, {} without a readable time, {} with a 0/0 or impossible position",
            self.total(),
            self.malformed,
            self.bad_time,
            self.bad_position
        )
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
struct AustinRow {
    request_datetime: String,
    driver_accept_datetime: String,
    pickup_latitude: f64,
    pickup_longitude: f64,
    dropoff_latitude: f64,
    dropoff_longitude: f64,
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

/// `n` requests at times drawn uniformly from `from_s..to_s`, sorted,
/// each from and to one of `points` drawn uniformly (a road network's
/// nodes, of its main part: riders ask where the roads are dense).
pub fn on_roads(
    points: &[LatLng],
    n: usize,
    from_s: f64,
    to_s: f64,
    rng: &mut impl Rng,
) -> Result<Vec<TripRow>, SimError> {
    if points.len() < 2 || to_s <= from_s {
        return Err(SimError::Input("--random-trips: needs a road network of two points and a window".into()));
    }
    let point = |rng: &mut dyn rand::RngCore| points[rng.random_range(0..points.len())];
    let mut trips: Vec<TripRow> = (0..n)
        .map(|_| TripRow {
            at_s: rng.random_range(from_s..to_s),
            pickup: point(rng),
            dropoff: point(rng),
            accept_after_s: None,
        })
        .collect();
    trips.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(trips)
}

/// Reads every usable trip of `path`, sorted by time, and counts the rows
/// left out.
pub fn read(path: &Path, format: Format, rng: &mut impl Rng) -> Result<(Vec<TripRow>, Dropped), SimError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| SimError::Data(format!("{}: {e}", path.display())))?;
    let mut trips = Vec::new();
    let mut dropped = Dropped::default();
    match format {
        Format::Nyc => {
            for row in reader.deserialize::<NycRow>() {
                let Ok(row) = row else {
                    dropped.malformed += 1;
                    continue;
                };
                let Ok(at) = chrono::NaiveDateTime::parse_from_str(&row.pickup_time, "%Y-%m-%d %H:%M:%S") else {
                    dropped.bad_time += 1;
                    continue;
                };
                let at_s = f64::from(chrono::Timelike::num_seconds_from_midnight(&at.time()));
                if let (Some(pickup), Some(dropoff)) =
                    (point(row.pickup_lat, row.pickup_lon), point(row.dropoff_lat, row.dropoff_lon))
                {
                    trips.push(TripRow { at_s, pickup, dropoff, accept_after_s: None });
                } else {
                    dropped.bad_position += 1;
                }
            }
        }
        Format::Austin => {
            let time = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok();
            let mut rows = Vec::new();
            for row in reader.deserialize::<AustinRow>() {
                let Ok(row) = row else {
                    dropped.malformed += 1;
                    continue;
                };
                let (Some(asked), Some(accepted)) = (time(&row.request_datetime), time(&row.driver_accept_datetime))
                else {
                    dropped.bad_time += 1;
                    continue;
                };
                if let (Some(pickup), Some(dropoff)) = (
                    point(row.pickup_latitude, row.pickup_longitude),
                    point(row.dropoff_latitude, row.dropoff_longitude),
                ) {
                    let accept_after_s = (accepted - asked).num_seconds() as f64;
                    rows.push((asked, pickup, dropoff, (accept_after_s >= 0.0).then_some(accept_after_s)));
                } else {
                    dropped.bad_position += 1;
                }
            }
            let Some(day) = rows.iter().map(|r| r.0.date()).min() else {
                return Err(SimError::Data(format!("{}: no usable trips ({dropped})", path.display())));
            };
            let midnight = day.and_time(chrono::NaiveTime::MIN);
            for (asked, pickup, dropoff, accept_after_s) in rows {
                let at_s = (asked - midnight).num_seconds() as f64;
                trips.push(TripRow { at_s, pickup, dropoff, accept_after_s });
            }
        }
        Format::Chicago => {
            for row in reader.deserialize::<ChicagoRow>() {
                let Ok(row) = row else {
                    dropped.malformed += 1;
                    continue;
                };
                let Some(at) = row.trip_start_timestamp else {
                    dropped.bad_time += 1;
                    continue;
                };
                let (Some(plat), Some(plng), Some(dlat), Some(dlng)) =
                    (row.pickup_latitude, row.pickup_longitude, row.dropoff_latitude, row.dropoff_longitude)
                else {
                    dropped.bad_position += 1;
                    continue;
                };
                let slot = at.rem_euclid(86_400) as f64;
                let at_s = slot + rng.random_range(0.0..900.0);
                if let (Some(pickup), Some(dropoff)) = (point(plat, plng), point(dlat, dlng)) {
                    trips.push(TripRow { at_s, pickup, dropoff, accept_after_s: None });
                } else {
                    dropped.bad_position += 1;
                }
            }
        }
    }
    if trips.is_empty() {
        return Err(SimError::Data(format!("{}: no usable trips ({dropped})", path.display())));
    }
    trips.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok((trips, dropped))
}
