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
}

pub mod secrets {
    tonic::include_proto!("lanyard.secrets.v1");
}

/// The SPIFFE Workload API (no proto package).
pub mod workload {
    tonic::include_proto!("_");
}
