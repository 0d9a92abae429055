//! Container tests: lifecycle and stop semantics, and container configuration.

use std::time::Duration;

mod config;
mod lifecycle;
mod propagation;

/// How long a test waits for expected log lines.
pub const LOG_WAIT: Duration = Duration::from_secs(20);
