//! Dropping capabilities once the relay is set up in its namespace.
//!
//! Kept: `CAP_NET_BIND_SERVICE` (mirror listeners on ports < 1024) always;
//! with egress capture, and in the half that loads the other half's nat rules
//! ([`super::pod_rules`]), also `CAP_NET_ADMIN` (SO_MARK on the relay's own
//! sockets, iptables) and `CAP_NET_RAW` (iptables needs it); in the
//! half that re-makes the other half's egress, `CAP_SETUID` (the re-made
//! socket takes the original's owner for the Pod's `-m owner` rules, see
//! [`super::capture::tcp_socket`]). Everything
//! else, notably `CAP_SYS_ADMIN` (only needed for setns at start), goes from the
//! effective, permitted, inheritable, ambient and bounding sets, so an exec'd
//! helper (iptables) cannot regain it either.

use caps::{CapSet, Capability, CapsHashSet};

use super::error::Result;

/// The capabilities the relay still needs after setup.
pub fn needed(capture_egress: bool, remakes_egress: bool) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    keep.insert(Capability::CAP_NET_BIND_SERVICE);
    if remakes_egress {
        keep.insert(Capability::CAP_SETUID);
    }
    if capture_egress {
        keep.insert(Capability::CAP_NET_ADMIN);
        keep.insert(Capability::CAP_NET_RAW);
    }
    keep
}

/// Drops every capability not in `keep`. Call while the process is still
/// single-threaded: capability sets are per thread.
pub fn drop_all_but(keep: &CapsHashSet) -> Result<()> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    // The bounding set needs CAP_SETPCAP, so shrink it first.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}
