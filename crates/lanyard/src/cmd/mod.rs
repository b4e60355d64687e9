//! Command implementations, one module per area.

pub mod inspect;
