//! The generated guest against real wasmtime memories and independent references.

use proptest::prelude::*;
use shardload_guest::{DotProduct, ShardMemories, abi, guest_wasm};
use wasmtime::{
    Config, Engine, Instance, Linker, Memory, MemoryType, Module, SharedMemory, Store, Trap,
    TypedFunc,
};
use xxhash_rust::xxh64::xxh64;

const PAGE: usize = 64 * 1024;

/// A guest over `shards` memory64 memories of `pages` pages of seeded bytes each.
struct Guest {
    store: Store<()>,
    instance: Instance,
    shards: Vec<Memory>,
    scratch: SharedMemory,
}

impl Guest {
    fn new(shards: u32, pages: u64, tables: &[u8]) -> Guest {
        let mut config = Config::new();
        config
            .wasm_memory64(true)
            .wasm_multi_memory(true)
            .wasm_simd(true)
            .wasm_threads(true)
            .shared_memory(true);
        let engine = Engine::new(&config).unwrap();
        let module = Module::new(
            &engine,
            guest_wasm(
                &ShardMemories::Private(shards),
                shardload_guest::KERNEL_TYPES,
                DotProduct::Plain,
            )
            .unwrap(),
        )
        .unwrap();
        let mut store = Store::new(&engine, ());
        let mut linker = Linker::new(&engine);
        let scratch_pages = (tables.len().div_ceil(PAGE) as u32).max(1);
        let scratch_type = MemoryType::shared(scratch_pages, abi::SCRATCH_MAX_PAGES as u32);
        let scratch = SharedMemory::new(&engine, scratch_type).unwrap();
        for (cell, &byte) in scratch.data().iter().zip(tables) {
            // SAFETY: no guest runs yet; each cell is a byte of the memory.
            unsafe { *cell.get() = byte };
        }
        linker
            .define(
                &mut store,
                abi::IMPORT_MODULE,
                abi::SCRATCH_IMPORT,
                scratch.clone(),
            )
            .unwrap();
        let mut memories = Vec::new();
        for k in 0..shards {
            let memory = Memory::new(&mut store, MemoryType::new64(pages, Some(pages))).unwrap();
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(k);
            for byte in memory.data_mut(&mut store) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *byte = (state >> 56) as u8;
            }
            linker
                .define(
                    &mut store,
                    abi::IMPORT_MODULE,
                    &abi::shard_import(k),
                    memory,
                )
                .unwrap();
            memories.push(memory);
        }
        // The profiling clock; these tests never profile a program.
        linker
            .func_wrap(abi::IMPORT_MODULE, abi::CLOCK_IMPORT, || 0.0f64)
            .unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        Guest {
            store,
            instance,
            shards: memories,
            scratch,
        }
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> TypedFunc<P, R> {
        self.instance.get_typed_func(&mut self.store, name).unwrap()
    }

    fn bytes(&self, shard: usize, offset: usize, len: usize) -> Vec<u8> {
        self.shards[shard].data(&self.store)[offset..offset + len].to_vec()
    }

    fn xxh64_range(&mut self, shard: u32, offset: u64, len: u64) -> wasmtime::Result<u64> {
        let f = self.func::<(i32, i64, i64), i64>("xxh64_range");
        f.call(&mut self.store, (shard as i32, offset as i64, len as i64))
            .map(|h| h as u64)
    }

    fn stream_range(&mut self, shard: u32, offset: u64, len: u64) -> wasmtime::Result<u64> {
        let f = self.func::<(i32, i64, i64), i64>("stream_range");
        f.call(&mut self.store, (shard as i32, offset as i64, len as i64))
            .map(|h| h as u64)
    }
}

/// The stream fold defined in the ABI: XOR of 16-byte chunks (zero-padded), low lane ^ high lane.
fn stream_model(bytes: &[u8]) -> u64 {
    let mut acc = [0u8; 16];
    for chunk in bytes.chunks(16) {
        for (a, b) in acc.iter_mut().zip(chunk) {
            *a ^= b;
        }
    }
    u64::from_le_bytes(acc[..8].try_into().unwrap())
        ^ u64::from_le_bytes(acc[8..].try_into().unwrap())
}

