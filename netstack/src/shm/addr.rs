//! Typed region addresses: `shm:/name`, `memfd:`, `pci:<bdf>/<bar>`, `dax:/dev/daxX.Y`.

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
            _ => Err(bad(s, "unknown scheme (shm, memfd, pci, dax)")),
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
        ] {
            let sut: RegionAddr = s.parse().unwrap();
            assert_eq!(sut.to_string(), s);
        }
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
        ] {
            assert!(s.parse::<RegionAddr>().is_err(), "{s} accepted");
        }
    }
}
