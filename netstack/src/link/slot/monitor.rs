//! Liveness of an attached slot link: a thread bumps our heartbeat and watches
//! the peer's record. It is a thread, not a task, so a busy or spinning runtime
//! can never starve the heartbeat into a false "peer gone" on the other side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::control::{self, Rec, Word, HEARTBEAT_EVERY, PEER_TIMEOUT, STATE_NONE};
use super::port::Port;
use crate::shm::Region;

const CHECK_EVERY: Duration = Duration::from_millis(50);

/// What this side expects of the peer's record while attached.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// We created the slot and accepted the opener with `opener_epoch`.
    Creator { opener_epoch: u64 },
    /// We opened the slot: the creator had `creator_epoch` and acknowledged `ours`.
    Opener {
        creator_epoch: u64,
        ours: u64,
        generation: u64,
    },
}

/// Watches one attached link; dropping it detaches us in the slot.
#[derive(Debug)]
pub struct Monitor {
    region: Arc<Region>,
    role: Role,
    gone: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Keeps our ivshmem peer (and so our eventfds in the peer's table) alive.
    _port: Port,
}

impl Monitor {
    /// Starts watching `peer` (its ivshmem id) in `role`.
    pub fn start(
        region: Arc<Region>,
        role: Role,
        port: Port,
        peer: u16,
    ) -> std::io::Result<Monitor> {
        let (tx, rx) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, p) = (region.clone(), stop.clone(), port.clone());
        let thread = std::thread::Builder::new()
            .name("heteronet-slot".into())
            .spawn(move || watch_peer(&r, role, (&p, peer), &s, &tx))?;
        Ok(Monitor {
            region,
            role,
            gone: rx,
            stop,
            thread: Some(thread),
            _port: port,
        })
    }

    /// Resolves once the peer is gone (or the link is being torn down).
    pub async fn gone(&self) {
        let mut rx = self.gone.clone();
        let _ = rx.wait_for(|g| *g).await;
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Tell the peer at once instead of letting it time out.
        let r = &self.region;
        let res = match self.role {
            Role::Creator { opener_epoch } => {
                if control::get(r, Rec::Creator, Word::AckOrState).ok() == Some(opener_epoch) {
                    control::set(r, Rec::Creator, Word::AckOrState, 0)
                } else {
                    Ok(())
                }
            }
            Role::Opener { .. } => control::set(r, Rec::Opener, Word::AckOrState, STATE_NONE)
                .and_then(|()| control::set(r, Rec::Opener, Word::Epoch, 0)),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "detaching from the slot");
        }
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
        }
    }
}

/// Why the peer counts as gone, if it does.
fn check(region: &Region, role: Role) -> crate::Result<Option<&'static str>> {
    Ok(match role {
        Role::Creator { opener_epoch } => (control::get(region, Rec::Opener, Word::Epoch)?
            != opener_epoch)
            .then_some("the opener detached or restarted"),
        Role::Opener {
            creator_epoch,
            ours,
            generation,
        } => {
            if control::get(region, Rec::Creator, Word::Epoch)? != creator_epoch {
                Some("the creator restarted")
            } else if control::get(region, Rec::Creator, Word::AckOrState)? != ours {
                Some("the creator detached us")
            } else if region.generation() != generation {
                Some("the creator re-initialised the slot")
            } else {
                None
            }
        }
    })
}

/// Whether the ivshmem server still lists `peer` (host peers only: the guest
/// is not told). A peer process or guest that died is gone at once.
fn peer_listed(port: &Port, peer: u16) -> bool {
    match port {
        Port::Client { client, .. } => {
            !client.is_connected() || client.peers().iter().any(|p| p.id == peer)
        }
        Port::Bar { .. } => true,
    }
}

fn watch_peer(
    region: &Region,
    role: Role,
    (port, peer): (&Port, u16),
    stop: &AtomicBool,
    gone: &watch::Sender<bool>,
) {
    let (ours, theirs) = match role {
        Role::Creator { .. } => (Rec::Creator, Rec::Opener),
        Role::Opener { .. } => (Rec::Opener, Rec::Creator),
    };
    let mut next_beat = Instant::now();
    let mut seen = control::get(region, theirs, Word::Heartbeat).unwrap_or_default();
    let mut moved_at = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_beat {
            let _ = control::beat(region, ours);
            next_beat = now + HEARTBEAT_EVERY;
        }
        let hb = control::get(region, theirs, Word::Heartbeat).unwrap_or_default();
        if hb != seen {
            seen = hb;
            moved_at = now;
        }
        let reason = match check(region, role) {
            Ok(Some(r)) => Some(r),
            Ok(None) if now.duration_since(moved_at) > PEER_TIMEOUT => {
                Some("the peer's heartbeat stopped")
            }
            Ok(None) if !peer_listed(port, peer) => Some("the peer left the ivshmem server"),
            Ok(None) => None,
            Err(_) => Some("the control block is unreadable"),
        };
        if let Some(reason) = reason {
            if !stop.load(Ordering::Acquire) {
                tracing::info!(reason, "slot peer gone");
            }
            gone.send_replace(true);
            return;
        }
        std::thread::park_timeout(CHECK_EVERY);
    }
    gone.send_replace(true);
}
