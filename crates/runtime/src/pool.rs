//! Threads for the forward pass: one guest instance per extra thread, all
//! sharing the first instance's scratch memory (a wasm shared memory), each
//! with its own mappings of the same shards. A matmul's rows are split among
//! the threads; the threads spin between jobs rather than sleep, because a
//! token is hundreds of short jobs and a sleeping hand-off costs ~22 µs each
//! (shared/notes/wasm-threads.md), as much as a matmul.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use shardload_guest::exports;
use shardload_store::GuestInstance;

/// The arguments of the guest's `matmul` export.
pub(crate) type MatmulArgs = (i32, i64, i64, i32, i32, i32, i32, i32);

/// One worker's mailbox: a job, its sequence number, and the result.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<MatmulArgs>>,
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
    pub(crate) fn new(guests: Vec<GuestInstance>) -> Pool {
        let workers = guests
            .into_iter()
            .map(|guest| {
                let slot = Arc::new(Slot::default());
                let mine = Arc::clone(&slot);
                let handle = std::thread::Builder::new()
                    .name("shardload-worker".into())
                    .spawn(move || work(guest, &mine))
                    .expect("spawning a worker thread");
                (slot, Some(handle))
            })
            .collect();
        Pool { workers }
    }

    /// Threads in all, the caller's included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `jobs[0]` on the calling thread's guest and `jobs[k]` on worker
    /// k - 1, and returns when all are done.
    pub(crate) fn matmul(&self, guest: &mut GuestInstance, jobs: &[MatmulArgs]) -> Result<()> {
        for ((slot, _), job) in self.workers.iter().zip(&jobs[1..]) {
            *slot
                .job
                .lock()
                .map_err(|_| anyhow!("worker mailbox poisoned"))? = Some(*job);
            slot.posted.fetch_add(1, Ordering::Release);
        }
        let mine = guest.call(exports::MATMUL, jobs[0], || format!("tensor {}", jobs[0].0));
        let mut first_error = mine.err();
        for (slot, _) in &self.workers[..jobs.len() - 1] {
            let posted = slot.posted.load(Ordering::Relaxed);
            while slot.done.load(Ordering::Acquire) != posted {
                std::hint::spin_loop();
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
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 && idle.elapsed() > Duration::from_millis(50) {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                std::hint::spin_loop();
            }
        }
        seen = slot.posted.load(Ordering::Acquire);
        let job = slot.job.lock().ok().and_then(|j| *j);
        if let Some(args) = job {
            if let Err(error) = guest.call(exports::MATMUL, args, || format!("tensor {}", args.0)) {
                if let Ok(mut e) = slot.error.lock() {
                    *e = Some(error);
                }
            }
        }
        slot.done.store(seen, Ordering::Release);
    }
}
