//! cargo-fuzz target `revocation_response`: see `latchkey_daemon::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_daemon::fuzz::revocation_response(data));
