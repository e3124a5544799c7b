//! How rides are matched, per service type.

use std::fmt;

use crate::service::ServiceType;

/// A matching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// Each request goes at once to the nearest offerable driver.
    Nearest,
    /// Requests and free drivers are gathered for `window_ms`, then given
    /// one min-cost assignment (pickup distance, with a cost for leaving a
    /// request unmatched that grows with its wait). A request that arrives
    /// when no other has arrived for a whole window is matched at once.
    Batch {
        /// The window, in milliseconds (at least 1).
        window_ms: i64,
    },
    /// Each request goes at once to its `k` nearest offerable drivers; the
    /// first to accept wins and the others see the offer withdrawn
    /// (`taken`). What the original KakaoTaxi call did: a ride is taken in
    /// the time of the quickest of `k` drivers, not of the nearest one.
    Broadcast {
        /// How many drivers at once (1 to [`MAX_BROADCAST`]).
        k: usize,
    },
}

/// The most drivers one broadcast goes to.
pub const MAX_BROADCAST: usize = 10;

impl Matching {
    /// How many drivers a request is offered to at once.
    pub fn fanout(&self) -> usize {
        match self {
            Self::Broadcast { k } => *k,
            Self::Nearest | Self::Batch { .. } => 1,
        }
    }
}

impl fmt::Display for Matching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nearest => write!(f, "nearest"),
            Self::Batch { window_ms } if window_ms % 1_000 == 0 => write!(f, "batch:{}s", window_ms / 1_000),
            Self::Batch { window_ms } => write!(f, "batch:{window_ms}ms"),
            Self::Broadcast { k } => write!(f, "broadcast:{k}"),
        }
    }
}

/// The longest batch window: a rider should not wait longer than this for
/// the engine to even look.
pub const MAX_WINDOW_MS: i64 = 60_000;

fn window(s: &str) -> Result<i64, String> {
    let (digits, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: i64 = digits.parse().map_err(|_| format!("{s:?}: a window is a duration such as 250ms or 2s"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1_000),
        _ => return Err(format!("{s:?}: a window is a duration such as 250ms or 2s")),
    };
    if !(1..=MAX_WINDOW_MS).contains(&ms) {
        return Err(format!("{s:?}: a window is from 1ms to {}s", MAX_WINDOW_MS / 1_000));
    }
    Ok(ms)
}

impl std::str::FromStr for Matching {
    type Err = String;

    /// `nearest`, `batch:W` with `W` such as `250ms` or `2s`, or
    /// `broadcast:K` with `K` from 1 to [`MAX_BROADCAST`].
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "nearest" {
            return Ok(Self::Nearest);
        }
        if let Some(w) = s.strip_prefix("batch:") {
            return Ok(Self::Batch { window_ms: window(w)? });
        }
        if let Some(k) = s.strip_prefix("broadcast:") {
            return match k.parse::<usize>() {
                Ok(k) if (1..=MAX_BROADCAST).contains(&k) => Ok(Self::Broadcast { k }),
                _ => Err(format!("{s:?}: broadcast goes to 1 to {MAX_BROADCAST} drivers (e.g. broadcast:3)")),
            };
        }
        Err(format!("{s:?}: a policy is `nearest`, `batch:W` (e.g. batch:2s) or `broadcast:K` (e.g. broadcast:3)"))
    }
}

/// The policy of each service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    /// For services not named.
    pub default: Matching,
    /// Per service (taxi, premium, van, designated driver); `None`: the
    /// default.
    pub per_service: [Option<Matching>; 4],
}

impl Default for Policies {
    fn default() -> Self {
        Self { default: Matching::Nearest, per_service: [None; 4] }
    }
}

fn slot(service: ServiceType) -> usize {
    match service {
        ServiceType::Taxi => 0,
        ServiceType::Premium => 1,
        ServiceType::Van => 2,
        ServiceType::DesignatedDriver => 3,
    }
}

impl Policies {
    /// The policy for `service`.
    pub fn of(&self, service: ServiceType) -> Matching {
        self.per_service[slot(service)].unwrap_or(self.default)
    }
}

