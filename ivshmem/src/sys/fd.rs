//! Taking ownership of descriptors the kernel handed us.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of descriptors just received with SCM_RIGHTS.
pub(crate) fn adopt_received(raw: &[RawFd]) -> Vec<OwnedFd> {
    raw.iter()
        .filter(|&&fd| fd >= 0)
        // SAFETY: the kernel installed these descriptors in this process for the
        // message we just received; nothing else refers to them, so exactly one
        // owner is created for each.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// Takes ownership of a descriptor an ioctl just returned.
pub(crate) fn adopt_new(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: `fd` was just created for this process by a successful syscall and
    // is not owned by anything else yet.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
