//! The one task that owns the [`Engine`].
//!
//! Handlers send [`Command`]s through a bounded channel; the task takes them
//! in batches, runs each against the engine with the current time, carries
//! out the effects (events to sessions, trips to riders), then answers the
//! caller. One owner means no lock around the index or the trips and no two
//! requests can ever win the same driver: they are simply taken in turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dispatch_core::engine::{
    DriverHello, Effect, FleetDriverUpdate, NearbyDriver, NearbyQuery, Ping, RideRequest, SessionEnd,
};
use dispatch_core::ids::{DriverId, FleetId, OfferId, SessionId, TripId};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_core::{Engine, EngineError};
use dispatch_proto::pb;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::outbox::{Outbox, SendError};
use crate::status::{engine_code, engine_status, rejected};

/// What a handler asks of the engine.
pub enum Command {
    /// A driver's app said hello on a new stream.
    DriverHello { session: SessionId, hello: DriverHello, outbox: Outbox },
    /// A fleet gateway said hello on a new stream.
    FleetHello { session: SessionId, fleet: FleetId, outbox: Outbox },
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
    /// A stream ended.
    SessionClosed { session: SessionId },
    /// A rider asks for a ride (or re-attaches to one with the same key).
    RequestRide {
        request: RideRequest,
        watcher: mpsc::Sender<Result<pb::Trip, Status>>,
        received: Instant,
        reply: oneshot::Sender<Trip>,
    },
    /// A rider cancels.
    CancelRide { trip: TripId, reason: String, reply: oneshot::Sender<Result<Trip, EngineError>> },
    /// An operator's nearby query.
    Nearby { query: NearbyQuery, reply: oneshot::Sender<Vec<NearbyDriver>> },
    /// An operator's stats query.
    Stats { reply: oneshot::Sender<pb::Stats> },
    /// End every stream with `UNAVAILABLE` and stop.
    Shutdown,
}

impl Command {
    /// Location updates: many, cheap to lose (the next comes in a second),
    /// so they travel apart from everything else and may be shed.
    fn is_bulk(&self) -> bool {
        matches!(self, Command::Ping { .. } | Command::FleetBatch { .. })
    }

    /// How many location updates the command carries.
    fn updates(&self) -> u64 {
        match self {
            Command::Ping { .. } => 1,
            Command::FleetBatch { updates, .. } => updates.len() as u64,
            _ => 0,
        }
    }
}

/// How handlers reach the engine task. Cheap to clone.
///
/// Two queues: rides, offer replies, progress, hellos and operator calls go
/// through `urgent`, which the engine task always empties first; location
/// updates go through `bulk`, taken one command at a time between urgent
/// ones. So a ride request never waits behind a second of queued pings, and
/// when the engine cannot keep up it is the pings that are shed.
#[derive(Clone)]
pub struct EngineHandle {
    urgent: mpsc::Sender<Command>,
    bulk: mpsc::Sender<Command>,
    /// Location updates dropped because too many were queued.
    shed: Arc<AtomicU64>,
    /// Location updates queued and not yet applied: the real bound on the
    /// bulk queue, since one fleet batch carries up to 10,000.
    queued_updates: Arc<AtomicU64>,
    max_queued_updates: u64,
    next_session: Arc<AtomicU64>,
    /// The latest state of every trip the engine still keeps, for `GetTrip`:
    /// a `DashMap` so many readers never queue behind the engine's commands
    /// (or each other); only the engine task writes, right after each change
    /// and before it answers anyone, so a reply is never newer than this.
    trips: Arc<DashMap<TripId, pb::Trip>>,
}

