//! Single-producer single-consumer byte ring in shared memory.
//!
//! Layout: a 512-byte control block (tail, head and the two sleeping flags,
//! each on its own 128-byte line so the two sides never false-share) followed
//! by `capacity` data bytes (a power of two). Indices are free-running u64
//! byte counters; a record is an 8-byte header (`len`, `tag`) plus payload,
//! padded to 8 bytes, and never wraps: when it does not fit before the end, a
//! PAD record fills the rest.
//!
//! The peer is not trusted. Each side keeps its own index privately and only
//! *writes* it to shared memory; the peer's index is loaded, then checked
//! against what is possible (`0 <= tail - head <= capacity`, monotonic). Record
//! headers are copied out and checked (`len <= max_record`, fits in the
//! published bytes). A violation returns [`RingError`] and stays sticky.

use std::any::Any;
use std::sync::Arc;

use bytes::BytesMut;

use super::layout::{RingLayout, RING_CTRL_SIZE};
use super::region::Region;
use crate::error::RingError;
use crate::sync::{fence, AtomicBool, AtomicU64, Ordering};

const TAG_REC: u32 = u32::from_le_bytes(*b"REC1");
const TAG_PAD: u32 = u32::from_le_bytes(*b"PAD1");
const REC_HDR: u64 = 8;

/// One control word on its own pair of cache lines (adjacent-line prefetch).
#[repr(C, align(128))]
struct Line(AtomicU64);

/// The shared control block of a ring.
#[repr(C)]
pub struct RingCtrl {
    tail: Line,
    head: Line,
    consumer_sleeping: Line,
    producer_sleeping: Line,
}

#[cfg(not(heteronet_loom))]
const _: () = assert!(std::mem::size_of::<RingCtrl>() == RING_CTRL_SIZE as usize);

impl RingCtrl {
    fn new() -> RingCtrl {
        RingCtrl {
            tail: Line(AtomicU64::new(0)),
            head: Line(AtomicU64::new(0)),
            consumer_sleeping: Line(AtomicU64::new(0)),
            producer_sleeping: Line(AtomicU64::new(0)),
        }
    }
}

/// Private memory for a ring that lives in this process only (tests, benches, loom).
struct HeapBacking {
    _ctrl: Box<RingCtrl>,
    _data: Vec<u64>,
}

/// A ring over shared (or private) memory. Get handles with
/// [`Ring::acquire_producer`] / [`Ring::acquire_consumer`].
pub struct Ring {
    _keep: Arc<dyn Any + Send + Sync>,
    ctrl: *const RingCtrl,
    data: *mut u8,
    capacity: u64,
    max_record: u32,
    /// (producer taken, consumer taken): shared by every `Ring` over the same
    /// ring of a region, so one producer and one consumer exist per process.
    taken: Arc<Taken>,
}

/// Which handles of one ring exist in this process.
#[derive(Debug)]
pub struct Taken {
    producer: AtomicBool,
    consumer: AtomicBool,
}

impl Default for Taken {
    // By hand: loom's atomics (the ring's model test) have no Default.
    fn default() -> Taken {
        Taken {
            producer: AtomicBool::new(false),
            consumer: AtomicBool::new(false),
        }
    }
}

// SAFETY: the pointers target memory kept alive by `_keep`; control words are only
// accessed atomically and data bytes only through ptr copies whose ranges are owned
// by the single producer (before publication) or single consumer (after it).
unsafe impl Send for Ring {}
// SAFETY: see `Send`; the shared API takes `&self` only for atomics and handle flags.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .field("max_record", &self.max_record)
            .finish()
    }
}

/// Private producer index state.
#[derive(Debug, Default)]
pub struct ProducerState {
    tail: u64,
    published: u64,
    head_cache: u64,
    waiting: bool,
    broken: Option<RingError>,
}

/// Private consumer index state.
#[derive(Debug, Default)]
pub struct ConsumerState {
    head: u64,
    released: u64,
    tail_cache: u64,
    sleeping: bool,
    broken: Option<RingError>,
}

