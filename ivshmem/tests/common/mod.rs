//! A server on a temp-dir socket that shuts down (and cleans up) on drop.

#![allow(dead_code)]

pub mod guest_image;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use heteropod_ivshmem::{Server, ServerConfig, ServerHandle};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub shm: PathBuf,
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<heteropod_ivshmem::Result<()>>>,
}

impl TestServer {
    pub fn start(vectors: u32, size: u64) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let shm = dir.path().join("shm");
        Self::start_with(dir, shm.to_str().unwrap().to_string(), vectors, size)
    }

    pub fn start_with(dir: tempfile::TempDir, shm: String, vectors: u32, size: u64) -> TestServer {
        let socket = dir.path().join("ivshmem.sock");
        let config = ServerConfig {
            socket: socket.clone(),
            shm,
            size,
            vectors,
            replace_shm: false,
        };
        let server = Server::bind(&config).unwrap();
        let shm = server.shm_path().to_path_buf();
        let handle = server.handle();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            dir,
            socket,
            shm,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has cleaned up.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Whether `fd` becomes readable within `ms` milliseconds.
pub fn readable(fd: impl AsFd, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).unwrap() == 1
}
