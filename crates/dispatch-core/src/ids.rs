//! Identifiers that clients choose (drivers, riders, fleets, request keys)
//! and that the engine mints (trips, offers, sessions).
//!
//! Client-chosen ids are checked once, at the edge, to be 1 to 128 bytes; an
//! `Arc<str>` inside makes the many copies the engine keeps (index, trip,
//! offer, session tables) cheap.
//!
//! Driver ids have two namespaces, so that no fleet can take a name a
//! driver's own app will need: a fleet's drivers are named
//! `FLEET_ID/LOCAL_ID` (fleet ids may not contain [`FLEET_SEPARATOR`]), and
//! an app driver's id may not contain the separator at all.

use std::fmt;
use std::sync::Arc;

/// Longest client-chosen id, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Separates a fleet's id from its own name for a driver: `partner/p-1`.
pub const FLEET_SEPARATOR: char = '/';

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id.
        kind: &'static str,
    },
    /// The id was longer than [`MAX_ID_BYTES`].
    #[error("{kind} is {len} bytes; at most {MAX_ID_BYTES} are allowed")]
    TooLong {
        /// Which id.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The id contains a character reserved for another meaning.
    #[error("{kind} must not contain {reserved:?}")]
    Reserved {
        /// Which id.
        kind: &'static str,
        /// The reserved character.
        reserved: char,
    },
}

macro_rules! client_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, reserved: [$($reserved:expr),*]) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// A checked id: 1 to 128 bytes, without reserved characters.
            pub fn new(id: &str) -> Result<Self, IdError> {
                if id.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                if id.len() > MAX_ID_BYTES {
                    return Err(IdError::TooLong { kind: $kind, len: id.len() });
                }
                $(if id.contains($reserved) {
                    return Err(IdError::Reserved { kind: $kind, reserved: $reserved });
                })*
                Ok(Self(Arc::from(id)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// An id checked before, kept as text since (a packed ended
            /// trip): not checked again.
            #[allow(dead_code)]
            pub(crate) fn already_checked(id: &str) -> Self {
                Self(Arc::from(id))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

client_id!(
    /// A driver, as the driver app or its fleet names it.
    DriverId,
    "driver_id",
    reserved: []
);
client_id!(
    /// A rider, as the rider app names it.
    RiderId,
    "rider_id",
    reserved: []
);
client_id!(
    /// A partner fleet.
    FleetId,
    "fleet_id",
    reserved: [FLEET_SEPARATOR]
);
client_id!(
    /// A rider's idempotency key for one ride request.
    RequestId,
    "request_id",
    reserved: []
);

impl DriverId {
    /// Whether this is a fleet's name for a driver (it holds the separator).
    pub fn is_fleet_name(&self) -> bool {
        self.0.contains(FLEET_SEPARATOR)
    }

    /// Whether this id lies in `fleet`'s namespace: `FLEET_ID/` and at
    /// least one more byte.
    pub fn belongs_to(&self, fleet: &FleetId) -> bool {
        self.0
            .strip_prefix(fleet.as_str())
            .and_then(|rest| rest.strip_prefix(FLEET_SEPARATOR))
            .is_some_and(|local| !local.is_empty())
    }
}

/// A trip, minted by the engine from a sequence number: `t-` and the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TripId(pub u64);

/// An offer of one trip to one driver, minted by the engine: `o-` and the
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OfferId(pub u64);

/// One open stream (a driver's or a fleet's), minted by the shell; the engine
/// uses it to tell a live session from one that was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

macro_rules! minted_id {
    ($name:ident, $prefix:literal) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            /// Parses the text form; anything else is not an id this engine
            /// minted.
            fn from_str(s: &str) -> Result<Self, ()> {
                let digits = s.strip_prefix($prefix).ok_or(())?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                digits.parse().map($name).map_err(|_| ())
            }
        }
    };
}

minted_id!(TripId, "t-");
minted_id!(OfferId, "o-");
minted_id!(SessionId, "s-");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_checked() {
        assert!(DriverId::new("").is_err());
        assert!(DriverId::new(&"x".repeat(128)).is_ok());
        assert_eq!(RiderId::new(&"é".repeat(65)), Err(IdError::TooLong { kind: "rider_id", len: 130 }));
    }

    #[test]
    fn fleet_namespaces_do_not_overlap() {
        let id = |s| DriverId::new(s).unwrap_or_else(|e| panic!("{e}"));
        let fleet = |s| FleetId::new(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(FleetId::new("a/b"), Err(IdError::Reserved { kind: "fleet_id", reserved: '/' }));
        assert!(id("partner/p-1").belongs_to(&fleet("partner")));
        assert!(id("partner/x/y").belongs_to(&fleet("partner")));
        for (driver, owner) in
            [("partner/", "partner"), ("partner", "partner"), ("partnerx/1", "partner"), ("p/1", "partner")]
        {
            assert!(!id(driver).belongs_to(&fleet(owner)), "{driver} in {owner}");
        }
        assert!(id("a/1").is_fleet_name() && !id("a-1").is_fleet_name());
    }

    #[test]
    fn minted_ids_round_trip() {
        assert_eq!("t-42".parse::<TripId>(), Ok(TripId(42)));
        assert_eq!(OfferId(7).to_string(), "o-7");
        for bad in ["", "t-", "t-x", "o-1", "t-+1", "t-99999999999999999999999"] {
            assert!(bad.parse::<TripId>().is_err(), "{bad}");
        }
    }
}
