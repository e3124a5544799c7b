//! Time as the engine sees it: passed in by the caller, never read from a
//! clock, so every rule can be tested with virtual time and replayed.

use std::ops::Add;

/// Unix time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<i64> for Timestamp {
    type Output = Timestamp;

    /// `self` plus milliseconds, saturating.
    fn add(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}
