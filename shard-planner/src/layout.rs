//! What the planner needs to know of a model: its files and its tensor table.
//!
//! This is plain data so that the planner stays pure: whoever reads the model
//! (a GGUF reader, a test generator) fills it in, and the planner never does I/O.

use serde::{Deserialize, Serialize};

/// One file of a model (a single GGUF, or one part of a llama.cpp split set).
///
/// The identity fields (`path`, `fingerprint`) are carried into the plan so that
/// a plan can later be checked against the files it is used with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Where the file was read from, as the user named it.
    pub path: String,
    /// The file's size in bytes.
    pub size: u64,
    /// A cheap fingerprint of the file's contents, computed by the reader.
    pub fingerprint: String,
    /// Absolute byte offset of the file's tensor data section.
    pub data_offset: u64,
}

/// One tensor, as the planner sees it: where its bytes are, and what it is
/// (name, type and dims are carried into the plan for people and programs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpan {
    /// The tensor's GGUF name (`blk.3.attn_q.weight`).
    pub name: String,
    /// The ggml type as gguf-py spells it (`Q4_K`, `F32`).
    #[serde(rename = "type")]
    pub ty: String,
    /// Dimensions in GGUF order (ne0, the row length, first).
    pub dims: Vec<u64>,
    /// Size of the tensor's data in bytes.
    pub bytes: u64,
    /// Index of the file (in [`ModelLayout::files`]) that holds the tensor.
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub file_offset: u64,
}

/// A model's files and tensors: the planner's whole input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    /// The model's files in split order (one entry for a single-file model).
    pub files: Vec<ModelFile>,
    /// `general.alignment`: every tensor offset is a multiple of it.
    pub alignment: u64,
    /// The tensors in the model's order (file order, then each file's order).
    pub tensors: Vec<TensorSpan>,
}

impl ModelLayout {
    /// Offset of each file's data section in the logical tensor-data space,
    /// which concatenates the files' data sections in split order, each
    /// starting on the alignment (so a split set and the single file it was
    /// split from give every tensor the same logical offset).
    ///
    /// `None` when the sizes are inconsistent or overflow.
    pub fn logical_bases(&self) -> Option<Vec<u64>> {
        let mut bases = Vec::with_capacity(self.files.len());
        let mut next = 0u64;
        for file in &self.files {
            bases.push(next);
            let end = next.checked_add(file.size.checked_sub(file.data_offset)?)?;
            next = end.checked_next_multiple_of(self.alignment.max(1))?;
        }
        Some(bases)
    }

    /// The same files with only the tensors `keep` names: what one pipeline
    /// stage maps. The kept tensors keep their files and offsets, so their
    /// logical offsets are the whole model's.
    pub fn only(&self, keep: impl Fn(&str) -> bool) -> ModelLayout {
        ModelLayout {
            files: self.files.clone(),
            alignment: self.alignment,
            tensors: self
                .tensors
                .iter()
                .filter(|t| keep(&t.name))
                .cloned()
                .collect(),
        }
    }

    /// The transformer block a tensor belongs to (`blk.N.` names), if any.
    pub fn block_of(name: &str) -> Option<u64> {
        let rest = name.strip_prefix("blk.")?;
        let (number, _) = rest.split_once('.')?;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        number.parse().ok()
    }
}
