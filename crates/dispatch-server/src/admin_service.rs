//! `AdminService`: what operators ask.

use dispatch_core::engine::NearbyQuery;
use dispatch_proto::pb::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use dispatch_auth::Role;

use crate::auth::{Gate, peer_of};
use crate::engine_task::{Command, EngineHandle};
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
        let nearby = self.engine.ask(|reply| Command::Nearby { query, reply }).await?;
        Ok(Response::new((&nearby).into()))
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::Stats>, Status> {
        self.admit(&request, "AdminService.GetStats")?;
        Ok(Response::new(self.engine.ask(|reply| Command::Stats { reply }).await?))
    }
}
