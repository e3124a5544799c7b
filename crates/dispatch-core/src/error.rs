//! What the engine refuses, and why.

use crate::ids::{DriverId, OfferId, TripId};
use crate::trip::TripStatus;

/// A command the engine refused. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The session is not open (never said hello, or was replaced).
    #[error("this session is not open")]
    SessionNotOpen,
    /// A driver session sent what only a fleet may send, or the reverse.
    #[error("this message does not belong in a {0} session")]
    WrongSessionKind(&'static str),
    /// The driver is held by another live session that may not be replaced
    /// by this one (a fleet's driver, or a driver's own app against a fleet).
    #[error("driver {0} is held by another session")]
    DriverHeldElsewhere(DriverId),
    /// A driver id outside the namespace of whoever used it: an app driver's
    /// id holds the fleet separator, or a fleet named a driver outside
    /// `FLEET_ID/` (see [`crate::ids`]).
    #[error("driver {driver}: {why}")]
    ForeignDriverName {
        /// The id.
        driver: DriverId,
        /// The rule it broke.
        why: String,
    },
    /// A fleet named a driver it has not registered.
    #[error("driver {0} is not one of this fleet's drivers")]
    NotFleetDriver(DriverId),
    /// No open offer with this id is addressed to this driver. Unknown,
    /// expired and foreign offers look the same, so ids cannot be probed.
    #[error("offer {0} is not open for this driver")]
    UnknownOffer(OfferId),
    /// No trip with this id.
    #[error("trip {0} not found")]
    UnknownTrip(TripId),
    /// The trip is not this driver's current trip.
    #[error("trip {0} is not this driver's current trip")]
    NotDriversTrip(TripId),
    /// A driver reported a status that is not next for the trip.
    #[error("trip {trip} is {from:?}; {to:?} cannot come next")]
    OutOfOrder {
        /// The trip.
        trip: TripId,
        /// Its status now.
        from: TripStatus,
        /// What the driver reported.
        to: TripStatus,
    },
    /// A driver reported a status drivers never report.
    #[error("a driver can report DRIVER_ARRIVED, IN_PROGRESS, COMPLETED or CANCELLED, not {0:?}")]
    NotADriverReport(TripStatus),
    /// A new driver would take the engine (or its fleet) past its limit
    /// (`Config::max_drivers`, `Config::max_drivers_per_fleet`).
    #[error("too many drivers: {what} is at its limit of {limit}")]
    TooManyDrivers {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The rider asked to cancel once the ride had started or ended.
    #[error("trip {trip} is {status:?} and can no longer be cancelled")]
    TooLateToCancel {
        /// The trip.
        trip: TripId,
        /// Its status now.
        status: TripStatus,
    },
}
