//! Fuzz target `json`: see `enlace::fuzz::json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace::fuzz::json(data));
