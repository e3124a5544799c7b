//! The front door: where a client's connection goes.
//!
//! Every node accepts clients on its public address. On the owner, the
//! connection is handed to the local gRPC server; on any other node it is
//! forwarded, byte for byte, to the owner's engine address (a TCP relay:
//! TLS, tokens and every call pass through unchanged, so a client sees
//! exactly a single node). When the owner changes, relayed connections to
//! the old one are cut, and the clients reconnect (to any node) as they
//! would after a restart.
//!
//! The engine address takes only relayed connections, and only while this
//! node owns the shard. The HTTP side, when there is one, has a front door
//! and an engine address of its own, routed the same way.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::lease::Role;

/// How long a connection that arrives while no owner is known waits for
/// one before it is closed.
const WAIT_FOR_OWNER: Duration = Duration::from_secs(10);

/// The local gRPC server's intake while this node serves; `None` otherwise.
#[derive(Clone, Default)]
pub struct Local(Arc<Mutex<Option<mpsc::Sender<TcpStream>>>>);

impl Local {
    /// Connections go to `intake` from now on.
    pub fn open(&self, intake: mpsc::Sender<TcpStream>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(intake);
    }

    /// No more connections go to the local server.
    pub fn close(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn intake(&self) -> Option<mpsc::Sender<TcpStream>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Hands `stream` to the local server; gives it back if none serves.
    async fn hand_over(&self, stream: TcpStream) -> Result<(), TcpStream> {
        match self.intake() {
            Some(intake) => intake.send(stream).await.map_err(|e| e.0),
            None => Err(stream),
        }
    }
}

/// Which of the owner's addresses a front door relays to.
pub type Pick = fn(&crate::lease::Holder) -> Option<String>;

/// Accepts clients on `public` and routes each (see the module docs): to
/// `local`, or to the owner's address that `pick` names.
pub async fn serve_public(public: TcpListener, role: watch::Receiver<Role>, local: Local, pick: Pick) {
    loop {
        let (stream, peer) = match public.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (role, local) = (role.clone(), local.clone());
        tokio::spawn(async move {
            debug!(%peer, "client connected");
            route(stream, role, local, pick).await;
        });
    }
}

/// Accepts connections relayed by other nodes on `engine`; closes them
/// unless this node serves.
pub async fn serve_engine(engine: TcpListener, local: Local) {
    loop {
        let Ok((stream, _)) = engine.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = local.clone();
        tokio::spawn(async move {
            // Refused: the relaying node learns of the new owner and its
            // client reconnects.
            let _ = local.hand_over(stream).await;
        });
    }
}

async fn route(mut stream: TcpStream, mut role: watch::Receiver<Role>, local: Local, pick: Pick) {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_OWNER;
    loop {
        match local.hand_over(stream).await {
            Ok(()) => return,
            Err(back) => stream = back,
        }
        let now = role.borrow_and_update().clone();
        if let Role::Follower(Some(holder)) = &now {
            // An owner without this side: nothing to relay to.
            let Some(to) = pick(holder) else { return };
            relay(stream, &to, role, now).await;
            return;
        }
        // Nobody known, or this node is taking over: wait for news.
        tokio::select! {
            changed = role.changed() => if changed.is_err() { return; },
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if tokio::time::Instant::now() > deadline {
            return;
        }
    }
}

/// Copies bytes both ways between the client and the owner's engine
/// address until either side closes or the owner changes.
async fn relay(mut client: TcpStream, engine: &str, mut role: watch::Receiver<Role>, now: Role) {
    let mut owner = match TcpStream::connect(engine).await {
        Ok(owner) => owner,
        Err(e) => {
            debug!(engine, cause = %e, "cannot reach the owner");
            return;
        }
    };
    let _ = owner.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut owner) => {}
        _ = role.wait_for(|r| *r != now) => debug!(engine, "owner changed: cutting a relayed connection"),
    }
}
