//! The slot control block: one record per side in the header page, written
//! only by its owner, read (never trusted) by the other side.
//!
//! Record words (u64, little endian, accessed atomically):
//! * `EPOCH`: random per attach attempt (so per process start too); 0 = none.
//! * `HEARTBEAT`: bumped every [`HEARTBEAT_EVERY`] while attached.
//! * `PEER_ID`: the owner's ivshmem peer id.
//! * `SLOT`: `k | n << 32`, so both ends agree on the window.
//! * `ACK` (creator): the opener epoch it accepted; `STATE` (opener): request state.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::Result;
use crate::shm::{Region, Window};

pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// A peer whose heartbeat did not move for this long is gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Which record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rec {
    Creator = 0,
    Opener = 16,
}

#[derive(Debug, Clone, Copy)]
pub enum Word {
    Epoch = 0,
    Heartbeat = 1,
    PeerId = 2,
    Slot = 3,
    /// Creator: accepted opener epoch. Opener: [`STATE_REQUESTING`] / [`STATE_ATTACHED`].
    AckOrState = 4,
}

pub const STATE_NONE: u64 = 0;
pub const STATE_REQUESTING: u64 = 1;
pub const STATE_ATTACHED: u64 = 2;

/// Reads a word; Acquire pairs with the owner's Release stores.
pub fn get(region: &Region, rec: Rec, w: Word) -> Result<u64> {
    Ok(region
        .control_word(rec as usize + w as usize)?
        .load(Ordering::Acquire))
}

/// Writes one of our own words.
pub fn set(region: &Region, rec: Rec, w: Word, v: u64) -> Result<()> {
    region
        .control_word(rec as usize + w as usize)?
        .store(v, Ordering::Release);
    Ok(())
}

/// Bumps our heartbeat (a plain store: only we write it).
pub fn beat(region: &Region, rec: Rec) -> Result<()> {
    let hb = get(region, rec, Word::Heartbeat)?;
    set(region, rec, Word::Heartbeat, hb.wrapping_add(1))
}

pub fn encode_slot(w: Window) -> u64 {
    u64::from(w.index) | (u64::from(w.count) << 32)
}

/// "k/n" of an encoded slot word, or the raw value when it is not one.
pub fn describe_slot(v: u64) -> String {
    match Window::new(v as u32, (v >> 32) as u32) {
        Ok(w) => w.to_string(),
        Err(_) => format!("{v:#x} (garbage)"),
    }
}

/// A fresh non-zero random epoch.
pub fn new_epoch() -> u64 {
    let mut buf = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok();
    let mut v = u64::from_ne_bytes(buf);
    if !from_os {
        // Randomly keyed per process by std.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        v = h.finish();
    }
    v.max(1)
}
