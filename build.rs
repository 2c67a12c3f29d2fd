//! Compiles the protobuf schemas in `proto/` with protox (pure Rust, no `protoc`) and prost-build.
//!
//! Also writes the compiled file descriptor set to `$OUT_DIR/enlace_descriptor.bin`, which the CLI
//! uses to read and print messages as proto3 JSON.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto/enlace/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("enlace_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    prost_build::Config::new()
        .bytes(["."])
        .enable_type_names()
        .compile_fds(fds)?;
    Ok(())
}
