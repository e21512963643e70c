//! Fuzz target `relay_frame`: the body is `shoal_fuzz::relay_frame` (its doc says which
//! decoder and what is checked); this file only hands it libFuzzer's input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::relay_frame(data));