fn features(multi_memory: bool, relaxed_simd: bool) -> wasmparser::WasmFeatures {
    let mut f = wasmparser::WasmFeatures::default();
    f.set(wasmparser::WasmFeatures::RELAXED_SIMD, relaxed_simd);
    f.set(wasmparser::WasmFeatures::MEMORY64, true);
    f.set(wasmparser::WasmFeatures::SIMD, true);
    f.set(wasmparser::WasmFeatures::MULTI_MEMORY, multi_memory);
    f
}

#[test]
fn the_module_validates_with_multi_memory_memory64_and_simd_and_needs_multi_memory() {
    for shards in [1, 2, 4, 16, 64] {
        let wasm = guest_wasm(
            &ShardMemories::Private(shards),
            shardload_guest::KERNEL_TYPES,
            DotProduct::Plain,
        )
        .unwrap();
        wasmparser::Validator::new_with_features(features(true, false))
            .validate_all(&wasm)
            .unwrap();
        assert!(
            wasmparser::Validator::new_with_features(features(false, false))
                .validate_all(&wasm)
                .is_err()
        );
    }
}

#[test]
fn the_relaxed_module_needs_relaxed_simd_and_the_plain_one_does_not() {
    let types = shardload_guest::KERNEL_TYPES;
    let relaxed = guest_wasm(&ShardMemories::Private(2), types, DotProduct::Relaxed).unwrap();
    wasmparser::Validator::new_with_features(features(true, true))
        .validate_all(&relaxed)
        .unwrap();
    assert!(
        wasmparser::Validator::new_with_features(features(true, false))
            .validate_all(&relaxed)
            .is_err()
    );
}

#[test]
fn xxh64_of_every_short_length_matches_xxhash_rust_in_every_shard() {
    for shards in [4, 7] {
        let mut guest = Guest::new(shards, 1, &abi::encode_tables(&[], &[]));
        for shard in 0..shards {
            for len in 0..=300u64 {
                let offset = (len * 37 + u64::from(shard)) % 1000;
                let expected = xxh64(
                    &guest.bytes(shard as usize, offset as usize, len as usize),
                    0,
                );
                assert_eq!(
                    guest.xxh64_range(shard, offset, len).unwrap(),
                    expected,
                    "shard {shard} len {len}"
                );
            }
        }
    }
}

/// The xxHash reference suite's buffer: `gen = PRIME32`, each byte is
/// `gen >> 56`, then `gen *= PRIME64`.
fn sanity_buffer(len: usize) -> Vec<u8> {
    let mut generator = 2_654_435_761u64;
    (0..len)
        .map(|_| {
            let byte = (generator >> 56) as u8;
            generator = generator.wrapping_mul(11_400_714_785_074_694_797);
            byte
        })
        .collect()
}

#[test]
fn xxh64_gives_the_reference_suites_seed_0_vectors_in_every_shard() {
    // From xxHash's xsum_sanity_check.c; 222 bytes take every path: six
    // stripes, three 8-byte lanes, one 4-byte word, two single bytes.
    let vectors = [
        (0, 0xEF46_DB37_51D8_E999),
        (1, 0xE934_A84A_DB05_2768),
        (4, 0x9136_A0DC_A574_57EE),
        (14, 0x8282_DCC4_994E_35C8),
        (222, 0xB641_AE8C_B691_C174),
    ];
    let buffer = sanity_buffer(222);
    let mut guest = Guest::new(4, 1, &abi::encode_tables(&[], &[]));
    for shard in 0..4u32 {
        let at = 1000 + 7 * shard as usize;
        let memory = guest.shards[shard as usize];
        memory.data_mut(&mut guest.store)[at..at + buffer.len()].copy_from_slice(&buffer);
        for (len, expected) in vectors {
            assert_eq!(
                guest.xxh64_range(shard, at as u64, len).unwrap(),
                expected,
                "shard {shard} len {len}"
            );
        }
    }
}

