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

/// Envoy's external authorization gRPC API (`envoy.service.auth.v3.Authorization/Check`)
/// and the types it uses: hand-written, wire-compatible subsets of the upstream protos
/// (proto/envoy/...). Nested to mirror the proto packages so generated `super::` paths
/// resolve.
pub mod envoy {
    pub mod service {
        pub mod auth {
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
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

/// `google.rpc.Status` (subset: no `details`), used by Envoy's `CheckResponse`.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
