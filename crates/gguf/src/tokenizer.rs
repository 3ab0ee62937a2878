//! The `tokenizer.ggml.*` keys, typed: what an inference engine needs to
//! rebuild a model's tokenizer.

use crate::{GgufFile, Value};

/// A model's tokenizer description, borrowed from its metadata.
#[derive(Clone, Copy, Debug)]
pub struct Tokenizer<'a> {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE), `llama` (sentencepiece-style) ...
    pub model: &'a str,
    /// `tokenizer.ggml.pre`: the pre-tokenizer (`smollm`, `default` ...).
    pub pre: Option<&'a str>,
    /// `tokenizer.ggml.tokens`: the vocabulary, by token id.
    pub tokens: &'a [Value],
    /// `tokenizer.ggml.merges`: BPE merges, for `gpt2` tokenizers.
    pub merges: Option<&'a [Value]>,
    /// `tokenizer.ggml.scores`: per-token scores, for sentencepiece-style tokenizers.
    pub scores: Option<&'a [Value]>,
    /// `tokenizer.ggml.token_type`: normal, control, byte ... per token.
    pub token_types: Option<&'a [Value]>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u64>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u64>,
    /// `tokenizer.ggml.add_bos_token`: whether encoding starts with BOS.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.eot_token_id`: end of turn, where the converter recorded it.
    pub eot: Option<u64>,
    /// `tokenizer.ggml.add_eos_token`: whether encoding ends with EOS.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`: whether sentencepiece-style encoding
    /// puts a space before the text (Llama 2 does, Gemma does not).
    pub add_space_prefix: Option<bool>,
}

impl GgufFile {
    /// The tokenizer, if the file has one (`tokenizer.ggml.model` and `.tokens`).
    pub fn tokenizer(&self) -> Option<Tokenizer<'_>> {
        let array = |key: &str| self.get(key).and_then(Value::as_array);
        let id = |key: &str| self.get(key).and_then(Value::as_u64);
        let flag = |key: &str| match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        Some(Tokenizer {
            model: self.get("tokenizer.ggml.model")?.as_str()?,
            pre: self.get("tokenizer.ggml.pre").and_then(Value::as_str),
            tokens: array("tokenizer.ggml.tokens")?,
            merges: array("tokenizer.ggml.merges"),
            scores: array("tokenizer.ggml.scores"),
            token_types: array("tokenizer.ggml.token_type"),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            eot: id("tokenizer.ggml.eot_token_id"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
        })
    }
}
