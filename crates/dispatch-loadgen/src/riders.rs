//! Simulated riders: Poisson arrivals over the cities, or a replay of real
//! trips. Each rider asks, follows its trip until a driver is assigned (or
//! none is found), then hangs up; the trip goes on without it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatch_proto::pb::{self, rider_service_client::RiderServiceClient};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::Run;
use crate::config::{City, Demand};
use crate::metrics::Metrics;
use crate::sim::{Point, random_point};

/// One trip of a replayed file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayTrip {
    /// Seconds after the first trip of the file.
    pub at_s: f64,
    /// Where.
    pub pickup: Point,
    /// To where.
    pub dropoff: Point,
}

#[derive(serde::Deserialize)]
struct Row {
    pickup_time: String,
    pickup_lat: f64,
    pickup_lon: f64,
    dropoff_lat: f64,
    dropoff_lon: f64,
}

/// Why a replay file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened or parsed.
    #[error("{0}")]
    Csv(#[from] csv::Error),
    /// No usable trip in it.
    #[error("no trips with real coordinates in the file ({0})")]
    Empty(Dropped),
}

/// Rows of a replay file left out, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    /// Rows that are not the layout (a missing or unparsable column).
    pub malformed: u64,
    /// Rows whose pickup time is not `YYYY-MM-DD HH:MM:SS`.
    pub bad_time: u64,
    /// Rows with a 0/0 or out-of-range pickup or dropoff.
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
            "{} rows left out: {} malformed, {} with a bad pickup time, {} with a 0/0 or impossible position",
            self.total(),
            self.malformed,
            self.bad_time,
            self.bad_position
        )
    }
}

/// A replay file read: its trips, sorted by pickup time, where they are,
/// and the rows left out.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The trips, the first at 0 s.
    pub trips: Vec<ReplayTrip>,
    /// The area of their pickups, where the simulated drivers are placed.
    pub city: City,
    /// What was left out, and why.
    pub dropped: Dropped,
}

fn real_point(lat: f64, lng: f64) -> Option<Point> {
    let real = lat.is_finite() && lng.is_finite() && !(lat == 0.0 && lng == 0.0);
    (real && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng)).then_some(Point { lat, lng })
}

/// Reads trips in the NYC TLC layout (`pickup_time, dropoff_time,
/// distance_miles, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon`), from
/// any city: rows with 0/0 or impossible points or unparsable fields are
/// left out and counted, the rest sorted by pickup time (the files are not
/// sorted), and the area of the pickups found for the drivers.
pub fn read_replay(path: &Path) -> Result<Replay, ReplayError> {
    let mut reader = csv::Reader::from_path(path)?;
    let mut trips: Vec<(chrono::NaiveDateTime, Point, Point)> = Vec::new();
    let mut dropped = Dropped::default();
    for row in reader.deserialize::<Row>() {
        let Ok(row) = row else {
            dropped.malformed += 1;
            continue;
        };
        let Ok(at) = chrono::NaiveDateTime::parse_from_str(&row.pickup_time, "%Y-%m-%d %H:%M:%S") else {
            dropped.bad_time += 1;
            continue;
        };
        match (real_point(row.pickup_lat, row.pickup_lon), real_point(row.dropoff_lat, row.dropoff_lon)) {
            (Some(pickup), Some(dropoff)) => trips.push((at, pickup, dropoff)),
            _ => dropped.bad_position += 1,
        }
    }
    trips.sort_by_key(|t| t.0);
    let first = trips.first().map(|t| t.0).ok_or(ReplayError::Empty(dropped))?;
    let city = area_of(trips.iter().map(|t| t.1));
    let trips = trips
        .into_iter()
        .map(|(at, pickup, dropoff)| ReplayTrip {
            at_s: (at - first).num_milliseconds() as f64 / 1_000.0,
            pickup,
            dropoff,
        })
        .collect();
    Ok(Replay { trips, city, dropped })
}

/// The circle around the middle of `points` holding nine in ten of them
/// (at least a kilometre across): where a replay's drivers start.
fn area_of(points: impl Iterator<Item = Point> + Clone) -> City {
    let n = points.clone().count().max(1) as f64;
    let lat = points.clone().map(|p| p.lat).sum::<f64>() / n;
    // The mean of the directions, so a city across the antimeridian is
    // not put on the other side of the Earth.
    let (sin, cos) =
        points.clone().fold((0.0, 0.0), |(s, c), p| (s + p.lng.to_radians().sin(), c + p.lng.to_radians().cos()));
    let centre = Point { lat, lng: sin.atan2(cos).to_degrees() };
    let mut distances: Vec<f64> = points.map(|p| p.distance_m(centre)).filter(|d| d.is_finite()).collect();
    distances.sort_by(f64::total_cmp);
    let nine_in_ten = distances.get(distances.len() * 9 / 10).copied().unwrap_or(0.0);
    City { lat: centre.lat, lng: centre.lng, radius_m: nine_in_ten.max(1_000.0), weight: 1.0 }
}

