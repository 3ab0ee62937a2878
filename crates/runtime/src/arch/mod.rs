//! Architectures as data: each architecture is one file here that reads its
//! hyperparameters from the GGUF and emits its forward pass as operations of
//! a [`ProgramBuilder`] (the embedding, each layer, the output head). The
//! registry below maps `general.architecture` to that file; nothing else in
//! the runtime knows which architecture it runs.
//!
//! Adding an architecture: one new file and one line in [`REGISTRY`].

mod gemma3;
mod llama;
mod qwen2;

use anyhow::{Result, anyhow, bail};
use shardload_gguf::{GgufFile, Value};

use crate::program::{Buffer, ProgramBuilder};

/// An architecture's forward pass, as operations over the program's named
/// buffers and the model's tensors.
pub(crate) trait Architecture: Send + Sync {
    /// The shape every host-side layout needs.
    fn hyperparameters(&self) -> &Hyperparameters;
    /// Token ids to the residual stream (`Buffer::Residual`).
    fn embed(&self, program: &mut ProgramBuilder) -> Result<()>;
    /// Transformer block `layer`, residual stream in and out.
    fn layer(&self, layer: usize, program: &mut ProgramBuilder) -> Result<()>;
    /// The gathered output rows (`Buffer::Outputs`) to logits (`Buffer::Logits`).
    fn head(&self, program: &mut ProgramBuilder) -> Result<()>;
}

/// The output head most architectures share: RMSNorm of the gathered rows,
/// then `output.weight`, or the embedding when the model ties them (SmolLM2,
/// Gemma).
pub(crate) fn norm_and_output(p: &mut ProgramBuilder, rms_eps: f32) -> Result<()> {
    p.rms_norm(
        Buffer::Outputs,
        "output_norm.weight",
        rms_eps,
        Buffer::Outputs,
    )?;
    let output = if p.has_tensor("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    p.matmul(output, Buffer::Outputs, Buffer::Logits)
}

/// What an architecture file registers: its `general.architecture` name, how
/// it reads a GGUF, and the chat template to use when a GGUF carries none.
pub(crate) struct Entry {
    name: &'static str,
    read: fn(&Metadata) -> Result<Box<dyn Architecture>>,
    chat_template: Option<&'static str>,
}

/// Every architecture the runtime runs.
const REGISTRY: &[Entry] = &[llama::ENTRY, gemma3::ENTRY, qwen2::ENTRY];

/// The chat template for GGUFs of architecture `name` written without one.
pub(crate) fn default_chat_template(name: &str) -> Option<&'static str> {
    REGISTRY
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.chat_template)
}

/// The architecture of `file`, its hyperparameters read and checked.
pub(crate) fn read(file: &GgufFile) -> Result<Box<dyn Architecture>> {
    let name = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            anyhow!(
                "{}: missing key general.architecture",
                file.path().display()
            )
        })?;
    let Some(entry) = REGISTRY.iter().find(|e| e.name == name) else {
        let supported: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        bail!(
            "unsupported architecture {name} (supported: {})",
            supported.join(", ")
        );
    };
    (entry.read)(&Metadata { file, arch: name })
}

/// A model's shape, every value read from its GGUF metadata: what the
/// runtime lays out buffers and caches by, whatever the architecture.
#[derive(Clone, Debug)]
pub struct Hyperparameters {
    /// `general.architecture`.
    pub architecture: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Embedding width (residual stream).
    pub embd: usize,
    /// FFN hidden width.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
}

impl Hyperparameters {
    /// Reads the hyperparameters of `file`, naming any key that is missing
    /// or of the wrong type, and any architecture that is not supported.
    pub fn read(file: &GgufFile) -> Result<Hyperparameters> {
        Ok(read(file)?.hyperparameters().clone())
    }
}

/// A GGUF's metadata as an architecture file reads it: keys under the
/// architecture's prefix, with errors that name the file and the key.
pub(crate) struct Metadata<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Metadata<'_> {
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    fn path(&self) -> String {
        self.file.path().display().to_string()
    }

    /// Whether `{arch}.{name}` is present.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.file.get(&self.key(name)).is_some()
    }

    /// `{arch}.{name}` as a positive count below 2^24 (`default` when absent,
    /// an error naming the key when absent without one).
    pub(crate) fn count(&self, name: &str, default: Option<usize>) -> Result<usize> {
        let k = self.key(name);
        let Some(v) = self.file.get(&k) else {
            return default.ok_or_else(|| anyhow!("{}: missing key {k}", self.path()));
        };
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0 && v < 1 << 24)
            .ok_or_else(|| anyhow!("{}: key {k} is not a positive count ({v:?})", self.path()))
    }

    /// `{arch}.{name}` as a positive finite number (`default` when absent).
    pub(crate) fn positive(&self, name: &str, default: Option<f32>) -> Result<f32> {
        let k = self.key(name);
        let Some(v) = self.file.get(&k) else {
            return default.ok_or_else(|| anyhow!("{}: missing key {k}", self.path()));
        };
        v.as_f64()
            .map(|v| v as f32)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| anyhow!("{}: key {k} is not a positive number ({v:?})", self.path()))
    }

    /// `{arch}.{name}` as a number, if present.
    pub(crate) fn number(&self, name: &str) -> Option<f64> {
        self.file.get(&self.key(name)).and_then(Value::as_f64)
    }

    /// An error naming the file, for what an architecture file refuses.
    pub(crate) fn unsupported(&self, what: &str) -> anyhow::Error {
        anyhow!("{}: {what}", self.path())
    }

    /// The shape every transformer has, with llama.cpp's defaults (KV heads
    /// = heads, key length = embedding / heads), checked for what the
    /// guest's kernels need.
    pub(crate) fn transformer(&self) -> Result<Hyperparameters> {
        let heads = self.count("attention.head_count", None)?;
        let embd = self.count("embedding_length", None)?;
        let kv_heads = self.count("attention.head_count_kv", Some(heads))?;
        let head_dim = self.count("attention.key_length", Some(embd / heads))?;
        if heads % kv_heads != 0 || head_dim == 0 || head_dim % 4 != 0 || embd % 32 != 0 {
            bail!(
                "{}: unsupported shape: {heads} heads over {kv_heads} KV heads, head size {head_dim}, embedding {embd}",
                self.path()
            );
        }
        if self.number("rope.scaling.factor").is_some_and(|f| f != 1.0) {
            bail!(
                "{}: RoPE scaling ({}) is not supported yet",
                self.path(),
                self.key("rope.scaling.factor")
            );
        }
        let vocab = self
            .file
            .tensors()
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| anyhow!("{}: missing tensor token_embd.weight", self.path()))?;
        Ok(Hyperparameters {
            architecture: self.arch.to_string(),
            layers: self.count("block_count", None)?,
            embd,
            ffn: self.count("feed_forward_length", None)?,
            heads,
            kv_heads,
            head_dim,
            vocab: usize::try_from(vocab)?,
        })
    }
}
