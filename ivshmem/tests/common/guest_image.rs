//! A bootable test guest: the kernel, modules and busybox that
//! `hack/qemu/guest.sh build` caches under `$QEMU_DIR` (default
//! `$HETEROPOD_ROOT/qemu`: `kernel/<kver>/{vmlinux,modules/*.ko,modules/order}`
//! and `busybox/<deb>/busybox`), or a linux-image .deb as a fallback
//! (`IVSHMEM_GUEST_KERNEL_DEB`, or one left in `$QEMU_DIR/debs`), packed into
//! an initramfs with the programs a test runs, and the QEMU command line.
//!
//! Shared by path (std only) by heteropod-ivshmem's `tests/guest_vfio.rs`,
//! heteronet's `tests/guest_common` and `heteronet-bench`: the crates share
//! no test-support crate. Errors are strings: callers print them as the
//! reason they skip.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A guest kernel image and the modules to load, in load order.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub image: PathBuf,
    pub modules: Vec<PathBuf>,
    /// Where it came from, for logs.
    pub source: String,
}

/// `$QEMU_DIR`, else `$HETEROPOD_ROOT/qemu`, else `/var/lib/heteropod/qemu`
/// (as hack/qemu/guest.sh).
pub fn qemu_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QEMU_DIR") {
        return PathBuf::from(d);
    }
    let root = std::env::var("HETEROPOD_ROOT").unwrap_or_else(|_| "/var/lib/heteropod".into());
    Path::new(&root).join("qemu")
}

/// The last (by name) entry of `dir` whose file name satisfies `pred`.
pub fn first_match(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    all.sort();
    all.pop()
}

/// Module names compare with `-` and `_` as the same character.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why a guest cannot be built or booted here, if it cannot.
pub fn missing_tools() -> Option<String> {
    ["qemu-system-x86_64", "cpio", "gzip"]
        .into_iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} not installed (hack/qemu/guest.sh build installs it)"))
}

/// `IVSHMEM_GUEST_BUSYBOX`, else the static busybox hack/qemu caches.
pub fn busybox() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("IVSHMEM_GUEST_BUSYBOX") {
        return Ok(PathBuf::from(p));
    }
    let dir = qemu_dir().join("busybox");
    first_match(&dir, |_| true)
        .map(|d| d.join("busybox"))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "no static busybox under {} (run hack/qemu/guest.sh build, or set IVSHMEM_GUEST_BUSYBOX)",
                dir.display()
            )
        })
}

/// The kernel for a guest that needs `wanted` modules (and what they depend
/// on): an explicit `IVSHMEM_GUEST_KERNEL_DEB` first, then hack/qemu's
/// extracted kernel, then a linux-image deb in `$QEMU_DIR/debs` (unpacked
/// under `scratch`).
pub fn kernel(scratch: &Path, wanted: &[&str]) -> Result<GuestKernel, String> {
    if let Some(deb) = std::env::var_os("IVSHMEM_GUEST_KERNEL_DEB") {
        return from_deb(Path::new(&deb), scratch, wanted);
    }
    let dir = qemu_dir();
    let cached = from_cache(&dir, wanted);
    if cached.is_ok() {
        return cached;
    }
    let deb = first_match(&dir.join("debs"), |n| {
        n.starts_with("linux-image-") && n.ends_with(".deb")
    });
    match (cached, deb) {
        (Err(why), None) => Err(format!(
            "{why}; no linux-image deb either (run hack/qemu/guest.sh build, or set IVSHMEM_GUEST_KERNEL_DEB)"
        )),
        (Err(why), Some(deb)) => from_deb(&deb, scratch, wanted)
            .map_err(|e| format!("{why}; and from {}: {e}", deb.display())),
        (Ok(k), _) => Ok(k),
    }
}

/// `depends=` of a module's .modinfo (an uncompressed .ko).
fn depends(ko: &Path) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(ko).map_err(|e| format!("read {}: {e}", ko.display()))?;
    let list = bytes
        .split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(list)
        .split(',')
        .filter(|d| !d.is_empty())
        .map(norm)
        .collect())
}

