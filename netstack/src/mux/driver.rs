//! The mux driver task: gets links from the source, drains the rx ring into
//! streams, and tears everything down when the peer goes or the region is corrupt.

use std::sync::Arc;
use std::time::Duration;

use super::frame::{parse_header, Destination, Kind, QueuedFrame, HDR, OPEN_MAX};
use super::shared::{inc, Shared, TxSlot};
use super::stream::{MuxStream, StreamState};
use super::MuxEvent;
use crate::error::{Error, Result};
use crate::link::{Link, LinkBuilder, LinkSource, Listener};
use crate::notify::{NotifyStats, Waiter};
use crate::shm::Record;

/// Frames handled before yielding to other tasks.
const BATCH: usize = 512;
/// Release consumed ring space at least this often (bytes).
const RELEASE_EVERY: u64 = 256 * 1024;

enum Source {
    Accept(Box<Listener>),
    Connect(LinkBuilder),
    Once(Option<Box<Link>>),
}

#[derive(Debug)]
enum End {
    PeerGone,
    Failed(Error),
    Stopped,
}

pub(crate) fn spawn(shared: Arc<Shared>, src: LinkSource) {
    tokio::spawn(shared.clone().run_ctl());
    tokio::spawn(shared.clone().run_space());
    let src = match src {
        LinkSource::Listener(l) => Source::Accept(Box::new(l)),
        LinkSource::Connect(b) => Source::Connect(b),
        LinkSource::Link(l) => Source::Once(Some(l)),
    };
    tokio::spawn(run(shared, src));
}

async fn run(shared: Arc<Shared>, mut src: Source) {
    while let Some(link) = next_link(&shared, &mut src).await {
        let end = drive(&shared, link).await;
        teardown(&shared);
        match &end {
            End::PeerGone => tracing::info!("mux peer gone; streams reset"),
            End::Failed(e) => {
                inc(&shared.counters.link_errors, 1);
                tracing::error!(error = %e, "mux link failed; streams reset");
            }
            End::Stopped => break,
        }
        shared.emit(MuxEvent::PeerGone);
        if shared.is_stopped() {
            break;
        }
    }
    teardown(&shared);
    shared.close();
    shared.end_events();
}

