//! HeteroNet: the user-space cross-PU network stack.
//!
//! Layers, bottom up: [`shm`] maps a shared region and carves it into SPSC byte
//! rings; [`notify`] lets a waiter spin briefly and then sleep on an eventfd
//! doorbell; [`link`] joins two processes to one region (rendezvous over a
//! path Unix socket, doorbells passed with SCM_RIGHTS); [`mux`] carries many
//! credit-controlled streams and control messages over one link; [`fastpath`]
//! gives one program connection a ring pair of its own (hetero-socket).
#![deny(unsafe_code)]

pub mod bench;
pub mod error;
pub mod fastpath;
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod mux;
pub mod notify;
pub mod relay;
pub mod shm;
pub mod sync;

pub use error::{Error, Result};
pub use link::{Link, LinkBuilder, LinkSource, Listener, Side};
pub use mux::{
    Destination, Mux, MuxConfig, MuxEvent, MuxEvents, MuxHandle, MuxStats, MuxStream, Proto,
};
pub use notify::NotifyMode;
pub use shm::RegionAddr;
