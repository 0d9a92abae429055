//! A mapped shared region: creation (header written), opening (header validated), teardown.
//!
//! The mapping is held as a raw pointer ([`memmap2::MmapRaw`]): the peer writes it
//! concurrently, so no Rust reference to its bytes is ever created here. Bytes
//! are moved with `ptr::copy_nonoverlapping` into or out of private buffers.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use super::layout::{
    Header, Layout, CONTROL_OFFSET, CONTROL_SIZE, DEFAULT_RING_BYTES, GENERATION_OFFSET,
    HEADER_BYTES, MAGIC, RING_CTRL_SIZE, VERSION,
};
use super::ring::{Ring, Taken};
use super::RegionAddr;
use crate::error::{Error, HeaderError, Result};

/// A mapped region with a validated header.
#[derive(Debug)]
pub struct Region {
    map: MmapRaw,
    addr: RegionAddr,
    /// The backing file, kept so it can be passed to the peer (shm, memfd).
    file: Option<File>,
    /// The creator removes the shm file on drop.
    remove_on_drop: Option<PathBuf>,
    header: Header,
    /// Per ring: which handles exist, shared by every [`Region::ring`] call so
    /// safe code cannot get two producers (or consumers) of one ring.
    taken: [Arc<Taken>; 2],
}

fn io_err(path: &std::path::Path, context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::RegionIo {
        path,
        context,
        source,
    }
}

fn dax_size(path: &std::path::Path) -> Result<u64> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(Error::Config("dax path has no device name"))?;
    let sys = PathBuf::from(format!("/sys/bus/dax/devices/{name}/size"));
    let s = fs::read_to_string(&sys).map_err(io_err(&sys, "read dax size"))?;
    s.trim()
        .parse()
        .map_err(|_| Error::Config("unparsable dax size"))
}

impl Region {
    /// Creates (or, for pci/dax and slot windows, takes over) a region and
    /// writes a fresh header. `ring_bytes` is per direction; pci/dax/windows
    /// use the largest layout that fits when it is `None`. A stale shm file of
    /// the same name is replaced (a windowed shm file is opened, never replaced).
    pub fn create(addr: &RegionAddr, ring_bytes: Option<u64>, creator_side: u32) -> Result<Region> {
        match addr {
            RegionAddr::Shm(_) | RegionAddr::Memfd => {
                Self::create_file(addr, ring_bytes, creator_side)
            }
            RegionAddr::Pci { .. } | RegionAddr::Dax(_) | RegionAddr::Window { .. } => {
                let file = Self::open_base(addr)?;
                Self::create_in(addr, file, ring_bytes, creator_side)
            }
            RegionAddr::Ivshmem { .. } => Err(Error::Config(
                "an ivshmem region lives in the server's memory: map it with Region::create_in",
            )),
        }
    }

