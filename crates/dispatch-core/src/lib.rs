//! The pure core of dispatch: domain types, geo maths, the driver index, the
//! trip state machine, the matcher and the [`Engine`] that owns them all.
//!
//! Nothing here reads a clock, opens a socket or spawns a task: time is an
//! argument and every output is an [`Effect`] for the caller to carry out.
//!
//! # Layout
//!
//! - [`geo`]: checked coordinates, haversine distance, unit-sphere vectors.
//! - [`ids`]: client-chosen ids (checked 1 to 128 bytes) and minted ids.
//! - [`service`]: service types and the set a driver serves.
//! - [`index`]: the R-tree of driver positions, exact nearest-first.
//! - [`trip`]: a trip and its status transitions.
//! - [`time`]: the millisecond timestamps the caller passes in.
//! - [`error`]: what the engine refuses, one enum.
//! - [`engine`]: the engine: sessions, matching, offers, trips, timers.
//! - [`territory`]: a shard's place on a map cut into shards, as the
//!   engine asks about it.
//! - [`roads`]: drives over a road network, as the engine asks about them.

pub mod engine;
pub mod error;
pub mod geo;
pub mod ids;
pub mod index;
pub mod roads;
pub mod service;
pub mod territory;
pub mod time;
pub mod trip;

pub use engine::{Effect, Engine};
pub use error::EngineError;
