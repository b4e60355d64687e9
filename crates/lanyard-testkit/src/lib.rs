//! Lanyard's test kit: what unit and end-to-end tests of every crate share.
//!
//! - [`FakeClock`]: time that moves only when a test says so (re-exported from
//!   `lanyard_core`, where production code takes a `Clock`).
//! - [`TestCa`]: a real Lanyard CA for a trust domain, minting X509- and JWT-SVIDs.
//! - [`entry`] and [`node`]: builders of registration entries and attested nodes as
//!   the datastore holds them.
//! - [`TestServer`]: the real `lanyard server` binary on a temp dir and loopback
//!   ports, killed on drop.
//!
//! Dev-only: no crate lists it under `[dependencies]`. It depends on no service
//! crate (server, agent), so any crate can use it without a dependency cycle and
//! the agent's dependency tree stays free of the server.
//!
//! A test kit fails loudly: a setup step that cannot be done panics with what
//! went wrong, which fails the test that asked for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod builders;
mod ca;
mod server;

pub use builders::{EntryBuilder, NodeBuilder, entry, node, spiffe_id};
pub use ca::TestCa;
pub use lanyard_core::FakeClock;
pub use server::{TestServer, lanyard_binary, succeeded};

/// The trust domain tests use unless they say otherwise.
pub const TD: &str = "example.org";
