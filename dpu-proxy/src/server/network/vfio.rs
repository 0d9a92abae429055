//! The DPU side of HeteroNet links across an ivshmem BAR (docs/ivshmem-link.md):
//! a Pod network whose region is `pci:<bdf>/<bar>@<slot>/<slots>` gets the
//! MSI-X eventfds of guest vectors `2*slot` ("data") and `2*slot+1`
//! ("space"). Only one process can own the device's VFIO group, so the agent
//! opens it once (lazily, on the first such Pod) and hands each relay its
//! two eventfds as inherited descriptors (`heteronet --irq-fds a,b`).

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
};

use heteropod_ivshmem::VfioInterrupts;

use crate::{
    error::{Error, Result},
    server::reaper::Reaper,
};

/// The slot window of a `pci:` region address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciSlot {
    pub bdf: String,
    pub bar: u8,
    pub slot: u16,
    pub slots: u16,
}

impl PciSlot {
    /// MSI-X vectors the device needs for `slots` slots (two each).
    pub fn vectors(&self) -> u32 {
        2 * u32::from(self.slots)
    }

    /// This slot's (data, space) vectors.
    pub fn slot_vectors(&self) -> (u16, u16) {
        (2 * self.slot, 2 * self.slot + 1)
    }
}

/// Parses `pci:<bdf>/<bar>@<slot>/<slots>`; `Ok(None)` for any other
/// scheme (those need no interrupts from the agent). A `pci:` region without
/// a slot window is refused: the BAR is shared by every split Pod.
pub fn parse_pci_region(region: &str) -> Result<Option<PciSlot>> {
    let Some(rest) = region.strip_prefix("pci:") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "region {region:?}: {why} (want pci:<dddd:bb:dd.f>/<bar>@<slot>/<slots>)"
        ))
    };
    let (dev, window) = rest
        .split_once('@')
        .ok_or_else(|| bad("no @slot/slots window"))?;
    let (bdf, bar) = dev.rsplit_once('/').ok_or_else(|| bad("no /<bar>"))?;
    heteropod_ivshmem::guest::sysfs::check_bdf(bdf).map_err(|_| bad("bad PCI address"))?;
    let bar: u8 = bar
        .parse()
        .ok()
        .filter(|b| *b <= 5)
        .ok_or_else(|| bad("bad BAR"))?;
    let (slot, slots) = window.split_once('/').ok_or_else(|| bad("bad window"))?;
    let slot: u16 = slot.parse().map_err(|_| bad("bad slot"))?;
    // Two vectors per slot, and the device has at most 256 vectors here.
    let slots: u16 = slots
        .parse()
        .ok()
        .filter(|n| (1..=128).contains(n))
        .ok_or_else(|| bad("slots must be 1..=128"))?;
    if slot >= slots {
        return Err(bad("slot out of range"));
    }
    Ok(Some(PciSlot {
        bdf: bdf.to_string(),
        bar,
        slot,
        slots,
    }))
}

/// The device's interrupts once opened, and which Pod uses which slot.
#[derive(Default)]
pub struct DeviceIrqs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (bdf, slots) it was opened for, and the interrupts.
    open: Option<(String, u16, Arc<VfioInterrupts>)>,
    /// slot -> Pod id.
    used: HashMap<u16, String>,
}

impl DeviceIrqs {
    /// Reserves `slot` for `pod_id` (idempotent for the same Pod).
    pub fn claim(&self, pod_id: &str, slot: &PciSlot) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.used.get(&slot.slot) {
            Some(owner) if owner != pod_id => Err(Error::AlreadyExists(format!(
                "ivshmem slot {} of {} is used by Pod {owner}",
                slot.slot, slot.bdf
            ))),
            _ => {
                inner.used.insert(slot.slot, pod_id.to_string());
                Ok(())
            }
        }
    }

    /// Frees whatever slot `pod_id` holds.
    pub fn release(&self, pod_id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.used.retain(|_, owner| owner != pod_id);
    }

    /// The slot's interrupts, opening the device on first use (the VFIO
    /// set-up is a few ioctls: done before the reaper's lock is taken).
    pub fn open(&self, slot: &PciSlot) -> Result<SlotIrqs> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let irqs = match &inner.open {
            Some((bdf, slots, irqs)) => {
                if *bdf != slot.bdf || *slots != slot.slots {
                    return Err(Error::InvalidArgument(format!(
                        "this agent serves ivshmem links on {bdf} with {slots} slots, not on {} with {}",
                        slot.bdf, slot.slots
                    )));
                }
                irqs.clone()
            }
            None => {
                let irqs = VfioInterrupts::open(&slot.bdf, slot.vectors()).map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "the ivshmem device {} is not usable for split Pod links \
                         ({} MSI-X vectors through vfio-pci): {e}",
                        slot.bdf,
                        slot.vectors()
                    ))
                })?;
                let irqs = Arc::new(irqs);
                tracing::info!(bdf = %slot.bdf, vectors = slot.vectors(), "ivshmem interrupts routed to eventfds");
                inner.open = Some((slot.bdf.clone(), slot.slots, irqs.clone()));
                irqs
            }
        };
        let (data, space) = slot.slot_vectors();
        Ok(SlotIrqs { irqs, data, space })
    }
}

