//! The fast path: the hetero-socket library (`libheterosocket.so`, built by
//! `netstack/preload`) preloaded into a container, so its TCP connections to
//! listeners in the other half of a split Pod go over a shared-memory ring
//! instead of through the relay.
//!
//! The Pod asks (`heteropod.io/fastpath: "true"`, or the node's `[fastpath]
//! default`), the node decides (`[fastpath] allow`). Only containers placed on
//! the CPU get it: the library talks to the CPU relay's broker, and the DPU
//! half has no broker. The library is bind-mounted read-only at
//! [`MOUNT_POINT`] (a directory of its own at the root: no image or volume
//! uses it, and runc creates it before a read-only rootfs is remounted) and
//! appended to `LD_PRELOAD`. Statically linked programs ignore it and keep
//! using the relay; `HETEROSOCKET=off` in a container's environment turns it
//! into a pass-through.
//!
//! A library that cannot load stops every dynamically linked program of the
//! container, so the runc backend calls [`inject`] once the image is mounted,
//! and an image without a glibc loader and every shared object the library
//! needs ([`LIBRARY_NEEDS`]) is left alone, with a warning.
//! Not checked: the image's glibc being at least as new as the one the
//! library was built against.
//!
//! [`decide`] is pure; [`edit_spec`] edits a spec document; [`request`] and
//! [`inject`] do the I/O and never fail the container (the relay still
//! carries its connections).

use std::{
    collections::HashMap,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use serde_json::{json, Value};

use crate::{
    config::Config,
    error::{Error, Result},
    placement::{Placement, CONTAINER_NAME, CONTAINER_TYPE},
};

/// `"true"` or `"false"`: whether the Pod's CPU containers get the library.
pub const FASTPATH_ANNOTATION: &str = "heteropod.io/fastpath";
/// Where the library appears inside a container.
pub const MOUNT_POINT: &str = "/.heteropod/libheterosocket.so";

/// What the shim does to one container's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Bind-mount the library and preload it.
    Inject,
    /// The Pod asked for it but the node forbids it (`[fastpath] allow = false`):
    /// the spec is left alone and a warning logged.
    Forbidden,
    /// Leave the spec alone; why, for the debug log.
    Off(&'static str),
}

/// The Pod's `heteropod.io/fastpath`, if set. Malformed values are rejected
/// (like the placement annotations), so a typo never silently changes a Pod.
fn requested(annotations: &HashMap<String, String>) -> Result<Option<bool>> {
    let Some(value) = annotations.get(FASTPATH_ANNOTATION) else {
        return Ok(None);
    };
    match value.trim() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        "" => Ok(None),
        other => Err(Error::InvalidArgument(format!(
            "annotation {FASTPATH_ANNOTATION}: {other:?} is not \"true\" or \"false\""
        ))),
    }
}

/// Decides whether the container with these OCI annotations, placed at
/// `placement`, gets the fast-path library.
pub fn decide(
    annotations: &HashMap<String, String>,
    placement: Placement,
    config: &Config,
) -> Result<Decision> {
    let asked = requested(annotations)?;
    if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(Decision::Off("the sandbox container"));
    }
    if !annotations.contains_key(CONTAINER_NAME) {
        return Ok(Decision::Off("not a CRI container"));
    }
    if !asked.unwrap_or(config.fastpath.default) {
        return Ok(Decision::Off("not asked for"));
    }
    if !config.fastpath.allow {
        // `default = true` with `allow = false` is refused by the config.
        return Ok(Decision::Forbidden);
    }
    if placement != Placement::Cpu {
        return Ok(Decision::Off(
            "placed on the DPU (no fast-path broker there)",
        ));
    }
    if !config.dpu.enabled {
        return Ok(Decision::Off("no DPU on this node: the Pod is not split"));
    }
    Ok(Decision::Inject)
}

