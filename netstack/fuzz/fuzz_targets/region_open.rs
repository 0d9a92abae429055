#![no_main]
//! The region opener on peer-made mappings: arbitrary sizes, seals, slot
//! windows and header bytes, then both rings driven with arbitrary indices.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heteronet::fuzzing::opener(data);
});
