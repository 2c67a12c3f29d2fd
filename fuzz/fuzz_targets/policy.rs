//! Fuzz target `policy`: see `enlace::fuzz::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace::fuzz::policy(data));