    fn create_file(
        addr: &RegionAddr,
        ring_bytes: Option<u64>,
        creator_side: u32,
    ) -> Result<Region> {
        let layout = Layout::with_ring_bytes(ring_bytes.unwrap_or(DEFAULT_RING_BYTES))?;
        let (file, remove) = match addr.file_path() {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(io_err(dir, "create directory"))?;
                }
                // A file left by a crashed creator: the creator owns this name.
                let _ = fs::remove_file(&path);
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(&path, "create"))?;
                (f, Some(path))
            }
            None => {
                let fd = nix::sys::memfd::memfd_create(
                    c"heteronet",
                    nix::sys::memfd::MFdFlags::MFD_CLOEXEC
                        | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
                )
                .map_err(|e| Error::RegionIo {
                    path: "memfd".into(),
                    context: "memfd_create",
                    source: e.into(),
                })?;
                (File::from(fd), None)
            }
        };
        let p = addr.to_string();
        file.set_len(layout.total_size)
            .map_err(io_err(std::path::Path::new(&p), "set size"))?;
        if remove.is_none() {
            // A peer that truncated the memfd would make our accesses fault
            // (SIGBUS); seal the size. (tmpfs files under /dev/shm cannot be sealed.)
            use nix::fcntl::{fcntl, FcntlArg, SealFlag};
            let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
            fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| Error::RegionIo {
                path: p.clone(),
                context: "seal memfd",
                source: e.into(),
            })?;
        }
        let map = Self::map(addr, &file, 0, layout.total_size)?;
        Ok(Self::init(map, addr, file, remove, layout, creator_side))
    }

    /// Takes over a fixed-size mapping (pci, dax) or one slot window of it
    /// (`@k/n`, `ivshmem:` with the server's memory as `file`) and writes a header.
    pub fn create_in(
        addr: &RegionAddr,
        file: File,
        ring_bytes: Option<u64>,
        creator_side: u32,
    ) -> Result<Region> {
        let (offset, size) = Self::extent(addr, &file)?;
        let layout = match ring_bytes {
            Some(b) => Layout::with_ring_bytes(b)?,
            None => Layout::fitting(size)?,
        };
        if layout.total_size > size {
            return Err(HeaderError::SizeMismatch {
                header: layout.total_size,
                actual: size,
            }
            .into());
        }
        let map = Self::map(addr, &file, offset, size)?;
        Ok(Self::init(map, addr, file, None, layout, creator_side))
    }

    fn init(
        map: MmapRaw,
        addr: &RegionAddr,
        file: File,
        remove_on_drop: Option<PathBuf>,
        layout: Layout,
        creator_side: u32,
    ) -> Region {
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            generation: 1,
            creator_side,
            layout,
        };
        let region = Region {
            map,
            addr: addr.clone(),
            file: Some(file),
            remove_on_drop,
            header,
            taken: Default::default(),
        };
        region.write_header(&header);
        region.reset_rings();
        region
    }

    /// Maps `len` bytes at `offset` of `file`.
    fn map(addr: &RegionAddr, file: &File, offset: u64, len: u64) -> Result<MmapRaw> {
        let len = usize::try_from(len).map_err(|_| Error::Config("region too large"))?;
        MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(file)
            .map_err(|e| Error::RegionIo {
                path: addr.to_string(),
                context: "mmap",
                source: e,
            })
    }

    /// `(offset, len)` of the region in `file`: the whole file, or its slot window.
    fn extent(addr: &RegionAddr, file: &File) -> Result<(u64, u64)> {
        let total = Self::device_size(addr, file)?;
        match addr.window() {
            Some(w) => w.range(total),
            None => Ok((0, total)),
        }
    }

    /// Opens an existing region by address and validates its header.
    pub fn open(addr: &RegionAddr) -> Result<Region> {
        let file = match addr {
            RegionAddr::Memfd => return Err(Error::Config("a memfd region can only be received")),
            RegionAddr::Ivshmem { .. } => {
                return Err(Error::Config(
                    "an ivshmem region lives in the server's memory: map it with Region::open_in",
                ))
            }
            _ => Self::open_base(addr)?,
        };
        Self::open_in(addr, file)
    }

    /// Maps a region received as a file descriptor (from the rendezvous) and validates it.
    pub fn from_fd(addr: RegionAddr, fd: OwnedFd) -> Result<Region> {
        if matches!(addr, RegionAddr::Memfd) {
            Self::check_sealed(&fd)?;
        }
        Self::open_in(&addr, File::from(fd))
    }

    /// A memfd from a peer must be sealed against resizing: whoever else holds
    /// it could otherwise shrink it under our mapping (SIGBUS on the next access).
    fn check_sealed(fd: &OwnedFd) -> Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let need = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| Error::RegionIo {
            path: "memfd".into(),
            context: "read seals",
            source: e.into(),
        })?;
        if SealFlag::from_bits_truncate(seals).contains(need) {
            Ok(())
        } else {
            Err(Error::Config("memfd region is not sealed against resizing"))
        }
    }

    /// Maps the region (or its slot window) of `file` and validates its header.
    pub fn open_in(addr: &RegionAddr, file: File) -> Result<Region> {
        let (offset, size) = Self::extent(addr, &file)?;
        if size < super::layout::HEADER_SIZE {
            return Err(HeaderError::TooSmall(size).into());
        }
        let map = Self::map(addr, &file, offset, size)?;
        let mut raw = [0u8; HEADER_BYTES];
        // SAFETY: the mapping is at least HEADER_SIZE (> HEADER_BYTES) bytes long and
        // `raw` is a private buffer, so source and destination are valid and disjoint.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), raw.as_mut_ptr(), HEADER_BYTES) };
        let header = Header::decode(&raw, size)?;
        Ok(Region {
            map,
            addr: addr.clone(),
            file: Some(file),
            remove_on_drop: None,
            header,
            taken: Default::default(),
        })
    }

    /// Opens the file behind an address: an existing shm file, or a device.
    fn open_base(addr: &RegionAddr) -> Result<File> {
        match addr.base() {
            RegionAddr::Shm(_) => {
                let path = addr.file_path().ok_or(Error::Config("no path"))?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "open"))
            }
            _ => Self::open_device(addr),
        }
    }

    fn open_device(addr: &RegionAddr) -> Result<File> {
        let path = addr.file_path().ok_or(Error::Config("no path"))?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(&path)
            .map_err(io_err(&path, "open"))
    }

    fn device_size(addr: &RegionAddr, file: &File) -> Result<u64> {
        match addr.base() {
            RegionAddr::Dax(p) => dax_size(p),
            _ => Ok(file
                .metadata()
                .map_err(|e| Error::RegionIo {
                    path: addr.to_string(),
                    context: "stat",
                    source: e,
                })?
                .len()),
        }
    }

    fn write_header(&self, h: &Header) {
        let bytes = h.encode();
        // SAFETY: the mapping is at least `layout.total_size` >= HEADER_SIZE bytes and
        // `bytes` is private. The magic (first 8 bytes) is written last, after a
        // release fence, so an opener never sees a valid magic with other fields missing.
        unsafe {
            let base = self.map.as_mut_ptr();
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(8), base.add(8), HEADER_BYTES - 8);
            std::sync::atomic::fence(Ordering::Release);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, 8);
        }
    }

    /// Checks that the shared header still says what it said at attach time
    /// (fields and `generation`): a scribble over it ends the link.
    pub fn check_header(&self, generation: u64) -> Result<()> {
        let mut raw = [0u8; HEADER_BYTES];
        self.peek(0, &mut raw)?;
        let mut want = self.header;
        want.generation = generation;
        if raw != want.encode() {
            return Err(HeaderError::Changed.into());
        }
        Ok(())
    }

    /// Creator only: rewrites the header (healing any scribbles over it), bumps
    /// the generation and zeroes the rings, before a new peer attaches.
    pub fn reinit(&self) -> u64 {
        let generation = self.generation().wrapping_add(1).max(1);
        let mut h = self.header;
        h.generation = generation;
        self.write_header(&h);
        self.reset_rings();
        generation
    }

    /// Zeroes both rings' control blocks. Only the creator calls this, while no
    /// peer is attached and no Producer/Consumer of the old rings is in use.
    pub fn reset_rings(&self) {
        for r in &self.header.layout.rings {
            // SAFETY: the layout was built or validated against the mapping size, so
            // [offset, offset + RING_CTRL_SIZE) is inside the mapping.
            unsafe {
                std::ptr::write_bytes(
                    self.map.as_mut_ptr().add(r.offset as usize),
                    0,
                    RING_CTRL_SIZE as usize,
                )
            };
        }
    }

    /// Word `index` of the slot control block (see `link::slot`), shared with the peer.
    pub(crate) fn control_word(&self, index: usize) -> Result<&AtomicU64> {
        if index as u64 >= CONTROL_SIZE / 8 {
            return Err(Error::Config("control word index"));
        }
        let at = CONTROL_OFFSET as usize + index * 8;
        // SAFETY: every mapping is at least HEADER_SIZE bytes (checked when it was
        // created or opened) and [CONTROL_OFFSET, CONTROL_OFFSET + CONTROL_SIZE) lies
        // in the header page; `at` is 8-byte aligned (page-aligned base). Both sides
        // access these words only atomically (tests' `poke` aside, as for the generation).
        Ok(unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(at).cast()) })
    }

    fn generation_word(&self) -> &AtomicU64 {
        // SAFETY: offset 24 is inside the header page, 8-byte aligned (the mapping is
        // page aligned), and the word is only ever accessed atomically by both sides.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(GENERATION_OFFSET).cast()) }
    }

    /// The generation counter in shared memory (bumped by the creator per new peer).
    pub fn generation(&self) -> u64 {
        self.generation_word().load(Ordering::Acquire)
    }

    /// Increments the generation; returns the new value.
    pub fn bump_generation(&self) -> u64 {
        self.generation_word().fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The header as written (creator) or validated (opener).
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn addr(&self) -> &RegionAddr {
        &self.addr
    }

    /// Mapped bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The backing file descriptor, to pass to the peer.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// Ring `index` (0: creator → opener, 1: opener → creator). Handles made by
    /// several calls share one producer and one consumer slot.
    pub fn ring(self: &Arc<Self>, index: usize) -> Result<Arc<Ring>> {
        let layout = *self
            .header
            .layout
            .rings
            .get(index)
            .ok_or(Error::Config("ring index"))?;
        let taken = self.taken.get(index).ok_or(Error::Config("ring index"))?;
        Ok(Arc::new(Ring::in_region(
            self.clone(),
            layout,
            self.header.layout.max_record,
            taken.clone(),
        )))
    }

    /// Base address for [`Ring::in_region`]; never dereferenced outside the shm modules.
    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Copies `bytes` into the region at `offset` (fault injection and tools).
    pub fn poke(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.check_range(offset, bytes.len())?;
        // SAFETY: range checked against the mapping length just above; source is private.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset as usize),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Copies region bytes at `offset` into `out`.
    pub fn peek(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        // SAFETY: range checked against the mapping length just above; `out` is private.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::Config("range outside the region")),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(path) = self.remove_on_drop.take() {
            // Only remove our own file: a newer creator may have replaced it.
            use std::os::unix::fs::MetadataExt;
            let ours = self.file.as_ref().and_then(|f| f.metadata().ok());
            let there = fs::metadata(&path).ok();
            let same = matches!((ours, there), (Some(a), Some(b)) if a.dev() == b.dev() && a.ino() == b.ino());
            if !same {
                return;
            }
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "removing region file");
            }
        }
    }
}

// SAFETY: the mapping is process-wide memory owned by this value; every access goes
// through raw pointers/atomics, so sharing the handle between threads adds no data
// race beyond the (validated) cross-process sharing the region exists for.
unsafe impl Send for Region {}
// SAFETY: see `Send`.
unsafe impl Sync for Region {}

/// Takes ownership of descriptors just received with SCM_RIGHTS.
///
/// Lives here because it is one of the two modules allowed `unsafe`.
pub(crate) fn adopt_received_fds(raw: &[std::os::fd::RawFd]) -> Vec<OwnedFd> {
    use std::os::fd::FromRawFd;
    raw.iter()
        .filter(|&&fd| fd >= 0)
        // SAFETY: the kernel installed these descriptors in this process for the
        // SCM_RIGHTS message we just received; nothing else refers to them, so
        // exactly one owner is created for each.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}