impl EngineHandle {
    /// Queues a command: location updates without waiting (they are shed,
    /// and `Ok(false)` returned, when the engine is behind); anything else
    /// waiting while the queue is full.
    pub async fn send(&self, command: Command) -> Result<bool, Status> {
        let closed = || Status::unavailable("the server is shutting down");
        if !command.is_bulk() {
            return self.urgent.send(command).await.map(|()| true).map_err(|_| closed());
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

    /// The latest state of a trip.
    pub fn trip(&self, id: TripId) -> Option<pb::Trip> {
        self.trips.get(&id).map(|t| t.clone())
    }
}

/// Starts the engine task on a thread of its own (with its own
/// single-threaded runtime for timers), so the engine is never queued
/// behind stream decoding on a shared worker. It ends after
/// [`Command::Shutdown`] or when every handle is dropped; the receiver
/// resolves then.
pub fn spawn(config: &ServerConfig) -> std::io::Result<(EngineHandle, oneshot::Receiver<()>)> {
    let (urgent, urgent_rx) = mpsc::channel(config.command_queue.max(1));
    // Bounded by `max_queued_updates`, counted in updates; the channel's
    // own bound (in commands) only backs that up.
    let (bulk, bulk_rx) = mpsc::channel(config.max_queued_updates.max(1));
    let trips = Arc::new(DashMap::new());
    let shed = Arc::new(AtomicU64::new(0));
    let queued_updates = Arc::new(AtomicU64::new(0));
    let handle = EngineHandle {
        urgent,
        bulk,
        shed: shed.clone(),
        queued_updates: queued_updates.clone(),
        max_queued_updates: config.max_queued_updates as u64,
        next_session: Arc::new(AtomicU64::new(1)),
        trips: trips.clone(),
    };
    let task = EngineTask {
        engine: Engine::new(config.engine.clone()),
        clock: Clock::new(),
        sessions: HashMap::new(),
        watchers: HashMap::new(),
        trips,
        awaiting_first_offer: HashMap::new(),
        match_latency: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
        shed,
        queued_updates,
    };
    let (done, stopped) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    std::thread::Builder::new().name("dispatch-engine".into()).spawn(move || {
        runtime.block_on(task.run(urgent_rx, bulk_rx));
        let _ = done.send(());
    })?;
    Ok((handle, stopped))
}

/// Unix milliseconds from a monotonic clock: wall time read once at start,
/// then tokio's `Instant`, so offer expiries never jump with the wall clock
/// (and follow tokio's paused clock in tests).
struct Clock {
    start: Instant,
    start_unix_ms: i64,
}

impl Clock {
    fn new() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { start: Instant::now(), start_unix_ms: i64::try_from(unix.as_millis()).unwrap_or(i64::MAX) }
    }

    fn now(&self) -> Timestamp {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.start_unix_ms.saturating_add(elapsed))
    }

    fn instant(&self, at: Timestamp) -> Instant {
        let ms = u64::try_from(at.since(Timestamp(self.start_unix_ms))).unwrap_or(0);
        self.start + std::time::Duration::from_millis(ms)
    }
}

struct EngineTask {
    engine: Engine,
    clock: Clock,
    /// Open driver and fleet streams. Only this task touches it, so a plain
    /// map: no other task needs to find a session.
    sessions: HashMap<SessionId, SessionEntry>,
    /// Rider streams following each trip.
    watchers: HashMap<TripId, Vec<mpsc::Sender<Result<pb::Trip, Status>>>>,
    trips: Arc<DashMap<TripId, pb::Trip>>,
    awaiting_first_offer: HashMap<TripId, Instant>,
    match_latency: Option<Histogram<u64>>,
    shed: Arc<AtomicU64>,
    queued_updates: Arc<AtomicU64>,
}

struct SessionEntry {
    outbox: Outbox,
    /// The driver or fleet, for log lines.
    name: String,
}

/// The most urgent commands taken before the engine ticks again.
const URGENT_BATCH: usize = 512;

