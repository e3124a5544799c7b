//! Tokens for a secured server: minted from its secret, or read from a file
//! of ready-made ones (`role subject token` per line, as `dispatchd token`
//! prints them).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use dispatch_auth::{Keys, Role};
use tonic::Request;

/// How the harness proves who its simulated clients are.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// The server's secret: every token is minted as needed.
    secret: Option<Vec<u8>>,
    /// Ready-made tokens by role and subject.
    tokens: HashMap<(Role, String), String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the secret nor a token is ever printed.
        f.debug_struct("Credentials")
            .field("secret", &self.secret.is_some())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// The secret is unusable.
    #[error("{0}")]
    Secret(dispatch_auth::AuthError),
    /// A line of the tokens file is not `role subject token`.
    #[error("{file}:{line}: expected `role subject token`")]
    Line {
        /// Which file.
        file: String,
        /// Which line (from 1).
        line: usize,
    },
}

impl Credentials {
    /// Mint every token from the secret in `path`.
    pub fn from_secret_file(path: &Path) -> Result<Self, CredentialsError> {
        let bytes = std::fs::read(path).map_err(|e| CredentialsError::Read(path.display().to_string(), e))?;
        let secret = dispatch_auth::secret_from_file_contents(&bytes).to_vec();
        Keys::new(&secret).map_err(CredentialsError::Secret)?;
        Ok(Self { secret: Some(secret), tokens: HashMap::new() })
    }

    /// Use the tokens listed in `path`.
    pub fn from_tokens_file(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Read(path.display().to_string(), e))?;
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')) {
            let bad = || CredentialsError::Line { file: path.display().to_string(), line: n + 1 };
            let mut words = line.split_whitespace();
            let (Some(role), Some(sub), Some(token)) = (words.next(), words.next(), words.next()) else {
                return Err(bad());
            };
            let role = <Role as clap::ValueEnum>::from_str(role, true).map_err(|_| bad())?;
            tokens.insert((role, sub.to_owned()), token.to_owned());
        }
        Ok(Self { secret: None, tokens })
    }

    /// A token for `sub` acting as `role`, if there is one. An admin token
    /// listed for any subject serves for the harness's stats calls.
    pub fn token(&self, role: Role, sub: &str) -> Option<String> {
        if let Some(secret) = &self.secret {
            return Keys::new(secret).ok()?.mint(role, sub, Duration::from_secs(24 * 3_600)).ok();
        }
        self.tokens.get(&(role, sub.to_owned())).cloned().or_else(|| {
            (role == Role::Admin)
                .then(|| self.tokens.iter().find(|((r, _), _)| *r == Role::Admin))
                .flatten()
                .map(|(_, t)| t.clone())
        })
    }
}

/// `message` as `sub` acting as `role`, with a bearer token if the run has
/// credentials.
pub fn authorize<T>(credentials: Option<&Credentials>, role: Role, sub: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = credentials.and_then(|c| c.token(role, sub))
        && let Ok(value) = dispatch_auth::bearer(&token).parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
