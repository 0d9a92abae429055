//! TCP transport (a DPU reached over the network).
use std::io;

use tokio::net::{TcpListener, TcpStream};
use ttrpc::r#async::transport::{Listener, Socket};

pub async fn connect(host_port: &str) -> io::Result<Socket> {
    let s = TcpStream::connect(host_port).await?;
    // Small request/response messages: do not wait to coalesce them.
    s.set_nodelay(true)?;
    Ok(Socket::from(s))
}

pub async fn listen(host_port: &str) -> io::Result<Listener> {
    Ok(Listener::from(TcpListener::bind(host_port).await?))
}
