//! Process hardening at start: owner-only file modes, no core dumps, not
//! dumpable (which also stops same-user ptrace). Key pages are mlock'd
//! where they are made (vault/crypto.rs).

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