impl std::str::FromStr for Policies {
    type Err = String;

    /// `batch:2s` (every service), or `taxi=batch:2s,premium=nearest`,
    /// or both (`batch:2s,premium=nearest`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut policies = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None => policies.default = part.parse()?,
                Some((service, policy)) => {
                    let service = match service.trim() {
                        "taxi" => ServiceType::Taxi,
                        "premium" => ServiceType::Premium,
                        "van" => ServiceType::Van,
                        "designated-driver" => ServiceType::DesignatedDriver,
                        other => return Err(format!("unknown service {other:?}")),
                    };
                    policies.per_service[slot(service)] = Some(policy.parse()?);
                }
            }
        }
        Ok(policies)
    }
}

/// A whole matching setting, as `dispatchd --matching` and every entry of
/// `dispatch-sim --compare` spell it: the policies, then options for every
/// service, `POLICIES[+accept:M][+forward:M]` (`batch:2s,premium=nearest+forward:1000`).
/// An option not given is left to its own flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchingSpec {
    /// The policy of each service.
    pub policies: Policies,
    /// `+accept:M`: the acceptance weight, metres.
    pub accept_weight_m: Option<f64>,
    /// `+forward:M`: the forward dispatch radius, metres.
    pub forward_dispatch_m: Option<f64>,
}

impl std::str::FromStr for MatchingSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('+');
        let policies = parts.next().unwrap_or_default().parse()?;
        let mut spec = Self { policies, accept_weight_m: None, forward_dispatch_m: None };
        for part in parts {
            let (name, metres) = part.split_once(':').ok_or_else(|| format!("{s:?}: {part:?} is not NAME:METRES"))?;
            let metres = metres.trim().parse::<f64>().map_err(|e| format!("{s:?}: {e}"))?;
            if !(0.0..=1_000_000.0).contains(&metres) {
                return Err(format!("{s:?}: {name} is 0 to 1,000,000 metres"));
            }
            match name.trim() {
                "accept" => spec.accept_weight_m = Some(metres),
                "forward" => spec.forward_dispatch_m = Some(metres),
                other => return Err(format!("{s:?}: unknown option {other:?} (accept or forward)")),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_fall_back_to_the_default() {
        let p: Policies = "batch:2s,premium=nearest,van=batch:250ms,designated-driver=broadcast:3"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.of(ServiceType::Taxi), Matching::Batch { window_ms: 2_000 });
        assert_eq!(p.of(ServiceType::Premium), Matching::Nearest);
        assert_eq!(p.of(ServiceType::Van), Matching::Batch { window_ms: 250 });
        assert_eq!(p.of(ServiceType::DesignatedDriver), Matching::Broadcast { k: 3 });
        assert_eq!(p.of(ServiceType::DesignatedDriver).to_string(), "broadcast:3");
        assert_eq!(p.default.to_string(), "batch:2s");
        for bad in [
            "batch:2",
            "batch:0s",
            "batch:90s",
            "fastest",
            "bus=nearest",
            "batch:-1s",
            "broadcast:0",
            "broadcast:11",
            "broadcast:",
        ] {
            assert!(bad.parse::<Policies>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_matching_spec_is_policies_then_options() {
        let spec: MatchingSpec =
            "batch:2s,premium=nearest+forward:1000+accept:500".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.policies.of(ServiceType::Taxi), Matching::Batch { window_ms: 2_000 });
        assert_eq!(spec.policies.of(ServiceType::Premium), Matching::Nearest);
        assert_eq!((spec.forward_dispatch_m, spec.accept_weight_m), (Some(1_000.0), Some(500.0)));
        let plain: MatchingSpec = "nearest".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (plain.policies, plain.forward_dispatch_m, plain.accept_weight_m),
            (Policies::default(), None, None)
        );
        for bad in ["nearest+forward", "nearest+forward:-1", "nearest+fast:3", "fastest+forward:100"] {
            assert!(bad.parse::<MatchingSpec>().is_err(), "{bad}");
        }
    }
}
