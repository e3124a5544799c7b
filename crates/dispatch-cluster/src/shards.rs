//! The map's shards over the live nodes: how many there are (fixed when the
//! cluster is created), which nodes are live, and which node campaigns for
//! which shard's lease.
//!
//! - **The count** is kept in the bucket `dispatch_cluster` (no expiry),
//!   key `shards`, written by the first node of a new cluster. A node
//!   started with another count is refused ([`settle_count`]): the shard of
//!   a point is a function of the count, so two counts would be two maps.
//! - **The live nodes** each keep a key `node-<id in hex>` in the bucket
//!   `dispatch_nodes` (a node id may hold characters a key may not), put every third of the lease's time to live; the
//!   bucket's max age (the time to live) expires the key of a node that
//!   stopped, and a node shutting down deletes its own.
//! - **The keeper** ([`Keeper::run`]) looks at the live nodes and the
//!   leases every twelfth of the time to live and computes the placement
//!   (`dispatch_shard::placement::place`: every node computes the same from
//!   the same view, nobody is told). It runs a [`Lease`] for each shard
//!   that is free (every live node does, and the lease's `create` decides:
//!   a dead or failing owner is replaced as soon as its lease is gone) or
//!   that the placement gives it, and gives up the lease of a shard it
//!   holds that the placement gives another live node. Moving a shard is
//!   the failover path: the new owner takes the lease, writes its marker
//!   (the fence), reads the log back. A look that fails changes nothing.
//!   (A hand-off gives the lease up as the engine is told to stop, not
//!   after it has stopped; the fence keeps the log whole meanwhile. With
//!   one shard, the only count a cluster runs today, a live holder always
//!   keeps its shard, so no hand-off happens.)
//!
//! What this node is for each shard is published on one watch per shard,
//! as a [`Role`]: the owner's epoch, or who holds it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use dispatch_shard::placement;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::ClusterError;
use crate::lease::{self, Holder, Lease, Resign, Role};

/// The bucket holding what is fixed when the cluster is created.
pub const META_BUCKET: &str = "dispatch_cluster";
/// The key, in [`META_BUCKET`], of the shard count.
pub const COUNT_KEY: &str = "shards";
/// The bucket of the live nodes.
pub const NODES_BUCKET: &str = "dispatch_nodes";

/// The most shards a cluster runs today: one owner engine serves the whole
/// map; more need a front that routes each message to its shard's owner.
pub const SUPPORTED_SHARDS: u16 = 1;

/// The lease key of `shard`.
pub fn lease_key(shard: u16) -> String {
    format!("shard-{shard}")
}

/// Checks `count` against the cluster's: stores it if the cluster has
/// none yet (a new cluster), else refuses another.
pub async fn settle_count(js: &jetstream::Context, count: u16, replicas: usize) -> Result<(), ClusterError> {
    let store = crate::bucket(js, META_BUCKET, Duration::ZERO, replicas).await?;
    let stored = match store.entry(COUNT_KEY).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => Some(entry.value),
        Ok(_) => None,
        Err(e) => return Err(ClusterError::Nats(format!("cluster bucket: {e}"))),
    };
    let stored = match stored {
        Some(value) => value,
        None => {
            if count > SUPPORTED_SHARDS {
                return Err(ClusterError::Unsupported(format!(
                    "--shards {count}: a cluster runs its map as {SUPPORTED_SHARDS} shard for now \
                     (--shards above 1 splits it over engine threads on a single node)"
                )));
            }
            match store.create(COUNT_KEY, Bytes::from(count.to_string())).await {
                Ok(_) => {
                    info!(shards = count, "a new cluster: its map is in this many shards from now on");
                    return Ok(());
                }
                // Another node created it first: compare with its count.
                Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => match store.get(COUNT_KEY).await {
                    Ok(Some(value)) => value,
                    Ok(None) => return Err(ClusterError::Nats("the shard count vanished as it was read".into())),
                    Err(e) => return Err(ClusterError::Nats(format!("cluster bucket: {e}"))),
                },
                Err(e) => return Err(ClusterError::Nats(format!("cluster bucket: {e}"))),
            }
        }
    };
    let cluster = std::str::from_utf8(&stored).ok().and_then(|s| s.trim().parse::<u16>().ok());
    match cluster {
        Some(cluster) if cluster == count && count > SUPPORTED_SHARDS => Err(ClusterError::Unsupported(format!(
            "this cluster's map is in {count} shards, more than this version runs in a cluster ({SUPPORTED_SHARDS})"
        ))),
        Some(cluster) if cluster == count => Ok(()),
        Some(cluster) => Err(ClusterError::ShardCount { cluster, node: count }),
        None => Err(ClusterError::Nats(format!(
            "the cluster's shard count is unreadable ({:?} in {META_BUCKET}/{COUNT_KEY})",
            String::from_utf8_lossy(&stored)
        ))),
    }
}

