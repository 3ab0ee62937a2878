//! Threads for the forward pass: one guest instance per extra thread, all
//! sharing the first instance's scratch memory (a wasm shared memory), each
//! with its own mappings of the same shards. For each batch every thread
//! enters the guest's `forward` export once; inside, the threads split each
//! operation and meet at the guest's own barriers, so the host hands off
//! once per batch, not once per operation. Between batches an idle worker
//! spins briefly (the next token usually follows within microseconds), then
//! parks: no busy core while nothing runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use shardload_guest::exports;
use shardload_store::GuestInstance;

/// How long an idle worker spins for the next batch before parking.
const SPIN_BEFORE_PARKING: Duration = Duration::from_micros(200);

/// What a worker runs: the program's scratch offset and its barrier's.
#[derive(Default)]
struct Mailbox {
    program: AtomicUsize,
    barrier: AtomicUsize,
    posted: AtomicU64,
    done: AtomicU64,
    error: std::sync::Mutex<Option<anyhow::Error>>,
    quit: AtomicBool,
}

struct Worker {
    mailbox: Arc<Mailbox>,
    handle: Option<JoinHandle<()>>,
}

/// The extra threads of a session (none with `--threads 1`).
pub(crate) struct Pool {
    workers: Vec<Worker>,
}

impl Pool {
    /// Starts one thread per guest instance given; worker k runs as thread k + 1.
    pub(crate) fn new(guests: Vec<GuestInstance>) -> Result<Pool> {
        let threads = guests.len() + 1;
        let workers = guests
            .into_iter()
            .enumerate()
            .map(|(k, guest)| {
                let mailbox = Arc::new(Mailbox::default());
                let mine = Arc::clone(&mailbox);
                let handle = std::thread::Builder::new()
                    .name("shardload-worker".into())
                    .spawn(move || work(guest, k + 1, threads, &mine))?;
                Ok(Worker {
                    mailbox,
                    handle: Some(handle),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pool { workers })
    }

    /// Threads in all, the caller's included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs the program at scratch offset `program` on every thread (thread 0
    /// on the caller's `guest`) and returns when all have left it, with the
    /// first thread's error if any failed (the others are aborted through
    /// the barrier at `barrier`, which is then reset).
    pub(crate) fn forward(
        &self,
        guest: &mut GuestInstance,
        program: usize,
        barrier: usize,
    ) -> Result<()> {
        for worker in &self.workers {
            let mailbox = &worker.mailbox;
            mailbox.program.store(program, Ordering::Relaxed);
            mailbox.barrier.store(barrier, Ordering::Relaxed);
            mailbox.posted.fetch_add(1, Ordering::Release);
            if let Some(handle) = &worker.handle {
                handle.thread().unpark();
            }
        }
        let mut first_error = forward(guest, program, barrier, 0, self.threads()).err();
        let mut aborted = first_error.is_some();
        for worker in &self.workers {
            let mailbox = &worker.mailbox;
            let posted = mailbox.posted.load(Ordering::Relaxed);
            let mut spins = 0u32;
            while mailbox.done.load(Ordering::Acquire) != posted {
                spins = spins.wrapping_add(1);
                if spins < 4096 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if let Some(error) = mailbox.error.lock().ok().and_then(|mut e| e.take()) {
                aborted = true;
                // A thread that saw the abort reports that; the real cause wins.
                if first_error.as_ref().is_none_or(|e| e.is::<Aborted>()) {
                    first_error = Some(error);
                }
            }
        }
        if aborted {
            guest.reset_barrier(barrier);
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.mailbox.quit.store(true, Ordering::Release);
            if let Some(handle) = worker.handle.take() {
                handle.thread().unpark();
                let _ = handle.join();
            }
        }
    }
}

/// A thread returned from `forward` because another thread failed.
#[derive(Debug)]
struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the forward pass was aborted because another thread failed")
    }
}

impl std::error::Error for Aborted {}

/// One thread's `forward` call; a failure raises the barrier's abort flag
/// so that the other threads return too.
fn forward(
    guest: &mut GuestInstance,
    program: usize,
    barrier: usize,
    thread: usize,
    threads: usize,
) -> Result<()> {
    let args = (program as i32, thread as i32, threads as i32);
    match guest.call(exports::FORWARD, args, || format!("thread {thread}")) {
        Ok((0,)) => Ok(()),
        Ok(_) => Err(anyhow!(Aborted)),
        Err(error) => {
            guest.abort_barrier(barrier)?;
            Err(error)
        }
    }
}

/// A worker's loop: wait for a batch (spinning, then parked), run its share, report.
fn work(mut guest: GuestInstance, thread: usize, threads: usize, mailbox: &Mailbox) {
    let mut seen = 0;
    loop {
        let idle = Instant::now();
        while mailbox.posted.load(Ordering::Acquire) == seen {
            if mailbox.quit.load(Ordering::Acquire) {
                return;
            }
            if idle.elapsed() < SPIN_BEFORE_PARKING {
                std::hint::spin_loop();
            } else {
                std::thread::park();
            }
        }
        seen = mailbox.posted.load(Ordering::Acquire);
        let (program, barrier) = (
            mailbox.program.load(Ordering::Relaxed),
            mailbox.barrier.load(Ordering::Relaxed),
        );
        if let Err(error) = forward(&mut guest, program, barrier, thread, threads)
            && let Ok(mut e) = mailbox.error.lock()
        {
            *e = Some(error);
        }
        mailbox.done.store(seen, Ordering::Release);
    }
}
