//! Measurements as ratios against a baseline taken in the same run: mapped vs
//! copied shard memories, and the guest vs the same work native on the host.
//! Used by `shardload bench` and `benches/`; never by timed tests. A client
//! of the store's public API, like any embedder.

pub mod generation;
pub mod sweep;

use std::time::{Duration, Instant};

use anyhow::Result;
use shard_planner::Plan;
use xxhash_rust::xxh64::xxh64;

use shardload_store::{DotProduct, GuestInstance, LoadMode, OpenModel, WeightStore};

/// Best of this many repetitions, after one warm-up: machines are noisy.
const REPEATS: usize = 3;

fn best_of<T>(mut f: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    f()?;
    let mut best = None;
    for _ in 0..REPEATS {
        let started = Instant::now();
        let value = f()?;
        let took = started.elapsed();
        if best.as_ref().is_none_or(|(b, _)| took < *b) {
            best = Some((took, value));
        }
    }
    Ok(best.expect("REPEATS > 0"))
}

/// Time to ready (compile the guest, build every shard memory, instantiate)
/// and the part of it spent building memories, in one load mode.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// Compile + load + instantiate.
    pub ready: Duration,
    /// Building the shard memories (mapping or copying).
    pub load: Duration,
}

/// Time to ready in each load mode, page cache warm.
#[derive(Clone, Copy, Debug)]
pub struct ReadyTimes {
    /// Mapped shard memories.
    pub mmap: Ready,
    /// Copied shard memories.
    pub copy: Ready,
}

/// Measures [`ReadyTimes`] for a plan.
pub fn time_to_ready(plan: &Plan) -> Result<ReadyTimes> {
    let ready = |mode| {
        // The store and guest are returned, so they are torn down after the clock stops.
        best_of(|| {
            let store = WeightStore::new(plan.clone(), mode)?;
            let (guest, timings) = store.instantiate()?;
            Ok((timings.load(), guest, store))
        })
        .map(|(ready, (load, _, _))| Ready { ready, load })
    };
    Ok(ReadyTimes {
        mmap: ready(LoadMode::Mmap)?,
        copy: ready(LoadMode::Copy)?,
    })
}

/// Read throughput over every tensor of a store, guest and native, in GB/s.
#[derive(Clone, Copy, Debug)]
pub struct ReadRates {
    /// Bytes read per pass.
    pub bytes: u64,
    /// Guest XXH64 of every tensor.
    pub guest_xxh64: f64,
    /// Native xxhash-rust XXH64 over the same memory.
    pub native_xxh64: f64,
    /// Guest streaming read (v128 loads, XOR fold).
    pub guest_stream: f64,
    /// Native streaming read with the same fold over the same memory.
    pub native_stream: f64,
}

/// Measures [`ReadRates`]: the guest's exports and the same algorithms run
/// natively over the very same shard memories (page cache warm).
pub fn read_rates(store: &WeightStore) -> Result<ReadRates> {
    let plan = store.plan();
    let tensors: Vec<usize> = (0..plan.tensors.len())
        .filter(|&t| plan.tensors[t].span.bytes > 0)
        .collect();
    let bytes: u64 = tensors.iter().map(|&t| plan.tensors[t].span.bytes).sum();
    let (mut guest, _) = store.instantiate()?;
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;

    let (guest_xxh64, guest_hashes) = best_of(|| {
        tensors
            .iter()
            .map(|&t| guest.xxh64_tensor(t))
            .collect::<Result<Vec<_>>>()
    })?;
    let (guest_stream, guest_folds) = best_of(|| {
        tensors
            .iter()
            .map(|&t| guest.stream_tensor(t))
            .collect::<Result<Vec<_>>>()
    })?;
    let places: Vec<(usize, u64, u64)> = tensors
        .iter()
        .map(|&t| {
            (
                plan.tensors[t].shard as usize,
                plan.tensors[t].offset,
                plan.tensors[t].span.bytes,
            )
        })
        .collect();
    let native =
        |f: &dyn Fn(&[u8]) -> u64, guest: &mut GuestInstance| -> Result<(Duration, Vec<u64>)> {
            best_of(|| {
                Ok(places
                    .iter()
                    .map(|&(shard, offset, len)| {
                        let (store, memory) = guest.shard_memory(shard);
                        f(&memory.data(&*store)[offset as usize..(offset + len) as usize])
                    })
                    .collect())
            })
        };
    let (native_xxh64, native_hashes) = native(&|b| xxh64(b, 0), &mut guest)?;
    let (native_stream, native_folds) = native(&stream_fold, &mut guest)?;
    anyhow::ensure!(
        guest_hashes == native_hashes,
        "guest and native XXH64 disagree"
    );
    anyhow::ensure!(
        guest_folds == native_folds,
        "guest and native stream folds disagree"
    );
    Ok(ReadRates {
        bytes,
        guest_xxh64: rate(guest_xxh64),
        native_xxh64: rate(native_xxh64),
        guest_stream: rate(guest_stream),
        native_stream: rate(native_stream),
    })
}

