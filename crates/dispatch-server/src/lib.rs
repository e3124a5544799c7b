//! The dispatch server: the task that owns the engine, the tonic services
//! in front of it, and [`run`], which serves them on a listener until a
//! shutdown signal.
//!
//! # Layout
//!
//! - [`config`]: queue sizes and the engine's rules.
//! - `engine_task`: the one task that owns the engine; commands in, effects
//!   carried out, replies after.
//! - `outbox`: the bounded outgoing side of a driver or fleet stream.
//! - `session`: reading a driver's or fleet's stream: hello first, then
//!   checked messages.
//! - `driver_service`, `fleet_service`, `rider_service`, `admin_service`:
//!   the thin tonic handlers.
//! - `status`: engine and input errors as gRPC codes.

mod admin_service;
pub mod config;
mod driver_service;
mod engine_task;
mod fleet_service;
mod outbox;
mod rider_service;
mod session;
mod status;

use std::future::Future;

use dispatch_proto::pb::{
    admin_service_server::AdminServiceServer, driver_service_server::DriverServiceServer,
    fleet_service_server::FleetServiceServer, rider_service_server::RiderServiceServer,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::info;

pub use config::ServerConfig;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not read the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The engine's thread could not be started.
    #[error("cannot start the engine thread: {0}")]
    EngineThread(std::io::Error),
}

/// Serves dispatch on `listener` until `shutdown` resolves; then every open
/// stream ends with `UNAVAILABLE` and the call returns once connections
/// have closed. The caller binds (tests use port 0) and owns the signals.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (engine, engine_stopped) = engine_task::spawn(&config).map_err(ServerError::EngineThread)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DriverServiceServer<driver_service::DriverSvc>>().await;
    health.set_serving::<FleetServiceServer<fleet_service::FleetSvc>>().await;
    health.set_serving::<RiderServiceServer<rider_service::RiderSvc>>().await;
    health.set_serving::<AdminServiceServer<admin_service::AdminSvc>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dispatch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let stopper = engine.clone();
    let on_shutdown = async move {
        shutdown.await;
        info!("shutting down: no new calls, ending open streams");
        health.set_not_serving::<DriverServiceServer<driver_service::DriverSvc>>().await;
        let _ = stopper.send(engine_task::Command::Shutdown).await;
    };

    info!(addr = ?listener.local_addr().ok(), "dispatch serving");
    // No Nagle: offers and replies are small messages that must not wait
    // for a delayed ACK (40 ms on Linux). Keepalive finds dead peers.
    let incoming =
        TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(std::time::Duration::from_secs(60)));
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(DriverServiceServer::new(driver_service::DriverSvc::new(
            engine.clone(),
            config.driver_session_queue,
        )))
        .add_service(FleetServiceServer::new(fleet_service::FleetSvc::new(
            engine.clone(),
            config.fleet_session_queue,
            config.max_fleet_batch,
        )))
        .add_service(RiderServiceServer::new(rider_service::RiderSvc::new(engine.clone(), config.rider_queue)))
        .add_service(AdminServiceServer::new(admin_service::AdminSvc::new(engine)))
        .serve_with_incoming_shutdown(incoming, on_shutdown)
        .await?;
    let _ = engine_stopped.await;
    info!("dispatch stopped");
    Ok(())
}
