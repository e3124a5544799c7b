//! The one task that owns the [`Engine`].
//!
//! Handlers send [`Command`]s through two bounded queues ([`EngineHandle`]:
//! urgent commands, and location updates that may be shed). The task, on a
//! thread of its own, empties the urgent queue first and takes location
//! updates one command at a time between, each only after the urgent
//! commands queued before it (a session's hello before its first location
//! update, whichever queue the task looked at last); it runs each command
//! against the engine with the current time ([`clock`]), ticks the engine,
//! and hands the round's effects in order to the commit stage, which logs
//! what must be durable, and then to the delivery stage, which tells
//! people; drivers' positions on trips, soft state, go to the delivery
//! stage straight. One owner means no lock around the index or the trips
//! and no two requests can ever win the same driver: they are simply taken
//! in turn.
//!
//! Files: `command` (what handlers ask), `handle` (the queues and
//! shedding), `round` (what a round hands over), `spawn` (recovery from the
//! trip log and start-up), `clock`, and here the loop.

mod clock;
mod command;
mod handle;
mod round;
mod shards;
mod spawn;

pub use command::Command;
pub use handle::EngineHandle;
pub use round::{Delivery, Gates, Mailbox, Move, Round, Started};
pub use shards::{Mail, Routes, Speaker};
pub use spawn::{OpenedLog, Spawned, spawn};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use dispatch_core::engine::{Effect, FleetDriverUpdate, RideTaken, SessionEnd, SessionStart};
use dispatch_core::ids::SessionId;
use dispatch_core::territory::Shard;
use dispatch_core::{Engine, EngineError};
use dispatch_proto::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info};

use crate::deliver::Input;
use crate::latency::Marks;
use crate::status::engine_status;
use crate::streams::SessionSender;
use clock::Clock;

struct EngineTask {
    engine: Engine,
    /// Which shard of the map the engine holds (0 of 1 without shards).
    shard: Shard,
    /// With several shards: the routes between them, this shard's mail,
    /// and the gathers waiting for answers (see `shards`).
    routes: Option<Arc<Routes>>,
    inbox: Option<mpsc::UnboundedReceiver<Mail>>,
    gathering: shards::Tally,
    /// Drivers this engine gave up, and to which shard, until the new
    /// holder names itself in the directory (see `shards`).
    given: std::collections::HashMap<dispatch_core::ids::DriverId, Shard>,
    given_kept: usize,
    clock: Clock,
    /// What this round produced, for the commit stage.
    round: Round,
    rounds: std_mpsc::SyncSender<Round>,
    /// Drivers' positions on trips not handed over yet: they go to the
    /// delivery stage straight, through `mailbox`, with a wake-up on
    /// `deliver`.
    moves: Vec<Move>,
    mailbox: Arc<Mailbox>,
    deliver: std_mpsc::SyncSender<Input>,
    /// What each move must wait for.
    gates: Gates,
    /// How many deliveries the delivery stage has carried out.
    delivered: Arc<AtomicU64>,
    /// Sessions the delivery stage ended for falling behind.
    cut_off: mpsc::UnboundedReceiver<SessionId>,
    queued_updates: Arc<AtomicU64>,
    max_sessions: usize,
    /// The rest of a fleet batch being applied a slice at a time.
    fleet_batch: Option<(SessionId, std::vec::IntoIter<FleetDriverUpdate>)>,
    /// When the last round was handed over.
    last_flush: Instant,
    /// Times rounds that did some work.
    round_seconds: metrics::Histogram,
}

/// The most urgent commands taken before the engine ticks again.
const URGENT_BATCH: usize = 512;

/// How long position refreshes alone may wait to go out together with
/// what comes next: each round handed over wakes the commit and delivery
/// stages, and a slice of a fleet batch makes one every ~100 µs.
const SOFT_FLUSH_EVERY: Duration = Duration::from_millis(1);

/// The most location updates of one fleet batch applied before the urgent
/// queue is looked at again: a batch of 1,000 takes the engine a
/// millisecond or more, which a ride request should not wait behind.
const FLEET_SLICE: usize = 64;

