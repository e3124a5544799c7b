//! The dispatch server: the task that owns the engine, the tonic services
//! in front of it, and [`run`], which serves them on a listener until a
//! shutdown signal.
//!
//! # Layout
//!
//! - [`config`]: queue sizes and the engine's rules.
//! - `engine_task`: the one task that owns the engine: recovery from the
//!   trip log at start, then commands in, effects out (one file per idea:
//!   commands, queues, what a round hands over, start-up and recovery,
//!   clock, the loop).
//! - `commit`: the commit stage: makes each group of rounds' trip records
//!   durable (group commit), then passes the group on.
//! - `deliver`: the delivery stage: delivers each durable group's events,
//!   rider updates and replies, in order, and drivers' positions, which
//!   come from the engine task straight (`deliver/moves.rs`).
//! - `latency`: where the time from a request to its first offer goes.
//! - `streams`: the outgoing sides of a session's and a rider's streams.
//! - `session`: reading a driver's or fleet's stream: hello first, then
//!   checked messages.
//! - `driver_service`, `fleet_service`, `rider_service`, `admin_service`:
//!   the thin tonic handlers.
//! - `auth`: who is calling (bearer tokens) and what each role may do.
//! - `limits`: per-identity rate limits.
//! - `status`: engine and input errors as gRPC codes.
//! - [`meters`]: what is reported to Prometheus, and a layer counting gRPC
//!   calls.
//! - [`Operator`]: what the HTTP side (or any in-process tool) may ask.

mod admin_service;
mod auth;
mod commit;
pub mod config;
mod deliver;
mod driver_service;
mod engine_task;
mod fleet_service;
mod latency;
mod limits;
pub mod meters;
mod operator;
mod rider_service;
mod session;
mod status;
mod streams;

use std::future::Future;

use dispatch_proto::pb::{
    admin_service_server::AdminServiceServer, driver_service_server::DriverServiceServer,
    fleet_service_server::FleetServiceServer, rider_service_server::RiderServiceServer,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::info;

pub use config::{Fsync, Keys, RateLimits, ServerConfig, TlsFiles, TripLogConfig};
pub use engine_task::OpenedLog;
pub use operator::Operator;
pub use streams::RiderUpdate;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not read the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The engine's threads could not be started.
    #[error("cannot start the engine's threads: {0}")]
    Thread(std::io::Error),
    /// The trip log could not be opened.
    #[error("trip log: {0}")]
    TripLog(dispatch_store::StoreError),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The shard count cannot be used (out of range, or not the one the
    /// data directory was made with).
    #[error("shards: {0}")]
    Shards(String),
    /// The trip log failed while serving; the server stopped.
    #[error("trip log failed while serving: {0}")]
    TripLogFailed(String),
}

/// Serves dispatch on `listener` until `shutdown` resolves; then every open
/// stream ends with `UNAVAILABLE` and the call returns once connections
/// have closed. The caller binds (tests use port 0) and owns the signals.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::start(config).await?.serve(listener, shutdown).await
}

/// A server whose engine is running (the trip log read back), not yet
/// serving: [`Server::operator`] hands out what the HTTP side needs, then
/// [`Server::serve`] serves gRPC.
pub struct Server {
    config: ServerConfig,
    spawned: engine_task::Spawned,
}