/// The guest's stream fold, natively: XOR of 16-byte chunks (zero-padded),
/// low half ^ high half; four accumulators so the compiler vectorizes it.
pub fn stream_fold(bytes: &[u8]) -> u64 {
    let mut acc = [0u128; 4];
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        for (lane, chunk) in acc.iter_mut().zip(block.chunks_exact(16)) {
            *lane ^= u128::from_le_bytes(chunk.try_into().expect("16 bytes"));
        }
    }
    let mut folded = acc[0] ^ acc[1] ^ acc[2] ^ acc[3];
    for chunk in blocks.remainder().chunks(16) {
        let mut padded = [0u8; 16];
        padded[..chunk.len()].copy_from_slice(chunk);
        folded ^= u128::from_le_bytes(padded);
    }
    (folded as u64) ^ ((folded >> 64) as u64)
}

/// One model's measurements.
#[derive(Clone, Debug)]
pub struct ModelReport {
    /// The model's name.
    pub model: String,
    /// Total file bytes.
    pub bytes: u64,
    /// Shards in the plan.
    pub shards: usize,
    /// Time to ready in each mode.
    pub ready: ReadyTimes,
    /// Guest and native read rates.
    pub rates: ReadRates,
    /// The guest's matvec dot product.
    pub dot: DotProduct,
    /// Guest and native decode-step matvec rates per type.
    pub decode: Vec<MatvecRate>,
}

/// Plans `path` into `shards` shards and measures it, with the guest's
/// matvec dot product `dot` (`None`: the store's choice).
pub fn measure(
    path: &std::path::Path,
    shards: u32,
    dot: Option<DotProduct>,
) -> Result<ModelReport> {
    let model = OpenModel::open(path)?;
    let plan = model.plan(&shard_planner::PlanOptions {
        shards: Some(shards),
        ..Default::default()
    })?;
    let ready = time_to_ready(&plan)?;
    let store = WeightStore::with_dot_product(plan.clone(), LoadMode::Mmap, dot)?;
    let rates = read_rates(&store)?;
    let decode = decode_step(&model, &store)?;
    Ok(ModelReport {
        model: model.name(),
        bytes: plan.model.bytes,
        shards: plan.shards.len(),
        ready,
        rates,
        dot: store.dot_product(),
        decode,
    })
}

impl std::fmt::Display for ModelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (m, c, r) = (self.ready.mmap, self.ready.copy, self.rates);
        writeln!(
            f,
            "{} ({:.2} GB, {} shards)",
            self.model,
            self.bytes as f64 / 1e9,
            self.shards
        )?;
        writeln!(
            f,
            "  time to ready   mmap {:9.2} ms   copy {:9.2} ms   copy/mmap {:7.1}x",
            ms(m.ready),
            ms(c.ready),
            c.ready.as_secs_f64() / m.ready.as_secs_f64()
        )?;
        writeln!(
            f,
            "    of which load mmap {:9.2} ms   copy {:9.2} ms   copy/mmap {:7.1}x",
            ms(m.load),
            ms(c.load),
            c.load.as_secs_f64() / m.load.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "  xxh64           guest {:6.2} GB/s   native {:6.2} GB/s   guest/native {:5.1}%",
            r.guest_xxh64,
            r.native_xxh64,
            100.0 * r.guest_xxh64 / r.native_xxh64
        )?;
        writeln!(
            f,
            "  stream read     guest {:6.2} GB/s   native {:6.2} GB/s   guest/native {:5.1}%",
            r.guest_stream,
            r.native_stream,
            100.0 * r.guest_stream / r.native_stream
        )?;
        writeln!(
            f,
            "  decode step     matvec over every 2-D weight; {:?} SIMD dot products",
            self.dot
        )?;
        write!(f, "{}", format_decode_step(&self.decode).trim_end())
    }
}

/// Decode-step throughput for one ggml type (or all), in GB/s of weight bytes.
#[derive(Clone, Debug)]
pub struct MatvecRate {
    /// gguf-py's type name, or `all`.
    pub ty: String,
    /// Weight bytes swept.
    pub bytes: u64,
    /// Guest matvec with 1 and 2 threads (one instance per thread).
    pub guest: [f64; 2],
    /// The native matvec (same algorithm) with 1 and 2 threads.
    pub native: [f64; 2],
}

