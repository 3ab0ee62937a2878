//! Generates the guest: a wasm module that imports N shard memories (memory64)
//! plus a scratch memory, and reads tensors in place through the routing table.
//!
//! No compiler emits multi-memory accesses (and no Rust can be compiled to wasm
//! on our machines), so the module is generated as WAT and assembled. Each load
//! names its memory as an immediate, so every function that reads weights is
//! emitted once per shard memory and reached through a `br_table` dispatcher.

pub mod abi;
mod dequantize;
pub mod exports;
mod matvec;
pub mod program;
mod quants;

pub use matvec::DotProduct;
pub use quants::KERNEL_TYPES;

use std::fmt::Write;

use shardload_gguf::GgmlType;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// An i64 constant as WAT text (signed decimal, which every assembler takes).
fn k(value: u64) -> String {
    format!("(i64.const {})", value as i64)
}

/// XXH64's round, inlined (Cranelift does not inline wasm calls).
fn round(acc: &str, input: &str) -> String {
    format!(
        "(i64.mul (i64.rotl (i64.add {acc} (i64.mul {input} {p2})) (i64.const 31)) {p1})",
        p2 = k(P2),
        p1 = k(P1)
    )
}

/// XXH64 of `len` bytes at `p` in memory `$mem`, per the XXH64 spec (seed 0).
/// Each 32-byte stripe is read by two `v128.load`s (two bounds checks, not
/// four) and its lanes feed four scalar accumulators: 64-bit lane multiplies
/// are slow on x86, and accumulators in two v128 measured 53% of native
/// against this loop's 78% (see guest/README.md).
fn xxh64_function(shard: u32) -> String {
    let m = shard + 1;
    let load = |offset: u32| format!("(i64.load $m{m} offset={offset} (local.get $p))");
    let stripe = |v: &str, vector: &str, lane: u32| {
        let input = format!("(i64x2.extract_lane {lane} (local.get {vector}))");
        format!(
            "(local.set {v} {})",
            round(&format!("(local.get {v})"), &input)
        )
    };
    let merge = |v: &str| {
        format!(
            "(local.set $h (i64.add (i64.mul (i64.xor (local.get $h) {r}) {p1}) {p4}))",
            r = round("(i64.const 0)", &format!("(local.get {v})")),
            p1 = k(P1),
            p4 = k(P4)
        )
    };
    format!(
        r#"
  (func $xxh64_{shard} (param $p i64) (param $n i64) (result i64)
    (local $end i64) (local $h i64) (local $v1 i64) (local $v2 i64) (local $v3 i64) (local $v4 i64) (local $a v128) (local $b v128)
    (local.set $end (i64.add (local.get $p) (local.get $n)))
    (if (i64.lt_u (local.get $end) (local.get $p)) (then unreachable))
    (if (i64.ge_u (local.get $n) (i64.const 32))
      (then
        ;; $v3 starts at seed - 0 = 0, as locals do.
        (local.set $v1 {v1}) (local.set $v2 {p2}) (local.set $v4 {v4})
        (loop $stripes
          (local.set $a (v128.load $m{m} (local.get $p)))
          (local.set $b (v128.load $m{m} offset=16 (local.get $p)))
          {s1} {s2} {s3} {s4}
          (local.set $p (i64.add (local.get $p) (i64.const 32)))
          (br_if $stripes (i64.le_u (i64.add (local.get $p) (i64.const 32)) (local.get $end))))
        (local.set $h (i64.add
          (i64.add (i64.rotl (local.get $v1) (i64.const 1)) (i64.rotl (local.get $v2) (i64.const 7)))
          (i64.add (i64.rotl (local.get $v3) (i64.const 12)) (i64.rotl (local.get $v4) (i64.const 18)))))
        {m1} {m2} {m3} {m4})
      (else (local.set $h {p5})))
    (local.set $h (i64.add (local.get $h) (local.get $n)))
    (block $no_more_eights
      (loop $eights
        (br_if $no_more_eights (i64.gt_u (i64.add (local.get $p) (i64.const 8)) (local.get $end)))
        (local.set $h (i64.add (i64.mul (i64.rotl (i64.xor (local.get $h) {r8}) (i64.const 27)) {p1}) {p4}))
        (local.set $p (i64.add (local.get $p) (i64.const 8)))
        (br $eights)))
    (if (i64.le_u (i64.add (local.get $p) (i64.const 4)) (local.get $end))
      (then
        (local.set $h (i64.add (i64.mul (i64.rotl (i64.xor (local.get $h)
          (i64.mul (i64.load32_u $m{m} (local.get $p)) {p1})) (i64.const 23)) {p2}) {p3}))
        (local.set $p (i64.add (local.get $p) (i64.const 4)))))
    (block $no_more_bytes
      (loop $bytes
        (br_if $no_more_bytes (i64.ge_u (local.get $p) (local.get $end)))
        (local.set $h (i64.mul (i64.rotl (i64.xor (local.get $h)
          (i64.mul (i64.load8_u $m{m} (local.get $p)) {p5})) (i64.const 11)) {p1}))
        (local.set $p (i64.add (local.get $p) (i64.const 1)))
        (br $bytes)))
    (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 33))) {p2}))
    (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 29))) {p3}))
    (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 32))))"#,
        v1 = k(P1.wrapping_add(P2)),
        v4 = k(0u64.wrapping_sub(P1)),
        s1 = stripe("$v1", "$a", 0),
        s2 = stripe("$v2", "$a", 1),
        s3 = stripe("$v3", "$b", 0),
        s4 = stripe("$v4", "$b", 1),
        m1 = merge("$v1"),
        m2 = merge("$v2"),
        m3 = merge("$v3"),
        m4 = merge("$v4"),
        r8 = round("(i64.const 0)", &load(0)),
        p1 = k(P1),
        p2 = k(P2),
        p3 = k(P3),
        p4 = k(P4),
        p5 = k(P5),
    )
}

