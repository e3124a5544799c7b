//! The delivery stage: tells people of trip changes once they are durable.
//!
//! The engine task hands over one [`Round`] per round: the trip records it
//! produced and everything it wants delivered (events to sessions, trips to
//! riders, replies to callers), in order. The commit stage
//! ([`crate::commit`]) makes the records of each group of rounds durable
//! and passes the group here; this stage, on a thread of its own, carries
//! out the rounds' deliveries in order. So nobody hears of a change the log
//! could lose, the engine goes on matching while the disk syncs, and the
//! next group syncs while this one is delivered.
//!
//! It owns the open sessions' senders and the riders' streams, since it is
//! the only one that sends to them.
//!
//! Drivers' positions on trips (about one refresh per trip under way every
//! second, soft state) come from the engine task straight, never through
//! the commit stage, and wait in [`Moves`], one per trip: each until the
//! deliveries about its trip that came before it are delivered, then while
//! no group waits (or, when groups keep coming, a few after a group every
//! [`MOVES_STARVE`]), so offers and replies do not queue behind them; a
//! stage behind sends each trip's newest position once instead of every
//! one it missed. The engine task never queues more than one wake-up for
//! positions.

mod moves;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use dashmap::DashMap;
use dispatch_core::engine::DriverEvent;
use dispatch_core::ids::{SessionId, TripId};
use dispatch_core::service::ServiceSet;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_proto::{convert, pb};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::Status;
use tracing::{info, warn};

use crate::engine_task::{Delivery, Mailbox, Round, Started};
use moves::Moves;

/// What the delivery stage is handed.
pub enum Input {
    /// Rounds whose records are durable, in the order the engine task made
    /// them, and when their commit began and ended (from the commit stage).
    Durable { rounds: Vec<Round>, commit_start: Instant, commit_end: Instant },
    /// Drivers' positions were posted to the mailbox (by the engine task).
    Moved,
    /// The log failed: nothing more will be acknowledged, and every stream
    /// is to be ended (from the commit stage).
    LogFailed,
}
use crate::latency::{GroupMarks, Latency, Marks};
use crate::meters::{self, Hot};
use crate::status::{engine_code, rejected};
use crate::streams::{RiderSender, SendError, SessionSender};

/// Positions delivered between two looks for a newer group.
const MOVES_PER_LOOK: usize = 256;

/// The longest positions wait for a turn while groups keep coming.
const MOVES_STARVE: std::time::Duration = std::time::Duration::from_millis(20);

struct SessionEntry {
    sender: SessionSender,
    /// The driver or fleet, for log lines.
    name: String,
    /// With shards: events for a session whose first event
    /// (`session_started`) has not gone out yet. Another shard may speak to
    /// a driver before the shard that opened its session has delivered
    /// that; its events wait here, in order, and follow it.
    early: Option<Vec<pb::DriverEvent>>,
}

/// The most events that wait for a session's start; past that the session
/// ends, as one that falls behind does.
const EARLY_MOST: usize = 256;

/// The open sessions' senders, shared by every shard's delivery stage (a
/// driver's events come from whichever shard holds it), and where sessions
/// cut off for falling behind are told: every shard's engine task, since
/// any may hold a driver the session speaks for.
#[derive(Clone)]
pub struct Sessions {
    open: Arc<DashMap<SessionId, SessionEntry>>,
    cut_off: Arc<[mpsc::UnboundedSender<SessionId>]>,
}

impl Sessions {
    /// No session open yet; those cut off are told to `engines`.
    pub fn new(engines: Vec<mpsc::UnboundedSender<SessionId>>) -> Self {
        Self { open: Arc::default(), cut_off: Arc::from(engines) }
    }

    fn cut_off(&self, session: SessionId) {
        for engine in self.cut_off.iter() {
            let _ = engine.send(session);
        }
    }

    /// With shards: a session whose hello is on its way to an engine.
    /// Events any shard sends it before its `session_started` has gone out
    /// wait for that.
    pub fn expect(&self, session: SessionId, sender: SessionSender) {
        self.open.insert(session, SessionEntry { sender, name: String::new(), early: Some(Vec::new()) });
    }
}

