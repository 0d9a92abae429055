//! The fast path (hetero-socket): a program's own TCP connection to the other
//! half of its Pod, carried on a ring pair of its own instead of kernel TCP.
//!
//! The pieces meet like this (emulated DPU; the relays share a host):
//! * The CPU relay runs a broker on an abstract Unix socket
//!   ([`BROKER_NAME`]) in the Pod's network namespace, so every container of
//!   the Pod, and nothing outside it, can reach it.
//! * The preloaded library (`libheterosocket.so`) sends a [`wire::Request`]
//!   for each TCP connect. The broker answers `Pass` unless the destination is
//!   a listener of the other half; then it creates a sealed memfd region with
//!   two rings, connects to the DPU relay's fast socket
//!   ([`fast_socket_path`]) and forwards the request with the region.
//! * The DPU relay connects to the real listener and answers; the broker hands
//!   the program the answer, its end of that Unix connection and the region,
//!   and forgets them: the data never passes the CPU relay.
//!
//! The accept side is the same connection set up the other way round:
//! * A preloaded program that listens registers its listener with the broker
//!   (`Listen`, held for as long as the program keeps the request's socket).
//! * When the DPU half connects to a mirror of that listener, the DPU relay
//!   sends `Incoming` to the CPU relay's accept socket
//!   ([`accept_socket_path`]). The CPU relay makes the region and a loopback
//!   TCP "carrier" connection to the listener: it is what makes the program's
//!   listening socket readable and its `accept` return, as for any connection.
//! * The library sees a connection from its own address and sends `Claim`
//!   with the carrier's address; the broker answers the DPU relay (with the
//!   region) and hands the program the other end of the DPU relay's Unix
//!   connection in place of the carrier. Unclaimed within a few seconds (the
//!   listener's process was not preloaded after all), the DPU relay carries
//!   the connection through the relay as before.
//!
//! On the connection: ring 0 carries program → DPU relay, ring 1 the reverse.
//! A record is data; an empty record is the end of the stream (FIN). The Unix
//! connection is the program's descriptor: the DPU relay writes one
//! [`DATA_TOKEN`] byte per record it publishes, so the descriptor is readable
//! exactly while records wait (epoll, poll and select need no help); the
//! program writes a byte when the relay announced it sleeps. When the
//! program's ring is nearly full it fills its socket's send buffer, so its
//! descriptor stops polling writable; the relay reads (and drops) those bytes
//! once the ring is half empty again, as a kernel socket's send buffer drains.
//! The Unix connection closing is the peer going away: without a FIN first,
//! that is a reset.

pub mod fds;
pub mod wire;

use std::path::{Path, PathBuf};

/// Abstract Unix socket name of the broker, in the Pod's network namespace.
pub const BROKER_NAME: &[u8] = b"heteropod.fastpath";
/// The byte the DPU relay sends per published record.
pub const DATA_TOKEN: u8 = b'D';
/// Ring bytes per direction of one fast connection. A ring is memory only as
/// far as bytes have flowed through it. Measured with iperf3 (2-core VM, one
/// stream): 256 KiB 0.2, 1 MiB 4.3, 4 MiB 18.1 Gbit/s (relay: 11-13): a
/// program's writes (iperf3: 128 KiB) must be small against the ring, or
/// every write finds it "nearly full" and waits for the peer.
pub const RING_BYTES: u64 = 4 << 20;
/// Most fast connections one DPU relay serves at once; beyond, programs get
/// `Pass` and use the relay. Bounds what a Pod can make the node map:
/// 1,024 × 2 rings × 4 MiB.
pub const MAX_CONNECTIONS: usize = 1024;

/// The DPU relay's fast socket, next to the link's rendezvous socket.
pub fn fast_socket_path(rendezvous: &Path) -> PathBuf {
    beside(rendezvous, ".fast")
}

/// The CPU relay's socket for connections the DPU half makes to a listener
/// that accepts fast connections (bound only while there is one).
pub fn accept_socket_path(rendezvous: &Path) -> PathBuf {
    beside(rendezvous, ".accept")
}

fn beside(rendezvous: &Path, suffix: &str) -> PathBuf {
    let mut p = rendezvous.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}
