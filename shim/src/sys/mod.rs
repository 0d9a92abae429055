//! The few places that need `unsafe`: taking ownership of a received descriptor,
//! the terminal-size ioctl and a child's affinity set between fork and exec.
//! Everything else in the shim is safe code.

pub mod affinity;
pub mod fd;
