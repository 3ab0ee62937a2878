//! Shard memories: wasmtime memory64 memories that hold a shard's bytes,
//! either mapped straight from the model file (zero copy) or copied into
//! ordinary host memories (the baseline most embedders use today).
//!
//! Wasmtime only consults a [`MemoryCreator`] for memories that modules
//! *define* (not for `Memory::new`), so a mapped shard is made by
//! instantiating a one-line "holder" module that defines and exports one
//! memory of the shard's size, while the creator knows which file ranges to
//! map into it. The exported memory is then imported by the guest.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use crate::fault;
use anyhow::{Context, Result, anyhow, ensure};
use rayon::prelude::*;
use shard_planner::Shard;
use wasmtime::{Engine, Instance, LinearMemory, Memory, MemoryCreator, MemoryType, Module, Store};

/// How shard memories get their bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Map the file's extents private and copy-on-write: ready in
    /// milliseconds, pages shared through the page cache by every instance.
    Mmap,
    /// Fill ordinary memories from the file in parallel: the baseline.
    Copy,
}

impl std::fmt::Display for LoadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadMode::Mmap => "mmap",
            LoadMode::Copy => "copy",
        })
    }
}

/// A shard's file ranges, handed from the store builder to the creator.
struct ShardSource {
    bytes: usize,
    extents: Vec<FileRange>,
}

/// One extent of a shard, resolved to an open file.
struct FileRange {
    file: Arc<File>,
    file_offset: u64,
    length: usize,
    memory_offset: usize,
}

/// The engine-wide creator of mapped shard memories. A builder puts the next
/// shard's source in `next` (holding `building` so builders on several
/// threads cannot swap each other's sources) and instantiates a holder.
#[derive(Default)]
pub(crate) struct MappedCreator {
    next: Mutex<Option<ShardSource>>,
    building: Mutex<()>,
}

// SAFETY: memories made here satisfy wasmtime's contract: page-aligned, a
// reservation of at least the requested size plus an unmapped guard region,
// never moved or grown past the reservation.
unsafe impl MemoryCreator for MappedCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let source = self
            .next
            .lock()
            .map_err(|_| "shard source lock poisoned".to_string())?
            .take()
            .ok_or("shardload: a module defined a memory that is not a shard; guests must import memories")?;
        if source.bytes != minimum || maximum != Some(minimum) {
            return Err(format!(
                "holder memory of {minimum} bytes for a {}-byte shard",
                source.bytes
            ));
        }
        // The reservation can be smaller than the memory (wasmtime's default is
        // 4 GiB): reserve whatever is largest, plus the guard.
        let reservation = minimum.max(reserved_size_in_bytes.unwrap_or(0)) + guard_size_in_bytes;
        MappedMemory::new(&source, reservation).map(|m| Box::new(m) as Box<dyn LinearMemory>)
    }
}

/// A memory whose pages are private copy-on-write mappings of file extents,
/// with anonymous zero pages everywhere else.
struct MappedMemory {
    base: *mut u8,
    reservation: usize,
    size: usize,
    /// `None` only while `new` builds the memory; dropped before unmapping.
    watch: Option<fault::Guard>,
}

// SAFETY: the mapping is owned by this value and only reached through
// wasmtime, which synchronizes access as for its own memories.
unsafe impl Send for MappedMemory {}
// SAFETY: as for Send: wasmtime synchronizes every access to the memory.
unsafe impl Sync for MappedMemory {}

impl MappedMemory {
    fn new(source: &ShardSource, reservation: usize) -> Result<MappedMemory, String> {
        let os_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh PROT_NONE reservation; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reservation,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error("cannot reserve address space for a shard"));
        }
        let mut memory = MappedMemory {
            base: base.cast(),
            reservation,
            size: source.bytes,
            watch: None,
        };
        let page_size = fault::page_size();
        if let Some(range) = source.extents.iter().find(|r| {
            !r.file_offset.is_multiple_of(page_size as u64)
                || !r.memory_offset.is_multiple_of(page_size)
        }) {
            return Err(format!(
                "an extent at file offset {} is not aligned to this host's {page_size}-byte pages; \
                 use --load copy",
                range.file_offset
            ));
        }
        memory.watch = Some(fault::watch(base.cast(), source.bytes)?);
        // SAFETY: every MAP_FIXED mapping below lies inside our own reservation.
        unsafe {
            // Zero pages for the whole memory, then the file extents over them.
            let zeros = libc::mmap(
                base,
                source.bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if zeros == libc::MAP_FAILED {
                return Err(os_error("cannot map a shard's zero pages"));
            }
            for range in &source.extents {
                // Extents end inside the file, so no mapped page lies wholly past its end.
                let mapped = libc::mmap(
                    memory.base.add(range.memory_offset).cast(),
                    range.length.next_multiple_of(page_size),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    range.file.as_raw_fd(),
                    range.file_offset as libc::off_t,
                );
                if mapped == libc::MAP_FAILED {
                    return Err(os_error("cannot map a shard's file extent"));
                }
            }
        }
        Ok(memory)
    }
}