/// The trap behind a guest call's error (None if it failed otherwise).
fn trap<T: std::fmt::Debug>(result: wasmtime::Result<T>) -> Option<Trap> {
    result.unwrap_err().downcast_ref::<Trap>().copied()
}

#[test]
fn a_range_past_the_memory_or_an_unknown_shard_or_tensor_is_a_wasm_trap() {
    let tables = abi::encode_tables(
        &[],
        &[abi::TensorLoc {
            shard: 0,
            offset: 0,
            bytes: 10,
            ggml_type: 24,
            row_len: 10,
        }],
    );
    let mut guest = Guest::new(2, 1, &tables);
    let page = PAGE as u64;
    for (offset, len) in [(page - 8, 64), (page, 1), (page - 1, 2), (0, page + 1)] {
        assert_eq!(
            trap(guest.xxh64_range(0, offset, len)),
            Some(Trap::MemoryOutOfBounds),
            "xxh64 {offset}+{len}"
        );
        assert_eq!(
            trap(guest.stream_range(1, offset, len)),
            Some(Trap::MemoryOutOfBounds),
            "stream {offset}+{len}"
        );
    }
    assert_eq!(guest.xxh64_range(0, page, 0).unwrap(), xxh64(&[], 0));
    for shard in [2, 64, u32::MAX] {
        assert_eq!(
            trap(guest.stream_range(shard, 0, 8)),
            Some(Trap::UnreachableCodeReached)
        );
        assert_eq!(
            trap(guest.xxh64_range(shard, 0, 8)),
            Some(Trap::UnreachableCodeReached)
        );
    }
    // A range whose end wraps past 2^64.
    assert_eq!(
        trap(guest.xxh64_range(0, u64::MAX - 4, 16)),
        Some(Trap::UnreachableCodeReached)
    );
    for export in ["xxh64_tensor", "stream_tensor"] {
        let by_tensor = guest.func::<i32, i64>(export);
        assert!(by_tensor.call(&mut guest.store, 0).is_ok());
        for tensor in [1, -1, i32::MAX] {
            assert_eq!(
                trap(by_tensor.call(&mut guest.store, tensor)),
                Some(Trap::UnreachableCodeReached),
                "{export}({tensor})"
            );
        }
    }
    // The instance still answers after its traps.
    assert!(guest.stream_range(0, 0, page).is_ok());
}