/// The stage's state; lives on its thread.
pub struct Deliverer {
    trips: Arc<DashMap<TripId, pb::Trip>>,
    latency: Option<Latency>,
    hot: Hot,
    /// Trip changes for operators watching.
    changes: broadcast::Sender<pb::Trip>,
    privacy: Privacy,
    /// The open sessions; those this stage cuts off for falling behind the
    /// engine tasks must close (an offer out to one counts as declined).
    sessions: Sessions,
    riders: HashMap<TripId, Vec<RiderSender>>,
    awaiting_first_offer: HashMap<TripId, Marks>,
    /// When the group being delivered was flushed and committed.
    group: Option<GroupMarks>,
    /// Drivers' positions not delivered yet.
    moves: Moves,
    /// Deliveries carried out so far, counted as the engine task counts
    /// those it hands over.
    delivered: u64,
    /// The same, for the engine task.
    delivered_shared: Arc<AtomicU64>,
    /// Positions from the engine task.
    mailbox: Arc<Mailbox>,
    /// When positions last had a turn, or began to wait.
    moves_turn: Instant,
}

/// What drivers are not shown.
#[derive(Debug, Clone, Copy)]
pub struct Privacy {
    /// Services whose offers leave out the dropoff.
    pub hide_dropoff: ServiceSet,
    /// Whether drivers and fleets see who the rider is (off by default).
    pub drivers_see_rider_id: bool,
}

impl Deliverer {
    /// A stage sending to sessions and riders, keeping `trips` (the open
    /// ones) as they change.
    pub fn new(
        trips: Arc<DashMap<TripId, pb::Trip>>,
        latency: Option<Latency>,
        sessions: Sessions,
        changes: broadcast::Sender<pb::Trip>,
        privacy: Privacy,
        delivered_shared: Arc<AtomicU64>,
        mailbox: Arc<Mailbox>,
    ) -> Self {
        Self {
            privacy,
            trips,
            latency,
            hot: Hot::register(),
            changes,
            sessions,
            riders: HashMap::new(),
            awaiting_first_offer: HashMap::new(),
            group: None,
            moves: Moves::default(),
            delivered: 0,
            delivered_shared,
            mailbox,
            moves_turn: Instant::now(),
        }
    }

    /// Delivers each group the commit stage made durable, in order, until
    /// the commit stage and the engine task hang up. Drivers' positions go
    /// out while nothing waits, never between a group and the next one
    /// queued (a backlog of groups drains at the speed of the groups
    /// alone), except that once they have waited [`MOVES_STARVE`] without
    /// a turn they get [`MOVES_PER_LOOK`] after a group, so a steady
    /// stream of groups cannot stop riders' cars.
    pub fn run(mut self, input: std_mpsc::Receiver<Input>) {
        loop {
            let next = if self.moves.is_empty() {
                let next = input.recv().ok();
                // No position waited until now.
                self.moves_turn = Instant::now();
                next
            } else {
                match input.try_recv() {
                    Ok(next) => Some(next),
                    Err(std_mpsc::TryRecvError::Empty) => {
                        self.deliver_moves(MOVES_PER_LOOK);
                        continue;
                    }
                    Err(std_mpsc::TryRecvError::Disconnected) => None,
                }
            };
            let Some(next) = next else { break };
            match next {
                Input::Durable { rounds, commit_start, commit_end } => {
                    self.deliver_group(rounds, commit_start, commit_end);
                    if self.moves_turn.elapsed() >= MOVES_STARVE {
                        self.deliver_moves(MOVES_PER_LOOK);
                    }
                }
                // Only filed: they go out once nothing waits.
                Input::Moved => {
                    self.mailbox.woke();
                    self.take_mail();
                }
                Input::LogFailed => self.end_everything(Status::unavailable("the server cannot write its trip log")),
            }
        }
        info!("delivery stage stopped");
    }

