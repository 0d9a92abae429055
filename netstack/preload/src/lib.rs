//! hetero-socket (`libheterosocket.so`): loaded with `LD_PRELOAD` into an
//! unmodified, dynamically linked program of a split Pod, it carries that
//! program's TCP connections to listeners of the Pod's other half on a
//! HeteroNet ring pair instead of the host's kernel TCP (see
//! `heteronet::fastpath` for how a connection is set up).
//!
//! Everything else goes to libc untouched: other destinations, UDP, Unix
//! sockets, files, and every call on a descriptor that is not a fast
//! connection. `HETEROSOCKET=off` makes the library a pure pass-through.
//!
//! The program's descriptor stays a real kernel descriptor (a Unix socket
//! whose readability the peer keeps equal to "records wait"), so its own
//! epoll, poll, select, dup and close see something real; a table beside it
//! maps descriptor → connection.
//!
//! `unsafe` lives in [`real`] (the libc functions found with `dlsym`) and
//! [`exports`] (the C entry points); everything behind them is safe Rust.
#![deny(unsafe_code)]

pub mod broker;
pub mod conn;
#[allow(unsafe_code)]
pub mod exports;
pub mod internal;
pub mod listeners;
pub mod options;
#[allow(unsafe_code)]
pub mod real;
pub mod spin;
pub mod table;
pub mod wait;

/// Whether the library only passes calls through (`HETEROSOCKET=off`).
pub fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| matches!(std::env::var("HETEROSOCKET").as_deref(), Ok("off" | "0")))
}

/// An errno value (the library's error type: what the kernel would report).
pub type Errno = i32;
