//! Where keys live: fixed 32-byte slots in page-aligned anonymous mappings
//! that are `mlock`ed once and never unlocked (locks do not stack per page,
//! so unlocking one key's bytes would unlock its neighbours'), and marked
//! `MADV_DONTDUMP`. A slot is zeroized when it is given back.

use super::KEY_LEN;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use zeroize::Zeroize;

/// One slot of a region; owned by at most one `KeyBytes` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot(pub(super) NonNull<[u8; KEY_LEN]>);

// SAFETY: a slot is plain memory in a mapping that lives as long as the
// process; whoever holds it owns it alone, like a `Box`.
unsafe impl Send for Slot {}
// SAFETY: shared access only reads (`KeyBytes::bytes`).
unsafe impl Sync for Slot {}

/// Whether the warning that key memory is not locked was logged: it is
/// logged once per process, not once per region.
static WARNED: AtomicBool = AtomicBool::new(false);

/// The daemon's pool. One page holds 128 slots (4 KiB pages); a daemon
/// holds at most eight keys at once: the DEK and its audit key, the new
/// DEK and its audit key during rekey, the old and new KEK of a
/// passphrase change (or the passphrase and keyring KEKs of `init`), one
/// KEK being tried at unlock and one read from the keyring. The pool grows by another locked page if ever
/// exceeded (the in-process tests run many daemons in one process).
static POOL: Mutex<Pool> = Mutex::new(Pool::new());

pub(super) fn take() -> Slot {
    POOL.lock().unwrap_or_else(PoisonError::into_inner).take()
}

pub(super) fn give(slot: Slot) {
    POOL.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .give(slot);
}

/// A page-aligned mapping that slots are cut from. Only the tests read
/// it back (to check the pages stay locked and zeroized).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct Region {
    pub(super) base: usize,
    pub(super) len: usize,
    /// `mlock` succeeded (else the warning was logged).
    pub(super) locked: bool,
}

/// Free slots and the regions they come from. Regions are never
/// unmapped: a slot stays valid memory for the life of the process.
pub(super) struct Pool {
    pub(super) free: Vec<Slot>,
    pub(super) regions: Vec<Region>,
}

impl Pool {
    pub(super) const fn new() -> Pool {
        Pool {
            free: Vec::new(),
            regions: Vec::new(),
        }
    }

    /// A zeroed slot: fresh anonymous pages are zero, and given-back
    /// slots were zeroized.
    pub(super) fn take(&mut self) -> Slot {
        if self.free.is_empty() {
            self.grow();
        }
        self.free.pop().expect("grow added slots")
    }

    /// Zeroizes `slot` and makes it free again.
    pub(super) fn give(&mut self, slot: Slot) {
        // SAFETY: the caller owned the slot alone and gives it up here;
        // its page is mapped for the life of the process.
        unsafe { (*slot.0.as_ptr()).zeroize() };
        self.free.push(slot);
    }

    /// Maps, locks and marks one more page, and adds its slots.
    fn grow(&mut self) {
        let len = page_size();
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            // Out of address space or memory: as for any allocation.
            let layout = std::alloc::Layout::from_size_align(len, len)
                .expect("the page size is a power of two");
            std::alloc::handle_alloc_error(layout);
        }
        #[cfg(target_os = "linux")]
        // SAFETY: `base..base + len` is the mapping just made. Failure
        // only means the keys could appear in a core dump, which
        // `hardening` also prevents (RLIMIT_CORE 0, not dumpable).
        unsafe {
            libc::madvise(base, len, libc::MADV_DONTDUMP);
        }
        // SAFETY: as above; mlock only pins the pages.
        let locked = unsafe { libc::mlock(base, len) } == 0;
        if !locked && !WARNED.swap(true, Ordering::Relaxed) {
            let error = std::io::Error::last_os_error();
            tracing::warn!(
                "key memory is not locked in RAM and could be swapped to disk (mlock: {error}); \
                 raise the locked-memory limit RLIMIT_MEMLOCK to at least 64 KiB \
                 (`ulimit -l 64`, or LimitMEMLOCK=64K in a systemd unit)"
            );
        }
        let base = base as usize;
        self.regions.push(Region { base, len, locked });
        // Highest first, so slots are handed out in address order.
        for offset in (0..len / KEY_LEN).rev() {
            let ptr = (base + offset * KEY_LEN) as *mut [u8; KEY_LEN];
            self.free.push(Slot(
                NonNull::new(ptr).expect("mmap returned a non-null mapping"),
            ));
        }
    }
}

/// The system's page size (4 KiB on most machines, 16 KiB on some ARM).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && *s >= KEY_LEN)
        .unwrap_or(4096)
}