async fn next_link(shared: &Shared, src: &mut Source) -> Option<Link> {
    let mut backoff = Duration::from_millis(20);
    loop {
        if shared.is_stopped() {
            return None;
        }
        let r = match src {
            Source::Once(l) => return l.take().map(|l| *l),
            Source::Accept(l) => tokio::select! {
                r = l.accept() => r,
                _ = shared.stopped() => return None,
            },
            Source::Connect(b) => tokio::select! {
                r = b.connect() => r,
                _ = shared.stopped() => return None,
            },
        };
        match r {
            Ok(link) => return Some(link),
            Err(e) => {
                tracing::debug!(error = %e, "mux waiting for a peer");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.stopped() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Resets every stream and detaches the tx ring.
fn teardown(shared: &Shared) {
    {
        let mut s = shared.tx();
        s.producer = None;
        s.peer_bell = None;
        s.space_bell = None;
        s.epoch += 1;
    }
    shared.up.send_replace(false);
    shared.wake_space_waiters();
    let streams: Vec<Arc<StreamState>> = shared.streams().drain().map(|(_, s)| s).collect();
    shared
        .counters
        .streams_open
        .fetch_sub(streams.len() as u64, std::sync::atomic::Ordering::Relaxed);
    for s in streams {
        s.set_reset();
    }
}

async fn drive(shared: &Arc<Shared>, link: Link) -> End {
    let Link {
        region,
        generation,
        tx,
        rx,
        data_bell,
        space_bell,
        peer_data_bell,
        peer_space_bell,
        liveness,
        mode,
        is_creator,
        ..
    } = link;
    let epoch = {
        let mut s = shared.tx();
        s.max_payload = tx.max_record().saturating_sub(HDR);
        s.producer = Some(tx);
        s.peer_bell = Some(peer_data_bell);
        s.space_bell = Some(Arc::new(space_bell));
        s.parity = u32::from(is_creator);
        s.mode = mode;
        s.epoch
    };
    inc(&shared.counters.peer_ups, 1);
    shared.up.send_replace(true);
    shared.emit(MuxEvent::PeerUp);

    let mut rx = rx;
    let mut waiter = Waiter::new(mode, shared.notify.clone());
    loop {
        let mut n = 0;
        while n < BATCH {
            let r = rx.pop_with(|rec| on_frame(shared, epoch, rec));
            match r {
                Ok(Some(Ok(()))) => n += 1,
                Ok(Some(Err(e))) => return End::Failed(e),
                Ok(None) => break,
                Err(e) => return End::Failed(e.into()),
            }
            if rx.unreleased() >= RELEASE_EVERY {
                release(shared, &mut rx, &peer_space_bell);
            }
        }
        release(shared, &mut rx, &peer_space_bell);
        if shared.has_failed(epoch) {
            return End::Failed(Error::Protocol(shared.failed_reason()));
        }
        if n > 0 {
            // Let the readers just woken run now (they sit in this worker's
            // queue), then come back to spin.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            r = waiter.wait(&mut rx, &data_bell) => {
                if let Err(e) = r.and_then(|()| region.check_header(generation)) {
                    return End::Failed(e);
                }
            }
            _ = liveness.gone() => return End::PeerGone,
            _ = shared.stopped() => return End::Stopped,
            _ = shared.link_failed(epoch) => {
                return End::Failed(Error::Protocol(shared.failed_reason()));
            }
        }
    }
}

fn release(shared: &Shared, rx: &mut crate::shm::Consumer, bell: &crate::notify::Bell) {
    if rx.release() {
        NotifyStats::add(&shared.notify.doorbells);
        if let Err(e) = bell.ring() {
            tracing::warn!(error = %e, "ringing peer space doorbell");
        }
    }
}

fn stream(shared: &Shared, id: u32) -> Option<Arc<StreamState>> {
    shared.streams().get(&id).cloned()
}

/// Handles one frame while it is still in the ring. Errors end the link.
fn on_frame(shared: &Arc<Shared>, epoch: u64, rec: Record<'_>) -> Result<()> {
    let mut h = [0u8; HDR];
    if rec.read(0, &mut h) < HDR {
        return Err(Error::Protocol("frame shorter than its header"));
    }
    let (kind, id) = parse_header(&h)?;
    let plen = rec.len() - HDR;
    inc(&shared.counters.frames_rx, 1);
    match kind {
        Kind::Data => {
            let Some(st) = stream(shared, id) else {
                // Data for a stream we closed: tell the peer it is gone.
                shared.send_ctl(epoch, QueuedFrame::new(Kind::Rst, id));
                return Ok(());
            };
            let mut i = st.lock();
            if i.reset {
                return Ok(());
            }
            if i.rx_eof || i.rx.len() + plen > shared.config.window as usize {
                drop(i);
                tracing::warn!(
                    stream = id,
                    "peer exceeded credit or sent after FIN; resetting stream"
                );
                shared.send_ctl(epoch, QueuedFrame::new(Kind::Rst, id));
                shared.remove_stream(id);
                st.set_reset();
                return Ok(());
            }
            rec.append_to(HDR, &mut i.rx);
            let w = i.rx_waker.take();
            drop(i);
            inc(&shared.counters.bytes_rx, plen as u64);
            if let Some(w) = w {
                w.wake();
            }
        }
        Kind::Open => {
            let mut b = [0u8; OPEN_MAX];
            let n = rec.read(HDR, &mut b);
            let peer_parity = u32::from(shared.tx().parity == 0);
            let dest = if plen > b.len() || id & 1 != peer_parity {
                Err(Error::Protocol("bad open frame"))
            } else {
                Destination::decode(&b[..n])
            };
            let dest = match dest {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(stream = id, error = %e, "refusing stream");
                    shared.send_ctl(epoch, QueuedFrame::new(Kind::Rst, id));
                    return Ok(());
                }
            };
            if shared.events_full() {
                return Err(Error::Limit(
                    "the peer opens streams faster than this side takes them",
                ));
            }
            if shared.streams().len() >= shared.config.max_streams {
                let refused = shared
                    .counters
                    .streams_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // One line per 1,000, not one per refused stream.
                if refused.is_multiple_of(1000) {
                    tracing::warn!(
                        limit = shared.config.max_streams,
                        refused = refused + 1,
                        "streams at their limit: refusing the peer's open"
                    );
                }
                shared.send_ctl(epoch, QueuedFrame::new(Kind::Rst, id));
                return Ok(());
            }
            let st = StreamState::new(id, epoch, shared.config.window);
            if !shared.add_stream(st.clone()) {
                tracing::warn!(stream = id, "peer reopened a live stream id; resetting it");
                if let Some(old) = stream(shared, id) {
                    old.set_reset();
                }
                shared.remove_stream(id);
                shared.send_ctl(epoch, QueuedFrame::new(Kind::Rst, id));
                return Ok(());
            }
            let s = MuxStream::new(st, shared.clone());
            if !shared.emit(MuxEvent::Stream(s, dest)) {
                // Nobody listens: the returned event (and stream) was dropped → FIN.
                shared.send_ctl(epoch, QueuedFrame::new(Kind::Rst, id));
            }
        }
        Kind::Fin => {
            if let Some(st) = stream(shared, id) {
                let (w, both) = {
                    let mut i = st.lock();
                    i.rx_eof = true;
                    (i.rx_waker.take(), i.tx_closed)
                };
                if both {
                    shared.remove_stream(id);
                }
                if let Some(w) = w {
                    w.wake();
                }
            }
        }
        Kind::Rst => {
            if let Some(st) = stream(shared, id) {
                shared.remove_stream(id);
                st.set_reset();
            }
        }
        Kind::Window => {
            let mut b = [0u8; 4];
            if plen != 4 || rec.read(HDR, &mut b) != 4 {
                return Err(Error::Protocol("bad window frame"));
            }
            let grant = u64::from(u32::from_le_bytes(b));
            if let Some(st) = stream(shared, id) {
                let w = {
                    let mut i = st.lock();
                    i.credit = (i.credit + grant).min(u64::from(u32::MAX));
                    i.tx_waker.take()
                };
                if let Some(w) = w {
                    w.wake();
                }
            }
        }
        Kind::Control => {
            if shared.events_full() {
                return Err(Error::Limit(
                    "the peer sends control messages faster than this side takes them",
                ));
            }
            shared.emit(MuxEvent::Control(rec.to_vec().split_off(HDR)));
        }
    }
    Ok(())
}

#[allow(dead_code)]
fn _assert_send(_: &TxSlot) {}
