//! The one task that owns the [`Engine`].
//!
//! Handlers send [`Command`]s through a bounded channel; the task takes them
//! in batches, runs each against the engine with the current time, carries
//! out the effects (events to sessions, trips to riders), then answers the
//! caller. One owner means no lock around the index or the trips and no two
//! requests can ever win the same driver: they are simply taken in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use dashmap::DashMap;
use dispatch_core::engine::{
    DriverHello, Effect, FleetDriverUpdate, Nearby, NearbyQuery, Ping, RideRequest, SessionEnd,
};
use dispatch_core::ids::{DriverId, FleetId, OfferId, RiderId, SessionId, TripId};
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_core::{Engine, EngineError};
use dispatch_proto::pb;
use dispatch_store::TripLog;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::ServerError;
use crate::config::ServerConfig;
use crate::outbound::{Batch, MatchLatency, Out, Outbound};
use crate::outbox::Outbox;
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
    Stats { reply: oneshot::Sender<pb::Stats> },
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

    /// The latest state of a trip.
    pub fn trip(&self, id: TripId) -> Option<pb::Trip> {
        self.trips.get(&id).map(|t| t.clone())
    }
}

/// Offer ids of one boot start at `boot * OFFER_IDS_PER_BOOT`, so a reply to
/// an offer from before a restart never matches a new one.
const OFFER_IDS_PER_BOOT: u64 = 1_000_000_000_000;

/// What `run` gets back from [`spawn`].
pub struct Spawned {
    /// How handlers reach the engine.
    pub handle: EngineHandle,
    /// Resolves once the engine and the outbound stage have stopped and the
    /// log is closed.
    pub stopped: oneshot::Receiver<()>,
    /// Becomes `Some(cause)` if the trip log fails.
    pub fatal: watch::Receiver<Option<String>>,
}

/// Opens the trip log and rebuilds the engine from it, then starts the
/// engine task on a thread of its own (with its own single-threaded
/// runtime for timers, so the engine is never queued behind stream decoding
/// on a shared worker) and the outbound stage on another. They end after
/// [`Command::Shutdown`] or when every handle is dropped.
pub fn spawn(config: &ServerConfig) -> Result<Spawned, ServerError> {
    let (urgent, urgent_rx) = mpsc::channel(config.command_queue.max(1));
    // Bounded by `max_queued_updates`, counted in updates; the channel's
    // own bound (in commands) only backs that up.
    let (bulk, bulk_rx) = mpsc::channel(config.max_queued_updates.max(1));
    let trips = Arc::new(DashMap::new());
    let shed = Arc::new(AtomicU64::new(0));
    let queued_updates = Arc::new(AtomicU64::new(0));
    let clock = Clock::new();
    let (log, engine) = match &config.trip_log {
        Some(settings) => {
            let (mut log, recovered) = TripLog::open(&settings.dir, settings.fsync, settings.compact_after_bytes)
                .map_err(ServerError::TripLog)?;
            let first_offer = recovered.boot.saturating_mul(OFFER_IDS_PER_BOOT).saturating_add(1);
            let records = recovered.records.len();
            let engine = Engine::restore(
                config.engine.clone(),
                clock.now(),
                recovered.records,
                recovered.next_trip,
                first_offer,
            );
            log.retain(|id| engine.trip(id).is_some());
            for trip in engine.trips() {
                trips.insert(trip.id, pb::Trip::from(trip));
            }
            let stats = engine.stats();
            info!(
                records,
                searching = stats.trips_searching,
                with_driver = stats.trips_active,
                kept = trips.len(),
                "trips recovered from the log"
            );
            (Some(log), engine)
        }
        None => {
            warn!("no trip log: trips will not survive a restart");
            (None, Engine::new(config.engine.clone()))
        }
    };
    let handle = EngineHandle {
        urgent,
        bulk,
        shed: shed.clone(),
        queued_updates: queued_updates.clone(),
        max_queued_updates: config.max_queued_updates as u64,
        next_session: Arc::new(AtomicU64::new(1)),
        trips: trips.clone(),
    };
    let (cut_off, cut_off_rx) = mpsc::unbounded_channel();
    let (fatal_tx, fatal) = watch::channel(None);
    let match_latency = crate::outbound::match_latency();
    let outbound = Outbound::new(
        log,
        trips,
        match_latency.clone(),
        cut_off,
        fatal_tx,
        config.offer_hides_dropoff,
        config.drivers_see_rider_id,
    );
    // Bounded: if the disk cannot keep up, the engine waits for it, its
    // queues fill, and callers are refused instead of memory growing.
    let (batches, batches_rx) = std_mpsc::sync_channel(config.outbound_queue.max(1));
    let outbound = std::thread::Builder::new()
        .name("dispatch-outbound".into())
        .spawn(move || outbound.run(batches_rx))
        .map_err(ServerError::Thread)?;
    let mut task = EngineTask {
        engine,
        clock,
        batch: Batch::default(),
        batches,
        cut_off: cut_off_rx,
        match_latency,
        shed,
        queued_updates,
        max_sessions: config.max_sessions,
    };
    // What the restore changed (searches that ran out while the server was
    // down) is logged like any other change.
    task.carry_out();
    task.flush();
    let (done, stopped) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(ServerError::Thread)?;
    std::thread::Builder::new()
        .name("dispatch-engine".into())
        .spawn(move || {
            runtime.block_on(task.run(urgent_rx, bulk_rx));
            // The task is gone, and with it the sender: the outbound stage
            // drains what is left, commits and stops.
            let _ = outbound.join();
            let _ = done.send(());
        })
        .map_err(ServerError::Thread)?;
    Ok(Spawned { handle, stopped, fatal })
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
    /// What this round produced, for the outbound stage.
    batch: Batch,
    batches: std_mpsc::SyncSender<Batch>,
    /// Sessions the outbound stage ended for falling behind.
    cut_off: mpsc::UnboundedReceiver<SessionId>,
    match_latency: Option<MatchLatency>,
    shed: Arc<AtomicU64>,
    queued_updates: Arc<AtomicU64>,
    max_sessions: usize,
}

