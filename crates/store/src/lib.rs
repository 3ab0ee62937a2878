//! The weight store: opens a model, plans it, and builds wasmtime memory64
//! shard memories (mapped from the file or copied) for a multi-memory guest.

mod cache;
mod fault;
mod memory;
mod model;
mod store;
mod usage;

pub use cache::{CompileSource, GuestCache};
pub use memory::{LoadMode, Progress};
pub use model::OpenModel;
pub use shardload_guest::DotProduct;
pub use store::{
    GuestInstance, InstanceTimings, WeightStore, guest_types, routing_tables, tensor_checksums,
};
pub use usage::MemoryUsage;
