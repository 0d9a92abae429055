//! Device nodes and device cgroup rules a container may have: runc's own
//! defaults (what every container gets anyway) and the host devices the
//! node's policy names.
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde_json::Value;

use crate::error::{Error, Result};

/// `None`: any number (a wildcard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    kind: char,
    major: Option<i64>,
    minor: Option<i64>,
}

/// What runc allows every container (libcontainer's AllowedDevices) plus
/// /dev/console, as Docker and containerd do: mknod of anything, and the
/// harmless character devices.
const SAFE: &[(char, Option<i64>, Option<i64>, &str)] = &[
    ('c', None, None, "m"),
    ('b', None, None, "m"),
    ('c', Some(1), Some(3), "rwm"),    // null
    ('c', Some(1), Some(5), "rwm"),    // zero
    ('c', Some(1), Some(7), "rwm"),    // full
    ('c', Some(1), Some(8), "rwm"),    // random
    ('c', Some(1), Some(9), "rwm"),    // urandom
    ('c', Some(5), Some(0), "rwm"),    // tty
    ('c', Some(5), Some(1), "rwm"),    // console
    ('c', Some(5), Some(2), "rwm"),    // ptmx
    ('c', Some(136), None, "rwm"),     // pts
    ('c', Some(10), Some(200), "rwm"), // tun
];

fn number(v: &Value) -> Option<i64> {
    v.as_i64().filter(|n| *n >= 0)
}

fn access_of(v: &Value) -> String {
    match v.as_str() {
        None | Some("") => "rwm".into(),
        Some(a) => a.into(),
    }
}

/// The host devices at `paths` as (kind, major, minor); paths that are not
/// device nodes are an error naming the path (a policy typo must not pass).
pub fn host_devices(paths: &[std::path::PathBuf]) -> Result<Vec<(char, i64, i64)>> {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).map_err(|e| {
                Error::FailedPrecondition(format!("[policy] devices: {}: {e}", p.display()))
            })?;
            let kind = if meta.file_type().is_char_device() {
                'c'
            } else if meta.file_type().is_block_device() {
                'b'
            } else {
                return Err(Error::FailedPrecondition(format!(
                    "[policy] devices: {} is not a device node",
                    p.display()
                )));
            };
            let rdev = meta.rdev();
            Ok((
                kind,
                nix::sys::stat::major(rdev) as i64,
                nix::sys::stat::minor(rdev) as i64,
            ))
        })
        .collect()
}

/// Whether `rule` (with `access`) allows nothing beyond the safe set and
/// `allowed`.
fn covered(rule: Rule, access: &str, allowed: &[(char, i64, i64)]) -> bool {
    let kinds: &[char] = match rule.kind {
        'a' => &['c', 'b'],
        'c' => &['c'],
        'b' => &['b'],
        _ => return false,
    };
    kinds.iter().all(|&kind| {
        let safe = SAFE.iter().any(|&(k, maj, min, acc)| {
            k == kind
                && (maj.is_none() || maj == rule.major)
                && (min.is_none() || min == rule.minor)
                && access.chars().all(|c| acc.contains(c))
        });
        let named = allowed
            .iter()
            .any(|&(k, maj, min)| k == kind && rule.major == Some(maj) && rule.minor == Some(min));
        safe || named
    })
}

/// `linux.devices` and `linux.resources.devices` of a spec that is not
/// privileged: every device node and every allow rule within the safe set
/// and `allowed`, and a rule denying all the rest (without it, the cgroup
/// inherits "allow all" and CAP_MKNOD reaches every host device).
pub fn check(spec: &Value, allowed: &[(char, i64, i64)]) -> std::result::Result<(), String> {
    for d in spec["linux"]["devices"].as_array().into_iter().flatten() {
        let kind = d["type"].as_str().unwrap_or_default();
        if kind == "p" {
            continue; // a FIFO: no device behind it
        }
        let rule = Rule {
            kind: if kind == "u" {
                'c'
            } else {
                kind.chars().next().unwrap_or('?')
            },
            major: number(&d["major"]),
            minor: number(&d["minor"]),
        };
        if rule.major.is_none() || rule.minor.is_none() || !covered(rule, "rwm", allowed) {
            return Err(format!(
                "device {} ({kind} {}:{}) is not one the node allows ([policy] devices)",
                d["path"].as_str().unwrap_or("?"),
                d["major"],
                d["minor"]
            ));
        }
    }
    let rules = spec["linux"]["resources"]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut denies_all = false;
    for r in &rules {
        let rule = Rule {
            kind: r["type"]
                .as_str()
                .and_then(|t| t.chars().next())
                .unwrap_or('a'),
            major: number(&r["major"]),
            minor: number(&r["minor"]),
        };
        let access = access_of(&r["access"]);
        if r["allow"].as_bool() == Some(true) {
            if !covered(rule, &access, allowed) {
                return Err(format!(
                    "device cgroup rule allowing {} {}:{} {access} is beyond what the node allows ([policy] devices)",
                    rule.kind,
                    rule.major.map_or("*".into(), |n| n.to_string()),
                    rule.minor.map_or("*".into(), |n| n.to_string()),
                ));
            }
        } else if rule.kind == 'a'
            && rule.major.is_none()
            && rule.minor.is_none()
            && "rwm".chars().all(|c| access.contains(c))
        {
            denies_all = true;
        }
    }
    if !denies_all {
        return Err(
            "no device cgroup rule denies all devices (linux.resources.devices): every host device would be usable"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(devices: Value, rules: Value) -> Value {
        json!({"linux": {"devices": devices, "resources": {"devices": rules}}})
    }

    fn deny_all() -> Value {
        json!({"allow": false, "access": "rwm"})
    }

    #[test]
    fn the_defaults_of_runc_and_containerd_pass() {
        let rules = json!([deny_all(),
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
            {"allow": true, "type": "b", "access": "m"}]);
        check(&spec(json!([]), rules), &[]).unwrap();
    }

    #[test]
    fn allow_all_or_a_missing_deny_all_is_refused() {
        let e = check(
            &spec(json!([]), json!([{"allow": true, "access": "rwm"}])),
            &[],
        );
        assert!(e.is_err());
        let e = check(&spec(json!([]), json!([])), &[]).unwrap_err();
        assert!(e.contains("denies all"), "{e}");
        let disk = json!([deny_all(), {"allow": true, "type": "b", "major": 8, "minor": 0, "access": "rw"}]);
        assert!(check(&spec(json!([]), disk), &[]).is_err());
    }

    #[test]
    fn host_devices_need_the_policy() {
        let sda = json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]);
        let e = check(&spec(sda.clone(), json!([deny_all()])), &[]).unwrap_err();
        assert!(e.contains("/dev/sda"), "{e}");
        check(&spec(sda, json!([deny_all()])), &[('b', 8, 0)]).unwrap();
        let null = json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]);
        check(&spec(null, json!([deny_all()])), &[]).unwrap();
    }

    #[test]
    fn policy_devices_are_read_from_the_host() {
        assert_eq!(
            host_devices(&["/dev/null".into()]).unwrap(),
            vec![('c', 1, 3)]
        );
        assert!(host_devices(&["/etc/hostname".into()]).is_err());
    }
}
