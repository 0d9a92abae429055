//! Shared regions and the SPSC byte rings carved out of them.

mod addr;
#[allow(unsafe_code)]
pub mod fd;
pub mod layout;
#[allow(unsafe_code)]
pub mod region;
#[allow(unsafe_code)]
pub mod ring;

pub use addr::{RegionAddr, Window, MAX_SLOTS};
pub use layout::{Header, Layout};
pub use region::Region;
pub use ring::{Consumer, Producer, Record, Ring, RingCtrl};
