//! Where the suite finds containerd, which runtime handler it tests and which image it runs.

use std::path::PathBuf;

/// Default CRI socket of the private containerd started by `hack/up.sh`.
pub const DEFAULT_ENDPOINT: &str = "/run/heteropod/containerd.sock";
/// Default runtime handler under test.
pub const DEFAULT_HANDLER: &str = "heteropod";
/// Busybox image imported by `hack/up.sh` (Debian's dynamic busybox, applets as hard links).
pub const DEFAULT_IMAGE: &str = "localhost/heteropod/busybox:1.0";
/// Label put on every Pod the suite creates, so a sweep can find leftovers.
pub const SUITE_LABEL: &str = "heteropod.io/conformance";

/// Test settings read from the environment.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// CRI Unix socket (`CONTAINERD_ADDRESS`, a `unix://` prefix is accepted).
    pub endpoint: PathBuf,
    /// Runtime handler (`HETEROPOD_HANDLER`).
    pub handler: String,
    /// Image for test containers (`HETEROPOD_TEST_IMAGE`).
    pub image: String,
}

impl TestEnv {
    /// Reads the settings, falling back to the defaults above.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("CONTAINERD_ADDRESS")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint
            .strip_prefix("unix://")
            .unwrap_or(&endpoint)
            .to_string();
        let handler = std::env::var("HETEROPOD_HANDLER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_HANDLER.to_string());
        let image = std::env::var("HETEROPOD_TEST_IMAGE")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        Self {
            endpoint: PathBuf::from(endpoint),
            handler,
            image,
        }
    }
}

/// The suite runs against a node that sends every container but the sandbox
/// to the DPU (`HETEROPOD_FORCE_OFFLOAD=1`, set by hack/run-conformance.sh).
/// Specs that need a namespace shared across the PUs must then fail with
/// [`SPANS_ERROR`] instead of passing.
pub fn force_offload() -> bool {
    std::env::var("HETEROPOD_FORCE_OFFLOAD").is_ok_and(|v| v == "1")
}

/// The documented error for a DPU container that would share a PID namespace.
pub const SPANS_ERROR: &str = "cannot span the CPU and the DPU";

/// Under [`force_offload`], checks that `result` is the documented error and
/// says so; `Ok(None)` then means the test is done. Otherwise passes it on.
pub fn expect_spans_error<T>(test: &str, result: anyhow::Result<T>) -> anyhow::Result<Option<T>> {
    if !force_offload() {
        return result.map(Some);
    }
    match result {
        Err(e) if format!("{e:#}").contains(SPANS_ERROR) => {
            eprintln!("{test}: refused as documented under force-offload: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e.context(format!("expected the error {SPANS_ERROR:?}"))),
        Ok(_) => {
            anyhow::bail!("{test}: force-offload accepted a container sharing a PID namespace")
        }
    }
}
