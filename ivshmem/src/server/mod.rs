//! The ivshmem server: hands QEMU (and host peers) the shared memory and
//! everyone's eventfds, and tells peers when others come and go.

mod conn;
pub mod files;
mod peers;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinSet;

use crate::error::{io, Error, Result};
use crate::PeerInfo;
use files::RemoveOnDrop;
use peers::PeerTable;

/// Most interrupt vectors per peer: every peer holds every other peer's
/// eventfds, so this bounds descriptors per process.
pub const MAX_VECTORS: u32 = 256;
/// Smallest shared memory (one page).
pub const MIN_SIZE: u64 = 4096;

/// What `heteropod-ivshmem-server` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Unix socket QEMU's `-chardev socket,path=` connects to.
    pub socket: PathBuf,
    /// A name under `/dev/shm`, or an absolute path.
    pub shm: String,
    /// Bytes; a power of two (QEMU asserts BAR sizes are).
    pub size: u64,
    /// Interrupt vectors (eventfds) per peer.
    pub vectors: u32,
    /// Replace an existing shared memory file instead of refusing.
    pub replace_shm: bool,
}

impl ServerConfig {
    /// Checks the numbers; returns the shared memory path.
    pub fn validate(&self) -> Result<PathBuf> {
        if self.size < MIN_SIZE || !self.size.is_power_of_two() {
            return Err(Error::BadSize(self.size));
        }
        if self.vectors == 0 || self.vectors > MAX_VECTORS {
            return Err(Error::BadVectors {
                got: self.vectors,
                max: MAX_VECTORS,
            });
        }
        files::shm_path(&self.shm)
    }
}

/// Parses a size such as `4096`, `64K`, `4M` or `1G` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

type Table = Arc<Mutex<PeerTable>>;

fn lock(table: &Table) -> MutexGuard<'_, PeerTable> {
    // A panic while holding the lock leaves a consistent table (every update is
    // a single insert/remove), so keep serving.
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bound server: socket listening, shared memory created.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    table: Table,
    vectors: u16,
    socket: PathBuf,
    shm: PathBuf,
    // Dropped last: the files go once the server is gone.
    _socket_guard: RemoveOnDrop,
    _shm_guard: RemoveOnDrop,
}

/// A view of a running server's peers (for tests and tools).
#[derive(Debug, Clone)]
pub struct ServerHandle {
    table: Table,
}

impl ServerHandle {
    pub fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.table).snapshot()
    }

    /// Waits until `f` accepts the peer list, at most `timeout`.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[PeerInfo]) -> Option<T>,
    ) -> Result<T> {
        let mut rx = lock(&self.table).watch();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if let Some(t) = f(&self.peers()) {
                    return Ok(t);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Timeout("server peers (server gone)"));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout("server peers"))?
    }
}

impl Server {
    /// Binds the socket and creates the shared memory. Call inside a tokio runtime.
    pub fn bind(config: &ServerConfig) -> Result<Server> {
        let shm = config.validate()?;
        let std_listener = files::bind_socket(&config.socket)?;
        let socket_guard = RemoveOnDrop::new(&config.socket);
        let file = files::create_shm(&shm, config.size, config.replace_shm)?;
        let shm_guard = RemoveOnDrop::new(&shm);
        std_listener
            .set_nonblocking(true)
            .map_err(io("set socket non-blocking"))?;
        let listener = UnixListener::from_std(std_listener).map_err(io("register socket"))?;
        let vectors = config.vectors as u16; // validated <= MAX_VECTORS
        tracing::info!(
            socket = %config.socket.display(),
            shm = %shm.display(),
            size = config.size,
            vectors,
            "ivshmem server listening"
        );
        Ok(Server {
            listener,
            vectors,
            table: Arc::new(Mutex::new(PeerTable::new(vectors, OwnedFd::from(file)))),
            socket: config.socket.clone(),
            shm,
            _socket_guard: socket_guard,
            _shm_guard: shm_guard,
        })
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            table: self.table.clone(),
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn shm_path(&self) -> &Path {
        &self.shm
    }

    /// Serves peers until `shutdown` resolves, then disconnects everyone and
    /// removes the socket and the shared memory file.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
                        match lock(&self.table).join() {
                            Ok((id, rx)) => {
                                tracing::info!(peer = id, ?pid, vectors = self.vectors, "peer joined");
                                tasks.spawn(conn::serve(id, stream, rx, self.table.clone()));
                            }
                            Err(e) => tracing::warn!(?pid, error = %e, "refusing peer"),
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tracing::info!("ivshmem server shutting down");
        tasks.shutdown().await;
        lock(&self.table).clear();
        Ok(())
    }
}
