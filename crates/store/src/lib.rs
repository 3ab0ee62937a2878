//! The weight store: opens a model, plans it, and builds wasmtime memory64
//! shard memories (mapped from the file or copied) for a multi-memory guest.

mod fault;
mod memory;
mod model;
mod store;
mod usage;

pub use memory::{LoadMode, Progress};
pub use model::OpenModel;
pub use shardload_guest::DotProduct;
pub use store::{GuestInstance, InstanceTimings, WeightStore};
pub use usage::MemoryUsage;
