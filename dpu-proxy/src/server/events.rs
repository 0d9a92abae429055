//! Exit and OOM events, kept in order with sequence numbers so a client can
//! long-poll for those after the last one it saw.
use std::collections::VecDeque;

use tokio::sync::Notify;

/// Events kept for clients that fall behind.
const KEPT_EVENTS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Exit,
    Oom,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub kind: EventKind,
    pub container_id: String,
    pub exec_id: String,
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at_nanos: i64,
    pub reason: String,
}

pub struct EventLog {
    /// Distinguishes agent runs: sequence numbers restart with the agent.
    pub instance: String,
    inner: std::sync::Mutex<(u64, VecDeque<Event>)>,
    notify: Notify,
}

impl EventLog {
    pub fn new(instance: String) -> Self {
        EventLog {
            instance,
            inner: std::sync::Mutex::new((0, VecDeque::new())),
            notify: Notify::new(),
        }
    }

    pub fn publish(&self, mut e: Event) {
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.0 += 1;
            e.seq = g.0;
            if g.1.len() >= KEPT_EVENTS {
                g.1.pop_front();
            }
            tracing::info!(container = %e.container_id, exec = %e.exec_id, kind = ?e.kind, status = e.exit_status, "event");
            g.1.push_back(e);
        }
        self.notify.notify_waiters();
    }

    /// Events after `after_seq` (all kept ones when `instance` is another
    /// run's), waiting until there is at least one.
    pub async fn wait(&self, after_seq: u64, instance: &str) -> Vec<Event> {
        let after = if instance == self.instance {
            after_seq
        } else {
            0
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let out: Vec<Event> = g.1.iter().filter(|e| e.seq > after).cloned().collect();
                if !out.is_empty() {
                    return out;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(id: &str) -> Event {
        Event {
            seq: 0,
            kind: EventKind::Exit,
            container_id: id.into(),
            exec_id: String::new(),
            pid: 1,
            exit_status: 0,
            exited_at_nanos: 0,
            reason: String::new(),
        }
    }

    #[tokio::test]
    async fn events_after_a_seq_are_returned_in_order() {
        let sut = EventLog::new("run1".into());
        sut.publish(exit("a"));
        sut.publish(exit("b"));
        let got = sut.wait(1, "run1").await;
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].seq, got[0].container_id.as_str()), (2, "b"));
        // A client from an earlier agent run gets everything kept.
        assert_eq!(sut.wait(5, "run0").await.len(), 2);
    }
}
