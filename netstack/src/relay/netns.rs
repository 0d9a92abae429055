//! Entering the network namespace of one half of the Pod.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::error::{Error, Result};

/// Moves the calling thread into the network namespace at `path`
/// (e.g. `/run/netns/<name>` or `/proc/<pid>/ns/net`).
///
/// Call it before any other thread exists: namespaces are per thread and new
/// threads (tokio workers) inherit the namespace of the thread that spawns them.
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|source| Error::NetnsOpen {
        path: path.into(),
        source,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
        path: path.into(),
        source,
    })
}