fn rec_size(len: u64) -> u64 {
    (REC_HDR + len + 7) & !7
}

impl Ring {
    /// A ring over `layout` of a region whose header was written or validated
    /// (only [`Region::ring`] calls this, with the validated layout).
    pub(crate) fn in_region(
        region: Arc<Region>,
        layout: RingLayout,
        max_record: u32,
        taken: Arc<Taken>,
    ) -> Ring {
        let base = region.base_ptr();
        Ring {
            ctrl: base.wrapping_add(layout.offset as usize) as *const RingCtrl,
            data: base.wrapping_add((layout.offset + RING_CTRL_SIZE) as usize),
            capacity: layout.capacity,
            max_record,
            _keep: region,
            taken,
        }
    }

    /// A ring in private memory (tests, benchmarks, the loom model).
    pub fn private(capacity: u64, max_record: u32) -> Arc<Ring> {
        let capacity = capacity.clamp(64, 1 << 32).next_power_of_two();
        let max_record = max_record.clamp(8, (capacity / 4) as u32);
        let ctrl = Box::new(RingCtrl::new());
        let mut data = vec![0u64; (capacity / 8) as usize];
        let ctrl_ptr: *const RingCtrl = &*ctrl;
        let data_ptr = data.as_mut_ptr().cast::<u8>();
        Arc::new(Ring {
            _keep: Arc::new(HeapBacking {
                _ctrl: ctrl,
                _data: data,
            }),
            ctrl: ctrl_ptr,
            data: data_ptr,
            capacity,
            max_record,
            taken: Arc::default(),
        })
    }

