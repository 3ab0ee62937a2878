//! The weight store: one compiled guest, and any number of guest instances,
//! each with its own shard memories over the same model files.

use std::cell::UnsafeCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use shard_planner::{Plan, Router, WASM_PAGE};
use shardload_gguf::GgmlType;
use shardload_guest::exports::{self, EXPORTS, Export};
use shardload_guest::{DotProduct, abi};
use wasmtime::{
    Config, Engine, Func, Linker, Memory, MemoryType, Module, SharedMemory, Store, WasmParams,
    WasmResults,
};
use xxhash_rust::xxh64::Xxh64;

use crate::cache::{CompileSource, GuestCache};
use crate::fault;
use crate::memory::{LoadMode, MappedCreator, MemoryBuilder, Progress};
use crate::usage::available_memory;

/// A planned model ready to instantiate guests over: the engine, the compiled
/// guest, the plan with its routing tables, and the open model files.
pub struct WeightStore {
    engine: Engine,
    memories: MemoryBuilder,
    guest: Module,
    plan: Plan,
    tables: Vec<u8>,
    /// The first scratch byte past `tables`, where kernels may write.
    scratch_free: usize,
    files: Vec<Arc<File>>,
    mode: LoadMode,
    dot: DotProduct,
    source: CompileSource,
}

/// Where the time to make one guest instance went.
#[derive(Clone, Debug, Default)]
pub struct InstanceTimings {
    /// Building each shard's memory (mapping or copying), in shard order.
    pub load_per_shard: Vec<Duration>,
    /// Instantiating the guest and writing its routing tables.
    pub instantiate: Duration,
}

impl InstanceTimings {
    /// Time spent building all shard memories.
    pub fn load(&self) -> Duration {
        self.load_per_shard.iter().sum()
    }
}

/// The ggml types a plan's guest is generated for (those of its tensors,
/// by id): every host that generates the guest for a plan (wasmtime here,
/// the browser through `shardload web`) asks for the same module.
pub fn guest_types(plan: &Plan) -> Vec<GgmlType> {
    let mut types: Vec<GgmlType> = plan
        .tensors
        .iter()
        .filter_map(|t| GgmlType::from_name(&t.span.ty))
        .collect();
    types.sort_unstable_by_key(|t| t.id());
    types.dedup();
    types
}

/// The routing and tensor tables a guest for this plan reads from scratch
/// offset 0 (guest/README.md): what every host writes before the first call.
pub fn routing_tables(plan: &Plan) -> Vec<u8> {
    let tensors: Vec<abi::TensorLoc> = plan
        .tensors
        .iter()
        .map(|t| abi::TensorLoc {
            shard: t.shard,
            offset: t.offset,
            bytes: t.span.bytes,
            ggml_type: GgmlType::from_name(&t.span.ty).map_or(u32::MAX, GgmlType::id),
            row_len: t.span.dims.first().copied().unwrap_or(0),
        })
        .collect();
    abi::encode_tables(Router::new(plan).routes(), &tensors)
}

impl WeightStore {
    /// Compiles the guest for the plan's shard count (or loads it from the
    /// default [`GuestCache`]) and opens the model files. The plan must
    /// already have been checked against the model. matvec uses relaxed
    /// SIMD's dot product if this engine compiles it, else plain SIMD128.
    pub fn new(plan: Plan, mode: LoadMode) -> Result<WeightStore> {
        WeightStore::with_options(plan, mode, None, &GuestCache::default())
    }

    /// [`WeightStore::new`] with matvec's dot product chosen by the caller
    /// (`None`: the fastest this engine compiles), so both can be compared.
    pub fn with_dot_product(
        plan: Plan,
        mode: LoadMode,
        dot: Option<DotProduct>,
    ) -> Result<WeightStore> {
        WeightStore::with_options(plan, mode, dot, &GuestCache::default())
    }

