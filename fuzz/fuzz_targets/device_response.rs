//! cargo-fuzz target `device_response`: see `latchkey_daemon::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_daemon::fuzz::device_response(data));