    fn ctrl(&self) -> &RingCtrl {
        // SAFETY: `ctrl` points at a RingCtrl inside memory kept alive by `_keep`,
        // 128-byte aligned (layout validation checks `offset % 128`, heap Box is
        // aligned by type), and it consists only of atomics, so a shared reference
        // is sound even while the peer process modifies the words atomically.
        unsafe { &*self.ctrl }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn max_record(&self) -> usize {
        self.max_record as usize
    }

    /// The producer handle, or `None` while another one exists.
    pub fn acquire_producer(self: &Arc<Self>) -> Option<Producer> {
        if self.taken.producer.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Start where the shared tail is (0 after a reset); the head is checked on use.
        let tail = self.ctrl().tail.0.load(Ordering::Acquire);
        let head = self.ctrl().head.0.load(Ordering::Acquire);
        let st = ProducerState {
            tail,
            published: tail,
            head_cache: head,
            waiting: false,
            // Indices are 8-aligned: a misaligned one would make a pad record
            // run past the data area.
            broken: (tail.wrapping_sub(head) > self.capacity || (tail | head) & 7 != 0).then_some(
                RingError::IndexOutOfRange {
                    head,
                    tail,
                    capacity: self.capacity,
                },
            ),
        };
        Some(Producer {
            ring: self.clone(),
            st,
        })
    }

    /// The consumer handle, or `None` while another one exists.
    pub fn acquire_consumer(self: &Arc<Self>) -> Option<Consumer> {
        if self.taken.consumer.swap(true, Ordering::AcqRel) {
            return None;
        }
        let head = self.ctrl().head.0.load(Ordering::Acquire);
        Some(Consumer {
            ring: self.clone(),
            st: ConsumerState {
                head,
                released: head,
                tail_cache: head,
                sleeping: false,
                broken: (head & 7 != 0).then_some(RingError::IndexOutOfRange {
                    head,
                    tail: head,
                    capacity: self.capacity,
                }),
            },
        })
    }

    /// Copies `src` into the data area at byte position `pos`.
    ///
    /// # Safety
    /// `pos + src.len() <= capacity`, and the range must be owned by the caller
    /// as the single producer (not yet published).
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        debug_assert!(pos + src.len() as u64 <= self.capacity);
        // SAFETY: the caller guarantees the range is inside the data area; `src` is
        // private memory, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(pos as usize), src.len())
        };
    }

    /// Copies data bytes at `pos` into `dst`.
    ///
    /// # Safety
    /// `pos + len <= capacity`, `dst` valid for `len` bytes and private.
    unsafe fn copy_out(&self, pos: u64, dst: *mut u8, len: usize) {
        debug_assert!(pos + len as u64 <= self.capacity);
        // SAFETY: guaranteed by the caller; the source bytes may be modified by a
        // misbehaving peer, which only makes the copied values garbage, never UB
        // for this process (they are plain bytes, validated after copying).
        unsafe { std::ptr::copy_nonoverlapping(self.data.add(pos as usize), dst, len) };
    }

    /// Both shared indices, checked against each other (8-aligned, at most
    /// `capacity` apart): what a handle adopting the shared state may trust.
    fn shared_indices(&self) -> Result<(u64, u64), RingError> {
        let head = self.ctrl().head.0.load(Ordering::Acquire);
        let tail = self.ctrl().tail.0.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.capacity || (head | tail) & 7 != 0 {
            return Err(RingError::IndexOutOfRange {
                head,
                tail,
                capacity: self.capacity,
            });
        }
        Ok((head, tail))
    }

    fn load_head(&self, st: &mut ProducerState) -> Result<(), RingError> {
        let head = self.ctrl().head.0.load(Ordering::Acquire);
        // The consumer may only have advanced from head_cache up to our tail.
        let moved = head.wrapping_sub(st.head_cache);
        if moved > st.published.wrapping_sub(st.head_cache) {
            let e = if head.wrapping_sub(st.published) <= self.capacity && moved > self.capacity {
                RingError::IndexRegressed {
                    name: "head",
                    old: st.head_cache,
                    new: head,
                }
            } else {
                RingError::IndexOutOfRange {
                    head,
                    tail: st.published,
                    capacity: self.capacity,
                }
            };
            st.broken = Some(e.clone());
            return Err(e);
        }
        st.head_cache = head;
        Ok(())
    }

    fn free(&self, st: &ProducerState) -> u64 {
        self.capacity - st.tail.wrapping_sub(st.head_cache)
    }

    /// Writes one record (the concatenation of `parts`) without publishing it.
    /// Returns `Ok(false)` when the ring has no room for it now.
    ///
    /// # Safety
    /// The caller must be the only producer of this ring (in every process), and
    /// `st` must be the state of that producer for this ring.
    pub unsafe fn push(&self, st: &mut ProducerState, parts: &[&[u8]]) -> Result<bool, RingError> {
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        self.check_producer_words(st)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.max_record as usize {
            return Err(RingError::TooLarge {
                len,
                max: self.max_record as usize,
            });
        }
        let total = rec_size(len as u64);
        let pos = st.tail & (self.capacity - 1);
        let contig = self.capacity - pos;
        let need = if total > contig {
            contig + total
        } else {
            total
        };
        if self.free(st) < need {
            self.load_head(st)?;
            if self.free(st) < need {
                return Ok(false);
            }
        }
        let mut pos = pos;
        if total > contig {
            let pad = [0u32.to_le_bytes(), TAG_PAD.to_le_bytes()].concat();
            // SAFETY: contig >= 8 (positions are 8-aligned, capacity a multiple of 8),
            // and [pos, capacity) is free space owned by the producer (checked above).
            unsafe { self.copy_in(pos, &pad) };
            st.tail = st.tail.wrapping_add(contig);
            pos = 0;
        }
        let hdr = [(len as u32).to_le_bytes(), TAG_REC.to_le_bytes()].concat();
        // SAFETY: [pos, pos + total) is free, unpublished and inside the data area:
        // total <= contiguous space at pos (wrap handled above) and free >= need.
        unsafe {
            self.copy_in(pos, &hdr);
            let mut at = pos + REC_HDR;
            for p in parts {
                self.copy_in(at, p);
                at += p.len() as u64;
            }
        }
        st.tail = st.tail.wrapping_add(total);
        Ok(true)
    }

    /// Publishes everything pushed so far with one store. Returns true when the
    /// consumer announced it sleeps, i.e. the caller must ring its doorbell.
    pub fn publish(&self, st: &mut ProducerState) -> bool {
        if st.tail == st.published {
            return false;
        }
        st.published = st.tail;
        // Release: the record bytes written above become visible before the tail.
        self.ctrl().tail.0.store(st.tail, Ordering::Release);
        // SeqCst fence pairs with the one in `Consumer::set_sleeping`: either the
        // consumer's re-check after setting its flag sees this tail, or this load
        // sees the flag (Dekker). Without it both could miss and the consumer
        // would sleep on published data.
        fence(Ordering::SeqCst);
        self.ctrl().consumer_sleeping.0.load(Ordering::Relaxed) != 0
    }

    /// Our own shared words must still hold what we wrote: anything else is a
    /// scribble over the region (the peer never writes them).
    fn check_producer_words(&self, st: &mut ProducerState) -> Result<(), RingError> {
        let c = self.ctrl();
        let what = if c.tail.0.load(Ordering::Relaxed) != st.published {
            "producer tail"
        } else if c.producer_sleeping.0.load(Ordering::Relaxed) != u64::from(st.waiting) {
            "producer waiting flag"
        } else {
            return Ok(());
        };
        let e = RingError::Scribbled(what);
        st.broken = Some(e.clone());
        Err(e)
    }

    fn check_consumer_words(&self, st: &mut ConsumerState) -> Result<(), RingError> {
        let c = self.ctrl();
        let what = if c.head.0.load(Ordering::Relaxed) != st.released {
            "consumer head"
        } else if c.consumer_sleeping.0.load(Ordering::Relaxed) != u64::from(st.sleeping) {
            "consumer sleeping flag"
        } else {
            return Ok(());
        };
        let e = RingError::Scribbled(what);
        st.broken = Some(e.clone());
        Err(e)
    }

    fn load_tail(&self, st: &mut ConsumerState) -> Result<(), RingError> {
        self.check_consumer_words(st)?;
        let tail = self.ctrl().tail.0.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(st.head);
        if avail > self.capacity || avail & 7 != 0 {
            let e = RingError::IndexOutOfRange {
                head: st.head,
                tail,
                capacity: self.capacity,
            };
            st.broken = Some(e.clone());
            return Err(e);
        }
        if avail < st.tail_cache.wrapping_sub(st.head) {
            let e = RingError::IndexRegressed {
                name: "tail",
                old: st.tail_cache,
                new: tail,
            };
            st.broken = Some(e.clone());
            return Err(e);
        }
        st.tail_cache = tail;
        Ok(())
    }

    /// Pops one record, handing it to `f` while it is still in the ring.
    /// `Ok(None)` when empty. The space is returned to the producer on `release`.
    ///
    /// # Safety
    /// The caller must be the only consumer of this ring (in every process), and
    /// `st` must be the state of that consumer for this ring.
    pub unsafe fn pop_with<R>(
        &self,
        st: &mut ConsumerState,
        f: impl FnOnce(Record<'_>) -> R,
    ) -> Result<Option<R>, RingError> {
        loop {
            if let Some(e) = &st.broken {
                return Err(e.clone());
            }
            if st.head == st.tail_cache {
                self.load_tail(st)?;
                if st.head == st.tail_cache {
                    return Ok(None);
                }
            }
            let avail = st.tail_cache.wrapping_sub(st.head);
            let pos = st.head & (self.capacity - 1);
            let contig = self.capacity - pos;
            let mut hdr = [0u8; 8];
            // SAFETY: avail >= 8 (non-zero multiple of 8) and contig >= 8, so the 8
            // header bytes at pos are published and inside the data area.
            unsafe { self.copy_out(pos, hdr.as_mut_ptr(), 8) };
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let tag = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let bad = |st: &mut ConsumerState| {
                let e = RingError::BadRecord {
                    len,
                    tag,
                    available: avail,
                };
                st.broken = Some(e.clone());
                Err(e)
            };
            match tag {
                TAG_PAD if avail >= contig => {
                    st.head = st.head.wrapping_add(contig);
                }
                TAG_REC => {
                    let total = rec_size(u64::from(len));
                    if len > self.max_record || total > avail || total > contig {
                        return bad(st);
                    }
                    let rec = Record {
                        ring: self,
                        pos: pos + REC_HDR,
                        len: len as usize,
                    };
                    let r = f(rec);
                    st.head = st.head.wrapping_add(total);
                    return Ok(Some(r));
                }
                _ => return bad(st),
            }
        }
    }

    /// Returns consumed space to the producer. Returns true when the producer
    /// announced it waits for space, i.e. the caller must ring its doorbell.
    pub fn release(&self, st: &mut ConsumerState) -> bool {
        if st.head == st.released {
            return false;
        }
        st.released = st.head;
        // Release: our reads of the records happen before the producer reuses them.
        self.ctrl().head.0.store(st.head, Ordering::Release);
        // Pairs with the fence in `Producer::set_waiting` (see `publish`).
        fence(Ordering::SeqCst);
        self.ctrl().producer_sleeping.0.load(Ordering::Relaxed) != 0
    }
}