    /// [`WeightStore::with_dot_product`] with the compiled guest kept in
    /// `cache` (or compiled every time with [`GuestCache::Off`]).
    pub fn with_options(
        plan: Plan,
        mode: LoadMode,
        dot: Option<DotProduct>,
        cache: &GuestCache,
    ) -> Result<WeightStore> {
        let creator = Arc::new(MappedCreator::default());
        let mut config = Config::new();
        config
            .wasm_memory64(true)
            .wasm_multi_memory(true)
            .wasm_simd(true)
            .wasm_relaxed_simd(true)
            .wasm_threads(true)
            .shared_memory(true);
        config.with_host_memory(creator.clone());
        let engine = wasm(Engine::new(&config)).context("cannot configure wasmtime")?;
        let shards = u32::try_from(plan.shards.len()).context("too many shards")?;
        let types = guest_types(&plan);
        let compile = |dot| -> Result<(Module, CompileSource)> {
            let generate = || {
                shardload_guest::guest_wasm(
                    &shardload_guest::ShardMemories::Private(shards),
                    &types,
                    dot,
                )
                .map_err(|e| anyhow!("cannot generate the guest: {e}"))
            };
            let key = shardload_guest::guest_key(
                &shardload_guest::ShardMemories::Private(shards),
                &types,
                dot,
            );
            cache
                .module(&engine, key, generate)
                .context("cannot compile the guest")
        };
        let ((guest, source), dot) = match dot {
            Some(dot) => (compile(dot)?, dot),
            None => match compile(DotProduct::Relaxed) {
                Ok(guest) => (guest, DotProduct::Relaxed),
                Err(relaxed) => match compile(DotProduct::Plain) {
                    Ok(guest) => (guest, DotProduct::Plain),
                    Err(plain) => {
                        return Err(plain
                            .context(format!("the relaxed-SIMD guest failed first: {relaxed:#}")));
                    }
                },
            },
        };
        let files = plan
            .model
            .files
            .iter()
            .map(|f| {
                File::open(&f.path)
                    .map(Arc::new)
                    .with_context(|| format!("cannot open {}", f.path))
            })
            .collect::<Result<Vec<_>>>()?;
        let tables = routing_tables(&plan);
        let scratch_free =
            abi::scratch_free_offset(Router::new(&plan).routes().len(), plan.tensors.len());
        Ok(WeightStore {
            engine,
            memories: MemoryBuilder::new(creator),
            guest,
            plan,
            tables,
            scratch_free,
            files,
            mode,
            dot,
            source,
        })
    }

    /// Whether the guest was compiled or loaded from the cache.
    pub fn compile_source(&self) -> CompileSource {
        self.source
    }

    /// The integer dot product the guest's matvec was compiled with.
    pub fn dot_product(&self) -> DotProduct {
        self.dot
    }

    /// Reports bytes copied while building memories in [`LoadMode::Copy`]
    /// (for a progress bar); mapping is too quick to need one.
    pub fn set_progress(&mut self, progress: Progress) {
        self.memories.progress = Some(progress);
    }

    /// The plan the store was built from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Makes one guest instance in a store of its own, with its own shard
    /// memories and a new scratch memory.
    pub fn instantiate(&self) -> Result<(GuestInstance, InstanceTimings)> {
        self.instantiate_with(None)
    }

    /// Another guest instance over the same scratch memory as `other` (its
    /// activations and KV cache), with shard memories of its own: one per
    /// thread, so threads split a kernel's work without copying anything.
    pub fn instantiate_sharing(&self, other: &GuestInstance) -> Result<GuestInstance> {
        self.instantiate_with(Some(other.scratch.clone()))
            .map(|(guest, _)| guest)
    }

