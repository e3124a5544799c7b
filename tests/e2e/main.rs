//! End-to-end tests: a real server on 127.0.0.1:0, real gRPC clients, one
//! test per rule of the engine issue. Short timeouts (hundreds of
//! milliseconds) stand in for the defaults where a test waits for expiry.

mod bad_input;
mod concurrency;
mod drivers;
mod durability;
mod fleets;
mod harness;
mod limits;
mod loadgen;
mod matching;
mod operators;
mod overload;
mod rides;
mod roads;
mod security;
mod shards;
mod shutdown;
