//! `relay_splice`: the kernel-only relay baseline. Like the HeteroNet relay
//! pair it terminates TCP in one netns and opens a new connection in the
//! other, but it moves the bytes with splice(2) through a pipe (no copy into
//! user space, no ring), so its numbers are the floor for any relay that
//! splits a connection across the two halves of a Pod.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::thread;

use anyhow::{Context, Result};
use nix::fcntl::{splice, SpliceFFlags};

use crate::topo::{in_ns, join};

const CHUNK: usize = 1 << 20;

/// Listens on `listen` in `from_ns`; each connection is joined to a new one to
/// `to` made from `to_ns`. Runs until the process exits.
pub fn start(from_ns: &Path, listen: SocketAddr, to_ns: &Path, to: SocketAddr) -> Result<()> {
    let l = join(in_ns(from_ns, move || {
        TcpListener::bind(listen).with_context(|| format!("bind {listen}"))
    }))?;
    let to_ns = to_ns.to_path_buf();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            // The upstream socket is made in the other netns; its fd works anywhere.
            let Ok(Ok(u)) = in_ns(&to_ns, move || Ok(TcpStream::connect(to)?)).join() else {
                continue;
            };
            let _ = c.set_nodelay(true);
            let _ = u.set_nodelay(true);
            let (c2, u2) = match (c.try_clone(), u.try_clone()) {
                (Ok(c2), Ok(u2)) => (c2, u2),
                _ => continue,
            };
            thread::spawn(move || pump(c, u));
            thread::spawn(move || pump(u2, c2));
        }
    });
    Ok(())
}

/// Splices `from` into `to` until EOF or an error, then half-closes `to`.
fn pump(from: TcpStream, to: TcpStream) {
    let _ = pump_inner(&from, &to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn pump_inner(from: &TcpStream, to: &TcpStream) -> Result<()> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe()?;
    // A 64 KiB pipe would cap every splice at 16 pages.
    nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32))?;
    loop {
        let n = splice(
            from.as_fd(),
            None,
            w.as_fd(),
            None,
            CHUNK,
            SpliceFFlags::SPLICE_F_MOVE,
        )?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            left -= splice(
                r.as_fd(),
                None,
                to.as_fd(),
                None,
                left,
                SpliceFFlags::SPLICE_F_MOVE,
            )?;
        }
    }
}
