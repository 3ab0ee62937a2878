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
            // The thread's own error is the one to report, even if waking
            // the others failed too.
            let _ = guest.abort_barrier(barrier);
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
        // A panic must still release the other threads and the host.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            forward(&mut guest, program, barrier, thread, threads)
        }));
        let result = run.unwrap_or_else(|_| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                guest.abort_barrier(barrier)
            }));
            Err(anyhow!("worker thread {thread} panicked"))
        });
        if let Err(error) = result
            && let Ok(mut e) = mailbox.error.lock()
        {
            *e = Some(error);
        }
        mailbox.done.store(seen, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_planner::PlanOptions;
    use shardload_guest::program::{self as abi, OP_BYTES, Opcode, header};
    use shardload_store::{LoadMode, OpenModel, WeightStore};

    /// A raw program of two operations (embed two tokens, scale them) on
    /// SmolLM2, with the token ids given: the embedding's rows are split one
    /// per thread, so a bad id fails in one thread only.
    fn embed_program(
        guest: &mut GuestInstance,
        store: &WeightStore,
        ids: [u32; 2],
    ) -> (usize, usize) {
        let embd = store
            .plan()
            .tensors
            .iter()
            .position(|t| t.span.name == "token_embd.weight")
            .unwrap();
        let width = store.plan().tensors[embd].span.dims[0] as u32;
        let at = guest.scratch_free().next_multiple_of(64);
        let batch = at + header::SIZE + 2 * OP_BYTES;
        let barrier = (batch + abi::batch::SIZE).next_multiple_of(64);
        let buffer = barrier + 64;
        let head = abi::Header {
            ops: 2,
            ops_at: (at + header::SIZE) as u32,
            batch_at: batch as u32,
            barrier_at: barrier as u32,
            ..abi::Header::default()
        };
        let mut bytes = head.encode().to_vec();
        bytes.extend_from_slice(&abi::encode_op(
            Opcode::Embed,
            &[embd as u32, buffer as u32, width],
        ));
        bytes.extend_from_slice(&abi::encode_op(
            Opcode::Scale,
            &[buffer as u32, width, 2f32.to_bits()],
        ));
        // The batch: two tokens, with these ids.
        let mut descriptor = vec![0u8; abi::batch::SIZE];
        descriptor[abi::batch::TOKENS..][..4].copy_from_slice(&2u32.to_le_bytes());
        for (k, id) in ids.iter().enumerate() {
            descriptor[abi::batch::IDS + 4 * k..][..4].copy_from_slice(&id.to_le_bytes());
        }
        bytes.extend_from_slice(&descriptor);
        bytes.resize(buffer + 2 * width as usize * 4 - at, 0);
        guest.write_bytes(at, &bytes).unwrap();
        (at, barrier)
    }

    #[test]
    fn a_thread_that_fails_aborts_the_others_which_return_and_the_next_run_works() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        let model = OpenModel::open(std::path::Path::new(path)).unwrap();
        let store =
            WeightStore::new(model.plan(&PlanOptions::default()).unwrap(), LoadMode::Mmap).unwrap();
        let (mut guest, _) = store.instantiate().unwrap();
        let pool = Pool::new(vec![store.instantiate_sharing(&guest).unwrap()]).unwrap();
        // Token 1 (thread 1's) is past the vocabulary: its embed traps.
        let (program, barrier) = embed_program(&mut guest, &store, [1, u32::MAX >> 1]);
        let error = pool.forward(&mut guest, program, barrier).unwrap_err();
        assert!(
            !error.is::<Aborted>(),
            "the real error is reported: {error:#}"
        );
        assert!(format!("{error:#}").contains("thread 1"), "{error:#}");
        // The barrier was reset: the same threads run a good program.
        let (program, barrier) = embed_program(&mut guest, &store, [1, 2]);
        pool.forward(&mut guest, program, barrier).unwrap();
        pool.forward(&mut guest, program, barrier).unwrap();
    }
}
