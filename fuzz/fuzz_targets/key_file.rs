//! cargo-fuzz target `key_file`: see `latchkey_daemon::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_daemon::fuzz::key_file(data));