/// The bandwidth probe over memory `$mem`: XOR of every 16-byte chunk of the
/// range (zero-padded at the end), folded to 64 bits (low lane ^ high lane).
/// Every byte changes the result, so nothing can skip a load.
fn stream_function(shard: u32) -> String {
    let m = shard + 1;
    format!(
        r#"
  (func $stream_{shard} (param $p i64) (param $n i64) (result i64)
    (local $end i64) (local $a v128) (local $b v128) (local $c v128) (local $d v128) (local $tail i64) (local $shift i64)
    (local.set $end (i64.add (local.get $p) (local.get $n)))
    (if (i64.lt_u (local.get $end) (local.get $p)) (then unreachable))
    (block $no_more_sixty_fours
      (loop $sixty_fours
        (br_if $no_more_sixty_fours (i64.gt_u (i64.add (local.get $p) (i64.const 64)) (local.get $end)))
        (local.set $a (v128.xor (local.get $a) (v128.load $m{m} (local.get $p))))
        (local.set $b (v128.xor (local.get $b) (v128.load $m{m} offset=16 (local.get $p))))
        (local.set $c (v128.xor (local.get $c) (v128.load $m{m} offset=32 (local.get $p))))
        (local.set $d (v128.xor (local.get $d) (v128.load $m{m} offset=48 (local.get $p))))
        (local.set $p (i64.add (local.get $p) (i64.const 64)))
        (br $sixty_fours)))
    (local.set $a (v128.xor (v128.xor (local.get $a) (local.get $b)) (v128.xor (local.get $c) (local.get $d))))
    (block $no_more_sixteens
      (loop $sixteens
        (br_if $no_more_sixteens (i64.gt_u (i64.add (local.get $p) (i64.const 16)) (local.get $end)))
        (local.set $a (v128.xor (local.get $a) (v128.load $m{m} (local.get $p))))
        (local.set $p (i64.add (local.get $p) (i64.const 16)))
        (br $sixteens)))
    (block $no_more_bytes
      (loop $bytes
        (br_if $no_more_bytes (i64.ge_u (local.get $p) (local.get $end)))
        (local.set $tail (i64.xor (local.get $tail) (i64.shl (i64.load8_u $m{m} (local.get $p)) (local.get $shift))))
        (local.set $shift (i64.and (i64.add (local.get $shift) (i64.const 8)) (i64.const 63)))
        (local.set $p (i64.add (local.get $p) (i64.const 1)))
        (br $bytes)))
    (i64.xor (local.get $tail)
      (i64.xor (i64x2.extract_lane 0 (local.get $a)) (i64x2.extract_lane 1 (local.get $a)))))"#
    )
}

