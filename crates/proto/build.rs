//! Generates Rust from `proto/`: etcd's v3 API (client and server) and the peer RPC.
//! Needs `protoc` (Debian: protobuf-compiler); `scripts/test` installs it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "etcd/kv.proto",
        "etcd/auth.proto",
        "etcd/rpc.proto",
        "etcd/v3lock.proto",
        "etcd/v3election.proto",
        "cairn/peer.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".cairn.peer")
        .compile_protos(&files.map(|f| root.join(f)), &[root])?;
    Ok(())
}
