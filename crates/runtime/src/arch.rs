//! Architectures: hyperparameters read from the GGUF, and each layer's
//! tensors by plan index. Only what differs between architectures lives here.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use shard_planner::Plan;
use shardload_gguf::{GgufFile, Value};

/// The architectures the forward pass knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `llama`: Llama 2/3, SmolLM2, Mistral-style models.
    Llama,
    /// `gemma3`: scaled embeddings, per-head Q/K norms, post-attention and
    /// post-FFN norms, GEGLU, interleaved sliding-window and global layers.
    Gemma3,
}

impl Architecture {
    /// Every supported name, for errors.
    pub const SUPPORTED: &'static str = "llama, gemma3";

    fn from_name(name: &str) -> Result<Architecture> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "gemma3" => Ok(Architecture::Gemma3),
            other => bail!(
                "unsupported architecture {other} (supported: {})",
                Architecture::SUPPORTED
            ),
        }
    }
}

/// A model's shape, every value read from its GGUF metadata.
#[derive(Clone, Debug)]
pub struct Hyperparameters {
    /// The architecture.
    pub arch: Architecture,
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
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// What multiplies q·k before the softmax.
    pub attention_scale: f32,
    /// Per layer: the sliding window (0: global attention) and the RoPE base.
    pub layer_attention: Vec<(usize, f32)>,
}

/// The plan indices of one block's tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerTensors {
    pub attn_norm: i32,
    pub q: i32,
    pub k: i32,
    pub v: i32,
    pub o: i32,
    pub ffn_norm: i32,
    pub gate: i32,
    pub up: i32,
    pub down: i32,
    /// Gemma 3's per-head query and key norms, and its norms after attention
    /// and after the FFN (-1 for llama).
    pub q_norm: i32,
    pub k_norm: i32,
    pub post_attention_norm: i32,
    pub post_ffn_norm: i32,
}

/// The plan indices of the model's tensors.
#[derive(Clone, Debug)]
pub(crate) struct ModelTensors {
    pub embd: i32,
    pub output_norm: i32,
    /// `output.weight`, or the embedding when the model ties them (SmolLM2).
    pub output: i32,
    /// Llama 3's long-context RoPE frequency factors, or -1.
    pub rope_factors: i32,
    pub layers: Vec<LayerTensors>,
}

impl Hyperparameters {
    /// Reads the hyperparameters of `file`, naming any key that is missing
    /// or of the wrong type.
    pub fn read(file: &GgufFile) -> Result<Hyperparameters> {
        let arch_name = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                anyhow!(
                    "{}: missing key general.architecture",
                    file.path().display()
                )
            })?;
        let arch = Architecture::from_name(arch_name)?;
        let key = |name: &str| format!("{arch_name}.{name}");
        let uint = |name: &str| -> Result<usize> {
            let k = key(name);
            let v = file
                .get(&k)
                .ok_or_else(|| anyhow!("{}: missing key {k}", file.path().display()))?;
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: key {k} is not a positive count ({v:?})",
                        file.path().display()
                    )
                })
        };
        let float = |name: &str, default: Option<f32>| -> Result<f32> {
            let k = key(name);
            match file.get(&k) {
                Some(v) => v
                    .as_f64()
                    .map(|v| v as f32)
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: key {k} is not a positive number ({v:?})",
                            file.path().display()
                        )
                    }),
                None => {
                    default.ok_or_else(|| anyhow!("{}: missing key {k}", file.path().display()))
                }
            }
        };
        let heads = uint("attention.head_count")?;
        let embd = uint("embedding_length")?;
        // llama.cpp's defaults: KV heads = heads, key length = embd / heads.
        let kv_heads = match file.get(&key("attention.head_count_kv")) {
            Some(_) => uint("attention.head_count_kv")?,
            None => heads,
        };
        let head_dim = match file.get(&key("attention.key_length")) {
            Some(_) => uint("attention.key_length")?,
            None => embd / heads,
        };
        if heads % kv_heads != 0 || head_dim % 4 != 0 || embd % 32 != 0 {
            bail!(
                "{}: unsupported shape: {heads} heads over {kv_heads} KV heads, head size {head_dim}, embedding {embd}",
                file.path().display()
            );
        }
        let layers = uint("block_count")?;
        let rope_base = float("rope.freq_base", Some(10_000.0))?;
        if file
            .get(&key("rope.scaling.factor"))
            .and_then(Value::as_f64)
            .is_some_and(|f| f != 1.0)
        {
            bail!(
                "{}: RoPE scaling ({}) is not supported yet",
                file.path().display(),
                key("rope.scaling.factor")
            );
        }
        let (attention_scale, layer_attention) = match arch {
            Architecture::Llama => (1.0 / (head_dim as f32).sqrt(), vec![(0, rope_base); layers]),
            Architecture::Gemma3 => {
                if file
                    .get(&key("final_logit_softcapping"))
                    .and_then(Value::as_f64)
                    .is_some_and(|c| c != 0.0)
                {
                    bail!(
                        "{}: final logit soft-capping is not supported yet",
                        file.path().display()
                    );
                }
                if file
                    .get(&key("attention.value_length"))
                    .and_then(Value::as_u64)
                    .is_some_and(|v| v as usize != head_dim)
                {
                    bail!(
                        "{}: value length differs from key length",
                        file.path().display()
                    );
                }
                // llama.cpp's defaults for gemma3: a window on 5 layers of every
                // 6 (key attention.sliding_window_pattern), local RoPE base 10000
                // (key rope.freq_base_swa); the 27B (62 layers) scales by the
                // embedding per head, the others by the key length.
                let window = match file.get(&key("attention.sliding_window")) {
                    Some(_) => uint("attention.sliding_window")?,
                    None => 0,
                };
                let pattern = match file.get(&key("attention.sliding_window_pattern")) {
                    Some(_) => uint("attention.sliding_window_pattern")?,
                    None => 6,
                };
                let local_base = float("rope.freq_base_swa", Some(10_000.0))?;
                let scale = if layers == 62 { embd / heads } else { head_dim };
                let per_layer = (0..layers)
                    .map(|l| {
                        if window > 0 && l % pattern < pattern - 1 {
                            (window, local_base)
                        } else {
                            (0, rope_base)
                        }
                    })
                    .collect();
                (1.0 / (scale as f32).sqrt(), per_layer)
            }
        };
        let vocab_rows = file
            .tensors()
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| {
                anyhow!(
                    "{}: missing tensor token_embd.weight",
                    file.path().display()
                )
            })?;
        Ok(Hyperparameters {
            arch,
            layers,
            embd,
            ffn: uint("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            vocab: usize::try_from(vocab_rows)?,
            rms_eps: float("attention.layer_norm_rms_epsilon", None)?,
            attention_scale,
            layer_attention,
        })
    }
}