/// hack/qemu's newest extracted kernel: `vmlinux`, and `wanted` with their
/// dependencies in the order of `modules/order` (dependencies first).
fn from_cache(qemu_dir: &Path, wanted: &[&str]) -> Result<GuestKernel, String> {
    let kdir = qemu_dir.join("kernel");
    let dir = first_match(&kdir, |_| true)
        .filter(|d| d.join("vmlinux").exists() && d.join("modules/order").exists())
        .ok_or_else(|| format!("no extracted kernel under {}", kdir.display()))?;
    let order = std::fs::read_to_string(dir.join("modules/order"))
        .map_err(|e| format!("read {}/modules/order: {e}", dir.display()))?;
    let files: Vec<(String, PathBuf)> = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|f| {
            let name = norm(f.trim_end_matches(".ko"));
            (name, dir.join("modules").join(f))
        })
        .collect();
    let mut need: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = wanted.iter().map(|m| norm(m)).collect();
    while let Some(m) = todo.pop() {
        if !need.insert(m.clone()) {
            continue;
        }
        let (_, path) = files.iter().find(|(n, _)| *n == m).ok_or_else(|| {
            format!(
                "{} has no module {m} (hack/qemu's QEMU_MODULES must include it)",
                dir.display()
            )
        })?;
        todo.extend(depends(path)?);
    }
    Ok(GuestKernel {
        image: dir.join("vmlinux"),
        modules: files
            .into_iter()
            .filter(|(n, _)| need.contains(n))
            .map(|(_, p)| p)
            .collect(),
        source: dir.display().to_string(),
    })
}

