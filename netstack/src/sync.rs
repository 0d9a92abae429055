//! Atomics used on shared memory, swappable for the loom model checker
//! (`--cfg heteronet_loom`; plain `--cfg loom` would also switch tokio to its
//! own loom mode, which drops tokio::net).
//!
//! Only the ring's control words go through here; in-process counters use std.

#[cfg(heteronet_loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

#[cfg(not(heteronet_loom))]
pub use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
