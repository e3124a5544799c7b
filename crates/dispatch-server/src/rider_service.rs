//! `RiderService`: ask for a ride and follow it, cancel it, read it.

use dispatch_core::engine::RideRequest;
use dispatch_proto::convert;
use dispatch_proto::pb::{self, rider_service_server::RiderService};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine_task::{Command, EngineHandle};
use crate::status::{engine_status, input_status};

/// The longest cancel reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// The rider service.
pub struct RiderSvc {
    engine: EngineHandle,
    queue: usize,
}

impl RiderSvc {
    /// A service over `engine`; each rider stream buffers at most `queue`
    /// trip updates.
    pub fn new(engine: EngineHandle, queue: usize) -> Self {
        Self { engine, queue }
    }
}

#[tonic::async_trait]
impl RiderService for RiderSvc {
    type RequestRideStream = ReceiverStream<Result<pb::Trip, Status>>;

    async fn request_ride(
        &self,
        request: Request<pb::RideRequest>,
    ) -> Result<Response<Self::RequestRideStream>, Status> {
        let received = Instant::now();
        let request = RideRequest::try_from(request.get_ref()).map_err(|e| input_status(&e))?;
        let (watcher, updates) = mpsc::channel(self.queue.max(2));
        self.engine.ask(|reply| Command::RequestRide { request, watcher, received, reply }).await?;
        Ok(Response::new(ReceiverStream::new(updates)))
    }

    async fn cancel_ride(&self, request: Request<pb::CancelRideRequest>) -> Result<Response<pb::Trip>, Status> {
        let request = request.into_inner();
        let trip = convert::trip_id(&request.trip_id).map_err(|e| input_status(&e))?;
        if request.reason.len() > MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!("reason: at most {MAX_REASON_BYTES} bytes")));
        }
        let reason = request.reason;
        let result = self.engine.ask(|reply| Command::CancelRide { trip, reason, reply }).await?;
        result.map(|t| Response::new((&t).into())).map_err(|e| engine_status(&e))
    }

    async fn get_trip(&self, request: Request<pb::GetTripRequest>) -> Result<Response<pb::Trip>, Status> {
        let id = convert::trip_id(&request.get_ref().trip_id).map_err(|e| input_status(&e))?;
        self.engine.trip(id).map(Response::new).ok_or_else(|| Status::not_found(format!("trip {id} not found")))
    }
}
