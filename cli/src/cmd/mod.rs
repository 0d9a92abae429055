//! Subcommands, one module each.

pub mod metrics;
pub mod plan;
pub mod status;
