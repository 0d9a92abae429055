//! The upstream server: answers `GET /r/<n>` with [`expected_body`], keep-alive, one
//! thread per connection.

use std::io::{BufReader, ErrorKind};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::proto::{expected_body, parse_request_line, read_head, write_response};

/// What the upstream has served so far.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub bad_requests: AtomicU64,
}

/// Accepts connections on `listener` forever, serving each on its own thread;
/// `on_close` gets a line of text when a connection ends.
pub fn serve(
    listener: TcpListener,
    stats: Arc<UpstreamStats>,
    on_close: impl Fn(String) + Send + Sync + 'static,
) -> std::io::Result<()> {
    let on_close = Arc::new(on_close);
    loop {
        let (conn, peer) = match listener.accept() {
            Ok(c) => c,
            // A connection that died in the backlog is not the server's problem.
            Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        stats.connections.fetch_add(1, Relaxed);
        let (stats, on_close) = (stats.clone(), on_close.clone());
        std::thread::spawn(move || {
            let (served, end) = serve_conn(conn, &stats);
            on_close(format!(
                "upstream: connection from {peer} closed after {served} requests ({end})"
            ));
        });
    }
}

/// Serves one keep-alive connection; returns how many requests it answered and why it ended.
fn serve_conn(conn: TcpStream, stats: &UpstreamStats) -> (u64, String) {
    let _ = conn.set_nodelay(true);
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => return (0, format!("clone: {e}")),
    };
    let mut reader = BufReader::new(conn);
    let mut served = 0;
    loop {
        let (start, _headers) = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return (served, "peer closed".into()),
            Err(e) => return (served, format!("read: {e}")),
        };
        let sent = match parse_request_line(&start) {
            Some(n) => {
                stats.requests.fetch_add(1, Relaxed);
                served += 1;
                write_response(&mut writer, "200 OK", &expected_body(n))
            }
            None => {
                stats.bad_requests.fetch_add(1, Relaxed);
                write_response(&mut writer, "404 Not Found", "not found\n")
            }
        };
        if let Err(e) = sent {
            return (served, format!("write: {e}"));
        }
    }
}
