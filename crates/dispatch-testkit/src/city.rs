//! A seeded city for the engine: drivers scattered around a centre.
