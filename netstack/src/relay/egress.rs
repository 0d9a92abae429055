//! Capturing outbound TCP (and forwarded UDP resolvers) of the DPU half with
//! iptables `nat OUTPUT REDIRECT`.
//!
//! All rules live in one chain of the half's own netns, `HETERONET`, jumped to
//! from `OUTPUT`. The relay marks its own sockets with [`RELAY_MARK`] (SO_MARK)
//! so its connects are never captured; destinations of local type (loopback,
//! the Pod IP) are never captured either. A restarted relay first removes a
//! stale chain left by a killed predecessor; [`EgressRules`] removes the chain
//! when dropped.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::process::Command;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use super::error::{Error, Result};

/// fwmark carried by every socket the relay opens when egress is captured.
pub const RELAY_MARK: u32 = 0x4e54_0001;
const CHAIN: &str = "HETERONET";

/// One UDP destination whose datagrams go to a local relay port.
#[derive(Debug, Clone, Copy)]
pub struct UdpRedirect {
    pub dest: SocketAddrV4,
    pub to_port: u16,
}

/// The installed rules; removed on drop.
#[derive(Debug)]
pub struct EgressRules {
    installed: bool,
}

/// Runs `iptables -w 5 ARGS`; a failure carries iptables' own message.
pub(super) fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| Error::io("run iptables", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Iptables {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Removes the chain and the jump to it; absent rules are not an error.
pub fn remove_rules() {
    while iptables(&["-t", "nat", "-D", "OUTPUT", "-j", CHAIN]).is_ok() {}
    let _ = iptables(&["-t", "nat", "-F", CHAIN]);
    let _ = iptables(&["-t", "nat", "-X", CHAIN]);
}

impl EgressRules {
    /// Installs the redirect rules: all non-local TCP to `tcp_port` (if given)
    /// and each UDP redirect.
    pub fn install(tcp_port: Option<u16>, udp: &[UdpRedirect]) -> Result<Self> {
        remove_rules();
        iptables(&["-t", "nat", "-N", CHAIN])?;
        let rules = Self { installed: true };
        let mark = format!("{RELAY_MARK:#x}");
        iptables(&[
            "-t", "nat", "-A", CHAIN, "-m", "mark", "--mark", &mark, "-j", "RETURN",
        ])?;
        iptables(&[
            "-t",
            "nat",
            "-A",
            CHAIN,
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "RETURN",
        ])?;
        for r in udp {
            let (ip, dport, to) = (
                r.dest.ip().to_string(),
                r.dest.port().to_string(),
                r.to_port.to_string(),
            );
            iptables(&[
                "-t",
                "nat",
                "-A",
                CHAIN,
                "-p",
                "udp",
                "-d",
                &ip,
                "--dport",
                &dport,
                "-j",
                "REDIRECT",
                "--to-ports",
                &to,
            ])?;
        }
        if let Some(p) = tcp_port {
            let to = p.to_string();
            iptables(&[
                "-t",
                "nat",
                "-A",
                CHAIN,
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &to,
            ])?;
        }
        // First in OUTPUT, also when a restarted relay re-installs it after the
        // Pod's own rules: its delivery rules must see the relay's sockets first.
        iptables(&["-t", "nat", "-I", "OUTPUT", "1", "-j", CHAIN])?;
        Ok(rules)
    }
}

impl Drop for EgressRules {
    fn drop(&mut self) {
        if self.installed {
            remove_rules();
        }
    }
}

/// Redirects connections marked `mark` to local `port` (a sidecar's capture
/// port): first in the relay's chain, so no capture rule sees them first.
/// Removed with the chain.
pub fn add_delivery_rule(port: u16, mark: u32) -> Result<()> {
    let (port, mark) = (port.to_string(), format!("{mark:#x}"));
    iptables(&[
        "-t",
        "nat",
        "-I",
        CHAIN,
        "1",
        "-p",
        "tcp",
        "-m",
        "mark",
        "--mark",
        &mark,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ])
}

/// Sets `mark` on a socket (the relay's own mark, or a delivery mark).
pub fn set_mark<F: AsFd>(sock: &F, mark: u32) -> Result<()> {
    setsockopt(sock, sockopt::Mark, &mark).map_err(|source| Error::SockOpt {
        context: "SO_MARK",
        source,
    })
}

/// Marks a socket as the relay's own so the capture rules skip it.
pub fn mark_socket<F: AsFd>(sock: &F) -> Result<()> {
    set_mark(sock, RELAY_MARK)
}

/// The destination a redirected connection was originally sent to.
pub fn original_dst<F: AsFd>(sock: &F) -> Result<SocketAddr> {
    let sin = getsockopt(sock, sockopt::OriginalDst).map_err(|source| Error::SockOpt {
        context: "SO_ORIGINAL_DST",
        source,
    })?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(sin.sin_port),
    )))
}
