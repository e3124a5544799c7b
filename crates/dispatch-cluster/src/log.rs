//! The trip log as a JetStream stream: the same records as the local log,
//! replicated by the NATS servers, with writes fenced so that only the
//! current owner's can land.
//!
//! # Layout of one shard's stream (`DISPATCH_SHARD_<n>`, subjects `dispatch.s<n>.>`)
//!
//! - `dispatch.s<n>.t.<trip>.r`: a trip's latest whole record
//!   ([`StoredTrip`]).
//! - `dispatch.s<n>.t.<trip>.x.<driver, hex>`: a driver added to the trip's
//!   `tried` set since ([`TriedEntry`]); one subject per driver, so a trip
//!   offered to n drivers costs O(n) bytes, as in the local log.
//! - `dispatch.s<n>.epoch`: the [`Marker`] each owner writes when it takes
//!   over: its boot number and the next trip id.
//!
//! The stream keeps one message per subject (`max_messages_per_subject =
//! 1`): the server compacts, and reading back is reading every subject's
//! last message. A trip past its retention is purged by subject.
//!
//! # Fencing
//!
//! An owner taking over writes its marker only if the marker subject's
//! last sequence is still the one it read (`Nats-Expected-Last-Subject-
//! Sequence`), so of two nodes racing, one wins. Every record it writes
//! afterwards carries `Nats-Expected-Last-Subject-Sequence: M` with
//! `Nats-Expected-Last-Subject-Sequence-Subject: dispatch.s<n>.epoch`, M
//! being its marker's sequence: the servers store the record only while
//! that marker is still the newest. Once a new owner has written its
//! marker, every write of the deposed one is refused (`wrong last
//! sequence`), whenever it arrives: its commit fails, its server stops and
//! tells nobody anything more. The new owner reads back every record
//! before its own marker, so nothing the old one had acknowledged is
//! missed. (The header that names another subject needs nats-server 2.11
//! or later; this crate needs 2.12 for the batches.)
//!
//! A group commit goes to the servers as one atomic batch (nats-server
//! 2.12 and later; up to 1,000 records, stored whole or not at all, one
//! round trip), its first message carrying the fence. A batch whose answer
//! was lost (a server died, a stream leader moved) is simply sent again: a
//! record stored twice is the same latest state of its trip.

use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, consumer, context::PublishErrorKind, stream};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use dispatch_core::engine::{LogRecord, TripRecord};
use dispatch_core::ids::{DriverId, TripId};
use dispatch_store::format::{StoredTrip, TriedEntry};
use dispatch_store::{Recovered, StoreError, TripStore};
use futures::StreamExt;
use jetstream::message::OutboundMessage;
use jetstream_extra::batch_publish::BatchPublishExt;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::ClusterError;

/// Where one shard's records live.
#[derive(Debug, Clone)]
pub struct Shard {
    /// The stream's name.
    pub stream: String,
    /// The subject prefix (`dispatch.s0`).
    pub prefix: String,
}

impl Shard {
    /// Shard `n`.
    pub fn new(n: u32) -> Self {
        Self { stream: format!("DISPATCH_SHARD_{n}"), prefix: format!("dispatch.s{n}") }
    }

    fn whole(&self, trip: u64) -> String {
        format!("{}.t.{trip}.r", self.prefix)
    }

    fn tried(&self, trip: u64, driver: &str) -> String {
        let mut subject = format!("{}.t.{trip}.x.", self.prefix);
        for byte in driver.as_bytes() {
            subject.push_str(&format!("{byte:02x}"));
        }
        subject
    }

    fn trip_subjects(&self, trip: u64) -> String {
        format!("{}.t.{trip}.>", self.prefix)
    }

    fn marker(&self) -> String {
        format!("{}.epoch", self.prefix)
    }

    /// Creates the stream if it is missing (file storage, `replicas`
    /// copies, one message per subject).
    pub async fn ensure(&self, js: &jetstream::Context, replicas: usize) -> Result<stream::Stream, ClusterError> {
        js.get_or_create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::Nats(format!("stream {}: {e}", self.stream)))
    }
}