    fn instantiate_with(
        &self,
        shared: Option<SharedMemory>,
    ) -> Result<(GuestInstance, InstanceTimings)> {
        if self.mode == LoadMode::Copy {
            let needed: u64 = self.plan.shards.iter().map(|s| s.bytes).sum();
            if let Some(available) = available_memory().filter(|&a| needed > a) {
                let gib = |bytes: u64| bytes as f64 / f64::from(1 << 30);
                bail!(
                    "copying the model needs {:.1} GiB of memory but only {:.1} GiB are available; \
                     use --load mmap, which maps the file instead",
                    gib(needed),
                    gib(available)
                );
            }
        }
        let mut store = Store::new(&self.engine, ());
        let mut timings = InstanceTimings::default();
        let mut shards = Vec::with_capacity(self.plan.shards.len());
        for shard in &self.plan.shards {
            let started = Instant::now();
            let memory = self
                .memories
                .build(&self.engine, &mut store, shard, &self.files, self.mode)
                .with_context(|| format!("shard {}", shard.index))?;
            timings.load_per_shard.push(started.elapsed());
            shards.push(memory);
        }
        let started = Instant::now();
        let pages = (self.tables.len() as u64)
            .div_ceil(WASM_PAGE)
            .max(abi::SCRATCH_MIN_PAGES);
        // A new scratch gets the routing tables; a shared one has them already.
        let scratch = match shared {
            Some(scratch) => scratch,
            None => {
                let ty = MemoryType::shared(pages as u32, abi::SCRATCH_MAX_PAGES as u32);
                let scratch = wasm(SharedMemory::new(&self.engine, ty))
                    .context("cannot allocate guest scratch memory")?;
                write_shared(&scratch, 0, &self.tables);
                scratch
            }
        };
        let mut linker = Linker::new(&self.engine);
        linker.define(
            &mut store,
            abi::IMPORT_MODULE,
            abi::SCRATCH_IMPORT,
            scratch.clone(),
        )?;
        for (k, memory) in shards.iter().enumerate() {
            linker.define(
                &mut store,
                abi::IMPORT_MODULE,
                &abi::shard_import(k as u32),
                *memory,
            )?;
        }
        linker.func_wrap(abi::IMPORT_MODULE, abi::CLOCK_IMPORT, || {
            CLOCK_ORIGIN.elapsed().as_nanos() as f64
        })?;
        let instance = linker.instantiate(&mut store, &self.guest)?;
        let funcs = EXPORTS
            .iter()
            .map(|e| {
                instance
                    .get_func(&mut store, e.name)
                    .ok_or_else(|| anyhow!("the guest has no export {}", e.name))
            })
            .collect::<Result<Vec<Func>>>()?;
        let guest = GuestInstance {
            funcs,
            scratch,
            scratch_free: self.scratch_free,
            types: self
                .plan
                .tensors
                .iter()
                .map(|t| (t.span.ty.clone(), t.span.dims.clone()))
                .collect(),
            names: self
                .plan
                .tensors
                .iter()
                .map(|t| t.span.name.clone())
                .collect(),
            shards,
            store,
        };
        timings.instantiate = started.elapsed();
        Ok((guest, timings))
    }

    /// XXH64 (seed 0) of a tensor's bytes, computed on the host from the file
    /// with `pread`: the reference the guest's hash is checked against, and
    /// safe (an error, not a SIGBUS) if the file shrinks meanwhile.
    pub fn host_xxh64(&self, tensor: usize) -> Result<u64> {
        let span = &self
            .plan
            .tensors
            .get(tensor)
            .ok_or_else(|| anyhow!("no tensor {tensor}"))?
            .span;
        let path = &self.plan.model.files[span.file].path;
        read_xxh64(&self.files[span.file], path, span, &mut Vec::new())
    }
}

/// The host's XXH64 (seed 0) of every tensor of a plan, read from its files
/// with `pread` (as [`WeightStore::host_xxh64`]): the checksum list a host
/// without the files (a browser tab) verifies its guest's hashes against.
/// `progress` gets the bytes read after each tensor.
pub fn tensor_checksums(plan: &Plan, progress: &dyn Fn(u64)) -> Result<Vec<u64>> {
    let files = plan
        .model
        .files
        .iter()
        .map(|f| File::open(&f.path).with_context(|| format!("cannot open {}", f.path)))
        .collect::<Result<Vec<_>>>()?;
    let mut buffer = Vec::new();
    plan.tensors
        .iter()
        .map(|t| {
            let path = &plan.model.files[t.span.file].path;
            let hash = read_xxh64(&files[t.span.file], path, &t.span, &mut buffer)?;
            progress(t.span.bytes);
            Ok(hash)
        })
        .collect()
}

