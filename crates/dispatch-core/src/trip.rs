//! A trip and the rules for moving it from one status to the next.

use crate::geo::LatLng;
use crate::ids::{DriverId, RequestId, RiderId, TripId};
use crate::service::ServiceType;
use crate::time::Timestamp;

/// Where a trip is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TripStatus {
    /// Looking for a driver; an offer may be out.
    Searching,
    /// A driver accepted and is on the way.
    DriverAssigned,
    /// The driver is at the pickup.
    DriverArrived,
    /// The rider is on board.
    InProgress,
    /// Ended at the dropoff. Terminal.
    Completed,
    /// Ended by the rider, or by the driver after the pickup. Terminal.
    Cancelled,
    /// Nobody accepted before the search timed out. Terminal.
    NoDriverFound,
}

impl TripStatus {
    /// Whether the trip has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::NoDriverFound)
    }

    /// Whether a driver is on the trip (assigned, arrived or driving).
    pub fn has_driver(self) -> bool {
        matches!(self, Self::DriverAssigned | Self::DriverArrived | Self::InProgress)
    }

    /// How far along the trip is, for the "statuses only move forward" rule.
    /// The one step back the engine takes is a driver's cancel before the
    /// pickup, which returns the trip to `Searching` for another driver.
    pub fn rank(self) -> u8 {
        match self {
            Self::Searching => 0,
            Self::DriverAssigned => 1,
            Self::DriverArrived => 2,
            Self::InProgress => 3,
            Self::Completed | Self::Cancelled | Self::NoDriverFound => 4,
        }
    }

    /// The status a driver's progress report moves the trip to, or `None`
    /// when that report is out of order from here. A driver's `Cancelled`
    /// before the pickup gives `Searching`: the trip goes to someone else.
    ///
    /// ```
    /// use dispatch_core::trip::TripStatus::*;
    /// assert_eq!(DriverAssigned.after_driver_report(DriverArrived), Some(DriverArrived));
    /// assert_eq!(DriverAssigned.after_driver_report(InProgress), None);
    /// assert_eq!(DriverArrived.after_driver_report(Cancelled), Some(Searching));
    /// assert_eq!(InProgress.after_driver_report(Cancelled), Some(Cancelled));
    /// ```
    pub fn after_driver_report(self, report: TripStatus) -> Option<TripStatus> {
        use TripStatus::*;
        match (self, report) {
            (DriverAssigned, DriverArrived) => Some(DriverArrived),
            (DriverArrived, InProgress) => Some(InProgress),
            (InProgress, Completed) => Some(Completed),
            (DriverAssigned | DriverArrived, Cancelled) => Some(Searching),
            (InProgress, Cancelled) => Some(Cancelled),
            _ => None,
        }
    }

    /// Whether a driver may report this status at all (whatever the trip's
    /// current status).
    pub fn is_driver_report(self) -> bool {
        matches!(self, Self::DriverArrived | Self::InProgress | Self::Completed | Self::Cancelled)
    }

    /// Whether the rider may still cancel.
    pub fn rider_may_cancel(self) -> bool {
        matches!(self, Self::Searching | Self::DriverAssigned | Self::DriverArrived)
    }
}

/// A trip as riders, drivers and operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    /// The engine's id.
    pub id: TripId,
    /// Who asked.
    pub rider: RiderId,
    /// The rider's idempotency key.
    pub request_id: RequestId,
    /// The assigned driver, while one is (and after the trip ended with one).
    pub driver: Option<DriverId>,
    /// Where the trip is.
    pub status: TripStatus,
    /// What was asked for.
    pub service: ServiceType,
    /// Where to pick up.
    pub pickup: LatLng,
    /// Where to go, if the rider said.
    pub dropoff: Option<LatLng>,
    /// The assigned driver's last known position.
    pub driver_position: Option<LatLng>,
    /// Great-circle metres from the driver to the pickup when assigned.
    pub pickup_distance_m: Option<f64>,
    /// The estimated time to the pickup when assigned, in milliseconds: the
    /// pickup distance at `Config::eta_speed_kmh`.
    pub pickup_eta_ms: Option<i64>,
    /// When the rider asked.
    pub requested_at: Timestamp,
    /// When anything about the trip last changed.
    pub updated_at: Timestamp,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// Forward dispatch: assigned to a driver who first finishes a ride
    /// whose dropoff is near this pickup; `pickup_distance_m` then runs via
    /// that dropoff. Cleared when the driver sets off for this pickup.
    pub queued: bool,
}
