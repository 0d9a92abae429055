//! Process stdio: the FIFOs containerd hands over, a console socket for terminals,
//! and null IO.
//!
//! Without a terminal the FIFOs are given to the process directly, so the shim
//! copies nothing and holds no buffers. With a terminal, runc sends the pty master
//! to a console socket and the shim copies between the master and the FIFOs.

use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt},
    net::{unix::pipe, UnixListener},
    sync::oneshot,
};

use crate::{
    error::{Error, Result},
    sys,
};

const COPY_BUF: usize = 8 * 1024;

/// The stdio paths containerd sent for one process; empty means "none".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl Stdio {
    pub fn is_null(&self) -> bool {
        self.stdin.is_empty() && self.stdout.is_empty() && self.stderr.is_empty()
    }

    /// Rejects URIs other than plain FIFO paths (`binary://`, `file://` loggers
    /// are not supported), so a misconfigured client gets a clear error.
    pub fn validate(&self) -> Result<()> {
        for path in [&self.stdin, &self.stdout, &self.stderr] {
            let plain = path.strip_prefix("fifo://").unwrap_or(path);
            if plain.contains("://") {
                return Err(Error::InvalidArgument(format!(
                    "stdio {path:?}: only FIFO paths are supported"
                )));
            }
        }
        Ok(())
    }

    pub fn path(p: &str) -> Option<&str> {
        let p = p.strip_prefix("fifo://").unwrap_or(p);
        (!p.is_empty()).then_some(p)
    }
}

/// Opens a writer on the process's stdin FIFO after the process holds the read
/// end. Holding it keeps the process from seeing EOF until CloseIO.
pub fn hold_stdin(stdio: &Stdio) -> Option<File> {
    let path = Stdio::path(&stdio.stdin)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| tracing::debug!("stdin {path}: {e}"))
        .ok()?;
    clear_nonblock(&file).ok()?;
    Some(file)
}

/// How long to wait for containerd to open the read side of an output FIFO.
const FIFO_READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the FIFO `path` for writing once a reader has it open, as a blocking
/// descriptor. containerd opens its reader asynchronously, so a non-blocking open
/// can briefly fail with ENXIO; retry instead of parking a thread in open(2).
pub async fn open_fifo_writer(path: &str) -> Result<File> {
    let deadline = std::time::Instant::now() + FIFO_READER_WAIT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => {
                clear_nonblock(&file)?;
                return Ok(file);
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                return Err(Error::io(format!("open {path} for writing (no reader?)"))(
                    e,
                ))
            }
        }
    }
}

/// Opens the FIFO `path` for reading without waiting for a writer, as a
/// blocking descriptor.
pub fn open_fifo_reader(path: &str) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io(format!("open {path} for reading")))?;
    clear_nonblock(&file)?;
    Ok(file)
}

fn clear_nonblock(fd: &impl AsFd) -> Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

fn set_nonblock(fd: &impl AsFd) -> Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A listening socket runc connects to with `--console-socket`.
pub struct ConsoleSocket {
    listener: UnixListener,
    dir: tempfile::TempDir,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let dir = tempfile::Builder::new()
            .prefix("heteropod-pty")
            .tempdir()
            .map_err(Error::io("create console socket dir"))?;
        let path = dir.path().join("pty.sock");
        let listener =
            UnixListener::bind(&path).map_err(Error::io(format!("bind {}", path.display())))?;
        Ok(ConsoleSocket { listener, dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("pty.sock")
    }

    /// Waits for runc to send the pty master.
    pub async fn receive_master(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(Error::io("accept on console socket"))?;
        let stream = stream
            .into_std()
            .map_err(Error::io("console socket stream"))?;
        clear_nonblock(&stream)?;
        tokio::task::spawn_blocking(move || sys::fd::recv_fd(&stream))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("console receive task: {e}")))?
    }
}

/// A process's terminal: the pty master and the copy loops around it.
pub struct Console {
    master: Arc<AsyncFd<File>>,
    stdin_copy: Option<tokio::task::JoinHandle<()>>,
    output_done: Option<oneshot::Receiver<()>>,
}

