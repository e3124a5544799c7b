//! The routes, and who may call them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dispatch_auth::Role;
use dispatch_core::engine::MapQuery;
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, TripId};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::{App, json};

/// Drivers shown one by one when at most this many are in view (and the
/// most a caller may ask for).
const DEFAULT_MAX_DRIVERS: usize = 3_000;
const MOST_DRIVERS: usize = 5_000;
/// The most density cells (and trips) in one answer.
const MAX_CELLS: usize = 4_000;
/// How often a live map gets a frame.
const FRAME_EVERY: Duration = Duration::from_millis(500);
/// Live maps open at once: each asks the engine twice a second.
const MAX_LIVE: usize = 64;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const MAP_JS: &str = include_str!("../assets/map.js");
const MAP_CSS: &str = include_str!("../assets/map.css");

#[derive(Clone)]
struct Shared {
    app: App,
    live: Arc<Semaphore>,
}

/// Every route of the HTTP side.
pub fn router(app: App) -> Router {
    let shared = Shared { app, live: Arc::new(Semaphore::new(MAX_LIVE)) };
    Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML) }))
        .route("/map.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], MAP_JS) }))
        .route("/map.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], MAP_CSS) }))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/config", get(config))
        .route("/api/stats", get(stats))
        .route("/api/view", get(view))
        .route("/api/live", get(live))
        .route("/api/find", get(find))
        .with_state(shared)
}

#[derive(Debug, Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// A request refused: its status and why, as `{"error": ...}`.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, json!({ "error": self.1 }).to_string()).into_response()
    }
}

fn refuse(status: StatusCode, why: &str) -> Refusal {
    Refusal(status, why.to_owned())
}

/// Lets the caller through if no keys are set, or it holds an admin token
/// (header, or `?token=` since a browser's event stream sends no headers).
fn admit(shared: &Shared, headers: &HeaderMap, param: Option<&str>, scraper: bool) -> Result<(), Refusal> {
    let Some(keys) = &shared.app.config.keys else { return Ok(()) };
    if scraper && shared.app.config.open_metrics {
        return Ok(());
    }
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = header.and_then(|v| v.strip_prefix("Bearer ")).or(param);
    let Some(token) = token else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "an admin token is required (Authorization: Bearer, or ?token=)"));
    };
    match keys.verify(token.trim()) {
        Ok(claims) if claims.role == Role::Admin => Ok(()),
        Ok(_) => Err(refuse(StatusCode::FORBIDDEN, "only an admin token may see this")),
        Err(cause) => {
            warn!(%cause, "HTTP: authentication failed");
            Err(refuse(StatusCode::UNAUTHORIZED, &cause.to_string()))
        }
    }
}

fn unavailable(status: &tonic::Status) -> Response {
    refuse(StatusCode::SERVICE_UNAVAILABLE, status.message()).into_response()
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap, Query(t): Query<TokenParam>) -> Response {
    if let Err(refused) = admit(&shared, &headers, t.token.as_deref(), true) {
        return refused.into_response();
    }
    let Some(metrics) = &shared.app.metrics else {
        return refuse(StatusCode::NOT_FOUND, "metrics are not recorded in this process").into_response();
    };
    match shared.app.operator.stats().await {
        Ok(stats) => {
            let text = metrics.render(&stats, &shared.app.operator.histograms());
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Err(status) => unavailable(&status),
    }
}

async fn healthz(State(shared): State<Shared>, headers: HeaderMap, Query(t): Query<TokenParam>) -> Response {
    if let Err(refused) = admit(&shared, &headers, t.token.as_deref(), true) {
        return refused.into_response();
    }
    // Healthy when the engine answers a question in time.
    match tokio::time::timeout(Duration::from_secs(2), shared.app.operator.stats()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(status)) => unavailable(&status),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the engine did not answer within 2 s").into_response(),
    }
}

async fn config(State(shared): State<Shared>, headers: HeaderMap, Query(t): Query<TokenParam>) -> Response {
    if let Err(refused) = admit(&shared, &headers, t.token.as_deref(), false) {
        return refused.into_response();
    }
    axum::Json(json!({ "tile_url": shared.app.config.map_tile_url, "frame_ms": FRAME_EVERY.as_millis() as u64 }))
        .into_response()
}

async fn stats(State(shared): State<Shared>, headers: HeaderMap, Query(t): Query<TokenParam>) -> Response {
    if let Err(refused) = admit(&shared, &headers, t.token.as_deref(), false) {
        return refused.into_response();
    }
    match shared.app.operator.stats().await {
        Ok(stats) => axum::Json(json::stats(&stats)).into_response(),
        Err(status) => unavailable(&status),
    }
}

/// A viewport, and what else a live map asks for.
#[derive(Debug, Deserialize)]
struct ViewParams {
    south: f64,
    west: f64,
    north: f64,
    east: f64,
    max_drivers: Option<usize>,
    follow: Option<String>,
    token: Option<String>,
}