impl ModelTensors {
    /// Finds every tensor the forward pass reads, checking its shape.
    pub(crate) fn find(plan: &Plan, hp: &Hyperparameters) -> Result<ModelTensors> {
        let index: HashMap<&str, usize> = plan
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.span.name.as_str(), i))
            .collect();
        let get = |name: &str, dims: &[usize]| -> Result<i32> {
            let &i = index
                .get(name)
                .ok_or_else(|| anyhow!("the model has no tensor {name}"))?;
            let have: Vec<u64> = plan.tensors[i].span.dims.clone();
            let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            if have != want {
                bail!("tensor {name} has dims {have:?}, expected {want:?}");
            }
            Ok(i32::try_from(i)?)
        };
        let (d, q_width, kv_width) = (hp.embd, hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim);
        let embd = get("token_embd.weight", &[d, hp.vocab])?;
        let output = if index.contains_key("output.weight") {
            get("output.weight", &[d, hp.vocab])?
        } else {
            embd
        };
        let rope_factors = if index.contains_key("rope_freqs.weight") {
            get("rope_freqs.weight", &[hp.head_dim / 2])?
        } else {
            -1
        };
        let gemma = hp.arch == Architecture::Gemma3;
        let layers = (0..hp.layers)
            .map(|l| {
                let t = |name: &str, dims: &[usize]| get(&format!("blk.{l}.{name}.weight"), dims);
                let gemma_only =
                    |name: &str, dims: &[usize]| if gemma { t(name, dims) } else { Ok(-1) };
                Ok(LayerTensors {
                    attn_norm: t("attn_norm", &[d])?,
                    q: t("attn_q", &[d, q_width])?,
                    k: t("attn_k", &[d, kv_width])?,
                    v: t("attn_v", &[d, kv_width])?,
                    o: t("attn_output", &[q_width, d])?,
                    ffn_norm: t("ffn_norm", &[d])?,
                    gate: t("ffn_gate", &[d, hp.ffn])?,
                    up: t("ffn_up", &[d, hp.ffn])?,
                    down: t("ffn_down", &[hp.ffn, d])?,
                    q_norm: gemma_only("attn_q_norm", &[hp.head_dim])?,
                    k_norm: gemma_only("attn_k_norm", &[hp.head_dim])?,
                    post_attention_norm: gemma_only("post_attention_norm", &[d])?,
                    post_ffn_norm: gemma_only("post_ffw_norm", &[d])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelTensors {
            embd,
            output_norm: get("output_norm.weight", &[d])?,
            output,
            rope_factors,
            layers,
        })
    }
}