impl Console {
    /// Starts copying stdin FIFO -> master and master -> stdout FIFO.
    pub async fn start(master: OwnedFd, stdio: &Stdio) -> Result<Console> {
        set_nonblock(&master)?;
        let master = Arc::new(sys::fd::async_fd(File::from(master))?);
        let stdin_copy = match Stdio::path(&stdio.stdin) {
            Some(path) => {
                let rx = pipe::OpenOptions::new()
                    .open_receiver(path)
                    .map_err(Error::io(format!("open stdin {path}")))?;
                Some(tokio::spawn(copy_into_master(rx, master.clone())))
            }
            None => None,
        };
        let output_done = match Stdio::path(&stdio.stdout) {
            Some(path) => {
                let file = open_fifo_writer(path).await?;
                let tx =
                    pipe::Sender::from_file(file).map_err(Error::io(format!("stdout {path}")))?;
                let (done_tx, done_rx) = oneshot::channel();
                tokio::spawn(copy_from_master(master.clone(), tx, done_tx));
                Some(done_rx)
            }
            None => None,
        };
        Ok(Console {
            master,
            stdin_copy,
            output_done,
        })
    }

    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        sys::fd::set_winsize(self.master.get_ref(), width, height)
    }

    /// Stops feeding stdin (CloseIO).
    pub fn close_stdin(&mut self) {
        if let Some(task) = self.stdin_copy.take() {
            task.abort();
        }
    }

    /// Waits (bounded) until all output reached the FIFO, so an exit event never
    /// overtakes the last lines.
    pub async fn drain(&mut self) {
        if let Some(done) = self.output_done.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), done).await;
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.close_stdin();
    }
}

async fn copy_into_master(mut rx: pipe::Receiver, master: Arc<AsyncFd<File>>) {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let Ok(mut guard) = master.writable().await else {
                return;
            };
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(Ok(w)) => data = &data[w..],
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    }
}

async fn copy_from_master(
    master: Arc<AsyncFd<File>>,
    mut tx: pipe::Sender,
    done: oneshot::Sender<()>,
) {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let Ok(mut guard) = master.readable().await else {
            break;
        };
        // EIO means every slave end is closed: the process is gone.
        let n = match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_would_block) => continue,
        };
        if tx.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = done.send(());
}

/// Removes a path if present; used for pid files and sockets.
pub fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_without_paths_is_null() {
        let sut = Stdio::default();
        assert!(sut.is_null());
        let sut = Stdio {
            stdout: "/x".into(),
            ..Default::default()
        };
        assert!(!sut.is_null());
    }

    #[test]
    fn non_fifo_uris_are_rejected() {
        let sut = Stdio {
            stdout: "binary:///usr/bin/logger".into(),
            ..Default::default()
        };
        assert!(matches!(sut.validate(), Err(Error::InvalidArgument(_))));
        let sut = Stdio {
            stdout: "fifo:///run/x/stdout".into(),
            ..Default::default()
        };
        sut.validate().unwrap();
        assert_eq!(Stdio::path(&sut.stdout), Some("/run/x/stdout"));
    }

    #[tokio::test]
    async fn console_copies_terminal_output_to_the_stdout_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut reader = pipe::OpenOptions::new().open_receiver(&out).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let stdio = Stdio {
            stdout: out.to_str().unwrap().into(),
            terminal: true,
            ..Default::default()
        };
        let mut sut = Console::start(pty.master, &stdio).await.unwrap();
        sut.resize(100, 40).unwrap();
        let mut slave = File::from(pty.slave);
        slave.write_all(b"hello\n").unwrap();
        drop(slave);
        sut.drain().await;
        let mut got = String::new();
        reader.read_to_string(&mut got).await.unwrap();
        assert!(got.contains("hello"), "{got:?}");
    }
}

#[cfg(test)]
mod fifo_tests {
    use super::*;

    #[tokio::test]
    async fn writer_waits_for_a_late_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let p = path.clone();
        // A reader that shows up late and blocks in open(2) like containerd's.
        let late_reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut got = String::new();
            std::io::Read::read_to_string(&mut File::open(p).unwrap(), &mut got).unwrap();
            got
        });
        let mut sut = open_fifo_writer(path.to_str().unwrap()).await.unwrap();
        sut.write_all(b"late").unwrap();
        drop(sut);
        assert_eq!(late_reader.join().unwrap(), "late");
    }
}
