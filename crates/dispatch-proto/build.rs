//! Generates the dispatch.v1 messages and services with protox (a protobuf
//! compiler in Rust), so building needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("dispatch/v1/dispatch.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    // Server reflection serves this descriptor set.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("dispatch_descriptor.bin"), fds.encode_to_vec())?;
    // `build_transport(false)`: the RPC named `Connect` would clash with the
    // generated `Client::connect(endpoint)`; clients are built with
    // `Client::new(channel)` instead.
    tonic_prost_build::configure().build_transport(false).codec_path("crate::codec::LeanCodec").compile_fds(fds)?;
    Ok(())
}