/// One slot's two vectors of the opened device.
pub struct SlotIrqs {
    irqs: Arc<VfioInterrupts>,
    data: u16,
    space: u16,
}

impl SlotIrqs {
    /// Fresh duplicates of the (data, space) eventfds, without close-on-exec:
    /// the caller spawns the relay while holding the reaper's lock (every
    /// child of the agent is spawned under it) and drops them right after,
    /// so no other child inherits them.
    pub fn inheritable(&self) -> Result<IrqFds> {
        let dup = |vector: u16| -> Result<OwnedFd> {
            let fd = self
                .irqs
                .bell(vector)
                .map_err(|e| Error::FailedPrecondition(format!("ivshmem vector {vector}: {e}")))?;
            nix::unistd::dup(fd)
                .map_err(|e| Error::io(format!("dup eventfd of vector {vector}"))(e.into()))
        };
        Ok(IrqFds {
            data: dup(self.data)?,
            space: dup(self.space)?,
        })
    }
}

/// A relay's two interrupt eventfds, open until dropped.
#[derive(Debug)]
pub struct IrqFds {
    data: OwnedFd,
    space: OwnedFd,
}

impl IrqFds {
    /// The `--irq-fds` value: `<data fd>,<space fd>`.
    pub fn arg(&self) -> String {
        format!("{},{}", self.data.as_raw_fd(), self.space.as_raw_fd())
    }
}

/// Spawns a relay with the slot's two interrupt eventfds inherited and named
/// by `--irq-fds`. The descriptors exist without close-on-exec only while
/// the reaper's lock is held, which every spawn of the agent takes.
#[allow(clippy::type_complexity)]
pub fn spawn_with_irqs(
    reaper: &Reaper,
    irqs: &DeviceIrqs,
    slot: &PciSlot,
    mut cmd: std::process::Command,
) -> Result<std::io::Result<(std::process::Child, tokio::sync::oneshot::Receiver<i32>)>> {
    let slot_irqs = irqs.open(slot)?;
    let mut waiters = reaper.lock();
    let fds = slot_irqs.inheritable()?;
    cmd.args(["--irq-fds", &fds.arg()]);
    let spawned = cmd.spawn().map(|child| {
        let pid = child.id() as i32;
        waiters.forget(pid);
        let rx = waiters.wait(pid);
        (child, rx)
    });
    drop(fds);
    Ok(spawned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_regions_give_the_slot_and_its_vectors() {
        let sut = parse_pci_region("pci:0000:00:04.0/2@3/8").unwrap().unwrap();
        assert_eq!(sut.bdf, "0000:00:04.0");
        assert_eq!((sut.bar, sut.slot, sut.slots), (2, 3, 8));
        assert_eq!(sut.vectors(), 16);
        assert_eq!(sut.slot_vectors(), (6, 7));
    }

    #[test]
    fn other_schemes_need_no_interrupts() {
        for region in ["shm:/heteropod-x", "memfd:", "dax:/dev/dax0.0", ""] {
            assert_eq!(parse_pci_region(region).unwrap(), None, "{region}");
        }
    }

    #[test]
    fn bad_pci_regions_are_clear_errors() {
        for bad in [
            "pci:0000:00:04.0/2",
            "pci:0000:00:04.0/2@8/8",
            "pci:0000:00:04.0/2@1/0",
            "pci:0000:00:04.0/2@1/999",
            "pci:0000:00:04.0/9@1/8",
            "pci:../../x/2@1/8",
            "pci:0000:00:04.0@1/8",
            "pci:0000:00:04.0/2@x/8",
        ] {
            let err = parse_pci_region(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err:?}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn a_slot_belongs_to_one_pod_until_released() {
        let sut = DeviceIrqs::default();
        let slot = parse_pci_region("pci:0000:00:04.0/2@1/8").unwrap().unwrap();
        sut.claim("pod-a", &slot).unwrap();
        sut.claim("pod-a", &slot).unwrap();
        assert!(matches!(
            sut.claim("pod-b", &slot),
            Err(Error::AlreadyExists(_))
        ));
        sut.release("pod-a");
        sut.claim("pod-b", &slot).unwrap();
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let sut = DeviceIrqs::default();
        let slot = parse_pci_region("pci:0000:ff:1f.7/2@0/8").unwrap().unwrap();
        let err = sut.open(&slot).err().expect("no such device here");
        let text = err.to_string();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(text.contains("0000:ff:1f.7"), "{text}");
    }
}