impl ViewParams {
    fn query(&self) -> Result<MapQuery, Refusal> {
        let bad = |why: String| refuse(StatusCode::BAD_REQUEST, &why);
        let corner = |lat, lng| LatLng::new(lat, lng).map_err(|e| bad(format!("({lat}, {lng}): {e}")));
        let (sw, ne) = (corner(self.south, self.west)?, corner(self.north, self.east)?);
        let most = self.max_drivers.unwrap_or(DEFAULT_MAX_DRIVERS).min(MOST_DRIVERS);
        MapQuery::new(sw, ne, most, MAX_CELLS)
            .ok_or_else(|| bad("south must not be above north, nor west east of east".to_owned()))
    }
}

async fn view(State(shared): State<Shared>, headers: HeaderMap, Query(p): Query<ViewParams>) -> Response {
    if let Err(refused) = admit(&shared, &headers, p.token.as_deref(), false) {
        return refused.into_response();
    }
    let query = match p.query() {
        Ok(query) => query,
        Err(refused) => return refused.into_response(),
    };
    match shared.app.operator.map_view(query).await {
        Ok(view) => axum::Json(json::view(&view)).into_response(),
        Err(status) => unavailable(&status),
    }
}

/// With a road network, the way a trip's car drives next: to the pickup
/// while it comes, to the dropoff with the rider aboard, as `[lat, lng]`
/// points. Asked on a blocking thread: an external router is asked over
/// HTTP.
async fn route(app: &App, trip: &dispatch_proto::pb::Trip) -> Option<Value> {
    use dispatch_proto::pb::TripStatus;
    let roads = app.config.roads.as_ref()?;
    let point = |p: Option<&dispatch_proto::pb::LatLng>| p.and_then(|p| LatLng::new(p.lat, p.lng).ok());
    let car = point(trip.driver_position.as_ref())?;
    let to = match trip.status() {
        TripStatus::DriverAssigned if !trip.queued => point(trip.pickup.as_ref())?,
        TripStatus::InProgress => point(trip.dropoff.as_ref())?,
        _ => return None,
    };
    let roads = std::sync::Arc::clone(roads);
    let way = tokio::task::spawn_blocking(move || roads.way(car, to)).await.ok()??;
    Some(json!(way.iter().map(|p| [p.lat(), p.lng()]).collect::<Vec<_>>()))
}

/// A trip (`t-42`) or a driver by id, as the map follows it (a trip with
/// its route, by road); `Ok(None)` if there is none.
async fn lookup(app: &App, q: &str) -> Result<Option<Value>, tonic::Status> {
    if let Ok(trip) = q.parse::<TripId>() {
        let Some(t) = app.operator.trip(trip).await? else { return Ok(None) };
        let mut value = json::trip(&t);
        value["kind"] = json!("trip");
        if let Some(route) = route(app, &t).await {
            value["route"] = route;
        }
        return Ok(Some(value));
    }
    let Ok(driver) = DriverId::new(q) else { return Ok(None) };
    let found = app.operator.driver(driver).await?;
    let Some(found) = found else { return Ok(None) };
    let mut value = json::driver(&found);
    value["kind"] = json!("driver");
    if let Some(trip) = found.trip
        && let Some(trip) = app.operator.trip(trip).await?
    {
        value["trip_detail"] = json::trip(&trip);
    }
    Ok(Some(value))
}

#[derive(Debug, Deserialize)]
struct FindParams {
    q: String,
    token: Option<String>,
}

async fn find(State(shared): State<Shared>, headers: HeaderMap, Query(p): Query<FindParams>) -> Response {
    if let Err(refused) = admit(&shared, &headers, p.token.as_deref(), false) {
        return refused.into_response();
    }
    match lookup(&shared.app, p.q.trim()).await {
        Ok(Some(found)) => axum::Json(found).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, "no trip or driver by that id").into_response(),
        Err(status) => unavailable(&status),
    }
}

/// One frame of a live map: the viewport, the counters, what is followed.
async fn frame(app: &App, query: &MapQuery, follow: Option<&str>) -> Result<Value, tonic::Status> {
    let view = app.operator.map_view(query.clone()).await?;
    let stats = app.operator.stats().await?;
    let followed = match follow {
        Some(id) => lookup(app, id).await?,
        None => None,
    };
    Ok(json!({ "view": json::view(&view), "stats": json::stats(&stats), "followed": followed }))
}

async fn live(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<ViewParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Refusal> {
    admit(&shared, &headers, p.token.as_deref(), false)?;
    let query = p.query()?;
    let Ok(permit) = shared.live.clone().try_acquire_owned() else {
        return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "too many live maps open"));
    };
    let follow = p.follow.filter(|f| !f.trim().is_empty());
    let mut every = tokio::time::interval(FRAME_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let state = (shared.app, query, follow, every, permit);
    let frames = futures::stream::unfold(state, |(app, query, follow, mut every, permit)| async move {
        every.tick().await;
        // The engine gone (shutting down) ends the stream.
        let value = frame(&app, &query, follow.as_deref()).await.ok()?;
        let event = Event::default().event("frame").data(value.to_string());
        Some((Ok(event), (app, query, follow, every, permit)))
    });
    Ok(Sse::new(frames).keep_alive(KeepAlive::default()))
}
