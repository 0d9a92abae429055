//! Booting a QEMU guest (TCG) with an ivshmem-doorbell device on a test
//! ivshmem server, with an initramfs that runs given programs. Shared by the
//! guest tests; QEMU is stopped by its pid on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use heteropod_ivshmem::{Server, ServerConfig};

pub const VFIO_MODULES: [&str; 6] = [
    "irqbypass",
    "vfio",
    "vfio_iommu_type1",
    "vfio_virqfd",
    "vfio-pci-core",
    "vfio-pci",
];
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

pub fn first_match(dir: &str, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    all.sort();
    all.pop()
}

pub struct Inputs {
    pub kernel_deb: PathBuf,
    pub busybox: PathBuf,
    /// target/<profile>/examples, with guest_slot and guest_relay.
    pub examples: PathBuf,
}

pub fn inputs() -> Result<Inputs, String> {
    let root = std::env::var("HETEROPOD_ROOT").unwrap_or_else(|_| "/var/lib/heteropod".into());
    let kernel_deb = std::env::var_os("IVSHMEM_GUEST_KERNEL_DEB")
        .map(PathBuf::from)
        .or_else(|| {
            first_match(&format!("{root}/qemu/debs"), |n| {
                n.starts_with("linux-image-") && n.ends_with(".deb")
            })
        })
        .ok_or("no linux-image deb (set IVSHMEM_GUEST_KERNEL_DEB or run hack/qemu once)")?;
    let busybox = std::env::var_os("IVSHMEM_GUEST_BUSYBOX")
        .map(PathBuf::from)
        .or_else(|| {
            let dir = first_match(&format!("{root}/qemu/busybox"), |_| true)?;
            Some(dir.join("busybox")).filter(|p| p.exists())
        })
        .ok_or("no static busybox (set IVSHMEM_GUEST_BUSYBOX or run hack/qemu once)")?;
    // examples/ sits next to deps/, where this test binary runs from.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let examples = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples"))
        .filter(|p| p.join("guest_slot").exists() && p.join("guest_relay").exists())
        .ok_or("examples/guest_slot and guest_relay not built (cargo test builds them)")?;
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
        examples,
    })
}

pub fn sh(script: &str) {
    let st = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(st.success(), "failed: {script}");
}

/// Unpacks the kernel and builds an initramfs with busybox, `modules`, the
/// `programs` (host path, guest name) and their libraries; `/init` loads the
/// modules, brings up lo and runs `run`. Returns (kernel, initrd).
pub fn build_guest(
    dir: &Path,
    inp: &Inputs,
    programs: &[(PathBuf, &str)],
    modules: &[&str],
    run: &str,
) -> (PathBuf, PathBuf) {
    let k = dir.join("k");
    let root = dir.join("root");
    let patterns: String = modules.iter().map(|m| format!(" '*/{m}.ko'")).collect();
    sh(&format!(
        "mkdir -p '{k}' && dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{k}' --wildcards \
         './boot/vmlinuz-*'{patterns}",
        k = k.display(),
        deb = inp.kernel_deb.display()
    ));
    let kernel = first_match(&format!("{}/boot", k.display()), |n| {
        n.starts_with("vmlinuz-")
    })
    .expect("vmlinuz in the deb");
    let mut script = format!(
        "mkdir -p {r}/bin {r}/modules {r}/proc {r}/sys {r}/dev {r}/tmp {r}/lib/x86_64-linux-gnu {r}/lib64\n\
         cp '{bb}' {r}/bin/busybox\n",
        r = root.display(),
        bb = inp.busybox.display(),
    );
    for (src, name) in programs {
        script += &format!(
            "cp '{src}' {r}/{name}\n\
             for l in $(ldd '{src}' | grep -o '/[^ ]*'); do cp -L \"$l\" {r}$l; done\n",
            src = src.display(),
            r = root.display()
        );
    }
    for m in modules {
        script += &format!(
            "cp \"$(find '{}' -name '{m}.ko' | head -n1)\" {}/modules/\n",
            k.display(),
            root.display()
        );
    }
    sh(&script);
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /modules/{m}.ko\n"))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {insmods}ip link set lo up\n{run}\necho GUEST-EXIT $?\npoweroff -f\n"
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

/// Boots the guest on the ivshmem server at `socket`, the device at `BDF`.
/// None when QEMU cannot start.
pub fn boot(socket: &Path, kernel: &Path, initrd: &Path) -> Option<(Qemu, mpsc::Receiver<String>)> {
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
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 intel_iommu=on panic=-1 quiet"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", socket.display()))
        .arg("-device")
        .arg(format!(
            "ivshmem-doorbell,chardev=ivs,vectors={},addr=0x4",
            2 * SLOTS
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP: QEMU cannot start: {e}");
            return None;
        }
    };
    let mut qemu = Qemu(child);
    let (tx, rx) = mpsc::channel();
    let out = qemu.0.stdout.take()?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line.trim_end().to_string());
        }
    });
    Some((qemu, rx))
}

/// An ivshmem server on a temp socket, for the whole test.
pub fn server(dir: &Path) -> (PathBuf, tokio::sync::oneshot::Sender<()>) {
    let socket = dir.join("ivshmem.sock");
    let srv = Server::bind(&ServerConfig {
        socket: socket.clone(),
        shm: dir.join("shm").display().to_string(),
        size: 16 << 20,
        vectors: 2 * SLOTS,
        replace_shm: false,
    })
    .unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(srv.run(async move {
        let _ = stop_rx.await;
    }));
    (socket, stop)
}

pub fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(l) if l.starts_with("GUEST-EXIT") || l.contains("Kernel panic") => {
                panic!("guest ended early: {l}")
            }
            Ok(l) => eprintln!("guest: {l}"),
            Err(_) => panic!("guest never printed {prefix}"),
        }
    }
}

pub fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e6
}