/// Checks that a bucket whose keys expire (the leases, the live nodes)
/// expires them after `ttl`, this node's `--lease-ttl`: a node with
/// another would renew too seldom, or take its peers for dead.
pub async fn check_ttl(store: &kv::Store, ttl: Duration) -> Result<(), ClusterError> {
    let status = store.status().await.map_err(|e| ClusterError::Nats(format!("bucket status: {e}")))?;
    if status.max_age() == ttl {
        return Ok(());
    }
    Err(ClusterError::Unsupported(format!(
        "this cluster's lease TTL is {:?} (its {} bucket's max age); start this node with --lease-ttl {:?}, not {ttl:?}",
        status.max_age(),
        status.bucket(),
        status.max_age(),
    )))
}

/// Creates the live nodes' bucket if it is missing.
pub async fn ensure_nodes_bucket(
    js: &jetstream::Context,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    crate::bucket(js, NODES_BUCKET, ttl, replicas).await
}

/// What a node looks at and campaigns with; run by [`Keeper::run`].
pub struct Keeper {
    /// The leases.
    pub leases: kv::Store,
    /// The live nodes.
    pub nodes: kv::Store,
    /// This node, as its lease and its live key name it.
    pub me: Holder,
    /// The shard count.
    pub count: u16,
    /// The lease's time to live.
    pub ttl: Duration,
}

/// One shard's lease this node runs.
struct Campaign {
    resign: mpsc::Sender<Resign>,
    task: JoinHandle<()>,
}

impl Keeper {
    /// One watch per shard, each saying what this node is for it, and
    /// the senders [`Keeper::run`] takes.
    pub fn roles(count: u16) -> (Vec<Arc<watch::Sender<Role>>>, Vec<watch::Receiver<Role>>) {
        (0..count)
            .map(|_| {
                let (tx, rx) = watch::channel(Role::Follower(None));
                (Arc::new(tx), rx)
            })
            .unzip()
    }