/// `$f32_weights_{shard}(p, out, n)`: the n f32 at `out` (n a multiple of 4)
/// times the F32 weights at `p` in the shard, element by element (norm
/// weights, read in place); `$f32_bias_{shard}(p, out, n)`: the same n f32
/// plus them (biases); `$f32_at_{shard}(p)`: one F32 weight.
fn f32_weight_functions(shard: u32) -> String {
    let m = shard + 1;
    let mut text = String::new();
    for (name, op) in [("f32_weights", "f32x4.mul"), ("f32_bias", "f32x4.add")] {
        let _ = write!(
            text,
            r#"
  (func ${name}_{shard} (param $p i64) (param $out i32) (param $n i32)
    (local $i i32) (local $at i32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $at (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2))))
        (v128.store $m0 (local.get $at) ({op} (v128.load $m0 (local.get $at))
          (v128.load $m{m} (i64.add (local.get $p) (i64.extend_i32_u (i32.shl (local.get $i) (i32.const 2)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $each))))"#
        );
    }
    text + &format!(
        r#"
  (func $f32_at_{shard} (param $p i64) (result f32)
    (f32.load $m{m} (local.get $p)))"#
    )
}

/// `(func {header} (param $shard i32) params... (result ...))` that calls
/// `${target}_{k}(params...)` for shard k through a `br_table`, trapping on
/// an unknown shard: how every weight-reading function reaches the code
/// emitted for its memory. `params` are WAT `"name type"` pairs.
fn shard_dispatch(
    header: &str,
    target: &str,
    params: &[&str],
    result: Option<&str>,
    shards: u32,
) -> String {
    let declared: String = params.iter().map(|p| format!(" (param ${p})")).collect();
    let result = result.map_or(String::new(), |r| format!(" (result {r})"));
    let mut text = format!(
        "\n  (func {header} (param $shard i32){declared}{result}\n    (block $unknown_shard\n"
    );
    for k in (0..shards).rev() {
        let _ = writeln!(text, "    (block $s{k}");
    }
    let targets: String = (0..shards).map(|k| format!("$s{k} ")).collect();
    // The br_table closes the innermost block; each shard's return closes the next one out.
    let _ = writeln!(
        text,
        "      (br_table {targets}$unknown_shard (local.get $shard)))"
    );
    let args: String = params
        .iter()
        .map(|p| format!(" (local.get ${})", p.split(' ').next().unwrap_or(p)))
        .collect();
    for k in 0..shards {
        let _ = writeln!(text, "      (return (call ${target}_{k}{args})))");
    }
    text + "    unreachable)"
}

/// The shard memories a guest imports, one memory64 per shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ShardMemories {
    /// This many unshared memories of any size: wasmtime, where each
    /// thread's instance maps the shard files into memories of its own.
    Private(u32),
    /// Shared memories of exactly these page counts: a browser, where every
    /// web worker's instance imports the same memories, one copy of the
    /// weights (a shared memory needs a maximum, and a shared import's limits
    /// must match the memory's).
    Shared(Vec<u64>),
}

impl ShardMemories {
    /// How many shard memories.
    pub fn count(&self) -> u32 {
        match self {
            ShardMemories::Private(n) => *n,
            // A plan's shard count fits u32 (the planner refuses more).
            ShardMemories::Shared(pages) => u32::try_from(pages.len()).unwrap_or(u32::MAX),
        }
    }
}

