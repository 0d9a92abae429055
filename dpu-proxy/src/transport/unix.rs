//! Unix socket transport (the emulated DPU).
use std::{io, path::Path};

use tokio::net::{UnixListener, UnixStream};
use ttrpc::r#async::transport::{Listener, Socket};

pub async fn connect(path: &Path) -> io::Result<Socket> {
    Ok(Socket::from(UnixStream::connect(path).await?))
}

pub fn listen(path: &Path) -> io::Result<Listener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(Listener::from(UnixListener::bind(path)?))
}
