//! How handlers reach the engine task: two queues, and shedding of
//! location updates when the engine is behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dispatch_core::ids::{SessionId, TripId};
use dispatch_proto::pb;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

use super::Command;

/// How handlers reach the engine task. Cheap to clone.
///
/// Two queues: rides, offer replies, progress, hellos and operator calls go
/// through `urgent`, which the engine task always empties first; location
/// updates go through `bulk`, taken one command at a time between urgent
/// ones. So a ride request never waits behind a second of queued pings, and
/// when the engine cannot keep up it is the pings that are shed.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) urgent: mpsc::Sender<Command>,
    pub(super) bulk: mpsc::Sender<Command>,
    /// Location updates dropped because too many were queued.
    pub(super) shed: Arc<AtomicU64>,
    /// Location updates queued and not yet applied: the real bound on the
    /// bulk queue, since one fleet batch carries up to 10,000.
    pub(super) queued_updates: Arc<AtomicU64>,
    pub(super) max_queued_updates: u64,
    pub(super) next_session: Arc<AtomicU64>,
    /// The latest state of every open trip, as told, for `GetTrip`: a
    /// `DashMap` so many readers never queue behind the engine's commands
    /// (or each other). Only the delivery stage writes it, after the change
    /// is in the trip log and as it tells the rider, so a reader never sees
    /// a state that is not durable. A trip leaves it when it ends: ended
    /// trips, kept for a day, are the engine's alone (packed), and asked of
    /// it.
    pub(super) trips: Arc<DashMap<TripId, pb::Trip>>,
    /// Every trip change as riders see it, for operators watching; sent to
    /// only while someone watches.
    pub(super) changes: broadcast::Sender<pb::Trip>,
    /// Riders following a trip now.
    pub(super) rider_streams: Arc<AtomicU64>,
    /// The latency histograms, for `/metrics`.
    pub(super) latency: Option<crate::latency::Latency>,
}

/// Counts one rider stream open while it lives.
pub struct RiderStreamGuard(Arc<AtomicU64>);

impl Drop for RiderStreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EngineHandle {
    /// The latency histograms in Prometheus's text format (see
    /// [`crate::latency`]).
    pub fn histograms(&self) -> String {
        self.latency.as_ref().map(crate::latency::Latency::prometheus).unwrap_or_default()
    }

    /// Queues a command without waiting: location updates are shed (and
    /// `Ok(false)` returned) when the engine is behind; anything else gets
    /// `RESOURCE_EXHAUSTED` when the queue is full. Only a session's close
    /// waits for room.
    pub async fn send(&self, command: Command) -> Result<bool, Status> {
        let closed = || Status::unavailable("the server is shutting down");
        if matches!(command, Command::SessionClosed { .. } | Command::Shutdown) {
            // Must get through, or the engine would keep a dead session.
            return self.urgent.send(command).await.map(|()| true).map_err(|_| closed());
        }
        if !command.is_bulk() {
            // A full queue means the engine is far behind: say so at once
            // rather than leave the caller waiting toward a timeout.
            return match self.urgent.try_send(command) {
                Ok(()) => Ok(true),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Err(Status::resource_exhausted("the engine is overloaded; retry shortly"))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
            };
        }
        let n = command.updates();
        if self.queued_updates.fetch_add(n, Ordering::Relaxed) + n > self.max_queued_updates {
            self.queued_updates.fetch_sub(n, Ordering::Relaxed);
            self.shed.fetch_add(n, Ordering::Relaxed);
            return Ok(false);
        }
        match self.bulk.try_send(command) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.queued_updates.fetch_sub(n, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.shed.fetch_add(n, Ordering::Relaxed);
                        Ok(false)
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(closed()),
                }
            }
        }
    }

    /// Sends a command that carries a reply channel and waits for the reply.
    pub async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.send(command(tx)).await?;
        rx.await.map_err(|_| Status::unavailable("the server is shutting down"))
    }

    /// A new session id.
    pub fn new_session(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// The latest durable state of a trip: an open one from the table,
    /// without waiting; an ended one (or one not yet durable) from the
    /// engine.
    pub async fn trip(&self, id: TripId) -> Result<Option<pb::Trip>, Status> {
        match self.open_trip(id) {
            Some(open) => Ok(Some(open)),
            None => self.kept_trip(id).await,
        }
    }

    /// An open trip, from the table, without the engine.
    pub fn open_trip(&self, id: TripId) -> Option<pb::Trip> {
        self.trips.get(&id).map(|t| t.clone())
    }

    /// A trip as the engine keeps it (ended ones included), once what came
    /// before is durable: a command to the engine task.
    pub async fn kept_trip(&self, id: TripId) -> Result<Option<pb::Trip>, Status> {
        self.ask(|reply| Command::Trip { trip: id, reply }).await
    }

    /// The engine's counts, with what only the shell knows: queue depths
    /// and riders following.
    pub async fn stats(&self) -> Result<pb::Stats, Status> {
        let mut stats = self.ask(|reply| Command::Stats { reply }).await?;
        stats.queue_urgent = (self.urgent.max_capacity() - self.urgent.capacity()) as u64;
        stats.queue_locations = self.queued_updates.load(Ordering::Relaxed);
        stats.rider_streams = self.rider_streams.load(Ordering::Relaxed);
        stats.trip_watchers = self.changes.receiver_count() as u64;
        Ok(stats)
    }

    /// Every trip change from now on (see `AdminService.WatchTrips`).
    pub fn watch_trips(&self) -> broadcast::Receiver<pb::Trip> {
        self.changes.subscribe()
    }

    /// Counts a rider stream until the guard is dropped.
    pub fn rider_stream(&self) -> RiderStreamGuard {
        self.rider_streams.fetch_add(1, Ordering::Relaxed);
        RiderStreamGuard(self.rider_streams.clone())
    }
}