/// XXH64 of a tensor's bytes, read from its file in 8 MiB pieces.
fn read_xxh64(
    file: &File,
    path: &str,
    span: &shard_planner::TensorSpan,
    buffer: &mut Vec<u8>,
) -> Result<u64> {
    let mut hash = Xxh64::new(0);
    buffer.resize((8 << 20).min(span.bytes as usize), 0);
    let mut done = 0u64;
    while done < span.bytes {
        let n = buffer.len().min((span.bytes - done) as usize);
        file.read_exact_at(&mut buffer[..n], span.file_offset + done)
            .with_context(|| {
                format!(
                    "cannot read tensor {} from {path} (did the file change?)",
                    span.name
                )
            })?;
        hash.update(&buffer[..n]);
        done += n as u64;
    }
    Ok(hash.digest())
}

/// One guest instance over its own shard memories.
pub struct GuestInstance {
    store: Store<()>,
    scratch: SharedMemory,
    /// Where kernels may write in scratch: past the routing tables.
    scratch_free: usize,
    /// Each tensor's type name and dims.
    types: Vec<(String, Vec<u64>)>,
    /// Every export of [`EXPORTS`], in its order.
    funcs: Vec<Func>,
    shards: Vec<Memory>,
    names: Vec<String>,
}

impl GuestInstance {
    /// The guest's XXH64 (seed 0) of a tensor, read in place from its shard.
    pub fn xxh64_tensor(&mut self, tensor: usize) -> Result<u64> {
        let what = self.tensor_name(tensor)?;
        let (h,) = self.call(exports::XXH64_TENSOR, (tensor_id(tensor)?,), || what)?;
        Ok(h as u64)
    }

    /// Streams a tensor's bytes through SIMD loads in the guest (the bandwidth probe).
    pub fn stream_tensor(&mut self, tensor: usize) -> Result<u64> {
        let what = self.tensor_name(tensor)?;
        let (h,) = self.call(exports::STREAM_TENSOR, (tensor_id(tensor)?,), || what)?;
        Ok(h as u64)
    }

    /// Rows `[first_row, first_row + rows)` of a tensor as f32, dequantized by
    /// the guest from its shard memory into scratch. Types the guest has no
    /// kernel for are refused by name, never answered with wrong numbers.
    pub fn dequantize(&mut self, tensor: usize, first_row: u64, rows: u64) -> Result<Vec<f32>> {
        let (name, row_len) = self.kernel_tensor(tensor)?;
        let elements = usize::try_from(rows.saturating_mul(row_len)).context("too many rows")?;
        let out = self.scratch_free;
        self.ensure_scratch(out + elements * 4)?;
        let args = (
            tensor_id(tensor)?,
            first_row as i64,
            rows as i64,
            out as i32,
        );
        self.call(exports::DEQUANTIZE, args, || {
            format!("tensor {name} rows {first_row}..+{rows}")
        })?;
        Ok(self.read_f32s(out, elements))
    }

    /// `y = W[first_row..first_row + rows] . x`, computed by the guest from
    /// the weights in place (`x` has one element per column of W).
    pub fn matvec(
        &mut self,
        tensor: usize,
        first_row: u64,
        rows: u64,
        x: &[f32],
    ) -> Result<Vec<f32>> {
        let (name, row_len) = self.kernel_tensor(tensor)?;
        if x.len() as u64 != row_len {
            bail!(
                "tensor {name} has rows of {row_len} elements, x has {}",
                x.len()
            );
        }
        let (x_at, tmp_at) = (self.scratch_free, self.scratch_free + x.len() * 4);
        let y_at = tmp_at + x.len() * 4;
        self.ensure_scratch(y_at + usize::try_from(rows).context("too many rows")? * 4)?;
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_shared(&self.scratch, x_at, &bytes);
        let args = (
            tensor_id(tensor)?,
            first_row as i64,
            rows as i64,
            x_at as i32,
            y_at as i32,
            tmp_at as i32,
        );
        self.call(exports::MATVEC, args, || {
            format!("tensor {name} rows {first_row}..+{rows}")
        })?;
        Ok(self.read_f32s(y_at, rows as usize))
    }

