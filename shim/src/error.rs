//! The shim's error type and its mapping onto ttrpc status codes.

use containerd_shim_protos::ttrpc::{self, Code};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("failed precondition: {0}")]
    FailedPrecondition(String),

    #[error("already exists: {0}")]
    AlreadyExists(String),

    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// The DPU agent failed in a way with no better code (see `convert`).
    #[error("DPU agent: {0}")]
    Dpu(heteropod_dpu_proxy::Error),

    #[error("{0} is not supported")]
    Unimplemented(&'static str),

    /// The OCI runtime ran and reported a failure.
    #[error("OCI runtime {op} failed: {message}")]
    Runtime { op: &'static str, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("config {path}: {message}")]
    Config { path: String, message: String },

    #[error(transparent)]
    Shim(#[from] containerd_shim::Error),

    #[error("protobuf: {0}")]
    Protobuf(#[from] containerd_shim_protos::protobuf::Error),

    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    #[error("system call: {0}")]
    Nix(#[from] nix::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The ttrpc status code containerd sees (and converts to a gRPC/CRI code).
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::InvalidArgument(_) | Error::Config { .. } | Error::Json(_) => {
                Code::INVALID_ARGUMENT
            }
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Error::ResourceExhausted(_) => Code::RESOURCE_EXHAUSTED,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Shim(e) => match e {
                containerd_shim::Error::NotFoundError(_) => Code::NOT_FOUND,
                containerd_shim::Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
                containerd_shim::Error::FailedPreconditionError(_) => Code::FAILED_PRECONDITION,
                containerd_shim::Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
                containerd_shim::Error::Unimplemented(_) => Code::UNIMPLEMENTED,
                _ => Code::UNKNOWN,
            },
            Error::Runtime { .. }
            | Error::Io { .. }
            | Error::Protobuf(_)
            | Error::Nix(_)
            | Error::Dpu(_) => Code::UNKNOWN,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(sut: Error) -> (Code, String) {
        match ttrpc::Error::from(sut) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("expected an RPC status, got {other:?}"),
        }
    }

    #[test]
    fn typed_errors_map_to_their_ttrpc_codes() {
        let cases = [
            (Error::NotFound("c1".into()), Code::NOT_FOUND),
            (Error::InvalidArgument("x".into()), Code::INVALID_ARGUMENT),
            (
                Error::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::AlreadyExists("c1".into()), Code::ALREADY_EXISTS),
            (Error::DeadlineExceeded("x".into()), Code::DEADLINE_EXCEEDED),
            (Error::Unimplemented("Checkpoint"), Code::UNIMPLEMENTED),
        ];
        for (sut, code) in cases {
            assert_eq!(status_of(sut).0, code);
        }
    }

    #[test]
    fn config_errors_are_invalid_arguments_that_name_the_file() {
        let sut = Error::Config {
            path: "/etc/heteropod/config.toml".into(),
            message: "unknown field `bogus`".into(),
        };
        let (code, message) = status_of(sut);
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(message.contains("/etc/heteropod/config.toml"), "{message}");
        assert!(message.contains("bogus"), "{message}");
    }

    #[test]
    fn crate_errors_keep_their_meaning() {
        let sut = Error::Shim(containerd_shim::Error::NotFoundError("gone".into()));
        assert_eq!(status_of(sut).0, Code::NOT_FOUND);
    }

    #[test]
    fn runtime_failures_carry_the_runtime_message() {
        let sut = Error::Runtime {
            op: "create",
            message: "exec: \"nope\": executable file not found".into(),
        };
        let (code, message) = status_of(sut);
        assert_eq!(code, Code::UNKNOWN);
        assert!(message.contains("executable file not found"), "{message}");
    }
}
