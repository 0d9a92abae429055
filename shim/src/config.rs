//! Node configuration, `/etc/heteropod/config.toml` (or the runtime option `ConfigPath`).
//!
//! A missing file means defaults. Unknown keys are rejected so a typo never
//! silently changes placement.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/heteropod/config.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: Option<String>,
    pub runc: RuncConfig,
    pub dpu: DpuConfig,
    pub placement: PlacementPolicy,
    pub fastpath: FastpathConfig,
    pub host: HostConfig,
}

/// The host's own cores, for nodes that set cores aside for their DPU (an
/// emulated DPU is a cpuset of the host), see `host_cpus`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Cpuset list (`"0"`, `"0-5,8"`) for CPU-placed containers that name no
    /// CPUs themselves, the shim and its CPU-side relays; empty: not restricted.
    pub cpus: String,
}

/// Where the hetero-socket library (`libheterosocket.so`) is installed when
/// `[fastpath] library` is not set.
pub const DEFAULT_FASTPATH_LIBRARY: &str = "/usr/local/lib/heteropod/libheterosocket.so";

/// The fast path: `libheterosocket.so` preloaded into the CPU containers of
/// Pods that ask for it (`heteropod.io/fastpath`), see `fastpath`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FastpathConfig {
    /// Whether Pods may have it at all; `false` ignores the annotation (logged).
    pub allow: bool,
    /// For Pods without the annotation.
    pub default: bool,
    /// The library on this node (absolute); missing: the spec is left alone (logged).
    pub library: String,
}

