//! Routes process exits (reported by pid) to the process they belong to.
//!
//! A process can exit before its pid is known to us (an exec that ends at once),
//! so exits of unknown pids are remembered briefly and matched at registration.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::process::{Exit, Process};

/// How long an unmatched exit is kept, and how many at most.
const UNMATCHED_TTL: Duration = Duration::from_secs(30);
const UNMATCHED_MAX: usize = 256;

pub struct Watched<C> {
    pub owner: Arc<C>,
    pub process: Arc<Process>,
}

impl<C> Clone for Watched<C> {
    fn clone(&self) -> Self {
        Watched {
            owner: self.owner.clone(),
            process: self.process.clone(),
        }
    }
}

struct Table<C> {
    by_pid: HashMap<u32, Watched<C>>,
    unmatched: VecDeque<(u32, Exit, Instant)>,
}

pub struct ExitTable<C> {
    table: Mutex<Table<C>>,
}

impl<C> Default for ExitTable<C> {
    fn default() -> Self {
        ExitTable {
            table: Mutex::new(Table {
                by_pid: HashMap::new(),
                unmatched: VecDeque::new(),
            }),
        }
    }
}

impl<C> ExitTable<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table<C>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `pid`; returns its exit if it already happened.
    pub fn register(&self, pid: u32, watched: Watched<C>) -> Option<Exit> {
        let mut t = self.lock();
        let now = Instant::now();
        t.unmatched
            .retain(|(_, _, at)| now.duration_since(*at) < UNMATCHED_TTL);
        if let Some(i) = t.unmatched.iter().position(|(p, _, _)| *p == pid) {
            return t.unmatched.remove(i).map(|(_, exit, _)| exit);
        }
        t.by_pid.insert(pid, watched);
        None
    }

    /// An exit was reaped; returns whom it belongs to, or keeps it for later.
    pub fn exited(&self, pid: u32, exit: Exit) -> Option<Watched<C>> {
        let mut t = self.lock();
        if let Some(w) = t.by_pid.remove(&pid) {
            return Some(w);
        }
        if t.unmatched.len() >= UNMATCHED_MAX {
            t.unmatched.pop_front();
        }
        t.unmatched.push_back((pid, exit, Instant::now()));
        None
    }

    pub fn forget(&self, pid: u32) {
        self.lock().by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Stdio;

    fn watched() -> Watched<()> {
        Watched {
            owner: Arc::new(()),
            process: Arc::new(Process::new("", Stdio::default(), None)),
        }
    }

    #[test]
    fn exit_of_a_registered_pid_is_routed() {
        let sut = ExitTable::default();
        assert!(sut.register(10, watched()).is_none());
        assert!(sut.exited(10, Exit::now(0)).is_some());
        assert!(sut.exited(10, Exit::now(0)).is_none(), "routed only once");
    }

    #[test]
    fn exit_before_registration_is_returned_at_registration() {
        let sut = ExitTable::default();
        assert!(sut.exited(11, Exit::now(7)).is_none());
        let early = sut.register(11, watched()).expect("early exit kept");
        assert_eq!(early.status, 7);
        assert!(
            sut.exited(11, Exit::now(0)).is_none(),
            "not registered after early exit"
        );
    }

    #[test]
    fn unmatched_exits_are_bounded() {
        let sut: ExitTable<()> = ExitTable::default();
        for pid in 0..(UNMATCHED_MAX as u32 + 10) {
            sut.exited(pid, Exit::now(0));
        }
        assert!(sut.register(0, watched()).is_none(), "oldest dropped");
        assert!(sut.register(UNMATCHED_MAX as u32 + 9, watched()).is_some());
    }
}