/// What an owner writes when it takes over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Marker {
    /// One more than the last owner's: offer ids are unique to a boot.
    pub boot: u64,
    /// Trip ids below this were minted already (kept across purges).
    pub next_trip: u64,
    /// Who wrote it.
    pub node: String,
    /// The lease epoch it was written under.
    pub epoch: u64,
}

/// The open replicated log of one shard, for the owner's commit stage.
pub struct ReplicatedLog {
    js: jetstream::Context,
    stream: stream::Stream,
    shard: Shard,
    runtime: Handle,
    /// This owner's marker's sequence: every write is fenced on it.
    fence: u64,
    pending: Vec<(String, Bytes)>,
    forgotten: Vec<TripId>,
    /// Trips read back, for [`TripStore::retain`].
    recovered: Vec<TripId>,
    marker: Marker,
    next_trip: u64,
}

/// Every record says which owner wrote it (the lease epoch), so anyone
/// can check that no deposed owner's write landed.
pub const EPOCH_HEADER: &str = "Dispatch-Epoch";

/// The header that makes the expected last subject sequence apply to
/// another subject (the marker's), nats-server 2.11 and later.
const FENCE_SUBJECT_HEADER: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// How long a write or read may wait for the servers.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Takes over shard `shard`'s log for `node` under lease `epoch`: writes
/// the marker (fencing off any earlier owner), then reads back every trip.
pub async fn open(
    client: async_nats::Client,
    shard: Shard,
    node: &str,
    epoch: u64,
) -> Result<(ReplicatedLog, Recovered), ClusterError> {
    let nats = |what: &str| {
        let what = what.to_owned();
        move |e: &dyn std::fmt::Display| ClusterError::Nats(format!("{what}: {e}"))
    };
    let mut js = jetstream::new(client);
    js.set_timeout(ACK_TIMEOUT);
    let stream = js.get_stream(&shard.stream).await.map_err(|e| nats("get the stream")(&e))?;
    let (previous, previous_at) = match stream.get_last_raw_message_by_subject(&shard.marker()).await {
        Ok(message) => (
            serde_json::from_slice::<Marker>(&message.payload)
                .map_err(|e| ClusterError::Nats(format!("the last owner's marker is unreadable: {e}")))?,
            message.sequence,
        ),
        Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => (Marker::default(), 0),
        Err(e) => return Err(nats("read the last marker")(&e)),
    };
    let mut marker =
        Marker { boot: previous.boot + 1, next_trip: previous.next_trip.max(1), node: node.to_owned(), epoch };
    // The marker goes in only on top of the marker just read: of two nodes
    // racing, one wins, and from then on the other's writes are refused.
    let payload = Bytes::from(serde_json::to_vec(&marker).map_err(|e| ClusterError::Nats(e.to_string()))?);
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload)
        .header(EPOCH_HEADER, epoch.to_string().as_str())
        .expected_last_subject_sequence(previous_at);
    let sent = js.send_publish(shard.marker(), publish).await.map_err(|e| nats("write the marker")(&e))?;
    let fence = match sent.await {
        Ok(ack) => ack.sequence,
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            return Err(ClusterError::Nats("another node took the log over first".into()));
        }
        Err(e) => return Err(nats("write the marker")(&e)),
    };
    let mut records = Vec::new();
    let mut unreadable = 0;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.t.>", shard.prefix),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("read the trips back")(&e))?;
    if consumer.cached_info().num_pending > 0 {
        let mut messages = consumer.messages().await.map_err(|e| nats("read the trips back")(&e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| nats("read the trips back")(&e))?;
            let (sequence, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(e) => return Err(nats("read a record's place")(&e)),
            };
            if sequence < fence {
                match decode(&shard, &message.subject, &message.payload) {
                    Some(record) => records.push(record),
                    None => unreadable += 1,
                }
            }
            if pending == 0 || sequence >= fence {
                break;
            }
        }
    }
    if unreadable > 0 {
        // Left where they are (never purged): a fixed build can read them.
        warn!(unreadable, stream = %shard.stream, "records that cannot be read back were skipped");
    }
    let log_records = records.len();
    let records = LogRecord::fold(records);
    let next_trip = records.iter().map(|r| r.trip.id.0 + 1).max().unwrap_or(1).max(marker.next_trip);
    marker.next_trip = next_trip;
    let recovered_ids = records.iter().map(|r| r.trip.id).collect();
    info!(stream = %shard.stream, boot = marker.boot, epoch, fence, log_records, trips = records.len(), "replicated trip log read back");
    let recovered = Recovered { records, next_trip, boot: marker.boot, log_records, unreadable, ..Default::default() };
    let log = ReplicatedLog {
        js,
        stream,
        shard,
        runtime: Handle::current(),
        fence,
        pending: Vec::new(),
        forgotten: Vec::new(),
        recovered: recovered_ids,
        marker,
        next_trip,
    };
    Ok((log, recovered))
}

