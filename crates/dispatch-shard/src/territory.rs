//! The shard map as the engine's [`Territory`].

use dispatch_core::geo::LatLng;
use dispatch_core::territory::{Shard, Territory};

use crate::{ShardId, ShardMap};

/// One shard of a map: what its engine is told about where it stands.
#[derive(Debug, Clone, Copy)]
pub struct Home {
    /// The map.
    pub map: ShardMap,
    /// The shard.
    pub shard: ShardId,
}

impl Territory for Home {
    fn count(&self) -> Shard {
        self.map.count()
    }

    fn shard(&self) -> Shard {
        self.shard.0
    }

    fn shard_of(&self, point: LatLng) -> Shard {
        self.map.shard_of(point).0
    }

    fn room(&self, point: LatLng) -> (Shard, f64) {
        let (shard, room_m) = self.map.room(point);
        (shard.0, room_m)
    }

    fn shards_within(&self, point: LatLng, radius_m: f64) -> Vec<Shard> {
        self.map.shards_within(point, radius_m).into_iter().map(|s| s.0).collect()
    }
}