impl Server {
    /// Reads the trip log back and starts the engine.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        Self::start_from(config, None).await
    }

    /// Starts the engine from a trip log someone else opened and read back
    /// (`config.trip_log` is not used).
    pub async fn start_with_log(config: ServerConfig, opened: OpenedLog) -> Result<Self, ServerError> {
        Self::start_from(config, Some(opened)).await
    }

    async fn start_from(config: ServerConfig, opened: Option<OpenedLog>) -> Result<Self, ServerError> {
        // Reading the trip log back is blocking file I/O that can take
        // seconds: it runs on a blocking thread, never on an async worker.
        let spawned = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || engine_task::spawn(&config, opened))
                .await
                .map_err(|e| ServerError::Thread(std::io::Error::other(e.to_string())))??
        };
        Ok(Self { config, spawned })
    }

    /// What operators' tools may ask, in process.
    pub fn operator(&self) -> Operator {
        Operator::new(self.spawned.handle.clone())
    }

    /// Serves gRPC on `listener` until `shutdown` resolves (see [`run`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        info!(addr = ?listener.local_addr().ok(), "dispatch serving");
        // No Nagle: offers and replies are small messages that must not
        // wait for a delayed ACK (40 ms on Linux). Keepalive finds dead
        // peers.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(60)));
        self.serve_connections(incoming, shutdown).await
    }

    /// Serves gRPC on connections someone else accepts (the cluster's
    /// front door hands over those meant for the owner), until `shutdown`
    /// resolves or the trip log fails.
    pub async fn serve_connections<I>(
        self,
        incoming: I,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError>
    where
        I: futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> + Send + 'static,
    {
        let Self { config, spawned } = self;
        serve(incoming, config, spawned, shutdown).await
    }
}

async fn serve<I>(
    incoming: I,
    config: ServerConfig,
    spawned: engine_task::Spawned,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError>
where
    I: futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> + Send + 'static,
{
    let engine_task::Spawned { handle: engine, stopped: engine_stopped, mut fatal } = spawned;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DriverServiceServer<driver_service::DriverSvc>>().await;
    health.set_serving::<FleetServiceServer<fleet_service::FleetSvc>>().await;
    health.set_serving::<RiderServiceServer<rider_service::RiderSvc>>().await;
    health.set_serving::<AdminServiceServer<admin_service::AdminSvc>>().await;
    // Both versions of reflection: v1, and v1alpha, which many tools still
    // speak (grpc_requests, older grpcui, evans, Postman).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dispatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let stopper = engine.clone();
    let mut log_failed = fatal.clone();
    let on_shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = log_failed.wait_for(Option::is_some) => {}
        }
        info!("shutting down: no new calls, ending open streams");
        health.set_not_serving::<DriverServiceServer<driver_service::DriverSvc>>().await;
        health.set_not_serving::<FleetServiceServer<fleet_service::FleetSvc>>().await;
        health.set_not_serving::<RiderServiceServer<rider_service::RiderSvc>>().await;
        health.set_not_serving::<AdminServiceServer<admin_service::AdminSvc>>().await;
        let _ = stopper.send(engine_task::Command::Shutdown).await;
    };

    let limit = config.max_message_bytes;
    let gate = auth::Gate::new(config.auth.clone());
    let limits = limits::Limiters::new(&config.rate_limits);
    let idle = limits.clone();
    // Callers quiet long enough have full buckets again: drop them, so the
    // limiters hold only recent callers. The task ends when this server
    // does (the handle aborts it when dropped, on every way out), so a
    // process that starts one server after another (a cluster node, at
    // each term of ownership) keeps none behind.
    let _forgetting = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            every.tick().await;
            idle.forget_idle();
        }
    }));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    builder
        .max_concurrent_streams(config.max_streams_per_connection)
        .layer(meters::GrpcCallsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            DriverServiceServer::new(driver_service::DriverSvc::new(
                engine.clone(),
                config.driver_session_queue,
                gate.clone(),
                limits.clone(),
            ))
            .max_decoding_message_size(limit),
        )
        .add_service(
            FleetServiceServer::new(fleet_service::FleetSvc::new(
                engine.clone(),
                config.fleet_session_queue,
                config.max_fleet_batch,
                gate.clone(),
                limits.clone(),
            ))
            .max_decoding_message_size(limit),
        )
        .add_service(
            RiderServiceServer::new(rider_service::RiderSvc::new(
                engine.clone(),
                config.rider_queue,
                gate.clone(),
                limits,
            ))
            .max_decoding_message_size(limit),
        )
        .add_service(
            AdminServiceServer::new(admin_service::AdminSvc::new(engine, gate)).max_decoding_message_size(limit),
        )
        .serve_with_incoming_shutdown(incoming, on_shutdown)
        .await?;
    engine_stopped.wait().await;
    if let Some(cause) = fatal.borrow_and_update().clone() {
        return Err(ServerError::TripLogFailed(cause));
    }
    info!("dispatch stopped");
    Ok(())
}