impl Default for FastpathConfig {
    fn default() -> Self {
        Self {
            allow: true,
            default: false,
            library: DEFAULT_FASTPATH_LIBRARY.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuncConfig {
    /// OCI runtime binary, used when the runtime options name none.
    pub binary: String,
    /// runc state root, used when the runtime options name none.
    pub root: String,
    pub systemd_cgroup: bool,
}

impl Default for RuncConfig {
    fn default() -> Self {
        Self {
            binary: "runc".into(),
            root: "/run/heteropod/runc".into(),
            systemd_cgroup: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpuConfig {
    /// Whether a DPU is attached to this node at all.
    pub enabled: bool,
    /// dpu-proxy endpoint, e.g. `unix:///run/heteropod/dpu-proxy.sock`.
    pub endpoint: String,
    /// The node key (0600, root's) a `tcp://` or `vsock://` agent wants its
    /// clients to hold; unused for Unix sockets (the agent checks our uid).
    pub key_file: String,
    pub cores: u32,
    pub memory_mb: u64,
    /// The CPU-side HeteroNet relay binary (`heteronet`); empty: no relay, the
    /// DPU half of a Pod network is then isolated.
    pub relay: String,
    /// How long an unreachable agent is waited for before its processes are
    /// reported exited (status 255, the reason in the container's log).
    pub lost_after_secs: u64,
    /// Where DPU containers and Pod network halves that could not be removed
    /// (agent unreachable) are recorded, to be removed once it answers again.
    pub orphans_dir: String,
    /// What joins the two relays of a split Pod: a shared memory file on
    /// this host (`shm`, the emulated DPU) or a slot of the ivshmem BAR of a
    /// DPU in a QEMU guest (`ivshmem`).
    pub link: LinkKind,
    /// `link = "ivshmem"`: the heteropod-ivshmem-server socket the CPU relays
    /// join as peers. Slot leases live in `ivshmem-slots/` beside it.
    pub ivshmem_socket: String,
    /// `link = "ivshmem"`: how many equal windows the BAR is cut into (one
    /// split Pod each); must match the server's vectors (two per slot).
    pub ivshmem_slots: u16,
    /// `link = "ivshmem"`: the BAR as the DPU side maps it, `pci:<bdf>/<bar>`.
    pub guest_bar: String,
}

/// What a split Pod's relays share.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A region file in /dev/shm and a rendezvous socket (one kernel).
    #[default]
    Shm,
    /// A slot of a QEMU ivshmem-doorbell BAR (the DPU in a guest).
    Ivshmem,
}

impl Default for DpuConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: String::new(),
            key_file: String::new(),
            cores: 0,
            memory_mb: 0,
            relay: "heteronet".into(),
            lost_after_secs: 10,
            orphans_dir: "/run/heteropod/dpu-orphans".into(),
            link: LinkKind::Shm,
            ivshmem_socket: "/run/heteropod/qemu/ivshmem.sock".into(),
            ivshmem_slots: 8,
            guest_bar: "pci:0000:00:04.0/2".into(),
        }
    }
}

impl DpuConfig {
    /// The node key file, if the config names one.
    pub fn key_file(&self) -> Option<&std::path::Path> {
        Some(std::path::Path::new(&self.key_file)).filter(|_| !self.key_file.is_empty())
    }

    /// A network endpoint needs the node key: say so at load, not at the
    /// first Pod.
    fn validate_key(&self) -> std::result::Result<(), String> {
        if !self.key_file.is_empty() && !self.key_file.starts_with('/') {
            return Err(format!("dpu.key_file {:?} must be absolute", self.key_file));
        }
        let network = ["tcp://", "vsock://"]
            .iter()
            .any(|s| self.endpoint.starts_with(s));
        if self.enabled && network && self.key_file.is_empty() {
            return Err(format!(
                "dpu.endpoint {:?} is a network endpoint: the agent serves only clients holding \
                 the node key, set dpu.key_file",
                self.endpoint
            ));
        }
        Ok(())
    }

    /// The `link = "ivshmem"` keys, checked before any Pod needs them.
    fn validate_ivshmem(&self) -> std::result::Result<(), String> {
        if !self.ivshmem_socket.starts_with('/') {
            return Err(format!(
                "dpu.ivshmem_socket {:?} must be absolute",
                self.ivshmem_socket
            ));
        }
        if !(1..=128).contains(&self.ivshmem_slots) {
            return Err(format!(
                "dpu.ivshmem_slots {} must be 1..=128",
                self.ivshmem_slots
            ));
        }
        let bar_ok = self
            .guest_bar
            .strip_prefix("pci:")
            .and_then(|rest| rest.rsplit_once('/'))
            .is_some_and(|(bdf, bar)| {
                bdf.len() == 12 && !bdf.contains('@') && bar.len() == 1 && bar.as_bytes()[0] <= b'5'
            });
        if !bar_ok {
            return Err(format!(
                "dpu.guest_bar {:?}: want pci:<dddd:bb:dd.f>/<bar>, e.g. pci:0000:00:04.0/2",
                self.guest_bar
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementPolicy {
    /// Container-name patterns (`*` wildcard) of known infrastructure containers.
    pub infra_names: Vec<String>,
    /// Image-reference patterns (`*` wildcard) of known infrastructure containers.
    pub infra_images: Vec<String>,
    /// Where containers go that neither annotations nor the patterns place.
    pub default: PlacementDefault,
    /// A container the node policy sends to a DPU without room for it.
    pub when_dpu_full: WhenDpuFull,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PlacementDefault {
    /// Only what annotations or the patterns name goes to the DPU.
    #[default]
    Cpu,
    /// Every container but the sandbox (a force-offload node).
    Dpu,
    /// Infrastructure containers go when the planner finds room.
    Auto,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenDpuFull {
    /// Run it on the CPU instead (logged).
    #[default]
    Cpu,
    /// Fail its CreateContainer with a clear error (a strict node).
    Error,
}

impl Config {
    /// Parses a config document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: origin.to_string(),
            message: e.message().to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Loads `path`, or the default path when `None`. An absent file gives defaults.
    pub fn load(path: Option<&str>) -> Result<Config> {
        let path = path
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_CONFIG_PATH);
        match std::fs::read_to_string(Path::new(path)) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::Config {
                path: path.to_string(),
                message: e.to_string(),
            }),
        }
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: origin.to_string(),
            message,
        };
        if let Some(level) = &self.log_level {
            if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
                return Err(bad(format!(
                    "log_level {level:?} is not one of error, warn, info, debug, trace"
                )));
            }
        }
        if self.runc.binary.is_empty() {
            return Err(bad("runc.binary must not be empty".into()));
        }
        if !self.dpu.orphans_dir.starts_with('/') {
            return Err(bad(format!(
                "dpu.orphans_dir {:?} must be absolute",
                self.dpu.orphans_dir
            )));
        }
        if self.dpu.link == LinkKind::Ivshmem {
            self.dpu.validate_ivshmem().map_err(bad)?;
        }
        self.dpu.validate_key().map_err(bad)?;
        if !self.fastpath.library.starts_with('/') {
            return Err(bad(format!(
                "fastpath.library {:?} must be absolute",
                self.fastpath.library
            )));
        }
        if self.fastpath.default && !self.fastpath.allow {
            return Err(bad(
                "fastpath.default = true contradicts fastpath.allow = false".into(),
            ));
        }
        if !self.host.cpus.trim().is_empty() {
            crate::host_cpus::parse(&self.host.cpus).map_err(|e| bad(format!("host.cpus: {e}")))?;
        }
        if !self.runc.root.starts_with('/') {
            return Err(bad(format!(
                "runc.root {:?} must be absolute",
                self.runc.root
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_defaults() {
        let sut = Config::parse("", "test").unwrap();
        assert_eq!(sut, Config::default());
        assert_eq!(sut.runc.binary, "runc");
        assert!(!sut.dpu.enabled);
    }

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let sut = Config::load(Some(path.to_str().unwrap())).unwrap();
        assert_eq!(sut, Config::default());
    }

    #[test]
    fn full_document_is_read() {
        let text = r#"
            log_level = "debug"
            [runc]
            binary = "/usr/sbin/runc"
            root = "/run/x"
            systemd_cgroup = true
            [dpu]
            enabled = true
            endpoint = "unix:///run/heteropod/dpu.sock"
            cores = 2
            memory_mb = 1024
            [placement]
            infra_names = ["envoy", "istio-*"]
            infra_images = ["*/fluent-bit:*"]
        "#;
        let sut = Config::parse(text, "test").unwrap();
        assert_eq!(sut.runc.binary, "/usr/sbin/runc");
        assert!(sut.runc.systemd_cgroup);
        assert_eq!(sut.dpu.cores, 2);
        assert_eq!(sut.placement.infra_names, ["envoy", "istio-*"]);
    }

    #[test]
    fn unknown_key_is_a_clear_error() {
        let err = Config::parse("[runc]\nbinry = \"runc\"\n", "/etc/x.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/x.toml"), "{text}");
        assert!(text.contains("binry"), "{text}");
    }

    #[test]
    fn malformed_toml_is_a_clear_error() {
        let err = Config::parse("[runc\n", "cfg").unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::parse("log_level = \"loud\"", "cfg").is_err());
        assert!(Config::parse("[runc]\nroot = \"relative\"", "cfg").is_err());
        assert!(Config::parse("[runc]\nbinary = \"\"", "cfg").is_err());
        assert!(Config::parse("[dpu]\ncores = \"two\"", "cfg").is_err());
    }

    #[test]
    fn ivshmem_link_keys_are_read() {
        let text = r#"
            [dpu]
            link = "ivshmem"
            ivshmem_socket = "/run/x/qemu/ivshmem.sock"
            ivshmem_slots = 4
            guest_bar = "pci:0000:00:05.0/2"
        "#;
        let sut = Config::parse(text, "test").unwrap();
        assert_eq!(sut.dpu.link, LinkKind::Ivshmem);
        assert_eq!(sut.dpu.ivshmem_socket, "/run/x/qemu/ivshmem.sock");
        assert_eq!(sut.dpu.ivshmem_slots, 4);
        assert_eq!(sut.dpu.guest_bar, "pci:0000:00:05.0/2");
        assert_eq!(Config::default().dpu.link, LinkKind::Shm);
    }

    #[test]
    fn bad_ivshmem_link_keys_are_rejected() {
        for bad in [
            "link = \"bar\"",
            "link = \"ivshmem\"\nivshmem_socket = \"rel.sock\"",
            "link = \"ivshmem\"\nivshmem_slots = 0",
            "link = \"ivshmem\"\nivshmem_slots = 1000",
            "link = \"ivshmem\"\nguest_bar = \"shm:/x\"",
            "link = \"ivshmem\"\nguest_bar = \"pci:0000:00:04.0/2@1/8\"",
            "link = \"ivshmem\"\nguest_bar = \"pci:0000:00:04.0/7\"",
        ] {
            let err = Config::parse(&format!("[dpu]\n{bad}\n"), "cfg");
            assert!(err.is_err(), "{bad} accepted");
        }
        // Unused keys of another link kind are not checked.
        assert!(Config::parse("[dpu]\nguest_bar = \"x\"\n", "cfg").is_ok());
    }

    #[test]
    fn network_endpoints_need_the_node_key() {
        let tcp = "[dpu]\nenabled = true\nendpoint = \"tcp://127.0.0.1:10020\"\n";
        let err = Config::parse(tcp, "cfg").unwrap_err().to_string();
        assert!(err.contains("key_file"), "{err}");
        let sut = Config::parse(
            &format!("{tcp}key_file = \"/etc/heteropod/dpu.key\"\n"),
            "cfg",
        )
        .unwrap();
        assert_eq!(
            sut.dpu.key_file(),
            Some(std::path::Path::new("/etc/heteropod/dpu.key"))
        );
        assert!(Config::parse(&format!("{tcp}key_file = \"rel.key\"\n"), "cfg").is_err());
        // Unix sockets check the peer's uid instead.
        let unix = "[dpu]\nenabled = true\nendpoint = \"unix:///run/a.sock\"\n";
        assert_eq!(Config::parse(unix, "cfg").unwrap().dpu.key_file(), None);
    }

    #[test]
    fn fastpath_keys_are_read_and_checked() {
        let sut = Config::default().fastpath;
        assert!(sut.allow && !sut.default);
        assert_eq!(sut.library, DEFAULT_FASTPATH_LIBRARY);
        let text = "[fastpath]\nallow = false\nlibrary = \"/opt/hp/libheterosocket.so\"\n";
        let sut = Config::parse(text, "cfg").unwrap().fastpath;
        assert!(!sut.allow);
        assert_eq!(sut.library, "/opt/hp/libheterosocket.so");
        assert!(
            Config::parse("[fastpath]\ndefault = true\n", "cfg")
                .unwrap()
                .fastpath
                .default
        );
        for bad in [
            "library = \"lib.so\"",
            "allow = false\ndefault = true",
            "enabled = true",
        ] {
            let err = Config::parse(&format!("[fastpath]\n{bad}\n"), "cfg");
            assert!(err.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn host_cpus_are_read_and_checked() {
        assert_eq!(Config::default().host.cpus, "");
        let sut = Config::parse("[host]\ncpus = \"0-2,5\"\n", "cfg").unwrap();
        assert_eq!(sut.host.cpus, "0-2,5");
        for bad in ["cpus = \"one\"", "cpus = \"3-1\"", "cpu = \"0\""] {
            let err = Config::parse(&format!("[host]\n{bad}\n"), "cfg");
            assert!(err.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn unreadable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let err = Config::load(Some(dir.path().to_str().unwrap())).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }
}
