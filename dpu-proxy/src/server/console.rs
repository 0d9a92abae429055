//! runc's console socket. With `process.terminal` set, runc makes the
//! pseudo-terminal inside the container, so the slave lives in the
//! container's own /dev/pts (`tty` and ttyname work there), and sends the
//! master back over a unix socket the agent listens on.
use std::{
    io::{ErrorKind, IoSliceMut},
    mem::MaybeUninit,
    os::{fd::OwnedFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::{
    io::Interest,
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use crate::error::{Error, Result};

/// Longest path a `sockaddr_un` holds (108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// How long a runc that exited fine may leave its terminal unread.
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A listening console socket; its file is removed on drop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on a fresh socket in `work` (in the temp dir when a long
    /// container id would overflow `sun_path`); only root may connect.
    pub fn bind(work: &Path) -> Result<ConsoleSocket> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut path = work.join(format!("pty-{n}.sock"));
        if path.as_os_str().len() > SUN_PATH_MAX {
            path =
                std::env::temp_dir().join(format!("heteropod-pty-{}-{n}.sock", std::process::id()));
        }
        // A socket left by an agent that died mid-create.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(Error::io(format!(
            "listen on console socket {}",
            path.display()
        )))?;
        let sut = ConsoleSocket { listener, path };
        std::fs::set_permissions(&sut.path, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io(format!("chmod {}", sut.path.display())))?;
        Ok(sut)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for runc to exit (`exited` gives its status) while taking the
    /// terminal it sends; runc may fail before it connects.
    pub async fn receive_from_runc(
        &self,
        exited: &mut oneshot::Receiver<i32>,
        verb: &str,
    ) -> (i32, Result<OwnedFd>) {
        let recv = self.receive_master();
        tokio::pin!(recv);
        let first = tokio::select! {
            m = &mut recv => Ok(m),
            s = &mut *exited => Err(s.unwrap_or(255)),
        };
        match first {
            Ok(m) => (exited.await.unwrap_or(255), m),
            // The caller reports runc's own error.
            Err(status) if status != 0 => (
                status,
                Err(Error::FailedPrecondition(format!("runc {verb} failed"))),
            ),
            // Exited fine: the master is already queued on the socket.
            Err(status) => {
                let m = tokio::time::timeout(GRACE, recv).await.unwrap_or_else(|_| {
                    Err(Error::FailedPrecondition(format!(
                        "runc {verb} sent no terminal"
                    )))
                });
                (status, m)
            }
        }
    }

    /// Accepts runc's connection and returns the terminal master it sends
    /// (close-on-exec). Connections from other users are dropped.
    async fn receive_master(&self) -> Result<OwnedFd> {
        let me = nix::unistd::geteuid().as_raw();
        loop {
            let (stream, _) = self.listener.accept().await.map_err(Error::io(format!(
                "accept on console socket {}",
                self.path.display()
            )))?;
            match stream.peer_cred() {
                Ok(c) if c.uid() == me => return receive_fd(&stream).await,
                _ => {
                    tracing::warn!(socket = %self.path.display(), "foreign console connection dropped")
                }
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn receive_fd(stream: &UnixStream) -> Result<OwnedFd> {
    loop {
        stream
            .readable()
            .await
            .map_err(Error::io("wait on the console socket"))?;
        match stream.try_io(Interest::READABLE, || recv_master(stream)) {
            Ok(Some(fd)) => return Ok(fd),
            Ok(None) => {
                return Err(Error::FailedPrecondition(
                    "runc closed the console socket without sending a terminal".into(),
                ))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Error::io("receive the terminal from runc")(e)),
        }
    }
}

/// One message of runc's: the master's name as data, the master as
/// SCM_RIGHTS (any further descriptor is closed with the buffer).
fn recv_master(sock: &UnixStream) -> std::io::Result<Option<OwnedFd>> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
    let master = cmsg.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok(master)
}

/// The slave of a terminal master, as its own devpts names it
/// (`/dev/pts/<n>`).
pub fn slave_name(master: &OwnedFd) -> Result<String> {
    let name = rustix::pty::ptsname(master, Vec::new())
        .map_err(|e| Error::FailedPrecondition(format!("runc sent no terminal master: {e}")))?;
    Ok(name.to_string_lossy().into_owned())
}

/// Sets the terminal's size through its master, as a terminal emulator
/// does: the kernel applies it to the slave and sends SIGWINCH to the
/// slave's foreground process group. No process is spawned and no path
/// into the container is used, so a resize costs one ioctl.
pub fn set_size(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let size = rustix::termios::Winsize {
        ws_row: clamp(height),
        ws_col: clamp(width),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size)
        .map_err(|e| Error::FailedPrecondition(format!("resize terminal: {e}")))
}

fn clamp(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::{io::IoSlice, os::fd::AsRawFd};

    #[tokio::test]
    async fn master_sent_over_the_socket_is_received_and_socket_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sut = ConsoleSocket::bind(dir.path()).unwrap();
        let path = sut.path().to_path_buf();
        let pty = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR).unwrap();
        let want = nix::pty::ptsname_r(&pty).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let fds = [pty.as_raw_fd()];
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = sut.receive_master().await.unwrap();
        assert_eq!(slave_name(&master).unwrap(), want);
        drop(sut);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn close_without_a_descriptor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sut = ConsoleSocket::bind(dir.path()).unwrap();
        drop(std::os::unix::net::UnixStream::connect(sut.path()).unwrap());
        assert!(sut.receive_master().await.is_err());
    }

    #[test]
    fn long_work_dir_falls_back_to_a_short_path() {
        let long = Path::new("/nonexistent").join("x".repeat(120));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let sut = ConsoleSocket::bind(&long).unwrap();
        assert!(sut.path().as_os_str().len() <= SUN_PATH_MAX);
    }
}