impl Drop for MappedMemory {
    fn drop(&mut self) {
        // Unregister first: the handler must never claim pages being unmapped.
        drop(self.watch.take());
        // SAFETY: unmaps exactly the reservation made in `new`.
        unsafe { libc::munmap(self.base.cast(), self.reservation) };
    }
}

// SAFETY: see `MemoryCreator` above; the size never changes (weights do not grow).
unsafe impl LinearMemory for MappedMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.size
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size == self.size {
            return Ok(());
        }
        wasmtime::bail!("shard memories do not grow")
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base
    }
}

/// Told how many more bytes have been copied, from any thread.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Builds shard memories for one store, in either load mode.
pub(crate) struct MemoryBuilder {
    pub(crate) creator: Arc<MappedCreator>,
    /// Holder modules by page count, compiled once per engine.
    holders: Mutex<HashMap<u64, Module>>,
    pub(crate) progress: Option<Progress>,
}

impl MemoryBuilder {
    pub(crate) fn new(creator: Arc<MappedCreator>) -> MemoryBuilder {
        MemoryBuilder {
            creator,
            holders: Mutex::default(),
            progress: None,
        }
    }

    /// Makes the memory of one shard in `store`.
    pub(crate) fn build(
        &self,
        engine: &Engine,
        store: &mut Store<()>,
        shard: &Shard,
        files: &[Arc<File>],
        mode: LoadMode,
    ) -> Result<Memory> {
        let bytes =
            usize::try_from(shard.bytes).context("a shard larger than the address space")?;
        let extents = shard
            .extents
            .iter()
            .map(|e| {
                let file = files
                    .get(e.file)
                    .ok_or_else(|| anyhow!("extent names missing file {}", e.file))?;
                Ok(FileRange {
                    file: Arc::clone(file),
                    file_offset: e.file_offset,
                    length: e.bytes as usize,
                    memory_offset: e.memory_offset as usize,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let source = ShardSource { bytes, extents };
        match mode {
            LoadMode::Mmap => self.mapped(engine, store, shard.pages, source),
            LoadMode::Copy => copied(store, shard.pages, &source, self.progress.as_ref()),
        }
    }

    fn mapped(
        &self,
        engine: &Engine,
        store: &mut Store<()>,
        pages: u64,
        source: ShardSource,
    ) -> Result<Memory> {
        let holder = {
            let mut holders = self
                .holders
                .lock()
                .map_err(|_| anyhow!("holder cache poisoned"))?;
            match holders.get(&pages) {
                Some(module) => module.clone(),
                None => {
                    let wat = format!("(module (memory (export \"shard\") i64 {pages} {pages}))");
                    let wasm = wat::parse_str(wat)?;
                    let module = Module::new(engine, wasm).map_err(|e| anyhow!("{e:?}"))?;
                    holders.insert(pages, module.clone());
                    module
                }
            }
        };
        let _building = self
            .creator
            .building
            .lock()
            .map_err(|_| anyhow!("builder lock poisoned"))?;
        *self
            .creator
            .next
            .lock()
            .map_err(|_| anyhow!("shard source lock poisoned"))? = Some(source);
        let instance = Instance::new(&mut *store, &holder, &[]);
        self.creator
            .next
            .lock()
            .map_err(|_| anyhow!("shard source lock poisoned"))?
            .take();
        let instance = instance.map_err(|e| anyhow!("cannot map a shard memory: {e:?}"))?;
        instance
            .get_memory(&mut *store, "shard")
            .ok_or_else(|| anyhow!("holder module exports no memory"))
    }
}

/// The baseline: an ordinary memory64 filled from the file in parallel. File
/// bytes are read with `pread`, not through a mapping, so a file that shrinks
/// meanwhile is an error rather than a SIGBUS.
fn copied(
    store: &mut Store<()>,
    pages: u64,
    source: &ShardSource,
    progress: Option<&Progress>,
) -> Result<Memory> {
    let memory = Memory::new(&mut *store, MemoryType::new64(pages, Some(pages)))
        .map_err(|e| anyhow!("cannot allocate a {pages}-page memory: {e:?}"))?;
    ensure!(
        memory.data_size(&*store) == source.bytes,
        "memory size differs from the plan"
    );
    let data = memory.data_mut(&mut *store);
    const CHUNK: usize = 8 << 20;
    let mut jobs = Vec::new();
    let mut rest = data;
    let mut cursor = 0;
    for range in &source.extents {
        let (_, tail) = rest.split_at_mut(range.memory_offset - cursor);
        let (extent, tail) = tail.split_at_mut(range.length);
        for (i, chunk) in extent.chunks_mut(CHUNK).enumerate() {
            jobs.push((&range.file, range.file_offset + (i * CHUNK) as u64, chunk));
        }
        cursor = range.memory_offset + range.length;
        rest = tail;
    }
    jobs.into_par_iter()
        .try_for_each(|(file, offset, chunk)| {
            file.read_exact_at(chunk, offset)?;
            if let Some(progress) = progress {
                progress(chunk.len() as u64);
            }
            Ok::<_, std::io::Error>(())
        })
        .context("cannot read the model file (did it change?)")?;
    Ok(memory)
}