pub fn sh(script: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-ec", script])
        .output()
        .map_err(|e| format!("sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "failed: {script}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unpacks the bzImage and, one pass per level of dependencies, `wanted`
/// and what they need (not all 300 MB of modules); compressed modules are
/// unpacked with xz/zstd. A module the deb lacks is taken as built in.
fn from_deb(deb: &Path, scratch: &Path, wanted: &[&str]) -> Result<GuestKernel, String> {
    if !have("dpkg-deb") {
        return Err("dpkg-deb not installed".into());
    }
    let k = scratch.join("k");
    let mods = scratch.join("ko");
    let unpack = |patterns: &str| {
        sh(&format!(
            "mkdir -p '{k}' '{m}' && dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{k}' --wildcards {patterns}",
            k = k.display(),
            m = mods.display(),
            deb = deb.display()
        ))
    };
    unpack("'./boot/vmlinuz-*'")?;
    let image = first_match(&k.join("boot"), |n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| format!("no vmlinuz in {}", deb.display()))?;
    let mut deps: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut level: Vec<String> = wanted.iter().map(|m| norm(m)).collect();
    while !level.is_empty() {
        level.retain(|m| seen.insert(m.clone()));
        let globs: Vec<String> = level.iter().map(|m| m.replace('_', "[_-]")).collect();
        let patterns: String = globs
            .iter()
            .map(|g| format!(" '*/{g}.ko' '*/{g}.ko.xz' '*/{g}.ko.zst'"))
            .collect();
        // tar fails on patterns that match nothing (built-in modules): fine.
        let _ = unpack(&patterns);
        let mut next = Vec::new();
        for (m, g) in level.iter().zip(&globs) {
            let ko = mods.join(format!("{m}.ko"));
            sh(&format!(
                "f=$(find '{k}/lib' -name '{g}.ko*' | head -n1); [ -n \"$f\" ] || exit 0; \
                 case $f in *.xz) xz -dc \"$f\";; *.zst) zstd -qdc \"$f\";; *) cat \"$f\";; esac > '{ko}'",
                k = k.display(),
                ko = ko.display()
            ))?;
            if ko.exists() {
                let d = depends(&ko)?;
                next.extend(d.iter().cloned());
                deps.push((m.clone(), d));
            }
        }
        level = next;
    }
    // Dependencies first (depth-first post-order; a cycle is cut).
    fn visit(
        m: &str,
        deps: &[(String, Vec<String>)],
        out: &mut Vec<String>,
        chain: &mut Vec<String>,
    ) {
        let Some((_, d)) = deps.iter().find(|(n, _)| n == m) else {
            return;
        };
        if out.iter().any(|o| o == m) || chain.iter().any(|c| c == m) {
            return;
        }
        chain.push(m.to_string());
        for x in d {
            visit(x, deps, out, chain);
        }
        chain.pop();
        out.push(m.to_string());
    }
    let mut order = Vec::new();
    for m in wanted {
        visit(&norm(m), &deps, &mut order, &mut Vec::new());
    }
    Ok(GuestKernel {
        image,
        modules: order.iter().map(|m| mods.join(format!("{m}.ko"))).collect(),
        source: deb.display().to_string(),
    })
}

/// Builds `<dir>/initrd.gz`: busybox, the kernel's modules, the `programs`
/// (host path, name under `/`) with their libraries, and an `/init` that
/// loads the modules, brings up lo, runs `run` and prints `GUEST-EXIT <rc>`.
pub fn initramfs(
    dir: &Path,
    kernel: &GuestKernel,
    busybox: &Path,
    programs: &[(PathBuf, &str)],
    run: &str,
) -> Result<PathBuf, String> {
    let root = dir.join("root");
    let r = root.display();
    let mut script = format!(
        "rm -rf {r}; mkdir -p {r}/bin {r}/modules {r}/proc {r}/sys {r}/dev {r}/tmp {r}/lib/x86_64-linux-gnu {r}/lib64\n\
         cp '{bb}' {r}/bin/busybox\n",
        bb = busybox.display(),
    );
    for (src, name) in programs {
        if !src.exists() {
            return Err(format!("{} not built", src.display()));
        }
        script += &format!(
            "cp '{src}' {r}/{name}\n\
             for l in $(ldd '{src}' | grep -o '/[^ ]*'); do mkdir -p \"{r}$(dirname \"$l\")\"; cp -L \"$l\" {r}$l; done\n",
            src = src.display(),
        );
    }
    let mut insmods = String::new();
    for m in &kernel.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad module file name")?;
        script += &format!("cp '{}' {r}/modules/{name}\n", m.display());
        insmods += &format!("insmod /modules/{name}\n");
    }
    sh(&script)?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {insmods}ip link set lo up\n{run}\necho GUEST-EXIT $?\npoweroff -f\n"
    );
    std::fs::write(root.join("init"), init).map_err(|e| format!("write init: {e}"))?;
    let initrd = dir.join("initrd.gz");
    sh(&format!(
        "chmod 755 {r}/init && cd {r} && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > '{}'",
        initrd.display()
    ))?;
    Ok(initrd)
}

/// The accelerator: `QEMU_ACCEL` (kvm|tcg), else the newest probe result
/// hack/qemu cached (`$QEMU_DIR/accel-*`, first line), else tcg. Machines
/// whose /dev/kvm cannot boot a stock kernel are cached as tcg.
pub fn accel() -> &'static str {
    let pick = |s: &str| if s.trim() == "kvm" { "kvm" } else { "tcg" };
    if let Ok(a) = std::env::var("QEMU_ACCEL") {
        if !a.is_empty() {
            return pick(&a);
        }
    }
    let newest = std::fs::read_dir(qemu_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("accel-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    newest
        .and_then(|(_, p)| std::fs::read_to_string(p).ok())
        .map(|s| pick(s.lines().next().unwrap_or("")))
        .unwrap_or("tcg")
}

/// QEMU for a test guest (q35 with an emulated IOMMU so vfio-pci works,
/// console on stdout); the caller adds its devices and spawns it.
pub fn qemu_command(kernel: &GuestKernel, initrd: &Path, accel: &str) -> Command {
    let cpu = if accel == "kvm" { "host" } else { "max" };
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "q35", "-accel", accel, "-cpu", cpu, "-m", "512"])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-device", "intel-iommu"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 intel_iommu=on panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}
