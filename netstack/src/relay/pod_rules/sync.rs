//! The two relays' halves of carrying rules: the DPU half sends, the CPU half loads.

use std::sync::Arc;
use std::time::Duration;

use crate::relay::control::Control;
use crate::relay::counters::Counters;
use crate::MuxHandle;

/// DPU half: sends this half's nat rules whenever they change (nftables
/// notifications) and when the peer asks again.
pub async fn send(mux: MuxHandle, resend: Arc<tokio::sync::Notify>) {
    let watch = match super::RuleWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no ruleset notifications: this half's nat rules are carried at start and when the peer returns only");
            None
        }
    };
    let mut last: Option<Vec<String>> = None;
    loop {
        match tokio::task::spawn_blocking(super::dump).await {
            Ok(Ok(rules)) if last.as_ref() != Some(&rules) => {
                let n = rules.len();
                let msg = Control::PodRules {
                    rules: rules.clone(),
                };
                if mux.send_control(msg.encode()).await.is_ok() {
                    tracing::info!(rules = n, "sent this half's nat rules to the CPU half");
                    last = Some(rules);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reading this half's nat rules"),
            Err(e) => tracing::warn!(error = %e, "nat rules task"),
        }
        let changed = async {
            match &watch {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = changed => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "ruleset notifications ended");
                    return;
                }
                // A rule set is written as many changes: read it once they settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = resend.notified() => last = None,
        }
    }
}

/// CPU half: loads the latest rules the DPU half sent.
pub async fn load(
    mut rx: tokio::sync::watch::Receiver<Option<Vec<String>>>,
    carried: Arc<std::sync::Mutex<super::Carried>>,
    counters: Arc<Counters>,
) {
    while rx.changed().await.is_ok() {
        let Some(rules) = rx.borrow_and_update().clone() else {
            continue;
        };
        let carried = carried.clone();
        let counters = counters.clone();
        let _ = tokio::task::spawn_blocking(move || match super::translate(&rules) {
            Err(e) => {
                Counters::inc(&counters.control_errors);
                tracing::error!(error = %e, "not loading the DPU half's nat rules; the previous set stays");
            }
            Ok(t) => {
                let mut c = carried.lock().unwrap_or_else(|e| e.into_inner());
                match c.apply(&t) {
                    Ok(()) => tracing::info!(
                        rules = rules.iter().filter(|r| r.starts_with("-A")).count(),
                        "loaded the DPU half's nat rules"
                    ),
                    Err(e) => {
                        Counters::inc(&counters.control_errors);
                        tracing::error!(error = %e, "loading the DPU half's nat rules failed");
                    }
                }
            }
        })
        .await;
    }
}
