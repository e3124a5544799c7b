//! What handlers ask of the engine task.

use dispatch_core::EngineError;
use dispatch_core::engine::{
    DriverHello, FleetDriverUpdate, MapDriver, MapQuery, MapView, Nearby, NearbyQuery, Ping, RideRequest, Stats,
};
use dispatch_core::ids::{DriverId, FleetId, OfferId, RiderId, SessionId, TripId};
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_proto::pb;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::streams::SessionSender;

/// What a handler asks of the engine.
pub enum Command {
    /// A driver's app said hello on a new stream.
    DriverHello { session: SessionId, hello: DriverHello, sender: SessionSender },
    /// A fleet gateway said hello on a new stream.
    FleetHello { session: SessionId, fleet: FleetId, sender: SessionSender },
    /// With several shards: open a fleet's session in a shard other than
    /// the one answering its hello, before the hello is answered.
    FleetJoin { session: SessionId, fleet: FleetId, reply: oneshot::Sender<()> },
    /// A driver's position.
    Ping { session: SessionId, ping: Ping },
    /// A driver goes on or off duty.
    Availability { session: SessionId, available: bool },
    /// A fleet's batch, each entry already checked.
    FleetBatch { session: SessionId, updates: Vec<FleetDriverUpdate> },
    /// An answer to an offer.
    OfferReply { session: SessionId, offer: OfferId, accept: bool },
    /// A driver moves its trip on; `driver` is set in a fleet session.
    Progress { session: SessionId, driver: Option<DriverId>, trip: TripId, status: TripStatus },
    /// A stream ended; `driver` is the driver a driver's app spoke for
    /// (set by the router, with several shards).
    SessionClosed { session: SessionId, driver: Option<DriverId> },
    /// A rider asks for a ride (or re-attaches to one with the same key).
    RequestRide {
        request: RideRequest,
        rider: crate::streams::RiderSender,
        received: Instant,
        reply: oneshot::Sender<Trip>,
    },
    /// A rider cancels (`rider`, if set, must be the trip's rider, else not
    /// found), or an operator ends a trip whatever its status.
    CancelRide {
        trip: TripId,
        reason: String,
        rider: Option<RiderId>,
        operator: bool,
        reply: oneshot::Sender<Result<Trip, EngineError>>,
    },
    /// An operator's nearby query.
    Nearby { query: NearbyQuery, reply: oneshot::Sender<Nearby> },
    /// An operator's stats query.
    Stats { reply: oneshot::Sender<Stats> },
    /// A trip the table of open trips does not hold: ended (the engine
    /// alone keeps ended trips), or too new to be durable yet. Answered
    /// once what came before is durable.
    Trip { trip: TripId, reply: oneshot::Sender<Option<pb::Trip>> },
    /// What the operators' map shows of a viewport.
    Map { query: MapQuery, reply: oneshot::Sender<MapView> },
    /// One driver, as the map shows it.
    MapDriver { driver: DriverId, reply: oneshot::Sender<Option<MapDriver>> },
    /// End every stream with `UNAVAILABLE` and stop.
    Shutdown,
}

impl Command {
    /// The driver or fleet a hello speaks for.
    pub fn identity(&self) -> Option<String> {
        match self {
            Command::DriverHello { hello, .. } => Some(hello.driver.to_string()),
            Command::FleetHello { fleet, .. } => Some(fleet.to_string()),
            _ => None,
        }
    }

    /// Location updates: many, cheap to lose (the next comes in a second),
    /// so they travel apart from everything else and may be shed.
    pub(super) fn is_bulk(&self) -> bool {
        matches!(self, Command::Ping { .. } | Command::FleetBatch { .. })
    }

    /// How many location updates the command carries.
    pub(super) fn updates(&self) -> u64 {
        match self {
            Command::Ping { .. } => 1,
            Command::FleetBatch { updates, .. } => updates.len() as u64,
            _ => 0,
        }
    }
}
