//! The few places that need `unsafe`: taking ownership of a received descriptor
//! and the terminal-size ioctl. Everything else in the shim is safe code.

pub mod fd;
