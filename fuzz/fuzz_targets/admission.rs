//! Fuzz target `admission`: see `enlace::fuzz::admission`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace::fuzz::admission(data));