impl EngineTask {
    async fn run(mut self, mut urgent: mpsc::Receiver<Command>, mut bulk: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(URGENT_BATCH);
        loop {
            // Everything urgent that is waiting, then one bulk command, then
            // a tick; wait only when both queues are empty.
            let mut took = false;
            let started = Instant::now();
            self.take_mail();
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
            if self.fleet_batch.is_some() {
                took = true;
                self.apply_fleet_slice();
            } else if let Ok(command) = bulk.try_recv() {
                took = true;
                if !self.urgent_before(&mut urgent) {
                    return;
                }
                self.handle(command);
            }
            if took {
                crate::meters::seconds(&self.round_seconds, started.elapsed());
            } else {
                // Nothing more to do: whatever waits goes out now.
                self.flush();
                let deadline = self.engine.next_deadline().map(|at| self.clock.instant(at));
                tokio::select! {
                    biased;
                    command = urgent.recv() => match command {
                        Some(command) => commands.push(command),
                        None => break,
                    },
                    Some(session) = self.cut_off.recv() => self.engine.close_session(self.clock.now(), session),
                    Some(mail) = shards::next_mail(&mut self.inbox) => self.on_mail(mail),
                    Some(command) = bulk.recv() => {
                        if !self.urgent_before(&mut urgent) {
                            return;
                        }
                        self.handle(command);
                    }
                    () = sleep_until(deadline) => {}
                }
            }
            self.engine.tick(self.clock.now());
            self.carry_out();
            self.flush_soon();
        }
        self.shutdown();
    }

    /// Handles what is in the urgent queue now, before a bulk command
    /// just taken: a client queues its urgent command first (a session's
    /// hello before its first location update), so everything it queued
    /// before the bulk command is in the urgent queue by the time the bulk
    /// command is taken, and goes first. `false` after a shutdown.
    fn urgent_before(&mut self, urgent: &mut mpsc::Receiver<Command>) -> bool {
        for _ in 0..urgent.len() {
            let Ok(command) = urgent.try_recv() else { break };
            if matches!(command, Command::Shutdown) {
                self.shutdown();
                return false;
            }
            self.handle(command);
        }
        true
    }

    fn handle(&mut self, command: Command) {
        // Mail first: a driver handed over to this shard is adopted before
        // a command about it.
        self.take_mail();
        self.handle_here(command);
    }

    /// The driver a command is about, if it must be held here, and whether
    /// the command may bring it in (see `shards`).
    fn driver_of(&self, command: &Command) -> Option<(dispatch_core::ids::DriverId, bool)> {
        let routes = self.routes.as_ref()?;
        match command {
            Command::DriverHello { hello, .. } => Some((hello.driver.clone(), true)),
            Command::Ping { session, .. } | Command::Availability { session, .. } => {
                routes.driver_of(*session).map(|d| (d, false))
            }
            Command::SessionClosed { driver: Some(driver), .. } | Command::MapDriver { driver, .. } => {
                Some((driver.clone(), false))
            }
            _ => None,
        }
    }

