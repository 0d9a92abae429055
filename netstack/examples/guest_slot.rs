//! Runs inside a QEMU guest with an ivshmem-doorbell device: the DPU end of a
//! slot link across the real BAR. It routes the MSI-X vectors to eventfds with
//! vfio-pci (as dpu-proxy does), then opens `pci:<bdf>/2@<k>/<n>` with the
//! eventfds of vectors 2k and 2k+1 and echoes every stream the host opens,
//! answers the control message `nap` with `awake` 200 ms later, and ends on `bye`. Used by
//! `tests/guest_slot.rs`; prints `GUEST-*` lines on the console.
//!
//! `guest_slot <bdf> <k> <n>`
//!
//! `guest_slot ring <bdf> <k> <n>`: the echo end of a bare ring ping-pong
//! (`heteronet::bench::ring_ping` on the host, both ends spinning, no
//! doorbells): opens the slot the host created (`GUEST-RING-READY`), echoes
//! until the stop record and prints `GUEST-JSON {"ring_pci":{...}}` (records
//! echoed, seconds) for `heteronet-bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use heteronet::shm::Region;
use heteronet::{LinkBuilder, Mux, MuxEvent, RegionAddr, Side};
use heteropod_ivshmem::VfioInterrupts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echo end of the spinning ring ping-pong across the BAR window.
fn ring(mut args: impl Iterator<Item = String>) -> Result<()> {
    let bdf = args
        .next()
        .context("usage: guest_slot ring <bdf> <k> <n>")?;
    let k: u32 = args.next().context("slot")?.parse()?;
    let n: u32 = args.next().context("slots")?.parse()?;
    let addr: RegionAddr = format!("pci:{bdf}/2@{k}/{n}").parse()?;
    // The host creates the slot; retry until its header is there.
    let give_up = Instant::now() + Duration::from_secs(300);
    let region = loop {
        match Region::open(&addr) {
            Ok(r) => break Arc::new(r),
            Err(e) if Instant::now() > give_up => return Err(e).context("open the slot"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let busy = || anyhow::anyhow!("ring already in use");
    // The host pings on ring 0 and reads our answers on ring 1.
    let mut rx = region.ring(0)?.acquire_consumer().ok_or_else(busy)?;
    let mut tx = region.ring(1)?.acquire_producer().ok_or_else(busy)?;
    println!("GUEST-RING-READY");
    let t = Instant::now();
    let echoed = heteronet::bench::ring_echo(&mut tx, &mut rx, Duration::from_secs(60))?;
    let doc =
        serde_json::json!({"ring_pci": {"echoed": echoed, "secs": t.elapsed().as_secs_f64()}});
    println!("GUEST-JSON {doc}");
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("ring") {
        args.next();
        return ring(args);
    }
    let bdf = args
        .next()
        .context("usage: guest_slot [ring] <bdf> <k> <n>")?;
    let k: u32 = args.next().context("slot")?.parse()?;
    let n: u32 = args.next().context("slots")?.parse()?;
    // VFIO first: the BARs stay mappable through sysfs after the bind.
    let irqs = VfioInterrupts::open(&bdf, 2 * n)?;
    println!("GUEST-VFIO {} vectors", irqs.vectors());
    let addr: RegionAddr = format!("pci:{bdf}/2@{k}/{n}").parse()?;
    let data = irqs.bell_fd((2 * k) as u16)?;
    let space = irqs.bell_fd((2 * k + 1) as u16)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let builder = LinkBuilder::new(addr).side(Side::Dpu).irq_fds(data, space);
        let (mux, mut events) = Mux::start(builder);
        let mut streams = 0u32;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(300), events.next())
                .await
                .context("no event from the host for 300 s")?;
            match ev {
                Some(MuxEvent::PeerUp) => println!("GUEST-UP"),
                Some(MuxEvent::PeerGone) => println!("GUEST-GONE"),
                Some(MuxEvent::Stream(mut s, _)) => {
                    streams += 1;
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => {
                                    if s.write_all(&buf[..k]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = s.shutdown().await;
                    });
                }
                Some(MuxEvent::Control(m)) if m == b"bye" => break,
                // Idle long enough that the host's driver sleeps on its
                // eventfd: only our BAR0 doorbell can wake it for the answer.
                Some(MuxEvent::Control(m)) if m == b"nap" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    mux.send_control(b"awake".to_vec()).await?;
                }
                Some(MuxEvent::Control(_)) => {}
                None => anyhow::bail!("mux ended"),
            }
        }
        println!("GUEST-STREAMS {streams}");
        println!("GUEST-STATS {}", serde_json::to_string(&mux.stats())?);
        Ok(())
    })
}
