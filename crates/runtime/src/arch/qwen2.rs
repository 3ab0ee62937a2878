//! `qwen2`: Qwen2 and Qwen2.5 (base, instruct and coder). Llama's block with
//! biases on the Q, K and V projections, RoPE on split halves (llama.cpp's
//! NEOX mode) with Qwen's large base, and an `output.weight` of its own
//! unless the model ties it to the embedding (the 0.5B).

use anyhow::{Result, bail};

use super::{Architecture, Entry, Hyperparameters, Metadata};
use crate::program::{Activation, Buffer, ProgramBuilder, Rope};

/// The registry's line for this file.
pub(crate) const ENTRY: Entry = Entry {
    name: "qwen2",
    read,
    chat_template: None,
};

struct Qwen2 {
    hp: Hyperparameters,
    rms_eps: f32,
    rope_base: f32,
}

fn read(meta: &Metadata) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(Qwen2 {
        hp: meta.transformer()?,
        rms_eps: meta.positive("attention.layer_norm_rms_epsilon", None)?,
        rope_base: meta.positive("rope.freq_base", Some(10_000.0))?,
    }))
}

impl Architecture for Qwen2 {
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
        for (name, buffer) in [
            ("attn_q", Buffer::Query),
            ("attn_k", Buffer::Key),
            ("attn_v", Buffer::Value),
        ] {
            p.matmul(&t(name), Buffer::Normed, buffer)?;
            // As llama.cpp: each bias is optional, though every Qwen2 has them.
            let bias = format!("blk.{layer}.{name}.bias");
            if p.has_tensor(&bias) {
                p.bias(buffer, &bias)?;
            }
        }
        let rope = Rope {
            base: self.rope_base,
            neox: true,
            factors: None,
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
        if p.has_tensor("output.bias") {
            bail!("the model has an output.bias, which shardload's qwen2 does not apply yet");
        }
        super::norm_and_output(p, self.rms_eps)
    }
}