impl EngineTask {
    async fn run(mut self, mut urgent: mpsc::Receiver<Command>, mut bulk: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(URGENT_BATCH);
        loop {
            // Everything urgent that is waiting, then one bulk command, then
            // a tick; wait only when both queues are empty.
            let mut took = false;
            while batch.len() < URGENT_BATCH
                && let Ok(command) = urgent.try_recv()
            {
                batch.push(command);
            }
            for command in batch.drain(..) {
                took = true;
                if matches!(command, Command::Shutdown) {
                    self.shutdown();
                    return;
                }
                self.handle(command);
            }
            if let Ok(command) = bulk.try_recv() {
                took = true;
                self.handle(command);
            }
            if !took {
                let deadline = self.engine.next_deadline().map(|at| self.clock.instant(at));
                tokio::select! {
                    biased;
                    command = urgent.recv() => match command {
                        Some(command) => batch.push(command),
                        None => break,
                    },
                    Some(command) = bulk.recv() => self.handle(command),
                    () = sleep_until(deadline) => {}
                }
            }
            self.engine.tick(self.clock.now());
            self.carry_out();
        }
        self.shutdown();
    }

    fn handle(&mut self, command: Command) {
        let now = self.clock.now();
        let updates = command.updates();
        if updates > 0 {
            self.queued_updates.fetch_sub(updates, Ordering::Relaxed);
        }
        match command {
            Command::DriverHello { session, hello, outbox } => {
                let driver = hello.driver.clone();
                match self.engine.connect_driver(now, session, hello) {
                    Ok(current) => {
                        let started = pb::SessionStarted {
                            driver_id: driver.to_string(),
                            server_time_ms: now.0,
                            current_trip: current.as_ref().map(Into::into),
                            fleet_id: String::new(),
                        };
                        self.open_session(session, outbox, driver.to_string(), started);
                        debug!(%driver, %session, "driver session started");
                    }
                    Err(err) => outbox.end(engine_status(&err)),
                }
            }
            Command::FleetHello { session, fleet, outbox } => {
                let trips = self.engine.connect_fleet(session, fleet.clone());
                let started = pb::SessionStarted {
                    driver_id: String::new(),
                    server_time_ms: now.0,
                    current_trip: None,
                    fleet_id: fleet.to_string(),
                };
                self.open_session(session, outbox, format!("fleet {fleet}"), started);
                for trip in &trips {
                    self.send_event(session, pb::DriverEvent { kind: Some(pb::driver_event::Kind::Trip(trip.into())) });
                }
                debug!(%fleet, %session, "fleet session started");
            }
            Command::Ping { session, ping } => {
                let result = self.engine.ping(now, session, ping);
                self.reject_on_error(session, "", result);
            }
            Command::Availability { session, available } => {
                let result = self.engine.set_availability(now, session, available);
                self.reject_on_error(session, "", result);
            }
            Command::FleetBatch { session, updates } => {
                for update in updates {
                    let driver = update.driver.clone();
                    let result = self.engine.fleet_update(now, session, update);
                    if result.is_err() {
                        self.reject_on_error(session, driver.as_str(), result);
                    }
                }
            }
            Command::OfferReply { session, offer, accept } => {
                let result = self.engine.offer_reply(now, session, offer, accept);
                self.reject_on_error(session, "", result);
            }
            Command::Progress { session, driver, trip, status } => {
                let result = self.engine.trip_progress(now, session, driver.as_ref(), trip, status);
                self.reject_on_error(session, driver.as_ref().map_or("", |d| d.as_str()), result);
            }
            Command::SessionClosed { session } => {
                self.sessions.remove(&session);
                self.engine.close_session(now, session);
            }
            Command::RequestRide { request, watcher, received, reply } => {
                let (trip, created) = self.engine.request_ride(now, request);
                if created {
                    self.awaiting_first_offer.insert(trip.id, received);
                    // The engine's effects open the stream with SEARCHING.
                    self.watchers.entry(trip.id).or_default().push(watcher);
                } else {
                    // A retry: the stream starts from where the trip is now.
                    let snapshot = pb::Trip::from(&trip);
                    if watcher.try_send(Ok(snapshot)).is_ok() && !trip.status.is_terminal() {
                        self.watchers.entry(trip.id).or_default().push(watcher);
                    }
                }
                self.carry_out();
                let _ = reply.send(trip);
                return;
            }
            Command::CancelRide { trip, reason, reply } => {
                let result = self.engine.cancel_ride(now, trip, &reason);
                self.carry_out();
                let _ = reply.send(result);
                return;
            }
            Command::Nearby { query, reply } => {
                let _ = reply.send(self.engine.nearby(&query));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown => {}
        }
        self.carry_out();
    }

    fn open_session(&mut self, session: SessionId, outbox: Outbox, name: String, started: pb::SessionStarted) {
        self.sessions.insert(session, SessionEntry { outbox, name });
        self.send_event(session, pb::DriverEvent { kind: Some(pb::driver_event::Kind::SessionStarted(started)) });
    }

    fn reject_on_error(&mut self, session: SessionId, driver: &str, result: Result<(), EngineError>) {
        if let Err(err) = result {
            debug!(%session, driver, cause = %err, "message rejected");
            self.send_event(session, rejected(engine_code(&err), err.to_string(), driver));
        }
    }

    /// Carries out everything the engine produced, including what ending a
    /// slow session produces in turn.
    fn carry_out(&mut self) {
        loop {
            let effects: Vec<Effect> = self.engine.drain_effects().collect();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Driver { session, event } => self.send_event(session, (&event).into()),
                    Effect::Rider(trip) => self.publish_trip(&trip),
                    Effect::FirstOffer(trip) => {
                        if let Some(received) = self.awaiting_first_offer.remove(&trip) {
                            let micros = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX);
                            if let Some(histogram) = &mut self.match_latency {
                                histogram.saturating_record(micros.max(1));
                            }
                        }
                    }
                    Effect::EndSession { session, reason: SessionEnd::Replaced } => {
                        if let Some(entry) = self.sessions.remove(&session) {
                            info!(session = %session, who = %entry.name, "session replaced by a newer one");
                            entry.outbox.end(Status::aborted("a newer session took over"));
                        }
                    }
                    Effect::TripForgotten(trip) => {
                        self.trips.remove(&trip);
                    }
                }
            }
        }
    }

    fn send_event(&mut self, session: SessionId, event: pb::DriverEvent) {
        let Some(entry) = self.sessions.get(&session) else { return };
        match entry.outbox.try_send(event) {
            Ok(()) => {}
            Err(SendError::Closed) => {
                // The reader task reports the close; nothing to do twice.
            }
            Err(SendError::Full) => {
                warn!(%session, who = %entry.name, "session fell too far behind; ending it");
                entry.outbox.end(Status::resource_exhausted("too many unread events; reconnect"));
                self.sessions.remove(&session);
                self.engine.close_session(self.clock.now(), session);
            }
        }
    }

    fn publish_trip(&mut self, trip: &Trip) {
        let snapshot = pb::Trip::from(trip);
        self.trips.insert(trip.id, snapshot.clone());
        let terminal = trip.status.is_terminal();
        if terminal {
            self.awaiting_first_offer.remove(&trip.id);
        }
        let Some(watchers) = self.watchers.get_mut(&trip.id) else { return };
        // A rider who stopped reading loses the stream (and may re-attach
        // with the same request id); the trip goes on.
        watchers.retain(|w| w.try_send(Ok(snapshot.clone())).is_ok());
        if terminal || watchers.is_empty() {
            // Dropping the senders ends the streams after the last update.
            self.watchers.remove(&trip.id);
        }
    }

    fn stats(&self) -> pb::Stats {
        let mut stats = pb::Stats::from(&self.engine.stats());
        if let Some(h) = &self.match_latency {
            stats.match_latency_p50_us = h.value_at_quantile(0.5);
            stats.match_latency_p99_us = h.value_at_quantile(0.99);
        }
        stats.uptime_s = self.clock.start.elapsed().as_secs();
        stats.location_updates_shed = self.shed.load(Ordering::Relaxed);
        stats
    }

    fn shutdown(&mut self) {
        info!(sessions = self.sessions.len(), riders = self.watchers.len(), "ending every stream for shutdown");
        for (_, entry) in self.sessions.drain() {
            entry.outbox.end(Status::unavailable("the server is shutting down"));
        }
        for (_, watchers) in self.watchers.drain() {
            for w in watchers {
                let _ = w.try_send(Err(Status::new(Code::Unavailable, "the server is shutting down")));
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