    fn tensor_name(&self, tensor: usize) -> Result<String> {
        self.names
            .get(tensor)
            .map(|n| format!("tensor {n}"))
            .ok_or_else(|| anyhow!("no tensor {tensor}"))
    }

    /// A tensor's name and row length, if the guest has kernels for its type.
    fn kernel_tensor(&self, tensor: usize) -> Result<(String, u64)> {
        let name = self
            .names
            .get(tensor)
            .ok_or_else(|| anyhow!("no tensor {tensor}"))?;
        let (ty, dims) = &self.types[tensor];
        if !GgmlType::from_name(ty).is_some_and(|t| shardload_guest::KERNEL_TYPES.contains(&t)) {
            bail!("unsupported type {ty} in tensor {name}: the guest has no kernel for it");
        }
        Ok((name.clone(), dims.first().copied().unwrap_or(0)))
    }

    /// The first scratch byte past the routing tables: where a caller's
    /// activations, caches and kernel buffers may go.
    pub fn scratch_free(&self) -> usize {
        self.scratch_free
    }

    /// Copies f32 values into scratch at byte offset `at` (growing it as needed).
    pub fn write_f32s(&mut self, at: usize, values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(at, &bytes)
    }

    /// Copies bytes into scratch at byte offset `at` (growing it as needed):
    /// how a host writes a program and its batches.
    pub fn write_bytes(&mut self, at: usize, bytes: &[u8]) -> Result<()> {
        self.ensure_scratch(at + bytes.len())?;
        write_shared(&self.scratch, at, bytes);
        Ok(())
    }

    /// Raises the abort flag of the program barrier at scratch offset `at`
    /// and wakes every thread parked on it (guest/README.md, "The program"):
    /// what a thread whose call failed does, so the others return instead
    /// of waiting for it forever.
    pub fn abort_barrier(&self, at: usize) -> Result<()> {
        use shardload_guest::program::barrier;
        self.atomic(at + barrier::ABORT).store(1, Ordering::SeqCst);
        self.atomic(at + barrier::GENERATION)
            .fetch_add(1, Ordering::SeqCst);
        self.scratch
            .atomic_notify((at + barrier::GENERATION) as u64, u32::MAX)
            .map_err(anyhow::Error::from)
            .context("cannot wake the guest's threads")?;
        Ok(())
    }

    /// Clears the barrier at `at` after an aborted run, once every thread has
    /// returned, so the next run starts from no arrivals and no abort.
    pub fn reset_barrier(&self, at: usize) {
        use shardload_guest::program::barrier;
        self.atomic(at + barrier::COUNT).store(0, Ordering::SeqCst);
        self.atomic(at + barrier::ABORT).store(0, Ordering::SeqCst);
    }

    /// The aligned scratch word at `at` as an atomic, shared with the guest's threads.
    fn atomic(&self, at: usize) -> &AtomicU32 {
        let cells = &self.scratch.data()[at..at + 4];
        assert!(at.is_multiple_of(4), "unaligned atomic at {at}");
        // SAFETY: four bytes of the shared memory (bounds checked above),
        // 4-aligned (the memory's base is page-aligned); the guest accesses
        // this word only with wasm atomics, which are these same atomics.
        unsafe { &*UnsafeCell::raw_get(cells.as_ptr()).cast::<AtomicU32>() }
    }

