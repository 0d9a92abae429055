//! Every `unsafe` block of the crate lives here: adopting received
//! descriptors, copying to and from shared memory, MMIO register access and
//! the VFIO ioctls. Callers get safe, bounds-checked wrappers.

pub(crate) mod fd;
pub mod mmio;
pub mod shm;
pub(crate) mod vfio;
