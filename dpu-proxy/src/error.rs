//! Errors of the agent and of its client, and their ttrpc status codes.
use ttrpc::Code;

/// Result of agent and client operations.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("DPU full: {0}")]
    DpuFull(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The node's policy does not allow what the request asks for.
    #[error("not allowed by the DPU's policy: {0}")]
    PermissionDenied(String),
    /// The network handshake failed: wrong key, or not a HeteroPod agent.
    #[error("DPU agent at {address}: authentication failed: {reason}")]
    Unauthenticated { address: String, reason: String },
    #[error("DPU agent unreachable at {address}: {reason}")]
    DpuUnreachable { address: String, reason: String },
    #[error("DPU agent speaks API version {agent}, this client speaks {client}")]
    VersionMismatch { agent: u32, client: u32 },
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    #[error("runc {command} failed ({status}): {stderr}")]
    Runc {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An agent-side failure the client cannot classify further.
    #[error("DPU agent error ({code:?}): {message}")]
    Remote { code: Code, message: String },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The ttrpc status code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::DpuFull(_) => Code::RESOURCE_EXHAUSTED,
            Error::PermissionDenied(_) => Code::PERMISSION_DENIED,
            Error::Unauthenticated { .. } => Code::UNAUTHENTICATED,
            Error::FailedPrecondition(_) | Error::VersionMismatch { .. } => {
                Code::FAILED_PRECONDITION
            }
            Error::DpuUnreachable { .. } => Code::UNAVAILABLE,
            Error::Timeout(_) => Code::DEADLINE_EXCEEDED,
            Error::Runc { .. } | Error::Io { .. } => Code::INTERNAL,
            Error::Remote { code, .. } => *code,
        }
    }

    /// Decodes an error received from the agent (client side).
    pub fn from_ttrpc(address: &str, e: ttrpc::Error) -> Error {
        match e {
            ttrpc::Error::RpcStatus(s) => {
                let code = s.code();
                let message = s.message;
                match code {
                    Code::INVALID_ARGUMENT => Error::InvalidArgument(message),
                    Code::NOT_FOUND => Error::NotFound(message),
                    Code::ALREADY_EXISTS => Error::AlreadyExists(message),
                    Code::RESOURCE_EXHAUSTED => Error::DpuFull(message),
                    Code::FAILED_PRECONDITION => Error::FailedPrecondition(message),
                    Code::PERMISSION_DENIED => Error::PermissionDenied(message),
                    Code::DEADLINE_EXCEEDED => Error::Timeout(message),
                    Code::UNAVAILABLE => Error::DpuUnreachable {
                        address: address.to_string(),
                        reason: message,
                    },
                    code => Error::Remote { code, message },
                }
            }
            ttrpc::Error::Socket(reason) => Error::DpuUnreachable {
                address: address.to_string(),
                reason,
            },
            ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed | ttrpc::Error::Eof => {
                Error::DpuUnreachable {
                    address: address.to_string(),
                    reason: "connection closed".into(),
                }
            }
            // ttrpc reports a dead connection as free text, e.g. "reserve
            // channel capacity failed: channel closed".
            ttrpc::Error::Others(m) if is_connection_loss(&m) => Error::DpuUnreachable {
                address: address.to_string(),
                reason: m,
            },
            other => Error::Remote {
                code: Code::UNKNOWN,
                message: other.to_string(),
            },
        }
    }
}

fn is_connection_loss(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "closed",
        "broken pipe",
        "connection reset",
        "connection refused",
        "not connected",
    ]
    .iter()
    .any(|p| m.contains(p))
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_to_typed_errors() {
        for sut in [
            Error::NotFound("c1".into()),
            Error::InvalidArgument("bad".into()),
            Error::DpuFull("memory".into()),
            Error::AlreadyExists("c1".into()),
            Error::FailedPrecondition("running".into()),
            Error::PermissionDenied("hooks".into()),
        ] {
            let code = sut.code();
            let back = Error::from_ttrpc("unix:///x", sut.into());
            assert_eq!(back.code(), code);
        }
    }

    #[test]
    fn unavailable_and_closed_sockets_mean_dpu_unreachable() {
        let e = Error::from_ttrpc("tcp://127.0.0.1:1", ttrpc::Error::RemoteClosed);
        assert!(matches!(e, Error::DpuUnreachable { .. }));
        let e = Error::from_ttrpc(
            "unix:///x",
            ttrpc::Error::Others("reserve channel capacity failed: channel closed".into()),
        );
        assert!(matches!(e, Error::DpuUnreachable { .. }));
        let e = Error::from_ttrpc(
            "unix:///x",
            ttrpc::error::get_rpc_status(Code::UNAVAILABLE, "down"),
        );
        assert!(matches!(e, Error::DpuUnreachable { .. }));
    }
}
