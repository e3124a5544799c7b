//! How handlers reach the engine task: two queues, and shedding of
//! location updates when the engine is behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dispatch_core::ids::{SessionId, TripId};
use dispatch_proto::pb;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

use dispatch_core::engine::{MapQuery, MapView, Nearby, NearbyQuery, Stats};
use dispatch_core::geo::MAX_DISTANCE_M;
use dispatch_core::territory::Shard;
use dispatch_shard::ShardId;

use super::{Command, Routes, Speaker};

/// How handlers reach the engine task. Cheap to clone.
///
/// Two queues: rides, offer replies, progress, hellos and operator calls go
/// through `urgent`, which the engine task always empties first; location
/// updates go through `bulk`, taken one command at a time between urgent
/// ones. So a ride request never waits behind a second of queued pings, and
/// when the engine cannot keep up it is the pings that are shed.
#[derive(Clone)]
pub struct EngineHandle {
    /// Each shard's two queues (one shard without `--shards`).
    pub(super) shards: Arc<[Queues]>,
    /// With several shards, how commands find theirs (see `shards`).
    pub(super) routes: Option<Arc<Routes>>,
    /// When the server started, for `uptime_s`.
    pub(super) started: std::time::Instant,
    /// This node's name, as the holder of its shards in `GetStats`.
    pub(super) node: Arc<str>,
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

/// One engine task's queues.
#[derive(Clone)]
pub struct Queues {
    pub(super) urgent: mpsc::Sender<Command>,
    pub(super) bulk: mpsc::Sender<Command>,
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
        let Some(routes) = &self.routes else { return self.send_to(0, command).await };
        match command {
            Command::FleetHello { session, fleet, sender } => {
                routes.speakers.insert(session, Speaker::Fleet);
                routes.sessions.expect(session, sender.clone());
                // Open in every other shard before the hello is answered,
                // so its first batch finds the session wherever it goes.
                for shard in 1..routes.count() as Shard {
                    let fleet = fleet.clone();
                    self.ask_shard(shard, |reply| Command::FleetJoin { session, fleet, reply }).await?;
                }
                self.send_to(0, Command::FleetHello { session, fleet, sender }).await
            }
            Command::FleetBatch { session, updates } => {
                let mut split: Vec<Vec<_>> = vec![Vec::new(); routes.count()];
                for update in updates {
                    let shard = routes
                        .holder(&update.driver)
                        .unwrap_or_else(|| update.position.map_or(0, |fix| routes.map.shard_of(fix.position).0));
                    split[usize::from(shard)].push(update);
                }
                let mut all = true;
                for (shard, updates) in split.into_iter().enumerate().filter(|(_, u)| !u.is_empty()) {
                    all &= self.send_to(shard as Shard, Command::FleetBatch { session, updates }).await?;
                }
                Ok(all)
            }
            Command::SessionClosed { session, .. } => match routes.speakers.remove(&session) {
                Some((_, Speaker::Fleet)) => {
                    for shard in 0..routes.count() as Shard {
                        self.send_to(shard, Command::SessionClosed { session, driver: None }).await?;
                    }
                    Ok(true)
                }
                Some((_, Speaker::Driver { id, first })) => {
                    let shard = routes.holder(&id).unwrap_or(first);
                    self.send_to(shard, Command::SessionClosed { session, driver: Some(id) }).await
                }
                None => self.send_to(0, Command::SessionClosed { session, driver: None }).await,
            },
            Command::Shutdown => {
                for shard in 0..routes.count() as Shard {
                    self.send_to(shard, Command::Shutdown).await?;
                }
                Ok(true)
            }
            command => {
                let shard = match &command {
                    Command::DriverHello { session, hello, sender } => {
                        let shard = routes
                            .holder(&hello.driver)
                            .unwrap_or_else(|| hello.position.map_or(0, |p| routes.map.shard_of(p).0));
                        routes.speakers.insert(*session, Speaker::Driver { id: hello.driver.clone(), first: shard });
                        routes.sessions.expect(*session, sender.clone());
                        shard
                    }
                    Command::Ping { session, .. } | Command::Availability { session, .. } => {
                        routes.of_session(*session)
                    }
                    Command::OfferReply { offer, .. } => routes.named(offer.shard(routes.count() as u16)),
                    Command::Progress { trip, .. } | Command::CancelRide { trip, .. } | Command::Trip { trip, .. } => {
                        routes.named(trip.shard())
                    }
                    Command::RequestRide { request, .. } => routes.map.shard_of(request.pickup).0,
                    Command::MapDriver { driver, .. } => routes.holder(driver).unwrap_or(0),
                    _ => 0,
                };
                self.send_to(shard, command).await
            }
        }
    }

