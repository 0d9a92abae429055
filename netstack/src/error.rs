//! Errors of the heteronet library.

use std::io;

/// Why a region header was refused by the opener.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("region of {0} bytes is too small")]
    TooSmall(u64),
    #[error("bad magic {0:#018x}")]
    BadMagic(u64),
    #[error("unsupported version {found} (expected {expected})")]
    Version { found: u32, expected: u32 },
    #[error("header says {header} bytes but the mapping has {actual}")]
    SizeMismatch { header: u64, actual: u64 },
    #[error("bad layout: {0}")]
    BadLayout(&'static str),
    #[error("header changed while attached")]
    Changed,
}

/// Corruption found in a ring's shared indices or records.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum RingError {
    #[error("indices out of range (head {head}, tail {tail}, capacity {capacity})")]
    IndexOutOfRange { head: u64, tail: u64, capacity: u64 },
    #[error("index went backwards ({name}: {old} -> {new})")]
    IndexRegressed {
        name: &'static str,
        old: u64,
        new: u64,
    },
    #[error("bad record header (len {len}, tag {tag:#x}, available {available})")]
    BadRecord { len: u32, tag: u32, available: u64 },
    #[error("shared {0} changed behind our back (only this side writes it)")]
    Scribbled(&'static str),
    #[error("record of {len} bytes exceeds the maximum {max}")]
    TooLarge { len: usize, max: usize },
}

/// Errors of the heteronet library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid region address {addr:?}: {reason}")]
    BadAddr { addr: String, reason: &'static str },
    #[error("region {path}: {context}: {source}")]
    RegionIo {
        path: String,
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("region header: {0}")]
    Header(#[from] HeaderError),
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    #[error("rendezvous {context}: {source}")]
    Rendezvous {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("rendezvous protocol: {0}")]
    Handshake(&'static str),
    #[error("doorbell: {0}")]
    Doorbell(#[source] io::Error),
    #[error("mux protocol: {0}")]
    Protocol(&'static str),
    #[error("limit reached: {0}")]
    Limit(&'static str),
    #[error("peer gone")]
    PeerGone,
    #[error("mux closed")]
    Closed,
    #[error("stream reset")]
    Reset,
    #[error("stream i/o: {0}")]
    Io(#[from] io::Error),
    #[error("slot {window} of a {total}-byte mapping: {reason}")]
    Window {
        window: crate::shm::Window,
        total: u64,
        reason: &'static str,
    },
    #[error("ivshmem: {0}")]
    Ivshmem(#[from] heteropod_ivshmem::Error),
    #[error("ivshmem server {socket} unreachable: {source}")]
    IvshmemServer {
        socket: String,
        #[source]
        source: heteropod_ivshmem::Error,
    },
    #[error("slot handshake: {0}")]
    Slot(String),
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Reset | Error::PeerGone | Error::Ring(_) | Error::Protocol(_) => {
                io::ErrorKind::ConnectionReset
            }
            Error::Closed => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
