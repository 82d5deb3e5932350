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
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".cairn.peer")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&files.map(|f| root.join(f)), &[root])?;
    // serde for etcd's messages in the protobuf JSON mapping, as etcd's HTTP gateway speaks it
    // (grpc-gateway's JSONPb with `OrigName`): the proto's own field names, 64-bit integers as
    // strings, bytes as base64, enums by name, fields at their default value left out.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])?;
    Ok(())
}