/// A record still in the ring. Its payload is contiguous.
pub struct Record<'a> {
    ring: &'a Ring,
    pos: u64,
    len: usize,
}

impl Record<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies payload bytes from `offset` into `out`; returns how many were copied.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> usize {
        let n = self.len.saturating_sub(offset).min(out.len());
        if n == 0 {
            // Also keeps `pos + offset` from pointing past the data area.
            return 0;
        }
        // SAFETY: offset + n <= len, and the record [pos, pos + len) was validated to
        // be published and inside the data area; `out` is private.
        unsafe {
            self.ring
                .copy_out(self.pos + offset as u64, out.as_mut_ptr(), n)
        };
        n
    }

    /// Appends the payload from `offset` on to `dst`; returns how many bytes.
    pub fn append_to(&self, offset: usize, dst: &mut BytesMut) -> usize {
        let n = self.len.saturating_sub(offset);
        if n == 0 {
            return 0;
        }
        dst.reserve(n);
        let spare = dst.spare_capacity_mut();
        // SAFETY: `reserve` made at least n spare bytes; the source range is inside
        // the validated record. After the copy those n bytes are initialised, so
        // extending the length by n is sound.
        unsafe {
            self.ring
                .copy_out(self.pos + offset as u64, spare.as_mut_ptr().cast::<u8>(), n);
            dst.set_len(dst.len() + n);
        }
        n
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.read(0, &mut v);
        v
    }
}

