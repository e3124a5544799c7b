//! Serving: binds, starts the server (a single node, or a cluster node)
//! and serves until a signal; and `dispatchd token`.

use std::process::ExitCode;
use std::time::Duration;

use dispatch_auth::Role;
use dispatch_server::ServerConfig;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::flags::{Flags, FsyncFlag, HttpListen, Subcommand};

/// `dispatchd token`: prints a token to stdout.
pub fn print_token(flags: &Flags, role: Role, sub: &str, ttl: Duration) -> ExitCode {
    let keys = match flags.keys() {
        Ok(Some(keys)) => keys,
        Ok(None) => {
            error!("dispatchd token needs --auth-secret-file (or DISPATCH_AUTH_SECRET_FILE)");
            return ExitCode::FAILURE;
        }
        Err(cause) => {
            error!(%cause, "cannot load the secret");
            return ExitCode::FAILURE;
        }
    };
    match keys.mint(role, sub, ttl) {
        Ok(token) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{token}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(cause) => {
            error!(%cause, "cannot mint a token");
            ExitCode::FAILURE
        }
    }
}

/// Everything after the flags: binds, starts the server and serves until a
/// signal.
pub async fn serve(flags: Flags) -> ExitCode {
    if let Some(Subcommand::Token { role, sub, ttl }) = &flags.command {
        return print_token(&flags, *role, sub, ttl.0);
    }
    let mut config = flags.server_config();
    match flags.keys() {
        Ok(keys) => config.auth = keys,
        Err(cause) => {
            error!(%cause, "cannot load the auth secret");
            return ExitCode::FAILURE;
        }
    }
    match flags.tls() {
        Ok(tls) => config.tls = tls,
        Err(cause) => {
            error!(%cause, "cannot load the TLS certificate or key");
            return ExitCode::FAILURE;
        }
    }
    if config.auth.is_none() {
        if flags.listen.ip().is_loopback() {
            warn!(
                "NO AUTHENTICATION: no --auth-secret-file, so every caller may act as any driver, rider, fleet or \
                 operator; serving on loopback only"
            );
        } else if flags.insecure {
            warn!(addr = %flags.listen, "NO AUTHENTICATION on a non-loopback address (--insecure): anyone who can reach this port can act as anyone");
        } else {
            error!(addr = %flags.listen, "refusing to serve a non-loopback address without --auth-secret-file (or --insecure)");
            return ExitCode::FAILURE;
        }
    }
    if let HttpListen::On(addr) = flags.http_listen
        && !addr.ip().is_loopback()
        && config.auth.is_none()
        && !flags.insecure
    {
        error!(%addr, "refusing to serve HTTP on a non-loopback address without --auth-secret-file (or --insecure)");
        return ExitCode::FAILURE;
    }
    if let Err(err) = std::fs::create_dir_all(&flags.data_dir) {
        error!(dir = %flags.data_dir.display(), cause = %err, "cannot create the data directory");
        return ExitCode::FAILURE;
    }
    match road_network(&flags).await {
        Ok(roads) => config.roads = roads.or(config.roads),
        Err(()) => return ExitCode::FAILURE,
    }
    let signalled = hook_signals();
    let listener = match TcpListener::bind(flags.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            error!(addr = %flags.listen, cause = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| flags.listen.to_string(), |a| a.to_string());
    if !flags.cluster.is_empty() {
        return run_cluster(&flags, config, listener, addr, signalled).await;
    }
    // The recorder goes in before the server starts, so the handles the
    // server takes record into it.
    let http = match flags.http_listen {
        HttpListen::Off => None,
        HttpListen::On(at) => match (TcpListener::bind(at).await, dispatch_http::Metrics::install()) {
            (Ok(listener), Ok(metrics)) => Some((listener, metrics)),
            (Err(err), _) => {
                error!(addr = %at, cause = %err, "cannot listen for HTTP (--http-listen off to go without)");
                return ExitCode::FAILURE;
            }
            (_, Err(err)) => {
                error!(cause = %err, "cannot set up metrics");
                return ExitCode::FAILURE;
            }
        },
    };
    if matches!(flags.fsync, FsyncFlag::Never) {
        warn!("--fsync never: trips survive a crash of this process but not of the machine; for tests only");
    }
    let http_config = dispatch_http::HttpConfig {
        keys: config.auth.clone(),
        open_metrics: flags.http_open_metrics,
        map_tile_url: flags.map_tile_url.clone(),
        roads: config.roads.clone(),
    };
    let server = match dispatch_server::Server::start(config).await {
        Ok(server) => server,
        Err(err) => {
            error!(cause = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signalled.await;
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http_addr = match http {
        None => "off".to_owned(),
        Some((listener, metrics)) => {
            let http_addr = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let app = dispatch_http::App { operator: server.operator(), metrics: Some(metrics), config: http_config };
            let stop = stopping(stop_rx.clone());
            tokio::spawn(async move {
                if let Err(err) = dispatch_http::serve(listener, app, stop).await {
                    error!(cause = %err, "HTTP side failed");
                }
            });
            http_addr
        }
    };
    info!(%addr, http = %http_addr, data_dir = %flags.data_dir.display(), "dispatchd listening");
    let grace = flags.shutdown_grace.0;
    let server = tokio::spawn(server.serve(listener, stopping(stop_rx.clone())));
    let served = async {
        match server.await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(err)) => {
                error!(cause = %err, "server failed");
                ExitCode::FAILURE
            }
            Err(err) => {
                error!(cause = %err, "server task failed");
                ExitCode::FAILURE
            }
        }
    };
    tokio::pin!(served);
    tokio::select! {
        code = &mut served => code,
        () = stopping(stop_rx) => match tokio::time::timeout(grace, served).await {
            Ok(code) => code,
            Err(_) => {
                warn!(grace = %flags.shutdown_grace, "calls still open after the grace period; exiting");
                ExitCode::SUCCESS
            }
        },
    }
}

/// Cluster mode: joins the NATS cluster and serves clients on `listener`,
/// as the owner or relaying to it, until a signal.
async fn run_cluster(
    flags: &Flags,
    config: ServerConfig,
    listener: TcpListener,
    addr: String,
    signalled: impl std::future::Future<Output = ()> + Send + 'static,
) -> ExitCode {
    // The HTTP side: a front door here like gRPC's, served by the owner.
    let side = match flags.http_listen {
        HttpListen::Off => None,
        HttpListen::On(at) => {
            let bound = (TcpListener::bind(at).await, TcpListener::bind(flags.cluster_http_listen).await);
            let (public, engine) = match bound {
                (Ok(public), Ok(engine)) => (public, engine),
                (Err(err), _) | (_, Err(err)) => {
                    error!(addr = %at, cause = %err, "cannot listen for HTTP (--http-listen off to go without)");
                    return ExitCode::FAILURE;
                }
            };
            let metrics = match dispatch_http::Metrics::install() {
                Ok(metrics) => metrics,
                Err(err) => {
                    error!(cause = %err, "cannot set up metrics");
                    return ExitCode::FAILURE;
                }
            };
            metrics.keep_up();
            let http_config = dispatch_http::HttpConfig {
                keys: config.auth.clone(),
                open_metrics: flags.http_open_metrics,
                map_tile_url: flags.map_tile_url.clone(),
                roads: config.roads.clone(),
            };
            let serve: dispatch_cluster::SideServe = std::sync::Arc::new(move |operator, connections, stop| {
                let app = dispatch_http::App { operator, metrics: Some(metrics.clone()), config: http_config.clone() };
                Box::pin(async move {
                    if let Err(err) = dispatch_http::serve_connections(connections, app, stop).await {
                        error!(cause = %err, "HTTP side failed");
                    }
                })
            });
            Some(dispatch_cluster::Side { public, engine, serve })
        }
    };
    let http_addr =
        side.as_ref().and_then(|s| s.public.local_addr().ok()).map_or_else(|| "off".to_owned(), |a| a.to_string());
    let node_id = flags.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        format!("{host}:{}", listener.local_addr().map(|a| a.port()).unwrap_or_default())
    });
    let cluster = dispatch_cluster::ClusterConfig {
        servers: flags.cluster.clone(),
        node_id: node_id.clone(),
        engine_listen: flags.cluster_listen,
        advertise: flags.cluster_advertise.clone(),
        replicas: usize::from(flags.cluster_replicas),
        lease_ttl: flags.lease_ttl.0,
        shards: flags.shards,
    };
    // A signal while joining (JetStream may take a while to answer) stops
    // the node there.
    let mut signalled = Box::pin(signalled);
    let joined = tokio::select! {
        joined = dispatch_cluster::Node::join(cluster, Duration::from_secs(60)) => joined,
        () = &mut signalled => {
            info!("stopped before joining the cluster");
            return ExitCode::SUCCESS;
        }
    };
    let node = match joined {
        Ok(node) => node,
        Err(cause) => {
            error!(%cause, "cannot join the cluster");
            return ExitCode::FAILURE;
        }
    };
    info!(%addr, http = %http_addr, node = %node_id, engine = %node.engine_addr(), "dispatchd listening");
    match node.run(listener, side, config, signalled).await {
        Ok(()) => {
            info!("dispatchd stopped");
            ExitCode::SUCCESS
        }
        Err(cause) => {
            error!(%cause, "cluster node failed");
            ExitCode::FAILURE
        }
    }
}

