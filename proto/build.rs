//! Compiles `arbor/tunnel/v1/tunnel.proto` and `arbor/inspect/v1/inspect.proto` with protox (a protobuf compiler in pure Rust, so no `protoc` is
//! needed) and generates the prost messages plus the tonic client (feature `client`) and server (feature
//! `server`) stubs. Also writes the file descriptor set, which servers hand to tonic-reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["arbor/tunnel/v1/tunnel.proto", "arbor/inspect/v1/inspect.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("arbor_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        // No `connect()` helper: clients build their own `Channel` (arbor-actors' connection actor does), so
        // this crate needs only tonic's codegen feature.
        .build_transport(false)
        // Record keys and values as `bytes::Bytes`: reads hand out the stored buffers without copying them.
        .bytes(".arbor.tunnel.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
