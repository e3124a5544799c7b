//! The `dispatch.v1` gRPC contract: code generated from
//! `proto/dispatch/v1/dispatch.proto`, and the checked conversions between
//! its messages and the core's types.
//!
//! # Layout
//!
//! - [`pb`]: the generated messages, clients and servers.
//! - [`codec`]: prost's codec with small starting buffers, used by all of
//!   them.
//! - [`convert`]: `TryFrom` from messages into core types (every client field
//!   checked, the error an [`InvalidInput`]) and `From` core types into
//!   messages.
//! - [`json`]: trips and stats as JSON for people's tools.
//! - [`stats`]: every count of `Stats` in one table, which `/metrics`,
//!   `/api/stats` and dispatchctl read.

pub mod codec;
pub mod convert;
pub mod json;
pub mod stats;

/// The generated `dispatch.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dispatch.v1");
}

/// The encoded file descriptor set of the contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dispatch_descriptor.bin"));

pub use convert::InvalidInput;
