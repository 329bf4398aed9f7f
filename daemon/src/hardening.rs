//! Process hardening at start: owner-only file modes, no core dumps, not
//! dumpable (which also stops same-user ptrace); a release build refuses
//! the test suite's switches. Key pages are mlock'd where they are made
//! (vault/crypto.rs).

use crate::vault::crypto;

/// A release daemon refuses to start while a test-only switch
/// (`LATCHKEY_INSECURE_TEST_KDF`) is set; the error says to unset it.
pub fn refuse_test_switches() -> Result<(), String> {
    let value = std::env::var_os(crypto::INSECURE_TEST_KDF_ENV);
    crypto::test_kdf_switch(value.as_deref(), crypto::RELEASE_BUILD).map(|_| ())
}

/// Applies what the OS allows and returns what it refused, for the log.
pub fn harden_process() -> Vec<String> {
    let mut refused = Vec::new();
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        refused.push(format!(
            "RLIMIT_CORE=0: {}",
            std::io::Error::last_os_error()
        ));
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes one integer argument.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            refused.push(format!(
                "PR_SET_DUMPABLE=0: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    refused
}