/// Appends [`MOUNT_POINT`] to an environment's `LD_PRELOAD` (after what it
/// already preloads), or sets it. Returns whether `env` changed.
pub fn preload_env(env: &mut Vec<String>) -> bool {
    let existing = env.iter_mut().rev().find(|e| e.starts_with("LD_PRELOAD="));
    match existing {
        Some(entry) => {
            let value = entry["LD_PRELOAD=".len()..].to_string();
            // ld.so separates preloads with spaces or colons.
            if value.split([' ', ':']).any(|lib| lib == MOUNT_POINT) {
                return false;
            }
            *entry = if value.trim().is_empty() {
                format!("LD_PRELOAD={MOUNT_POINT}")
            } else {
                format!("LD_PRELOAD={value} {MOUNT_POINT}")
            };
        }
        None => env.push(format!("LD_PRELOAD={MOUNT_POINT}")),
    }
    true
}

/// Adds the read-only bind mount of `library` at [`MOUNT_POINT`] and the
/// preload to an OCI spec document. Returns whether it changed; a second pass
/// changes nothing.
pub fn edit_spec(spec: &mut Value, library: &str) -> Result<bool> {
    let Some(root) = spec.as_object_mut() else {
        return Err(Error::InvalidArgument(
            "OCI spec is not a JSON object".into(),
        ));
    };
    let mount = json!({
        "destination": MOUNT_POINT,
        "type": "bind",
        "source": library,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    });
    let mounts = root
        .entry("mounts")
        .or_insert_with(|| Value::Array(Vec::new()));
    if mounts.is_null() {
        *mounts = Value::Array(Vec::new());
    }
    let Some(mounts) = mounts.as_array_mut() else {
        return Err(Error::InvalidArgument(
            "OCI spec: mounts is not a list".into(),
        ));
    };
    let mut changed = false;
    if !mounts.contains(&mount) {
        mounts.retain(|m| m["destination"] != MOUNT_POINT);
        mounts.push(mount);
        changed = true;
    }
    let process = root
        .entry("process")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(process) = process.as_object_mut() else {
        return Err(Error::InvalidArgument(
            "OCI spec: process is not an object".into(),
        ));
    };
    let env = process
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if env.is_null() {
        *env = Value::Array(Vec::new());
    }
    let mut list: Vec<String> = serde_json::from_value(env.clone())
        .map_err(|e| Error::InvalidArgument(format!("OCI spec: process.env: {e}")))?;
    if preload_env(&mut list) {
        *env = json!(list);
        changed = true;
    }
    Ok(changed)
}

/// A fast-path injection the runc backend carries out once the container's
/// rootfs is mounted (see [`inject`]).
#[derive(Debug)]
pub struct Request {
    pub library: String,
    applied: AtomicBool,
}

impl Request {
    /// Whether the bundle was edited (the container has the library).
    pub fn applied(&self) -> bool {
        self.applied.load(Ordering::Relaxed)
    }
}

/// Acts on `decision` for container `id`: logs why the spec stays untouched,
/// or returns the injection to do when the library is on this node. Never
/// fails: without the library the relay still carries the connections.
pub fn request(id: &str, decision: Decision, config: &Config) -> Option<Request> {
    let library = &config.fastpath.library;
    match decision {
        Decision::Off(why) => {
            tracing::debug!(id, why, "fast path: spec untouched");
            return None;
        }
        Decision::Forbidden => {
            tracing::warn!(
                id,
                "fast path: the Pod asks for it ({FASTPATH_ANNOTATION}) but this node forbids it \
                 ([fastpath] allow = false); its connections use the relay"
            );
            return None;
        }
        Decision::Inject => {}
    }
    if !Path::new(library).is_file() {
        tracing::warn!(
            id,
            library = %library,
            "fast path: the Pod asks for it but the library is not on this node \
             ([fastpath] library); its connections use the relay"
        );
        return None;
    }
    Some(Request {
        library: library.clone(),
        applied: AtomicBool::new(false),
    })
}

/// Carries out `request` for container `id` whose image is mounted at
/// `rootfs`: if the image can load the library (a glibc loader and every
/// shared object the library needs), edits `<bundle>/config.json`. A
/// library that cannot load would stop every dynamically linked program of
/// the container from starting, so an image without them is left alone
/// (logged). Never fails.
pub fn inject(id: &str, bundle: &Path, rootfs: &Path, request: &Request) {
    let library = &request.library;
    if let Some(what) = missing_in(rootfs, LIBRARY_NEEDS) {
        tracing::warn!(id, library = %library, "fast path off for this container: the image has no {what}, which the library needs; its connections use the relay");
        return;
    }
    match edit_bundle(bundle, library) {
        Ok(_) => {
            request.applied.store(true, Ordering::Relaxed);
            tracing::info!(id, library = %library, mount = MOUNT_POINT, "fast path: library preloaded");
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "fast path: spec not edited; its connections use the relay");
        }
    }
}