/// Hooks SIGINT and SIGTERM now (before the server says it is listening,
/// so a signal sent right after that line is never missed) and resolves
/// when one arrives.
fn hook_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => info!("SIGINT received"),
                        _ = term.recv() => info!("SIGTERM received"),
                    }
                }
                (Err(err), _) | (_, Err(err)) => {
                    warn!(cause = %err, "cannot hook SIGTERM/SIGINT; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            info!("SIGINT received");
        }
    }
}

/// A road network the engine ranks by.
type Roads = std::sync::Arc<dyn dispatch_core::roads::Roads>;

/// The road network drivers are ranked by, if the flags name one: an
/// extract (`--road-network`, prepared or read from the cache in the data
/// directory) or an OSRM server (`--router`, asked once to see that it
/// answers). `Err` once the reason is logged.
async fn road_network(flags: &Flags) -> Result<Option<Roads>, ()> {
    if flags.road_network.is_none() && flags.router.is_none() {
        return Ok(None);
    }
    let failed = |cause: &dyn std::fmt::Display, why: &str| -> Result<Option<Roads>, ()> {
        error!(%cause, "{why}");
        Err(())
    };
    if let Some(extract) = &flags.road_network {
        let cache = flags.data_dir.join("roads");
        let (extract, snap_m) = (extract.clone(), flags.road_snap_m);
        let load = move || dispatch_road::load(&extract, Some(&cache), snap_m).map(|loaded| (loaded, extract));
        return match tokio::task::spawn_blocking(load).await {
            Ok(Ok(((network, source), extract))) => {
                info!(extract = %extract.display(), nodes = network.nodes(), ?source, "ranking drivers by road");
                Ok(Some(std::sync::Arc::new(network)))
            }
            Ok(Err(err)) => failed(&err, "cannot load the road network"),
            Err(err) => failed(&err, "loading the road network failed"),
        };
    }
    let spec = flags.router.as_deref().unwrap_or_default();
    let router = match dispatch_osrm::Osrm::new(spec, flags.router_timeout.0, flags.road_snap_m, dispatch_osrm::TOP_KMH)
    {
        Ok(router) => router,
        Err(err) => return failed(&err, "--router"),
    };
    match tokio::task::spawn_blocking(move || router.check().map(|()| router)).await {
        Ok(Ok(router)) => {
            info!(router = router.base(), "ranking drivers by road, asking the router");
            Ok(Some(std::sync::Arc::new(router)))
        }
        Ok(Err(err)) => failed(&err, "the router does not answer"),
        Err(err) => failed(&err, "asking the router failed"),
    }
}
