//! Typed region addresses: `shm:/name`, `memfd:`, `pci:<bdf>/<bar>`, `dax:/dev/daxX.Y`,
//! `ivshmem:<server socket>@k/n`, and a `@k/n` slot-window suffix on `shm:`, `pci:`, `dax:`.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::error::Error;

/// Where a region lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionAddr {
    /// A file under `/dev/shm`; the path is relative to `/dev/shm`.
    Shm(PathBuf),
    /// An anonymous memfd, shared with the peer over the rendezvous socket.
    Memfd,
    /// A PCIe BAR: `/sys/bus/pci/devices/<bdf>/resource<bar>`.
    Pci { bdf: String, bar: u8 },
    /// A CXL/DAX character device.
    Dax(PathBuf),
    /// Slot `window` of the shared memory of an ivshmem server (host side):
    /// `ivshmem:<socket>@k/n`. The process joins the server as a peer.
    Ivshmem { socket: PathBuf, window: Window },
    /// Slot `window` of a `shm:`, `pci:` or `dax:` mapping: `<addr>@k/n`.
    Window {
        base: Box<RegionAddr>,
        window: Window,
    },
}

/// Most slots one mapping may be cut into (two interrupt vectors per slot
/// must fit the ivshmem server's 256 vectors).
pub const MAX_SLOTS: u32 = 128;

/// Slot `index` of `count` equal, page-aligned windows of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub index: u32,
    pub count: u32,
}

impl Window {
    /// Checks `index < count` and `1 <= count <= MAX_SLOTS`.
    pub fn new(index: u32, count: u32) -> Result<Window, &'static str> {
        if count == 0 {
            return Err("slot count must be at least 1");
        }
        if count > MAX_SLOTS {
            return Err("slot count must be at most 128");
        }
        if index >= count {
            return Err("slot index must be below the slot count (k < n)");
        }
        Ok(Window { index, count })
    }

    /// Byte range `(offset, len)` of this slot in a mapping of `total` bytes:
    /// `[k*total/n, (k+1)*total/n)`, which must be page aligned and hold at
    /// least the smallest region.
    pub fn range(&self, total: u64) -> Result<(u64, u64), Error> {
        let at = |k: u32| (u128::from(total) * u128::from(k) / u128::from(self.count)) as u64;
        let (start, end) = (at(self.index), at(self.index + 1));
        let page = super::layout::HEADER_SIZE;
        if start % page != 0 || end % page != 0 {
            return Err(Error::Window {
                window: *self,
                total,
                reason: "slot boundaries are not page aligned (use a slot count dividing the size)",
            });
        }
        if end - start < super::layout::MIN_REGION_SIZE {
            return Err(Error::Window {
                window: *self,
                total,
                reason: "slot is smaller than the smallest region (20 KiB)",
            });
        }
        Ok((start, end - start))
    }

    /// This slot's "data published" interrupt vector of the guest (2k); 2k+1 is "space freed".
    pub fn data_vector(&self) -> u16 {
        (self.index * 2) as u16
    }

    pub fn space_vector(&self) -> u16 {
        (self.index * 2 + 1) as u16
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Window {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Window, &'static str> {
        let (k, n) = s.split_once('/').ok_or("slot must be <k>/<n>")?;
        let num = |v: &str| -> Result<u32, &'static str> {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err("slot numbers must be decimal");
            }
            v.parse().map_err(|_| "slot number too large")
        };
        Window::new(num(k)?, num(n)?)
    }
}

impl RegionAddr {
    /// The file backing this region, if any.
    pub fn file_path(&self) -> Option<PathBuf> {
        match self {
            RegionAddr::Shm(p) => Some(Path::new("/dev/shm").join(p)),
            RegionAddr::Memfd => None,
            RegionAddr::Pci { bdf, bar } => Some(PathBuf::from(format!(
                "/sys/bus/pci/devices/{bdf}/resource{bar}"
            ))),
            RegionAddr::Dax(p) => Some(p.clone()),
            RegionAddr::Ivshmem { .. } => None,
            RegionAddr::Window { base, .. } => base.file_path(),
        }
    }

