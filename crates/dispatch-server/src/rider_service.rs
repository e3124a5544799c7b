//! `RiderService`: ask for a ride and follow it, cancel it, read it.

use dispatch_core::engine::RideRequest;
use dispatch_proto::convert;
use dispatch_proto::pb::{self, rider_service_server::RiderService};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use dispatch_auth::Role;
use dispatch_core::ids::RiderId;
use futures::StreamExt;

use crate::auth::{Gate, peer_of};
use crate::engine_task::{Command, EngineHandle};
use crate::limits::{Budget, Limiters};
use crate::status::{engine_status, input_status};
use crate::streams::RiderUpdate;

use dispatch_core::engine::MAX_REASON_BYTES;

/// The rider service.
pub struct RiderSvc {
    engine: EngineHandle,
    queue: usize,
    gate: Gate,
    limiter: Limiters,
}

impl RiderSvc {
    /// A service over `engine`; each rider stream buffers at most `queue`
    /// trip updates.
    pub fn new(engine: EngineHandle, queue: usize, gate: Gate, limiter: Limiters) -> Self {
        Self { engine, queue, gate, limiter }
    }
}

/// A rider's stream of trip updates, ended with `UNAUTHENTICATED` when the
/// token expires.
pub type TripStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Trip, Status>> + Send>>;

#[tonic::async_trait]
impl RiderService for RiderSvc {
    type RequestRideStream = TripStream;

    async fn request_ride(
        &self,
        request: Request<pb::RideRequest>,
    ) -> Result<Response<Self::RequestRideStream>, Status> {
        let received = Instant::now();
        let (peer, call) = (peer_of(&request), "RiderService.RequestRide");
        let caller = self.gate.identify(&request, call)?;
        caller.require(&[Role::Rider], call, &peer)?;
        let request = RideRequest::try_from(request.get_ref()).map_err(|e| input_status(&e))?;
        caller.require_subject(request.rider.as_str(), "ride request", &peer)?;
        if !self.limiter.allow(Budget::RiderRequest, request.rider.as_str()) {
            return Err(Status::resource_exhausted("rate limit: too many ride requests; try again in a minute"));
        }
        let (rider, updates) = mpsc::channel::<RiderUpdate>(self.queue.max(2));
        self.engine.ask(|reply| Command::RequestRide { request, rider, received, reply }).await?;
        // Counted as a rider following for as long as the stream lives.
        let guard = self.engine.rider_stream();
        let updates = ReceiverStream::new(updates).map(move |item| {
            let _counted = &guard;
            item.map(|trip| *trip).map_err(|status| *status)
        });
        let Some(expires_at) = caller.expires_at() else { return Ok(Response::new(Box::pin(updates))) };
        let left = expires_at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        let expiry = Box::pin(tokio::time::sleep(left));
        // Updates until the trip ends, or until the token expires.
        let stream =
            futures::stream::unfold((updates, expiry, false), |(mut updates, mut expiry, expired)| async move {
                if expired {
                    return None;
                }
                tokio::select! {
                    item = updates.next() => item.map(|item| (item, (updates, expiry, false))),
                    () = &mut expiry => Some((Err(Status::unauthenticated("token expired")), (updates, expiry, true))),
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_ride(&self, request: Request<pb::CancelRideRequest>) -> Result<Response<pb::Trip>, Status> {
        let (peer, call) = (peer_of(&request), "RiderService.CancelRide");
        let caller = self.gate.identify(&request, call)?;
        caller.require(&[Role::Rider, Role::Admin], call, &peer)?;
        let request = request.into_inner();
        let trip = convert::trip_id(&request.trip_id).map_err(|e| input_status(&e))?;
        if request.reason.len() > MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!("reason: at most {MAX_REASON_BYTES} bytes")));
        }
        let reason = request.reason;
        // A rider may cancel only its own trips; the engine task checks
        // against the trip itself and answers NOT_FOUND otherwise.
        let rider =
            caller.rider_scope().map(RiderId::new).transpose().map_err(|_| Status::not_found("no such trip"))?;
        let operator = caller.is_admin();
        let result = self.engine.ask(|reply| Command::CancelRide { trip, reason, rider, operator, reply }).await?;
        result.map(|t| Response::new((&t).into())).map_err(|e| engine_status(&e))
    }

    async fn get_trip(&self, request: Request<pb::GetTripRequest>) -> Result<Response<pb::Trip>, Status> {
        let (peer, call) = (peer_of(&request), "RiderService.GetTrip");
        let caller = self.gate.identify(&request, call)?;
        caller.require(&[Role::Rider, Role::Driver, Role::Admin], call, &peer)?;
        let id = convert::trip_id(&request.get_ref().trip_id).map_err(|e| input_status(&e))?;
        // Someone else's trip answers exactly like a missing one, so trip
        // ids cannot be probed. A trip not open is asked of the engine, so
        // riders' and drivers' reads of those are rate-limited.
        let trip = match self.engine.open_trip(id) {
            Some(open) => Some(open),
            None if caller.read_budget().is_some_and(|who| !self.limiter.allow(Budget::TripRead, who)) => {
                return Err(Status::resource_exhausted("rate limit: too many reads of ended trips; slow down"));
            }
            None => self.engine.kept_trip(id).await?,
        };
        trip.filter(|t| caller.may_see_trip(&t.rider_id, &t.driver_id))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("trip {id} not found")))
    }
}
