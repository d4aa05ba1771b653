//! Compiles `core/proto/trainyard/v1/*.proto` into Rust without a system
//! `protoc`: `protox` parses the files into a `FileDescriptorSet`, and
//! `tonic-prost-build` generates prost messages plus tonic client and server
//! code from it. The encoded descriptor set is written next to the generated
//! code so the crate can serve gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

/// Proto files relative to the include root, one per line of the package.
const FILES: &[&str] = &["trainyard/v1/worker.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include_root = manifest_dir.join("..").join("core").join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", include_root.display());
    for file in FILES {
        println!(
            "cargo:rerun-if-changed={}",
            include_root.join(file).display()
        );
    }

    let fds = protox::compile(FILES, [&include_root])?;
    std::fs::write(
        out_dir.join("trainyard_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated client's `connect(dst)` constructor would collide
        // with the `Connect` rpc method; callers build a
        // `tonic::transport::Channel` and use `WorkerServiceClient::new`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