    /// The slot window, if the address names one.
    pub fn window(&self) -> Option<Window> {
        match self {
            RegionAddr::Ivshmem { window, .. } | RegionAddr::Window { window, .. } => Some(*window),
            _ => None,
        }
    }

    /// The address without its slot window (`ivshmem:` has no such form).
    pub fn base(&self) -> &RegionAddr {
        match self {
            RegionAddr::Window { base, .. } => base,
            other => other,
        }
    }

    /// Slot `window` of `base` (`shm:`, `pci:` or `dax:` only).
    pub fn with_window(base: RegionAddr, window: Window) -> Result<RegionAddr, Error> {
        match base {
            RegionAddr::Shm(_) | RegionAddr::Pci { .. } | RegionAddr::Dax(_) => {
                Ok(RegionAddr::Window {
                    base: Box::new(base),
                    window,
                })
            }
            other => Err(bad(
                &other.to_string(),
                "only shm:, pci: and dax: regions take a @k/n slot window",
            )),
        }
    }
}

fn bad(addr: &str, reason: &'static str) -> Error {
    Error::BadAddr {
        addr: addr.to_string(),
        reason,
    }
}

fn valid_bdf(bdf: &str) -> bool {
    // dddd:bb:dd.f, hex digits.
    let b = bdf.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

impl FromStr for RegionAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        // The window suffix: the last '@' (paths may contain '@' before it).
        let split = s.rsplit_once('@');
        if s.starts_with("ivshmem:") {
            let (head, slot) =
                split.ok_or_else(|| bad(s, "expected ivshmem:<server socket>@<slot>/<slots>"))?;
            let window: Window = slot.parse().map_err(|r| bad(s, r))?;
            let socket = PathBuf::from(&head["ivshmem:".len()..]);
            let ok = socket.is_absolute()
                && socket
                    .components()
                    .skip(1)
                    .all(|c| matches!(c, Component::Normal(_)));
            if !ok {
                return Err(bad(s, "ivshmem socket must be an absolute path without .."));
            }
            return Ok(RegionAddr::Ivshmem { socket, window });
        }
        if let Some((head, slot)) = split {
            // A '@' inside a plain shm name without a valid k/n is an error, not a name.
            let window: Window = slot.parse().map_err(|r| bad(s, r))?;
            let base: RegionAddr = head.parse()?;
            return RegionAddr::with_window(base, window).map_err(|_| {
                bad(
                    s,
                    "only shm:, pci: and dax: regions take a @k/n slot window",
                )
            });
        }
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| bad(s, "expected <scheme>:<location>"))?;
        match scheme {
            "shm" => {
                let rel = rest.trim_start_matches('/');
                let path = PathBuf::from(rel);
                let ok =
                    !rel.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
                if !ok {
                    return Err(bad(
                        s,
                        "shm path must be a plain relative name under /dev/shm",
                    ));
                }
                Ok(RegionAddr::Shm(path))
            }
            "memfd" if rest.is_empty() => Ok(RegionAddr::Memfd),
            "memfd" => Err(bad(s, "memfd takes no location")),
            "pci" => {
                let (bdf, bar) = rest
                    .rsplit_once('/')
                    .ok_or_else(|| bad(s, "expected pci:<dddd:bb:dd.f>/<bar>"))?;
                if !valid_bdf(bdf) {
                    return Err(bad(s, "bad PCI address, expected dddd:bb:dd.f"));
                }
                let bar: u8 = bar.parse().map_err(|_| bad(s, "bad BAR number"))?;
                if bar > 5 {
                    return Err(bad(s, "BAR must be 0..=5"));
                }
                Ok(RegionAddr::Pci {
                    bdf: bdf.to_ascii_lowercase(),
                    bar,
                })
            }
            "dax" => {
                if !rest.starts_with("/dev/dax") {
                    return Err(bad(s, "dax path must be /dev/daxX.Y"));
                }
                Ok(RegionAddr::Dax(PathBuf::from(rest)))
            }
            _ => Err(bad(s, "unknown scheme (shm, memfd, pci, dax, ivshmem)")),
        }
    }
}

