//! `llama`: Llama 2 and 3, SmolLM2 and Mistral-style models. Pre-norm
//! blocks (RMSNorm before attention and before the FFN), RoPE on adjacent
//! pairs (llama.cpp's "normal" mode, with Llama 3's frequency factors when
//! the model has them), grouped-query attention and SwiGLU; the output
//! matrix tied to the embedding when the model has no `output.weight`.

use anyhow::Result;

use super::{Architecture, Entry, Hyperparameters, Metadata};
use crate::program::{Activation, Buffer, ProgramBuilder, Rope};

/// The registry's line for this file.
pub(crate) const ENTRY: Entry = Entry {
    name: "llama",
    read,
    chat_template: None,
};

struct Llama {
    hp: Hyperparameters,
    rms_eps: f32,
    rope_base: f32,
}

fn read(meta: &Metadata) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(Llama {
        hp: meta.transformer()?,
        rms_eps: meta.positive("attention.layer_norm_rms_epsilon", None)?,
        rope_base: meta.positive("rope.freq_base", Some(10_000.0))?,
    }))
}

impl Architecture for Llama {
    fn hyperparameters(&self) -> &Hyperparameters {
        &self.hp
    }

    fn embed(&self, p: &mut ProgramBuilder) -> Result<()> {
        p.embed("token_embd.weight")
    }

    fn layer(&self, layer: usize, p: &mut ProgramBuilder) -> Result<()> {
        let t = |name: &str| format!("blk.{layer}.{name}.weight");
        let eps = self.rms_eps;
        p.rms_norm(Buffer::Residual, &t("attn_norm"), eps, Buffer::Normed)?;
        p.matmul(&t("attn_q"), Buffer::Normed, Buffer::Query)?;
        p.matmul(&t("attn_k"), Buffer::Normed, Buffer::Key)?;
        p.matmul(&t("attn_v"), Buffer::Normed, Buffer::Value)?;
        let rope = Rope {
            base: self.rope_base,
            neox: false,
            factors: p
                .has_tensor("rope_freqs.weight")
                .then_some("rope_freqs.weight"),
        };
        p.rope(Buffer::Query, &rope)?;
        p.rope(Buffer::Key, &rope)?;
        p.attention(0, 1.0 / (self.hp.head_dim as f32).sqrt());
        p.matmul(&t("attn_output"), Buffer::Attended, Buffer::Projected)?;
        p.add(Buffer::Residual, Buffer::Projected);
        p.rms_norm(Buffer::Residual, &t("ffn_norm"), eps, Buffer::Normed)?;
        p.matmul(&t("ffn_gate"), Buffer::Normed, Buffer::Gate)?;
        p.matmul(&t("ffn_up"), Buffer::Normed, Buffer::Up)?;
        p.glu(Activation::Silu);
        p.matmul(&t("ffn_down"), Buffer::Gate, Buffer::Projected)?;
        p.add(Buffer::Residual, Buffer::Projected);
        Ok(())
    }

    fn head(&self, p: &mut ProgramBuilder) -> Result<()> {
        super::norm_and_output(p, self.rms_eps)
    }
}