/// One decode step's matvecs, per type: every row of every 2-D weight of the
/// types the guest has kernels for, split by rows across `threads` guest
/// instances (sharing the mapped shards), against the native matvec over the
/// same bytes of the model file's mapping (the same page-cache pages).
pub fn decode_step(model: &OpenModel, store: &WeightStore) -> Result<Vec<MatvecRate>> {
    let plan = store.plan();
    let weights = sweep::weights(plan);
    let mut types: Vec<String> = weights
        .iter()
        .map(|&t| plan.tensors[t].span.ty.clone())
        .collect();
    types.sort();
    types.dedup();
    let mut guests = [store.instantiate()?.0, store.instantiate()?.0];
    let mut rates = Vec::new();
    let mut total = MatvecRate {
        ty: "all".into(),
        bytes: 0,
        guest: [0.0; 2],
        native: [0.0; 2],
    };
    let mut total_time = [[0f64; 2]; 2];
    for ty in types {
        let tensors: Vec<usize> = weights
            .iter()
            .copied()
            .filter(|&t| plan.tensors[t].span.ty == ty)
            .collect();
        let bytes: u64 = tensors.iter().map(|&t| plan.tensors[t].span.bytes).sum();
        let mut rate = MatvecRate {
            ty,
            bytes,
            guest: [0.0; 2],
            native: [0.0; 2],
        };
        for threads in [1, 2] {
            let (guest, _) = best_of(|| sweep_guest(&mut guests[..threads], plan, &tensors))?;
            let (native, _) = best_of(|| sweep_native(model, plan, &tensors, threads))?;
            rate.guest[threads - 1] = bytes as f64 / guest.as_secs_f64() / 1e9;
            rate.native[threads - 1] = bytes as f64 / native.as_secs_f64() / 1e9;
            total_time[0][threads - 1] += guest.as_secs_f64();
            total_time[1][threads - 1] += native.as_secs_f64();
        }
        total.bytes += bytes;
        rates.push(rate);
    }
    let [guest_time, native_time] = total_time;
    total.guest = guest_time.map(|t| total.bytes as f64 / t / 1e9);
    total.native = native_time.map(|t| total.bytes as f64 / t / 1e9);
    rates.push(total);
    Ok(rates)
}

/// Rows `[lo, hi)` of thread `k` of `threads` over `rows` rows.
fn share(rows: u64, k: usize, threads: usize) -> (u64, u64) {
    (
        rows * k as u64 / threads as u64,
        rows * (k as u64 + 1) / threads as u64,
    )
}

fn sweep_guest(guests: &mut [GuestInstance], plan: &Plan, tensors: &[usize]) -> Result<()> {
    let threads = guests.len();
    std::thread::scope(|scope| {
        let workers: Vec<_> = guests
            .iter_mut()
            .enumerate()
            .map(|(k, guest)| {
                scope.spawn(move || -> Result<()> {
                    for &t in tensors {
                        let dims = &plan.tensors[t].span.dims;
                        let (lo, hi) = share(dims[1], k, threads);
                        guest.matvec(t, lo, hi - lo, &sweep::input(dims[0] as usize))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("worker panicked"))
    })
}

fn sweep_native(model: &OpenModel, plan: &Plan, tensors: &[usize], threads: usize) -> Result<()> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                scope.spawn(move || -> Result<()> {
                    for &t in tensors {
                        let span = &plan.tensors[t].span;
                        let ty =
                            shardload_gguf::GgmlType::from_name(&span.ty).expect("a known type");
                        let row_bytes = (span.bytes / span.dims[1]) as usize;
                        let (lo, hi) = share(span.dims[1], k, threads);
                        let start = span.file_offset as usize + lo as usize * row_bytes;
                        let rows = &model.gguf.files[span.file].bytes()
                            [start..start + (hi - lo) as usize * row_bytes];
                        let mut y = vec![0f32; (hi - lo) as usize];
                        shardload_quant::matvec(
                            ty,
                            rows,
                            &sweep::input(span.dims[0] as usize),
                            &mut y,
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("worker panicked"))
    })
}

/// Prints decode-step rates as a table.
pub fn format_decode_step(rates: &[MatvecRate]) -> String {
    let mut out = String::from(
        "                  type      weights   guest 1T  native 1T  ratio   guest 2T  native 2T  ratio\n",
    );
    for r in rates {
        out += &format!(
            "                  {:<8} {:>7.1} MB {:>6.2} GB/s {:>6.2} GB/s {:>5.0}% {:>6.2} GB/s {:>6.2} GB/s {:>5.0}%\n",
            r.ty,
            r.bytes as f64 / 1e6,
            r.guest[0],
            r.native[0],
            100.0 * r.guest[0] / r.native[0],
            r.guest[1],
            r.native[1],
            100.0 * r.guest[1] / r.native[1],
        );
    }
    out
}
