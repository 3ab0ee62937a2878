//! A checked, memory-mapped reader for GGUF models and llama.cpp split sets,
//! and a small writer for tests and synthetic models.
//!
//! Knows nothing of wasm or shards: it says what tensors a model has and where
//! their bytes are, and refuses any file it cannot vouch for.

mod reader;
mod split;
pub mod synthetic;
mod tokenizer;
mod types;
mod value;
mod writer;

pub use reader::{
    DEFAULT_ALIGNMENT, Error, GgufFile, Header, MAX_DIMS, MAX_NAME_BYTES, TensorInfo, parse,
};
pub use split::{Model, SplitInfo};
pub use tokenizer::Tokenizer;
pub use types::{GgmlType, KERNEL_TYPES, tensor_bytes};
pub use value::Value;
pub use writer::{Fill, GgufWriter, WriterLayout};
