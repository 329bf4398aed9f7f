//! cargo-fuzz target `token_response`: see `latchkey_daemon::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_daemon::fuzz::token_response(data));
