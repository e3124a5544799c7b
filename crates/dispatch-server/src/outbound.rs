//! The outbound stage: tells people of trip changes once they are durable.
//!
//! The engine task hands over one [`Batch`] per round: the trip records it
//! produced and everything it wants sent (events to sessions, trips to
//! riders, replies to callers), in order. The commit stage
//! ([`crate::commit`]) makes the records of each group of batches durable
//! and passes the group here; this stage, on a thread of its own, carries
//! out the batches' deliveries in order. So nobody hears of a change the
//! log could lose, the engine goes on matching while the disk syncs, and
//! the next group syncs while this one is delivered.
//!
//! It owns the open sessions' outboxes and the riders' streams, since it is
//! the only one that sends to them.
//!
//! Drivers' positions on trips (about one refresh per trip under way every
//! second, soft state) wait in [`Moves`], one per trip: delivered after
//! the rest of their group, and only while no newer group waits, so offers
//! and replies never queue behind them; a stage behind sends each trip's
//! newest position once instead of every one it missed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use dashmap::DashMap;
use dispatch_core::EngineError;
use dispatch_core::engine::{DriverEvent, LogRecord};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, FleetId, SessionId, TripId};
use dispatch_core::service::ServiceSet;
use dispatch_core::time::Timestamp;
use dispatch_core::trip::{Trip, TripStatus};
use dispatch_proto::{convert, pb};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::Status;
use tracing::{info, warn};

use crate::commit::Committed;
use crate::latency::{GroupMarks, Latency, Marks};
use crate::meters::{self, Hot};
use crate::outbox::{Outbox, SendError};
use crate::status::{engine_code, rejected};

/// A rider's stream of trip updates.
pub type Watcher = mpsc::Sender<RiderUpdate>;

/// What a rider's stream carries, boxed: the channel's first block of 32
/// slots is allocated when the stream opens, and 32 trips inline would cost
/// every rider following a trip 7.4 KB (`cargo bench --bench memory`).
pub type RiderUpdate = Result<Box<pb::Trip>, Box<Status>>;

/// One thing to deliver once the records before it are durable.
pub enum Out {
    /// A driver or fleet session opened: remember its outbox, send `started`.
    Open { session: SessionId, outbox: Outbox, name: String, started: Started },
    /// One message of a session refused (`driver`: which of a fleet's
    /// drivers it spoke for); the session goes on.
    Rejected { session: SessionId, error: EngineError, driver: String },
    /// An engine event for a session.
    Driver { session: SessionId, event: DriverEvent },
    /// End a session with a status.
    End { session: SessionId, status: Status },
    /// A session's stream is gone (the client hung up): forget its outbox.
    Closed(SessionId),
    /// A trip changed: update `GetTrip`, tell riders.
    Rider(Trip),
    /// A rider follows a trip. `resume` is the trip as it is, for a rider
    /// re-attaching; `marks` are when a new request arrived and was taken,
    /// to measure the time to its first offer.
    Watch { trip: TripId, watcher: Watcher, resume: Option<Trip>, marks: Option<Marks> },
    /// A trip got its first offer.
    FirstOffer(TripId),
    /// A trip passed its retention.
    Forget(TripId),
    /// Answer a caller.
    Reply(Box<dyn FnOnce() + Send>),
    /// End every stream with `UNAVAILABLE`.
    Shutdown,
}

/// What a session's first event says: who it speaks for, the server's
/// clock, a driver's trip under way.
pub struct Started {
    pub driver: Option<DriverId>,
    pub fleet: Option<FleetId>,
    pub now: Timestamp,
    pub current_trip: Option<Trip>,
}

/// What one round of the engine task produced.
#[derive(Default)]
pub struct Batch {
    /// Trip log records to make durable first.
    pub records: Vec<LogRecord>,
    /// Then these, in order.
    pub outs: Vec<Out>,
    /// Drivers' new positions on trips (see [`Moves`]), in order, kept
    /// apart from `outs` since they are most of what a round sends and
    /// small.
    pub moves: Vec<Move>,
    /// When the engine task handed it over.
    pub flushed: Option<Instant>,
}

impl Batch {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.outs.is_empty() && self.moves.is_empty()
    }

    /// Notes that a trip's driver moved, after the outs so far.
    pub fn moved(&mut self, trip: TripId, position: LatLng, at: Timestamp) {
        let after = u32::try_from(self.outs.len()).unwrap_or(u32::MAX);
        self.moves.push(Move { trip, position, at, after });
    }
}

