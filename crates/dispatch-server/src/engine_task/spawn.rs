//! Starting the engine: opening the trip log, rebuilding the engine from
//! it on a blocking thread, and starting the engine task and the delivery
//! stage; with several shards, one of each per shard (see `shards`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc as std_mpsc;

use dashmap::DashMap;
use dispatch_core::Engine;
use dispatch_core::territory::Shard;
use dispatch_proto::pb;
use dispatch_shard::{Home, ShardId, ShardMap};
use dispatch_store::{Recovered, TripLog, TripStore};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::ServerError;
use crate::commit::Committer;
use crate::config::{ServerConfig, TripLogConfig};
use crate::deliver::{Deliverer, Privacy, Sessions};

use super::clock::Clock;
use super::handle::Queues;
use super::{EngineHandle, EngineTask, Mail, Round, Routes};

/// Offer ids of one boot start at `boot * OFFER_IDS_PER_BOOT`, so a reply to
/// an offer from before a restart never matches a new one.
const OFFER_IDS_PER_BOOT: u64 = 1_000_000_000_000;

/// Durable groups that may wait for the delivery stage before the commit
/// stage waits for it in turn.
const DURABLE_GROUPS: usize = 64;

/// Wake-ups for drivers' positions that may wait beside the groups.
const MOVES_IN_FLIGHT: usize = 16;

/// What `run` gets back from [`spawn`].
pub struct Spawned {
    /// How handlers reach the engine.
    pub handle: EngineHandle,
    /// Resolves once the engine, commit and delivery stages have stopped and the
    /// log is closed.
    pub stopped: Stopped,
    /// Becomes `Some(cause)` if the trip log fails.
    pub fatal: watch::Receiver<Option<String>>,
}

/// Every shard's pipeline stopped.
pub struct Stopped(Vec<oneshot::Receiver<()>>);

impl Stopped {
    /// Waits until every shard's engine, commit and delivery stages have
    /// stopped and its log is closed.
    pub async fn wait(self) {
        for stopped in self.0 {
            let _ = stopped.await;
        }
    }
}

/// The file in the data directory that says how many shards its trip logs
/// are of.
const SHARDS_FILE: &str = "shards";

/// A trip log opened and read back by someone else (the cluster's
/// replicated log), for [`spawn`] to start from.
pub struct OpenedLog {
    /// Where the engine's changes go.
    pub store: Box<dyn TripStore>,
    /// What was read back.
    pub recovered: Recovered,
}

/// Opens the trip log (or takes `opened`) and rebuilds the engine from it,
/// then starts the engine task on a thread of its own (with its own
/// single-threaded runtime for timers, so the engine is never queued behind
/// stream decoding on a shared worker), and the commit and delivery stages
/// on two others. With `config.shards` above 1, one engine, log, commit
/// and delivery stage per shard, each log in a directory of its own. They
/// end after [`Command::Shutdown`](super::Command::Shutdown) or when every
/// handle is dropped.
pub fn spawn(config: &ServerConfig, opened: Option<OpenedLog>) -> Result<Spawned, ServerError> {
    let count = config.shards.max(1);
    let map = ShardMap::new(u32::from(count)).map_err(|e| ServerError::Shards(e.to_string()))?;
    let mut logs: Vec<Option<OpenedLog>> = match (opened, &config.trip_log) {
        (Some(_), _) if count > 1 => {
            return Err(ServerError::Shards(
                "a cluster node runs one shard's log; --shards needs the local log".into(),
            ));
        }
        (Some(opened), _) => vec![Some(opened)],
        (None, Some(settings)) => open_logs(settings, count)?,
        (None, None) => {
            warn!("no trip log: trips will not survive a restart");
            (0..count).map(|_| None).collect()
        }
    };
    // Many shards: each grows on its own, and growing moves every snapshot
    // in it while the delivery stage waits (64 shards of a million trips
    // move ~4 MB at a time instead of ~30).
    let trips = Arc::new(DashMap::with_shard_amount(64));
    // Watchers that fall this far behind skip ahead.
    let (changes, _) = tokio::sync::broadcast::channel(4_096);
    let latency = crate::latency::Latency::new();
    let (fatal_tx, fatal) = watch::channel(None);
    let (cut_offs, cut_off_rxs): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let sessions = Sessions::new(cut_offs);
    let (mail, inboxes): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel::<Mail>()).unzip();
    let routes = (count > 1).then(|| Arc::new(Routes::new(map, mail, sessions.clone())));
    let mut handle = EngineHandle {
        shards: Arc::from(Vec::new()),
        routes: routes.clone(),
        started: std::time::Instant::now(),
        node: Arc::from(config.node.as_str()),
        shed: Arc::new(AtomicU64::new(0)),
        queued_updates: Arc::new(AtomicU64::new(0)),
        max_queued_updates: config.max_queued_updates as u64,
        next_session: Arc::new(AtomicU64::new(1)),
        trips: trips.clone(),
        changes: changes.clone(),
        rider_streams: Arc::new(AtomicU64::new(0)),
        latency: latency.clone(),
    };
    let mut queues = Vec::new();
    let mut stopped = Vec::new();
    let shared = Shared { config, trips, changes, latency, sessions, fatal: fatal_tx, handle: &handle };
    for ((shard, cut_off_rx), inbox) in (0..count).zip(cut_off_rxs).zip(inboxes) {
        let log = logs.get_mut(usize::from(shard)).and_then(Option::take);
        let territory = (count > 1).then_some(Home { map, shard: ShardId(shard) });
        let inbox = routes.as_ref().map(|_| inbox);
        let (q, done) = spawn_shard(&shared, shard, territory, log, cut_off_rx, routes.clone(), inbox)?;
        queues.push(q);
        stopped.push(done);
    }
    handle.shards = Arc::from(queues);
    Ok(Spawned { handle, stopped: Stopped(stopped), fatal })
}

