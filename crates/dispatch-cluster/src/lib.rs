//! Cluster mode: several `dispatchd` nodes over a NATS JetStream cluster,
//! so that no single machine's death stops dispatch or loses a trip.
//!
//! - One node at a time **owns** the shard (the whole map is shard 0; the
//!   design keys everything by shard): it holds the lease ([`lease`]), runs
//!   the engine, and writes the trip log to a replicated JetStream stream
//!   ([`log`]), fenced so that a deposed owner cannot write.
//! - Which node campaigns for which shard's lease is the placement of the
//!   shards over the live nodes ([`shards`]), which also keeps the shard
//!   count, fixed when the cluster is created.
//! - Every node takes clients ([`front`]): the owner serves them, the
//!   others relay their connections to the owner.
//! - When the owner dies, its lease expires, another node takes it, reads
//!   the log back with the single node's recovery rules, and serves; the
//!   clients reconnect as after a restart and find their trips.
//!
//! [`run`] is a node.

pub mod front;
pub mod lease;
pub mod log;
pub mod shards;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use dispatch_server::{OpenedLog, Operator, Server, ServerConfig, ServerError};
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info, warn};

use crate::lease::{Holder, Role};
use crate::shards::Keeper;
use backon::{ExponentialBuilder, Retryable};

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS refused or failed a request.
    #[error("NATS: {0}")]
    Nats(String),
    /// This node's `--shards` is not the cluster's.
    #[error(
        "this cluster's map is in {cluster} shard(s), fixed when it was created; this node was started with \
         --shards {node} (start it with --shards {cluster})"
    )]
    ShardCount {
        /// The cluster's count.
        cluster: u16,
        /// This node's.
        node: u16,
    },
    /// Something this version does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
}

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS servers (`nats://127.0.0.1:4222`, ...).
    pub servers: Vec<String>,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// Where this node's engine takes connections other nodes relay.
    pub engine_listen: SocketAddr,
    /// The engine address other nodes are told (default: the bound one).
    pub advertise: Option<String>,
    /// Copies JetStream keeps of the log and the lease (3 for a
    /// three-server cluster, 1 for a single server).
    pub replicas: usize,
    /// The lease's time to live: an owner that dies is replaced after at
    /// most this, plus reading the log back.
    pub lease_ttl: Duration,
    /// The map's shard count (`--shards`), which must be the cluster's
    /// (see [`shards::settle_count`]).
    pub shards: u16,
}

