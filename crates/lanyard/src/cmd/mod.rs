//! Command implementations, one module per area.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod bench;
pub mod bulk;
pub mod governance;
pub mod inspect;
pub mod server;
pub mod spire;
pub mod watch;
pub mod workload;