    /// Delivers a durable group in order; a snapshot of a trip supersedes
    /// the positions before it, and a position waiting for a delivery is
    /// ready once that is delivered.
    fn deliver_group(&mut self, rounds: Vec<Round>, commit_start: Instant, commit_end: Instant) {
        // Positions posted before these rounds were handed over come first.
        self.take_mail();
        for round in rounds {
            self.group = round.flushed.map(|flushed| GroupMarks { flushed, commit_start, commit_end });
            for delivery in round.deliveries {
                if let Delivery::Rider(Trip { id, .. }) | Delivery::Watch { trip: id, .. } | Delivery::Forget(id) =
                    &delivery
                {
                    self.moves.supersede(*id, self.delivered);
                }
                self.deliver(delivery);
                self.delivered += 1;
                self.moves.release(self.delivered);
            }
        }
        self.delivered_shared.store(self.delivered, Ordering::Relaxed);
    }

    /// Files the positions posted since the last look.
    fn take_mail(&mut self) {
        for moved in self.mailbox.take() {
            self.moves.note(moved, self.delivered);
        }
    }

    /// Delivers up to `most` waiting positions, oldest first.
    fn deliver_moves(&mut self, most: usize) {
        self.moves_turn = Instant::now();
        for _ in 0..most {
            let Some((trip, fix)) = self.moves.pop() else { return };
            self.moved(trip, fix);
        }
    }

    fn deliver(&mut self, out: Delivery) {
        match out {
            Delivery::Open { session, sender, name, started } => {
                let Started { driver, fleet, now, current_trip } = started;
                let mut first = convert::session_started(driver.as_ref(), fleet.as_ref(), now, current_trip.as_ref());
                if !self.privacy.drivers_see_rider_id {
                    hide_rider(&mut first);
                }
                // The first event, then what waited for it, under the
                // entry's lock: no shard's event can come between.
                let sent = match self.sessions.open.get_mut(&session) {
                    Some(mut entry) => {
                        entry.name = name;
                        let early = entry.early.take().unwrap_or_default();
                        std::iter::once(first).chain(early).try_for_each(|event| entry.sender.try_send(event))
                    }
                    None => {
                        let sent = sender.try_send(first);
                        self.sessions.open.insert(session, SessionEntry { sender, name, early: None });
                        sent
                    }
                };
                if let Err(error) = sent {
                    self.not_sent(session, error);
                }
            }
            Delivery::Rejected { session, error, driver } => {
                let code = engine_code(&error);
                meters::rejected(code);
                self.send(session, rejected(code, error.to_string(), &driver));
            }
            Delivery::Driver { session, mut event } => {
                // An offer shows the pickup; the dropoff only where the
                // service's policy allows (the trip shows it once accepted).
                if let DriverEvent::Offer(offer) = &mut event
                    && self.privacy.hide_dropoff.contains(offer.trip.service)
                {
                    offer.trip.dropoff = None;
                }
                self.send(session, pb::DriverEvent::from(&event));
            }
            Delivery::End { session, status } => {
                if let Some((_, entry)) = self.sessions.open.remove(&session) {
                    info!(%session, who = %entry.name, code = ?status.code(), "session ended by the server");
                    entry.sender.end(status);
                }
            }
            Delivery::Closed(session) => {
                self.sessions.open.remove(&session);
            }
            Delivery::Rider(trip) => self.publish(&trip),
            Delivery::Watch { trip, rider, resume, marks } => {
                if let Some(marks) = marks {
                    self.awaiting_first_offer.insert(trip, marks);
                }
                match resume {
                    None => self.riders.entry(trip).or_default().push(rider),
                    Some(now) => {
                        let snapshot = pb::Trip::from(&now);
                        if rider.try_send(Ok(Box::new(snapshot))).is_ok() && !now.status.is_terminal() {
                            self.riders.entry(trip).or_default().push(rider);
                        }
                    }
                }
            }
            Delivery::FirstOffer { trip, across } => {
                if let (Some(marks), Some(group), Some(latency)) =
                    (self.awaiting_first_offer.remove(&trip), self.group, &self.latency)
                {
                    latency.offer(marks, group, Instant::now(), across);
                }
            }
            Delivery::Forget(trip) => {
                self.trips.remove(&trip);
            }
            Delivery::Reply(reply) => reply(),
            Delivery::Shutdown => self.end_everything(Status::unavailable("the server is shutting down")),
        }
    }

