//! Compile the protos with protox (pure Rust, no protoc) and generate tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build script compiled for a clone at
    // another path (sharing CARGO_TARGET_DIR) must still find this clone's protos.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = [
        "lanyard/admin.proto",
        "lanyard/node.proto",
        "lanyard/secrets.proto",
        "spiffe/workload.proto",
        // Envoy external authorization (ext_authz) gRPC API: hand-written,
        // wire-compatible subsets of the upstream files.
        "envoy/service/auth/v3/external_auth.proto",
        "envoy/service/auth/v3/attribute_context.proto",
        "envoy/config/core/v3/address.proto",
        "envoy/config/core/v3/base.proto",
        "envoy/type/v3/http_status.proto",
        "google/rpc/status.proto",
        // Envoy secret discovery service (SDS), served by the agent: hand-written,
        // wire-compatible subsets of the upstream files.
        "envoy/service/secret/v3/sds.proto",
        "envoy/service/discovery/v3/discovery.proto",
        "envoy/extensions/transport_sockets/tls/v3/secret.proto",
        "envoy/extensions/transport_sockets/tls/v3/common.proto",
        "envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto",
        "envoy/config/core/v3/extension.proto",
        "envoy/type/v3/semantic_version.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
