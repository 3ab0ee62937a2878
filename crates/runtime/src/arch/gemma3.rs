//! `gemma3`: Gemma 3. Embeddings scaled by sqrt(embedding), per-head RMSNorm
//! of queries and keys, norms after attention and after the FFN as well as
//! before, NEOX RoPE, GEGLU as ggml computes it, and sliding-window layers
//! (5 of every 6 by default, with their own RoPE base) whose KV cache is a
//! ring of the window. Defaults are llama.cpp's for gemma3.

use anyhow::Result;

use super::{Architecture, Entry, Hyperparameters, Metadata};
use crate::program::{Activation, Buffer, ProgramBuilder, Rope};

/// The registry's line for this file. Gemma 3 GGUFs are often written
/// without their chat template (llama.cpp then falls back to its built-in
/// "gemma" format); this is the template Google publishes with the
/// instruction-tuned models.
pub(crate) const ENTRY: Entry = Entry {
    name: "gemma3",
    read,
    chat_template: Some(include_str!("gemma3.jinja")),
};

struct Gemma3 {
    hp: Hyperparameters,
    rms_eps: f32,
    attention_scale: f32,
    /// Per layer: the sliding window (0: global attention) and the RoPE base.
    layers: Vec<(usize, f32)>,
}

fn read(meta: &Metadata) -> Result<Box<dyn Architecture>> {
    let hp = meta.transformer()?;
    if meta
        .number("final_logit_softcapping")
        .is_some_and(|c| c != 0.0)
    {
        return Err(meta.unsupported("final logit soft-capping is not supported yet"));
    }
    if meta
        .number("attention.value_length")
        .is_some_and(|v| v as usize != hp.head_dim)
    {
        return Err(meta.unsupported("value length differs from key length"));
    }
    let rope_base = meta.positive("rope.freq_base", Some(10_000.0))?;
    // A window on 5 layers of every 6 (attention.sliding_window_pattern),
    // local RoPE base 10000 (rope.freq_base_swa); the 27B (62 layers) scales
    // by the embedding per head, the others by the key length.
    let window = if meta.has("attention.sliding_window") {
        meta.count("attention.sliding_window", None)?
    } else {
        0
    };
    let pattern = meta.count("attention.sliding_window_pattern", Some(6))?;
    let local_base = meta.positive("rope.freq_base_swa", Some(10_000.0))?;
    let scale = if hp.layers == 62 {
        hp.embd / hp.heads
    } else {
        hp.head_dim
    };
    let layers = (0..hp.layers)
        .map(|l| {
            if window > 0 && l % pattern < pattern - 1 {
                (window, local_base)
            } else {
                (0, rope_base)
            }
        })
        .collect();
    Ok(Box::new(Gemma3 {
        rms_eps: meta.positive("attention.layer_norm_rms_epsilon", None)?,
        attention_scale: 1.0 / (scale as f32).sqrt(),
        layers,
        hp,
    }))
}

impl Architecture for Gemma3 {
    fn hyperparameters(&self) -> &Hyperparameters {
        &self.hp
    }

    fn embed(&self, p: &mut ProgramBuilder) -> Result<()> {
        p.embed("token_embd.weight")?;
        // sqrt(n_embd) in f32, as ggml_scale.
        p.scale(Buffer::Residual, (self.hp.embd as f32).sqrt());
        Ok(())
    }

    fn layer(&self, layer: usize, p: &mut ProgramBuilder) -> Result<()> {
        let t = |name: &str| format!("blk.{layer}.{name}.weight");
        let eps = self.rms_eps;
        let (window, rope_base) = self.layers[layer];
        p.rms_norm(Buffer::Residual, &t("attn_norm"), eps, Buffer::Normed)?;
        p.matmul(&t("attn_q"), Buffer::Normed, Buffer::Query)?;
        p.matmul(&t("attn_k"), Buffer::Normed, Buffer::Key)?;
        p.matmul(&t("attn_v"), Buffer::Normed, Buffer::Value)?;
        p.head_norm(Buffer::Query, &t("attn_q_norm"), eps)?;
        p.head_norm(Buffer::Key, &t("attn_k_norm"), eps)?;
        let rope = Rope {
            base: rope_base,
            neox: true,
            factors: p
                .has_tensor("rope_freqs.weight")
                .then_some("rope_freqs.weight"),
        };
        p.rope(Buffer::Query, &rope)?;
        p.rope(Buffer::Key, &rope)?;
        p.attention(window, self.attention_scale);
        p.matmul(&t("attn_output"), Buffer::Attended, Buffer::Projected)?;
        p.rms_norm(
            Buffer::Projected,
            &t("post_attention_norm"),
            eps,
            Buffer::Projected,
        )?;
        p.add(Buffer::Residual, Buffer::Projected);
        p.rms_norm(Buffer::Residual, &t("ffn_norm"), eps, Buffer::Normed)?;
        p.matmul(&t("ffn_gate"), Buffer::Normed, Buffer::Gate)?;
        p.matmul(&t("ffn_up"), Buffer::Normed, Buffer::Up)?;
        p.glu(Activation::Gelu);
        p.matmul(&t("ffn_down"), Buffer::Gate, Buffer::Projected)?;
        p.rms_norm(
            Buffer::Projected,
            &t("post_ffw_norm"),
            eps,
            Buffer::Projected,
        )?;
        p.add(Buffer::Residual, Buffer::Projected);
        Ok(())
    }

    fn head(&self, p: &mut ProgramBuilder) -> Result<()> {
        super::norm_and_output(p, self.rms_eps)
    }
}
