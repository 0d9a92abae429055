//! Descriptor → fast connection. Descriptors not in the table are not ours,
//! and a program without fast connections pays one atomic load per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::conn::Conn;

static ENTRIES: AtomicUsize = AtomicUsize::new(0);

fn table() -> &'static RwLock<HashMap<i32, Arc<Conn>>> {
    static T: OnceLock<RwLock<HashMap<i32, Arc<Conn>>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// The connection behind `fd`, if it is a fast one.
pub fn get(fd: i32) -> Option<Arc<Conn>> {
    if fd < 0 || ENTRIES.load(Ordering::Acquire) == 0 {
        return None;
    }
    table()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&fd)
        .cloned()
}

/// Makes `fd` a descriptor of `conn` (replacing what it was).
pub fn insert(fd: i32, conn: Arc<Conn>) {
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    if t.insert(fd, conn).is_none() {
        ENTRIES.fetch_add(1, Ordering::AcqRel);
    }
}

/// Forgets `fd`; the connection ends when its last descriptor is forgotten.
pub fn remove(fd: i32) -> Option<Arc<Conn>> {
    if fd < 0 || ENTRIES.load(Ordering::Acquire) == 0 {
        return None;
    }
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    let old = t.remove(&fd);
    if old.is_some() {
        ENTRIES.fetch_sub(1, Ordering::AcqRel);
    }
    old
}

/// How many descriptors refer to fast connections.
pub fn len() -> usize {
    ENTRIES.load(Ordering::Acquire)
}

/// Forgets the descriptors in `first..=last` (`close_range`).
pub fn remove_within(first: u32, last: u32) {
    if ENTRIES.load(Ordering::Acquire) == 0 {
        return;
    }
    let fds: Vec<i32> = table()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .filter(|&fd| (first..=last).contains(&(fd as u32)))
        .collect();
    for fd in fds {
        remove(fd);
    }
}
