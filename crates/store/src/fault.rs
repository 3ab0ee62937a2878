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
/// Slot states in `ENDS`: free, or claimed and not (or no longer) valid.
const FREE: usize = 0;
const CHANGING: usize = usize::MAX;
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(FREE) }; SLOTS];
/// Per-slot sequence numbers (a seqlock): odd while the slot's start and end
/// are being written, so the handler reads a start and an end that belong together.
static SEQS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static FAULTS: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();
/// The host's page size, read once before the handler is installed (the
/// handler may not call sysconf).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static mut PREVIOUS: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();

/// A registered mapping; unregisters itself when dropped. Drop it before
/// unmapping the range, so the handler never claims pages that are gone.
pub(crate) struct Guard(usize);

/// The host's page size, from the system (4 KiB on x86-64, often 16 or 64
/// KiB on arm64): mappings and the handler's zero page use it.
pub(crate) fn page_size() -> usize {
    match PAGE_SIZE.load(Ordering::Acquire) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let size = usize::try_from(size)
                .ok()
                .filter(|s| s.is_power_of_two())
                .unwrap_or(4096);
            PAGE_SIZE.store(size, Ordering::Release);
            size
        }
        size => size,
    }
}

/// Watches `[start, start + len)` for lost file pages. Refuses (rather than
/// letting the mapping run unprotected) when every slot is taken.
pub(crate) fn watch(start: *mut u8, len: usize) -> Result<Guard, String> {
    page_size();
    INSTALL.call_once(install);
    let start = start as usize;
    for slot in 0..SLOTS {
        // Claim a free slot; the handler ignores it until its end is set.
        if ENDS[slot]
            .compare_exchange(FREE, CHANGING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            SEQS[slot].fetch_add(1, Ordering::SeqCst);
            STARTS[slot].store(start, Ordering::SeqCst);
            ENDS[slot].store(start + len, Ordering::SeqCst);
            SEQS[slot].fetch_add(1, Ordering::SeqCst);
            return Ok(Guard(slot));
        }
    }
    Err(format!(
        "all {SLOTS} fault-guard slots are in use: too many mapped shard memories in one process; \
         drop some guest instances (or use --load copy)"
    ))
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Under the seqlock: invalidate, clear the start; then free the slot.
        // The handler never sees a start and an end that do not belong together.
        SEQS[self.0].fetch_add(1, Ordering::SeqCst);
        ENDS[self.0].store(CHANGING, Ordering::SeqCst);
        STARTS[self.0].store(0, Ordering::SeqCst);
        SEQS[self.0].fetch_add(1, Ordering::SeqCst);
        ENDS[self.0].store(FREE, Ordering::SeqCst);
    }
}

/// Whether `address` lies in a registered mapping. A slot whose sequence
/// number is odd, or changes while its start and end are read, is skipped
/// (reading the start twice is not enough: a slot can be freed, reused and
/// freed again between the reads).
fn watched(address: usize) -> bool {
    (0..SLOTS).any(|slot| {
        let before = SEQS[slot].load(Ordering::SeqCst);
        let start = STARTS[slot].load(Ordering::SeqCst);
        let end = ENDS[slot].load(Ordering::SeqCst);
        let after = SEQS[slot].load(Ordering::SeqCst);
        before.is_multiple_of(2)
            && before == after
            && end != FREE
            && end != CHANGING
            && start <= address
            && address < end
    })
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
    if watched(address) {
        let page_size = PAGE_SIZE.load(Ordering::Acquire);
        let page = address & !(page_size - 1);
        // SAFETY: replaces one page inside a mapping this process owns (it is
        // registered, and guards are dropped before their mappings go);
        // mmap is async-signal-safe.
        let zero = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_size,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_past_the_last_slot_is_refused_not_unprotected() {
        let base = 1usize << 40;
        let guards: Vec<Result<Guard, String>> = (0..SLOTS + 1)
            .map(|i| watch((base + i * 4096) as *mut u8, 4096))
            .collect();
        // Other tests in this process may hold a few slots: at least the last is refused.
        let refused = guards.iter().filter(|g| g.is_err()).count();
        assert!(
            refused >= 1,
            "every one of {} watches was accepted",
            SLOTS + 1
        );
        let error = guards.iter().find_map(|g| g.as_ref().err()).unwrap();
        assert!(error.contains("slots are in use"), "{error}");
        drop(guards);
        assert!(
            watch(base as *mut u8, 4096).is_ok(),
            "dropped guards free their slots"
        );
    }

    #[test]
    fn registering_and_dropping_never_exposes_a_range_starting_at_zero() {
        // A mapping high in the address space comes and goes while another
        // thread asks about a low address it never covered.
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..1_000_000 {
                    drop(watch((1usize << 44) as *mut u8, 1 << 20));
                }
                stop.store(true, Ordering::Release);
            });
            let mut checks = 0u64;
            while !stop.load(Ordering::Acquire) {
                assert!(!watched(4096), "address 4096 seen as watched");
                checks += 1;
            }
            assert!(checks > 0);
        });
    }

    #[test]
    fn the_page_size_comes_from_the_system() {
        // SAFETY: sysconf has no preconditions.
        let system = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        assert_eq!(page_size(), system);
    }
}