/// Serves a side service (the HTTP side) for the owner: its engine's
/// [`Operator`], the connections to serve, and when to stop.
pub type SideServe = std::sync::Arc<
    dyn Fn(Operator, mpsc::Receiver<tokio::net::TcpStream>, BoxFuture<'static, ()>) -> BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// A second service the owner runs beside gRPC (the HTTP side: metrics,
/// the live map), with a front door on every node like gRPC's.
pub struct Side {
    /// Where clients reach it on this node.
    pub public: TcpListener,
    /// Where the owner takes connections relayed by other nodes.
    pub engine: TcpListener,
    /// Serves it while this node owns the shard.
    pub serve: SideServe,
}

/// A node listening, not yet running: [`Node::run`] runs it.
pub struct Node {
    config: ClusterConfig,
    client: async_nats::Client,
    keeper: Keeper,
    shard: log::Shard,
    engine: TcpListener,
}

impl Node {
    /// Connects to NATS (waiting up to `wait` for JetStream to be ready),
    /// makes sure the stream and the lease bucket exist, and binds the
    /// engine address.
    pub async fn join(config: ClusterConfig, wait: Duration) -> Result<Self, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("dispatchd {}", config.node_id))
            .retry_on_initial_connect()
            .connect(config.servers.clone())
            .await
            .map_err(|e| ClusterError::Nats(format!("connect: {e}")))?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(2));
        let shard = log::Shard::new(0);
        // A cluster just started elects its JetStream leader a few seconds
        // after the servers listen: retry until it answers, for `wait`.
        let ready = || async {
            shard.ensure(&js, config.replicas).await?;
            let leases = lease::ensure_bucket(&js, config.lease_ttl, config.replicas).await?;
            let nodes = shards::ensure_nodes_bucket(&js, config.lease_ttl, config.replicas).await?;
            Ok::<_, ClusterError>((leases, nodes))
        };
        let retried = ready
            .retry(backoff(Duration::from_millis(100), Duration::from_secs(2)))
            .notify(|e, _| warn!(cause = %e, "JetStream not ready yet; retrying"));
        let (leases, nodes) = tokio::time::timeout(wait, retried)
            .await
            .map_err(|_| ClusterError::Nats(format!("JetStream did not answer within {wait:?}")))??;
        // Known once connected (JetStream answered above).
        let version = client.server_info().version;
        if !supported(&version) {
            return Err(ClusterError::Nats(format!(
                "nats-server {version} is too old: cluster mode needs 2.12 or later (fenced atomic batches)"
            )));
        }
        shards::check_ttl(&leases, config.lease_ttl).await?;
        shards::check_ttl(&nodes, config.lease_ttl).await?;
        shards::settle_count(&js, config.shards, config.replicas).await?;
        let engine = TcpListener::bind(config.engine_listen)
            .await
            .map_err(|cause| ClusterError::Listen { addr: config.engine_listen, cause })?;
        let bound = engine.local_addr().map_err(|cause| ClusterError::Listen { addr: config.engine_listen, cause })?;
        let advertise = config.advertise.clone().unwrap_or_else(|| bound.to_string());
        let keeper = Keeper {
            leases,
            nodes,
            me: Holder { node: config.node_id.clone(), engine: advertise, http: None },
            count: config.shards,
            ttl: config.lease_ttl,
        };
        Ok(Self { config, client, keeper, shard, engine })
    }

    /// Where other nodes reach this node's engine.
    pub fn engine_addr(&self) -> &str {
        &self.keeper.me.engine
    }

    /// Serves clients on `public` until `shutdown` resolves: relays them
    /// while another node owns the shard, serves them while this one does.
    pub async fn run(
        self,
        public: TcpListener,
        side: Option<Side>,
        server: ServerConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ClusterError> {
        let Self { config, client, mut keeper, shard, engine } = self;
        let side_local = front::Local::default();
        let mut side_serve = None;
        let mut side_fronts = Vec::new();
        let (role_txs, roles) = Keeper::roles(keeper.count);
        let Some(mut role) = roles.into_iter().next() else {
            return Err(ClusterError::Unsupported("a map of no shards".into()));
        };
        if let Some(Side { public, engine, serve }) = side {
            keeper.me.http = engine.local_addr().ok().map(|a| a.to_string());
            side_fronts
                .push(tokio::spawn(front::serve_public(public, role.clone(), side_local.clone(), |h| h.http.clone())));
            side_fronts.push(tokio::spawn(front::serve_engine(engine, side_local.clone())));
            side_serve = Some(serve);
        }
        let (release, release_rx) = mpsc::channel(1);
        let keeper_task = tokio::spawn(keeper.run(role_txs, release_rx));
        let local = front::Local::default();
        let fronts = [
            tokio::spawn(front::serve_public(public, role.clone(), local.clone(), |h| Some(h.engine.clone()))),
            tokio::spawn(front::serve_engine(engine, local.clone())),
        ];
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        loop {
            // Wait to own the shard (or to be told to stop).
            let epoch = tokio::select! {
                owner = role.wait_for(|r| matches!(r, Role::Owner(_))) => match owner.map(|r| r.clone()) {
                    Ok(Role::Owner(epoch)) => epoch,
                    _ => break,
                },
                () = stopped(stop.clone()) => break,
            };
            let side = side_serve.as_ref().map(|serve| (serve.clone(), side_local.clone()));
            let served =
                own(&config, &client, &shard, epoch, &server, &local, side, role.clone(), stopped(stop.clone())).await;
            local.close();
            side_local.close();
            let still_owner = *role.borrow() == Role::Owner(epoch);
            match served {
                Ok(()) if *stop.borrow() => break,
                Ok(()) => info!(epoch, "no longer the owner: relaying to the next one"),
                Err(cause) => error!(epoch, %cause, "stopped serving as the owner"),
            }
            if still_owner {
                // The log failed under us (fenced, or NATS lost): give the
                // lease up so a healthy node takes over at once.
                let _ = release.send(0).await;
                let _ = role.wait_for(|r| *r != Role::Owner(epoch)).await;
            }
        }
        drop(release);
        let _ = keeper_task.await;
        for front in fronts.into_iter().chain(side_fronts) {
            front.abort();
        }
        Ok(())
    }
}