/// The guest's WAT text for its shard memories, with compute kernels
/// for the ggml `types` the plan holds (types without kernels are skipped): kernels are emitted
/// per shard, so emitting only the types in use keeps compiling fast.
/// `dot` picks the integer dot product of `matvec`.
pub fn guest_wat(memories: &ShardMemories, types: &[GgmlType], dot: DotProduct) -> String {
    let shards = memories.count();
    let mut wat = String::from("(module\n");
    let _ = writeln!(
        wat,
        "  (import \"{}\" \"{}\" (memory $m0 {} {} shared))",
        abi::IMPORT_MODULE,
        abi::SCRATCH_IMPORT,
        abi::SCRATCH_MIN_PAGES,
        abi::SCRATCH_MAX_PAGES
    );
    for k in 0..shards {
        let limits = match memories {
            ShardMemories::Private(_) => "0".to_string(),
            ShardMemories::Shared(pages) => format!("{0} {0} shared", pages[k as usize]),
        };
        let _ = writeln!(
            wat,
            "  (import \"{}\" \"{}\" (memory $m{} i64 {limits}))",
            abi::IMPORT_MODULE,
            abi::shard_import(k),
            k + 1
        );
    }
    let _ = writeln!(
        wat,
        "  (import \"{}\" \"{}\" (func $now (result f64)))",
        abi::IMPORT_MODULE,
        abi::CLOCK_IMPORT
    );
    wat += &abi::fill(include_str!("../wat/tables.wat"), &[]);
    for (export, target) in [("xxh64_range", "xxh64"), ("stream_range", "stream")] {
        wat += &shard_dispatch(
            &format!("${export} (export \"{export}\")"),
            target,
            &["p i64", "n i64"],
            Some("i64"),
            shards,
        );
    }
    for k in 0..shards {
        wat += &xxh64_function(k);
        wat += &stream_function(k);
        wat += &f32_weight_functions(k);
    }
    wat += &shard_dispatch(
        "$f32_weights",
        "f32_weights",
        &["p i64", "out i32", "n i32"],
        None,
        shards,
    );
    wat += &shard_dispatch(
        "$f32_bias",
        "f32_bias",
        &["p i64", "out i32", "n i32"],
        None,
        shards,
    );
    wat += &shard_dispatch("$f32_at", "f32_at", &["p i64"], Some("f32"), shards);
    wat += include_str!("../wat/math.wat");
    wat += &abi::fill(include_str!("../wat/forward.wat"), &[]);
    wat += &abi::fill(
        include_str!("../wat/program.wat"),
        &program::wat_constants(),
    );
    let emitted: Vec<GgmlType> = KERNEL_TYPES
        .iter()
        .copied()
        .filter(|t| types.contains(t))
        .collect();
    wat += &dequantize::dequantize_functions(shards, &emitted);
    wat += &matvec::matvec_functions(shards, &emitted, dot);
    wat += "\n)\n";
    wat
}

include!(concat!(env!("OUT_DIR"), "/fingerprint.rs"));

/// Everything the module [`guest_wasm`] generates depends on, as one number:
/// this generator's sources (hashed when the crate was built), the shard
/// memories (count, and for shared ones their sizes), the dot product, and each emitted type's id and block layout from
/// the one ggml type table. Equal keys mean identical modules, so a host can
/// look a compiled guest up in a cache before generating anything.
pub fn guest_key(memories: &ShardMemories, types: &[GgmlType], dot: DotProduct) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    SOURCE_FINGERPRINT.hash(&mut hasher);
    memories.hash(&mut hasher);
    (dot == DotProduct::Relaxed).hash(&mut hasher);
    for ty in KERNEL_TYPES.iter().filter(|t| types.contains(t)) {
        (ty.id(), ty.name(), ty.block_size(), ty.type_size()).hash(&mut hasher);
    }
    hasher.finish()
}

/// The guest module for its shard memories and kernel `types`, assembled.
pub fn guest_wasm(
    memories: &ShardMemories,
    types: &[GgmlType],
    dot: DotProduct,
) -> Result<Vec<u8>, String> {
    if memories.count() == 0 {
        return Err("a guest needs at least one shard memory".into());
    }
    wat::parse_str(guest_wat(memories, types, dot)).map_err(|e| e.to_string())
}
