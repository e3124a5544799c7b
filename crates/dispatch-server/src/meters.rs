//! What the server reports to Prometheus, through the `metrics` facade (the
//! HTTP side installs the exporter; without one every call here is a no-op).
//!
//! Two kinds of figure, kept apart so the hot path pays nothing extra:
//! - counts the engine already keeps (location updates, offers, trips by
//!   status, drivers by state, sessions, queues) are *published* from one
//!   `GetStats` answer when Prometheus scrapes ([`publish`]): the engine
//!   counts a location update with one integer add, as it always has;
//! - what needs each event (latencies, pickup distances, rejections, gRPC
//!   calls) is recorded as it happens, through handles registered once
//!   ([`Hot`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dispatch_proto::pb;
use dispatch_proto::stats::{FAMILIES, Kind, STATS};
use http_body::Frame;
use metrics::{Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub use dispatch_proto::stats::{
    DRIVERS, LOCATION_UPDATES, LOCATION_UPDATES_SHED, OFFERS, QUEUE_DEPTH, RIDE_REQUESTS, SESSIONS, TRIPS_ENDED,
    TRIPS_OPEN,
};

/// Messages refused on a stream (the stream stays open), by code.
pub const REJECTED: &str = "dispatch_rejected_total";
/// gRPC calls by service, method and code.
pub const GRPC_REQUESTS: &str = "dispatch_grpc_requests_total";
/// Request to first offer (recorded in [`crate::latency`]'s histograms
/// only, and rendered from them).
pub const REQUEST_TO_OFFER: &str = "dispatch_request_to_offer_seconds";
/// Request to a driver's acceptance.
pub const REQUEST_TO_ASSIGNED: &str = "dispatch_request_to_assigned_seconds";
/// One engine round.
pub const ENGINE_ROUND: &str = "dispatch_engine_round_seconds";
/// One group commit of the trip log (likewise).
pub const LOG_COMMIT: &str = "dispatch_log_commit_seconds";
/// Pickup distance at assignment.
pub const PICKUP_DISTANCE: &str = "dispatch_pickup_distance_meters";
/// Per shard of the map (label `shard`): drivers connected, open trips,
/// and the shard's totals of ride requests and location updates.
pub const SHARD_DRIVERS: &str = "dispatch_shard_drivers";
/// See [`SHARD_DRIVERS`].
pub const SHARD_TRIPS_OPEN: &str = "dispatch_shard_trips_open";
/// See [`SHARD_DRIVERS`].
pub const SHARD_RIDE_REQUESTS: &str = "dispatch_shard_ride_requests_total";
/// See [`SHARD_DRIVERS`].
pub const SHARD_LOCATION_UPDATES: &str = "dispatch_shard_location_updates_total";

/// Bucket bounds for the latency histograms, in seconds: 50 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds for pickup distances, in metres.
pub const METERS_BUCKETS: &[f64] =
    &[100.0, 250.0, 500.0, 750.0, 1_000.0, 1_500.0, 2_000.0, 3_000.0, 5_000.0, 7_500.0, 10_000.0, 20_000.0];

/// Gives every figure its `# HELP` line. Call once, after installing the
/// exporter.
pub fn describe() {
    for &(family, kind, help) in FAMILIES {
        match kind {
            Kind::Counter => describe_counter!(family, help),
            Kind::Gauge => describe_gauge!(family, help),
        }
    }
    describe_counter!(REJECTED, "Messages refused on an open stream (the stream stays open), by gRPC code.");
    describe_counter!(GRPC_REQUESTS, "gRPC calls by service, method and final status code.");
    describe_histogram!(REQUEST_TO_ASSIGNED, metrics::Unit::Seconds, "From a ride request to a driver accepting it.");
    describe_histogram!(ENGINE_ROUND, metrics::Unit::Seconds, "One engine round that did some work.");
    describe_histogram!(PICKUP_DISTANCE, "Great-circle metres from the driver to the pickup at assignment.");
    describe_gauge!(SHARD_DRIVERS, "Drivers connected, by shard of the map.");
    describe_gauge!(SHARD_TRIPS_OPEN, "Trips open (searching or with a driver), by shard of the map.");
    describe_counter!(SHARD_RIDE_REQUESTS, "Ride requests that made a trip, by shard of the map.");
    describe_counter!(SHARD_LOCATION_UPDATES, "Location updates applied, by shard of the map.");
}

/// Sets the counts the engine keeps from one `GetStats` answer.
pub fn publish(stats: &pb::Stats) {
    for stat in STATS {
        let Some((family, label)) = stat.metric else { continue };
        let value = (stat.value)(stats);
        match (stat.kind, label) {
            (Kind::Counter, None) => counter!(family).absolute(value),
            (Kind::Counter, Some((key, name))) => counter!(family, key => name).absolute(value),
            (Kind::Gauge, None) => gauge!(family).set(value as f64),
            (Kind::Gauge, Some((key, name))) => gauge!(family, key => name).set(value as f64),
        }
    }
    for shard in &stats.shards {
        let label = shard.shard.to_string();
        gauge!(SHARD_DRIVERS, "shard" => label.clone()).set(shard.drivers_connected as f64);
        gauge!(SHARD_TRIPS_OPEN, "shard" => label.clone()).set(shard.trips_open as f64);
        counter!(SHARD_RIDE_REQUESTS, "shard" => label.clone()).absolute(shard.ride_requests);
        counter!(SHARD_LOCATION_UPDATES, "shard" => label).absolute(shard.location_updates);
    }
}

/// Handles for what is recorded event by event, registered once: taking a
/// handle looks the name up, recording through it does not.
#[derive(Clone)]
pub struct Hot {
    /// [`REQUEST_TO_ASSIGNED`].
    pub request_to_assigned: Histogram,
    /// [`ENGINE_ROUND`].
    pub engine_round: Histogram,
    /// [`PICKUP_DISTANCE`].
    pub pickup_distance: Histogram,
}

impl Hot {
    /// Handles from the recorder installed now (no-ops if none is).
    pub fn register() -> Self {
        Self {
            request_to_assigned: histogram!(REQUEST_TO_ASSIGNED),
            engine_round: histogram!(ENGINE_ROUND),
            pickup_distance: histogram!(PICKUP_DISTANCE),
        }
    }
}

/// Records `d` in seconds.
pub fn seconds(h: &Histogram, d: Duration) {
    h.record(d.as_secs_f64());
}

/// A message refused on a stream.
pub fn rejected(code: tonic::Code) {
    counter!(REJECTED, "code" => code_name(code)).increment(1);
}

/// The name Prometheus users know a gRPC code by.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The calls the server answers, as (service, method): a call to anything
/// else is counted as `unknown`, so a client inventing paths cannot make
/// new series without bound.
const KNOWN_CALLS: &[(&str, &str)] = &[
    ("dispatch.v1.DriverService", "Connect"),
    ("dispatch.v1.FleetService", "Connect"),
    ("dispatch.v1.RiderService", "RequestRide"),
    ("dispatch.v1.RiderService", "CancelRide"),
    ("dispatch.v1.RiderService", "GetTrip"),
    ("dispatch.v1.AdminService", "NearbyDrivers"),
    ("dispatch.v1.AdminService", "GetStats"),
    ("dispatch.v1.AdminService", "WatchTrips"),
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo"),
    ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo"),
];

fn call_of(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    KNOWN_CALLS.iter().copied().find(|(s, m)| *s == service && *m == method).unwrap_or(("unknown", "unknown"))
}

fn count_call(call: (&'static str, &'static str), code: tonic::Code) {
    counter!(GRPC_REQUESTS, "service" => call.0, "method" => call.1, "code" => code_name(code)).increment(1);
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// A tower layer that counts every gRPC call by service, method and the
/// status it ended with: from the headers of a call refused at once, from
/// the trailers of one that ran (a stream is counted when it ends), and as
/// `CANCELLED` if the client hung up first.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcCallsLayer;

impl<S> tower_layer::Layer<S> for GrpcCallsLayer {
    type Service = GrpcCalls<S>;
    fn layer(&self, inner: S) -> GrpcCalls<S> {
        GrpcCalls { inner }
    }
}

/// See [`GrpcCallsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcCalls<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcCalls<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = call_of(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let pending = match status_in(response.headers()) {
                Some(code) => {
                    count_call(call, code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|inner| CountedBody { inner, pending }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when its trailers pass, or
    /// when it is dropped before they do.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        pending: Option<(&'static str, &'static str)>,
    }

    impl<B> PinnedDrop for CountedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().pending.take() {
                count_call(call, tonic::Code::Cancelled);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in)
                    && let Some(call) = this.pending.take()
                {
                    count_call(call, code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.pending.take() {
                    count_call(call, tonic::Code::Internal);
                }
            }
            Poll::Ready(None) => {
                // A body that ends with no trailers sent no status.
                if let Some(call) = this.pending.take() {
                    count_call(call, tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_series() {
        assert_eq!(call_of("/dispatch.v1.RiderService/GetTrip"), ("dispatch.v1.RiderService", "GetTrip"));
        assert_eq!(call_of("/dispatch.v1.RiderService/Made-Up-1"), ("unknown", "unknown"));
        assert_eq!(call_of("/x"), ("unknown", "unknown"));
    }
}
