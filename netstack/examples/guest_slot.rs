//! Runs inside a QEMU guest with an ivshmem-doorbell device: the DPU end of a
//! slot link across the real BAR. It routes the MSI-X vectors to eventfds with
//! vfio-pci (as dpu-proxy does), then opens `pci:<bdf>/2@<k>/<n>` with the
//! eventfds of vectors 2k and 2k+1 and echoes every stream the host opens,
//! answers the control message `nap` with `awake` 200 ms later, and ends on `bye`. Used by
//! `tests/guest_slot.rs`; prints `GUEST-*` lines on the console.
//!
//! `guest_slot <bdf> <k> <n>`

use std::time::Duration;

use anyhow::{Context, Result};
use heteronet::{LinkBuilder, Mux, MuxEvent, RegionAddr, Side};
use heteropod_ivshmem::VfioInterrupts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let bdf = args.next().context("usage: guest_slot <bdf> <k> <n>")?;
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