#[test]
fn tensor_exports_read_the_table_entry() {
    let loc = abi::TensorLoc {
        shard: 2,
        offset: 12345,
        bytes: 5000,
        ggml_type: 24,
        row_len: 5000,
    };
    let mut guest = Guest::new(3, 1, &abi::encode_tables(&[], &[loc, loc]));
    let expected = xxh64(&guest.bytes(2, 12345, 5000), 0);
    let f = guest.func::<i32, i64>("xxh64_tensor");
    assert_eq!(f.call(&mut guest.store, 1).unwrap() as u64, expected);
    let expected = stream_model(&guest.bytes(2, 12345, 5000));
    let f = guest.func::<i32, i64>("stream_tensor");
    assert_eq!(f.call(&mut guest.store, 0).unwrap() as u64, expected);
    let _ = guest.scratch;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn xxh64_of_long_ranges_matches_xxhash_rust(shard in 0u32..4, offset in 0u64..100_000, len in 0u64..3_000_000) {
        let mut guest = Guest::new(4, 64, &abi::encode_tables(&[], &[]));
        let len = len.min(64 * PAGE as u64 - offset);
        let expected = xxh64(&guest.bytes(shard as usize, offset as usize, len as usize), 0);
        prop_assert_eq!(guest.xxh64_range(shard, offset, len).unwrap(), expected);
    }

    #[test]
    fn stream_equals_its_model_and_every_byte_changes_it(offset in 0u64..1000, len in 1u64..200_000, flip in any::<prop::sample::Index>()) {
        let mut guest = Guest::new(2, 4, &abi::encode_tables(&[], &[]));
        let bytes = guest.bytes(1, offset as usize, len as usize);
        let before = guest.stream_range(1, offset, len).unwrap();
        prop_assert_eq!(before, stream_model(&bytes));
        let at = offset as usize + flip.index(len as usize);
        let memory = guest.shards[1];
        memory.data_mut(&mut guest.store)[at] ^= 0x5A;
        prop_assert_ne!(guest.stream_range(1, offset, len).unwrap(), before);
    }

    #[test]
    fn route_agrees_with_a_host_reference(
        gaps in prop::collection::vec((0u64..1000, 1u64..5000, 0u32..5, 0u64..1 << 40), 0..40),
        probes in prop::collection::vec(0u64..300_000, 100),
    ) {
        let mut routes = Vec::new();
        let mut cursor = 0;
        for (gap, len, shard, shard_offset) in gaps {
            let start = cursor + gap;
            routes.push(abi::Route { logical_start: start, logical_end: start + len, shard, shard_offset });
            cursor = start + len;
        }
        let mut guest = Guest::new(5, 1, &abi::encode_tables(&routes, &[]));
        let route = guest.func::<i64, (i32, i64)>("route");
        let reference = |x: u64| {
            routes.iter().find(|r| r.logical_start <= x && x < r.logical_end)
                .map_or((-1, 0), |r| (r.shard as i32, (r.shard_offset + x - r.logical_start) as i64))
        };
        let edges = routes.iter().flat_map(|r| [r.logical_start, r.logical_end, r.logical_end - 1, r.logical_start.saturating_sub(1)]);
        // Before everything, past the end, and offsets that are negative as i64.
        let extremes = [0, cursor, cursor + 1, 1 << 62, i64::MAX as u64, 1 << 63, u64::MAX];
        for x in probes.into_iter().chain(edges).chain(extremes) {
            prop_assert_eq!(route.call(&mut guest.store, x as i64).unwrap(), reference(x), "offset {}", x);
        }
    }
}

#[test]
fn the_module_exports_exactly_the_export_table_with_its_signatures() {
    use shardload_guest::exports::{EXPORTS, ValType};
    use wasmparser::{Parser, Payload, TypeRef, ValType as W};
    let wasm = guest_wasm(
        &ShardMemories::Private(3),
        shardload_guest::KERNEL_TYPES,
        DotProduct::Plain,
    )
    .unwrap();
    let (mut types, mut funcs, mut exported) = (Vec::new(), Vec::new(), Vec::new());
    for payload in Parser::new(0).parse_all(&wasm) {
        match payload.unwrap() {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.unwrap().into_types() {
                        types.push(ty.unwrap_func().clone());
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader {
                    if let TypeRef::Func(t) = import.unwrap().ty {
                        funcs.push(t);
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                funcs.extend(reader.into_iter().map(|t| t.unwrap()))
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.unwrap();
                    exported.push((export.name.to_string(), export.index));
                }
            }
            _ => {}
        }
    }
    let wasm_type = |v: &ValType| match v {
        ValType::I32 => W::I32,
        ValType::I64 => W::I64,
        ValType::F32 => W::F32,
    };
    let mut expected: Vec<&str> = EXPORTS.iter().map(|e| e.name).collect();
    let mut names: Vec<&str> = exported.iter().map(|(n, _)| n.as_str()).collect();
    expected.sort_unstable();
    names.sort_unstable();
    assert_eq!(
        names, expected,
        "the module's exports and the export table differ"
    );
    for signature in EXPORTS {
        let index = exported
            .iter()
            .find(|(n, _)| n == signature.name)
            .unwrap()
            .1;
        let ty = &types[funcs[index as usize] as usize];
        let params: Vec<W> = signature.params.iter().map(wasm_type).collect();
        let results: Vec<W> = signature.results.iter().map(wasm_type).collect();
        assert_eq!(ty.params(), params, "{} parameters", signature.name);
        assert_eq!(ty.results(), results, "{} results", signature.name);
    }
}
