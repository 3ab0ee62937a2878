//! Models: one GGUF file, or a llama.cpp `gguf-split` set read whole.
//!
//! 70B models are distributed as split sets (`name-00001-of-00004.gguf` ...),
//! whose files carry `split.no`, `split.count` and `split.tensors.count`. The
//! first file holds the model's metadata; tensors keep one logical order:
//! file order, then each file's order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::{Error, GgufFile, TensorInfo};

/// Where a file stands in its split set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitInfo {
    /// `split.no`: the file's 0-based position.
    pub no: u64,
    /// `split.count`: how many files the set has.
    pub count: u64,
    /// `split.tensors.count`: tensors in the whole set.
    pub tensors_count: u64,
}

impl GgufFile {
    /// The file's split keys, if it belongs to a split set.
    pub fn split(&self) -> Option<SplitInfo> {
        Some(SplitInfo {
            no: self.get("split.no")?.as_u64()?,
            count: self.get("split.count")?.as_u64()?,
            tensors_count: self.get("split.tensors.count")?.as_u64()?,
        })
    }
}

/// A whole model: its files, mapped and validated, in split order.
pub struct Model {
    /// The files (one for a single-file model).
    pub files: Vec<GgufFile>,
}

fn error(path: &Path, field: &str, message: String) -> Error {
    Error {
        path: path.display().to_string(),
        field: field.into(),
        offset: 0,
        message,
    }
}

/// The path of file `no` (0-based) of the set whose first file is `first`,
/// named as llama.cpp names them: `{prefix}-{no+1:05}-of-{count:05}.gguf`.
fn sibling(first: &Path, no: u64, count: u64) -> Option<PathBuf> {
    let name = first.file_name()?.to_str()?;
    let suffix = format!("-00001-of-{count:05}.gguf");
    let prefix = name.strip_suffix(&suffix)?;
    Some(first.with_file_name(format!("{prefix}-{:05}-of-{count:05}.gguf", no + 1)))
}

impl Model {
    /// Opens a model. Given the first file of a split set, opens and checks
    /// the whole set; given a later file, says which file to pass instead.
    pub fn open(path: impl AsRef<Path>) -> Result<Model, Error> {
        let path = path.as_ref();
        let first = GgufFile::open(path)?;
        let Some(split) = first.split().filter(|s| s.count > 1) else {
            return Ok(Model { files: vec![first] });
        };
        if split.no != 0 {
            let message = format!(
                "this is file {} of a {}-file split set: pass the first file (…-00001-of-{:05}.gguf)",
                split.no + 1,
                split.count,
                split.count
            );
            return Err(error(path, "metadata split.no", message));
        }
        if sibling(path, 0, split.count).as_deref() != Some(path) {
            let message = format!(
                "split set files must be named PREFIX-00001-of-{:05}.gguf",
                split.count
            );
            return Err(error(path, "file name", message));
        }
        let mut files = vec![first];
        for no in 1..split.count {
            let next = sibling(path, no, split.count).expect("the first file's name was checked");
            if !next.exists() {
                let message = format!(
                    "file {} of the split set, {}, is missing",
                    no + 1,
                    next.display()
                );
                return Err(error(path, "split set", message));
            }
            let file = GgufFile::open(&next)?;
            let expected = SplitInfo { no, ..split };
            if file.split() != Some(expected) {
                let message = format!("split keys are {:?}, expected {expected:?}", file.split());
                return Err(error(&next, "metadata split.*", message));
            }
            if file.header.alignment != files[0].header.alignment {
                let message = "differs from the first file's".to_string();
                return Err(error(&next, "metadata general.alignment", message));
            }
            files.push(file);
        }
        let model = Model { files };
        let total = model.tensor_count() as u64;
        if total != split.tensors_count {
            let message = format!(
                "is {} but the files hold {total} tensors",
                split.tensors_count
            );
            return Err(error(path, "metadata split.tensors.count", message));
        }
        let mut names = HashSet::new();
        for (file, tensor) in model.tensors() {
            if !names.insert(tensor.name.as_str()) {
                let message = format!("tensor {} appears in more than one file", tensor.name);
                return Err(error(model.files[file].path(), "tensor names", message));
            }
        }
        Ok(model)
    }

    /// The first file, which holds the model's metadata.
    pub fn metadata(&self) -> &GgufFile {
        &self.files[0]
    }

    /// Every tensor with the index of its file, in the model's logical order.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &TensorInfo)> {
        self.files
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.tensors().iter().map(move |t| (i, t)))
    }

    /// How many tensors the model has across its files.
    pub fn tensor_count(&self) -> usize {
        self.files.iter().map(|f| f.tensors().len()).sum()
    }
}
