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
//! Every write carries `Nats-Expected-Last-Sequence`: the stream's last
//! sequence as this owner believes it. Writes are pipelined (a group in
//! flight at once, the i-th expecting `last + i`), which is exact as long as
//! this owner is the only writer. A new owner first writes its marker, which
//! moves the stream's last sequence; from then on every write of a deposed
//! owner is refused (`wrong last sequence`), its commit fails, its server
//! stops and tells nobody anything more. The new owner reads back every
//! record before its marker, so nothing the old one had acknowledged is
//! missed.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use bytes::Bytes;
use dispatch_core::engine::{LogRecord, TripRecord};
use dispatch_core::ids::{DriverId, TripId};
use dispatch_store::format::{StoredTrip, TriedEntry};
use dispatch_store::{Recovered, StoreError, TripStore};
use futures::StreamExt;
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

/// The open replicated log of one shard, for the owner's outbound stage.
pub struct ReplicatedLog {
    js: jetstream::Context,
    stream: stream::Stream,
    shard: Shard,
    runtime: Handle,
    /// The stream's last sequence, as far as this owner knows: what the
    /// next write expects.
    last: u64,
    pending: Vec<(String, Bytes)>,
    forgotten: Vec<TripId>,
    /// Trips read back, for [`TripStore::retain`].
    recovered: Vec<TripId>,
    marker: Marker,
    next_trip: u64,
}

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
    let mut stream = js.get_stream(&shard.stream).await.map_err(|e| nats("get the stream")(&e))?;
    let previous = match stream.get_last_raw_message_by_subject(&shard.marker()).await {
        Ok(message) => serde_json::from_slice::<Marker>(&message.payload)
            .map_err(|e| ClusterError::Nats(format!("the last owner's marker is unreadable: {e}")))?,
        Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => Marker::default(),
        Err(e) => return Err(nats("read the last marker")(&e)),
    };
    let mut marker =
        Marker { boot: previous.boot + 1, next_trip: previous.next_trip.max(1), node: node.to_owned(), epoch };
    // Fence: the marker goes in only on top of the sequence just read, so
    // an earlier owner still writing makes it retry, and once it is in,
    // that owner's next write is refused.
    let mut tries = 0;
    let fence = loop {
        let last = stream.info().await.map_err(|e| nats("stream info")(&e))?.state.last_sequence;
        let payload = Bytes::from(serde_json::to_vec(&marker).map_err(|e| ClusterError::Nats(e.to_string()))?);
        let mut publish = jetstream::message::PublishMessage::build().payload(payload);
        if last > 0 {
            publish = publish.expected_last_sequence(last);
        }
        let sent = js.send_publish(shard.marker(), publish).await.map_err(|e| nats("write the marker")(&e))?;
        match sent.await {
            Ok(ack) => break ack.sequence,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(nats("write the marker")(&e)),
        }
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
        last: fence,
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

impl ReplicatedLog {
    async fn write(&mut self, messages: Vec<(String, Bytes)>) -> Result<(), StoreError> {
        let mut acks = Vec::with_capacity(messages.len());
        for (i, (subject, payload)) in messages.into_iter().enumerate() {
            let expect = self.last + i as u64;
            let publish = jetstream::message::PublishMessage::build().payload(payload).expected_last_sequence(expect);
            acks.push((expect, self.js.send_publish(subject, publish).await.map_err(|e| replicated("write", e))?));
        }
        let count = acks.len() as u64;
        for (expect, ack) in acks {
            let ack = ack.await.map_err(|e| match e.kind() {
                PublishErrorKind::WrongLastSequence => {
                    StoreError::Replicated("another node owns the log now (wrong last sequence): stepping down".into())
                }
                _ => replicated("write", e),
            })?;
            if ack.sequence != expect + 1 {
                return Err(replicated(
                    "write",
                    format!("stored at {} where {} was expected", ack.sequence, expect + 1),
                ));
            }
        }
        self.last += count;
        Ok(())
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

    fn forget(&mut self, trip: TripId) {
        self.forgotten.push(trip);
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
            }
            Ok(())
        })
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.commit()?;
        self.maintain()
    }
}
