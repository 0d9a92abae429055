//! The Pod's own `nat` rules, carried from the DPU half to the CPU half.
//!
//! A mesh's init container (istio-init, linkerd's proxy-init) writes capture
//! rules into the network namespace it runs in. Placed on the DPU, that is the
//! DPU half's; but every connection that matters passes the CPU half (all
//! egress of the DPU half leaves through it, inbound traffic arrives there),
//! so rules take effect for the whole Pod when they are in force there. The
//! DPU relay watches its half's ruleset (nftables change notifications, so an
//! idle Pod costs nothing) and sends its `nat` rules whenever they change;
//! the CPU relay checks them against a small grammar (capture rules only:
//! REDIRECT, RETURN, ACCEPT, jumps; matches on protocol, addresses, ports,
//! interfaces, owner, mark, address type) and loads them under its own chain
//! names (`HP-<chain>`, entered from PREROUTING and OUTPUT). A set with a rule
//! outside the grammar is refused whole, with the rule in the error, and the
//! previous set stays.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use nix::sys::socket::{
    bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;

use crate::relay::error::{Error, Result};

mod grammar;
mod sync;

pub use grammar::{translate, Refused, Translated};
pub use sync::{load, send};

/// Bounds on a carried set (the peer is not trusted).
pub const MAX_RULES: usize = 512;
pub const MAX_RULE_BYTES: usize = 512;
/// Prefix of the CPU half's chains holding carried rules.
pub(crate) const PREFIX: &str = "HP-";
/// The relay's own chain (egress capture), never carried.
pub(crate) const OWN_CHAIN: &str = "HETERONET";
/// iptables chain names are at most 28 characters.
pub(crate) const MAX_CHAIN: usize = 28;
/// nfnetlink multicast group of nftables ruleset changes.
const NFNLGRP_NFTABLES: u32 = 7;

/// The `nat` rules of this netns worth carrying, from `iptables-save -t nat`:
/// chain declarations (`:NAME`) and rules (`-A ...`), the relay's own left out.
pub fn dump() -> Result<Vec<String>> {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .map_err(|e| Error::io("run iptables-save", e))?;
    if !out.status.success() {
        return Err(Error::Iptables {
            args: "iptables-save -t nat".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(own_rules(&String::from_utf8_lossy(&out.stdout)))
}

pub(crate) fn own_rules(save: &str) -> Vec<String> {
    save.lines()
        .map(str::trim)
        .filter(|l| l.starts_with(':') || l.starts_with("-A "))
        .filter(|l| {
            let mut t = l.trim_start_matches(':').split_whitespace();
            let first = if l.starts_with("-A") {
                t.nth(1)
            } else {
                t.next()
            };
            let chain = first.unwrap_or_default();
            let jumps_own = l.ends_with(&format!("-j {OWN_CHAIN}"));
            chain != OWN_CHAIN && !chain.starts_with(PREFIX) && !jumps_own
        })
        // Declarations of built-in chains carry nothing.
        .filter(|l| !(l.starts_with(':') && builtin(chain_of_decl(l))))
        .map(|l| {
            // Packet counters in declarations differ run to run.
            if l.starts_with(':') {
                format!(":{}", chain_of_decl(l))
            } else {
                l.to_string()
            }
        })
        .collect()
}

fn chain_of_decl(l: &str) -> &str {
    l.trim_start_matches(':')
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

fn builtin(chain: &str) -> bool {
    matches!(chain, "PREROUTING" | "INPUT" | "OUTPUT" | "POSTROUTING")
}

/// `iptables -t nat ARGS`.
fn iptables(args: &[&str]) -> Result<()> {
    let mut all = vec!["-t", "nat"];
    all.extend_from_slice(args);
    crate::relay::egress::iptables(&all)
}

/// The carried rules loaded in this (the CPU) half; removed on drop.
#[derive(Debug, Default)]
pub struct Carried {
    chains: BTreeSet<String>,
}

impl Carried {
    /// Loads `t` in place of the previous set.
    pub fn apply(&mut self, t: &Translated) -> Result<()> {
        let mut child = Command::new("iptables-restore")
            .args(["-w", "5", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run iptables-restore", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(t.restore.as_bytes())
                .map_err(|e| Error::io("write to iptables-restore", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("iptables-restore", e))?;
        if !out.status.success() {
            return Err(Error::Iptables {
                args: "iptables-restore --noflush".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        for builtin in ["PREROUTING", "OUTPUT"] {
            let ours = format!("{PREFIX}{builtin}");
            if iptables(&["-C", builtin, "-j", &ours]).is_err() {
                iptables(&["-A", builtin, "-j", &ours])?;
            }
        }
        for gone in self.chains.difference(&t.chains) {
            let _ = iptables(&["-F", gone]);
            let _ = iptables(&["-X", gone]);
        }
        self.chains = t.chains.clone();
        Ok(())
    }

    fn remove(&mut self) {
        for builtin in ["PREROUTING", "OUTPUT"] {
            let ours = format!("{PREFIX}{builtin}");
            while iptables(&["-D", builtin, "-j", &ours]).is_ok() {}
        }
        for c in &self.chains {
            let _ = iptables(&["-F", c]);
        }
        for c in &self.chains {
            let _ = iptables(&["-X", c]);
        }
        self.chains.clear();
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        if !self.chains.is_empty() {
            self.remove();
        }
    }
}

/// Notifications of ruleset changes in this netns (nftables' multicast group;
/// iptables-nft writes through it). Needs CAP_NET_ADMIN.
pub struct RuleWatch {
    fd: AsyncFd<OwnedFd>,
}

impl RuleWatch {
    pub fn open() -> Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| Error::Netlink("socket", e))?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
        )
        .map_err(|e| Error::Netlink("bind nftables group", e))?;
        // Deprecated for types that may not own their fd; an OwnedFd does (as
        // notify's Doorbell).
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd).map_err(|e| Error::io("register netlink socket", e))?;
        Ok(Self { fd })
    }

    /// Waits for a change and drains what is queued.
    pub async fn changed(&self) -> Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| Error::io("netlink readable", e))?;
            let mut got = false;
            loop {
                match nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(_) => got = true,
                    // Overrun: changes were lost, which is still a change.
                    Err(nix::errno::Errno::ENOBUFS) => got = true,
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => return Err(Error::Netlink("recv", e)),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) const SAVE: &str = "# Generated by iptables-nft-save
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:HETERONET - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j HETERONET
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A HETERONET -m mark --mark 0x4e540001 -j RETURN
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -m comment --comment \"skip the proxy\" -m owner --gid-owner 1337 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    #[test]
    fn the_relays_own_chain_and_builtin_declarations_stay_behind() {
        let rules = own_rules(SAVE);
        assert!(rules.iter().all(|r| !r.contains("HETERONET")), "{rules:#?}");
        assert!(rules.contains(&":ISTIO_OUTPUT".to_string()));
        assert!(!rules.iter().any(|r| r.starts_with(":OUTPUT")));
        assert_eq!(rules.iter().filter(|r| r.starts_with("-A")).count(), 7);
    }
}
