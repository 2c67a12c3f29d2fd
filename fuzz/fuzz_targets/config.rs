//! Fuzz target `config`: see `enlace::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace::fuzz::config(data));
