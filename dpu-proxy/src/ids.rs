//! Validation of names that become paths, runc ids and netns names.
use crate::error::{Error, Result};

/// Longest accepted id (runc and netns names stay well below path limits).
pub const MAX_ID_LEN: usize = 128;

/// Accepts `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_ID_LEN`] bytes: safe as a
/// path component, a runc container id, a cgroup name and a netns name.
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("{kind} id {id:?} {why}")));
    if id.is_empty() {
        return bad("is empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("is too long");
    }
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Like [`validate_id`], but empty (the init process) is allowed.
pub fn validate_exec_id(exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        validate_id("exec", exec_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_style_ids() {
        for id in ["a", "0123abcdef", "sidecar-1.v2_x", &"f".repeat(64)] {
            assert!(validate_id("container", id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_ids_that_could_escape_paths() {
        for id in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-a",
            ".hidden",
            "a b",
            "a\0",
            "é",
            &"x".repeat(129),
        ] {
            let e = validate_id("container", id).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{id}");
        }
    }

    #[test]
    fn empty_exec_id_means_init() {
        assert!(validate_exec_id("").is_ok());
        assert!(validate_exec_id("../e").is_err());
    }
}
