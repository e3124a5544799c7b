//! Reading a driver's or a fleet's stream: the first message must be hello,
//! every later one is checked and turned into a command; a bad one gets a
//! `Rejected` event and the session goes on.

use dispatch_core::ids::SessionId;
use dispatch_proto::pb;
use tonic::{Status, Streaming};
use tracing::debug;

use crate::auth::{Caller, Gate, peer_of};
use crate::engine_task::{Command, EngineHandle};
use crate::status::rejected;
use crate::streams::{EventStream, SessionSender};
use tonic::Code;

/// What one message of an open session turns into.
pub struct Parsed {
    /// The command for the engine, if any part of the message was good.
    pub command: Option<Command>,
    /// `Rejected` events for the parts that were not.
    pub rejections: Vec<pb::DriverEvent>,
}

impl Parsed {
    /// The whole message is good.
    pub fn command(command: Command) -> Self {
        Self { command: Some(command), rejections: Vec::new() }
    }

    /// The whole message is refused.
    pub fn rejected(event: pb::DriverEvent) -> Self {
        Self { command: None, rejections: vec![event] }
    }
}

/// Admits a stream's caller (its token, in `role`), then runs the session
/// on a task of its own. `hello` gets the caller and the peer address to
/// check the hello's id against the token's subject. `parse` gets the
/// identity the hello named (the driver or fleet id), which the rate limits
/// are kept by.
#[allow(clippy::too_many_arguments)] // Each is one thing a session needs.
pub fn start<M: Send + 'static>(
    engine: &EngineHandle,
    gate: &Gate,
    request: tonic::Request<Streaming<M>>,
    role: dispatch_auth::Role,
    call: &'static str,
    queue: usize,
    hello: impl FnOnce(SessionId, &Caller, &str, M, SessionSender) -> Result<Command, Status> + Send + 'static,
    mut parse: impl FnMut(SessionId, &str, M) -> Parsed + Send + 'static,
) -> Result<EventStream, Status> {
    let peer = peer_of(&request);
    let caller = gate.identify(&request, call)?;
    caller.require(&[role], call, &peer)?;
    let (sender, events) = SessionSender::new(queue);
    let session = engine.new_session();
    let expires_at = caller.expires_at();
    let hello = move |m, sender| hello(session, &caller, &peer, m, sender);
    let parse = move |who: &str, m| parse(session, who, m);
    tokio::spawn(serve(engine.clone(), session, request.into_inner(), sender, expires_at, hello, parse));
    Ok(events)
}

/// Runs a session until the client hangs up or the session is ended.
/// `hello` turns the first message into the hello command (or the status
/// that ends the stream); `parse` turns each later message, with the
/// identity the hello named, into a command.
/// A session ends with `UNAUTHENTICATED` when `expires_at` (its token's
/// expiry) passes.
pub async fn serve<M>(
    engine: EngineHandle,
    session: SessionId,
    mut inbound: Streaming<M>,
    sender: SessionSender,
    expires_at: Option<std::time::SystemTime>,
    hello: impl FnOnce(M, SessionSender) -> Result<Command, Status>,
    mut parse: impl FnMut(&str, M) -> Parsed,
) {
    let expiry = async move {
        match expires_at {
            Some(at) => tokio::time::sleep(at.duration_since(std::time::SystemTime::now()).unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let first = tokio::select! {
        message = inbound.message() => message,
        () = sender.closed() => return,
    };
    let command = match first {
        Ok(Some(message)) => hello(message, sender.clone()),
        Ok(None) | Err(_) => return,
    };
    let who = match command {
        Ok(command) => {
            let who = command.identity().unwrap_or_default();
            if let Err(status) = engine.send(command).await {
                sender.end(status);
                // The hello may have reached some shards (a fleet's opens
                // in each) before one refused it: they forget it too.
                let _ = engine.send(Command::SessionClosed { session, driver: None }).await;
                return;
            }
            who
        }
        Err(status) => {
            debug!(%session, code = ?status.code(), message = status.message(), "hello refused");
            sender.end(status);
            return;
        }
    };
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = sender.closed() => break,
            () = &mut expiry => {
                debug!(%session, "token expired; ending the session");
                sender.end(Status::unauthenticated("token expired"));
                break;
            }
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                // Said back to the client: a message too large, a broken
                // frame. Its session ends here either way.
                debug!(%session, code = ?status.code(), "session stream broke");
                sender.end(status);
                break;
            }
        };
        let parsed = parse(&who, message);
        for rejection in parsed.rejections {
            // A reader too far behind to take a rejection is ended by the
            // engine task soon enough; dropping this one is fine.
            let _ = sender.try_send(rejection);
        }
        if let Some(command) = parsed.command {
            match engine.send(command).await {
                Ok(true) => {}
                Ok(false) => {
                    // Shed: the engine is behind. Say so, once per message;
                    // the session goes on and the next update may get in.
                    let _ = sender.try_send(rejected(Code::ResourceExhausted, "overloaded: location update shed", ""));
                }
                Err(status) if status.code() == Code::ResourceExhausted => {
                    let _ = sender.try_send(rejected(Code::ResourceExhausted, status.message(), ""));
                }
                Err(_) => break,
            }
        }
    }
    let _ = engine.send(Command::SessionClosed { session, driver: None }).await;
}
