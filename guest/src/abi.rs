//! The guest ABI, host side: import names, the routing tables the host
//! writes into the guest's scratch memory before calling it, and the table of
//! exports ([`crate::exports`]). The WAT text is formatted from these
//! constants; `guest/README.md` documents the same layout for other guest
//! authors.

pub use shard_planner::Route;

/// The import module every memory comes from.
pub const IMPORT_MODULE: &str = "shardload";
/// The scratch memory's import name: memory 0, a 32-bit memory.
pub const SCRATCH_IMPORT: &str = "scratch";
/// The clock the guest reads only while profiling a program: `() -> f64`,
/// nanoseconds from any fixed origin (a JS host passes `performance.now() * 1e6`).
pub const CLOCK_IMPORT: &str = "now";
/// The smallest scratch memory the guest declares, in 64 KiB pages.
pub const SCRATCH_MIN_PAGES: u64 = 1;
/// The largest: 4 GiB. Scratch is a *shared* memory (threads: several guest
/// instances, one per thread, share activations and the KV cache), and a
/// shared memory must declare its maximum.
pub const SCRATCH_MAX_PAGES: u64 = 65536;
/// `"SLRT"` read as a little-endian u32: marks the tables' header.
pub const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"SLRT");
/// Version of the table layout (2: tensor entries carry type and row length).
pub const TABLE_VERSION: u32 = 2;

/// Bytes of the table header: magic, version, route count, tensor count (u32 each).
pub const HEADER_BYTES: usize = 16;
/// Header field: the number of route entries (u32).
pub const HEADER_ROUTES: usize = 8;
/// Header field: the number of tensor entries (u32).
pub const HEADER_TENSORS: usize = 12;

/// Bytes of one route entry.
pub const ROUTE_BYTES: usize = 32;
/// Route field: first logical offset (u64).
pub const ROUTE_LOGICAL_START: usize = 0;
/// Route field: logical end, exclusive (u64).
pub const ROUTE_LOGICAL_END: usize = 8;
/// Route field: shard index (u32, then 4 bytes of padding).
pub const ROUTE_SHARD: usize = 16;
/// Route field: offset in the shard memory of `logical_start` (u64).
pub const ROUTE_SHARD_OFFSET: usize = 24;

/// Bytes of one tensor entry.
pub const TENSOR_BYTES: usize = 32;
/// Tensor field: shard index (u32).
pub const TENSOR_SHARD: usize = 0;
/// Tensor field: GGUF type id (u32); kernels dispatch on it.
pub const TENSOR_TYPE: usize = 4;
/// Tensor field: offset of its first byte in the shard memory (u64).
pub const TENSOR_OFFSET: usize = 8;
/// Tensor field: its size in bytes (u64).
pub const TENSOR_SIZE: usize = 16;
/// Tensor field: elements per row, ne0 (u64).
pub const TENSOR_ROW_LEN: usize = 24;

/// Every layout constant by name, as the `{NAME}` placeholders of the guest's
/// `.wat` files spell them: the WAT text is formatted from this one list.
pub const WAT_CONSTANTS: &[(&str, usize)] = &[
    ("HEADER_BYTES", HEADER_BYTES),
    ("HEADER_ROUTES", HEADER_ROUTES),
    ("HEADER_TENSORS", HEADER_TENSORS),
    ("ROUTE_BYTES", ROUTE_BYTES),
    ("ROUTE_LOGICAL_START", ROUTE_LOGICAL_START),
    ("ROUTE_LOGICAL_END", ROUTE_LOGICAL_END),
    ("ROUTE_SHARD", ROUTE_SHARD),
    ("ROUTE_SHARD_OFFSET", ROUTE_SHARD_OFFSET),
    ("TENSOR_BYTES", TENSOR_BYTES),
    ("TENSOR_SHARD", TENSOR_SHARD),
    ("TENSOR_TYPE", TENSOR_TYPE),
    ("TENSOR_OFFSET", TENSOR_OFFSET),
    ("TENSOR_SIZE", TENSOR_SIZE),
    ("TENSOR_ROW_LEN", TENSOR_ROW_LEN),
];

/// The import name of shard `k`'s memory (memory index `k + 1`).
pub fn shard_import(k: u32) -> String {
    format!("shard{k}")
}

/// A tensor entry: where tensor `i` lies, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorLoc {
    /// Shard index.
    pub shard: u32,
    /// Offset of its first byte in the shard memory.
    pub offset: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its ggml type id (kernels dispatch on it).
    pub ggml_type: u32,
    /// Elements per row (ne0).
    pub row_len: u64,
}

/// The bytes the host writes at scratch offset 0.
pub fn encode_tables(routes: &[Route], tensors: &[TensorLoc]) -> Vec<u8> {
    let mut out =
        vec![0u8; HEADER_BYTES + routes.len() * ROUTE_BYTES + tensors.len() * TENSOR_BYTES];
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &TABLE_MAGIC.to_le_bytes());
    put(4, &TABLE_VERSION.to_le_bytes());
    put(HEADER_ROUTES, &(routes.len() as u32).to_le_bytes());
    put(HEADER_TENSORS, &(tensors.len() as u32).to_le_bytes());
    for (i, r) in routes.iter().enumerate() {
        let at = HEADER_BYTES + i * ROUTE_BYTES;
        put(at + ROUTE_LOGICAL_START, &r.logical_start.to_le_bytes());
        put(at + ROUTE_LOGICAL_END, &r.logical_end.to_le_bytes());
        put(at + ROUTE_SHARD, &r.shard.to_le_bytes());
        put(at + ROUTE_SHARD_OFFSET, &r.shard_offset.to_le_bytes());
    }
    let base = HEADER_BYTES + routes.len() * ROUTE_BYTES;
    for (i, t) in tensors.iter().enumerate() {
        let at = base + i * TENSOR_BYTES;
        put(at + TENSOR_SHARD, &t.shard.to_le_bytes());
        put(at + TENSOR_TYPE, &t.ggml_type.to_le_bytes());
        put(at + TENSOR_OFFSET, &t.offset.to_le_bytes());
        put(at + TENSOR_SIZE, &t.bytes.to_le_bytes());
        put(at + TENSOR_ROW_LEN, &t.row_len.to_le_bytes());
    }
    out
}

/// Where free scratch space begins after the tables (64-byte aligned): the
/// place for kernels' inputs and outputs.
pub fn scratch_free_offset(routes: usize, tensors: usize) -> usize {
    (HEADER_BYTES + routes * ROUTE_BYTES + tensors * TENSOR_BYTES).next_multiple_of(64)
}

/// `template` with each `{NAME}` of [`WAT_CONSTANTS`] (and of `extra`)
/// replaced by its value. Panics on a placeholder nobody defines: the
/// templates are part of this crate, so that is a bug caught by any test.
pub(crate) fn fill(template: &str, extra: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (name, value) in WAT_CONSTANTS {
        text = text.replace(&format!("{{{name}}}"), &value.to_string());
    }
    for (name, value) in extra {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    if let Some(at) = text.find('{') {
        let end = text[at..].find('}').map_or(text.len(), |e| at + e + 1);
        panic!(
            "guest WAT template: undefined placeholder {}",
            &text[at..end]
        );
    }
    text
}
