//! The compiled guest, cached on disk: compiling the guest is most of the
//! time to ready (tens of milliseconds, where mapping the shards takes under
//! one), and the same plan shape compiles to the same code every time.
//!
//! A cache file is named by a hash of everything the compiled code depends
//! on: the guest's wasm bytes (so another guest, another shard count or
//! another set of kernels is another file) and the engine's compatibility
//! hash (wasmtime's version, its configuration and the CPU features
//! Cranelift compiled for). Its contents are `SLGC`, the XXH64 and length of
//! the payload, then wasmtime's serialized module: a file that is truncated,
//! altered or half-written fails the check and is compiled anew and
//! rewritten, never handed to wasmtime's deserializer unchecked.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::{Engine, Module};
use xxhash_rust::xxh64::{Xxh64, xxh64};

const MAGIC: &[u8; 4] = b"SLGC";
const HEADER: usize = 4 + 8 + 8;

/// Where compiled guests are kept, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestCache {
    /// Compile every time (`--no-cache`).
    Off,
    /// Keep compiled guests in this directory.
    Dir(PathBuf),
}

impl Default for GuestCache {
    /// `$SHARDLOAD_CACHE_DIR`, else `$XDG_CACHE_HOME/shardload`, else
    /// `~/.cache/shardload`; off when none of them is set.
    fn default() -> GuestCache {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("SHARDLOAD_CACHE_DIR") {
            return GuestCache::Dir(dir.into());
        }
        if let Some(dir) = var("XDG_CACHE_HOME") {
            return GuestCache::Dir(Path::new(&dir).join("shardload"));
        }
        match var("HOME") {
            Some(home) => GuestCache::Dir(Path::new(&home).join(".cache/shardload")),
            None => GuestCache::Off,
        }
    }
}

/// How the guest came to be compiled, for reports of time to ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled by Cranelift (no cache, or nothing usable in it).
    Compiled,
    /// Loaded from the cache.
    Cached,
}

impl GuestCache {
    /// The file a guest of `wasm` bytes compiled by `engine` is kept in.
    fn file(dir: &Path, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut key = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut key);
        let mut hasher = Xxh64::new(key.finish());
        hasher.update(wasm);
        dir.join(format!("guest-{:016x}.cwasm", hasher.digest()))
    }

    /// The module for `wasm`: from the cache when a valid file is there,
    /// else compiled (and then written to the cache; a cache that cannot
    /// be written only costs the next run a compile).
    pub(crate) fn module(&self, engine: &Engine, wasm: &[u8]) -> Result<(Module, CompileSource)> {
        let GuestCache::Dir(dir) = self else {
            return Ok((compile(engine, wasm)?, CompileSource::Compiled));
        };
        let file = GuestCache::file(dir, engine, wasm);
        if let Some(module) = load(engine, &file) {
            return Ok((module, CompileSource::Cached));
        }
        let module = compile(engine, wasm)?;
        let _ = store(&module, dir, &file);
        Ok((module, CompileSource::Compiled))
    }
}

fn compile(engine: &Engine, wasm: &[u8]) -> Result<Module> {
    Module::new(engine, wasm).map_err(anyhow::Error::from)
}

/// The cached module in `file`, if the file is whole and unaltered.
fn load(engine: &Engine, file: &Path) -> Option<Module> {
    let bytes = std::fs::read(file).ok()?;
    let payload = checked_payload(&bytes)?;
    // SAFETY: wasmtime requires bytes that `Module::serialize` produced for a
    // compatible engine. The file's name is the hash of this engine's
    // compatibility and the guest's wasm, and its payload matches the length
    // and XXH64 that `store` wrote beside it, so a truncated, torn or
    // corrupted file is refused above (and wasmtime checks its own header,
    // version and configuration). The directory is the user's own cache: who
    // can write there can already run code as the user.
    unsafe { Module::deserialize(engine, payload) }.ok()
}

/// The payload of a cache file, if its magic, length and hash hold.
fn checked_payload(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return None;
    }
    let hash = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
    let len = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    let payload = &bytes[HEADER..];
    (payload.len() as u64 == len && xxh64(payload, 0) == hash).then_some(payload)
}

/// Writes the module into the cache: to a temporary file in the same
/// directory, renamed over the final name, so that a reader (another
/// process starting at the same time) never sees half a file.
fn store(module: &Module, dir: &Path, file: &Path) -> Result<()> {
    let payload = module.serialize().map_err(anyhow::Error::from)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(MAGIC)?;
    temp.write_all(&xxh64(&payload, 0).to_le_bytes())?;
    temp.write_all(&(payload.len() as u64).to_le_bytes())?;
    temp.write_all(&payload)?;
    temp.persist(file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_only_accepted_whole_and_unaltered() {
        let payload = b"compiled code".to_vec();
        let mut file = MAGIC.to_vec();
        file.extend(xxh64(&payload, 0).to_le_bytes());
        file.extend((payload.len() as u64).to_le_bytes());
        file.extend(&payload);
        assert_eq!(checked_payload(&file), Some(&payload[..]));
        assert_eq!(checked_payload(&file[..file.len() - 1]), None);
        let mut altered = file.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(checked_payload(&altered), None);
        assert_eq!(checked_payload(&file[..HEADER - 1]), None);
    }
}
