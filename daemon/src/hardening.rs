//! Process hardening at start: owner-only file modes, no core dumps, not
//! dumpable (which also stops same-user ptrace), the descriptor limit
//! raised so the connection caps, not the kernel, decide who is served; a
//! release build refuses the test suite's switches. Key pages are mlock'd
//! where they are made (vault/crypto.rs).

use crate::vault::crypto;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit now in effect (`u64::MAX` for unlimited).
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            // macOS refuses an unlimited soft limit: keep what we have.
            tracing::debug!(
                "cannot raise RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        } else {
            lim = raised;
        }
    }
    Ok(if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur as u64
    })
}

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