/// A record read back, or `None` if it cannot be read.
fn decode(shard: &Shard, subject: &str, payload: &[u8]) -> Option<LogRecord> {
    let rest = subject.strip_prefix(&shard.prefix)?.strip_prefix(".t.")?;
    let mut parts = rest.split('.');
    let trip: u64 = parts.next()?.parse().ok()?;
    match parts.next()? {
        "r" => {
            let stored = StoredTrip::decode(payload).ok()?;
            (stored.id == trip).then_some(())?;
            TripRecord::try_from(stored).ok().map(LogRecord::Trip)
        }
        "x" => {
            let entry = TriedEntry::decode(payload).ok()?;
            (entry.trip == trip).then_some(())?;
            Some(LogRecord::Tried { trip: TripId(trip), driver: DriverId::new(&entry.driver).ok()? })
        }
        _ => None,
    }
}

fn replicated(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Replicated(format!("{what}: {e}"))
}

/// How long a write is retried (a server died, a stream leader moved)
/// before the owner gives up and steps down.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// How a write that was not acknowledged is sent again: soon at first, then
/// backing off (with jitter, so owners of several shards do not retry in
/// step) until [`RETRY_FOR`] has passed.
const RESEND: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(5))
    .with_max_delay(Duration::from_millis(500))
    .with_jitter()
    .without_max_times()
    .with_total_delay(Some(RETRY_FOR));

/// Why a write was not acknowledged.
#[derive(Debug)]
enum WriteError {
    /// The fence refused it: another owner's marker is newer (JetStream's
    /// "wrong last sequence", 10071). Final.
    Fenced(String),
    /// The servers were still applying this owner's previous write fenced
    /// on the same subject (10164; the check is made one write at a time):
    /// send it again at once.
    InProcess,
    /// Anything else (a server died, the stream's leader moved, a timeout):
    /// send it again, backing off.
    Other(String),
}

impl WriteError {
    /// Tells the kinds apart by the JetStream error code the servers
    /// answered with, wherever it sits in the chain of causes.
    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if let Some(api) = e.downcast_ref::<async_nats::jetstream::Error>() {
                match api.error_code() {
                    ErrorCode::STREAM_WRONG_LAST_SEQUENCE => return Self::Fenced(error.to_string()),
                    ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT => return Self::InProcess,
                    _ => {}
                }
            }
            cause = e.source();
        }
        Self::Other(error.to_string())
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fenced(cause) | Self::Other(cause) => f.write_str(cause),
            Self::InProcess => f.write_str("the previous fenced write is still being applied"),
        }
    }
}

/// The most records in one atomic batch (the server's limit).
const MAX_BATCH: usize = 1_000;

impl ReplicatedLog {
    /// Writes `messages` in order, fenced on this owner's marker, as atomic
    /// batches of up to [`MAX_BATCH`] (each stored whole or not at all, one
    /// round trip each); resends a batch whose answer did not come until
    /// [`RETRY_FOR`] has passed. Refused by the fence: stop at once.
    async fn write(&mut self, messages: Vec<(String, Bytes)>) -> Result<(), StoreError> {
        for batch in messages.chunks(MAX_BATCH) {
            let written = (|| self.write_batch(batch))
                .retry(RESEND)
                .when(|e| !matches!(e, WriteError::Fenced(_)))
                .adjust(
                    |e, after| if matches!(e, WriteError::InProcess) { after.map(|_| Duration::ZERO) } else { after },
                )
                .notify(|e, _| {
                    if let WriteError::Other(cause) = e {
                        warn!(%cause, records = batch.len(), "trip log batch not acknowledged; sending it again");
                    }
                })
                .await;
            match written {
                Ok(()) => {}
                Err(WriteError::Fenced(cause)) => {
                    return Err(StoreError::Replicated(format!(
                        "another node owns the log now (its marker is newer than ours): stepping down ({cause})"
                    )));
                }
                Err(other) => return Err(replicated("write", other.to_string())),
            }
        }
        Ok(())
    }

