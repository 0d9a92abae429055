//! State shared by the mux driver, handles and streams: the tx side of the
//! current link, the stream table, counters, and the helper tasks that wait
//! for tx space and send queued control frames.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::{mpsc, watch, Notify};

use super::frame::{header, Destination, Kind, QueuedFrame, HDR, OPEN_MAX};
use super::stream::{MuxStream, StreamState};
use super::{MuxConfig, MuxEvent, MuxStats};
use crate::error::{Error, Result};
use crate::notify::{Bell, Doorbell, NotifyMode, NotifyStats, WaitTarget, Waiter};
use crate::shm::Producer;

/// The tx half of the current link.
#[derive(Debug, Default)]
pub(crate) struct TxSlot {
    pub producer: Option<Producer>,
    pub peer_bell: Option<Bell>,
    pub space_bell: Option<Arc<Doorbell>>,
    /// Bumped on every link change; frames and streams of older epochs are dead.
    pub epoch: u64,
    /// Stream id parity of this side: creator odd, opener even.
    pub parity: u32,
    pub max_payload: usize,
    pub mode: NotifyMode,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub streams_open: AtomicU64,
    pub streams_total: AtomicU64,
    pub bytes_tx: AtomicU64,
    pub bytes_rx: AtomicU64,
    pub frames_tx: AtomicU64,
    pub frames_rx: AtomicU64,
    pub peer_ups: AtomicU64,
    pub link_errors: AtomicU64,
    pub streams_refused: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves plain data behind;
    // keep going rather than poisoning the whole mux.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: MuxConfig,
    pub tx: Mutex<TxSlot>,
    space_waiters: Mutex<Vec<Waker>>,
    space_kick: Notify,
    pub streams: Mutex<HashMap<u32, Arc<StreamState>>>,
    next_id: AtomicU32,
    events: mpsc::UnboundedSender<Option<MuxEvent>>,
    ctl_tx: mpsc::UnboundedSender<(u64, QueuedFrame)>,
    pub ctl_rx: Mutex<Option<mpsc::UnboundedReceiver<(u64, QueuedFrame)>>>,
    ctl_pending: AtomicUsize,
    pub counters: Counters,
    pub notify: Arc<NotifyStats>,
    pub up: watch::Sender<bool>,
    pub stop: watch::Sender<bool>,
    /// Signalled when a writer found the tx ring corrupted; `failed_epoch`
    /// says which link, so a stale signal never ends a newer link.
    link_failed: Notify,
    failed_epoch: AtomicU64,
    /// Why that link failed.
    failed_reason: Mutex<&'static str>,
    /// Events emitted and not yet taken by the owner.
    pub events_pending: Arc<AtomicUsize>,
}

impl Shared {
    pub fn new(config: MuxConfig, events: mpsc::UnboundedSender<Option<MuxEvent>>) -> Arc<Shared> {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        Arc::new(Shared {
            config,
            tx: Mutex::default(),
            space_waiters: Mutex::default(),
            space_kick: Notify::new(),
            streams: Mutex::default(),
            next_id: AtomicU32::new(1),
            events,
            ctl_tx,
            ctl_rx: Mutex::new(Some(ctl_rx)),
            ctl_pending: AtomicUsize::new(0),
            counters: Counters::default(),
            notify: Arc::default(),
            up: watch::channel(false).0,
            stop: watch::channel(false).0,
            link_failed: Notify::new(),
            failed_epoch: AtomicU64::new(u64::MAX),
            failed_reason: Mutex::new("tx ring corrupted"),
            events_pending: Arc::default(),
        })
    }

