//! Errors of the ivshmem server, host peer and guest side.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("shared memory size {0} must be a power of two of at least 4096 bytes (QEMU maps it as a PCI BAR)")]
    BadSize(u64),
    #[error("vectors must be 1..={max}, got {got}")]
    BadVectors { got: u32, max: u32 },
    #[error("shared memory {0} already exists (remove it, or let the server replace it)")]
    ShmExists(PathBuf),
    #[error(
        "bad shared memory name {0:?}: expected a plain name (under /dev/shm) or an absolute path"
    )]
    BadShmName(String),
    #[error("all 65536 peer ids are in use")]
    PeersExhausted,
    #[error("ivshmem protocol: {0}")]
    Protocol(&'static str),
    #[error("unsupported ivshmem protocol version {0} (expected 0)")]
    Version(i64),
    #[error("the ivshmem server closed the connection")]
    ServerClosed,
    #[error("no peer {0}")]
    NoPeer(u16),
    #[error("peer {peer} has no vector {vector}")]
    NoVector { peer: u16, vector: u16 },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("bad PCI address {0:?}, expected dddd:bb:dd.f")]
    BadBdf(String),
    #[error("{bdf} is not an ivshmem device (vendor:device {found}, expected 1af4:1110)")]
    NotIvshmem { bdf: String, found: String },
    #[error("register offset {offset} is outside the {len} mapped bytes or unaligned")]
    RegisterOutOfBounds { offset: usize, len: usize },
    #[error("range {offset}+{len} is outside the {size}-byte shared memory")]
    OutOfBounds { offset: u64, len: usize, size: u64 },
    #[error("IVPosition reads {0}: interrupts are not set up")]
    NoPosition(i32),
    #[error("the vfio-pci driver is not loaded (modprobe vfio-pci)")]
    VfioNotLoaded,
    #[error("binding {bdf} to vfio-pci failed: now bound to {driver:?}")]
    VfioBind { bdf: String, driver: Option<String> },
    #[error("{bdf} has no IOMMU group (boot the guest with an IOMMU: -device intel-iommu, intel_iommu=on)")]
    NoIommuGroup { bdf: String },
    #[error("vfio {op}: {source}")]
    Vfio {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("vfio: {0}")]
    VfioUnsupported(&'static str),
    #[error("device has {have} MSI-X vectors, {want} wanted")]
    TooFewMsix { have: u32, want: u32 },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A `map_err` helper that names what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// As [`io`], for nix errors.
pub(crate) fn nix(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let context = context.into();
    move |e| Error::Io {
        context,
        source: e.into(),
    }
}
