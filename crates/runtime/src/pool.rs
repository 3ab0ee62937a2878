//! Threads for the forward pass: one guest instance per extra thread, all
//! sharing the first instance's scratch memory (a wasm shared memory), each
//! with its own mappings of the same shards. A kernel's work (a matmul's rows,
//! attention's heads) is split among the threads; the threads spin between
//! jobs rather than sleep, because a token is hundreds of short jobs and a
//! sleeping hand-off costs ~22 µs each (shared/notes/wasm-threads.md), as
//! much as a matmul.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use shardload_store::GuestInstance;

/// One thread's share of a kernel: a call on that thread's guest instance.
pub(crate) type Job = Box<dyn FnOnce(&mut GuestInstance) -> Result<()> + Send>;

/// One worker's mailbox: a job, its sequence number, and the result.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    posted: AtomicU64,
    done: AtomicU64,
    error: Mutex<Option<anyhow::Error>>,
    quit: AtomicBool,
}

/// The extra threads of a session (none with `--threads 1`).
pub(crate) struct Pool {
    workers: Vec<(Arc<Slot>, Option<JoinHandle<()>>)>,
}

impl Pool {
    /// Starts one thread per guest instance given.
    pub(crate) fn new(guests: Vec<GuestInstance>) -> Result<Pool> {
        let workers = guests
            .into_iter()
            .map(|guest| {
                let slot = Arc::new(Slot::default());
                let mine = Arc::clone(&slot);
                let handle = std::thread::Builder::new()
                    .name("shardload-worker".into())
                    .spawn(move || work(guest, &mine))?;
                Ok((slot, Some(handle)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pool { workers })
    }

    /// Threads in all, the caller's included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `jobs[0]` on the calling thread's guest and `jobs[k]` on worker
    /// k - 1 (at most [`Pool::threads`] jobs), and returns when all are done,
    /// with the first error if any failed.
    pub(crate) fn run(&self, guest: &mut GuestInstance, mut jobs: Vec<Job>) -> Result<()> {
        let rest = jobs.split_off(1);
        for ((slot, _), job) in self.workers.iter().zip(rest) {
            *slot
                .job
                .lock()
                .map_err(|_| anyhow!("worker mailbox poisoned"))? = Some(job);
            slot.posted.fetch_add(1, Ordering::Release);
        }
        let mine = jobs.pop().map_or(Ok(()), |job| job(guest));
        let mut first_error = mine.err();
        for (slot, _) in &self.workers {
            let posted = slot.posted.load(Ordering::Relaxed);
            let mut spins = 0u32;
            while slot.done.load(Ordering::Acquire) != posted {
                spin_or_yield(&mut spins);
            }
            if let Some(error) = slot.error.lock().ok().and_then(|mut e| e.take()) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (slot, handle) in &mut self.workers {
            slot.quit.store(true, Ordering::Release);
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
    }
}

/// A worker's loop: spin for a job, run it, report. After a while without
/// work (a person typing in `chat`) it naps between checks instead.
fn work(mut guest: GuestInstance, slot: &Slot) {
    let mut seen = 0;
    loop {
        let idle = Instant::now();
        let mut spins = 0u32;
        while slot.posted.load(Ordering::Acquire) == seen {
            if slot.quit.load(Ordering::Acquire) {
                return;
            }
            if spins.is_multiple_of(1024) && idle.elapsed() > Duration::from_millis(50) {
                std::thread::sleep(Duration::from_micros(200));
            }
            spin_or_yield(&mut spins);
        }
        seen = slot.posted.load(Ordering::Acquire);
        let job = slot.job.lock().ok().and_then(|mut j| j.take());
        if let Some(Err(error)) = job.map(|job| job(&mut guest))
            && let Ok(mut e) = slot.error.lock()
        {
            *e = Some(error);
        }
        slot.done.store(seen, Ordering::Release);
    }
}

/// One step of a wait: spin first (a hand-off takes well under a
/// microsecond when every thread has a core), then yield the core on each
/// step, so that more threads than cores (another busy process, or
/// `--threads` above the core count) slow down instead of starving the very
/// thread being waited for.
fn spin_or_yield(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if *spins < 4096 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
