//! Fuzz target `encrypted_entry`: the body is `shoal_fuzz::encrypted_entry` (its doc says which decoder and what
//! is checked); this file only hands it libFuzzer's input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::encrypted_entry(data));