    /// Sends to a driver's or a fleet's session. Every event for drivers
    /// passes here, so this is where the rider's id is left out of every
    /// trip they see (offers, trips, a resumed trip), unless configured.
    fn send(&mut self, session: SessionId, mut event: pb::DriverEvent) {
        if !self.privacy.drivers_see_rider_id {
            hide_rider(&mut event);
        }
        let sent = {
            let Some(mut entry) = self.sessions.open.get_mut(&session) else { return };
            match &mut entry.early {
                Some(early) if early.len() < EARLY_MOST => {
                    early.push(event);
                    Ok(())
                }
                Some(_) => Err(SendError::Full),
                None => entry.sender.try_send(event),
            }
        };
        if let Err(error) = sent {
            self.not_sent(session, error);
        }
    }

    /// An event could not be queued for `session`: a session too far
    /// behind is ended and its engines told; a closed one its reader
    /// reports.
    fn not_sent(&mut self, session: SessionId, error: SendError) {
        match error {
            SendError::Closed => {}
            SendError::Full => {
                if let Some((_, entry)) = self.sessions.open.remove(&session) {
                    warn!(%session, who = %entry.name, "session fell too far behind; ending it");
                    entry.sender.end(Status::resource_exhausted("too many unread events; reconnect"));
                    self.sessions.cut_off(session);
                }
            }
        }
    }

    fn publish(&mut self, trip: &Trip) {
        let snapshot = pb::Trip::from(trip);
        let terminal = trip.status.is_terminal();
        // Open trips only: an ended one is the engine's alone from now on.
        let before = if terminal {
            self.trips.remove(&trip.id).map(|(_, old)| old.status)
        } else {
            self.trips.insert(trip.id, snapshot.clone()).map(|old| old.status)
        };
        // Measured once per assignment, not at every later change of an
        // assigned trip.
        if trip.status == TripStatus::DriverAssigned && before != Some(pb::TripStatus::DriverAssigned as i32) {
            let waited = trip.updated_at.since(trip.requested_at).max(0);
            self.hot.request_to_assigned.record(waited as f64 / 1_000.0);
            if let Some(metres) = trip.pickup_distance_m {
                self.hot.pickup_distance.record(metres);
            }
        }
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(snapshot.clone());
        }
        if terminal {
            self.awaiting_first_offer.remove(&trip.id);
        }
        let Some(riders) = self.riders.get_mut(&trip.id) else { return };
        // A rider who stopped reading loses the stream (and may re-attach
        // with the same request id); the trip goes on.
        send_to_all(riders, snapshot);
        if terminal || riders.is_empty() {
            // Dropping the senders ends the streams after the last update.
            self.riders.remove(&trip.id);
        }
    }

    /// Refreshes the driver's position (and the pickup ETA, if reckoned
    /// again) in the trip's snapshot in place (no new snapshot for every
    /// ping), and tells its riders, if any.
    fn moved(&mut self, trip: TripId, fix: moves::Fix) {
        let Some(mut entry) = self.trips.get_mut(&trip) else { return };
        entry.driver_position = Some(fix.position.into());
        entry.updated_at_ms = fix.at.0;
        if let Some(ms) = fix.pickup_eta_ms {
            entry.pickup_eta_s = ms as f64 / 1_000.0;
        }
        let Some(riders) = self.riders.get_mut(&trip) else { return };
        let snapshot = entry.clone();
        drop(entry);
        send_to_all(riders, snapshot);
        if riders.is_empty() {
            self.riders.remove(&trip);
        }
    }

    fn end_everything(&mut self, status: Status) {
        info!(sessions = self.sessions.open.len(), riders = self.riders.len(), "ending every stream");
        let open: Vec<SessionId> = self.sessions.open.iter().map(|e| *e.key()).collect();
        for session in open {
            if let Some((_, entry)) = self.sessions.open.remove(&session) {
                entry.sender.end(status.clone());
            }
        }
        for (_, riders) in self.riders.drain() {
            for w in riders {
                let _ = w.try_send(Err(Box::new(status.clone())));
            }
        }
    }
}

