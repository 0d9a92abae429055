//! The grammar the CPU half holds carried rules to, and their translation
//! into its own chains.

use std::collections::BTreeSet;

use super::{MAX_CHAIN, MAX_RULES, MAX_RULE_BYTES, OWN_CHAIN, PREFIX};

/// A rule the CPU half refuses to load.
#[derive(Debug, thiserror::Error)]
#[error("carried nat rule refused ({why}): {rule}")]
pub struct Refused {
    pub rule: String,
    pub why: String,
}

/// The carried rules as `iptables-restore --noflush` input, and the chains it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub restore: String,
    pub chains: BTreeSet<String>,
}

fn refuse(rule: &str, why: impl Into<String>) -> Refused {
    Refused {
        rule: rule.chars().take(MAX_RULE_BYTES).collect(),
        why: why.into(),
    }
}

/// The CPU half's name for the peer's chain `name`.
fn mapped(rule: &str, name: &str) -> std::result::Result<String, Refused> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok || matches!(name, "INPUT" | "POSTROUTING") || name == OWN_CHAIN {
        return Err(refuse(rule, format!("chain {name:?}")));
    }
    let out = format!("{PREFIX}{name}");
    if out.len() > MAX_CHAIN {
        return Err(refuse(rule, format!("chain name {name:?} too long")));
    }
    Ok(out)
}

/// Splits a rule into words; double quotes group (iptables-save quotes comments).
fn words(rule: &str) -> std::result::Result<Vec<String>, Refused> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    for c in rule.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            c if c.is_whitespace() && !quoted => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if quoted {
        return Err(refuse(rule, "unbalanced quote"));
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}