/// A trip's driver moved: update `GetTrip`, tell riders.
#[derive(Debug, Clone, Copy)]
pub struct Move {
    pub trip: TripId,
    pub position: LatLng,
    /// When (the trip's `updated_at` from now on).
    pub at: Timestamp,
    /// How many of its batch's outs came before it.
    pub after: u32,
}

/// Drivers' positions waiting to be delivered: the newest per trip, in the
/// order trips first had one waiting. A snapshot of the trip delivered
/// after a position supersedes it (it shows a position at least as new),
/// so a trip's riders never see its driver go back.
#[derive(Default)]
struct Moves {
    newest: HashMap<TripId, (LatLng, Timestamp, u64)>,
    /// Trips in the order their positions came, each with the number its
    /// position was given; an entry whose number is not the trip's in
    /// `newest` is stale (superseded, or come again since).
    order: VecDeque<(TripId, u64)>,
    next: u64,
}

impl Moves {
    fn note(&mut self, trip: TripId, position: LatLng, at: Timestamp) {
        match self.newest.entry(trip) {
            Entry::Occupied(mut waiting) => {
                let number = waiting.get().2;
                waiting.insert((position, at, number));
            }
            Entry::Vacant(slot) => {
                self.next += 1;
                slot.insert((position, at, self.next));
                self.order.push_back((trip, self.next));
                // Stale entries are dropped before they outnumber the live
                // ones, so the queue stays as small as the open trips.
                if self.order.len() > 2 * self.newest.len() + 1024 {
                    let newest = &self.newest;
                    self.order.retain(|(trip, number)| newest.get(trip).is_some_and(|waiting| waiting.2 == *number));
                }
            }
        }
    }

    fn supersede(&mut self, trip: TripId) {
        self.newest.remove(&trip);
    }