/// The most urgent commands taken before the engine ticks again.
const URGENT_BATCH: usize = 512;

impl EngineTask {
    async fn run(mut self, mut urgent: mpsc::Receiver<Command>, mut bulk: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(URGENT_BATCH);
        loop {
            // Everything urgent that is waiting, then one bulk command, then
            // a tick; wait only when both queues are empty.
            let mut took = false;
            while let Ok(session) = self.cut_off.try_recv() {
                took = true;
                self.engine.close_session(self.clock.now(), session);
            }
            while commands.len() < URGENT_BATCH
                && let Ok(command) = urgent.try_recv()
            {
                commands.push(command);
            }
            for command in commands.drain(..) {
                took = true;
                if matches!(command, Command::Shutdown) {
                    self.shutdown();
                    return;
                }
                self.handle(command);
            }
            if took {
                // Rides and replies go out now, not after the bulk command
                // (a fleet batch can take a millisecond).
                self.engine.tick(self.clock.now());
                self.carry_out();
                self.flush();
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
                        Some(command) => commands.push(command),
                        None => break,
                    },
                    Some(session) = self.cut_off.recv() => self.engine.close_session(self.clock.now(), session),
                    Some(command) = bulk.recv() => self.handle(command),
                    () = sleep_until(deadline) => {}
                }
            }
            self.engine.tick(self.clock.now());
            self.carry_out();
            self.flush();
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
                if self.engine.session_count() >= self.max_sessions {
                    outbox.end(Status::resource_exhausted("too many open sessions; retry later"));
                    return;
                }
                let driver = hello.driver.clone();
                match self.engine.connect_driver(now, session, hello) {
                    Ok(current) => {
                        let started = pb::SessionStarted {
                            driver_id: driver.to_string(),
                            server_time_ms: now.0,
                            current_trip: current.as_ref().map(Into::into),
                            fleet_id: String::new(),
                        };
                        // Ended sessions first: the one this hello replaced.
                        self.carry_out();
                        self.batch.outs.push(Out::Open { session, outbox, name: driver.to_string(), started });
                        debug!(%driver, %session, "driver session started");
                    }
                    Err(err) => outbox.end(engine_status(&err)),
                }
            }
            Command::FleetHello { session, fleet, outbox } => {
                if self.engine.session_count() >= self.max_sessions {
                    outbox.end(Status::resource_exhausted("too many open sessions; retry later"));
                    return;
                }
                let trips = self.engine.connect_fleet(session, fleet.clone());
                let started = pb::SessionStarted {
                    driver_id: String::new(),
                    server_time_ms: now.0,
                    current_trip: None,
                    fleet_id: fleet.to_string(),
                };
                self.carry_out();
                self.batch.outs.push(Out::Open { session, outbox, name: format!("fleet {fleet}"), started });
                for trip in &trips {
                    let event = pb::DriverEvent { kind: Some(pb::driver_event::Kind::Trip(trip.into())) };
                    self.batch.outs.push(Out::Event { session, event });
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
                self.engine.close_session(now, session);
                self.carry_out();
                self.batch.outs.push(Out::Closed(session));
            }
            Command::RequestRide { request, watcher, received, reply } => {
                let (trip, created) = self.engine.request_ride(now, request);
                // The stream of a new trip opens with the engine's own
                // SEARCHING update; a retry starts from where the trip is.
                let (resume, received) = if created { (None, Some(received)) } else { (Some(trip.clone()), None) };
                self.batch.outs.push(Out::Watch { trip: trip.id, watcher, resume, received });
                self.carry_out();
                self.batch.outs.push(Out::Reply(Box::new(move || {
                    let _ = reply.send(trip);
                })));
                return;
            }
            Command::CancelRide { trip, reason, rider, operator, reply } => {
                let foreign = rider.is_some_and(|r| self.engine.trip(trip).is_some_and(|t| t.rider != r));
                let result = if foreign {
                    Err(EngineError::UnknownTrip(trip))
                } else if operator {
                    // An operator may end any trip that has not ended.
                    self.engine.cancel_by_operator(now, trip, &reason)
                } else {
                    self.engine.cancel_ride(now, trip, &reason)
                };
                self.carry_out();
                self.batch.outs.push(Out::Reply(Box::new(move || {
                    let _ = reply.send(result);
                })));
                return;
            }
            Command::Nearby { query, reply } => {
                // Positions are soft state: nothing to wait for.
                let _ = reply.send(self.engine.nearby(&query));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown => {}
        }
        self.carry_out();
    }

    fn reject_on_error(&mut self, session: SessionId, driver: &str, result: Result<(), EngineError>) {
        if let Err(err) = result {
            debug!(%session, driver, cause = %err, "message rejected");
            let event = rejected(engine_code(&err), err.to_string(), driver);
            self.batch.outs.push(Out::Event { session, event });
        }
    }

    /// Moves what the engine produced into this round's batch, in order.
    fn carry_out(&mut self) {
        for effect in self.engine.drain_effects() {
            let out = match effect {
                Effect::Persist(record) => {
                    self.batch.records.push(record);
                    continue;
                }
                Effect::Driver { session, event } => Out::Driver { session, event },
                Effect::Rider(trip) => Out::Rider(trip),
                Effect::FirstOffer(trip) => Out::FirstOffer(trip),
                Effect::TripForgotten(trip) => Out::Forget(trip),
                Effect::EndSession { session, reason: SessionEnd::Replaced } => {
                    Out::End { session, status: Status::aborted("a newer session took over") }
                }
            };
            self.batch.outs.push(out);
        }
    }

    /// Hands this round's batch to the outbound stage.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // Fails only once the stage has stopped, when nothing can be sent.
        let _ = self.batches.send(std::mem::take(&mut self.batch));
    }

    fn stats(&self) -> pb::Stats {
        let mut stats = pb::Stats::from(&self.engine.stats());
        if let Some(h) = self.match_latency.as_ref().and_then(|h| h.lock().ok()) {
            stats.match_latency_p50_us = h.value_at_quantile(0.5);
            stats.match_latency_p99_us = h.value_at_quantile(0.99);
        }
        stats.uptime_s = self.clock.start.elapsed().as_secs();
        stats.location_updates_shed = self.shed.load(Ordering::Relaxed);
        stats
    }

    fn shutdown(&mut self) {
        info!("engine stopping: ending every stream");
        self.carry_out();
        self.batch.outs.push(Out::Shutdown);
        self.flush();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
