//! Runs inside a QEMU guest with an ivshmem-doorbell device and plays
//! dpu-proxy for one Pod: routes the MSI-X vectors to eventfds with vfio-pci,
//! starts an echo server on 127.0.0.1:<port> (the DPU half's workload), and
//! runs the real relay as `heteronet --side dpu --region pci:<bdf>/2@<k>/<n>
//! --irq-fds DATA,SPACE` with the eventfds of vectors 2k and 2k+1 inherited.
//! Used by `tests/guest_slot.rs` and `heteronet-bench` (`relay_pci_elastic`);
//! prints `GUEST-*` lines on the console, `GUEST-JSON {"echo":...}` per
//! connection closed.
//!
//! `guest_relay <bdf> <k> <n> <port> <heteronet binary>`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use heteropod_ivshmem::VfioInterrupts;

/// Echoes one connection; when it ends, prints `GUEST-JSON {"echo":{...}}`
/// (bytes echoed, reads, seconds) so a host benchmark can check its pings
/// all went through the guest.
fn echo(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut bytes, mut reads, t) = (0u64, 0u64, Instant::now());
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = c.shutdown(std::net::Shutdown::Write);
                break;
            }
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
                bytes += n as u64;
                reads += 1;
            }
        }
    }
    let doc = serde_json::json!({"echo": {"bytes": bytes, "reads": reads, "secs": t.elapsed().as_secs_f64()}});
    println!("GUEST-JSON {doc}");
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bdf, k, n, port, relay] = args.as_slice() else {
        anyhow::bail!("usage: guest_relay <bdf> <k> <n> <port> <heteronet>");
    };
    let (k, n): (u16, u32) = (k.parse()?, n.parse()?);
    // One descriptor per echoed connection (the tests open 1,000 at once).
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let irqs = VfioInterrupts::open(bdf, 2 * n)?;
    println!("GUEST-VFIO {} vectors", irqs.vectors());
    // dup() leaves close-on-exec clear: the relay inherits these two.
    let data = nix::unistd::dup(irqs.bell(2 * k)?).context("dup data eventfd")?;
    let space = nix::unistd::dup(irqs.bell(2 * k + 1)?).context("dup space eventfd")?;

    let l = TcpListener::bind(format!("127.0.0.1:{port}"))?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || echo(c));
        }
    });
    println!("GUEST-ECHO {port}");
    let mut child = Command::new(relay)
        .args(["--side", "dpu", "--poll-ms", "100", "--region"])
        .arg(format!("pci:{bdf}/2@{k}/{n}"))
        .arg("--irq-fds")
        .arg(format!("{},{}", data.as_raw_fd(), space.as_raw_fd()))
        .env("RUST_LOG", "info")
        .spawn()
        .context("start the relay")?;
    println!("GUEST-RELAY {}", child.id());
    // Like dpu-proxy: our copies stay open (and VFIO routed) while the relay runs.
    let status = child.wait()?;
    println!("GUEST-RELAY-EXIT {status}");
    drop((data, space, irqs));
    Ok(())
}
