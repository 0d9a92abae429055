//! Control messages between the two relays (carried by the Mux control channel).
//!
//! Each relay sends the full set of its half's listeners whenever it changes and
//! whenever the peer (re)appears; the receiver converges its mirrors to that set.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Upper bound on a decoded control message; the peer is not trusted.
pub const MAX_CONTROL_BYTES: usize = 1 << 20;
/// Upper bound on mirrored listeners per half.
pub const MAX_LISTENERS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub v6only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Control {
    /// The complete set of listeners of the sender's half.
    Listeners { set: Vec<ListenerSpec> },
    /// Asks the receiver to send its listeners now.
    Resync,
    /// The sender's (DPU) half's own `nat` rules, for the CPU half to load
    /// ([`super::pod_rules`]).
    PodRules { rules: Vec<String> },
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CONTROL_BYTES {
            return Err(Error::ControlTooLarge(bytes.len()));
        }
        let msg: Control = serde_json::from_slice(bytes)?;
        match &msg {
            Control::Listeners { set } if set.len() > MAX_LISTENERS => {
                return Err(Error::ControlTooLarge(set.len()));
            }
            Control::PodRules { rules } if rules.len() > super::pod_rules::MAX_RULES => {
                return Err(Error::ControlTooLarge(rules.len()));
            }
            _ => {}
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_round_trip() {
        let sut = Control::Listeners {
            set: vec![ListenerSpec {
                addr: "127.0.0.1:80".parse().unwrap(),
                v6only: false,
            }],
        };
        assert_eq!(Control::decode(&sut.encode()).unwrap(), sut);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Control::decode(b"\xff\x00garbage").is_err());
        assert!(
            Control::decode(br#"{"t":"listeners","set":[{"addr":"nope","v6only":false}]}"#)
                .is_err()
        );
    }
}
