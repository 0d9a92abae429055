//! Unix socket transport (the emulated DPU). The socket is 0600 in a
//! directory of the agent's own (0700), and the kernel's word on each peer
//! (SO_PEERCRED) decides: root, the agent's own user and the configured uids
//! get in, nobody else.
use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
};

use tokio::net::{UnixListener, UnixStream};
use ttrpc::r#async::transport::{Listener, Socket};

use super::gate::{Gate, ACCEPT_BACKOFF};

pub async fn connect(path: &Path) -> io::Result<Socket> {
    Ok(Socket::from(UnixStream::connect(path).await?))
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// The socket's directory: made 0700 when missing; an existing one must be
/// this user's and closed to everyone else (it is never loosened or
/// tightened here: it may be shared, like /run).
fn check_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != euid || mode & 0o077 != 0 {
        return Err(denied(format!(
            "socket directory {} is uid {} mode {mode:04o}; the agent's socket needs a directory of its own \
             (uid {euid}, mode 0700): chmod 0700 it or listen elsewhere",
            dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Whether a peer of uid `uid` may use the agent.
fn allowed(uid: u32, allow_uids: &[u32]) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw() || allow_uids.contains(&uid)
}

pub fn listen(path: &Path, allow_uids: Vec<u32>) -> io::Result<Listener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "socket path has no directory")
        })?;
    check_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        // A stale socket of an earlier agent; anything else stays.
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path)?;
    // In a 0700 directory nobody else could reach it meanwhile.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    let (gate, served) = Gate::new(format!("unix://{}", path.display()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = gate.closed() => return,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let allow = allow_uids.clone();
            let cred = stream.peer_cred();
            let peer = match &cred {
                Ok(c) => format!("uid {} pid {}", c.uid(), c.pid().unwrap_or(0)),
                Err(e) => format!("unknown ({e})"),
            };
            gate.admit(peer, async move {
                match cred {
                    Ok(c) if allowed(c.uid(), &allow) => Ok(Socket::from(stream)),
                    Ok(c) => Err(format!(
                        "uid {} is not allowed (root, the agent's user and [access] allow_uids are)",
                        c.uid()
                    )),
                    Err(e) => Err(format!("no peer credentials: {e}")),
                }
            });
        }
    });
    Ok(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_the_agents_user_and_listed_uids_are_allowed() {
        assert!(allowed(0, &[]));
        assert!(allowed(nix::unistd::geteuid().as_raw(), &[]));
        assert!(!allowed(65534, &[]));
        assert!(allowed(65534, &[1000, 65534]));
    }

    #[test]
    fn a_shared_or_foreign_socket_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        check_dir(&fresh).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_dir(&fresh).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("0755"), "{e}");
    }
}