/// What every shard's pipeline shares.
struct Shared<'a> {
    config: &'a ServerConfig,
    trips: Arc<DashMap<dispatch_core::ids::TripId, pb::Trip>>,
    changes: tokio::sync::broadcast::Sender<pb::Trip>,
    latency: Option<crate::latency::Latency>,
    sessions: Sessions,
    fatal: watch::Sender<Option<String>>,
    handle: &'a EngineHandle,
}

/// Opens the trip log of each of `count` shards: the directory itself for
/// one, `shard-K` inside it for several. The directory says how many
/// shards its logs are of, and another count is refused.
fn open_logs(settings: &TripLogConfig, count: Shard) -> Result<Vec<Option<OpenedLog>>, ServerError> {
    let dir = &settings.dir;
    let io = |what: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ServerError::TripLog(dispatch_store::StoreError::Io { what, path, source })
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let file = dir.join(SHARDS_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let made = text.trim().parse::<Shard>().map_err(|_| {
                ServerError::Shards(format!("{} does not hold a shard count: {text:?}", file.display()))
            })?;
            if made != count {
                return Err(ServerError::Shards(format!(
                    "the data directory {} holds the trips of {made} shard(s), and the count is fixed when it is \
                     made: start with --shards {made}, or use a new --data-dir",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let used = std::fs::read_dir(dir).map_err(io("list", dir))?.next().is_some();
            if used && count > 1 {
                return Err(ServerError::Shards(format!(
                    "the data directory {} holds the trips of one shard, and the count is fixed when it is made: \
                     start with --shards 1, or use a new --data-dir",
                    dir.display()
                )));
            }
            std::fs::write(&file, format!("{count}\n")).map_err(io("write", &file))?;
        }
        Err(e) => return Err(io("read", &file)(e)),
    }
    (0..count)
        .map(|shard| {
            let dir = if count == 1 { dir.clone() } else { dir.join(format!("shard-{shard}")) };
            let (log, recovered) =
                TripLog::open(&dir, settings.fsync, settings.compact_after_bytes).map_err(ServerError::TripLog)?;
            Ok(Some(OpenedLog { store: Box::new(log), recovered }))
        })
        .collect()
}

/// Starts one shard's pipeline: its engine rebuilt from `opened`, and the
/// engine task, commit and delivery stages on threads of their own.
fn spawn_shard(
    shared: &Shared<'_>,
    shard: Shard,
    territory: Option<Home>,
    opened: Option<OpenedLog>,
    cut_off_rx: mpsc::UnboundedReceiver<dispatch_core::ids::SessionId>,
    routes: Option<Arc<Routes>>,
    inbox: Option<mpsc::UnboundedReceiver<Mail>>,
) -> Result<(Queues, oneshot::Receiver<()>), ServerError> {
    let config = shared.config;
    let (urgent, urgent_rx) = mpsc::channel(config.command_queue.max(1));
    // Bounded by `max_queued_updates`, counted in updates; the channel's
    // own bound (in commands) only backs that up.
    let (bulk, bulk_rx) = mpsc::channel(config.max_queued_updates.max(1));
    let clock = Clock::new();
    let with_territory = |mut engine: Engine| {
        if let Some(roads) = &config.roads {
            engine.set_roads(Arc::clone(roads));
        }
        match territory {
            Some(home) => engine.with_territory(Arc::new(home)),
            None => engine,
        }
    };
    let (log, engine) = match opened {
        Some(OpenedLog { mut store, recovered }) => {
            let first_offer = recovered.boot.saturating_mul(OFFER_IDS_PER_BOOT).saturating_add(1);
            let records = recovered.records.len();
            let engine = with_territory(Engine::restore(
                config.engine.clone(),
                clock.now(),
                recovered.records,
                recovered.next_trip,
                first_offer,
            ));
            store.retain(&mut |id| engine.keeps(id));
            let mut open = 0;
            for trip in engine.open_trips() {
                open += 1;
                shared.trips.insert(trip.id, pb::Trip::from(trip));
            }
            let stats = engine.stats();
            info!(
                shard,
                records,
                searching = stats.trips_searching,
                with_driver = stats.trips_active,
                open,
                "trips recovered from the log"
            );
            (Some(store), engine)
        }
        None => (None, with_territory(Engine::new(config.engine.clone()))),
    };
    let committer = Committer::new(log, shared.latency.clone(), shared.fatal.clone());
    let delivered = Arc::new(AtomicU64::new(0));
    let mailbox = Arc::new(super::Mailbox::default());
    let deliverer = Deliverer::new(
        shared.trips.clone(),
        shared.latency.clone(),
        shared.sessions.clone(),
        shared.changes.clone(),
        Privacy { hide_dropoff: config.offer_hides_dropoff, drivers_see_rider_id: config.drivers_see_rider_id },
        delivered.clone(),
        mailbox.clone(),
    );
    // Bounded: if the disk cannot keep up, the engine waits for it, its
    // queues fill, and callers are refused instead of memory growing.
    let (rounds, rounds_rx) = std_mpsc::sync_channel(config.commit_queue.max(1));
    // Groups made durable, waiting to be delivered: while one is delivered
    // the next is synced. The engine task's positions come this way too.
    let (durable, durable_rx) = std_mpsc::sync_channel(DURABLE_GROUPS + MOVES_IN_FLIGHT);
    let deliver = durable.clone();
    let deliverer = std::thread::Builder::new()
        .name(format!("dispatch-deliver-{shard}"))
        .spawn(move || deliverer.run(durable_rx))
        .map_err(ServerError::Thread)?;
    let committer = std::thread::Builder::new()
        .name(format!("dispatch-commit-{shard}"))
        .spawn(move || committer.run(rounds_rx, durable))
        .map_err(ServerError::Thread)?;
    let mut task = EngineTask {
        engine,
        shard,
        routes,
        inbox,
        gathering: Default::default(),
        given: Default::default(),
        given_kept: 0,
        clock,
        round: Round::default(),
        rounds,
        moves: Vec::new(),
        mailbox,
        deliver,
        gates: super::Gates::default(),
        delivered,
        cut_off: cut_off_rx,
        queued_updates: shared.handle.queued_updates.clone(),
        max_sessions: config.max_sessions,
        fleet_batch: None,
        last_flush: tokio::time::Instant::now(),
        round_seconds: crate::meters::Hot::register().engine_round,
    };
    // What the restore changed (searches that ran out while the server was
    // down) is logged like any other change.
    task.carry_out();
    task.flush();
    let (done, stopped) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(ServerError::Thread)?;
    std::thread::Builder::new()
        .name(format!("dispatch-engine-{shard}"))
        .spawn(move || {
            runtime.block_on(task.run(urgent_rx, bulk_rx));
            // The task is gone, and with it the sender: the commit stage
            // commits what is left and closes the log, and the delivery
            // stage delivers it and stops.
            let _ = committer.join();
            let _ = deliverer.join();
            let _ = done.send(());
        })
        .map_err(ServerError::Thread)?;
    Ok((Queues { urgent, bulk }, stopped))
}
