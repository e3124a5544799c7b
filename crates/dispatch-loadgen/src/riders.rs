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
use crate::config::Demand;
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
    #[error("no trips with real coordinates in the file")]
    Empty,
}

/// Reads trips in the NYC TLC layout (`pickup_time, dropoff_time,
/// distance_miles, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon`),
/// drops rows with 0/0 or unparsable fields or points outside
/// `within_m` of `centre`, and sorts them by pickup time (the files are not
/// sorted).
pub fn read_replay(path: &Path, centre: Point, within_m: f64) -> Result<Vec<ReplayTrip>, ReplayError> {
    let mut reader = csv::Reader::from_path(path)?;
    let mut trips: Vec<(chrono::NaiveDateTime, Point, Point)> = Vec::new();
    for row in reader.deserialize::<Row>() {
        let Ok(row) = row else { continue };
        let Ok(at) = chrono::NaiveDateTime::parse_from_str(&row.pickup_time, "%Y-%m-%d %H:%M:%S") else { continue };
        let pickup = Point { lat: row.pickup_lat, lng: row.pickup_lon };
        let dropoff = Point { lat: row.dropoff_lat, lng: row.dropoff_lon };
        if [pickup, dropoff].iter().all(|p| p.distance_m(centre) <= within_m) {
            trips.push((at, pickup, dropoff));
        }
    }
    trips.sort_by_key(|t| t.0);
    let first = trips.first().map(|t| t.0).ok_or(ReplayError::Empty)?;
    Ok(trips
        .into_iter()
        .map(|(at, pickup, dropoff)| ReplayTrip {
            at_s: (at - first).num_milliseconds() as f64 / 1_000.0,
            pickup,
            dropoff,
        })
        .collect())
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