    /// Grows scratch so that bytes `[0, end)` exist: callers lay out their
    /// buffers first, then grow once.
    pub fn ensure_scratch(&mut self, end: usize) -> Result<()> {
        let have = self.scratch.data_size();
        if end > have {
            let pages = (end - have).div_ceil(WASM_PAGE as usize) as u64;
            wasm(self.scratch.grow(pages)).context("cannot grow scratch")?;
        }
        Ok(())
    }

    /// `count` f32 values from scratch at byte offset `at` (which must exist).
    pub fn read_f32s(&self, at: usize, count: usize) -> Vec<f32> {
        self.read_bytes(at, count * 4)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// `len` bytes of scratch from byte offset `at` (which must exist).
    pub fn read_bytes(&self, at: usize, len: usize) -> Vec<u8> {
        let cells = &self.scratch.data()[at..at + len];
        let mut bytes = vec![0u8; cells.len()];
        // SAFETY: the cells are `len` bytes of the shared memory (the slice
        // bounds are checked above); a guest writing concurrently could
        // only make the values stale, never the read unsound (plain bytes).
        unsafe {
            std::ptr::copy_nonoverlapping(
                UnsafeCell::raw_get(cells.as_ptr()),
                bytes.as_mut_ptr(),
                bytes.len(),
            );
        }
        bytes
    }

    /// The guest's own routing of a logical offset: `None` where no tensor lies.
    pub fn route(&mut self, logical: u64) -> Result<Option<(u32, u64)>> {
        let (shard, offset) = self.call(exports::ROUTE, (logical as i64,), || {
            format!("logical offset {logical}")
        })?;
        Ok((shard >= 0).then_some((shard as u32, offset as u64)))
    }

    /// A shard memory and the store it lives in, for tools and tests that
    /// instantiate more modules against the same memories.
    pub fn shard_memory(&mut self, shard: usize) -> (&mut Store<()>, Memory) {
        (&mut self.store, self.shards[shard])
    }

    /// Calls a guest export: the one path every call takes, so none can
    /// skip the check for lost file pages (a truncated model reads as zeros
    /// while mapped; the SIGBUS handler counts such pages). `what` names the
    /// tensor or range for errors; a trap stays inspectable as
    /// [`wasmtime::Trap`] in the error's chain.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        export: Export<P, R>,
        args: P,
        what: impl FnOnce() -> String,
    ) -> Result<R> {
        let func = wasm(self.funcs[export.index].typed::<P, R>(&self.store))
            .with_context(|| format!("guest export {} has another signature", export.name))?;
        let faults = fault::faults();
        let result = func.call(&mut self.store, args);
        if fault::faults() != faults {
            bail!(
                "guest export {} on {}: the model file changed while mapped (pages past its new end \
                 read as zeros); reopen the model",
                export.name,
                what()
            );
        }
        wasm(result).with_context(|| format!("guest export {} on {} failed", export.name, what()))
    }
}

/// Wasmtime's error as anyhow's, keeping it whole (a trap stays a
/// [`wasmtime::Trap`] for `downcast_ref`): the one conversion, so context can
/// be added with anyhow's `Context`.
fn wasm<T>(result: wasmtime::Result<T>) -> Result<T> {
    result.map_err(anyhow::Error::from)
}

/// Copies `bytes` into a shared memory at `at` (which must exist).
fn write_shared(memory: &SharedMemory, at: usize, bytes: &[u8]) {
    let cells = &memory.data()[at..at + bytes.len()];
    // SAFETY: the cells are exactly `bytes.len()` bytes of the shared memory
    // (bounds checked by the slice above); plain bytes, so a concurrent guest
    // access could only see old or new values.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            UnsafeCell::raw_get(cells.as_ptr()),
            bytes.len(),
        );
    }
}

/// Where the guest's profiling clock (`shardload.now`) counts from.
static CLOCK_ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A tensor index as the guest's i32.
fn tensor_id(tensor: usize) -> Result<i32> {
    i32::try_from(tensor).context("tensor index out of the guest's range")
}
