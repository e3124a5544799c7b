//! Who is calling and what they may do: the bearer token in the
//! `authorization` metadata, checked against the server's keys, and the
//! rules each service applies to it. Refusals are logged with the identity
//! and the peer address, never with the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use dispatch_auth::{Claims, Keys, Role};
use tonic::{Request, Status};
use tracing::warn;

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The server runs without a secret (loopback only): anyone may do
    /// anything, as before authentication existed.
    Open,
    /// A checked token.
    Token(Claims),
}

/// Checks callers' tokens. Cheap to clone.
#[derive(Clone, Default)]
pub struct Gate {
    keys: Option<Arc<Keys>>,
}

impl Gate {
    /// A gate over `keys`; `None` lets every caller in as [`Caller::Open`].
    pub fn new(keys: Option<Keys>) -> Self {
        Self { keys: keys.map(Arc::new) }
    }

    /// Who sent `request`: `UNAUTHENTICATED` if the token is missing,
    /// malformed, forged or expired.
    pub fn identify<T>(&self, request: &Request<T>, call: &'static str) -> Result<Caller, Status> {
        let Some(keys) = &self.keys else { return Ok(Caller::Open) };
        let peer = peer_of(request);
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|v| v.strip_prefix("Bearer ")) else {
            warn!(peer, call, "authentication failed: no bearer token");
            return Err(Status::unauthenticated("an `authorization: Bearer <token>` header is required"));
        };
        keys.verify(token.trim()).map(Caller::Token).map_err(|cause| {
            warn!(peer, call, %cause, "authentication failed");
            Status::unauthenticated(cause.to_string())
        })
    }
}

impl Caller {
    /// `PERMISSION_DENIED` unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], call: &'static str, peer: &str) -> Result<(), Status> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(claims) if roles.contains(&claims.role) => Ok(()),
            Caller::Token(claims) => {
                warn!(peer, call, role = %claims.role, sub = %claims.sub, "permission denied: wrong role");
                Err(Status::permission_denied(format!("a {} token may not call {call}", claims.role)))
            }
        }
    }

    /// `PERMISSION_DENIED` unless the caller speaks as `id` (its token's
    /// subject), or the server is open.
    pub fn require_subject(&self, id: &str, what: &'static str, peer: &str) -> Result<(), Status> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(claims) if claims.sub == id => Ok(()),
            Caller::Token(claims) => {
                warn!(peer, what, role = %claims.role, sub = %claims.sub, claimed = id, "permission denied: not its own id");
                Err(Status::permission_denied(format!("this token may act only as {}", claims.sub)))
            }
        }
    }

    /// Whether the caller may see a trip of `rider` driven by `driver`:
    /// the rider, the assigned driver, or an operator.
    pub fn may_see_trip(&self, rider: &str, driver: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Token(c) => match c.role {
                Role::Admin => true,
                Role::Rider => c.sub == rider,
                Role::Driver => !driver.is_empty() && c.sub == driver,
                Role::Fleet => false,
            },
        }
    }

    /// The rider whose trips this caller is limited to (`None`: any).
    /// Whether the caller holds an admin token. Not in open mode: there a
    /// cancel follows the rider's rules.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Token(c) if c.role == Role::Admin)
    }

    /// The rider a rider's token limits the caller to, if it does.
    pub fn rider_scope(&self) -> Option<&str> {
        match self {
            Caller::Token(c) if c.role != Role::Admin => Some(&c.sub),
            _ => None,
        }
    }

    /// Whose budget a caller's reads draw on: a rider's or a driver's
    /// token's subject. Operators (an admin token, or anyone on an open
    /// server, which listens on loopback only) are trusted, and not limited.
    pub fn read_budget(&self) -> Option<&str> {
        match self {
            Caller::Token(c) if c.role != Role::Admin => Some(&c.sub),
            Caller::Token(_) | Caller::Open => None,
        }
    }

    /// When the token stops being valid: open streams end then.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Caller::Open => None,
            Caller::Token(c) => Some(c.expires_at()),
        }
    }
}

/// The peer address of a request, for log lines.
pub fn peer_of<T>(request: &Request<T>) -> String {
    request.remote_addr().map_or_else(|| "unknown".to_owned(), |a: SocketAddr| a.to_string())
}
