//! Who owns a shard: a lease in a JetStream key-value bucket.
//!
//! The bucket (`dispatch_leases`, replicated like the trip log) keeps one
//! key per shard (`shard-0`), whose value names the holder and where its
//! engine listens. Its messages expire after the lease's time to live (the
//! bucket's max age), so a key nobody renews disappears.
//!
//! - **Taking it:** `create`, which succeeds only if the key is absent. The
//!   revision it returns is the **epoch**: key-value revisions are stream
//!   sequences, so they only grow, and no two owners ever share one.
//! - **Holding it:** `update` with the last revision, every third of the
//!   time to live. A renewal that fails because the revision moved means
//!   someone else holds it: step down at once.
//! - **Losing it:** an owner that has not renewed for two thirds of the
//!   time to live (by its own monotonic clock, counted from *before* the
//!   renewal was sent) steps down, so it stops acting before the servers
//!   can expire its key, as long as the two clocks' rates differ by less
//!   than a third. A paused process (SIGSTOP) finds this out at its first
//!   tick after waking; until then the trip log's fence refuses its writes.
//! - **Giving it up:** an owner whose log failed, or whose shard is placed
//!   on another node, deletes its key (only if the revision is still its
//!   own), so another node takes over without waiting for the key to
//!   expire.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::ClusterError;

/// The bucket holding the leases.
pub const BUCKET: &str = "dispatch_leases";

/// What the lease's value says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node's id (`--node-id`).
    pub node: String,
    /// Where its engine takes connections forwarded by other nodes.
    pub engine: String,
    /// Where its HTTP side takes them, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// What this node is for a shard, as the lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Another node owns it (`None`: nobody is known to, for now).
    Follower(Option<Holder>),
    /// This node owns it, under this epoch.
    Owner(u64),
}

/// Why a lease is given up, sent to [`Lease::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resign {
    /// The owner's log failed: give the lease up and compete again a time
    /// to live later.
    Retry,
    /// The shard is placed elsewhere, or the node is stopping: give the
    /// lease up and stop.
    Leave,
}

/// Who holds `shard`'s lease, as the bucket says now (`None`: nobody, or
/// a value this version cannot read); `Err` if the bucket does not answer.
pub async fn holder(kv: &kv::Store, shard: u16) -> Result<Option<Holder>, kv::EntryError> {
    Ok(match kv.entry(crate::shards::lease_key(shard)).await? {
        Some(entry) if entry.operation == kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
        _ => None,
    })
}

/// Creates the bucket if it is missing.
pub async fn ensure_bucket(js: &jetstream::Context, ttl: Duration, replicas: usize) -> Result<kv::Store, ClusterError> {
    crate::bucket(js, BUCKET, ttl, replicas).await
}

/// The lease on one shard, run by [`Lease::run`].
pub struct Lease {
    /// The bucket.
    pub kv: kv::Store,
    /// The shard's key.
    pub key: String,
    /// This node.
    pub me: Holder,
    /// The bucket's max age.
    pub ttl: Duration,
}

impl Lease {
    /// Takes, holds and gives up the lease, saying what this node is on
    /// `role`, until `resign` closes or says [`Resign::Leave`] (which gives
    /// the lease up if held). [`Resign::Retry`] gives it up and waits a
    /// time to live before competing again. A closed `resign` leaves a held
    /// lease to expire.
    pub async fn run(self, role: watch::Sender<Role>, mut resign: mpsc::Receiver<Resign>) {
        let renew_every = self.ttl / 3;
        let give_up_after = self.ttl * 2 / 3;
        let poll = (self.ttl / 12).max(Duration::from_millis(50));
        let value = match serde_json::to_vec(&self.me) {
            Ok(value) => Bytes::from(value),
            Err(e) => {
                warn!(cause = %e, "cannot encode the lease");
                return;
            }
        };
        loop {
            // Follower: try to take it; otherwise learn who holds it.
            let taken = tokio::select! {
                taken = self.kv.create(&self.key, value.clone()) => taken,
                got = resign.recv() => match got {
                    None | Some(Resign::Leave) => return,
                    Some(Resign::Retry) => continue,
                },
            };
            let (epoch, mut revision, mut renewed) = match taken {
                Ok(revision) => (revision, revision, Instant::now()),
                Err(e) => {
                    let holder = match self.kv.entry(&self.key).await {
                        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                            serde_json::from_slice::<Holder>(&entry.value).ok()
                        }
                        Ok(_) => None,
                        Err(_) => role.borrow().clone().holder(),
                    };
                    if !matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) {
                        warn!(cause = %e, "cannot reach the lease bucket");
                    }
                    role.send_if_modified(|now| {
                        let next = Role::Follower(holder);
                        (*now != next).then(|| *now = next).is_some()
                    });
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        got = resign.recv() => if matches!(got, None | Some(Resign::Leave)) { return; },
                    }
                    continue;
                }
            };
            info!(key = %self.key, epoch, node = %self.me.node, "lease taken: this node owns the shard");
            let _ = role.send(Role::Owner(epoch));
            let mut tick = tokio::time::interval(renew_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let resigned = loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    got = resign.recv() => match got {
                        Some(why) => break Some(why),
                        None => {
                            let _ = role.send(Role::Follower(None));
                            return;
                        }
                    },
                }
                let sent = Instant::now();
                if sent - renewed > give_up_after {
                    warn!(key = %self.key, epoch, silent_ms = (sent - renewed).as_millis() as u64, "lease not renewed in time: stepping down");
                    break None;
                }
                match tokio::time::timeout(renew_every, self.kv.update(&self.key, value.clone(), revision)).await {
                    Ok(Ok(next)) => {
                        revision = next;
                        renewed = sent;
                    }
                    Ok(Err(e)) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => {
                        warn!(key = %self.key, epoch, "lease taken by another node: stepping down");
                        break None;
                    }
                    Ok(Err(e)) => warn!(key = %self.key, epoch, cause = %e, "lease renewal failed"),
                    Err(_) => warn!(key = %self.key, epoch, "lease renewal timed out"),
                }
            };
            let _ = role.send(Role::Follower(None));
            if let Some(why) = resigned {
                if let Err(e) = self.kv.delete_expect_revision(&self.key, Some(revision)).await {
                    warn!(cause = %e, "could not give the lease up; it expires on its own");
                }
                info!(key = %self.key, epoch, ?why, "lease given up");
                match why {
                    Resign::Leave => return,
                    Resign::Retry => tokio::time::sleep(self.ttl).await,
                }
            }
        }
    }
}

impl Role {
    /// The other node holding the lease, if known.
    pub fn holder(self) -> Option<Holder> {
        match self {
            Role::Follower(holder) => holder,
            Role::Owner(_) => None,
        }
    }
}
