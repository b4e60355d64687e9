//! Generated protobuf and gRPC types. They never travel past the service layer:
//! convert to domain types at the edge.

#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod admin {
    tonic::include_proto!("lanyard.admin.v1");

    /// Most entries in one `BatchCreateEntry`/`BatchUpdateEntry`/`BatchDeleteEntry`
    /// call: the server refuses larger batches, so clients split theirs.
    pub const MAX_ENTRY_BATCH: usize = 1000;
}

pub mod node {
    tonic::include_proto!("lanyard.node.v1");

    /// Most CSRs in one `BatchNewX509Svid` call: the server refuses larger batches,
    /// so agents split theirs.
    pub const MAX_BATCH: usize = 1000;
}

pub mod secrets {
    tonic::include_proto!("lanyard.secrets.v1");
}

/// The SPIFFE Workload API (no proto package).
pub mod workload {
    tonic::include_proto!("_");
}

/// Envoy's external authorization gRPC API (`envoy.service.auth.v3.Authorization/Check`),
/// its secret discovery service (`envoy.service.secret.v3.SecretDiscoveryService`, with
/// `envoy.service.discovery.v3` requests and responses and the TLS `Secret` types) and
/// the types they use: hand-written, wire-compatible subsets of the upstream protos
/// (proto/envoy/...). Nested to mirror the proto packages so generated `super::` paths
/// resolve.
pub mod envoy {
    pub mod service {
        pub mod auth {
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
            }
        }

        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }

        pub mod secret {
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }

    pub mod extensions {
        pub mod transport_sockets {
            pub mod tls {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");

                    /// The type URL of [`Secret`] in `Any` and in discovery requests.
                    pub const SECRET_TYPE_URL: &str =
                        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

                    /// The type URL of [`SpiffeCertValidatorConfig`] in `Any`.
                    pub const SPIFFE_VALIDATOR_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
                }
            }
        }
    }

    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }

    /// The `envoy.type.v3` package (`type` is a Rust keyword).
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

/// `google.rpc.Status` (subset: no `details`), used by Envoy's `CheckResponse` and as
/// the `error_detail` of xDS NACKs.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
