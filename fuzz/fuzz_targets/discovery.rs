//! cargo-fuzz target `discovery`: see `latchkey_daemon::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_daemon::fuzz::discovery_document(data));
