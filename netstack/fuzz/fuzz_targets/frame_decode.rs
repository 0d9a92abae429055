#![no_main]
//! Mux frame decoding of arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| heteronet::fuzzing::frame(data));