/// The key-value bucket `name`, made if it is missing: one value a key,
/// kept `max_age` (zero: for ever), on file, on `replicas` servers.
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
    use async_nats::jetstream::{kv, stream::StorageType};
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                history: 1,
                max_age,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::Nats(format!("bucket {name}: {e}"))),
    }
}

/// The gauge naming the owner's epoch (`/metrics`).
pub const EPOCH_GAUGE: &str = "dispatch_cluster_epoch";

/// Retries that back off from `first` to at most `most` between attempts,
/// with jitter (so nodes retrying together do not stay in step), for as
/// long as the caller's condition holds.
fn backoff(first: Duration, most: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new().with_min_delay(first).with_max_delay(most).with_jitter().without_max_times()
}

/// Whether a nats-server version (`2.15.1`) has what the trip log needs:
/// atomic batches (2.12) fenced on another subject's sequence (2.11).
fn supported(version: &str) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 12)
}

/// Serves as the owner under `epoch` until the lease is lost, the log
/// fails, or `shutdown`.
#[allow(clippy::too_many_arguments)]
async fn own(
    config: &ClusterConfig,
    client: &async_nats::Client,
    shard: &log::Shard,
    epoch: u64,
    server: &ServerConfig,
    local: &front::Local,
    side: Option<(SideServe, front::Local)>,
    mut role: watch::Receiver<Role>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    // Reading back needs the stream's leader: right after a server died
    // one may be in election. Try again while the lease is still ours.
    let read_back = || async {
        match tokio::time::timeout(config.lease_ttl, log::open(client.clone(), shard.clone(), &config.node_id, epoch))
            .await
        {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let (store, recovered) = read_back
        .retry(backoff(Duration::from_millis(50), Duration::from_secs(1)))
        .when(|_| *role.borrow() == Role::Owner(epoch))
        .notify(|cause, _| warn!(epoch, %cause, "cannot read the trip log back yet; trying again"))
        .await
        .map_err(|failed| format!("lease lost while reading the log back: {failed}"))?;
    let opened = OpenedLog { store: Box::new(store), recovered };
    let server = ServerConfig { node: config.node_id.clone(), ..server.clone() };
    let server = Server::start_with_log(server, opened).await.map_err(|e| e.to_string())?;
    let (intake, connections) = mpsc::channel(1024);
    local.open(intake);
    // The side service stops when the engine does.
    let (side_stop, side_stopped) = watch::channel(false);
    if let Some((serve, side_local)) = side {
        let (intake, connections) = mpsc::channel(256);
        side_local.open(intake);
        let mut stopped = side_stopped.clone();
        let stop: BoxFuture<'static, ()> = Box::pin(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        tokio::spawn(serve(server.operator(), connections, stop));
    }
    info!(epoch, took_ms = started.elapsed().as_millis() as u64, node = %config.node_id, "owner serving");
    // The epoch only grows, one step per change of owner: Prometheus'
    // `changes()` over it counts failovers, whichever node answers.
    metrics::describe_gauge!(EPOCH_GAUGE, "The epoch of the shard's owner: it grows by one at every change of owner.");
    metrics::gauge!(EPOCH_GAUGE).set(epoch as f64);
    let lost = async move {
        tokio::select! {
            _ = role.wait_for(|r| *r != Role::Owner(epoch)) => warn!(epoch, "lease lost: stopping the engine"),
            () = shutdown => {}
        }
    };
    let incoming = futures::StreamExt::map(ReceiverStream::new(connections), Ok::<_, std::io::Error>);
    let served = server.serve_connections(incoming, lost).await;
    let _ = side_stop.send(true);
    drop(side_stopped);
    match served {
        Ok(()) => Ok(()),
        Err(ServerError::TripLogFailed(cause)) => Err(format!("trip log: {cause}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_versions_from_2_12_are_supported() {
        assert!(super::supported("2.15.1"));
        assert!(super::supported("2.12.0"));
        assert!(super::supported("3.0.0-beta"));
        assert!(!super::supported("2.11.9"));
        assert!(!super::supported("2.9.10"));
        assert!(!super::supported(""));
    }
}
