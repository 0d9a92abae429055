//! Taking ownership of descriptors inherited from the parent process
//! (`heteronet --irq-fds`: the VFIO MSI-X eventfds dpu-proxy opened).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

/// Adopts the inherited eventfd `raw`. Checks through `/proc/self/fd` that it
/// is open and an eventfd, and refuses stdio. Call once per descriptor, early
/// in `main`, before anything else could own it; it is made close-on-exec.
pub fn adopt_inherited_eventfd(raw: RawFd) -> Result<OwnedFd> {
    if raw <= 2 {
        return Err(Error::Config(
            "inherited eventfd must not be stdin, stdout or stderr",
        ));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).map_err(|e| {
        Error::Doorbell(std::io::Error::new(
            e.kind(),
            format!("inherited descriptor {raw} is not open: {e}"),
        ))
    })?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(Error::Doorbell(std::io::Error::other(format!(
            "inherited descriptor {raw} is {}, not an eventfd",
            link.display()
        ))));
    }
    // SAFETY: `raw` is open (checked above), is not stdio, and was inherited
    // from the parent: no owner exists in this process yet, and the caller
    // adopts each descriptor once, before anything else could take it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Error::Doorbell(e.into()))?;
    Ok(fd)
}