    /// The next waiting position, oldest first.
    fn pop(&mut self) -> Option<(TripId, LatLng, Timestamp)> {
        while let Some((trip, number)) = self.order.pop_front() {
            if let Entry::Occupied(waiting) = self.newest.entry(trip)
                && waiting.get().2 == number
            {
                let (position, at, _) = waiting.remove();
                return Some((trip, position, at));
            }
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

/// Positions delivered between two looks for a newer group.
const MOVES_PER_LOOK: usize = 256;

struct SessionEntry {
    outbox: Outbox,
    /// The driver or fleet, for log lines.
    name: String,
}

/// The stage's state; lives on its thread.
pub struct Outbound {
    trips: Arc<DashMap<TripId, pb::Trip>>,
    latency: Option<Latency>,
    hot: Hot,
    /// Trip changes for operators watching.
    changes: broadcast::Sender<pb::Trip>,
    /// Sessions this stage cut off for falling behind: the engine task must
    /// close them (an offer out to one counts as declined).
    cut_off: mpsc::UnboundedSender<SessionId>,
    privacy: Privacy,
    sessions: HashMap<SessionId, SessionEntry>,
    watchers: HashMap<TripId, Vec<Watcher>>,
    awaiting_first_offer: HashMap<TripId, Marks>,
    /// When the group being delivered was flushed and committed.
    group: Option<GroupMarks>,
    /// Drivers' positions not delivered yet.
    moves: Moves,
}

/// What drivers are not shown.
#[derive(Debug, Clone, Copy)]
pub struct Privacy {
    /// Services whose offers leave out the dropoff.
    pub hide_dropoff: ServiceSet,
    /// Whether drivers and fleets see who the rider is (off by default).
    pub drivers_see_rider_id: bool,
}

impl Outbound {
    /// A stage sending to sessions and riders, keeping `trips` (the open
    /// ones) as they change.
    pub fn new(
        trips: Arc<DashMap<TripId, pb::Trip>>,
        latency: Option<Latency>,
        cut_off: mpsc::UnboundedSender<SessionId>,
        changes: broadcast::Sender<pb::Trip>,
        privacy: Privacy,
    ) -> Self {
        Self {
            privacy,
            trips,
            latency,
            hot: Hot::register(),
            changes,
            cut_off,
            sessions: HashMap::new(),
            watchers: HashMap::new(),
            awaiting_first_offer: HashMap::new(),
            group: None,
            moves: Moves::default(),
        }
    }

    /// Delivers each group the commit stage made durable, in order, until
    /// that stage hangs up; drivers' positions in between, at least
    /// [`MOVES_PER_LOOK`] after each group (so they cannot pile up) and all
    /// of them while no group waits.
    pub fn run(mut self, durable: std_mpsc::Receiver<Committed>) {
        loop {
            let committed = if self.moves.is_empty() {
                durable.recv().ok()
            } else {
                match durable.try_recv() {
                    Ok(committed) => Some(committed),
                    Err(std_mpsc::TryRecvError::Empty) => {
                        self.deliver_moves(MOVES_PER_LOOK);
                        continue;
                    }
                    Err(std_mpsc::TryRecvError::Disconnected) => None,
                }
            };
            let Some(committed) = committed else { break };
            match committed {
                Committed::Group { batches, commit_start, commit_end } => {
                    self.deliver_group(batches, commit_start, commit_end);
                    self.deliver_moves(MOVES_PER_LOOK);
                }
                Committed::LogFailed => {
                    self.end_everything(Status::unavailable("the server cannot write its trip log"))
                }
            }
        }
        info!("outbound stage stopped");
    }

    /// Delivers a durable group in order, except that drivers' positions
    /// wait in [`Moves`]; a snapshot of a trip supersedes the positions
    /// before it.
    fn deliver_group(&mut self, batches: Vec<Batch>, commit_start: Instant, commit_end: Instant) {
        for batch in batches {
            self.group = batch.flushed.map(|flushed| GroupMarks { flushed, commit_start, commit_end });
            let mut moves = batch.moves.into_iter().peekable();
            for (place, out) in batch.outs.into_iter().enumerate() {
                while let Some(Move { trip, position, at, .. }) = moves.next_if(|m| m.after as usize <= place) {
                    self.moves.note(trip, position, at);
                }
                if let Out::Rider(Trip { id, .. }) | Out::Watch { trip: id, .. } | Out::Forget(id) = &out {
                    self.moves.supersede(*id);
                }
                self.deliver(out);
            }
            for Move { trip, position, at, .. } in moves {
                self.moves.note(trip, position, at);
            }
        }
    }

    /// Delivers up to `most` waiting positions, oldest first.
    fn deliver_moves(&mut self, most: usize) {
        for _ in 0..most {
            let Some((trip, position, at)) = self.moves.pop() else { return };
            self.moved(trip, position, at);
        }
    }

    fn deliver(&mut self, out: Out) {
        match out {
            Out::Open { session, outbox, name, started } => {
                self.sessions.insert(session, SessionEntry { outbox, name });
                let Started { driver, fleet, now, current_trip } = started;
                let event = convert::session_started(driver.as_ref(), fleet.as_ref(), now, current_trip.as_ref());
                self.send(session, event);
            }
            Out::Rejected { session, error, driver } => {
                let code = engine_code(&error);
                meters::rejected(code);
                self.send(session, rejected(code, error.to_string(), &driver));
            }
            Out::Driver { session, mut event } => {
                // An offer shows the pickup; the dropoff only where the
                // service's policy allows (the trip shows it once accepted).
                if let DriverEvent::Offer(offer) = &mut event
                    && self.privacy.hide_dropoff.contains(offer.trip.service)
                {
                    offer.trip.dropoff = None;
                }
                self.send(session, pb::DriverEvent::from(&event));
            }
            Out::End { session, status } => {
                if let Some(entry) = self.sessions.remove(&session) {
                    info!(%session, who = %entry.name, code = ?status.code(), "session ended by the server");
                    entry.outbox.end(status);
                }
            }
            Out::Closed(session) => {
                self.sessions.remove(&session);
            }
            Out::Rider(trip) => self.publish(&trip),
            Out::Watch { trip, watcher, resume, marks } => {
                if let Some(marks) = marks {
                    self.awaiting_first_offer.insert(trip, marks);
                }
                match resume {
                    None => self.watchers.entry(trip).or_default().push(watcher),
                    Some(now) => {
                        let snapshot = pb::Trip::from(&now);
                        if watcher.try_send(Ok(Box::new(snapshot))).is_ok() && !now.status.is_terminal() {
                            self.watchers.entry(trip).or_default().push(watcher);
                        }
                    }
                }
            }
            Out::FirstOffer(trip) => {
                if let (Some(marks), Some(group), Some(latency)) =
                    (self.awaiting_first_offer.remove(&trip), self.group, &self.latency)
                {
                    let delivered = Instant::now();
                    latency.offer(marks, group, delivered);
                    meters::seconds(&self.hot.request_to_offer, delivered.saturating_duration_since(marks.received));
                }
            }
            // The commit stage tells the log.
            Out::Forget(trip) => {
                self.trips.remove(&trip);
            }
            Out::Reply(reply) => reply(),
            Out::Shutdown => self.end_everything(Status::unavailable("the server is shutting down")),
        }
    }

    /// Sends to a driver's or a fleet's session. Every event for drivers
    /// passes here, so this is where the rider's id is left out of every
    /// trip they see (offers, trips, a resumed trip), unless configured.
    fn send(&mut self, session: SessionId, mut event: pb::DriverEvent) {
        let Some(entry) = self.sessions.get(&session) else { return };
        if !self.privacy.drivers_see_rider_id {
            hide_rider(&mut event);
        }
        match entry.outbox.try_send(event) {
            Ok(()) => {}
            Err(SendError::Closed) => {
                // The reader task reports the close; nothing to do twice.
            }
            Err(SendError::Full) => {
                warn!(%session, who = %entry.name, "session fell too far behind; ending it");
                entry.outbox.end(Status::resource_exhausted("too many unread events; reconnect"));
                self.sessions.remove(&session);
                let _ = self.cut_off.send(session);
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
        let Some(watchers) = self.watchers.get_mut(&trip.id) else { return };
        // A rider who stopped reading loses the stream (and may re-attach
        // with the same request id); the trip goes on.
        send_to_all(watchers, snapshot);
        if terminal || watchers.is_empty() {
            // Dropping the senders ends the streams after the last update.
            self.watchers.remove(&trip.id);
        }
    }

    /// Refreshes the driver's position in the trip's snapshot in place (no
    /// new snapshot for every ping), and tells its riders, if any.
    fn moved(&mut self, trip: TripId, position: LatLng, at: Timestamp) {
        let Some(mut entry) = self.trips.get_mut(&trip) else { return };
        entry.driver_position = Some(position.into());
        entry.updated_at_ms = at.0;
        let Some(watchers) = self.watchers.get_mut(&trip) else { return };
        let snapshot = entry.clone();
        drop(entry);
        send_to_all(watchers, snapshot);
        if watchers.is_empty() {
            self.watchers.remove(&trip);
        }
    }

    fn end_everything(&mut self, status: Status) {
        info!(sessions = self.sessions.len(), riders = self.watchers.len(), "ending every stream");
        for (_, entry) in self.sessions.drain() {
            entry.outbox.end(status.clone());
        }
        for (_, watchers) in self.watchers.drain() {
            for w in watchers {
                let _ = w.try_send(Err(Box::new(status.clone())));
            }
        }
    }
}

/// Sends a trip to each of its riders' streams, dropping those whose
/// readers stopped (a rider may re-attach with the same request id); the
/// last gets the snapshot itself, not a copy.
fn send_to_all(watchers: &mut Vec<Watcher>, snapshot: pb::Trip) {
    let mut snapshot = Some(snapshot);
    let last = watchers.len().saturating_sub(1);
    let mut n = 0;
    watchers.retain(|w| {
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

    fn stage() -> Outbound {
        let (cut_off, _) = mpsc::unbounded_channel();
        let (changes, _) = broadcast::channel(1);
        let privacy = Privacy { hide_dropoff: ServiceSet::EMPTY, drivers_see_rider_id: false };
        Outbound::new(Arc::new(DashMap::new()), None, cut_off, changes, privacy)
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
        stage.deliver(Out::Rider(trip.clone()));
        assert!(stage.trips.contains_key(&trip.id), "an open trip is answered from the table");
        trip.status = TripStatus::NoDriverFound;
        stage.deliver(Out::Rider(trip.clone()));
        assert!(stage.trips.is_empty(), "an ended trip is kept by the engine alone");
    }

    #[test]
    fn positions_go_after_the_rest_of_their_group_and_a_later_snapshot_supersedes_them() {
        let mut stage = stage();
        let mut trip = trip(7, TripStatus::DriverAssigned, Some(at(37.40)));
        let (watcher, mut updates) = mpsc::channel(16);
        stage.deliver(Out::Watch { trip: trip.id, watcher, resume: None, marks: None });
        stage.deliver(Out::Rider(trip.clone()));
        let lat_of = |t: &pb::Trip| t.driver_position.map(|p| p.lat);
        let shown = |stage: &Outbound| stage.trips.get(&TripId(7)).and_then(|t| lat_of(&t));
        let mut seen = || {
            let mut seen = Vec::new();
            while let Ok(Ok(t)) = updates.try_recv() {
                seen.push((t.status(), lat_of(&t)));
            }
            seen
        };
        assert_eq!(seen(), [(pb::TripStatus::DriverAssigned, Some(37.40))]);

        // A position, a reply, then the trip's next change (which shows a
        // newer position): the reply goes before the position, and the
        // position, older than the change, is dropped.
        let (told, heard) = std::sync::mpsc::channel();
        let trips = stage.trips.clone();
        trip.status = TripStatus::DriverArrived;
        trip.driver_position = Some(at(37.42));
        let mut batch = Batch::default();
        batch.moved(trip.id, at(37.41), Timestamp(1));
        batch.outs.push(Out::Reply(Box::new(move || {
            let _ = told.send(trips.get(&TripId(7)).and_then(|t| lat_of(&t)));
        })));
        batch.outs.push(Out::Rider(trip.clone()));
        let now = Instant::now();
        stage.deliver_group(vec![batch], now, now);
        stage.deliver_moves(usize::MAX);
        assert_eq!(heard.try_recv().ok(), Some(Some(37.40)), "the reply waited for a position");
        assert_eq!(seen(), [(pb::TripStatus::DriverArrived, Some(37.42))], "the rider saw the driver go back");
        assert_eq!(shown(&stage), Some(37.42));

        // A position after the change is newer: it is applied and sent,
        // once the rest of the group is delivered.
        trip.status = TripStatus::InProgress;
        let mut batch = Batch::default();
        batch.outs.push(Out::Rider(trip.clone()));
        batch.moved(trip.id, at(37.43), Timestamp(2));
        stage.deliver_group(vec![batch], now, now);
        assert_eq!(seen(), [(pb::TripStatus::InProgress, Some(37.42))], "a position went before the next group");
        stage.deliver_moves(usize::MAX);
        assert_eq!(seen(), [(pb::TripStatus::InProgress, Some(37.43))]);
        assert_eq!(shown(&stage), Some(37.43));
    }

    #[test]
    fn positions_waiting_behind_newer_groups_collapse_into_each_trips_newest_in_order() {
        let mut stage = stage();
        let mut riders = Vec::new();
        for id in [1, 2] {
            let trip = trip(id, TripStatus::InProgress, Some(at(37.0)));
            let (watcher, updates) = mpsc::channel(16);
            stage.deliver(Out::Watch { trip: trip.id, watcher, resume: None, marks: None });
            stage.deliver(Out::Rider(trip));
            riders.push(updates);
        }
        let now = Instant::now();
        // Three groups arrive before any position is delivered: trip 1
        // moves in each, trip 2 in the second only.
        for (n, lat) in [37.1, 37.2, 37.3].into_iter().enumerate() {
            let mut batch = Batch::default();
            batch.moved(TripId(1), at(lat), Timestamp(n as i64));
            if n == 1 {
                batch.moved(TripId(2), at(lat), Timestamp(n as i64));
            }
            stage.deliver_group(vec![batch], now, now);
        }
        // The first waiting trip goes first, showing its newest position.
        stage.deliver_moves(1);
        let lats = |updates: &mut mpsc::Receiver<RiderUpdate>| {
            let mut lats = Vec::new();
            while let Ok(Ok(t)) = updates.try_recv() {
                lats.push(t.driver_position.map(|p| p.lat));
            }
            lats
        };
        assert_eq!(lats(&mut riders[0]), [Some(37.0), Some(37.3)]);
        assert_eq!(lats(&mut riders[1]), [Some(37.0)]);
        stage.deliver_moves(usize::MAX);
        assert_eq!(lats(&mut riders[0]), [], "a trip's position was sent twice");
        assert_eq!(lats(&mut riders[1]), [Some(37.2)]);
        assert!(stage.moves.is_empty());
    }

    #[test]
    fn superseded_positions_do_not_pile_up_in_the_queue() {
        let mut moves = Moves::default();
        for n in 0..100_000 {
            moves.note(TripId(n % 10), at(37.0), Timestamp(n as i64));
            moves.supersede(TripId(n % 10));
        }
        assert!(moves.order.len() <= 1024 + 20, "{} queue entries for no position waiting", moves.order.len());
        assert_eq!(moves.pop(), None);
    }

    #[test]
    fn a_closed_session_is_forgotten_so_reconnects_do_not_pile_up() {
        let mut stage = stage();
        for n in 0..100 {
            let (outbox, _stream) = Outbox::new(4);
            let session = SessionId(n);
            let started = Started { driver: None, fleet: None, now: Timestamp(0), current_trip: None };
            stage.deliver(Out::Open { session, outbox, name: format!("d{n}"), started });
            stage.deliver(Out::Closed(session));
        }
        assert!(stage.sessions.is_empty(), "{} outboxes kept after their sessions closed", stage.sessions.len());
    }
}
