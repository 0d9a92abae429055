//! HeteroNet relay counters. Each relay serves one JSON document per
//! connection on its stats socket: `{"relay": {..}, "mux": {..}}` (see
//! netstack `relay::counters` and `mux::MuxStats`). The CPU relay's socket is
//! `<dir>/heteropod-<first 16 chars of the sandbox id>.stats.sock` (as the
//! shim names it); the DPU relay's document comes through the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use heteropod_dpu_proxy::client::PodNetworkInfo;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::{Relay, Side};

/// Where the shim tells the CPU relay to serve its counters.
pub const DEFAULT_STATS_DIR: &str = "/dev/shm";
/// A relay answers at once; a stuck one must not stall the status.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Far above a real document; the relay is a peer, not trusted to be sane.
const MAX_DOCUMENT: u64 = 1 << 20;

/// The counters operators look at; `raw` keeps the whole document.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayCounters {
    pub connected: Option<bool>,
    pub streams_active: Option<u64>,
    pub streams_total: Option<u64>,
    /// Bytes this side sent to / received from the other side.
    pub bytes_tx: Option<u64>,
    pub bytes_rx: Option<u64>,
    pub spins: Option<u64>,
    pub sleeps: Option<u64>,
    pub wakeups: Option<u64>,
    /// Fast-path (hetero-socket) connections open now and ever made: brokered
    /// by the CPU relay, served by the DPU relay.
    pub fast_active: Option<u64>,
    pub fast_total: Option<u64>,
    pub raw: Value,
}

impl RelayCounters {
    pub fn from_document(doc: Value) -> RelayCounters {
        let mux = |k: &str| {
            doc.get("mux")
                .and_then(|m| m.get(k))
                .and_then(Value::as_u64)
        };
        let relay = |k: &str| {
            doc.get("relay")
                .and_then(|m| m.get(k))
                .and_then(Value::as_u64)
        };
        RelayCounters {
            fast_active: relay("fast_active"),
            // Brokered either way: the Pod's programs connected, or accepted.
            fast_total: match (relay("fast_connects"), relay("fast_accepts")) {
                (None, None) => None,
                (c, a) => Some(c.unwrap_or(0) + a.unwrap_or(0)),
            },
            connected: doc
                .get("mux")
                .and_then(|m| m.get("connected"))
                .and_then(Value::as_bool),
            streams_active: mux("streams_open"),
            streams_total: mux("streams_total"),
            bytes_tx: mux("bytes_tx"),
            bytes_rx: mux("bytes_rx"),
            spins: mux("spins"),
            sleeps: mux("sleeps"),
            wakeups: mux("wakeups"),
            raw: doc,
        }
    }
}

pub fn cpu_stats_socket(dir: &Path, pod_id: &str) -> PathBuf {
    let short: String = pod_id.chars().take(16).collect();
    dir.join(format!("heteropod-{short}.stats.sock"))
}

/// The CPU relay of `pod_id`: its pid (the socket's peer) and counters.
pub async fn cpu_side(pod_id: &str, dir: &Path) -> Relay {
    let path = cpu_stats_socket(dir, pod_id);
    let mut relay = Relay {
        pod_id: pod_id.to_string(),
        side: Some(Side::Cpu),
        ..Relay::default()
    };
    match tokio::time::timeout(READ_TIMEOUT, read_socket(&path)).await {
        Ok(Ok((pid, doc))) => {
            relay.pid = pid;
            relay.counters = Some(RelayCounters::from_document(doc));
        }
        Ok(Err(e)) => relay.error = Some(format!("{}: {e}", path.display())),
        Err(_) => relay.error = Some(format!("{}: no answer within 1 s", path.display())),
    }
    relay
}

async fn read_socket(path: &Path) -> Result<(Option<u32>, Value), String> {
    let conn = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
    let pid = conn
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0);
    let mut buf = Vec::new();
    conn.take(MAX_DOCUMENT)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let doc = serde_json::from_slice(&buf).map_err(|e| format!("not a JSON document: {e}"))?;
    Ok((pid, doc))
}

/// The DPU relay as the agent reports it.
pub fn dpu_side(net: &PodNetworkInfo) -> Relay {
    let (counters, error) = if net.relay_stats_json.is_empty() {
        (
            None,
            Some("the DPU relay's counters did not come".to_string()),
        )
    } else {
        match serde_json::from_str(&net.relay_stats_json) {
            Ok(doc) => (Some(RelayCounters::from_document(doc)), None),
            Err(e) => (None, Some(format!("DPU relay counters: {e}"))),
        }
    };
    Relay {
        pod_id: net.pod_id.clone(),
        side: Some(Side::Dpu),
        pid: Some(net.relay_pid).filter(|p| *p > 0),
        restarts: Some(net.relay_restarts),
        counters,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mux_counters_and_leaves_missing_ones_empty() {
        let doc = serde_json::json!({
            "relay": {"connects_ok": 1, "fast_connects": 5, "fast_accepts": 2, "fast_active": 1},
            "mux": {"connected": true, "streams_open": 2, "streams_total": 9, "bytes_tx": 10,
                    "bytes_rx": 20, "spins": 3, "sleeps": 4}
        });
        let sut = RelayCounters::from_document(doc);
        assert_eq!(sut.connected, Some(true));
        assert_eq!((sut.streams_active, sut.streams_total), (Some(2), Some(9)));
        assert_eq!((sut.bytes_tx, sut.bytes_rx), (Some(10), Some(20)));
        assert_eq!(
            (sut.spins, sut.sleeps, sut.wakeups),
            (Some(3), Some(4), None)
        );
        assert_eq!((sut.fast_active, sut.fast_total), (Some(1), Some(7)));
    }

    #[test]
    fn socket_name_uses_the_first_16_chars_of_the_sandbox_id() {
        let sut = cpu_stats_socket(Path::new("/dev/shm"), "0123456789abcdef0123");
        assert_eq!(
            sut,
            Path::new("/dev/shm/heteropod-0123456789abcdef.stats.sock")
        );
    }
}
