//! The command-line vocabulary that `dispatchd`, `dispatchctl`,
//! `dispatch-sim` and `dispatch-loadgen` share, so that one setting is
//! spelled one way everywhere:
//!
//! - [`Dur`]: every duration is humantime (`250ms`, `10s`, `1day`), or `0`;
//! - [`Connection`]: `--target`, `--tls-ca` and `--timeout`, for every tool
//!   that connects; [`Token`]: `--token` and `--token-file`;
//! - [`earlier`]: the integer spellings of earlier releases
//!   (`--tick-ms 1000`) kept as hidden flags, taken into today's flag with
//!   what to write instead.
//!
//! The output switch is `--json` everywhere (one JSON object per line, or a
//! report); `--auto-accept` means "assigned without an offer" wherever it is.
//!
//! # Layout
//!
//! - `lib.rs`: all of it; one idea each.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A duration on the command line: humantime (`10s`, `250ms`, `1h30m`), or
/// `0` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// `ms` milliseconds (none if negative).
    pub fn ms(ms: i64) -> Self {
        Dur(Duration::from_millis(ms.max(0).unsigned_abs()))
    }

    /// In whole milliseconds, as the engine counts time.
    pub fn as_ms(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    /// A clap value parser: any duration, zero included.
    pub fn any(s: &str) -> Result<Self, String> {
        s.parse()
    }

    /// A clap value parser: a millisecond or more.
    pub fn positive(s: &str) -> Result<Self, String> {
        match s.parse::<Dur>()? {
            Dur(d) if d >= Duration::from_millis(1) => Ok(Dur(d)),
            _ => Err(format!("{s:?} is not a positive duration (1ms or more)")),
        }
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("{s:?}: {e} (a duration such as 10s, 250ms, 24h)"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Takes an earlier spelling's value into today's flag: `Some` message to
/// log when the earlier spelling was used (and `into` was set from it, unless
/// today's flag was given too).
pub fn earlier<T: fmt::Display + Copy>(
    old: &str,
    new: &str,
    value: Option<T>,
    new_given: bool,
    into: &mut T,
) -> Option<String> {
    let value = value?;
    if new_given {
        return Some(format!("--{old} is ignored: --{new} is given too"));
    }
    *into = value;
    Some(format!("--{old} is deprecated and will go: write --{new} {value}"))
}

/// Where a tool connects, the same options for every tool.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's gRPC address: `http://HOST:PORT`, or `https://` for a
    /// TLS server (with `--tls-ca`).
    #[arg(long, env = "DISPATCH_TARGET", default_value = "http://127.0.0.1:50051", global = true)]
    pub target: String,
    /// The CA certificate (PEM) that signed the server's, for an `https://`
    /// target.
    #[arg(long, env = "DISPATCH_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// How long to wait for the server: to connect, and for each answer.
    #[arg(long, env = "DISPATCH_TIMEOUT", default_value = "10s", value_parser = Dur::positive, global = true)]
    pub timeout: Dur,
}

impl Connection {
    /// An endpoint for `target` (one of `--target`'s, for a tool that
    /// takes several) with TLS when `--tls-ca` is given and the connect
    /// timeout.
    pub fn endpoint(&self, target: &str) -> Result<Endpoint, String> {
        let mut endpoint = Endpoint::from_shared(target.to_owned())
            .map_err(|e| format!("{target}: {e}"))?
            .connect_timeout(self.timeout.0);
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("{target}: {e}"))?;
        }
        Ok(endpoint)
    }
}

/// The bearer token a tool sends, the same options for every tool that
/// speaks as one identity.
#[derive(Debug, Clone, clap::Args)]
pub struct Token {
    /// A bearer token (see `dispatchd token`).
    #[arg(long, env = "DISPATCH_TOKEN", global = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, env = "DISPATCH_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

impl Token {
    /// The token given, if any, trimmed.
    pub fn read(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(Some(token.trim().to_owned())),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_humantime_and_zero_and_print_back() {
        assert_eq!("10s".parse::<Dur>().map(Dur::as_ms), Ok(10_000));
        assert_eq!("250ms".parse::<Dur>().map(Dur::as_ms), Ok(250));
        assert_eq!("0".parse::<Dur>().map(Dur::as_ms), Ok(0));
        assert!("10".parse::<Dur>().is_err(), "a bare number has no unit");
        assert!(Dur::positive("0s").is_err());
        for d in [Dur::ms(0), Dur::ms(1), Dur::ms(1_500), Dur::ms(86_400_000), Dur(Duration::from_micros(100))] {
            assert_eq!(d.to_string().parse::<Dur>(), Ok(d), "{d}");
        }
    }

    #[test]
    fn an_earlier_spelling_is_taken_unless_todays_is_given() {
        let mut tick = Dur::ms(1_000);
        assert_eq!(earlier("tick-ms", "tick", None, false, &mut tick), None);
        let said = earlier("tick-ms", "tick", Some(Dur::ms(250)), false, &mut tick);
        assert_eq!(
            (tick, said.as_deref()),
            (Dur::ms(250), Some("--tick-ms is deprecated and will go: write --tick 250ms"))
        );
        let said = earlier("tick-ms", "tick", Some(Dur::ms(5)), true, &mut tick);
        assert_eq!((tick, said.as_deref()), (Dur::ms(250), Some("--tick-ms is ignored: --tick is given too")));
    }
}
