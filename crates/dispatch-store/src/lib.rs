//! The trip log: every change of a trip's state, appended and made durable
//! before anyone is told of it, so a crash never loses a trip a rider or a
//! driver saw.
//!
//! The files in the data directory:
//!
//! - `trips.log`: the magic `DSPTLOG1`, then frames, each one record; in a
//!   pre-zeroed log (`trips.log.next`, written ahead and taken at a
//!   compaction), zeros after them to the end of the file.
//! - `trips.snapshot`: the magic `DSPSNAP1`, a frame holding the header
//!   (the last log sequence number it covers, the next trip id, the boot
//!   count), then one frame per retained trip. Written whole to a temporary
//!   file, synced and renamed, so it is either all there or not at all.
//! - `trips.log.prev`: while a snapshot is written in the background, the
//!   log it started from; read before `trips.log` if a crash left it.
//!
//! A frame is `u32` little-endian payload length, `u32` little-endian
//! CRC-32 (IEEE) of the payload, then the payload: a protobuf message (see
//! [`format`](mod@format)). A log never holds an empty frame (whose header
//! is all zeros): reading a log, one is where its zeros begin. Only a torn
//! tail is cut; other damage is set aside whole and read past (see
//! [`TripLog::open`]); it never refuses to start.
//!
//! # Layout
//!
//! - [`format`](mod@format): the records as protobuf messages and their conversion to
//!   and from the engine's types.
//! - `frame`: framing and checksums.
//! - [`log`]: [`TripLog`]: open, append and commit (`log`), recovery at
//!   open (`log/recover`), compaction into a snapshot (`log/compact`), the
//!   pre-zeroed spare file (`log/spare`).
//! - `store`: [`TripStore`], what the server needs of any trip log.

pub mod format;
mod frame;
pub mod log;
mod store;

pub use frame::MAX_PAYLOAD;
pub use log::{Fsync, Recovered, StoreError, TripLog};
pub use store::TripStore;