/// The single producer of a ring.
#[derive(Debug)]
pub struct Producer {
    ring: Arc<Ring>,
    st: ProducerState,
}

impl Producer {
    /// Writes one record made of `parts` (not yet visible; see [`Producer::publish`]).
    /// `Ok(false)` when full.
    pub fn try_push(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        // SAFETY: a Producer exists at most once per Ring (acquire_producer flag) and
        // owns `st`, which was made for this ring.
        unsafe { self.ring.push(&mut self.st, parts) }
    }

    /// Makes pushed records visible; true when the consumer's doorbell must be rung.
    pub fn publish(&mut self) -> bool {
        self.ring.publish(&mut self.st)
    }

    /// Whether a record of `len` payload bytes fits now (reloads the head).
    pub fn fits(&mut self, len: usize) -> Result<bool, RingError> {
        if let Some(e) = &self.st.broken {
            return Err(e.clone());
        }
        let total = rec_size(len as u64);
        let pos = self.st.tail & (self.ring.capacity - 1);
        let contig = self.ring.capacity - pos;
        let need = if total > contig {
            contig + total
        } else {
            total
        };
        self.ring.load_head(&mut self.st)?;
        Ok(self.ring.free(&self.st) >= need)
    }

    /// Takes this side's shared words (tail, waiting flag) as its own state.
    /// For a ring end that several processes use in turn (a program's
    /// connection after `fork`): whoever wrote last moved the tail. The words
    /// are checked against the consumer's head like any index from the peer.
    pub fn adopt_shared(&mut self) -> Result<(), RingError> {
        if let Some(e) = &self.st.broken {
            return Err(e.clone());
        }
        let (head, tail) = self
            .ring
            .shared_indices()
            .inspect_err(|e| self.st.broken = Some(e.clone()))?;
        let c = self.ring.ctrl();
        self.st.tail = tail;
        self.st.published = tail;
        self.st.head_cache = head;
        self.st.waiting = c.producer_sleeping.0.load(Ordering::Relaxed) != 0;
        Ok(())
    }

