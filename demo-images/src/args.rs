//! `--flag value` command lines, enough for three tiny programs.

use std::collections::HashMap;
use std::str::FromStr;

/// Parsed `--key value` pairs.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    /// Parses `argv` (without the program name); every flag must be one of `known`.
    pub fn parse(argv: impl IntoIterator<Item = String>, known: &[&str]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut it = argv.into_iter();
        while let Some(flag) = it.next() {
            let Some(key) = flag.strip_prefix("--") else {
                return Err(format!("unexpected argument {flag:?}"));
            };
            if !known.contains(&key) {
                return Err(format!(
                    "unknown flag --{key} (known: --{})",
                    known.join(", --")
                ));
            }
            let Some(value) = it.next() else {
                return Err(format!("--{key} needs a value"));
            };
            values.insert(key.to_string(), value);
        }
        Ok(Self { values })
    }

    /// The value of `--key`, parsed, or `default` when absent.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: cannot parse {v:?}")),
        }
    }

    /// The raw value of `--key`, if given.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// Parses the process's arguments or exits 2 with the error and `usage`.
pub fn from_env_or_exit(known: &[&str], usage: &str) -> Args {
    Args::parse(std::env::args().skip(1), known).unwrap_or_else(|e| {
        eprintln!("error: {e}\nusage: {usage}");
        std::process::exit(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn reads_known_flags_with_defaults() {
        let sut = Args::parse(argv("--requests 10"), &["requests", "target"]).unwrap();
        assert_eq!(sut.get("requests", 1u64).unwrap(), 10);
        assert_eq!(sut.get("target", 7u16).unwrap(), 7);
    }

    #[test]
    fn rejects_unknown_missing_and_bad_values() {
        assert!(Args::parse(argv("--nope 1"), &["requests"]).is_err());
        assert!(Args::parse(argv("--requests"), &["requests"]).is_err());
        assert!(Args::parse(argv("stray"), &["requests"]).is_err());
        let sut = Args::parse(argv("--requests x"), &["requests"]).unwrap();
        assert!(sut.get("requests", 1u64).is_err());
    }
}
