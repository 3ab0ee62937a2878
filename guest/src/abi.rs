//! The guest ABI, host side: import names, and the routing tables the host
//! writes into the guest's scratch memory before calling it.
//! `guest/README.md` documents the same layout for other guest authors.

pub use shard_planner::Route;

/// The import module every memory comes from.
pub const IMPORT_MODULE: &str = "shardload";
/// The scratch memory's import name: memory 0, a 32-bit memory.
pub const SCRATCH_IMPORT: &str = "scratch";
/// The smallest scratch memory the guest declares, in 64 KiB pages.
pub const SCRATCH_MIN_PAGES: u64 = 1;
/// `"SLRT"` read as a little-endian u32: marks the tables' header.
pub const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"SLRT");
/// Version of the table layout (2: tensor entries carry type and row length).
pub const TABLE_VERSION: u32 = 2;
/// Bytes of the table header.
pub const HEADER_BYTES: usize = 16;
/// Bytes of one route entry.
pub const ROUTE_BYTES: usize = 32;
/// Bytes of one tensor entry.
pub const TENSOR_BYTES: usize = 32;

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
    let mut out = Vec::with_capacity(scratch_free_offset(routes.len(), tensors.len()));
    for word in [
        TABLE_MAGIC,
        TABLE_VERSION,
        routes.len() as u32,
        tensors.len() as u32,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for r in routes {
        out.extend_from_slice(&r.logical_start.to_le_bytes());
        out.extend_from_slice(&r.logical_end.to_le_bytes());
        out.extend_from_slice(&r.shard.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&r.shard_offset.to_le_bytes());
    }
    for t in tensors {
        out.extend_from_slice(&t.shard.to_le_bytes());
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
        out.extend_from_slice(&t.bytes.to_le_bytes());
        out.extend_from_slice(&t.row_len.to_le_bytes());
    }
    out
}

/// Where free scratch space begins after the tables (64-byte aligned): the
/// place for kernels' inputs and outputs.
pub fn scratch_free_offset(routes: usize, tensors: usize) -> usize {
    (HEADER_BYTES + routes * ROUTE_BYTES + tensors * TENSOR_BYTES).next_multiple_of(64)
}
