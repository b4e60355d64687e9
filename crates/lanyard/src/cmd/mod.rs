//! Command implementations, one module per area.

pub mod admin;
pub mod bench;
pub mod inspect;
pub mod server;
