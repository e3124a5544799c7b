//! `DriverService`: one long-lived stream per driver app.

use dispatch_core::engine::{DriverHello, Ping};
use dispatch_core::ids::SessionId;
use dispatch_proto::convert;
use dispatch_proto::pb::{self, driver_message::Kind, driver_service_server::DriverService};
use tonic::{Code, Request, Response, Status, Streaming};

use dispatch_auth::Role;

use crate::auth::{Caller, Gate};
use crate::engine_task::{Command, EngineHandle};
use crate::limits::{Budget, Limiters};
use crate::session::{self, Parsed};
use crate::status::{input_code, rejected};
use crate::streams::{EventStream, SessionSender};

/// The driver service.
pub struct DriverSvc {
    engine: EngineHandle,
    queue: usize,
    gate: Gate,
    limits: Limiters,
}

impl DriverSvc {
    /// A service over `engine`; each session buffers at most `queue` events.
    pub fn new(engine: EngineHandle, queue: usize, gate: Gate, limits: Limiters) -> Self {
        Self { engine, queue, gate, limits }
    }
}

#[tonic::async_trait]
impl DriverService for DriverSvc {
    type ConnectStream = EventStream;

    async fn connect(&self, request: Request<Streaming<pb::DriverMessage>>) -> Result<Response<EventStream>, Status> {
        let limits = self.limits.clone();
        let parse = move |session, who: &str, m| parse(session, &limits, who, m);
        let call = "DriverService.Connect";
        session::start(&self.engine, &self.gate, request, Role::Driver, call, self.queue, hello, parse)
            .map(Response::new)
    }
}

fn hello(
    session: SessionId,
    caller: &Caller,
    peer: &str,
    message: pb::DriverMessage,
    sender: SessionSender,
) -> Result<Command, Status> {
    let Some(Kind::Hello(hello)) = message.kind else {
        return Err(Status::failed_precondition("the first message of a driver session must be hello"));
    };
    let hello = DriverHello::try_from(&hello).map_err(|e| crate::status::input_status(&e))?;
    caller.require_subject(hello.driver.as_str(), "driver hello", peer)?;
    Ok(Command::DriverHello { session, hello, sender })
}

fn parse(session: SessionId, limits: &Limiters, driver: &str, message: pb::DriverMessage) -> Parsed {
    let invalid = |e: convert::InvalidInput| Parsed::rejected(rejected(input_code(&e), e.to_string(), ""));
    match message.kind {
        None => Parsed::rejected(rejected(Code::InvalidArgument, "empty message", "")),
        Some(Kind::Hello(_)) => {
            Parsed::rejected(rejected(Code::FailedPrecondition, "hello was already received on this session", ""))
        }
        Some(Kind::Location(_)) if !limits.allow(Budget::DriverUpdate, driver) => {
            Parsed::rejected(rejected(Code::ResourceExhausted, "rate limit: too many location updates", ""))
        }
        Some(Kind::Availability(_) | Kind::OfferReply(_) | Kind::TripProgress(_))
            if !limits.allow(Budget::DriverMessage, driver) =>
        {
            Parsed::rejected(rejected(Code::ResourceExhausted, "rate limit: too many messages", ""))
        }
        Some(Kind::Location(ping)) => match Ping::try_from(&ping) {
            Ok(ping) => Parsed::command(Command::Ping { session, ping }),
            Err(e) => invalid(e),
        },
        Some(Kind::Availability(a)) => Parsed::command(Command::Availability { session, available: a.available }),
        Some(Kind::OfferReply(reply)) => match convert::offer_id(&reply.offer_id) {
            Ok(offer) => Parsed::command(Command::OfferReply { session, offer, accept: reply.accept }),
            Err(e) => invalid(e),
        },
        Some(Kind::TripProgress(progress)) => {
            match convert::trip_id(&progress.trip_id).and_then(|t| Ok((t, convert::trip_status(progress.status)?))) {
                Ok((trip, status)) => Parsed::command(Command::Progress { session, driver: None, trip, status }),
                Err(e) => invalid(e),
            }
        }
    }
}
