//! The HTTP side of `dispatchd`: Prometheus metrics, a health check, and the
//! operators' live map, served with axum on the server's tokio runtime
//! (never on the engine's thread: every question goes to the engine as a
//! command, like a gRPC call).
//!
//! - `GET /metrics`: Prometheus text format ([`Metrics`]).
//! - `GET /healthz`: 200 once the engine answers, 503 otherwise.
//! - `GET /`: the live map (one page, its script and style embedded in the
//!   binary: no CDN, works offline).
//! - `GET /api/view?south=&west=&north=&east=`: what the map shows of a
//!   viewport (drivers when few are in view, counts per cell otherwise).
//! - `GET /api/live?south=&west=&north=&east=[&follow=ID]`: the same as
//!   server-sent events, twice a second, with the counters.
//! - `GET /api/find?q=ID`: a trip (`t-42`) or a driver, where it is.
//! - `GET /api/stats`: the counters as JSON.
//!
//! Who may ask: with no secret (loopback only, like gRPC) everyone; with
//! one, the map and the API need an admin token (`Authorization: Bearer`,
//! or `?token=` for the browser's event stream), and `/metrics` and
//! `/healthz` too unless left open for scrapers.

mod json;
mod routes;

use std::future::Future;
use std::time::Duration;

use dispatch_auth::Keys;
use dispatch_server::Operator;
use dispatch_server::meters;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::info;

pub use routes::router;

/// Why the HTTP side could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The metrics recorder could not be built or installed (a second one
    /// in the same process, say).
    #[error("metrics: {0}")]
    Metrics(String),
    /// Serving failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// The Prometheus recorder, installed for the whole process.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the process's recorder (before the server starts, so its
    /// handles record into it) and describes every figure.
    pub fn install() -> Result<Self, HttpError> {
        let error = |e: metrics_exporter_prometheus::BuildError| HttpError::Metrics(e.to_string());
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), meters::SECONDS_BUCKETS)
            .map_err(error)?
            .set_buckets_for_metric(Matcher::Suffix("_meters".into()), meters::METERS_BUCKETS)
            .map_err(error)?
            .install_recorder()
            .map_err(error)?;
        meters::describe();
        Ok(Self { handle })
    }

    /// Folds recorded samples into the histograms, so that memory stays
    /// bounded between scrapes. Runs until the runtime stops.
    /// Runs the recorder's upkeep every few seconds, for the life of the
    /// runtime; once per process.
    pub fn keep_up(&self) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }

    /// The text Prometheus scrapes, after setting the engine's counts,
    /// with the latency histograms the server keeps itself.
    fn render(&self, stats: &dispatch_proto::pb::Stats, histograms: &str) -> String {
        meters::publish(stats);
        let mut text = self.handle.render();
        text.push_str(histograms);
        text
    }
}

/// How the HTTP side is set up.
#[derive(Clone, Default)]
pub struct HttpConfig {
    /// Token keys: `None` lets everyone in (loopback only).
    pub keys: Option<Keys>,
    /// Serve `/metrics` and `/healthz` without a token even when keys are
    /// set.
    pub open_metrics: bool,
    /// A tile server for the map's base layer (`{z}/{x}/{y}` in it), or
    /// none: the map draws a plain grid.
    pub map_tile_url: Option<String>,
    /// The road network the engine ranks by, if any: a followed trip's
    /// route is drawn along it.
    pub roads: Option<std::sync::Arc<dyn dispatch_core::roads::Roads>>,
}

/// Everything the routes need.
#[derive(Clone)]
pub struct App {
    /// The engine, for operators' questions.
    pub operator: Operator,
    /// The recorder, if `/metrics` is served.
    pub metrics: Option<Metrics>,
    /// Who may ask, and the map's settings.
    pub config: HttpConfig,
}

/// Connections handed over on a channel (the cluster's front door), as an
/// axum listener.
struct Handed {
    connections: tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
}

impl axum::serve::Listener for Handed {
    type Io = tokio::net::TcpStream;
    type Addr = Option<std::net::SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(stream) => {
                let peer = stream.peer_addr().ok();
                (stream, peer)
            }
            // No more will come: wait for the shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(None)
    }
}

/// Serves the HTTP side on connections someone else accepts (a cluster
/// node's front door, while it owns the engine) until `shutdown` resolves.
/// The caller keeps the metrics up ([`Metrics::keep_up`]).
pub async fn serve_connections(
    connections: tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(Handed { connections }, router(app)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Serves the HTTP side on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    if let Some(metrics) = &app.metrics {
        metrics.keep_up();
    }
    info!(addr = ?listener.local_addr().ok(), "HTTP side serving: /metrics, /healthz, the map at /");
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