fn is_num_or_range(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks `value` of option `opt`; the value to emit.
fn value_ok(opt: &str, value: &str) -> bool {
    match opt {
        "-p" => matches!(value, "tcp" | "udp" | "6" | "17"),
        "-s" | "-d" => {
            let (ip, prefix) = value.split_once('/').unwrap_or((value, "32"));
            ip.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
        }
        "-i" | "-o" => {
            !value.is_empty()
                && value.len() <= 15
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
        }
        "-m" => matches!(
            value,
            "tcp" | "udp" | "owner" | "mark" | "addrtype" | "multiport" | "comment"
        ),
        "--dport" | "--sport" | "--to-ports" | "--uid-owner" | "--gid-owner" => {
            is_num_or_range(value)
        }
        "--dports" | "--sports" => value.split(',').all(is_num_or_range),
        "--mark" => {
            let (v, m) = value.split_once('/').unwrap_or((value, "0xffffffff"));
            [v, m].iter().all(|x| {
                let x = x.trim_start_matches("0x");
                !x.is_empty() && x.len() <= 10 && x.bytes().all(|b| b.is_ascii_hexdigit())
            })
        }
        "--dst-type" | "--src-type" => value
            .split(',')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')),
        "--comment" => true,
        _ => false,
    }
}

/// Options that take no value.
fn flag_ok(opt: &str) -> bool {
    matches!(
        opt,
        "--suppl-groups" | "--limit-iface-in" | "--limit-iface-out" | "--socket-exists"
    )
}

/// Translates the peer's rules into the CPU half's chains, or refuses them.
pub fn translate(rules: &[String]) -> std::result::Result<Translated, Refused> {
    if rules.len() > MAX_RULES {
        return Err(refuse(
            "",
            format!("{} rules, at most {MAX_RULES}", rules.len()),
        ));
    }
    let mut chains: BTreeSet<String> = BTreeSet::new();
    let mut body = Vec::new();
    for rule in rules {
        if rule.len() > MAX_RULE_BYTES {
            return Err(refuse(rule, "too long"));
        }
        if let Some(decl) = rule.strip_prefix(':') {
            chains.insert(mapped(rule, decl.trim())?);
            continue;
        }
        let w = words(rule)?;
        if w.len() < 2 || w[0] != "-A" {
            return Err(refuse(rule, "not an -A rule"));
        }
        let chain = mapped(rule, &w[1])?;
        chains.insert(chain.clone());
        let mut out = vec!["-A".to_string(), chain];
        let mut i = 2;
        let mut target = None;
        while i < w.len() {
            let opt = w[i].as_str();
            if opt == "!" {
                out.push("!".into());
                i += 1;
                continue;
            }
            if flag_ok(opt) {
                out.push(opt.into());
                i += 1;
                continue;
            }
            let Some(val) = w.get(i + 1) else {
                return Err(refuse(rule, format!("{opt} without a value")));
            };
            match opt {
                "-j" | "-g" => {
                    let t = match val.as_str() {
                        "RETURN" | "ACCEPT" | "REDIRECT" => val.clone(),
                        other => {
                            let m = mapped(rule, other)?;
                            chains.insert(m.clone());
                            m
                        }
                    };
                    target = Some(t.clone());
                    out.extend([opt.to_string(), t]);
                }
                // Comments are dropped: they only label.
                "--comment" => {}
                "-m" if val == "comment" => {}
                _ if value_ok(opt, val) => {
                    if opt == "--to-ports" && target.as_deref() != Some("REDIRECT") {
                        return Err(refuse(rule, "--to-ports without REDIRECT"));
                    }
                    out.extend([opt.to_string(), val.clone()]);
                }
                _ => return Err(refuse(rule, format!("option {opt} {val:?}"))),
            }
            i += 2;
        }
        if target.is_none() {
            return Err(refuse(rule, "no target"));
        }
        body.push(out.join(" "));
    }
    // Entered from the built-in chains, and always declared, so a later set
    // without rules there still flushes them.
    chains.insert(format!("{PREFIX}PREROUTING"));
    chains.insert(format!("{PREFIX}OUTPUT"));
    let mut restore = String::from("*nat\n");
    for c in &chains {
        restore.push_str(&format!(":{c} - [0:0]\n"));
    }
    for b in &body {
        restore.push_str(b);
        restore.push('\n');
    }
    restore.push_str("COMMIT\n");
    Ok(Translated { restore, chains })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::pod_rules::{own_rules, tests::SAVE};

    #[test]
    fn istio_rules_load_under_the_cpu_halfs_own_chains() {
        let t = translate(&own_rules(SAVE)).unwrap();
        for want in [
            ":HP-OUTPUT - [0:0]",
            ":HP-ISTIO_IN_REDIRECT - [0:0]",
            "-A HP-OUTPUT -p tcp -j HP-ISTIO_OUTPUT",
            "-A HP-PREROUTING -p tcp -j HP-ISTIO_INBOUND",
            "-A HP-ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j HP-ISTIO_IN_REDIRECT",
            "-A HP-ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A HP-ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(t.restore.lines().any(|l| l == want), "{want} not in\n{}", t.restore);
        }
        assert!(t.restore.starts_with("*nat\n") && t.restore.ends_with("COMMIT\n"));
        assert!(t.chains.contains("HP-PREROUTING"));
    }

    #[test]
    fn rules_outside_the_grammar_are_refused_with_the_rule() {
        for bad in [
            "-A OUTPUT -p tcp -j DNAT --to-destination 1.2.3.4",
            "-A POSTROUTING -j MASQUERADE",
            "-A OUTPUT -m conntrack --ctstate NEW -j RETURN",
            "-A OUTPUT -d 10.0.0.1/40 -j RETURN",
            "-A OUTPUT -p tcp",
            "-A OUTPUT -p tcp -j RETURN --to-ports 1",
            "-A OUTPUT -j HETERONET",
            "-A THIS_CHAIN_NAME_IS_FAR_TOO_LONG -j RETURN",
            "-A OUTPUT -o \"lo -j RETURN",
            "-A OUTPUT -p tcp -j REDIRECT --to-ports 1;reboot",
            "-I OUTPUT -j RETURN",
        ] {
            let err = translate(&[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("refused"), "{bad}: {err}");
        }
        let many = vec![":A".to_string(); MAX_RULES + 1];
        assert!(translate(&many).is_err());
    }

    #[test]
    fn an_empty_set_still_declares_the_entry_chains() {
        let t = translate(&[]).unwrap();
        assert_eq!(t.chains.len(), 2);
        assert_eq!(
            t.restore,
            "*nat\n:HP-OUTPUT - [0:0]\n:HP-PREROUTING - [0:0]\nCOMMIT\n"
        );
    }
}
