//! The guest side for real: a Debian kernel in QEMU runs
//! `examples/guest_probe`, which rings us through BAR0's doorbell and gets
//! our rings as MSI-X interrupts through vfio-pci. Needs qemu-system-x86_64,
//! cpio, gzip and the kernel and busybox `hack/qemu/guest.sh build` caches
//! (or `IVSHMEM_GUEST_KERNEL_DEB` / `IVSHMEM_GUEST_BUSYBOX`, see
//! `common/guest_image.rs`); skipped with the reason otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::guest_image::{self, GuestKernel};
use common::{readable, TestServer};
use heteropod_ivshmem::Client;

/// vfio-pci and its IOMMU backend; their dependencies come with them.
const MODULES: [&str; 2] = ["vfio_pci", "vfio_iommu_type1"];
const ROUNDS: usize = 200;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Inputs {
    kernel: GuestKernel,
    busybox: PathBuf,
    probe: PathBuf,
}

fn inputs(scratch: &Path) -> Result<Inputs, String> {
    if let Some(why) = guest_image::missing_tools() {
        return Err(why);
    }
    // examples/ sits next to deps/, where this test binary runs from.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let probe = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples/guest_probe"))
        .filter(|p| p.exists())
        .ok_or("examples/guest_probe not built (cargo build --release -p heteropod-ivshmem --examples)")?;
    Ok(Inputs {
        busybox: guest_image::busybox()?,
        kernel: guest_image::kernel(scratch, &MODULES)?,
        probe,
    })
}

fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(l)
                if l.starts_with("PROBE-")
                    || l.starts_with("GUEST-EXIT")
                    || l.contains("Kernel panic") =>
            {
                eprintln!("guest: {l}");
                assert!(!l.starts_with("GUEST-EXIT") && !l.contains("panic"), "{l}");
            }
            Ok(_) => {}
            Err(_) => panic!("guest never printed {prefix}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_rings_through_bar0_and_gets_msix_through_vfio() {
    let srv = TestServer::start(4, 1 << 20);
    let inp = match inputs(srv.dir.path()) {
        Ok(i) => i,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let programs = [(inp.probe.clone(), "probe")];
    let initrd = guest_image::initramfs(
        srv.dir.path(),
        &inp.kernel,
        &inp.busybox,
        &programs,
        "/probe",
    )
    .expect("initramfs");
    let accel = guest_image::accel();
    eprintln!("guest: kernel {}, accel {accel}", inp.kernel.source);
    let host = Client::connect(&srv.socket, 4).await.unwrap();
    host.shm().write(128, &host.id().to_le_bytes()).unwrap();
    let child = guest_image::qemu_command(&inp.kernel, &initrd, accel)
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", srv.socket.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=4"])
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP: QEMU cannot start: {e}");
            return;
        }
    };
    let mut qemu = Qemu(child);
    let (tx, rx) = mpsc::channel();
    let out = qemu.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line.trim_end().to_string());
        }
    });
    let guest = srv
        .handle
        .wait_until(Duration::from_secs(30), |p| {
            p.iter().find(|i| i.id != 0).map(|i| i.id)
        })
        .await
        .unwrap();
    let boot = Duration::from_secs(90);
    // The probe binds vfio-pci first, then maps BAR0 and BAR2 through sysfs.
    expect_line(&rx, "PROBE-VFIO 4", boot);
    let id_line = expect_line(&rx, "PROBE-ID", boot);
    assert_eq!(
        id_line,
        format!("PROBE-ID {guest}"),
        "IVPosition is the server's id"
    );
    let start = Instant::now();
    let mut ready = [0u8; 11];
    while &ready[..5] != b"READY" {
        assert!(start.elapsed() < boot, "guest never wrote READY into BAR2");
        std::thread::sleep(Duration::from_millis(20));
        host.shm().read(0, &mut ready).unwrap();
    }
    host.shm().write(64, b"HOST hello").unwrap();

    let mut rtt = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        if round == ROUNDS - 1 {
            host.shm().write(132, &[1]).unwrap();
        }
        let t = Instant::now();
        host.ring(guest, 1).unwrap();
        assert!(
            readable(host.bell(0).unwrap(), 20_000),
            "no answer in round {round}"
        );
        rtt.push(t.elapsed());
        host.drain(0).unwrap();
        assert!(!readable(host.bell(1).unwrap(), 0));
    }
    assert_eq!(
        expect_line(&rx, "PROBE-HOST-SAYS", boot),
        "PROBE-HOST-SAYS HOST hello"
    );
    assert_eq!(
        expect_line(&rx, "PROBE-OTHER-VECTORS-RUNG", boot),
        "PROBE-OTHER-VECTORS-RUNG 0"
    );
    assert_eq!(
        expect_line(&rx, "PROBE-DONE", boot),
        format!("PROBE-DONE {ROUNDS}")
    );
    rtt.sort();
    println!(
        "host ring -> guest MSI-X -> guest BAR0 doorbell -> host eventfd ({accel}), {ROUNDS} rounds: \
         p50 {:.1} us, p99 {:.1} us",
        rtt[ROUNDS / 2].as_secs_f64() * 1e6,
        rtt[ROUNDS * 99 / 100].as_secs_f64() * 1e6
    );
}
