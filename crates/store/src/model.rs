//! Opens a model and describes it to the planner: the one place where the
//! GGUF reader's view becomes the planner's tensor table.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use shard_planner::{ModelFile, ModelLayout, Plan, PlanOptions, TensorSpan};
use shardload_gguf::{GgufFile, Model};
use xxhash_rust::xxh64::Xxh64;

/// How many evenly spaced 4 KiB windows of the tensor data the fingerprint reads.
const FINGERPRINT_SAMPLES: u64 = 64;
const FINGERPRINT_WINDOW: u64 = 4096;

/// An opened model with its planner view.
pub struct OpenModel {
    /// The GGUF files, mapped and validated.
    pub gguf: Model,
    /// The tensor table the planner works on.
    pub layout: ModelLayout,
}

impl OpenModel {
    /// Opens a GGUF model (given the first file of a split set, the whole set).
    pub fn open(path: &Path) -> Result<OpenModel> {
        let gguf = Model::open(path)?;
        let files = gguf
            .files
            .iter()
            .map(|file| {
                Ok(ModelFile {
                    path: file.path().display().to_string(),
                    size: file.size(),
                    fingerprint: fingerprint(file)?,
                    data_offset: file.header.data_offset,
                })
            })
            .collect::<Result<_>>()?;
        let tensors = gguf
            .tensors()
            .map(|(file, t)| TensorSpan {
                name: t.name.clone(),
                ty: t.ty.name().to_string(),
                dims: t.dims.clone(),
                bytes: t.bytes,
                file,
                file_offset: gguf.files[file].header.data_offset + t.offset,
            })
            .collect();
        let layout = ModelLayout {
            files,
            alignment: gguf.metadata().header.alignment,
            tensors,
        };
        Ok(OpenModel { gguf, layout })
    }

    /// Plans the model's shards.
    pub fn plan(&self, options: &PlanOptions) -> Result<Plan> {
        Plan::new(&self.layout, options).with_context(|| format!("cannot plan {}", self.name()))
    }

    /// Reads a plan file and checks that it was made from this model.
    pub fn load_plan(&self, plan_path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(plan_path)
            .with_context(|| format!("cannot read plan {}", plan_path.display()))?;
        let plan = Plan::from_json(&text).with_context(|| format!("{}", plan_path.display()))?;
        self.checked(plan, &self.layout)
            .with_context(|| format!("{} was not made from {}", plan_path.display(), self.name()))
    }

    /// A plan read from elsewhere, checked to be of `layout` (this model's
    /// tensors, or the part of them one pipeline stage holds), with this
    /// model's paths: the files just checked are the ones to read, wherever
    /// the plan was made, not whatever now lies at the paths it recorded.
    pub fn checked(&self, mut plan: Plan, layout: &ModelLayout) -> Result<Plan> {
        plan.check_model(layout)?;
        for (planned, opened) in plan.model.files.iter_mut().zip(&self.layout.files) {
            planned.path.clone_from(&opened.path);
        }
        Ok(plan)
    }

    /// The model's first file, as the user named it.
    pub fn name(&self) -> String {
        self.gguf.metadata().path().display().to_string()
    }
}

/// A fingerprint that notices a changed file without reading all of it: the
/// size, the whole header (names, types, offsets, tokenizer) and evenly
/// spaced 4 KiB windows of the tensor data, hashed with XXH64. Read with
/// `pread`, not through the mapping, so a file that shrinks meanwhile is an
/// error rather than a SIGBUS.
fn fingerprint(file: &GgufFile) -> Result<String> {
    let reader = File::open(file.path())
        .with_context(|| format!("cannot open {}", file.path().display()))?;
    let read = |offset: u64, len: u64| -> Result<Vec<u8>> {
        let mut buffer = vec![0; len as usize];
        reader
            .read_exact_at(&mut buffer, offset)
            .with_context(|| format!("cannot read {} (did it change?)", file.path().display()))?;
        Ok(buffer)
    };
    let mut hash = Xxh64::new(0);
    hash.update(&file.size().to_le_bytes());
    let data_start = file.header.data_offset;
    // The header was just parsed from the mapping: hash it there, not from a copy.
    let header = file
        .bytes()
        .get(..data_start as usize)
        .with_context(|| format!("{} is shorter than its header", file.path().display()))?;
    hash.update(header);
    let data_len = file.size() - data_start;
    let span = data_len.saturating_sub(FINGERPRINT_WINDOW);
    for i in 0..FINGERPRINT_SAMPLES {
        let start = span * i / (FINGERPRINT_SAMPLES - 1);
        hash.update(&read(
            data_start + start,
            FINGERPRINT_WINDOW.min(data_len - start),
        )?);
    }
    Ok(format!("xxh64:{:016x}", hash.digest()))
}
