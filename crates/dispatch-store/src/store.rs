//! What the server needs of a trip log, whichever kind: [`TripStore`].
//! The local file log ([`crate::TripLog`]) is one; the cluster's replicated
//! stream (crate `dispatch-cluster`) is another.

use dispatch_core::engine::LogRecord;
use dispatch_core::ids::TripId;

use crate::StoreError;

/// A trip log as the server's commit stage uses it, on a thread of its
/// own: records appended, then made durable by one [`TripStore::commit`]
/// before anyone is told of them.
pub trait TripStore: Send {
    /// Appends a record; durable after the next [`TripStore::commit`]. A
    /// [`LogRecord::Forget`] lets the log drop the trip at its next
    /// compaction.
    fn append(&mut self, record: &LogRecord) -> Result<(), StoreError>;
    /// Makes everything appended so far durable; an error means nothing
    /// since the last commit may be taken as durable, and the server stops
    /// saying anything.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// After recovery: keeps only the trips `keep` says yes to (the engine
    /// dropped the others, past their retention).
    fn retain(&mut self, keep: &mut dyn FnMut(TripId) -> bool);
    /// Housekeeping between groups of commits (compaction, purges); never
    /// holds up appends for long.
    fn maintain(&mut self) -> Result<(), StoreError>;
    /// The last commit and housekeeping before the server stops.
    fn close(&mut self) -> Result<(), StoreError>;
}

impl TripStore for crate::TripLog {
    fn append(&mut self, record: &LogRecord) -> Result<(), StoreError> {
        crate::TripLog::append(self, record)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        crate::TripLog::commit(self)
    }

    fn retain(&mut self, keep: &mut dyn FnMut(TripId) -> bool) {
        crate::TripLog::retain(self, keep);
    }

    fn maintain(&mut self) -> Result<(), StoreError> {
        // Snapshots and spare log files are written on threads of their
        // own: appends and deliveries go on meanwhile.
        self.maintain_spare()?;
        match self.poll_compaction()? {
            false if self.compaction_due() => self.start_compaction(),
            _ => Ok(()),
        }
    }

    fn close(&mut self) -> Result<(), StoreError> {
        crate::TripLog::commit(self)?;
        self.finish_compaction()
    }
}