    /// Queues a command for one shard's engine task (see [`Self::send`]).
    async fn send_to(&self, shard: Shard, command: Command) -> Result<bool, Status> {
        let closed = || Status::unavailable("the server is shutting down");
        let Some(Queues { urgent, bulk }) = self.shards.get(usize::from(shard)) else { return Err(closed()) };
        if matches!(command, Command::SessionClosed { .. } | Command::Shutdown) {
            // Must get through, or the engine would keep a dead session.
            return urgent.send(command).await.map(|()| true).map_err(|_| closed());
        }
        if !command.is_bulk() {
            // A full queue means the engine is far behind: say so at once
            // rather than leave the caller waiting toward a timeout.
            return match urgent.try_send(command) {
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
        match bulk.try_send(command) {
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

    /// [`Self::ask`] of one shard.
    async fn ask_shard<T>(
        &self,
        shard: Shard,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.send_to(shard, command(tx)).await?;
        rx.await.map_err(|_| Status::unavailable("the server is shutting down"))
    }

    /// Asks every shard in `shards` the same question.
    async fn ask_each<T>(
        &self,
        shards: impl Iterator<Item = Shard>,
        command: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<Vec<T>, Status> {
        let mut waiting = Vec::new();
        for shard in shards {
            let (tx, rx) = oneshot::channel();
            self.send_to(shard, command(tx)).await?;
            waiting.push(rx);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for rx in waiting {
            answers.push(rx.await.map_err(|_| Status::unavailable("the server is shutting down"))?);
        }
        Ok(answers)
    }

    /// How many shards the engine runs.
    fn shard_count(&self) -> Shard {
        self.shards.len() as Shard
    }

    /// Drivers near a point: from every shard the radius touches, merged
    /// nearest first (ties by id, as one engine orders them), exact within
    /// the smallest radius any shard answered for.
    pub async fn nearby(&self, query: NearbyQuery) -> Result<Nearby, Status> {
        let Some(routes) = &self.routes else {
            return self.ask(|reply| Command::Nearby { query, reply }).await;
        };
        let radius = query.radius_m.unwrap_or(MAX_DISTANCE_M);
        let touched = routes.map.shards_within(query.center, radius).into_iter().map(|ShardId(s)| s);
        let answers = self.ask_each(touched, |reply| Command::Nearby { query: query.clone(), reply }).await?;
        let mut exact_within_m = radius;
        let mut drivers = Vec::new();
        for answer in answers {
            exact_within_m = exact_within_m.min(answer.exact_within_m);
            drivers.extend(answer.drivers);
        }
        drivers.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m).then_with(|| a.driver.cmp(&b.driver)));
        drivers.retain(|d| d.distance_m <= exact_within_m);
        drivers.truncate(query.limit);
        Ok(Nearby { drivers, exact_within_m })
    }

    /// What the operators' map shows of a viewport, from every shard: each
    /// driver when all shards together have at most `max_drivers` in view,
    /// else the cells of all, asked again.
    pub async fn map_view(&self, query: MapQuery) -> Result<MapView, Status> {
        let ask = |query: MapQuery| {
            self.ask_each(0..self.shard_count(), move |reply| Command::Map { query: query.clone(), reply })
        };
        let views = ask(query.clone()).await?;
        if views.len() == 1 {
            return Ok(views.into_iter().next().unwrap_or_default());
        }
        let drivers: usize = views.iter().map(|v| v.drivers.len()).sum();
        if views.iter().all(|v| v.cells.is_empty()) && drivers <= query.max_drivers {
            return Ok(merge_views(views));
        }
        Ok(merge_views(ask(MapQuery { max_drivers: 0, ..query }).await?))
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
        let each = self.ask_each(0..self.shard_count(), |reply| Command::Stats { reply }).await?;
        let fleets = each.first().map_or(0, |s| s.fleet_sessions);
        let mut total = Stats::default();
        let mut shards = Vec::with_capacity(each.len());
        for (shard, stats) in each.into_iter().enumerate() {
            shards.push(pb::ShardStats {
                shard: shard as u32,
                node: self.node.to_string(),
                drivers_connected: stats.drivers_connected,
                trips_open: stats.trips_searching + stats.trips_active,
                ride_requests: stats.ride_requests,
                location_updates: stats.location_updates,
            });
            total.add(stats);
        }
        // Every fleet's session is open in every shard.
        total.fleet_sessions = fleets;
        let mut stats = pb::Stats::from(&total);
        stats.shards = shards;
        if let Some(latency) = &self.latency {
            latency.fill(&mut stats);
        }
        stats.uptime_s = self.started.elapsed().as_secs();
        stats.location_updates_shed = self.shed.load(Ordering::Relaxed);
        stats.queue_urgent = self.shards.iter().map(|q| (q.urgent.max_capacity() - q.urgent.capacity()) as u64).sum();
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

/// One view of the map from many shards' views of the same viewport:
/// drivers, trips and counts put together, the counts of a cell (the same
/// grid in every shard) added up.
fn merge_views(views: Vec<MapView>) -> MapView {
    let mut merged = MapView::default();
    let mut cells: std::collections::BTreeMap<(u64, u64), dispatch_core::engine::MapCell> = Default::default();
    for view in views {
        merged.drivers.extend(view.drivers);
        merged.trips.extend(view.trips);
        merged.drivers_in_view += view.drivers_in_view;
        merged.waiting_in_view += view.waiting_in_view;
        merged.cell_deg = merged.cell_deg.max(view.cell_deg);
        for cell in view.cells {
            let key = (cell.south_west.0.to_bits(), cell.south_west.1.to_bits());
            match cells.entry(key) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(cell);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    for (sum, n) in e.get_mut().counts.iter_mut().zip(cell.counts) {
                        *sum = sum.saturating_add(n);
                    }
                }
            }
        }
    }
    merged.cells = cells.into_values().collect();
    merged
}
