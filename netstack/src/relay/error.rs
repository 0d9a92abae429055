//! Errors of the relay.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open network namespace {path}: {source}")]
    NetnsOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enter network namespace {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("netlink sock_diag {0}: {1}")]
    Netlink(&'static str, nix::Error),
    #[error("malformed sock_diag reply: {0}")]
    SockDiagParse(&'static str),
    #[error("sock_diag request failed: errno {0}")]
    SockDiagErrno(i32),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("socket option {context}: {source}")]
    SockOpt {
        context: &'static str,
        source: nix::Error,
    },
    #[error("iptables {args}: {detail}")]
    Iptables { args: String, detail: String },
    #[error("bad control message from peer: {0}")]
    Control(#[from] serde_json::Error),
    #[error("control message too large ({0} bytes)")]
    ControlTooLarge(usize),
    #[error("capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("UDP frame of {0} bytes exceeds the limit")]
    UdpFrame(usize),
    #[error("unexpected fast-path message: {0}")]
    FastPath(&'static str),
    #[error("limit reached: {0}")]
    Limit(&'static str),
    #[error(transparent)]
    Net(#[from] crate::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