/// Sends a trip to each of its riders' streams, dropping those whose
/// readers stopped (a rider may re-attach with the same request id); the
/// last gets the snapshot itself, not a copy.
fn send_to_all(riders: &mut Vec<RiderSender>, snapshot: pb::Trip) {
    let mut snapshot = Some(snapshot);
    let last = riders.len().saturating_sub(1);
    let mut n = 0;
    riders.retain(|w| {
        let copy = if n == last { snapshot.take() } else { snapshot.clone() };
        n += 1;
        copy.is_some_and(|copy| w.try_send(Ok(Box::new(copy))).is_ok())
    });
}

/// Clears the rider's id from every trip in `event`.
fn hide_rider(event: &mut pb::DriverEvent) {
    use pb::driver_event::Kind;
    let trip = match &mut event.kind {
        Some(Kind::Offer(offer)) => offer.trip.as_mut(),
        Some(Kind::Trip(trip)) => Some(trip),
        Some(Kind::SessionStarted(started)) => started.current_trip.as_mut(),
        Some(Kind::OfferWithdrawn(_) | Kind::Rejected(_)) | None => None,
    };
    if let Some(trip) = trip {
        trip.rider_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_task::{Gates, Move};
    use crate::streams::RiderUpdate;
    use dispatch_core::geo::LatLng;
    use dispatch_core::time::Timestamp;

    fn stage() -> Deliverer {
        let (cut_off, _) = mpsc::unbounded_channel();
        stage_of(Sessions::new(vec![cut_off]))
    }

    /// A stage sending through `sessions`, which other stages may share.
    fn stage_of(sessions: Sessions) -> Deliverer {
        let (changes, _) = broadcast::channel(1);
        let privacy = Privacy { hide_dropoff: ServiceSet::EMPTY, drivers_see_rider_id: false };
        Deliverer::new(Arc::new(DashMap::new()), None, sessions, changes, privacy, Arc::default(), Arc::default())
    }

    fn at(lat: f64) -> LatLng {
        LatLng::new(lat, 127.0).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Trip `id` in `status`, its driver at `driver_position`.
    fn trip(id: u64, status: TripStatus, driver_position: Option<LatLng>) -> Trip {
        Trip {
            id: TripId(id),
            rider: dispatch_core::ids::RiderId::new("r").unwrap_or_else(|e| panic!("{e}")),
            request_id: dispatch_core::ids::RequestId::new("q").unwrap_or_else(|e| panic!("{e}")),
            driver: None,
            status,
            service: dispatch_core::service::ServiceType::Taxi,
            pickup: at(37.5),
            dropoff: None,
            driver_position,
            pickup_distance_m: None,
            pickup_eta_ms: None,
            requested_at: Timestamp(0),
            updated_at: Timestamp(0),
            cancel_reason: None,
            queued: false,
        }
    }

    #[test]
    fn an_ended_trip_leaves_the_table_of_open_trips() {
        let mut stage = stage();
        let mut trip = trip(1, TripStatus::Searching, None);
        stage.deliver(Delivery::Rider(trip.clone()));
        assert!(stage.trips.contains_key(&trip.id), "an open trip is answered from the table");
        trip.status = TripStatus::NoDriverFound;
        stage.deliver(Delivery::Rider(trip.clone()));
        assert!(stage.trips.is_empty(), "an ended trip is kept by the engine alone");
    }

    /// The engine task's side: numbers what it hands over and gates
    /// positions the same way.
    #[derive(Default)]
    struct Handing {
        gates: Gates,
    }

    impl Handing {
        fn round(&mut self, deliveries: Vec<Delivery>) -> Vec<Round> {
            deliveries.iter().for_each(|d| self.gates.handed(d));
            vec![Round { records: Vec::new(), deliveries, flushed: None }]
        }

        fn moved(&self, trip: u64, lat: f64, at_ms: i64) -> Move {
            self.gates.gate(TripId(trip), at(lat), Timestamp(at_ms), None)
        }
    }

    /// Posts positions as the engine task does (the stage files them when
    /// woken, or before its next group).
    fn post(stage: &Deliverer, mut moves: Vec<Move>) {
        stage.mailbox.post(&mut moves);
    }

    /// Following trip `id`, now `trip`: its rider's stream.
    fn follow(stage: &mut Deliverer, handing: &mut Handing, trip: &Trip) -> mpsc::Receiver<RiderUpdate> {
        let (rider, updates) = mpsc::channel(16);
        let now = Instant::now();
        let round = handing.round(vec![
            Delivery::Watch { trip: trip.id, rider, resume: None, marks: None },
            Delivery::Rider(trip.clone()),
        ]);
        stage.deliver_group(round, now, now);
        updates
    }

    fn seen(updates: &mut mpsc::Receiver<RiderUpdate>) -> Vec<(pb::TripStatus, Option<f64>)> {
        let mut seen = Vec::new();
        while let Ok(Ok(t)) = updates.try_recv() {
            seen.push((t.status(), t.driver_position.map(|p| p.lat)));
        }
        seen
    }

    #[test]
    fn a_position_goes_out_before_the_durable_group_unless_it_waits_for_a_change_of_its_trip() {
        let mut stage = stage();
        let mut handing = Handing::default();
        let mut trip = trip(7, TripStatus::DriverAssigned, Some(at(37.40)));
        let mut updates = follow(&mut stage, &mut handing, &trip);
        assert_eq!(seen(&mut updates), [(pb::TripStatus::DriverAssigned, Some(37.40))]);
        let lat_of = |t: &pb::Trip| t.driver_position.map(|p| p.lat);
        let shown = |stage: &Deliverer| stage.trips.get(&TripId(7)).and_then(|t| lat_of(&t));

        // A position, then a round whose records are not durable yet (a
        // reply, then the trip's next change), then a position after it.
        let before = handing.moved(7, 37.41, 1);
        let (told, heard) = std::sync::mpsc::channel();
        let trips = stage.trips.clone();
        trip.status = TripStatus::DriverArrived;
        trip.driver_position = Some(at(37.42));
        let round = handing.round(vec![
            Delivery::Reply(Box::new(move || {
                let _ = told.send(trips.get(&TripId(7)).and_then(|t| lat_of(&t)));
            })),
            Delivery::Rider(trip.clone()),
        ]);
        let after = handing.moved(7, 37.43, 2);
        post(&stage, vec![before, after]);
        stage.take_mail();
        stage.deliver_moves(usize::MAX);
        // The first needs nothing not delivered: out at once, before the
        // sync. The second waits for the change it follows.
        assert_eq!(seen(&mut updates), [(pb::TripStatus::DriverAssigned, Some(37.41))]);
        assert_eq!(shown(&stage), Some(37.41));

        let now = Instant::now();
        stage.deliver_group(round, now, now);
        assert_eq!(heard.try_recv().ok(), Some(Some(37.41)));
        assert_eq!(seen(&mut updates), [(pb::TripStatus::DriverArrived, Some(37.42))]);
        stage.deliver_moves(usize::MAX);
        assert_eq!(seen(&mut updates), [(pb::TripStatus::DriverArrived, Some(37.43))]);
        assert_eq!(shown(&stage), Some(37.43));
    }

    #[test]
    fn a_snapshot_supersedes_the_positions_before_it_still_waiting() {
        let mut stage = stage();
        let mut handing = Handing::default();
        let mut trip = trip(7, TripStatus::DriverAssigned, Some(at(37.40)));
        let mut updates = follow(&mut stage, &mut handing, &trip);
        seen(&mut updates);
        // The stage is behind: a position posted is not yet filed, let
        // alone sent, when the trip's next change (showing a newer
        // position) is delivered.
        post(&stage, vec![handing.moved(7, 37.41, 1)]);
        trip.status = TripStatus::DriverArrived;
        trip.driver_position = Some(at(37.42));
        let round = handing.round(vec![Delivery::Rider(trip.clone())]);
        let now = Instant::now();
        stage.deliver_group(round, now, now);
        stage.deliver_moves(usize::MAX);
        assert_eq!(seen(&mut updates), [(pb::TripStatus::DriverArrived, Some(37.42))], "the driver went back");
        assert!(stage.moves.is_empty());
    }

    /// Runs the stage on two groups queued at once, with trip 7's
    /// position ready and positions' last turn at `turn`: what its rider
    /// had seen when each group's reply ran.
    fn two_queued_groups(turn: Instant) -> Vec<Vec<(pb::TripStatus, Option<f64>)>> {
        let mut stage = stage();
        let mut handing = Handing::default();
        let trip = trip(7, TripStatus::InProgress, Some(at(37.40)));
        let updates = follow(&mut stage, &mut handing, &trip);
        let updates = Arc::new(std::sync::Mutex::new(updates));
        let noted = Arc::new(std::sync::Mutex::new(Vec::new()));
        post(&stage, vec![handing.moved(7, 37.41, 1)]);
        stage.take_mail();
        stage.moves_turn = turn;
        let (input, queued) = std_mpsc::sync_channel(4);
        for _ in 0..2 {
            let (updates, noted) = (updates.clone(), noted.clone());
            let reply = Delivery::Reply(Box::new(move || {
                if let (Ok(mut updates), Ok(mut noted)) = (updates.lock(), noted.lock()) {
                    noted.push(seen(&mut updates));
                }
            }));
            let now = Instant::now();
            let sent =
                input.send(Input::Durable { rounds: handing.round(vec![reply]), commit_start: now, commit_end: now });
            sent.unwrap_or_else(|e| panic!("{e}"));
        }
        drop(input);
        stage.run(queued);
        noted.lock().map(|n| n.clone()).unwrap_or_default()
    }

    #[test]
    fn queued_groups_go_out_back_to_back_without_positions_between_them() {
        let seen = two_queued_groups(Instant::now() + std::time::Duration::from_secs(3600));
        assert_eq!(
            seen,
            [vec![(pb::TripStatus::InProgress, Some(37.40))], vec![]],
            "a position went between two groups"
        );
    }

    #[test]
    fn positions_kept_waiting_by_a_stream_of_groups_get_a_turn_after_one() {
        let long_ago = Instant::now().checked_sub(MOVES_STARVE * 2).unwrap_or_else(Instant::now);
        let seen = two_queued_groups(long_ago);
        assert_eq!(
            seen,
            [vec![(pb::TripStatus::InProgress, Some(37.40))], vec![(pb::TripStatus::InProgress, Some(37.41))]],
            "positions waited past MOVES_STARVE behind groups"
        );
    }

    #[test]
    fn positions_waiting_collapse_into_each_trips_newest_in_order() {
        let mut stage = stage();
        let mut handing = Handing::default();
        let mut riders = Vec::new();
        for id in [1, 2] {
            riders.push(follow(&mut stage, &mut handing, &trip(id, TripStatus::InProgress, Some(at(37.0)))));
            seen(riders.last_mut().unwrap_or_else(|| panic!("no rider")));
        }
        // Three hand-overs before any position is delivered: trip 1 moves
        // in each, trip 2 in the second only.
        for (n, lat) in [37.1, 37.2, 37.3].into_iter().enumerate() {
            let mut moves = vec![handing.moved(1, lat, n as i64)];
            if n == 1 {
                moves.push(handing.moved(2, lat, n as i64));
            }
            post(&stage, moves);
        }
        stage.take_mail();
        // The first trip goes first, showing its newest position.
        stage.deliver_moves(1);
        assert_eq!(seen(&mut riders[0]), [(pb::TripStatus::InProgress, Some(37.3))]);
        assert_eq!(seen(&mut riders[1]), []);
        stage.deliver_moves(usize::MAX);
        assert_eq!(seen(&mut riders[0]), [], "a trip's position was sent twice");
        assert_eq!(seen(&mut riders[1]), [(pb::TripStatus::InProgress, Some(37.2))]);
        assert!(stage.moves.is_empty());
    }

    /// A refreshed ETA in a position superseded by a newer one before it
    /// was delivered still reaches the rider, with the newer position.
    #[test]
    fn a_refreshed_eta_outlives_the_position_it_came_with() {
        let mut moves = Moves::default();
        let moved = |lat: f64, pickup_eta_ms| Move {
            trip: TripId(1),
            position: at(lat),
            at: Timestamp(0),
            pickup_eta_ms,
            after: None,
        };
        moves.note(moved(37.1, Some(90_000)), 0);
        moves.note(moved(37.2, None), 0);
        let (trip, fix) = moves.pop().unwrap_or_else(|| panic!("nothing ready"));
        assert_eq!((trip, fix.position, fix.pickup_eta_ms), (TripId(1), at(37.2), Some(90_000)));
        // Gated behind a delivery, the same.
        moves.note(Move { after: Some(5), ..moved(37.3, Some(60_000)) }, 0);
        moves.note(Move { after: Some(5), ..moved(37.4, None) }, 0);
        moves.release(6);
        let (_, fix) = moves.pop().unwrap_or_else(|| panic!("nothing released"));
        assert_eq!((fix.position, fix.pickup_eta_ms), (at(37.4), Some(60_000)));
    }

    #[test]
    fn superseded_and_released_positions_do_not_pile_up() {
        let mut moves = Moves::default();
        for n in 0..100_000u64 {
            let trip = TripId(n % 10);
            let moved = Move { trip, position: at(37.0), at: Timestamp(n as i64), pickup_eta_ms: None, after: Some(n) };
            moves.note(moved, n);
            moves.release(n + 1);
            moves.supersede(trip, n + 1);
        }
        assert!(moves.queued() <= 1024 + 20, "{} queue entries for no position waiting", moves.queued());
        assert_eq!(moves.len(), 0);
        assert_eq!(moves.pop(), None);
    }

    #[test]
    fn a_closed_session_is_forgotten_so_reconnects_do_not_pile_up() {
        let mut stage = stage();
        for n in 0..100 {
            let (sender, _stream) = SessionSender::new(4);
            let session = SessionId(n);
            let started = Started { driver: None, fleet: None, now: Timestamp(0), current_trip: None };
            stage.deliver(Delivery::Open { session, sender, name: format!("d{n}"), started });
            stage.deliver(Delivery::Closed(session));
        }
        assert!(
            stage.sessions.open.is_empty(),
            "{} senders kept after their sessions closed",
            stage.sessions.open.len()
        );
    }

    /// With shards, a driver's events may come from a shard that did not
    /// open its session, before the one that did has delivered its start:
    /// they wait for it and follow it, in order.
    #[tokio::test]
    async fn events_from_another_shard_before_a_session_starts_wait_and_follow_its_start() {
        use futures::StreamExt;
        let (cut_off, _) = mpsc::unbounded_channel();
        let sessions = Sessions::new(vec![cut_off]);
        let (mut opener, mut other) = (stage_of(sessions.clone()), stage_of(sessions.clone()));
        let (sender, mut stream) = SessionSender::new(8);
        let session = SessionId(9);
        sessions.expect(session, sender.clone());
        let withdrawn = |n| DriverEvent::OfferWithdrawn {
            offer: dispatch_core::ids::OfferId(n),
            driver: dispatch_core::ids::DriverId::new("d").unwrap_or_else(|e| panic!("{e}")),
            reason: dispatch_core::engine::WithdrawReason::Expired,
        };
        other.deliver(Delivery::Driver { session, event: withdrawn(1) });
        other.deliver(Delivery::Driver { session, event: withdrawn(2) });
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(1), stream.next()).await;
        assert!(nothing.is_err(), "an event went out before the session started: {nothing:?}");
        let started = Started { driver: None, fleet: None, now: Timestamp(0), current_trip: None };
        opener.deliver(Delivery::Open { session, sender, name: "d".into(), started });
        other.deliver(Delivery::Driver { session, event: withdrawn(3) });
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
            let next = next.unwrap_or_else(|_| panic!("only {kinds:?} came"));
            let event = next.unwrap_or_else(|| panic!("the stream ended")).unwrap_or_else(|e| panic!("{e}"));
            kinds.push(match event.kind {
                Some(pb::driver_event::Kind::SessionStarted(_)) => "started".to_owned(),
                Some(pb::driver_event::Kind::OfferWithdrawn(w)) => w.offer_id,
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(kinds, ["started", "o-1", "o-2", "o-3"]);
    }
}