/// [`edit_spec`] on `<bundle>/config.json`, replaced atomically.
fn edit_bundle(bundle: &Path, library: &str) -> Result<bool> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(Error::io(format!("read {}", path.display())))?;
    let mut spec: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("bundle {}: {e}", path.display())))?;
    if !edit_spec(&mut spec, library)? {
        return Ok(false);
    }
    let tmp = bundle.join(".config.json.fastpath");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(format!("replace {}", path.display())))?;
    Ok(true)
}

/// The glibc dynamic loader, as programs of this architecture name it.
#[cfg(target_arch = "x86_64")]
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
#[cfg(target_arch = "aarch64")]
const LOADER: &str = "/lib/ld-linux-aarch64.so.1";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const LOADER: &str = "/lib/ld-linux.so.2";

/// Where glibc's loader finds shared objects without a cache entry or RUNPATH.
fn library_dirs() -> [String; 6] {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{multiarch}"),
        format!("/usr/lib/{multiarch}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
}

/// What libheterosocket.so needs from an image besides the loader (its
/// `DT_NEEDED`; the unwinder is linked in, see netstack/preload/build.rs, and
/// heterosocket's `the_library_needs_only_libc` test keeps the two in step).
pub const LIBRARY_NEEDS: &[&str] = &["libc.so.6"];

/// The first of the loader and `needed` that `rootfs` lacks, if any.
pub fn missing_in(rootfs: &Path, needed: &[&str]) -> Option<String> {
    if !is_file_in(rootfs, LOADER) {
        return Some(format!("glibc loader {LOADER}"));
    }
    let dirs = library_dirs();
    needed
        .iter()
        .find(|lib| {
            !dirs
                .iter()
                .any(|d| is_file_in(rootfs, &format!("{d}/{lib}")))
        })
        .map(|lib| lib.to_string())
}

/// Whether `path` names a file inside `rootfs` as the container sees it:
/// symlinks are followed with absolute targets taken inside `rootfs`, and
/// `..` never leaves it.
fn is_file_in(rootfs: &Path, path: &str) -> bool {
    use std::collections::VecDeque;
    let mut rest: VecDeque<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = rest.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(c);
        let here = rootfs.join(resolved.join("/"));
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            return false;
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            let Ok(target) = std::fs::read_link(&here) else {
                return false;
            };
            if hops > 40 {
                return false;
            }
            resolved.pop();
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                resolved.clear();
            }
            for part in target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .rev()
            {
                rest.push_front(part.to_string());
            }
        }
    }
    std::fs::metadata(rootfs.join(resolved.join("/"))).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut a: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        a.insert(CONTAINER_TYPE.into(), "container".into());
        a.insert(CONTAINER_NAME.into(), name.into());
        a
    }

    fn node(text: &str) -> Config {
        Config::parse(&format!("[dpu]\nenabled = true\n{text}"), "test").unwrap()
    }

    const ASK: (&str, &str) = (FASTPATH_ANNOTATION, "true");

    #[test]
    fn a_pod_that_asks_gets_it_in_its_cpu_containers_only() {
        let app = container("app", &[ASK]);
        assert_eq!(
            decide(&app, Placement::Cpu, &node("")).unwrap(),
            Decision::Inject
        );
        assert!(matches!(
            decide(&app, Placement::Dpu, &node("")).unwrap(),
            Decision::Off(_)
        ));
    }

    #[test]
    fn without_the_annotation_the_node_default_decides() {
        let app = container("app", &[]);
        assert!(matches!(
            decide(&app, Placement::Cpu, &node("")).unwrap(),
            Decision::Off(_)
        ));
        let on = node("[fastpath]\ndefault = true\n");
        assert_eq!(decide(&app, Placement::Cpu, &on).unwrap(), Decision::Inject);
        // A Pod may still say no.
        let no = container("app", &[(FASTPATH_ANNOTATION, "false")]);
        assert!(matches!(
            decide(&no, Placement::Cpu, &on).unwrap(),
            Decision::Off(_)
        ));
    }

    #[test]
    fn a_node_that_forbids_it_ignores_the_annotation() {
        let app = container("app", &[ASK]);
        let sut = decide(&app, Placement::Cpu, &node("[fastpath]\nallow = false\n")).unwrap();
        assert_eq!(sut, Decision::Forbidden);
        // Not asked: nothing to warn about.
        let sut = decide(
            &container("app", &[]),
            Placement::Cpu,
            &node("[fastpath]\nallow = false\n"),
        )
        .unwrap();
        assert!(matches!(sut, Decision::Off(_)));
    }

    #[test]
    fn sandboxes_non_cri_containers_and_dpu_less_nodes_are_left_alone() {
        let mut sandbox = container("pause", &[ASK]);
        sandbox.insert(CONTAINER_TYPE.into(), "sandbox".into());
        let not_cri: HashMap<String, String> = [ASK]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for a in [&sandbox, &not_cri] {
            assert!(matches!(
                decide(a, Placement::Cpu, &node("")).unwrap(),
                Decision::Off(_)
            ));
        }
        let no_dpu = Config::default();
        assert!(matches!(
            decide(&container("app", &[ASK]), Placement::Cpu, &no_dpu).unwrap(),
            Decision::Off(_)
        ));
    }

    #[test]
    fn a_malformed_annotation_is_rejected_even_on_the_sandbox() {
        let mut sandbox = container("pause", &[(FASTPATH_ANNOTATION, "yes")]);
        sandbox.insert(CONTAINER_TYPE.into(), "sandbox".into());
        let err = decide(&sandbox, Placement::Cpu, &node("")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(FASTPATH_ANNOTATION), "{err}");
    }

    /// The parts of a spec containerd's CRI plugin writes that matter here.
    const FIXTURE: &str = r#"{
        "ociVersion": "1.1.0",
        "process": {"args": ["sh"], "env": ["PATH=/bin", "LD_PRELOAD=/usr/lib/libjemalloc.so"]},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/etc/resolv.conf", "type": "bind",
                    "source": "/var/lib/x/resolv.conf", "options": ["rbind", "ro"]}]
    }"#;

    #[test]
    fn the_library_is_mounted_read_only_and_preloaded_after_the_images_own() {
        let mut sut: Value = serde_json::from_str(FIXTURE).unwrap();
        assert!(edit_spec(&mut sut, "/opt/hp/libheterosocket.so").unwrap());
        let mounts = sut["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1]["destination"], "/etc/resolv.conf");
        let m = &mounts[2];
        assert_eq!(m["destination"], MOUNT_POINT);
        assert_eq!(m["source"], "/opt/hp/libheterosocket.so");
        assert_eq!(m["type"], "bind");
        let options: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(
            options.contains(&"ro") && options.contains(&"rbind"),
            "{options:?}"
        );
        assert_eq!(
            sut["process"]["env"],
            json!([
                "PATH=/bin",
                format!("LD_PRELOAD=/usr/lib/libjemalloc.so {MOUNT_POINT}")
            ])
        );
        assert_eq!(sut["root"]["readonly"], true, "the rootfs stays as asked");
        assert!(
            !edit_spec(&mut sut, "/opt/hp/libheterosocket.so").unwrap(),
            "a second pass changes nothing"
        );
        assert_eq!(sut["mounts"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_spec_without_env_or_mounts_gets_both() {
        let mut sut = json!({"process": {"args": ["sh"]}});
        assert!(edit_spec(&mut sut, "/l.so").unwrap());
        assert_eq!(
            sut["process"]["env"],
            json!([format!("LD_PRELOAD={MOUNT_POINT}")])
        );
        assert_eq!(sut["mounts"][0]["source"], "/l.so");
        let mut empty = json!({});
        assert!(edit_spec(&mut empty, "/l.so").unwrap());
        assert!(edit_spec(&mut json!([]), "/l.so").is_err());
        assert!(edit_spec(&mut json!({"mounts": {}}), "/l.so").is_err());
    }

    #[test]
    fn preload_env_appends_once() {
        let mut env = vec!["LD_PRELOAD=".to_string()];
        assert!(preload_env(&mut env));
        assert_eq!(env, [format!("LD_PRELOAD={MOUNT_POINT}")]);
        let mut env = vec![format!("LD_PRELOAD=/a.so:{MOUNT_POINT}")];
        assert!(!preload_env(&mut env));
    }

    /// A rootfs like the test image's: Debian's merged /usr, the loader
    /// reached through an absolute symlink, libc but no libgcc_s.
    fn image(dir: &Path) -> std::path::PathBuf {
        let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
        let root = dir.join("rootfs");
        let libdir = root.join("usr/lib").join(&multiarch);
        std::fs::create_dir_all(&libdir).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::write(libdir.join("libc.so.6"), b"").unwrap();
        let loader_name = Path::new(LOADER).file_name().unwrap();
        std::fs::write(libdir.join(loader_name), b"").unwrap();
        let loader = root.join(LOADER.trim_start_matches('/'));
        std::fs::create_dir_all(loader.parent().unwrap()).unwrap();
        if !loader.exists() {
            std::os::unix::fs::symlink(
                format!("/lib/{multiarch}/{}", loader_name.to_string_lossy()),
                &loader,
            )
            .unwrap();
        }
        root
    }

    #[test]
    fn an_image_must_hold_the_loader_and_every_needed_library() {
        let dir = tempfile::tempdir().unwrap();
        let root = image(dir.path());
        assert_eq!(missing_in(&root, LIBRARY_NEEDS), None);
        let needs = ["libc.so.6", "libgcc_s.so.1"];
        assert_eq!(missing_in(&root, &needs).as_deref(), Some("libgcc_s.so.1"));
        let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
        std::fs::write(
            root.join("usr/lib").join(multiarch).join("libgcc_s.so.1"),
            b"",
        )
        .unwrap();
        assert_eq!(missing_in(&root, &needs), None);
        // A musl or static image: no glibc loader.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(missing_in(&empty, &[]).unwrap().contains("loader"));
    }

    #[test]
    fn paths_resolve_inside_the_rootfs_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // Absolute and climbing links stay inside the rootfs.
        std::os::unix::fs::symlink("/etc/hostname", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/hostname", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(
            !is_file_in(&root, "/abs"),
            "the host's /etc/hostname leaked in"
        );
        assert!(!is_file_in(&root, "/etc/up"));
        assert!(!is_file_in(&root, "/loop"));
        std::fs::write(root.join("etc/hostname"), b"pod").unwrap();
        assert!(is_file_in(&root, "/abs") && is_file_in(&root, "/etc/up"));
        assert!(!is_file_in(&root, "/etc"), "a directory is not a library");
    }

    #[test]
    fn inject_edits_the_bundle_only_for_an_image_that_can_load_the_library() {
        let dir = tempfile::tempdir().unwrap();
        let root = image(dir.path());
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), FIXTURE).unwrap();
        let mut config = node("");
        // The "library" is any existing file: what it needs is LIBRARY_NEEDS.
        config.fastpath.library = "/proc/self/exe".into();

        let absent = dir.path().join("absent.so").display().to_string();
        let mut missing = config.clone();
        missing.fastpath.library = absent;
        assert!(request("c1", Decision::Inject, &missing).is_none());
        assert!(request("c1", Decision::Forbidden, &config).is_none());
        assert!(request("c1", Decision::Off("x"), &config).is_none());

        let sut = request("c1", Decision::Inject, &config).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        inject("c1", &bundle, &empty, &sut);
        assert!(!sut.applied());
        assert_eq!(
            std::fs::read_to_string(bundle.join("config.json")).unwrap(),
            FIXTURE
        );

        let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
        for lib in LIBRARY_NEEDS {
            std::fs::write(root.join("usr/lib").join(&multiarch).join(lib), b"").unwrap();
        }
        inject("c1", &bundle, &root, &sut);
        assert!(sut.applied());
        let spec: Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["mounts"][2]["source"], "/proc/self/exe");
        assert!(!bundle.join(".config.json.fastpath").exists());
    }
}
