//! An ivshmem server for relay tests, on its own runtime thread, stopped
//! (socket and shared memory removed) on drop.

use std::path::PathBuf;

use heteropod_ivshmem::{Server, ServerConfig};

pub struct IvshmemServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub shm: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IvshmemServer {
    /// `slots` slots (2 vectors each) of `size` bytes of shared memory.
    pub fn start(slots: u32, size: u64) -> IvshmemServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("ivshmem.sock");
        let config = ServerConfig {
            socket: socket.clone(),
            shm: dir.path().join("shm").display().to_string(),
            size,
            vectors: 2 * slots,
            replace_shm: false,
        };
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let srv = Server::bind(&config).expect("ivshmem server");
                ready_tx.send(srv.shm_path().to_path_buf()).expect("ready");
                let _ = srv
                    .run(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        let shm = ready_rx.recv().expect("server started");
        IvshmemServer {
            dir,
            socket,
            shm,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The `ivshmem:` address of slot `k` of `n`.
    pub fn region(&self, k: u32, n: u32) -> String {
        format!("ivshmem:{}@{k}/{n}", self.socket.display())
    }

    /// Byte range of slot `k` of `n` in the shared memory file.
    pub fn window(&self, k: u32, n: u32) -> (u64, u64) {
        let size = std::fs::metadata(&self.shm).expect("shm").len();
        (size * u64::from(k) / u64::from(n), size / u64::from(n))
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
