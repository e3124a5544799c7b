//! Seeded generators and fixtures shared by tests and benches, so that both
//! build the same cities the same way and neither keeps its own copy.
//!
//! # Layout
//!
//! - [`geo`]: random points on the globe and around a centre.
//! - [`city`]: a seeded city of drivers and ride requests for the engine.
//! - [`roads`]: a generated road map with a river, two bridges and a
//!   one-way street, as OpenStreetMap XML.

pub mod city;
pub mod geo;
pub mod osrm;
pub mod roads;

pub use rand_chacha::ChaCha8Rng as Rng;

/// A seeded random number generator: the same seed gives the same city.
pub fn rng(seed: u64) -> Rng {
    rand::SeedableRng::seed_from_u64(seed)
}