    /// Keeps this node live, campaigns for the shards it is given and
    /// gives up the others, saying what it is for each on `roles`, until
    /// `release` closes. A shard's number on `release` gives its lease up
    /// (the owner's log failed): the node competes for it again a time to
    /// live later. On the way out the node gives up every lease it holds
    /// and deletes its live key, so the others take its shards at once.
    pub async fn run(self, roles: Vec<Arc<watch::Sender<Role>>>, mut release: mpsc::Receiver<u16>) {
        let poll = (self.ttl / 12).max(Duration::from_millis(50));
        let beat_every = self.ttl / 3;
        let live_key = live_key(&self.me.node);
        let value = match serde_json::to_vec(&self.me) {
            Ok(value) => Bytes::from(value),
            Err(e) => {
                warn!(cause = %e, "cannot encode this node's live key");
                return;
            }
        };
        let mut campaigns: BTreeMap<u16, Campaign> = BTreeMap::new();
        let mut beaten: Option<tokio::time::Instant> = None;
        let mut placed: Option<Vec<usize>> = None;
        loop {
            if beaten.is_none_or(|at| at.elapsed() >= beat_every) {
                match self.nodes.put(&live_key, value.clone()).await {
                    Ok(_) => beaten = Some(tokio::time::Instant::now()),
                    Err(e) => warn!(cause = %e, "cannot say this node is live"),
                }
            }
            // A look that fails or hangs changes nothing: a holder not
            // seen is not a free shard.
            match tokio::time::timeout(self.ttl / 3, self.look()).await {
                Ok(Some(view)) => self.steer(&view, &roles, &mut campaigns, &mut placed).await,
                Ok(None) | Err(_) => {
                    warn!(node = %self.me.node, "cannot see the live nodes and the leases; campaigns unchanged")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                got = release.recv() => match got {
                    Some(shard) => {
                        if let Some(campaign) = campaigns.get(&shard) {
                            let _ = campaign.resign.send(Resign::Retry).await;
                        }
                    }
                    None => break,
                },
            }
        }
        // Not live first, so that no look between the two gives this node
        // a shard it is giving up.
        if let Err(e) = self.nodes.delete(&live_key).await {
            warn!(cause = %e, "could not delete this node's live key; it expires on its own");
        }
        for (_, campaign) in std::mem::take(&mut campaigns) {
            let _ = campaign.resign.send(Resign::Leave).await;
            let _ = campaign.task.await;
        }
    }

    /// Campaigns for each shard that is free (nobody holds its lease:
    /// every live node campaigns, and the lease's `create` decides, so a
    /// dead or failing owner is replaced as soon as its lease is gone) or
    /// that the placement gives this node (its holder gives it up when it
    /// sees the same placement); stops campaigning for a shard another
    /// node holds, and gives up a shard this node holds that the placement
    /// gives another live node.
    async fn steer(
        &self,
        view: &View,
        roles: &[Arc<watch::Sender<Role>>],
        campaigns: &mut BTreeMap<u16, Campaign>,
        placed: &mut Option<Vec<usize>>,
    ) {
        let running = |campaigns: &BTreeMap<u16, Campaign>, shard: u16| {
            campaigns.get(&shard).is_some_and(|c| !c.task.is_finished())
        };
        for (shard, holder) in view.holders.iter().enumerate() {
            if !running(campaigns, shard as u16)
                && let Some(role) = roles.get(shard)
            {
                let next = Role::Follower(holder.clone());
                role.send_if_modified(|now| (*now != next).then(|| *now = next).is_some());
            }
        }
        let holders: Vec<Option<&str>> = view.holders.iter().map(|h| h.as_ref().map(|h| h.node.as_str())).collect();
        let Some(owners) = placement::place(self.count, &view.live, &holders) else { return };
        let mine = view.live.iter().position(|n| *n == self.me.node);
        for shard in 0..self.count {
            let given = mine.is_some_and(|me| owners.get(usize::from(shard)) == Some(&me));
            let holder = holders.get(usize::from(shard)).copied().flatten();
            let wanted = given || holder.is_none();
            match (wanted, running(campaigns, shard)) {
                (true, false) => {
                    let Some(role) = roles.get(usize::from(shard)).cloned() else { continue };
                    campaigns.insert(shard, self.campaign(shard, role));
                }
                (false, true) => {
                    if let Some(campaign) = campaigns.remove(&shard) {
                        if holder == Some(self.me.node.as_str()) {
                            info!(shard, node = %self.me.node, "shard placed on another node: giving it up");
                        }
                        let _ = campaign.resign.send(Resign::Leave).await;
                    }
                }
                _ => {}
            }
        }
        if placed.as_ref() != Some(&owners) {
            let per_node: BTreeMap<&str, usize> = view.live.iter().map(|n| (n.as_str(), 0)).collect();
            let per_node = owners.iter().fold(per_node, |mut per, &o| {
                if let Some(n) = view.live.get(o) {
                    *per.entry(n.as_str()).or_default() += 1;
                }
                per
            });
            info!(node = %self.me.node, ?per_node, "shards placed over the live nodes");
            *placed = Some(owners);
        }
    }

    /// Runs the lease of `shard`, its role mirrored onto `role`.
    fn campaign(&self, shard: u16, role: Arc<watch::Sender<Role>>) -> Campaign {
        let (resign, resign_rx) = mpsc::channel(1);
        let (own_tx, mut own_rx) = watch::channel(role.borrow().clone());
        let lease = Lease { kv: self.leases.clone(), key: lease_key(shard), me: self.me.clone(), ttl: self.ttl };
        let task = tokio::spawn(async move {
            let mirror = async move {
                while own_rx.changed().await.is_ok() {
                    let next = own_rx.borrow_and_update().clone();
                    role.send_if_modified(|now| (*now != next).then(|| *now = next).is_some());
                }
            };
            tokio::join!(lease.run(own_tx, resign_rx), mirror);
        });
        Campaign { resign, task }
    }

    /// The live nodes and every shard's holder, as the buckets say now;
    /// `None` if a bucket did not answer.
    async fn look(&self) -> Option<View> {
        let keys = self.nodes.keys().await.ok()?;
        let keys: Vec<String> = futures::TryStreamExt::try_collect(keys).await.ok()?;
        let mut live: Vec<String> = keys.iter().filter_map(|k| node_of_key(k)).collect();
        live.push(self.me.node.clone());
        live.sort();
        live.dedup();
        let holders = futures::future::join_all((0..self.count).map(|shard| lease::holder(&self.leases, shard))).await;
        let holders = holders.into_iter().collect::<Result<Vec<_>, _>>().ok()?;
        Some(View { live, holders })
    }
}

/// The key saying `node` is live.
fn live_key(node: &str) -> String {
    let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
    format!("node-{hex}")
}

/// The node a live key names, if it is one.
fn node_of_key(key: &str) -> Option<String> {
    let hex = key.strip_prefix("node-")?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// What a keeper saw.
struct View {
    /// The live nodes' ids, sorted.
    live: Vec<String>,
    /// Each shard's holder, if known.
    holders: Vec<Option<Holder>>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_live_key_names_its_node_whatever_its_characters() {
        for node in ["n1", "host.example:50051", "노드 1", ""] {
            let key = super::live_key(node);
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{key}");
            assert_eq!(super::node_of_key(&key).as_deref(), Some(node));
        }
        assert_eq!(super::node_of_key("node-6"), None);
        assert_eq!(super::node_of_key("shard-0"), None);
    }
}
