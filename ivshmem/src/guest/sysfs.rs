//! PCI devices in sysfs: addresses, identity, and binding to vfio-pci.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// ivshmem's PCI vendor and device ids.
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
pub const IVSHMEM_DEVICE: u16 = 0x1110;

const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Checks a `dddd:bb:dd.f` address (hex digits).
pub fn check_bdf(bdf: &str) -> Result<()> {
    let b = bdf.as_bytes();
    let ok = b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(Error::BadBdf(bdf.to_string()))
    }
}

/// `/sys/bus/pci/devices/<bdf>`, after checking the address.
pub fn device_dir(bdf: &str) -> Result<PathBuf> {
    check_bdf(bdf)?;
    Ok(Path::new(PCI_DEVICES).join(bdf))
}

fn read_hex(path: &Path) -> Result<u16> {
    let s = fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .map_err(|_| Error::Protocol("unparsable PCI id in sysfs"))
}

/// Fails unless `bdf` is an ivshmem device.
pub fn check_ivshmem(bdf: &str) -> Result<()> {
    let dir = device_dir(bdf)?;
    let vendor = read_hex(&dir.join("vendor"))?;
    let device = read_hex(&dir.join("device"))?;
    if (vendor, device) != (IVSHMEM_VENDOR, IVSHMEM_DEVICE) {
        return Err(Error::NotIvshmem {
            bdf: bdf.to_string(),
            found: format!("{vendor:04x}:{device:04x}"),
        });
    }
    Ok(())
}

/// The PCI addresses of all ivshmem devices, sorted.
pub fn find_ivshmem() -> Result<Vec<String>> {
    let entries = fs::read_dir(PCI_DEVICES).map_err(io(format!("read {PCI_DEVICES}")))?;
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|bdf| check_ivshmem(bdf).is_ok())
        .collect();
    found.sort();
    Ok(found)
}

/// The driver `bdf` is bound to, if any.
pub fn driver(bdf: &str) -> Result<Option<String>> {
    let link = device_dir(bdf)?.join("driver");
    Ok(fs::read_link(link)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned())))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io(format!("write {value:?} to {}", path.display())))
}

/// Binds `bdf` to vfio-pci (driver_override, unbind, drivers_probe).
pub fn bind_vfio(bdf: &str) -> Result<()> {
    let dir = device_dir(bdf)?;
    if driver(bdf)?.as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
        return Err(Error::VfioNotLoaded);
    }
    write(&dir.join("driver_override"), "vfio-pci")?;
    if driver(bdf)?.is_some() {
        write(&dir.join("driver/unbind"), bdf)?;
    }
    write(Path::new("/sys/bus/pci/drivers_probe"), bdf)?;
    match driver(bdf)? {
        Some(d) if d == "vfio-pci" => {
            tracing::info!(bdf, "bound to vfio-pci");
            Ok(())
        }
        other => Err(Error::VfioBind {
            bdf: bdf.to_string(),
            driver: other,
        }),
    }
}

/// The VFIO group device of `bdf`: `/dev/vfio/<group>`, or
/// `/dev/vfio/noiommu-<group>` in no-IOMMU mode.
pub fn vfio_group_path(bdf: &str) -> Result<(PathBuf, bool)> {
    let link = device_dir(bdf)?.join("iommu_group");
    let group = fs::read_link(&link)
        .ok()
        .and_then(|t| t.file_name().and_then(|n| n.to_str()?.parse::<u32>().ok()))
        .ok_or_else(|| Error::NoIommuGroup {
            bdf: bdf.to_string(),
        })?;
    let normal = PathBuf::from(format!("/dev/vfio/{group}"));
    if normal.exists() {
        return Ok((normal, false));
    }
    let noiommu = PathBuf::from(format!("/dev/vfio/noiommu-{group}"));
    if noiommu.exists() {
        return Ok((noiommu, true));
    }
    Ok((normal, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_checked_before_touching_sysfs() {
        assert!(check_bdf("0000:00:02.0").is_ok());
        assert!(check_bdf("0000:00:1f.7").is_ok());
        for bad in [
            "",
            "00:02.0",
            "0000:00:02.0/../..",
            "0000-00:02.0",
            "zzzz:00:02.0",
        ] {
            assert!(
                matches!(device_dir(bad), Err(Error::BadBdf(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let err = check_ivshmem("0000:ff:1f.7").unwrap_err();
        assert!(
            err.to_string()
                .contains("/sys/bus/pci/devices/0000:ff:1f.7"),
            "{err}"
        );
    }
}
