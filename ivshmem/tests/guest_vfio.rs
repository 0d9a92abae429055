//! The guest side for real: a Debian kernel in QEMU (TCG) runs
//! `examples/guest_probe`, which rings us through BAR0's doorbell and gets
//! our rings as MSI-X interrupts through vfio-pci. Needs qemu-system-x86_64,
//! cpio, and the kernel and busybox debs `hack/qemu` caches (or
//! `IVSHMEM_GUEST_KERNEL_DEB` / `IVSHMEM_GUEST_BUSYBOX`); skipped otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{readable, TestServer};
use heteropod_ivshmem::Client;

const MODULES: [&str; 6] = [
    "irqbypass",
    "vfio",
    "vfio_iommu_type1",
    "vfio_virqfd",
    "vfio-pci-core",
    "vfio-pci",
];
const ROUNDS: usize = 200;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn first_match(dir: &str, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    all.sort();
    all.pop()
}

struct Inputs {
    kernel_deb: PathBuf,
    busybox: PathBuf,
    probe: PathBuf,
}

fn inputs() -> Result<Inputs, String> {
    let root = std::env::var("HETEROPOD_ROOT").unwrap_or_else(|_| "/var/lib/heteropod".into());
    let kernel_deb = std::env::var_os("IVSHMEM_GUEST_KERNEL_DEB")
        .map(PathBuf::from)
        .or_else(|| {
            first_match(&format!("{root}/qemu/debs"), |n| {
                n.starts_with("linux-image-") && n.ends_with(".deb")
            })
        })
        .ok_or("no linux-image deb (run hack/qemu once)")?;
    let busybox = std::env::var_os("IVSHMEM_GUEST_BUSYBOX")
        .map(PathBuf::from)
        .or_else(|| {
            let dir = first_match(&format!("{root}/qemu/busybox"), |_| true)?;
            Some(dir.join("busybox")).filter(|p| p.exists())
        })
        .ok_or("no static busybox (run hack/qemu once)")?;
    // examples/ sits next to deps/, where this test binary runs from.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let probe = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples/guest_probe"))
        .filter(|p| p.exists())
        .ok_or("examples/guest_probe not built")?;
    for tool in ["qemu-system-x86_64", "cpio", "dpkg-deb", "gzip"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("{tool} not installed"));
        }
    }
    Ok(Inputs {
        kernel_deb,
        busybox,
        probe,
    })
}

fn sh(script: &str) {
    let st = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(st.success(), "failed: {script}");
}

/// Unpacks the kernel and builds an initramfs: busybox, vfio modules, the
/// probe and its libraries. Returns (bzImage, initrd).
fn build_guest(dir: &Path, inp: &Inputs) -> (PathBuf, PathBuf) {
    let k = dir.join("k");
    let root = dir.join("root");
    // Only the kernel and the vfio modules, not all 300 MB of modules.
    sh(&format!(
        "mkdir -p '{k}' && dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{k}' --wildcards \
         './boot/vmlinuz-*' '*/vfio*.ko' '*/irqbypass.ko'",
        k = k.display(),
        deb = inp.kernel_deb.display()
    ));
    let kernel = first_match(&format!("{}/boot", k.display()), |n| {
        n.starts_with("vmlinuz-")
    })
    .expect("vmlinuz in the deb");
    let mut script = format!(
        "mkdir -p {r}/bin {r}/modules {r}/proc {r}/sys {r}/dev {r}/lib/x86_64-linux-gnu {r}/lib64\n\
         cp '{bb}' {r}/bin/busybox\n\
         cp '{probe}' {r}/probe\n\
         for l in $(ldd '{probe}' | grep -o '/[^ ]*'); do cp -L \"$l\" {r}$l; done\n",
        r = root.display(),
        bb = inp.busybox.display(),
        probe = inp.probe.display()
    );
    for m in MODULES {
        script += &format!(
            "cp \"$(find '{}' -name '{m}.ko' | head -n1)\" {}/modules/\n",
            k.display(),
            root.display()
        );
    }
    sh(&script);
    let insmods: String = MODULES
        .iter()
        .map(|m| format!("insmod /modules/{m}.ko\n"))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {insmods}/probe\necho PROBE-EXIT $?\npoweroff -f\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    sh(&format!("chmod 755 {}/init", root.display()));
    let initrd = dir.join("initrd.gz");
    sh(&format!(
        "cd '{}' && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > '{}'",
        root.display(),
        initrd.display()
    ));
    (kernel, initrd)
}

fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(l) if l.starts_with("PROBE-") || l.contains("Kernel panic") => {
                eprintln!("guest: {l}");
                assert!(!l.starts_with("PROBE-EXIT") && !l.contains("panic"), "{l}");
            }
            Ok(_) => {}
            Err(_) => panic!("guest never printed {prefix}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_rings_through_bar0_and_gets_msix_through_vfio() {
    let inp = match inputs() {
        Ok(i) => i,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let srv = TestServer::start(4, 1 << 20);
    let (kernel, initrd) = build_guest(srv.dir.path(), &inp);
    let host = Client::connect(&srv.socket, 4).await.unwrap();
    host.shm().write(128, &host.id().to_le_bytes()).unwrap();
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-device", "intel-iommu"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 intel_iommu=on panic=-1 quiet"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", srv.socket.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
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
        "host ring -> guest MSI-X -> guest BAR0 doorbell -> host eventfd (TCG), {ROUNDS} rounds: \
         p50 {:.1} us, p99 {:.1} us",
        rtt[ROUNDS / 2].as_secs_f64() * 1e6,
        rtt[ROUNDS * 99 / 100].as_secs_f64() * 1e6
    );
}
