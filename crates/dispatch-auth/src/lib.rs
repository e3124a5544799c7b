//! Who is calling: signed bearer tokens (HMAC-SHA256 JWTs) carrying a role,
//! a subject and an expiry; minting them for operators and the load
//! harness, and checking them with key rotation.
//!
//! # Layout
//!
//! - [`Role`], [`Claims`]: what a token says.
//! - [`Keys`]: the server's current key and, during a rotation, the
//!   previous one; [`Keys::mint`] and [`Keys::verify`].
//! - [`bearer`]: the `authorization` header value for a token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a caller may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A driver's app: its own driver session, its own offers and trips.
    Driver,
    /// A rider's app: its own rides.
    Rider,
    /// A partner gateway: its own fleet session and the drivers it registered.
    Fleet,
    /// An operator: the admin API, and any trip.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Driver => "driver",
            Role::Rider => "rider",
            Role::Fleet => "fleet",
            Role::Admin => "admin",
        })
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: a driver, rider or fleet id (an operator's name for
    /// admin).
    pub sub: String,
    /// The role.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
}

impl Claims {
    /// When the token stops being accepted.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

/// Why a token was refused. The messages are safe to show the caller:
/// they never echo the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Not a token this server signed, or altered.
    #[error("invalid token signature")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Not a JWT, or missing a claim.
    #[error("malformed token")]
    Malformed,
    /// A key shorter than 32 bytes.
    #[error("the secret must be at least 32 bytes")]
    WeakSecret,
    /// The clock is before 1970.
    #[error("system clock before the Unix epoch")]
    Clock,
}

/// The least secret length: HMAC-SHA256 keys shorter than the hash are
/// guessable.
pub const MIN_SECRET_BYTES: usize = 32;

/// The signing key and, while a rotation is under way, the previous key,
/// accepted until its grace period ends.
#[derive(Clone)]
pub struct Keys {
    current: (EncodingKey, DecodingKey),
    previous: Option<(DecodingKey, SystemTime)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keys").field("previous", &self.previous.as_ref().map(|(_, until)| until)).finish()
    }
}

fn now_secs() -> Result<u64, AuthError> {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).map_err(|_| AuthError::Clock)
}

/// The secret in a key file: its contents without surrounding whitespace.
pub fn secret_from_file_contents(contents: &[u8]) -> &[u8] {
    contents.trim_ascii()
}

impl Keys {
    /// Keys from a secret (at least [`MIN_SECRET_BYTES`]).
    pub fn new(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::WeakSecret);
        }
        Ok(Self { current: (EncodingKey::from_secret(secret), DecodingKey::from_secret(secret)), previous: None })
    }

    /// Also accepts tokens signed with `previous` until `until`.
    pub fn with_previous(mut self, previous: &[u8], until: SystemTime) -> Result<Self, AuthError> {
        if previous.len() < MIN_SECRET_BYTES {
            return Err(AuthError::WeakSecret);
        }
        self.previous = Some((DecodingKey::from_secret(previous), until));
        Ok(self)
    }

    /// A token for `sub` in `role`, valid for `ttl`.
    pub fn mint(&self, role: Role, sub: &str, ttl: Duration) -> Result<String, AuthError> {
        let iat = now_secs()?;
        let claims = Claims { sub: sub.to_owned(), role, exp: iat.saturating_add(ttl.as_secs()), iat };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.current.0).map_err(|_| AuthError::Malformed)
    }

    /// The claims of a token signed with the current key, or with the
    /// previous one while its grace lasts; expired tokens are refused.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        match decode(token, &self.current.1) {
            Err(AuthError::BadSignature) => match &self.previous {
                Some((key, until)) if SystemTime::now() < *until => decode(token, key),
                _ => Err(AuthError::BadSignature),
            },
            other => other,
        }
    }
}

fn decode(token: &str, key: &DecodingKey) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(token, key, &validation).map(|data| data.claims).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Malformed,
        }
    })
}

/// The `authorization` metadata value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn keys(secret: &[u8]) -> Keys {
        Keys::new(secret).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let k = keys(SECRET);
        let token = k.mint(Role::Driver, "D123", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let claims = k.verify(&token).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((claims.role, claims.sub.as_str()), (Role::Driver, "D123"));
    }

    #[test]
    fn forged_altered_and_expired_tokens_are_refused() {
        let token = keys(OTHER).mint(Role::Admin, "mallory", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys(SECRET).verify(&token), Err(AuthError::BadSignature));
        let good = keys(SECRET).mint(Role::Rider, "r1", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        // Swap the payload for one claiming admin, keep the signature.
        let parts: Vec<&str> = good.split('.').collect();
        let forged_claims =
            keys(OTHER).mint(Role::Admin, "r1", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let forged = format!("{}.{}.{}", parts[0], forged_claims.split('.').nth(1).unwrap_or(""), parts[2]);
        assert_eq!(keys(SECRET).verify(&forged), Err(AuthError::BadSignature));
        let expired = keys(SECRET).mint(Role::Rider, "r1", Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(keys(SECRET).verify(&expired), Err(AuthError::Expired));
        assert_eq!(keys(SECRET).verify("not.a.jwt"), Err(AuthError::Malformed));
        assert_eq!(keys(SECRET).verify(""), Err(AuthError::Malformed));
    }

    #[test]
    fn the_previous_key_is_accepted_only_during_its_grace() {
        let old = keys(OTHER).mint(Role::Fleet, "f1", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let rotating = keys(SECRET)
            .with_previous(OTHER, SystemTime::now() + Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rotating.verify(&old).map(|c| c.sub), Ok("f1".to_owned()));
        let over = keys(SECRET).with_previous(OTHER, SystemTime::now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(over.verify(&old), Err(AuthError::BadSignature));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(Keys::new(b"short"), Err(AuthError::WeakSecret)));
    }
}
