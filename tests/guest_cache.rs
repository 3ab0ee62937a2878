//! The compiled-guest cache on disk: a hit loads what a miss wrote, another
//! guest gets another file, and a truncated or altered file is compiled anew
//! and rewritten, never trusted.

use std::path::{Path, PathBuf};

use shard_planner::PlanOptions;
use shardload_store::{CompileSource, DotProduct, GuestCache, LoadMode, OpenModel, WeightStore};
use shardload_suite::{SMOLLM2, model};

fn store(shards: u32, dot: DotProduct, cache: &Path) -> WeightStore {
    let opened = OpenModel::open(&model(SMOLLM2)).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(shards),
            ..PlanOptions::default()
        })
        .unwrap();
    let cache = GuestCache::Dir(cache.to_path_buf());
    WeightStore::with_options(plan, LoadMode::Mmap, Some(dot), &cache).unwrap()
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

/// The guest works: its XXH64 of the first and last tensors equals the host's.
fn assert_guest_works(store: &WeightStore) {
    let (mut guest, _) = store.instantiate().unwrap();
    let last = store.plan().tensors.len() - 1;
    for tensor in [0, last] {
        assert_eq!(
            guest.xxh64_tensor(tensor).unwrap(),
            store.host_xxh64(tensor).unwrap()
        );
    }
}

#[test]
fn a_compiled_guest_is_written_to_the_cache_and_loaded_from_it_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = store(2, DotProduct::Relaxed, dir.path());
    assert_eq!(first.compile_source(), CompileSource::Compiled);
    assert_eq!(cache_files(dir.path()).len(), 1);
    let second = store(2, DotProduct::Relaxed, dir.path());
    assert_eq!(second.compile_source(), CompileSource::Cached);
    assert_guest_works(&second);
}

#[test]
fn another_shard_count_or_dot_product_is_another_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    store(2, DotProduct::Relaxed, dir.path());
    let other_shards = store(3, DotProduct::Relaxed, dir.path());
    assert_eq!(other_shards.compile_source(), CompileSource::Compiled);
    let other_dot = store(2, DotProduct::Plain, dir.path());
    assert_eq!(other_dot.compile_source(), CompileSource::Compiled);
    assert_eq!(cache_files(dir.path()).len(), 3);
    assert_guest_works(&other_shards);
    assert_guest_works(&other_dot);
}

#[test]
fn a_truncated_or_altered_cache_file_is_rebuilt_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    store(2, DotProduct::Relaxed, dir.path());
    let file = cache_files(dir.path()).remove(0);
    let whole = std::fs::read(&file).unwrap();
    let truncated = &whole[..whole.len() / 2];
    let mut altered = whole.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x40;
    for (what, bytes) in [
        ("truncated", truncated),
        ("altered", &altered[..]),
        ("empty", &[][..]),
    ] {
        std::fs::write(&file, bytes).unwrap();
        let rebuilt = store(2, DotProduct::Relaxed, dir.path());
        assert_eq!(rebuilt.compile_source(), CompileSource::Compiled, "{what}");
        assert_guest_works(&rebuilt);
        // The rebuild rewrote the file whole, so the next store loads it.
        assert_eq!(std::fs::read(&file).unwrap().len(), whole.len(), "{what}");
        let next = store(2, DotProduct::Relaxed, dir.path());
        assert_eq!(next.compile_source(), CompileSource::Cached, "{what}");
    }
}

#[test]
fn with_the_cache_off_the_guest_is_compiled() {
    let opened = OpenModel::open(&model(SMOLLM2)).unwrap();
    let plan = opened.plan(&PlanOptions::default()).unwrap();
    let store = WeightStore::with_options(plan, LoadMode::Mmap, None, &GuestCache::Off).unwrap();
    assert_eq!(store.compile_source(), CompileSource::Compiled);
    assert_guest_works(&store);
}

#[test]
fn a_cache_directory_others_can_write_is_never_loaded_from() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    store(2, DotProduct::Relaxed, dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let shared = store(2, DotProduct::Relaxed, dir.path());
    assert_eq!(shared.compile_source(), CompileSource::Compiled);
    assert_guest_works(&shared);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = cache_files(dir.path()).remove(0);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let writable = store(2, DotProduct::Relaxed, dir.path());
    assert_eq!(writable.compile_source(), CompileSource::Compiled);
}
