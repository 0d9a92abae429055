//! File-descriptor passing and terminal ioctls.
#![allow(unsafe_code)]

use std::{
    io::IoSliceMut,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::error::{Error, Result};

/// Receives exactly one descriptor sent with `SCM_RIGHTS` over `socket`
/// (runc sends the pty master this way to `--console-socket`).
pub fn recv_fd(socket: &impl AsFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 512];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<UnixAddr>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in our table for this
                // SCM_RIGHTS message; nothing else owns it, so we take ownership
                // exactly once (extra descriptors are closed when `received` drops).
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if received.is_empty() {
        return Err(Error::FailedPrecondition(
            "console socket message carried no file descriptor".into(),
        ));
    }
    Ok(received.swap_remove(0))
}

/// Types whose `as_raw_fd` is a descriptor they own for their whole life.
pub trait OwnsFd: AsRawFd {}
impl OwnsFd for std::fs::File {}
impl OwnsFd for nix::sys::eventfd::EventFd {}

/// Registers an owned descriptor with the tokio reactor.
pub fn async_fd<T: OwnsFd>(inner: T) -> Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `OwnsFd` types own their descriptor: it stays open and the same
    // until they drop, and the `AsyncFd` owns `inner`, so it cannot drop first.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(|e| Error::Io {
        context: "register descriptor with the reactor".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Sets the window size of the terminal `fd` refers to.
pub fn set_winsize(fd: &impl AsFd, width: u16, height: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points
    // to a live, initialised local; the descriptor is borrowed and stays open.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(Error::Nix(nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{sendmsg, ControlMessage};

    use super::*;

    #[test]
    fn recv_fd_takes_the_sent_descriptor() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let fds = [file.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"x")];
        sendmsg::<UnixAddr>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let sut = recv_fd(&b).unwrap();
        assert_ne!(sut.as_raw_fd(), file.as_raw_fd());
    }

    #[test]
    fn recv_fd_without_descriptor_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &a, b"x").unwrap();
        assert!(recv_fd(&b).is_err());
    }

    #[test]
    fn set_winsize_on_a_pty_works_and_on_a_file_fails() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_winsize(&pty.master, 80, 24).unwrap();
        let file = tempfile::tempfile().unwrap();
        assert!(set_winsize(&file, 80, 24).is_err());
    }
}