    async fn write_batch(&self, batch: &[(String, Bytes)]) -> Result<(), WriteError> {
        let epoch = self.marker.epoch.to_string();
        let fence = self.fence.to_string();
        let messages = batch.iter().enumerate().map(|(i, (subject, payload))| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(EPOCH_HEADER, epoch.as_str());
            // The batch's first message carries the fence: the whole batch
            // lands only while this owner's marker is the newest.
            if i == 0 {
                headers.insert(FENCE_SUBJECT_HEADER, self.shard.marker().as_str());
                headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, fence.as_str());
            }
            OutboundMessage { subject: subject.as_str().into(), payload: payload.clone(), headers: Some(headers) }
        });
        if batch.len() == 1 {
            // A batch of one is a plain publish.
            let Some(message) = messages.into_iter().next() else { return Ok(()) };
            let publish = jetstream::message::PublishMessage::build()
                .payload(message.payload)
                .headers(message.headers.unwrap_or_default());
            let ack = self.js.send_publish(message.subject, publish).await.map_err(|e| WriteError::of(&e))?;
            return ack.await.map(|_| ()).map_err(|e| WriteError::of(&e));
        }
        self.js
            .batch_publish_all()
            .ack_first(false)
            .timeout(ACK_TIMEOUT)
            .publish(futures::stream::iter(messages))
            .await
            .map(|_| ())
            .map_err(|e| WriteError::of(&e))
    }
}

impl TripStore for ReplicatedLog {
    fn append(&mut self, record: &LogRecord) -> Result<(), StoreError> {
        match record {
            LogRecord::Trip(record) => {
                let stored = StoredTrip::from(record);
                self.next_trip = self.next_trip.max(stored.id + 1);
                self.pending.push((self.shard.whole(stored.id), Bytes::from(stored.encode_to_vec())));
            }
            LogRecord::Tried { trip, driver } => {
                let entry = TriedEntry { trip: trip.0, driver: driver.to_string() };
                self.pending.push((self.shard.tried(trip.0, driver.as_str()), Bytes::from(entry.encode_to_vec())));
            }
            // Purged from the stream by `maintain`.
            LogRecord::Forget(trip) => self.forgotten.push(*trip),
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(&mut self.pending);
        let runtime = self.runtime.clone();
        runtime.block_on(self.write(messages))
    }

    fn retain(&mut self, keep: &mut dyn FnMut(TripId) -> bool) {
        let dropped: Vec<TripId> = self.recovered.drain(..).filter(|id| !keep(*id)).collect();
        self.forgotten.extend(dropped);
    }

    fn maintain(&mut self) -> Result<(), StoreError> {
        if self.forgotten.is_empty() {
            return Ok(());
        }
        let forgotten = std::mem::take(&mut self.forgotten);
        let runtime = self.runtime.clone();
        runtime.block_on(async {
            for trip in &forgotten {
                self.stream
                    .purge()
                    .filter(self.shard.trip_subjects(trip.0))
                    .await
                    .map_err(|e| replicated("purge a trip past its retention", e))?;
            }
            // The purged trips may have held the highest id: the marker
            // keeps the next one, so ids are never minted twice.
            if self.next_trip > self.marker.next_trip {
                self.marker.next_trip = self.next_trip;
                let payload = serde_json::to_vec(&self.marker).map_err(|e| replicated("marker", e))?;
                self.write(vec![(self.shard.marker(), Bytes::from(payload))]).await?;
                // The new marker is the fence from now on.
                let last = self
                    .stream
                    .get_last_raw_message_by_subject(&self.shard.marker())
                    .await
                    .map_err(|e| replicated("read the marker back", e))?;
                self.fence = last.sequence;
            }
            Ok(())
        })
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.commit()?;
        self.maintain()
    }
}
