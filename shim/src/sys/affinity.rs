//! A child that must not inherit the shim's CPU pinning (`[host] cpus`).
#![allow(unsafe_code)]

use nix::{
    sched::{sched_setaffinity, CpuSet},
    unistd::Pid,
};

/// Makes `cmd`'s child allow every CPU again before it runs. runc must not
/// carry the shim's pinning into a container: since Linux 6.2 an affinity set
/// with `sched_setaffinity` is kept (intersected) when a task moves into
/// another cpuset cgroup, so the container's own cpuset would not decide.
pub fn unpinned_child(cmd: &mut tokio::process::Command) {
    // Built before the fork: the child only makes the syscall.
    let mut all = CpuSet::new();
    for cpu in 0..CpuSet::count() {
        // Only fails past CpuSet::count().
        let _ = all.set(cpu);
    }
    // SAFETY: the closure runs in the forked child before exec; it only calls
    // sched_setaffinity (one async-signal-safe syscall) on a mask copied into
    // the closure, allocates nothing and takes no lock. A failure leaves the
    // inherited pinning, which is what the child would have had anyway.
    unsafe {
        cmd.pre_exec(move || {
            let _ = sched_setaffinity(Pid::from_raw(0), &all);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::sched_getaffinity;

    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|c| set.is_set(*c).unwrap_or(false))
            .collect()
    }

    /// `Cpus_allowed_list` of a child started by `cmd` (it prints its own).
    async fn child_allowed(mut cmd: tokio::process::Command) -> String {
        let out = cmd
            .args(["Cpus_allowed_list", "/proc/self/status"])
            .output()
            .await
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_child_started_unpinned_does_not_keep_its_parents_pinning() {
        // A thread of its own: pinning it leaves the other tests alone.
        std::thread::spawn(|| {
            let before = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let first = cpus(&before)[0];
            let mut one = CpuSet::new();
            one.set(first).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (pinned, sut) = rt.block_on(async {
                let pinned = child_allowed(tokio::process::Command::new("grep")).await;
                let mut cmd = tokio::process::Command::new("grep");
                unpinned_child(&mut cmd);
                (pinned, child_allowed(cmd).await)
            });
            let list = |text: &str| {
                text.split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(list(&pinned), first.to_string());
            if cpus(&before).len() > 1 {
                assert_ne!(list(&sut), list(&pinned), "{sut}");
            }
        })
        .join()
        .unwrap();
    }
}
