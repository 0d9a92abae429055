//! The split-netns relay: one runs in each half of a Pod network.
//!
//! It mirrors the listeners of its half into the other half ([`mirror`], fed by
//! [`sock_diag`] and [`control`]), relays accepted connections over mux streams
//! ([`splice`]), captures outbound TCP and forwarded UDP of the DPU half
//! ([`egress`], [`udp`]), and exposes [`counters`]. [`setup`] does what must
//! happen before the async runtime exists (setns, iptables, dropping
//! capabilities); [`session`] is the running relay.

pub mod caps;
pub mod capture;
pub mod control;
pub mod counters;
pub mod egress;
pub mod error;
mod fast;
pub mod mirror;
pub mod netns;
pub mod pod_rules;
pub mod session;
pub mod setup;
pub mod sock_diag;
pub mod splice;
pub mod udp;

pub use error::{Error, Result};
pub use session::run;
pub use setup::{prepare, Prepared, RelayConfig};
