//! Fuzz target `batch_proof`: see `enlace::fuzz::batch_proof`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace::fuzz::batch_proof(data));
