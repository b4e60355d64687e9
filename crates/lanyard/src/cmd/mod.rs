//! Command implementations, one module per area.

pub mod admin;
pub mod inspect;
pub mod server;
