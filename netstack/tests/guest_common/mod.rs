//! Booting a QEMU guest with an ivshmem-doorbell device on a test ivshmem
//! server, with an initramfs that runs given programs. The kernel, modules
//! and busybox come from `hack/qemu/guest.sh build`'s cache (see
//! `guest_image.rs`, shared with heteropod-ivshmem's guest test). Used by the
//! guest tests and by `heteronet-bench`; QEMU is stopped by its pid on drop.
#![allow(dead_code)]

#[path = "../../../ivshmem/tests/common/guest_image.rs"]
pub mod guest_image;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guest_image::GuestKernel;
use heteropod_ivshmem::{Server, ServerConfig};

/// vfio-pci and its IOMMU backend (dependencies come with them).
pub const VFIO_MODULES: [&str; 2] = ["vfio_pci", "vfio_iommu_type1"];
/// The relay's listener watch (sock_diag) on top of VFIO.
pub const RELAY_MODULES: [&str; 3] = ["vfio_pci", "vfio_iommu_type1", "tcp_diag"];
pub const SLOT: u32 = 1;
pub const SLOTS: u32 = 4;
pub const BDF: &str = "0000:00:04.0";
pub const ROUNDS: usize = 200;
pub const BOOT: Duration = Duration::from_secs(180);

/// Stops QEMU by its pid on drop.
pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Inputs {
    pub kernel: GuestKernel,
    pub busybox: PathBuf,
    /// target/<profile>/examples, with guest_slot and guest_relay.
    pub examples: PathBuf,
    pub accel: &'static str,
}

/// target/<profile>/examples as seen from a test binary (in deps/).
pub fn test_examples_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("examples")))
        .unwrap_or_default()
}

/// What a guest with `modules` needs, or why it cannot run here.
pub fn inputs(scratch: &Path, modules: &[&str], examples: PathBuf) -> Result<Inputs, String> {
    if let Some(why) = guest_image::missing_tools() {
        return Err(why);
    }
    if !(examples.join("guest_slot").exists() && examples.join("guest_relay").exists()) {
        return Err(format!(
            "{}/guest_slot and guest_relay not built (cargo build --release -p heteronet --examples)",
            examples.display()
        ));
    }
    Ok(Inputs {
        busybox: guest_image::busybox()?,
        kernel: guest_image::kernel(scratch, modules)?,
        examples,
        accel: guest_image::accel(),
    })
}

/// The initramfs: busybox, the kernel's modules, the `programs` (host path,
/// guest name) and their libraries; `/init` runs `run`.
pub fn build_guest(
    dir: &Path,
    inp: &Inputs,
    programs: &[(PathBuf, &str)],
    run: &str,
) -> Result<PathBuf, String> {
    guest_image::initramfs(dir, &inp.kernel, &inp.busybox, programs, run)
}

/// Boots the guest on the ivshmem server at `socket`, the device at `BDF`;
/// its console lines arrive on the receiver.
pub fn boot(
    socket: &Path,
    inp: &Inputs,
    initrd: &Path,
) -> Result<(Qemu, mpsc::Receiver<String>), String> {
    let mut child = guest_image::qemu_command(&inp.kernel, initrd, inp.accel)
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", socket.display()))
        .arg("-device")
        .arg(format!(
            "ivshmem-doorbell,chardev=ivs,vectors={},addr=0x4",
            2 * SLOTS
        ))
        .spawn()
        .map_err(|e| format!("QEMU cannot start: {e}"))?;
    let out = child.stdout.take().ok_or("no QEMU stdout")?;
    let qemu = Qemu(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line.trim_end().to_string());
        }
    });
    Ok((qemu, rx))
}

/// An ivshmem server (16 MiB, 2 vectors per slot) on `dir/ivshmem.sock`,
/// run on the current tokio runtime until the sender is used or dropped.
/// Its shared memory is the file `dir/shm`.
pub fn server(dir: &Path) -> Result<(PathBuf, tokio::sync::oneshot::Sender<()>), String> {
    let socket = dir.join("ivshmem.sock");
    let srv = Server::bind(&ServerConfig {
        socket: socket.clone(),
        shm: dir.join("shm").display().to_string(),
        size: 16 << 20,
        vectors: 2 * SLOTS,
        replace_shm: false,
    })
    .map_err(|e| format!("ivshmem server: {e}"))?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(srv.run(async move {
        let _ = stop_rx.await;
    }));
    Ok((socket, stop))
}

/// The first console line starting with `prefix` within `within`; other
/// lines go to `log`. Fails when the guest ends or panics first.
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    within: Duration,
    log: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return Ok(l),
            Ok(l) if l.starts_with("GUEST-EXIT") || l.contains("Kernel panic") => {
                return Err(format!("guest ended before {prefix}: {l}"))
            }
            Ok(l) => log(&l),
            Err(_) => return Err(format!("guest never printed {prefix} within {within:?}")),
        }
    }
}

/// The value of a `Result<_, String>`, or the test returns early, printing
/// `SKIP: <why>` (QEMU or the guest's inputs are missing here).
#[allow(unused_macros)]
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(why) => {
                eprintln!("SKIP: {why}");
                return;
            }
        }
    };
}

/// [`expect_line`] of `prefix` (within [`BOOT`]) off the async runtime's
/// threads; gives the console back.
pub async fn await_line(
    rx: mpsc::Receiver<String>,
    prefix: &'static str,
) -> mpsc::Receiver<String> {
    tokio::task::spawn_blocking(move || {
        expect_line(&rx, prefix, BOOT);
        rx
    })
    .await
    .unwrap()
}

/// [`wait_line`] for tests: echoes the other lines, panics on failure.
pub fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str, within: Duration) -> String {
    wait_line(rx, prefix, within, &mut |l| eprintln!("guest: {l}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e6
}
