//! Geo-shards: the map cut into parts that separate engines own.
//!
//! The Earth is tiled by H3 cells at one resolution ([`RESOLUTION`], about
//! 250 km² a cell, so a metro area is a few cells), and the cells are
//! dealt into a fixed number of shards by a hash of the cell's index. A
//! point belongs to the shard of its cell; a pickup radius touches every
//! shard whose cells come within it. Both answers are pure functions of the
//! point and the shard count, the same on every node and in every version,
//! which is why the count is fixed when a cluster is created.
//!
//! # Layout
//!
//! - [`ShardMap`] (`map.rs`): the shard of a point, and the shards a
//!   pickup radius touches, exactly (never one too few).
//! - `sphere`: the distance from a point to a cell, edge by edge.
//! - [`placement`]: the shards spread evenly over the live nodes, moving as
//!   few as it can when a node joins or leaves.
//! - [`Home`] (`territory.rs`): a shard of the map as its engine's
//!   territory.
//! - [`LocalShards`] (`local.rs`): every shard's engine in one place and
//!   the routing between them, synchronous and deterministic.

mod local;
mod map;
pub mod placement;
mod sphere;
mod territory;

pub use local::LocalShards;
pub use map::{RESOLUTION, ShardMap};
pub use territory::Home;

use std::fmt;

/// One shard: `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The most shards a map may have: each shard is an engine with its own
/// lease and log, and past this the cells (about 2 million at
/// [`RESOLUTION`]) no longer spread evenly over them.
pub const MAX_SHARDS: u16 = 1024;

/// Why a shard map could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The shard count was 0 or past [`MAX_SHARDS`].
    #[error("the shard count must be 1 to {MAX_SHARDS} (got {0})")]
    BadCount(u32),
}