    pub fn tx(&self) -> MutexGuard<'_, TxSlot> {
        lock(&self.tx)
    }

    pub fn streams(&self) -> MutexGuard<'_, HashMap<u32, Arc<StreamState>>> {
        lock(&self.streams)
    }

    pub fn close(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn emit(&self, ev: MuxEvent) -> bool {
        self.events_pending.fetch_add(1, Ordering::AcqRel);
        let sent = self.events.send(Some(ev)).is_ok();
        if !sent {
            self.events_pending.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Whether the owner has `max_pending_events` events not taken yet.
    pub fn events_full(&self) -> bool {
        self.events_pending.load(Ordering::Acquire) >= self.config.max_pending_events
    }

    pub fn end_events(&self) {
        let _ = self.events.send(None);
    }

    pub fn stats(&self) -> MuxStats {
        let c = &self.counters;
        let n = &self.notify;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MuxStats {
            connected: *self.up.borrow(),
            streams_open: g(&c.streams_open),
            streams_total: g(&c.streams_total),
            bytes_tx: g(&c.bytes_tx),
            bytes_rx: g(&c.bytes_rx),
            frames_tx: g(&c.frames_tx),
            frames_rx: g(&c.frames_rx),
            spins: g(&n.spins),
            sleeps: g(&n.sleeps),
            wakeups: g(&n.wakeups),
            doorbells: g(&n.doorbells),
            spin_preempted: g(&n.preempted),
            peer_ups: g(&c.peer_ups),
            streams_refused: g(&c.streams_refused),
            link_errors: g(&c.link_errors),
        }
    }

    /// Pushes one frame (header + payload, payload capped at the link's max) and
    /// publishes it. Returns the payload bytes sent. Pending when the ring is full.
    pub fn poll_send(
        &self,
        cx: Option<&mut Context<'_>>,
        epoch: u64,
        hdr: &[u8; HDR],
        payload: &[u8],
    ) -> Poll<Result<usize>> {
        let mut slot = self.tx();
        if slot.epoch != epoch {
            return Poll::Ready(Err(Error::PeerGone));
        }
        let n = payload.len().min(slot.max_payload);
        let Some(p) = slot.producer.as_mut() else {
            return Poll::Ready(Err(Error::PeerGone));
        };
        match p.try_push(&[hdr, &payload[..n]]) {
            Ok(true) => {
                let ring = p.publish();
                inc(&self.counters.frames_tx, 1);
                if ring {
                    NotifyStats::add(&self.notify.doorbells);
                    if let Some(b) = &slot.peer_bell {
                        if let Err(e) = b.ring() {
                            tracing::warn!(error = %e, "ringing peer doorbell");
                        }
                    }
                }
                Poll::Ready(Ok(n))
            }
            Ok(false) => {
                if let Some(cx) = cx {
                    lock(&self.space_waiters).push(cx.waker().clone());
                    drop(slot);
                    self.space_kick.notify_one();
                }
                Poll::Pending
            }
            Err(e) => {
                drop(slot);
                self.fail_link(epoch, "tx ring corrupted");
                Poll::Ready(Err(e.into()))
            }
        }
    }

    /// Sends a whole frame, waiting for ring space.
    pub async fn send(&self, epoch: u64, hdr: &[u8; HDR], payload: &[u8]) -> Result<()> {
        let n = poll_fn(|cx| self.poll_send(Some(cx), epoch, hdr, payload)).await?;
        if n < payload.len() {
            return Err(Error::Config("frame larger than the link's maximum"));
        }
        Ok(())
    }

    /// Sends a control-path frame without ever blocking the caller: directly if
    /// the ring has room and nothing is queued ahead, else via the ctl task.
    pub fn send_ctl(&self, epoch: u64, f: QueuedFrame) {
        let queued = self.ctl_pending.load(Ordering::Acquire);
        if queued == 0 {
            match self.poll_send(None, epoch, &f.hdr, f.payload()) {
                Poll::Ready(_) => return,
                Poll::Pending => {}
            }
        }
        if queued >= self.config.max_queued_frames {
            // Only a peer that stops draining its ring while making us answer
            // gets here: end its link rather than queue without bound.
            self.fail_link(
                epoch,
                "the peer does not drain its ring (control queue full)",
            );
            return;
        }
        self.ctl_pending.fetch_add(1, Ordering::AcqRel);
        if self.ctl_tx.send((epoch, f)).is_err() {
            self.ctl_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The ctl task: sends queued control frames in order.
    pub async fn run_ctl(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.ctl_rx).take() else {
            return;
        };
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = self.stopped() => None,
            };
            let Some((epoch, f)) = item else { return };
            let r = poll_fn(|cx| self.poll_send(Some(cx), epoch, &f.hdr, f.payload()));
            tokio::select! {
                _ = r => {}
                _ = self.stopped() => return,
            }
            self.ctl_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The space task: when writers wait for tx space, waits for it (spin, then
    /// doorbell) and wakes them.
    pub async fn run_space(self: Arc<Self>) {
        let mut waiter: Option<Waiter> = None;
        loop {
            tokio::select! {
                _ = self.space_kick.notified() => {}
                _ = self.stopped() => return,
            }
            while !lock(&self.space_waiters).is_empty() {
                let (epoch, bell, need, mode) = {
                    let s = self.tx();
                    (s.epoch, s.space_bell.clone(), s.max_payload + HDR, s.mode)
                };
                let w = waiter.get_or_insert_with(|| Waiter::new(mode, self.notify.clone()));
                if let Some(bell) = bell {
                    let mut target = TxSpace {
                        shared: &self,
                        epoch,
                        need,
                    };
                    let r = tokio::select! {
                        r = w.wait(&mut target, &bell) => r,
                        _ = self.stopped() => return,
                    };
                    if r.is_err() {
                        self.fail_link(epoch, "tx ring corrupted");
                    }
                }
                let wakers = std::mem::take(&mut *lock(&self.space_waiters));
                wakers.into_iter().for_each(Waker::wake);
            }
        }
    }

    /// Reports that link `epoch` must end, and why.
    pub fn fail_link(&self, epoch: u64, reason: &'static str) {
        *lock(&self.failed_reason) = reason;
        self.failed_epoch.store(epoch, Ordering::Release);
        self.link_failed.notify_one();
    }

    /// Why the link last reported failed ended.
    pub fn failed_reason(&self) -> &'static str {
        *lock(&self.failed_reason)
    }

    pub fn has_failed(&self, epoch: u64) -> bool {
        self.failed_epoch.load(Ordering::Acquire) == epoch
    }

    /// Resolves when the link of `epoch` was reported failed.
    pub async fn link_failed(&self, epoch: u64) {
        loop {
            if self.failed_epoch.load(Ordering::Acquire) == epoch {
                return;
            }
            self.link_failed.notified().await;
        }
    }

    /// Wakes every writer waiting for space (link change or failure).
    pub fn wake_space_waiters(&self) {
        let wakers = std::mem::take(&mut *lock(&self.space_waiters));
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn remove_stream(&self, id: u32) {
        if self.streams().remove(&id).is_some() {
            self.counters.streams_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn add_stream(&self, st: Arc<StreamState>) -> bool {
        use std::collections::hash_map::Entry;
        match self.streams().entry(st.id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(st);
                inc(&self.counters.streams_open, 1);
                inc(&self.counters.streams_total, 1);
                true
            }
        }
    }

    pub async fn open(self: &Arc<Self>, dest: Destination) -> Result<MuxStream> {
        let (epoch, parity) = {
            let s = self.tx();
            if s.producer.is_none() {
                return Err(Error::PeerGone);
            }
            (s.epoch, s.parity)
        };
        let id = loop {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = n.wrapping_mul(2) | parity;
            if id != 0 && !self.streams().contains_key(&id) {
                break id;
            }
        };
        if self.streams().len() >= self.config.max_streams {
            return Err(Error::Limit("streams open on this link"));
        }
        let st = StreamState::new(id, epoch, self.config.window);
        if !self.add_stream(st.clone()) {
            return Err(Error::Protocol("stream id in use"));
        }
        let stream = MuxStream::new(st, self.clone());
        let mut buf = [0u8; OPEN_MAX];
        let n = dest.encode(&mut buf);
        self.send(epoch, &header(Kind::Open, id), &buf[..n]).await?;
        Ok(stream)
    }

    pub async fn send_control(&self, msg: Vec<u8>) -> Result<()> {
        let epoch = {
            let s = self.tx();
            if s.producer.is_none() {
                return Err(Error::PeerGone);
            }
            if msg.len() > s.max_payload {
                return Err(Error::Config("control message larger than a frame"));
            }
            s.epoch
        };
        self.send(epoch, &header(Kind::Control, 0), &msg).await
    }
}

/// Room in the current link's tx ring (or the link changed).
struct TxSpace<'a> {
    shared: &'a Shared,
    epoch: u64,
    need: usize,
}

impl WaitTarget for TxSpace<'_> {
    fn ready(&mut self) -> Result<bool> {
        let mut s = self.shared.tx();
        if s.epoch != self.epoch {
            return Ok(true);
        }
        match s.producer.as_mut() {
            Some(p) => Ok(p.fits(self.need)?),
            None => Ok(true),
        }
    }

    fn arm(&mut self, on: bool) {
        let mut s = self.shared.tx();
        if let (true, Some(p)) = (s.epoch == self.epoch, s.producer.as_mut()) {
            p.set_waiting(on);
        }
    }
}
