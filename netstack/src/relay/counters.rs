//! Relay counters, served as JSON on a Unix socket and logged on SIGUSR1.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use super::error::{Error, Result};

/// Counters of the relay's own work (the Mux keeps its own, see `MuxStats`).
#[derive(Debug, Default)]
pub struct Counters {
    pub mirrors_active: AtomicU64,
    pub mirror_accepts: AtomicU64,
    pub egress_accepts: AtomicU64,
    pub connects_ok: AtomicU64,
    pub connects_failed: AtomicU64,
    pub splices_active: AtomicU64,
    pub splices_reset: AtomicU64,
    pub bytes_tcp_to_stream: AtomicU64,
    pub bytes_stream_to_tcp: AtomicU64,
    pub udp_datagrams_out: AtomicU64,
    pub udp_datagrams_in: AtomicU64,
    pub control_errors: AtomicU64,
    pub peer_gone: AtomicU64,
    /// Connections the Pod's own rules redirected (a mesh sidecar's capture),
    /// sent (CPU side) or delivered (DPU side) with their original destination.
    pub captured: AtomicU64,
    /// Connections refused because they came back into the relay pair.
    pub loops_refused: AtomicU64,
    /// Fast-path connections: brokered (CPU side) or served (DPU side).
    pub fast_connects: AtomicU64,
    /// Connections of the DPU half handed to a CPU program's fast listener.
    pub fast_accepts: AtomicU64,
    /// Fast-path requests answered "use the kernel" (not the other half's listener).
    pub fast_passed: AtomicU64,
    pub fast_failed: AtomicU64,
    pub fast_active: AtomicU64,
    pub fast_reset: AtomicU64,
    pub fast_bytes_in: AtomicU64,
    pub fast_bytes_out: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Relaxed);
    }

    pub fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Relaxed);
        json!({
            "mirrors_active": g(&self.mirrors_active),
            "mirror_accepts": g(&self.mirror_accepts),
            "egress_accepts": g(&self.egress_accepts),
            "connects_ok": g(&self.connects_ok),
            "connects_failed": g(&self.connects_failed),
            "splices_active": g(&self.splices_active),
            "splices_reset": g(&self.splices_reset),
            "bytes_tcp_to_stream": g(&self.bytes_tcp_to_stream),
            "bytes_stream_to_tcp": g(&self.bytes_stream_to_tcp),
            "udp_datagrams_out": g(&self.udp_datagrams_out),
            "udp_datagrams_in": g(&self.udp_datagrams_in),
            "control_errors": g(&self.control_errors),
            "peer_gone": g(&self.peer_gone),
            "captured": g(&self.captured),
            "loops_refused": g(&self.loops_refused),
            "fast_connects": g(&self.fast_connects),
            "fast_accepts": g(&self.fast_accepts),
            "fast_passed": g(&self.fast_passed),
            "fast_failed": g(&self.fast_failed),
            "fast_active": g(&self.fast_active),
            "fast_reset": g(&self.fast_reset),
            "fast_bytes_in": g(&self.fast_bytes_in),
            "fast_bytes_out": g(&self.fast_bytes_out),
            "cpu_us": process_cpu_us(),
        })
    }
}

/// User + system CPU time of this relay process so far, in microseconds: a
/// relay on a DPU (or in a guest) is measured where it runs and reported here.
fn process_cpu_us() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0;
    };
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    us(u.user_time()) + us(u.system_time())
}

/// Produces the full stats document (relay + mux counters).
pub type Snapshot = Arc<dyn Fn() -> Value + Send + Sync>;

/// Serves one JSON document per connection on a Unix socket; removes the
/// socket file when dropped.
pub struct StatsSocket {
    path: PathBuf,
}

impl StatsSocket {
    pub fn bind(path: &Path, snapshot: Snapshot) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut doc = snapshot().to_string();
                doc.push('\n');
                tokio::spawn(async move {
                    let _ = conn.write_all(doc.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for StatsSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
