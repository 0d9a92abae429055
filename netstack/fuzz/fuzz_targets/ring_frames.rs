#![no_main]
//! Ring operations mixed with scribbles over the shared control block and data,
//! and mux frame decoding of every popped record.

use std::sync::{Arc, OnceLock};

use heteronet::shm::{Region, RegionAddr};
use libfuzzer_sys::fuzz_target;

static REGION: OnceLock<Option<Arc<Region>>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let region = REGION.get_or_init(|| {
        Region::create(&RegionAddr::Memfd, Some(4096), 0)
            .ok()
            .map(Arc::new)
    });
    if let Some(r) = region {
        heteronet::fuzzing::ring_script(r, data);
    }
});
