//! The node key and the handshake that proves both ends of a network
//! connection (`tcp://`, `vsock://`) hold it, before ttrpc sees a byte.
//!
//! The key is 32 random bytes, hex in a root-only file (0600) that the agent
//! and the shim both name (`[access] key_file`, `[dpu] key_file`). The
//! handshake is a challenge and response both ways with HMAC-SHA256:
//!
//! ```text
//! agent  -> client  MAGIC  Na                      (Na: 32 random bytes)
//! client -> agent   MAGIC  Nc  HMAC(K, "client" Na Nc)
//! agent  -> client  ACCEPTED HMAC(K, "agent" Na Nc) | REFUSED, close
//! ```
//!
//! Fresh nonces from both sides keep a recorded exchange from being replayed,
//! distinct labels keep one side's answer from being reflected as the other's,
//! and tags are compared in constant time (`Mac::verify_slice`). It
//! authenticates the connection's start only: the bytes after it are neither
//! encrypted nor protected, so across a network that others can write to, run
//! it inside something that is (WireGuard, IPsec). On a host's loopback (the
//! QEMU guest's forward) only root can be on the path.
use std::{
    fs::{OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of key material in a key file.
pub const KEY_BYTES: usize = 32;
const MAGIC: &[u8; 8] = b"HPAUTH1\n";
const NONCE: usize = 32;
const TAG: usize = 32;
const CLIENT_LABEL: &[u8] = b"heteropod-dpu-agent auth v1: client";
const AGENT_LABEL: &[u8] = b"heteropod-dpu-agent auth v1: agent";
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("the peer does not speak the agent's authentication (not a HeteroPod agent or client, or one without a key)")]
    NotAPeer,
    #[error("the agent refused this key")]
    Refused,
    #[error("the client's key is not the node's")]
    ClientKeyWrong,
    #[error("the agent did not prove it holds the node's key")]
    AgentKeyWrong,
    #[error("during authentication: {0}")]
    Io(#[from] io::Error),
}

/// The node key. Never printed.
#[derive(Clone)]
pub struct AuthKey([u8; KEY_BYTES]);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

fn key_error(path: &Path, reason: impl Into<String>) -> AuthError {
    AuthError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

impl AuthKey {
    /// Reads a key file: a regular file of this process's user, readable by
    /// nobody else, holding [`KEY_BYTES`] bytes as hex.
    pub fn load(path: &Path) -> Result<AuthKey, AuthError> {
        let meta = std::fs::metadata(path).map_err(|e| key_error(path, e.to_string()))?;
        if !meta.is_file() {
            return Err(key_error(path, "not a regular file"));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(key_error(
                path,
                format!(
                    "owned by uid {}, not by this process's uid {euid}",
                    meta.uid()
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(key_error(
                path,
                format!("mode {mode:04o} lets others read it; want 0600"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| key_error(path, e.to_string()))?;
        let bytes = hex_decode(text.trim())
            .filter(|b| b.len() == KEY_BYTES)
            .ok_or_else(|| key_error(path, format!("want {} hex digits", KEY_BYTES * 2)))?;
        let mut key = [0; KEY_BYTES];
        key.copy_from_slice(&bytes);
        Ok(AuthKey(key))
    }

    /// Writes a new random key to `path` (mode 0600); an existing file is
    /// never overwritten.
    pub fn generate(path: &Path) -> Result<(), AuthError> {
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| key_error(path, format!("no randomness: {e}")))?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| key_error(path, e.to_string()))?;
        // The umask may have taken bits away, never added: set exactly 0600.
        f.set_permissions(Permissions::from_mode(0o600))
            .and_then(|_| writeln!(f, "{hex}"))
            .map_err(|e| key_error(path, e.to_string()))
    }

    fn mac(&self, label: &[u8], agent_nonce: &[u8], client_nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(agent_nonce);
        mac.update(client_nonce);
        mac
    }

    fn tag(&self, label: &[u8], agent_nonce: &[u8], client_nonce: &[u8]) -> Vec<u8> {
        self.mac(label, agent_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Constant-time comparison.
    fn verify(&self, label: &[u8], agent_nonce: &[u8], client_nonce: &[u8], tag: &[u8]) -> bool {
        self.mac(label, agent_nonce, client_nonce)
            .verify_slice(tag)
            .is_ok()
    }
}

fn nonce() -> Result<[u8; NONCE], AuthError> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(n)
}

/// The agent's side; `Ok` once the client proved it holds `key`.
pub async fn agent_handshake<S>(s: &mut S, key: &AuthKey) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let agent_nonce = nonce()?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&agent_nonce);
    s.write_all(&hello).await?;
    s.flush().await?;
    let mut reply = [0u8; MAGIC.len() + NONCE + TAG];
    s.read_exact(&mut reply).await?;
    let (magic, rest) = reply.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(AuthError::NotAPeer);
    }
    let (client_nonce, tag) = rest.split_at(NONCE);
    if !key.verify(CLIENT_LABEL, &agent_nonce, client_nonce, tag) {
        // Best effort: the client learns it was refused rather than cut off.
        let _ = s.write_all(&[REFUSED]).await;
        let _ = s.flush().await;
        return Err(AuthError::ClientKeyWrong);
    }
    let mut ok = vec![ACCEPTED];
    ok.extend(key.tag(AGENT_LABEL, &agent_nonce, client_nonce));
    s.write_all(&ok).await?;
    s.flush().await?;
    Ok(())
}

/// The client's side; `Ok` once the agent proved it holds `key`.
pub async fn client_handshake<S>(s: &mut S, key: &AuthKey) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = [0u8; MAGIC.len() + NONCE];
    s.read_exact(&mut hello).await?;
    let (magic, agent_nonce) = hello.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(AuthError::NotAPeer);
    }
    let client_nonce = nonce()?;
    let mut reply = MAGIC.to_vec();
    reply.extend_from_slice(&client_nonce);
    reply.extend(key.tag(CLIENT_LABEL, agent_nonce, &client_nonce));
    s.write_all(&reply).await?;
    s.flush().await?;
    let mut verdict = [0u8; 1];
    match s.read_exact(&mut verdict).await {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(AuthError::Refused),
        r => r?,
    };
    if verdict[0] != ACCEPTED {
        return Err(AuthError::Refused);
    }
    let mut tag = [0u8; TAG];
    s.read_exact(&mut tag).await?;
    if !key.verify(AGENT_LABEL, agent_nonce, &client_nonce, &tag) {
        return Err(AuthError::AgentKeyWrong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(dir: &Path, name: &str) -> (PathBuf, AuthKey) {
        let path = dir.join(name);
        AuthKey::generate(&path).unwrap();
        let key = AuthKey::load(&path).unwrap();
        (path, key)
    }

    /// Runs both sides over an in-memory pipe.
    async fn handshake(
        agent_key: &AuthKey,
        client_key: &AuthKey,
    ) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let (mut a, mut c) = tokio::io::duplex(1024);
        let agent = async {
            let r = agent_handshake(&mut a, agent_key).await;
            drop(a);
            r
        };
        tokio::join!(agent, client_handshake(&mut c, client_key))
    }

    #[tokio::test]
    async fn both_ends_with_the_node_key_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = key_in(dir.path(), "k");
        let (agent, client) = handshake(&key, &key).await;
        agent.unwrap();
        client.unwrap();
    }

    #[tokio::test]
    async fn a_client_with_another_key_is_refused_and_told_so() {
        let dir = tempfile::tempdir().unwrap();
        let (_, node) = key_in(dir.path(), "node");
        let (_, other) = key_in(dir.path(), "other");
        let (agent, client) = handshake(&node, &other).await;
        assert!(matches!(agent, Err(AuthError::ClientKeyWrong)), "{agent:?}");
        assert!(matches!(client, Err(AuthError::Refused)), "{client:?}");
    }

    #[tokio::test]
    async fn an_agent_without_the_key_cannot_pass_for_the_agent() {
        // It echoes a well-formed hello and accepts, but cannot make the tag.
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = key_in(dir.path(), "k");
        let (mut a, mut c) = tokio::io::duplex(1024);
        let impostor = async move {
            let mut hello = MAGIC.to_vec();
            hello.extend([7u8; NONCE]);
            a.write_all(&hello).await.unwrap();
            let mut reply = [0u8; MAGIC.len() + NONCE + TAG];
            a.read_exact(&mut reply).await.unwrap();
            // Reflect the client's own tag as the agent's.
            let mut ok = vec![ACCEPTED];
            ok.extend_from_slice(&reply[MAGIC.len() + NONCE..]);
            a.write_all(&ok).await.unwrap();
        };
        let (_, client) = tokio::join!(impostor, client_handshake(&mut c, &key));
        assert!(
            matches!(client, Err(AuthError::AgentKeyWrong)),
            "{client:?}"
        );
    }

    #[tokio::test]
    async fn a_plain_ttrpc_client_is_not_a_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = key_in(dir.path(), "k");
        let (mut a, mut c) = tokio::io::duplex(1024);
        let client = async move {
            // A ttrpc Version request: header, then the payload.
            let mut req = vec![0, 0, 0, 0x23, 0, 0, 0, 1, 1, 0];
            req.extend(b"\x0a\x18heteropod.agent.v1.Agent\x12\x07Version");
            req.resize(MAGIC.len() + NONCE + TAG + 8, 0);
            c.write_all(&req).await.unwrap();
            c
        };
        let (agent, _c) = tokio::join!(agent_handshake(&mut a, &key), client);
        assert!(matches!(agent, Err(AuthError::NotAPeer)), "{agent:?}");
    }

    #[test]
    fn key_files_must_be_private_regular_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = key_in(dir.path(), "k");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(
            AuthKey::generate(&path).is_err(),
            "an existing key is never replaced"
        );
        std::fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let e = AuthKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("0640"), "{e}");
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd\n").unwrap();
        std::fs::set_permissions(&short, Permissions::from_mode(0o600)).unwrap();
        assert!(AuthKey::load(&short).is_err());
        let not_hex = dir.path().join("nothex");
        std::fs::write(&not_hex, "zz".repeat(KEY_BYTES)).unwrap();
        std::fs::set_permissions(&not_hex, Permissions::from_mode(0o600)).unwrap();
        assert!(AuthKey::load(&not_hex).is_err());
        assert!(AuthKey::load(dir.path()).is_err(), "a directory");
        assert!(AuthKey::load(&dir.path().join("absent")).is_err());
    }
}
