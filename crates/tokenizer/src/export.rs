//! The tokenizer as data, for `web/tokenizer.js`: a browser tab tokenizes
//! with the same vocabulary, attributes, merges or scores, special tokens
//! and pre-tokenizer regexes that this crate resolved from the GGUF, so the
//! rules are derived once, here, and the port only applies them.

use serde_json::{Value, json};

use crate::{Kind, Tokenizer};

/// A byte string as JSON: a string where it is UTF-8, else its bytes.
fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(text) => json!(text),
        Err(_) => json!(b),
    }
}

impl Tokenizer {
    /// Everything `web/tokenizer.js` needs to give this tokenizer's ids and
    /// pieces (format `shardload-tokenizer/1`): token texts and pieces (a
    /// string, or an array of bytes where not UTF-8), attribute bits, the
    /// special tokens in matching priority, and per kind the merges in rank
    /// order (`[left, right, merged]`) and regexes, or the scores.
    pub fn to_json(&self) -> Value {
        let n = self.attrs.len() as u32;
        let texts: Vec<Value> = (0..n)
            .map(|id| bytes(self.token_text(id).unwrap_or_default()))
            .collect();
        let pieces: Vec<Value> = (0..n)
            .map(|id| bytes(self.piece(id).unwrap_or_default()))
            .collect();
        let kind = match &self.kind {
            Kind::Bpe(bpe) => {
                let mut merges: Vec<(u32, u32, u32, u32)> = bpe
                    .merges
                    .iter()
                    .map(|(&(l, r), &(rank, merged))| (rank, l, r, merged))
                    .collect();
                merges.sort_unstable();
                json!({
                    "kind": "bpe",
                    "regexes": bpe.pre.sources(),
                    "ignore_merges": bpe.ignore_merges,
                    "byte_ids": bpe.byte_ids.iter().map(|&id| (id != u32::MAX).then_some(id)).collect::<Vec<_>>(),
                    "merges": merges.iter().map(|&(_, l, r, m)| [l, r, m]).collect::<Vec<_>>(),
                })
            }
            Kind::Spm(spm) => json!({
                "kind": "spm",
                "scores": spm.scores,
                "byte_tokens": spm.byte_tokens.as_slice(),
                "add_space_prefix": spm.add_space_prefix,
            }),
        };
        let mut out = json!({
            "format": "shardload-tokenizer/1",
            "texts": texts,
            "pieces": pieces,
            "attrs": self.attrs,
            "specials": self.specials.ids,
            "bos": self.bos,
            "eos": self.eos,
            "eot": self.eot,
            "eog": self.eog,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        });
        if let (Some(out), Value::Object(kind)) = (out.as_object_mut(), kind) {
            out.extend(kind);
        }
        out
    }
}
