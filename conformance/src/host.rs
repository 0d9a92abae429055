//! Host /proc scans: which processes belong to a Pod, and how much memory they hold.

use std::fs;

/// A host process found by [`processes`].
#[derive(Debug, Clone)]
pub struct HostProcess {
    /// Process id.
    pub pid: u32,
    /// Command line arguments.
    pub args: Vec<String>,
    /// Resident set size in KiB (`VmRSS`), 0 when unreadable.
    pub rss_kib: u64,
}

impl HostProcess {
    /// The program name (file name of argv[0]).
    pub fn program(&self) -> &str {
        self.args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or_default()
    }

    /// Value of a `-flag value` pair on the command line (shims take `-id <sandbox>`).
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let pos = self.args.iter().position(|a| a == flag)?;
        self.args.get(pos + 1).map(String::as_str)
    }
}

/// Every process whose command line matches `pred`. Processes that exit during the
/// scan are skipped.
pub fn processes(pred: impl Fn(&[String]) -> bool) -> Vec<HostProcess> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.is_empty() || !pred(&args) {
            continue;
        }
        let rss_kib = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| parse_vm_rss(&s))
            .unwrap_or(0);
        out.push(HostProcess { pid, args, rss_kib });
    }
    out
}

/// Shim processes (any `containerd-shim-*`) serving sandbox `pod_id`.
pub fn shims_of(pod_id: &str) -> Vec<HostProcess> {
    processes(|args| {
        let prog = args[0].rsplit('/').next().unwrap_or(&args[0]);
        prog.starts_with("containerd-shim") && args.iter().any(|a| a == pod_id)
    })
}

/// Mount points in the host mount namespace whose path or source mentions `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// Cgroup directories named `id` (as `/sys/fs/cgroup/<controller>/<parent>/<id>` for
/// cgroup v1 or `/sys/fs/cgroup/<parent>/<id>` for v2).
pub fn cgroups_named(id: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if e.file_name() == id {
                out.push(path);
            } else if depth < 2 {
                dirs.push((path, depth + 1));
            }
        }
    }
    out
}

/// `VmRSS` in KiB from a /proc/PID/status text.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Effective capability mask (`CapEff`) from a /proc/PID/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tsh\nVmRSS:\t    1234 kB\nCapEff:\t00000000a80425fb\n";
        assert_eq!(parse_vm_rss(status), Some(1234));
        assert_eq!(parse_cap_eff(status), Some(0xa80425fb));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn finds_own_process_with_rss() {
        let me = std::process::id();
        let found = processes(|_| true);
        let sut = found.iter().find(|p| p.pid == me).expect("own process");
        assert!(sut.rss_kib > 0);
        assert!(!sut.program().is_empty());
    }

    #[test]
    fn flag_reads_value_after_flag() {
        let sut = HostProcess {
            pid: 1,
            args: vec!["shim".into(), "-id".into(), "abc".into()],
            rss_kib: 0,
        };
        assert_eq!(sut.flag("-id"), Some("abc"));
        assert_eq!(sut.flag("-x"), None);
    }
}
