//! Turns "the model file shrank under a mapped shard" into an error instead
//! of a dead process.
//!
//! A page of a file mapping that now lies past the end of the file raises
//! SIGBUS when touched. Wasmtime 48 on Linux handles SIGSEGV, SIGILL and
//! SIGFPE but not SIGBUS (`runtime/vm/sys/unix/signals.rs`), so a guest load
//! from such a page would kill the process. This handler catches SIGBUS at
//! addresses inside registered shard mappings, maps a zero page over the lost
//! page so the load can complete, and counts the fault; the host checks the
//! count around each guest call and reports that the model file changed.
//! Faults anywhere else go to the previous handler (or the default action).

use std::mem::MaybeUninit;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SLOTS: usize = 1024;
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static FAULTS: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();
static mut PREVIOUS: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();

/// A registered mapping; unregisters itself when dropped.
pub(crate) struct Guard(Option<usize>);

/// Watches `[start, start + len)` for lost file pages. With every slot taken
/// the mapping still works, just without this protection.
pub(crate) fn watch(start: *mut u8, len: usize) -> Guard {
    INSTALL.call_once(install);
    let start = start as usize;
    for slot in 0..SLOTS {
        if ENDS[slot]
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            STARTS[slot].store(start, Ordering::Release);
            ENDS[slot].store(start + len, Ordering::Release);
            return Guard(Some(slot));
        }
    }
    Guard(None)
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            STARTS[slot].store(0, Ordering::Release);
            ENDS[slot].store(0, Ordering::Release);
        }
    }
}

/// How many lost pages guests have touched so far in this process.
pub(crate) fn faults() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

fn install() {
    // SAFETY: installs a SA_SIGINFO handler; the previous action is saved
    // before the new one can run (sigaction does both atomically).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, (&raw mut PREVIOUS).cast());
    }
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    for slot in 0..SLOTS {
        let (start, end) = (
            STARTS[slot].load(Ordering::Acquire),
            ENDS[slot].load(Ordering::Acquire),
        );
        if start <= address && address < end && end != usize::MAX {
            let page = address & !(crate::memory::HOST_PAGE_SIZE - 1);
            // SAFETY: replaces one page inside a mapping this process owns;
            // mmap is async-signal-safe.
            let zero = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    crate::memory::HOST_PAGE_SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if zero != libc::MAP_FAILED {
                FAULTS.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
    }
    // Not ours: hand it on as if we had never been installed.
    // SAFETY: PREVIOUS was written by `install` before this handler could run.
    unsafe {
        let previous = &*(&raw const PREVIOUS).cast::<libc::sigaction>();
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(previous.sa_sigaction);
            handler(signal, info, context);
        } else if previous.sa_sigaction == libc::SIG_IGN || previous.sa_sigaction == libc::SIG_DFL {
            // Restore the default and return: the faulting access repeats and
            // the process ends with SIGBUS, as it would have without us.
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        } else {
            let handler: extern "C" fn(libc::c_int) = std::mem::transmute(previous.sa_sigaction);
            handler(signal);
        }
    }
}
