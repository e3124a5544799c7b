//! `AdminService`: what operators ask.

use dispatch_core::engine::NearbyQuery;
use dispatch_proto::pb::{self, admin_service_server::AdminService};
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use dispatch_auth::Role;

use crate::auth::{Gate, peer_of};
use crate::engine_task::EngineHandle;
use crate::status::input_status;

/// The admin service: operators only.
pub struct AdminSvc {
    engine: EngineHandle,
    gate: Gate,
}

impl AdminSvc {
    /// A service over `engine`.
    pub fn new(engine: EngineHandle, gate: Gate) -> Self {
        Self { engine, gate }
    }

    fn admit<T>(&self, request: &Request<T>, call: &'static str) -> Result<(), Status> {
        self.gate.identify(request, call)?.require(&[Role::Admin], call, &peer_of(request))
    }
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn nearby_drivers(
        &self,
        request: Request<pb::NearbyRequest>,
    ) -> Result<Response<pb::NearbyResponse>, Status> {
        self.admit(&request, "AdminService.NearbyDrivers")?;
        let query = NearbyQuery::try_from(request.get_ref()).map_err(|e| input_status(&e))?;
        let nearby = self.engine.nearby(query).await?;
        Ok(Response::new((&nearby).into()))
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::Stats>, Status> {
        self.admit(&request, "AdminService.GetStats")?;
        Ok(Response::new(self.engine.stats().await?))
    }

    type WatchTripsStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Trip, Status>> + Send>>;

    async fn watch_trips(
        &self,
        request: Request<pb::WatchTripsRequest>,
    ) -> Result<Response<Self::WatchTripsStream>, Status> {
        self.admit(&request, "AdminService.WatchTrips")?;
        // A rider that falls behind skips what it missed: operators want
        // what is happening now, and nobody waits for a slow one.
        let changes =
            BroadcastStream::new(self.engine.watch_trips()).filter_map(|change| async move { change.ok().map(Ok) });
        Ok(Response::new(Box::pin(changes)))
    }
}
