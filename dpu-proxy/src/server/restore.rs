//! Reload after an agent restart: containers still running are kept and
//! watched; processes that died meanwhile are reported exited with a reason.
use std::sync::Arc;

use super::{
    container::Container,
    process::{now_nanos, proc_start_time, Exit, Process, ProcessRecord, Status},
    runtime::Runtime,
    state,
};

const LOST: &str = "exited while the DPU agent was down; exit status unknown";

fn alive(r: &ProcessRecord) -> bool {
    r.pid != 0 && r.exit.is_none() && proc_start_time(r.pid).is_some_and(|t| t == r.start_time)
}

impl Runtime {
    /// Loads every persisted container; call once at start-up.
    pub async fn restore(self: &Arc<Self>) {
        for rec in state::load_all(&self.containers_dir) {
            let runc = self.exec.state(&rec.id).await.ok().flatten();
            let init_alive =
                alive(&rec.init) && runc.as_ref().is_some_and(|s| s.pid as u32 == rec.init.pid);
            let init = Process::from_record(rec.init.clone());
            match runc.as_ref().map(|s| s.status.as_str()) {
                Some("paused") if init_alive => init.set_status(Status::Paused),
                Some("running") if init_alive => init.set_status(Status::Running),
                _ => {}
            }
            let c = Container::new(
                &rec.id,
                rec.bundle.clone(),
                self.containers_dir.join(&rec.id),
                rec.reservation,
                rec.cri.clone(),
                init.clone(),
            );
            *c.oom_kills_seen.lock().unwrap_or_else(|e| e.into_inner()) = rec.oom_kills_seen;
            let mut execs = Vec::new();
            for e in &rec.execs {
                let p = Process::from_record(e.clone());
                // An exec registered but never started cannot start any more.
                if e.pid == 0 && e.exit.is_none() {
                    p.fail("registered before the DPU agent restarted; never started".into());
                }
                if c.add_exec(p.clone()).is_ok() {
                    execs.push((p, alive(e)));
                }
            }
            self.insert(c.clone());
            tracing::info!(container = %rec.id, alive = init_alive, "restored");
            for (p, is_alive) in std::iter::once((init, init_alive)).chain(execs) {
                if is_alive {
                    self.monitor(c.clone(), p, false);
                } else if p.exit().is_none() {
                    self.exited(
                        &c,
                        &p,
                        Exit {
                            status: 255,
                            at_nanos: now_nanos(),
                            reason: LOST.into(),
                        },
                    );
                }
            }
            c.save();
        }
    }
}
