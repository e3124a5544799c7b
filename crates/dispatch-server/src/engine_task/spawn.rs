//! Starting the engine: opening the trip log, rebuilding the engine from
//! it on a blocking thread, and starting the engine task and the delivery
//! stage.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc as std_mpsc;

use dashmap::DashMap;
use dispatch_core::Engine;
use dispatch_proto::pb;
use dispatch_store::{Recovered, TripLog, TripStore};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::ServerError;
use crate::commit::Committer;
use crate::config::ServerConfig;
use crate::deliver::{Deliverer, Privacy};

use super::Round;
use super::clock::Clock;
use super::{EngineHandle, EngineTask};

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
    pub stopped: oneshot::Receiver<()>,
    /// Becomes `Some(cause)` if the trip log fails.
    pub fatal: watch::Receiver<Option<String>>,
}

/// A trip log opened and read back by someone else (the cluster's
/// replicated log), for [`spawn`] to start from.
pub struct OpenedLog {
    /// Where the engine's changes go.
    pub store: Box<dyn TripStore>,
    /// What was read back.
    pub recovered: Recovered,
}

/// Opens the trip log (or takes `opened`) and rebuilds the engine from it, then starts the
/// engine task on a thread of its own (with its own single-threaded
/// runtime for timers, so the engine is never queued behind stream decoding
/// on a shared worker), and the commit and delivery stages on two others. They end after
/// [`Command::Shutdown`] or when every handle is dropped.
pub fn spawn(config: &ServerConfig, opened: Option<OpenedLog>) -> Result<Spawned, ServerError> {
    let (urgent, urgent_rx) = mpsc::channel(config.command_queue.max(1));
    // Bounded by `max_queued_updates`, counted in updates; the channel's
    // own bound (in commands) only backs that up.
    let (bulk, bulk_rx) = mpsc::channel(config.max_queued_updates.max(1));
    // Many shards: each grows on its own, and growing moves every snapshot
    // in it while the delivery stage waits (64 shards of a million trips
    // move ~4 MB at a time instead of ~30).
    let trips = Arc::new(DashMap::with_shard_amount(64));
    let shed = Arc::new(AtomicU64::new(0));
    // Watchers that fall this far behind skip ahead.
    let (changes, _) = tokio::sync::broadcast::channel(4_096);
    let queued_updates = Arc::new(AtomicU64::new(0));
    let clock = Clock::new();
    let opened = match (opened, &config.trip_log) {
        (Some(opened), _) => Some(opened),
        (None, Some(settings)) => {
            let (log, recovered) = TripLog::open(&settings.dir, settings.fsync, settings.compact_after_bytes)
                .map_err(ServerError::TripLog)?;
            Some(OpenedLog { store: Box::new(log), recovered })
        }
        (None, None) => None,
    };
    let (log, engine) = match opened {
        Some(OpenedLog { mut store, recovered }) => {
            let first_offer = recovered.boot.saturating_mul(OFFER_IDS_PER_BOOT).saturating_add(1);
            let records = recovered.records.len();
            let engine = Engine::restore(
                config.engine.clone(),
                clock.now(),
                recovered.records,
                recovered.next_trip,
                first_offer,
            );
            store.retain(&mut |id| engine.keeps(id));
            for trip in engine.open_trips() {
                trips.insert(trip.id, pb::Trip::from(trip));
            }
            let stats = engine.stats();
            info!(
                records,
                searching = stats.trips_searching,
                with_driver = stats.trips_active,
                open = trips.len(),
                "trips recovered from the log"
            );
            (Some(store), engine)
        }
        None => {
            warn!("no trip log: trips will not survive a restart");
            (None, Engine::new(config.engine.clone()))
        }
    };
    let latency = crate::latency::Latency::new();
    let handle = EngineHandle {
        urgent,
        bulk,
        shed: shed.clone(),
        queued_updates: queued_updates.clone(),
        max_queued_updates: config.max_queued_updates as u64,
        next_session: Arc::new(AtomicU64::new(1)),
        trips: trips.clone(),
        changes: changes.clone(),
        rider_streams: Arc::new(AtomicU64::new(0)),
        latency: latency.clone(),
    };
    let (cut_off, cut_off_rx) = mpsc::unbounded_channel();
    let (fatal_tx, fatal) = watch::channel(None);
    let committer = Committer::new(log, latency.clone(), fatal_tx);
    let delivered = Arc::new(AtomicU64::new(0));
    let mailbox = Arc::new(super::Mailbox::default());
    let deliverer = Deliverer::new(
        trips,
        latency.clone(),
        cut_off,
        changes,
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
        .name("dispatch-deliver".into())
        .spawn(move || deliverer.run(durable_rx))
        .map_err(ServerError::Thread)?;
    let committer = std::thread::Builder::new()
        .name("dispatch-commit".into())
        .spawn(move || committer.run(rounds_rx, durable))
        .map_err(ServerError::Thread)?;
    let mut task = EngineTask {
        engine,
        clock,
        round: Round::default(),
        rounds,
        moves: Vec::new(),
        mailbox,
        deliver,
        gates: super::Gates::default(),
        delivered,
        cut_off: cut_off_rx,
        latency,
        shed,
        queued_updates,
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
        .name("dispatch-engine".into())
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
    Ok(Spawned { handle, stopped, fatal })
}