    /// Free bytes now (reloads the head).
    pub fn free_bytes(&mut self) -> Result<u64, RingError> {
        if let Some(e) = &self.st.broken {
            return Err(e.clone());
        }
        self.ring.load_head(&mut self.st)?;
        Ok(self.ring.free(&self.st))
    }

    /// Announces (or withdraws) that this producer waits for space. After setting
    /// it, re-check [`Producer::fits`] before sleeping (the fence pairs with `release`).
    pub fn set_waiting(&mut self, on: bool) {
        self.st.waiting = on;
        self.ring
            .ctrl()
            .producer_sleeping
            .0
            .store(u64::from(on), Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    pub fn max_record(&self) -> usize {
        self.ring.max_record()
    }

    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.ring.taken.producer.store(false, Ordering::Release);
    }
}

/// The single consumer of a ring.
#[derive(Debug)]
pub struct Consumer {
    ring: Arc<Ring>,
    st: ConsumerState,
}

impl Consumer {
    /// Pops one record into `f`; `Ok(None)` when empty.
    pub fn pop_with<R>(&mut self, f: impl FnOnce(Record<'_>) -> R) -> Result<Option<R>, RingError> {
        // SAFETY: a Consumer exists at most once per Ring (acquire_consumer flag) and
        // owns `st`, which was made for this ring.
        unsafe { self.ring.pop_with(&mut self.st, f) }
    }

    /// Pops one record as a Vec (convenience for tests and control paths).
    pub fn pop(&mut self) -> Result<Option<Vec<u8>>, RingError> {
        self.pop_with(|r| r.to_vec())
    }

    /// Returns consumed space; true when the producer's doorbell must be rung.
    pub fn release(&mut self) -> bool {
        self.ring.release(&mut self.st)
    }

    /// Whether a record is available (reloads the tail when needed).
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        if let Some(e) = &self.st.broken {
            return Err(e.clone());
        }
        if self.st.head != self.st.tail_cache {
            return Ok(true);
        }
        self.ring.load_tail(&mut self.st)?;
        Ok(self.st.head != self.st.tail_cache)
    }

    /// Takes this side's shared words (head, sleeping flag) as its own state;
    /// see [`Producer::adopt_shared`]. Records not yet released are released.
    pub fn adopt_shared(&mut self) -> Result<(), RingError> {
        if let Some(e) = &self.st.broken {
            return Err(e.clone());
        }
        self.ring.release(&mut self.st);
        let (head, _) = self
            .ring
            .shared_indices()
            .inspect_err(|e| self.st.broken = Some(e.clone()))?;
        let c = self.ring.ctrl();
        self.st.head = head;
        self.st.released = head;
        self.st.tail_cache = head;
        self.st.sleeping = c.consumer_sleeping.0.load(Ordering::Relaxed) != 0;
        Ok(())
    }

    /// Bytes published and not yet consumed (reloads the tail).
    pub fn backlog(&mut self) -> Result<u64, RingError> {
        if let Some(e) = &self.st.broken {
            return Err(e.clone());
        }
        self.ring.load_tail(&mut self.st)?;
        Ok(self.st.tail_cache.wrapping_sub(self.st.head))
    }

    /// Announces (or withdraws) that this consumer sleeps. After setting it,
    /// re-check [`Consumer::has_data`] before sleeping (the fence pairs with `publish`).
    pub fn set_sleeping(&mut self, on: bool) {
        self.st.sleeping = on;
        self.ring
            .ctrl()
            .consumer_sleeping
            .0
            .store(u64::from(on), Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    /// Bytes consumed but not yet released.
    pub fn unreleased(&self) -> u64 {
        self.st.head.wrapping_sub(self.st.released)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.ring.taken.consumer.store(false, Ordering::Release);
    }
}