    fn handle_here(&mut self, command: Command) {
        // What came before (a session cut off between commands) goes out
        // first, so the command's own deliveries follow it in order.
        self.carry_out();
        let now = self.clock.now();
        let about = self.driver_of(&command);
        if let Some((driver, creates)) = &about
            && let Some(holder) = self.elsewhere(driver, *creates)
        {
            self.forward(holder, command);
            return;
        }
        if let Command::Ping { .. } = command {
            self.queued_updates.fetch_sub(1, Ordering::Relaxed);
        }
        match command {
            Command::DriverHello { session, hello, sender } => {
                if self.engine.session_count() >= self.max_sessions {
                    sender.end(Status::resource_exhausted("too many open sessions; retry later"));
                    self.tidy(&hello.driver);
                    return;
                }
                let name = hello.driver.to_string();
                let driver = hello.driver.clone();
                match self.engine.connect_driver(now, session, hello) {
                    Ok(start) => self.open(session, sender, name, start),
                    Err(err) => {
                        sender.end(engine_status(&err));
                        self.tidy(&driver);
                    }
                }
            }
            Command::FleetJoin { session, fleet, reply } => {
                // Another shard answers the hello; this one only opens the
                // session for the fleet's drivers that come here.
                self.engine.connect_fleet(session, fleet);
                let _ = reply.send(());
            }
            Command::FleetHello { session, fleet, sender } => {
                if self.engine.session_count() >= self.max_sessions {
                    sender.end(Status::resource_exhausted("too many open sessions; retry later"));
                    return;
                }
                let name = format!("fleet {fleet}");
                let start = self.engine.connect_fleet(session, fleet);
                self.open(session, sender, name, start);
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
                // An update forwarded from another shard may come while a
                // batch is under way here: it is applied at once, whole.
                let under_way = self.fleet_batch.take();
                self.fleet_batch = Some((session, updates.into_iter()));
                self.apply_fleet_slice();
                if under_way.is_some() {
                    while self.fleet_batch.is_some() {
                        self.apply_fleet_slice();
                    }
                    self.fleet_batch = under_way;
                }
            }
            Command::OfferReply { session, offer, accept } => {
                let result = self.engine.offer_reply(now, session, offer, accept);
                let result = result.map_err(|e| self.not_here(session, e, EngineError::UnknownOffer(offer)));
                self.reject_on_error(session, "", result);
            }
            Command::Progress { session, driver, trip, status } => {
                let result = self.engine.trip_progress(now, session, driver.as_ref(), trip, status);
                let result = result.map_err(|e| self.not_here(session, e, EngineError::NotDriversTrip(trip)));
                self.reject_on_error(session, driver.as_ref().map_or("", |d| d.as_str()), result);
            }
            Command::SessionClosed { session, .. } => {
                self.engine.close_session(now, session);
                self.carry_out();
                self.hand(Delivery::Closed(session));
            }
            Command::RequestRide { request, rider, received, reply } => {
                let marks = Marks { received, taken: Instant::now() };
                let RideTaken { trip, created } = self.engine.request_ride(now, request);
                // The rider's stream is attached before anything the request
                // made is delivered. The stream of a new trip opens with the
                // engine's own SEARCHING update; a retry starts from where
                // the trip is.
                let (resume, marks) = if created { (None, Some(marks)) } else { (Some(trip.clone()), None) };
                self.hand(Delivery::Watch { trip: trip.id, rider, resume, marks });
                self.carry_out();
                // The caller hears of the trip after everything the request
                // made (its first record above all).
                self.hand(Delivery::Reply(Box::new(move || {
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
                self.hand(Delivery::Reply(Box::new(move || {
                    let _ = reply.send(result);
                })));
                return;
            }
            Command::Trip { trip, reply } => {
                let trip = self.engine.trip(trip);
                self.hand(Delivery::Reply(Box::new(move || {
                    let _ = reply.send(trip.as_ref().map(pb::Trip::from));
                })));
                return;
            }
            Command::Nearby { query, reply } => {
                // Positions are soft state: nothing to wait for.
                let _ = reply.send(self.engine.nearby(&query));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.engine.stats());
            }
            Command::Map { query, reply } => {
                let _ = reply.send(self.engine.map_view(&query));
            }
            Command::MapDriver { driver, reply } => {
                let _ = reply.send(self.engine.map_driver(&driver));
            }
            Command::Shutdown => {}
        }
        self.carry_out();
    }

    /// Applies the next slice of the fleet batch under way.
    fn apply_fleet_slice(&mut self) {
        let Some((session, mut updates)) = self.fleet_batch.take() else { return };
        let now = self.clock.now();
        let mut applied = 0;
        for update in updates.by_ref().take(FLEET_SLICE) {
            if let Some(holder) = self.elsewhere(&update.driver, true) {
                // Still counted as queued, until the holder applies it.
                self.forward(holder, Command::FleetBatch { session, updates: vec![update] });
                continue;
            }
            applied += 1;
            let driver = update.driver.clone();
            let result = self.engine.fleet_update(now, session, update);
            if result.is_err() {
                self.reject_on_error(session, driver.as_str(), result);
                self.tidy(&driver);
            }
        }
        self.queued_updates.fetch_sub(applied, Ordering::Relaxed);
        if updates.len() > 0 {
            self.fleet_batch = Some((session, updates));
        }
        self.carry_out();
    }

    fn reject_on_error(&mut self, session: SessionId, driver: &str, result: Result<(), EngineError>) {
        if let Err(error) = result {
            debug!(%session, driver, cause = %error, "message rejected");
            self.hand(Delivery::Rejected { session, error, driver: driver.to_owned() });
        }
    }

    /// Opens a session that started: its sender is remembered, and its
    /// first event sent, before anything the same command emitted for it.
    fn open(&mut self, session: SessionId, sender: SessionSender, name: String, start: SessionStart) {
        debug!(who = %name, %session, "session started");
        let SessionStart { driver, fleet, current_trip } = start;
        let started = Started { driver, fleet, now: self.clock.now(), current_trip };
        self.hand(Delivery::Open { session, sender, name, started });
    }

    /// Adds a delivery to this round.
    fn hand(&mut self, delivery: Delivery) {
        self.gates.handed(&delivery);
        self.round.deliveries.push(delivery);
    }

    /// Moves what the engine produced into this round, in order:
    /// the one place the core's output becomes the shell's.
    fn carry_out(&mut self) {
        loop {
            self.carry_effects();
            if !self.send_mail() {
                return;
            }
        }
    }

    fn carry_effects(&mut self) {
        let Self { engine, round, gates, moves, .. } = self;
        for effect in engine.drain_effects() {
            let delivery = match effect {
                Effect::Persist(record) => {
                    round.records.push(record);
                    continue;
                }
                Effect::Driver { session, event } => Delivery::Driver { session, event },
                Effect::Rider(trip) => Delivery::Rider(trip),
                Effect::DriverMoved { trip, position, at, pickup_eta_ms } => {
                    moves.push(gates.gate(trip, position, at, pickup_eta_ms));
                    continue;
                }
                Effect::FirstOffer { trip, across } => Delivery::FirstOffer { trip, across },
                Effect::TripForgotten(trip) => Delivery::Forget(trip),
                Effect::EndSession { session, reason: SessionEnd::Replaced } => {
                    Delivery::End { session, status: Status::aborted("a newer session took over") }
                }
            };
            gates.handed(&delivery);
            round.deliveries.push(delivery);
        }
    }

    /// Hands this round over if anything in it is more than a rejection
    /// of a location update, or the last hand-over was `SOFT_FLUSH_EVERY`
    /// ago; else it goes with the next. Positions wait the same way.
    fn flush_soon(&mut self) {
        let soft = |delivery: &Delivery| matches!(delivery, Delivery::Rejected { .. });
        let urgent = !self.round.records.is_empty() || !self.round.deliveries.iter().all(soft);
        if urgent || self.last_flush.elapsed() >= SOFT_FLUSH_EVERY {
            self.flush();
        }
    }

    /// Hands the positions to the delivery stage and this round to the
    /// commit stage, in that order: the delivery stage empties the mailbox
    /// before each group it delivers, so it sees a position before any
    /// later round, and a snapshot delivered after a position is always
    /// newer. Posting never waits; the round waits while the commit
    /// stage's queue is full (if the disk cannot keep up, the engine
    /// waits, its queues fill, and callers are refused).
    fn flush(&mut self) {
        if self.round.is_empty() && self.moves.is_empty() {
            return;
        }
        let now = Instant::now();
        self.last_flush = now;
        // A send fails only once the stage has stopped, when nothing can be
        // delivered.
        if !self.moves.is_empty() {
            self.gates.prune(self.delivered.load(Ordering::Relaxed));
            if self.mailbox.post(&mut self.moves) && self.deliver.try_send(Input::Moved).is_err() {
                // A full queue holds groups, before each of which the stage
                // empties the mailbox anyway; a later post wakes it.
                self.mailbox.woke();
            }
        }
        if !self.round.is_empty() {
            self.round.flushed = Some(now);
            let _ = self.rounds.send(std::mem::take(&mut self.round));
        }
    }

    fn shutdown(&mut self) {
        info!("engine stopping: ending every stream");
        self.carry_out();
        self.hand(Delivery::Shutdown);
        self.flush();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
