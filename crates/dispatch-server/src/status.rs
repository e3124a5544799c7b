//! Every refusal as a gRPC status: one exhaustive `match` per error enum, so
//! a new variant cannot ship without a code.

use dispatch_core::EngineError;
use dispatch_proto::{InvalidInput, pb};
use tonic::{Code, Status};

/// The gRPC code for an engine refusal.
pub fn engine_code(err: &EngineError) -> Code {
    match err {
        EngineError::SessionNotOpen => Code::Aborted,
        EngineError::WrongSessionKind(_) => Code::FailedPrecondition,
        EngineError::DriverHeldElsewhere(_) => Code::AlreadyExists,
        EngineError::NotFleetDriver(_) => Code::NotFound,
        EngineError::ForeignDriverName { .. } => Code::PermissionDenied,
        EngineError::UnknownOffer(_) => Code::NotFound,
        EngineError::UnknownTrip(_) => Code::NotFound,
        EngineError::NotDriversTrip(_) => Code::FailedPrecondition,
        EngineError::OutOfOrder { .. } => Code::FailedPrecondition,
        EngineError::NotADriverReport(_) => Code::InvalidArgument,
        EngineError::TooLateToCancel { .. } => Code::FailedPrecondition,
        EngineError::TooManyDrivers { .. } => Code::ResourceExhausted,
    }
}

/// The gRPC code for a message that failed its checks.
pub fn input_code(err: &InvalidInput) -> Code {
    match err {
        InvalidInput::Field { .. } => Code::InvalidArgument,
        InvalidInput::UnknownId { .. } => Code::NotFound,
    }
}

/// An engine refusal as a status.
pub fn engine_status(err: &EngineError) -> Status {
    Status::new(engine_code(err), err.to_string())
}

/// A failed check as a status.
pub fn input_status(err: &InvalidInput) -> Status {
    Status::new(input_code(err), err.to_string())
}

/// A `Rejected` event: one message refused, the session goes on.
pub fn rejected(code: Code, message: impl Into<String>, driver_id: &str) -> pb::DriverEvent {
    pb::DriverEvent {
        kind: Some(pb::driver_event::Kind::Rejected(pb::Rejected {
            code: code as i32,
            message: message.into(),
            driver_id: driver_id.to_owned(),
        })),
    }
}
