//! Fuzz target `frames`: see `enlace::fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace::fuzz::frames(data));
