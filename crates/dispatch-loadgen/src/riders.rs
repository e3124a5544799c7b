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

/// Why a replay file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened, or held no usable trip.
    #[error("{0}")]
    Read(String),
}

/// Rows of a replay file left out, by why: the simulator's reader's.
pub use dispatch_sim::trips::Dropped;

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

/// Reads trips in the NYC TLC layout (`pickup_time, dropoff_time,
/// distance_miles, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon`), from
/// any city, with the simulator's reader: rows with 0/0 or impossible points
/// or unparsable fields are left out and counted, the rest sorted by pickup
/// time of day; and the area of the pickups is found for the drivers.
pub fn read_replay(path: &Path) -> Result<Replay, ReplayError> {
    // Only the Chicago layout draws from it; the NYC one reads as it is.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (rows, dropped) = dispatch_sim::trips::read(path, dispatch_sim::Format::Nyc, &mut rng)
        .map_err(|e| ReplayError::Read(e.to_string()))?;
    let point = |p: dispatch_core::geo::LatLng| Point { lat: p.lat(), lng: p.lng() };
    let first = rows.first().map_or(0.0, |r| r.at_s);
    let city = area_of(rows.iter().map(|r| point(r.pickup)));
    let trips = rows
        .iter()
        .map(|r| ReplayTrip { at_s: r.at_s - first, pickup: point(r.pickup), dropoff: point(r.dropoff) })
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