impl fmt::Display for RegionAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionAddr::Shm(p) => write!(f, "shm:/{}", p.display()),
            RegionAddr::Memfd => write!(f, "memfd:"),
            RegionAddr::Pci { bdf, bar } => write!(f, "pci:{bdf}/{bar}"),
            RegionAddr::Dax(p) => write!(f, "dax:{}", p.display()),
            RegionAddr::Ivshmem { socket, window } => {
                write!(f, "ivshmem:{}@{window}", socket.display())
            }
            RegionAddr::Window { base, window } => write!(f, "{base}@{window}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_round_trips() {
        for s in [
            "shm:/heteropod/pod1",
            "memfd:",
            "pci:0000:00:04.0/2",
            "dax:/dev/dax0.0",
            "ivshmem:/run/heteropod/qemu/ivshmem.sock@3/8",
            "ivshmem:/tmp/a@b/s.sock@0/1",
            "pci:0000:00:04.0/2@3/8",
            "shm:/heteropod/slots@127/128",
            "dax:/dev/dax0.0@1/2",
        ] {
            let sut: RegionAddr = s.parse().unwrap();
            assert_eq!(sut.to_string(), s);
        }
    }

    #[test]
    fn window_parts_are_exposed() {
        let sut: RegionAddr = "pci:0000:00:04.0/2@3/8".parse().unwrap();
        assert_eq!(sut.window(), Some(Window { index: 3, count: 8 }));
        assert_eq!(sut.base().to_string(), "pci:0000:00:04.0/2");
        assert_eq!(sut.window().unwrap().data_vector(), 6);
        assert_eq!(sut.window().unwrap().space_vector(), 7);
        let sut: RegionAddr = "ivshmem:/run/x.sock@0/8".parse().unwrap();
        assert_eq!(sut.file_path(), None);
        assert_eq!(sut.window(), Some(Window { index: 0, count: 8 }));
    }

    #[test]
    fn window_ranges_are_page_aligned_and_large_enough() {
        let w = |k, n| Window::new(k, n).unwrap();
        assert_eq!(w(3, 8).range(128 << 20).unwrap(), (48 << 20, 16 << 20));
        assert_eq!(w(0, 1).range(1 << 20).unwrap(), (0, 1 << 20));
        // 3 slots of 1 MiB are not page aligned.
        assert!(w(1, 3).range(1 << 20).is_err());
        // 64 slots of 1 MiB are 16 KiB each: below the smallest region.
        assert!(w(0, 64).range(1 << 20).is_err());
        assert!(w(0, 1).range(0).is_err());
    }

    #[test]
    fn rejects_bad_addresses() {
        for s in [
            "",
            "shm:",
            "shm:/../etc/passwd",
            "shm:/a/../b",
            "memfd:x",
            "pci:0000:00:04.0",
            "pci:0000:00:04.0/9",
            "pci:zz/1",
            "dax:/etc/passwd",
            "nfs:/x",
            "ivshmem:/run/x.sock",
            "ivshmem:relative.sock@0/8",
            "ivshmem:/run/../x.sock@0/8",
            "ivshmem:/run/x.sock@8/8",
            "ivshmem:/run/x.sock@0/0",
            "ivshmem:/run/x.sock@0/129",
            "ivshmem:/run/x.sock@-1/8",
            "ivshmem:/run/x.sock@1",
            "ivshmem:/run/x.sock@a/b",
            "ivshmem:/run/x.sock@ 1/8",
            "pci:0000:00:04.0/2@3/8@1/2",
            "pci:0000:00:04.0/2@",
            "memfd:@0/2",
            "shm:/x@2/2",
            "shm:/x@99999999999/1",
            "dax:/etc/x@0/1",
        ] {
            assert!(s.parse::<RegionAddr>().is_err(), "{s} accepted");
        }
    }
}
