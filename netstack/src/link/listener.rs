//! The creator's end: accepts one peer at a time, over the rendezvous socket
//! or through the slot's control block.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};

use super::{rendezvous, slot, Link, Side};
use crate::error::{Error, Result};
use crate::notify::{eventfd, NotifyMode};
use crate::shm::{Region, RegionAddr};

#[derive(Debug)]
pub(super) enum ListenerKind {
    Rendezvous {
        listener: UnixListener,
        sock: PathBuf,
        /// (dev, inode) of our socket file, so drop never removes a successor's.
        sock_id: Option<(u64, u64)>,
    },
    Slot(Box<slot::Creator>),
}

/// The creator's end: owns the region and accepts one peer at a time.
#[derive(Debug)]
pub struct Listener {
    pub(super) region: Arc<Region>,
    pub(super) kind: ListenerKind,
    pub(super) side: Side,
    pub(super) mode: NotifyMode,
}

impl Listener {
    /// Waits for a peer. Before each peer the rings are reset and the
    /// generation bumped, so a restarted peer starts clean. Drop the previous
    /// [`Link`] first. Failed handshakes are logged and skipped.
    pub async fn accept(&mut self) -> Result<Link> {
        if let ListenerKind::Slot(c) = &mut self.kind {
            return c.accept(self.side, self.mode).await;
        }
        let ListenerKind::Rendezvous { listener, .. } = &self.kind else {
            return Err(Error::Config("listener kind"));
        };
        loop {
            let (conn, _) = listener
                .accept()
                .await
                .map_err(|source| Error::Rendezvous {
                    context: "accept",
                    source,
                })?;
            match tokio::time::timeout(rendezvous::HANDSHAKE_TIMEOUT, self.handshake(conn)).await {
                Ok(Ok(link)) => return Ok(link),
                Ok(Err(e)) => tracing::warn!(error = %e, "rendezvous handshake failed"),
                Err(_) => tracing::warn!("rendezvous handshake timed out"),
            }
        }
    }

    async fn handshake(&self, mut conn: UnixStream) -> Result<Link> {
        // Before anything (the region and doorbells) goes to it.
        rendezvous::check_peer(&conn)?;
        let generation = self.region.reinit();
        let (tx, rx) = super::ring_ends(&self.region, true)?;
        let bells = [eventfd()?, eventfd()?, eventfd()?, eventfd()?];
        let mut raw = Vec::with_capacity(5);
        let region_fd = match self.region.addr() {
            RegionAddr::Shm(_) | RegionAddr::Memfd => self.region.fd().map(|f| f.as_raw_fd()),
            _ => None,
        };
        raw.extend(region_fd);
        raw.extend(bells.iter().map(|b| b.as_fd().as_raw_fd()));
        rendezvous::send_hello(
            &conn,
            generation,
            self.side.code(),
            &self.region.addr().to_string(),
            &raw,
            region_fd.is_some(),
        )
        .await?;
        let peer_side = rendezvous::recv_ok(&mut conn).await?;
        if peer_side == self.side.code() {
            return Err(Error::Handshake("both ends claim the same side"));
        }
        // Our view: we wait on the creator bells and ring the opener's.
        let [opener_data, opener_space, creator_data, creator_space] = bells;
        Link::new(
            self.region.clone(),
            tx,
            rx,
            [creator_data, creator_space, opener_data, opener_space],
            conn,
            self.side,
            self.mode,
            true,
        )
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The rendezvous socket (for a slot link: the ivshmem server's socket).
    pub fn rendezvous_path(&self) -> &Path {
        match &self.kind {
            ListenerKind::Rendezvous { sock, .. } => sock,
            ListenerKind::Slot(c) => c.socket(),
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }
}

pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenerKind::Rendezvous { sock, sock_id, .. } = &self.kind {
            if sock_id.is_some() && file_id(sock) == *sock_id {
                let _ = std::fs::remove_file(sock);
            }
        }
    }
}
