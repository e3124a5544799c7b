//! `FleetService`: a partner's gateway speaks for many drivers in one stream.

use dispatch_core::engine::FleetDriverUpdate;
use dispatch_core::ids::SessionId;
use dispatch_proto::convert;
use dispatch_proto::pb::{self, fleet_message::Kind, fleet_service_server::FleetService};
use tonic::{Code, Request, Response, Status, Streaming};

use dispatch_auth::Role;

use crate::auth::{Caller, Gate};
use crate::engine_task::{Command, EngineHandle};
use crate::limits::{Budget, Limiters};
use crate::session::{self, Parsed};
use crate::status::{input_code, input_status, rejected};
use crate::streams::{EventStream, SessionSender};

/// The fleet service.
pub struct FleetSvc {
    engine: EngineHandle,
    queue: usize,
    max_batch: usize,
    gate: Gate,
    limits: Limiters,
}

impl FleetSvc {
    /// A service over `engine`: each session buffers at most `queue` events
    /// and a batch carries at most `max_batch` updates.
    pub fn new(engine: EngineHandle, queue: usize, max_batch: usize, gate: Gate, limits: Limiters) -> Self {
        Self { engine, queue, max_batch, gate, limits }
    }
}

#[tonic::async_trait]
impl FleetService for FleetSvc {
    type ConnectStream = EventStream;

    async fn connect(&self, request: Request<Streaming<pb::FleetMessage>>) -> Result<Response<EventStream>, Status> {
        let (limits, max_batch) = (self.limits.clone(), self.max_batch);
        let parse = move |session, who: &str, m| parse(session, max_batch, &limits, who, m);
        let call = "FleetService.Connect";
        session::start(&self.engine, &self.gate, request, Role::Fleet, call, self.queue, hello, parse)
            .map(Response::new)
    }
}

fn hello(
    session: SessionId,
    caller: &Caller,
    peer: &str,
    message: pb::FleetMessage,
    sender: SessionSender,
) -> Result<Command, Status> {
    let Some(Kind::Hello(hello)) = message.kind else {
        return Err(Status::failed_precondition("the first message of a fleet session must be hello"));
    };
    let fleet = convert::fleet_id(&hello.fleet_id).map_err(|e| input_status(&e))?;
    caller.require_subject(fleet.as_str(), "fleet hello", peer)?;
    Ok(Command::FleetHello { session, fleet, sender })
}

fn parse(session: SessionId, max_batch: usize, limits: &Limiters, fleet: &str, message: pb::FleetMessage) -> Parsed {
    let invalid =
        |e: convert::InvalidInput, driver: &str| Parsed::rejected(rejected(input_code(&e), e.to_string(), driver));
    match message.kind {
        None => Parsed::rejected(rejected(Code::InvalidArgument, "empty message", "")),
        Some(Kind::Hello(_)) => {
            Parsed::rejected(rejected(Code::FailedPrecondition, "hello was already received on this session", ""))
        }
        Some(Kind::Updates(batch)) if batch.updates.len() > max_batch => Parsed::rejected(rejected(
            Code::InvalidArgument,
            format!("a batch carries at most {max_batch} updates, this one {}", batch.updates.len()),
            "",
        )),
        Some(Kind::Updates(_)) if !limits.allow(Budget::FleetBatch, fleet) => {
            Parsed::rejected(rejected(Code::ResourceExhausted, "rate limit: too many batches", ""))
        }
        Some(Kind::OfferReply(_) | Kind::TripProgress(_)) if !limits.allow(Budget::FleetMessage, fleet) => {
            Parsed::rejected(rejected(Code::ResourceExhausted, "rate limit: too many messages", ""))
        }
        Some(Kind::Updates(batch)) => {
            let mut updates = Vec::with_capacity(batch.updates.len());
            let mut rejections = Vec::new();
            for update in &batch.updates {
                match FleetDriverUpdate::try_from(update) {
                    Ok(update) => updates.push(update),
                    Err(e) => rejections.push(rejected(input_code(&e), e.to_string(), &update.driver_id)),
                }
            }
            let command = (!updates.is_empty()).then_some(Command::FleetBatch { session, updates });
            Parsed { command, rejections }
        }
        Some(Kind::OfferReply(reply)) => match convert::offer_id(&reply.offer_id) {
            // A fleet's reply names no driver: the offer id says whose it is.
            Ok(offer) => Parsed::command(Command::OfferReply { session, offer, accept: reply.accept }),
            Err(e) => invalid(e, ""),
        },
        Some(Kind::TripProgress(progress)) => {
            let parsed = convert::driver_id(&progress.driver_id).and_then(|driver| {
                Ok((driver, convert::trip_id(&progress.trip_id)?, convert::trip_status(progress.status)?))
            });
            match parsed {
                Ok((driver, trip, status)) => {
                    Parsed::command(Command::Progress { session, driver: Some(driver), trip, status })
                }
                Err(e) => invalid(e, &progress.driver_id),
            }
        }
    }
}
