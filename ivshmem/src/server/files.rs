//! The server's two filesystem objects: the listening socket and the shared
//! memory file, each removed on drop if it is still ours.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};

use crate::error::{io, Error, Result};

/// Resolves `--shm`: a plain name lives under `/dev/shm`, else an absolute path.
pub fn shm_path(name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    let plain = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
    if !name.is_empty() && !name.contains('/') && plain(p) {
        return Ok(Path::new("/dev/shm").join(p));
    }
    if p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Ok(p.to_path_buf());
    }
    Err(Error::BadShmName(name.to_string()))
}

/// Binds the listening socket, replacing a stale one but never a live one.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::NotASocket(path.to_path_buf()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(Error::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale socket");
                fs::remove_file(path).map_err(io(format!("remove {}", path.display())))?;
            }
            Err(e) => return Err(io(format!("probe {}", path.display()))(e)),
        }
    }
    let listener = UnixListener::bind(path).map_err(io(format!("bind {}", path.display())))?;
    // Peers get the shared memory and can interrupt every other peer: owner only.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", path.display())))?;
    Ok(listener)
}

/// Creates the shared memory file (mode 0600) of `size` bytes.
pub fn create_shm(path: &Path, size: u64, replace: bool) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && replace => {
            let meta =
                fs::symlink_metadata(path).map_err(io(format!("stat {}", path.display())))?;
            if !meta.file_type().is_file() {
                return Err(Error::ShmExists(path.to_path_buf()));
            }
            tracing::warn!(path = %path.display(), "replacing existing shared memory file");
            fs::remove_file(path).map_err(io(format!("remove {}", path.display())))?;
            open()
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::ShmExists(path.to_path_buf()))
        }
        other => other,
    }
    .map_err(io(format!("create {}", path.display())))?;
    if let Err(e) = file.set_len(size) {
        let _ = fs::remove_file(path);
        return Err(io(format!("size {} to {size} bytes", path.display()))(e));
    }
    Ok(file)
}

/// Removes a path on drop if it still names the same inode (a newer server
/// may have replaced it).
#[derive(Debug)]
pub struct RemoveOnDrop {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl RemoveOnDrop {
    pub fn new(path: &Path) -> RemoveOnDrop {
        let id = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
        RemoveOnDrop {
            path: path.to_path_buf(),
            id,
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let now = fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.id {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cleanup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_names_resolve_under_dev_shm_or_as_absolute_paths() {
        assert_eq!(shm_path("ivs").unwrap(), Path::new("/dev/shm/ivs"));
        assert_eq!(shm_path("/tmp/x/ivs").unwrap(), Path::new("/tmp/x/ivs"));
        for bad in ["", "..", "a/b", "/tmp/../etc/x", "./x"] {
            assert!(shm_path(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let live = bind_socket(&path).unwrap();
        assert!(matches!(bind_socket(&path), Err(Error::SocketInUse(_))));
        drop(live);
        let sut = bind_socket(&path);
        assert!(sut.is_ok(), "stale socket not replaced: {sut:?}");
    }

    #[test]
    fn an_existing_shm_file_is_kept_unless_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            create_shm(&path, 4096, false),
            Err(Error::ShmExists(_))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        let f = create_shm(&path, 4096, true).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4096);
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    }
}