/// Plays the configured demand until the run's deadline.
pub async fn riders(run: Arc<Run>, channels: Vec<Channel>, replay: Option<Vec<ReplayTrip>>) {
    let open = Arc::new(Semaphore::new(run.config.max_open_requests.max(1)));
    let next = Arc::new(AtomicU64::new(0));
    let mut rng = ChaCha8Rng::seed_from_u64(run.config.seed ^ 0x5eed);
    let start = Instant::now();
    let mut replay = replay.unwrap_or_default().into_iter();
    let mut due = start;
    loop {
        let trip = match &run.config.demand {
            Demand::Poisson { rate } => {
                // Arrival times on an absolute schedule: timers tick in
                // milliseconds, so sleeping each sub-millisecond gap would
                // cap the rate near 1,000/s.
                let gap = -(1.0 - rng.random::<f64>()).ln() / rate.max(1e-9);
                due += Duration::from_secs_f64(gap.min(60.0));
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let pickup = random_point(&mut rng, &run.config.cities);
                let angle = rng.random_range(0.0..std::f64::consts::TAU);
                let length = rng.random_range(1_000.0..8_000.0);
                ReplayTrip { at_s: 0.0, pickup, dropoff: pickup.offset(length * angle.cos(), length * angle.sin()) }
            }
            Demand::Replay { speedup, .. } => {
                let Some(trip) = replay.next() else { return };
                let due = start + Duration::from_secs_f64(trip.at_s / speedup.max(1e-9));
                tokio::time::sleep_until(due.into()).await;
                trip
            }
        };
        if Instant::now() >= run.deadline {
            return;
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            Metrics::add(&run.metrics.requests_skipped, 1);
            continue;
        };
        let n = next.fetch_add(1, Ordering::Relaxed);
        let channel = channels[usize::try_from(n).unwrap_or(0) % channels.len().max(1)].clone();
        let run = run.clone();
        tokio::spawn(async move {
            ride(&run, channel, n, trip, permit).await;
        });
    }
}

/// One rider: asks, follows the trip until the car is there (watching it
/// come, as a rider's app does), and frees its place among the open
/// requests (`open`) once a driver is assigned.
async fn ride(run: &Run, channel: Channel, n: u64, trip: ReplayTrip, open: tokio::sync::OwnedSemaphorePermit) {
    let mut open = Some(open);
    let request = pb::RideRequest {
        rider_id: format!("rider-{n}"),
        request_id: format!("req-{n}"),
        pickup: Some(pb::LatLng { lat: trip.pickup.lat, lng: trip.pickup.lng }),
        dropoff: Some(pb::LatLng { lat: trip.dropoff.lat, lng: trip.dropoff.lng }),
        ..Default::default()
    };
    let sent = Instant::now();
    Metrics::add(&run.metrics.requests_sent, 1);
    let rider = request.rider_id.clone();
    let mut channel = Some(channel);
    let mut attempt = usize::try_from(n).unwrap_or(0);
    let mut stream: Option<tonic::Streaming<pb::Trip>> = None;
    let mut known = false;
    loop {
        let Some(open_stream) = &mut stream else {
            // (Re)attach: the same rider and request id give the same trip.
            let Some(channel) = run.session_channel(&mut channel, &mut attempt).await else { return };
            let authorized = crate::credentials::authorize(
                run.config.credentials.as_ref(),
                dispatch_auth::Role::Rider,
                &rider,
                request.clone(),
            );
            match RiderServiceClient::new(channel).request_ride(authorized).await {
                Ok(response) => stream = Some(response.into_inner()),
                Err(status) if run.config.reconnect && Instant::now() < run.deadline => {
                    run.metrics.error(status.code());
                }
                Err(status) => {
                    run.metrics.error(status.code());
                    if status.code() != tonic::Code::Unavailable || Instant::now() < run.deadline {
                        run.protocol_error();
                    }
                    return;
                }
            }
            continue;
        };
        let message =
            tokio::time::timeout_at((run.deadline + Duration::from_secs(2)).into(), open_stream.message()).await;
        let trip = match message {
            Ok(Ok(Some(trip))) => trip,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(status)) => {
                if Instant::now() < run.deadline {
                    run.metrics.error(status.code());
                    if run.config.reconnect {
                        stream = None;
                        continue;
                    }
                    run.protocol_error();
                }
                return;
            }
        };
        if !known {
            known = true;
            run.metrics.trip_requested(&trip.trip_id, sent);
        }
        match trip.status() {
            pb::TripStatus::DriverAssigned => {
                if open.take().is_some() {
                    run.metrics.trip_assigned(sent.elapsed(), trip.pickup_distance_m);
                }
            }
            pb::TripStatus::NoDriverFound => {
                Metrics::add(&run.metrics.no_driver, 1);
                return;
            }
            pb::TripStatus::Searching | pb::TripStatus::Unspecified => {}
            pb::TripStatus::DriverArrived
            | pb::TripStatus::InProgress
            | pb::TripStatus::Completed
            | pb::TripStatus::Cancelled => return,
        }
    }
}
