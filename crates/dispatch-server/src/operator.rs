//! What operators' tools in the same process (the HTTP side) may ask of
//! the engine: the same questions as `AdminService`, plus the map. Every
//! call is a command in the engine's urgent queue, answered in turn, or a
//! read of the trip snapshots that never waits for the engine.

use dispatch_core::engine::{MapDriver, MapQuery, MapView};
use dispatch_core::ids::{DriverId, TripId};
use dispatch_proto::pb;
use tokio::sync::broadcast;
use tonic::Status;

use crate::engine_task::{Command, EngineHandle};

/// A handle for operators' tools. Cheap to clone.
#[derive(Clone)]
pub struct Operator {
    engine: EngineHandle,
}

impl Operator {
    pub(crate) fn new(engine: EngineHandle) -> Self {
        Self { engine }
    }

    /// What `GetStats` answers.
    pub async fn stats(&self) -> Result<pb::Stats, Status> {
        self.engine.stats().await
    }

    /// The latency histograms `/metrics` shows beside the counts, in
    /// Prometheus's text format.
    pub fn histograms(&self) -> String {
        self.engine.histograms()
    }

    /// What the map shows of a viewport.
    pub async fn map_view(&self, query: MapQuery) -> Result<MapView, Status> {
        self.engine.map_view(query).await
    }

    /// One driver as the map shows it.
    pub async fn driver(&self, driver: DriverId) -> Result<Option<MapDriver>, Status> {
        self.engine.ask(|reply| Command::MapDriver { driver, reply }).await
    }

    /// The latest state of a trip, as `GetTrip` answers.
    pub async fn trip(&self, id: TripId) -> Result<Option<pb::Trip>, Status> {
        self.engine.trip(id).await
    }

    /// Every trip change from now on.
    pub fn watch_trips(&self) -> broadcast::Receiver<pb::Trip> {
        self.engine.watch_trips()
    }
}
