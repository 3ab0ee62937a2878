//! Synthetic models with the exact tensor inventory of real architectures,
//! for what no small real file can show: a 70B model's plan and mapping.
//! Written without data they are sparse files (header + hole).

use std::path::Path;

use crate::{GgmlType, GgufWriter, Value};

/// Llama-3-70B at llama.cpp's Q4_K_M: 724 tensors, 42,470,588,672 bytes of
/// tensor data at 32-byte alignment.
pub fn llama3_70b_q4_k_m() -> GgufWriter {
    llama3_70b_q4_k_m_blocks(80)
}

/// The first `blocks` transformer blocks of Llama-3-70B Q4_K_M with its
/// embeddings and output: a multi-GB model with 70B-sized tensors (4 blocks
/// make about 3.3 GB), for benches that need real bytes on disk.
pub fn llama3_70b_q4_k_m_blocks(blocks: u64) -> GgufWriter {
    use GgmlType::{F32, Q4_K, Q6_K};
    let (embed, ffn, kv, vocab) = (8192, 28672, 1024, 128256);
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv(
            "general.name",
            Value::String("Llama-3-70B synthetic inventory (Q4_K_M)".into()),
        )
        .kv("llama.block_count", Value::U32(blocks as u32))
        .kv("llama.context_length", Value::U32(8192))
        .kv("llama.embedding_length", Value::U32(embed as u32))
        .kv("llama.feed_forward_length", Value::U32(ffn as u32))
        .kv("llama.attention.head_count", Value::U32(64))
        .kv("llama.attention.head_count_kv", Value::U32(8))
        .kv("llama.rope.freq_base", Value::F32(500000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("general.file_type", Value::U32(15));
    w.tensor("token_embd.weight", Q4_K, &[embed, vocab])
        .tensor("rope_freqs.weight", F32, &[64]);
    for i in 0..blocks {
        // llama.cpp's Q4_K_M keeps attn_v and ffn_down at Q6_K on these blocks.
        let more_bits = !(10..70).contains(&i) || (i as i64 - 10) % 3 == 2;
        let v_down = if more_bits { Q6_K } else { Q4_K };
        let name = |t: &str| format!("blk.{i}.{t}.weight");
        w.tensor(&name("attn_norm"), F32, &[embed])
            .tensor(&name("attn_q"), Q4_K, &[embed, embed])
            .tensor(&name("attn_k"), Q4_K, &[embed, kv])
            .tensor(&name("attn_v"), v_down, &[embed, kv])
            .tensor(&name("attn_output"), Q4_K, &[embed, embed])
            .tensor(&name("ffn_norm"), F32, &[embed])
            .tensor(&name("ffn_gate"), Q4_K, &[embed, ffn])
            .tensor(&name("ffn_up"), Q4_K, &[embed, ffn])
            .tensor(&name("ffn_down"), v_down, &[ffn, embed]);
    }
    w.tensor("output_norm.weight", F32, &[embed])
        .tensor("output.weight", Q6_K, &[embed, vocab]);
    w
}

/// Writes the first `blocks` blocks of the Llama-3-70B Q4_K_M inventory with
/// random weights (a multi-GB model whose pages are really on disk), for
/// measuring loads and running the real forward pass: random quants and
/// small finite block scales (f16 2^-14, the smallest normal, so a random
/// model stays finite through 80 layers), F32 tensors (norms, RoPE factors)
/// all 1.0. Returns the file's size.
pub fn write_random_llama3_70b(path: &Path, blocks: u64) -> std::io::Result<u64> {
    let writer = llama3_70b_q4_k_m_blocks(blocks);
    let types = writer.tensor_types();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut fill = |tensor: usize, offset: u64, buf: &mut [u8]| {
        let ty = types[tensor];
        if ty == GgmlType::F32 {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = 1f32.to_le_bytes()[(offset as usize + i) % 4];
            }
            return;
        }
        for word in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        // The f16 scales of each block: d and dmin of Q4_K (bytes 0..4), d of Q6_K (208..210).
        let scale_bytes: &[u64] = match ty {
            GgmlType::Q4_K => &[0, 1, 2, 3],
            GgmlType::Q6_K => &[208, 209],
            _ => &[],
        };
        let size = ty.type_size();
        for (i, b) in buf.iter_mut().enumerate() {
            let at = (offset + i as u64) % size;
            if scale_bytes.contains(&at) {
                // 0x0400 little-endian: 2^-14.
                *b = if at.is_multiple_of(2) { 0x00 } else { 0x04 };
            }
        }
    };
    let layout = writer.write(path, Some(&mut fill))?;
    Ok(layout.file_size)
}
