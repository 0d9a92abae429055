//! Many streams and control messages over one [`Link`](crate::Link).
//!
//! One task drives the rx ring and copies each DATA payload into its stream's
//! buffer (bounded by the per-stream credit window, so a stalled reader never
//! blocks the ring). Writers push frames straight into the tx ring under a
//! short lock and publish at once; when the ring is full they wait for space
//! through the same elastic notification. Frames the rx task itself must send
//! (credit, resets) never block it: they go out directly or through a queue.

mod driver;
pub mod frame;
mod shared;
mod stream;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use frame::{Destination, Proto};
pub use stream::{DrainError, MuxStream};

use crate::error::{Error, Result};
use crate::link::LinkSource;
use shared::Shared;

/// Mux settings. Everything the peer can make this side hold is bounded:
/// memory per stream by `window`, streams by `max_streams`, and the two
/// queues a peer fills by not draining its ring or by outpacing this side's
/// owner by `max_queued_frames` and `max_pending_events`.
#[derive(Debug, Clone, Copy)]
pub struct MuxConfig {
    /// Per-stream receive window (credit) in bytes.
    pub window: u32,
    /// Streams open at once, both directions together. An open beyond it is
    /// refused with a reset (as a kernel refuses a connection over its
    /// backlog); the link stays up.
    pub max_streams: usize,
    /// Frames this side must send (credit, resets) queued because the peer
    /// does not drain its ring; beyond it the link ends with an error.
    pub max_queued_frames: usize,
    /// Events (opened streams, control messages) the owner has not taken
    /// yet; beyond it the link ends with an error.
    pub max_pending_events: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            window: 256 * 1024,
            max_streams: 4096,
            max_queued_frames: 16 * 1024,
            max_pending_events: 4096,
        }
    }
}

/// Something that happened on the mux.
#[derive(Debug)]
pub enum MuxEvent {
    /// The peer opened a stream.
    Stream(MuxStream, Destination),
    /// An opaque control message from the peer (ordered).
    Control(Vec<u8>),
    /// The peer went away (or the region was corrupted); all streams were reset.
    PeerGone,
    /// A peer is attached (first time and after every reconnect).
    PeerUp,
}

/// Counters of one mux.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MuxStats {
    pub connected: bool,
    pub streams_open: u64,
    pub streams_total: u64,
    pub bytes_tx: u64,
    pub bytes_rx: u64,
    pub frames_tx: u64,
    pub frames_rx: u64,
    pub spins: u64,
    pub sleeps: u64,
    pub wakeups: u64,
    pub doorbells: u64,
    /// Spin bursts during which the thread was preempted (elastic mode; counted only).
    pub spin_preempted: u64,
    pub peer_ups: u64,
    pub link_errors: u64,
    /// Peer opens refused because `max_streams` streams were open.
    pub streams_refused: u64,
}

/// Starts muxes.
#[derive(Debug)]
pub struct Mux;

impl Mux {
    /// Starts a mux with default settings. Must be called inside a tokio runtime.
    pub fn start(src: impl Into<LinkSource>) -> (MuxHandle, MuxEvents) {
        Mux::start_with(src, MuxConfig::default())
    }

    pub fn start_with(src: impl Into<LinkSource>, config: MuxConfig) -> (MuxHandle, MuxEvents) {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let shared = Shared::new(config, ev_tx);
        let pending = shared.events_pending.clone();
        driver::spawn(shared.clone(), src.into());
        (
            MuxHandle {
                guard: Arc::new(HandleGuard(shared)),
            },
            MuxEvents {
                rx: ev_rx,
                pending,
                done: false,
            },
        )
    }
}

#[derive(Debug)]
struct HandleGuard(Arc<Shared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Opens streams and sends control messages. Cloneable; the mux stops when
/// the last handle is dropped or [`MuxHandle::close`] is called.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    guard: Arc<HandleGuard>,
}

impl MuxHandle {
    fn shared(&self) -> &Arc<Shared> {
        &self.guard.0
    }

    /// Opens a stream to `dest` on the peer. Fails with [`Error::PeerGone`]
    /// when no peer is attached.
    pub async fn open(&self, dest: Destination) -> Result<MuxStream> {
        self.shared().open(dest).await
    }

    /// Sends an opaque control message (ordered with other control messages).
    pub async fn send_control(&self, msg: Vec<u8>) -> Result<()> {
        self.shared().send_control(msg).await
    }

    pub fn stats(&self) -> MuxStats {
        self.shared().stats()
    }

    /// Whether a peer is attached now.
    pub fn is_connected(&self) -> bool {
        *self.shared().up.borrow()
    }

    /// Waits until a peer is attached.
    pub async fn connected(&self) -> Result<()> {
        let mut rx = self.shared().up.subscribe();
        rx.wait_for(|up| *up).await.map_err(|_| Error::Closed)?;
        Ok(())
    }

    /// Stops the mux: all streams are reset and the link is dropped.
    pub fn close(&self) {
        self.shared().close();
    }
}

/// The stream of [`MuxEvent`]s. Ends (`None`) when the mux stops.
#[derive(Debug)]
pub struct MuxEvents {
    rx: mpsc::UnboundedReceiver<Option<MuxEvent>>,
    /// Events sent and not taken (bounded by `max_pending_events`).
    pending: Arc<std::sync::atomic::AtomicUsize>,
    done: bool,
}

impl MuxEvents {
    pub async fn next(&mut self) -> Option<MuxEvent> {
        if self.done {
            return None;
        }
        match self.rx.recv().await {
            Some(Some(ev)) => {
                self.pending
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                Some(ev)
            }
            _ => {
                self.done = true;
                None
            }
        }
    }
}
