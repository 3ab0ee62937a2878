//! Building a [`Tokenizer`] from `tokenizer.ggml.*`, as llama.cpp's
//! `llama_vocab::impl::load` does, refusing what it cannot vouch for.

use rustc_hash::FxHashMap;
use shardload_gguf::{GgufFile, Value};

use crate::{Kind, Tokenizer, attr, bpe, pre, special, spm};

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `tokenizer.ggml.*` key is missing, has the wrong type, or disagrees
    /// with the rest of the tokenizer.
    #[error("{key}: {message}")]
    Key {
        /// The GGUF key (`tokenizer.ggml.merges`).
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An id past the vocabulary was given to decode.
    #[error("token id {id} is out of range: the vocabulary has {n_tokens} tokens")]
    IdOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        n_tokens: u32,
    },
}

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const MERGES: &str = "tokenizer.ggml.merges";
const SCORES: &str = "tokenizer.ggml.scores";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const EOT: &str = "tokenizer.ggml.eot_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// llama.cpp's end-of-turn texts, in its order: the first the vocabulary has
/// is EOT when the GGUF names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// llama.cpp's end-of-generation texts (besides EOS and EOT).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

fn err(key: &'static str, message: impl Into<String>) -> Error {
    Error::Key {
        key,
        message: message.into(),
    }
}

/// A key's value, refused if present with another type than `get` accepts.
fn typed<'a, T>(
    file: &'a GgufFile,
    key: &'static str,
    what: &str,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, Error> {
    match file.get(key) {
        None => Ok(None),
        Some(value) => get(value)
            .map(Some)
            .ok_or_else(|| err(key, format!("expected {what}, found {}", describe(value)))),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(items) => format!("an array of {} values", items.len()),
        other => format!("{other:?}"),
    }
}

fn flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

pub(crate) fn load(file: &GgufFile) -> Result<Tokenizer, Error> {
    let model = typed(file, MODEL, "a string", Value::as_str)?
        .ok_or_else(|| err(MODEL, "missing: the file has no tokenizer"))?;
    let tokens = typed(file, TOKENS, "an array of strings", Value::as_array)?
        .ok_or_else(|| err(TOKENS, "missing"))?;
    if tokens.is_empty() || tokens.len() > u32::MAX as usize / 2 {
        return Err(err(TOKENS, format!("{} tokens", tokens.len())));
    }
    let n = tokens.len();

    let mut texts = Vec::new();
    let mut text_ends = Vec::with_capacity(n);
    let mut token_to_id = FxHashMap::default();
    token_to_id.reserve(n);
    for (i, token) in tokens.iter().enumerate() {
        let text = token.as_str().ok_or_else(|| {
            err(
                TOKENS,
                format!("entry {i} is {}, not a string", describe(token)),
            )
        })?;
        // As llama.cpp: an empty token gets a placeholder text.
        let text = if text.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            text.to_owned()
        };
        texts.extend_from_slice(text.as_bytes());
        text_ends.push(texts.len() as u32);
        token_to_id.insert(text.into_bytes().into_boxed_slice(), i as u32);
    }
    if texts.len() > u32::MAX as usize {
        return Err(err(TOKENS, "more than 4 GiB of token text"));
    }

    let mut attrs = vec![attr::NORMAL; n];
    if let Some(types) = typed(file, TOKEN_TYPE, "an array of integers", Value::as_array)? {
        if types.len() < n {
            return Err(err(
                TOKEN_TYPE,
                format!("{} types for {n} tokens", types.len()),
            ));
        }
        for (i, (a, ty)) in attrs.iter_mut().zip(types).enumerate() {
            let ty = match ty {
                Value::I32(v) => i64::from(*v),
                other => other
                    .as_u64()
                    .and_then(|v| i64::try_from(v).ok())
                    .ok_or_else(|| {
                        err(
                            TOKEN_TYPE,
                            format!("entry {i} is {}, not an integer", describe(other)),
                        )
                    })?,
            };
            *a = match ty {
                1 => attr::NORMAL,
                2 => attr::UNKNOWN,
                3 => attr::CONTROL,
                4 => attr::USER_DEFINED,
                5 => attr::UNUSED,
                6 => attr::BYTE,
                _ => 0,
            };
        }
    }

    let id_key = |key: &'static str| -> Result<Option<u32>, Error> {
        match typed(file, key, "an integer", Value::as_u64)? {
            None => Ok(None),
            Some(id) if id < n as u64 => Ok(Some(id as u32)),
            Some(id) => Err(err(
                key,
                format!("token id {id} is out of range: the vocabulary has {n} tokens"),
            )),
        }
    };
    let bos = id_key(BOS)?;
    let eos = id_key(EOS)?;
    let mut eot = id_key(EOT)?;
    let is_spm = match model {
        "gpt2" => false,
        "llama" => true,
        other => {
            return Err(err(
                MODEL,
                format!("unsupported tokenizer {other:?} (supported: gpt2, llama)"),
            ));
        }
    };
    // As llama.cpp: a BPE vocabulary without a pre-tokenizer gets `default`;
    // sentencepiece has none.
    let family = if is_spm {
        None
    } else {
        let pre = typed(file, PRE, "a string", Value::as_str)?.unwrap_or("default");
        Some(pre::find(pre).ok_or_else(|| {
            err(
                PRE,
                format!(
                    "unsupported pre-tokenizer {pre:?} (supported: {})",
                    pre::supported().join(", ")
                ),
            )
        })?)
    };
    let add_bos = typed(file, ADD_BOS, "a bool", flag)?.unwrap_or(
        // llama.cpp's defaults: sentencepiece adds BOS, BPE as its pre-tokenizer says.
        family.is_none_or(|f| f.add_bos),
    );
    let add_eos = typed(file, ADD_EOS, "a bool", flag)?.unwrap_or(false);
    let add_space_prefix = typed(file, ADD_SPACE_PREFIX, "a bool", flag)?.unwrap_or(true);
    if add_bos && bos.is_none() {
        return Err(err(
            BOS,
            "missing, but tokenizer.ggml.add_bos_token asks for BOS",
        ));
    }
    if add_eos && eos.is_none() {
        return Err(err(
            EOS,
            "missing, but tokenizer.ggml.add_eos_token asks for EOS",
        ));
    }

    // As llama.cpp: tokens it knows by text as end of turn / generation are
    // control tokens whatever their type says.
    let lookup = |text: &str| token_to_id.get(text.as_bytes()).copied();
    if eot.is_none() {
        eot = EOT_TEXTS.iter().find_map(|t| lookup(t));
    }
    let mut eog: Vec<u32> = EOG_TEXTS.iter().filter_map(|t| lookup(t)).collect();
    for &id in eot.iter().chain(&eog) {
        attrs[id as usize] |= attr::CONTROL;
    }
    eog.extend(eos.iter().chain(&eot));
    eog.sort_unstable();
    eog.dedup();

    let text_of = |i: usize| {
        let start = if i == 0 { 0 } else { text_ends[i - 1] as usize };
        &texts[start..text_ends[i] as usize]
    };

    // A BPE vocabulary has a pre-tokenizer family; sentencepiece has none.
    let kind = if let Some(family) = family {
        let merges = typed(file, MERGES, "an array of strings", Value::as_array)?
            .ok_or_else(|| err(MERGES, "missing: a gpt2 tokenizer needs its merges"))?;
        Kind::Bpe(bpe::Bpe::new(family, merges, &token_to_id)?)
    } else {
        let scores = match typed(file, SCORES, "an array of numbers", Value::as_array)? {
            None => vec![0.0; n],
            Some(values) => {
                if values.len() < n {
                    return Err(err(
                        SCORES,
                        format!("{} scores for {n} tokens", values.len()),
                    ));
                }
                values[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_f64().map(|s| s as f32).ok_or_else(|| {
                            err(
                                SCORES,
                                format!("entry {i} is {}, not a number", describe(v)),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let mut byte_tokens = [0u32; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = lookup(&hex)
                .or_else(|| token_to_id.get(&[b as u8][..]).copied())
                .ok_or_else(|| {
                    err(
                        TOKENS,
                        format!("no byte-fallback token {hex}: sentencepiece needs all 256"),
                    )
                })?;
        }
        Kind::Spm(spm::Spm {
            scores,
            byte_tokens,
            add_space_prefix,
        })
    };

    let mut pieces = Vec::with_capacity(texts.len());
    let mut piece_ends = Vec::with_capacity(n);
    for (i, &a) in attrs.iter().enumerate() {
        let text = text_of(i);
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            pieces.extend_from_slice(text);
        } else if a & attr::NORMAL != 0 {
            match &kind {
                Kind::Spm(_) => spm::unescape_whitespace(text, &mut pieces),
                Kind::Bpe(_) => bpe::decode_text(text, &mut pieces),
            }
        } else if a & attr::BYTE != 0 {
            // `<0xXX>`, as llama.cpp's token_to_byte reads it.
            let byte = text
                .get(3..5)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    err(
                        TOKEN_TYPE,
                        format!("token {i} is a byte token but its text is not <0xXX>"),
                    )
                })?;
            pieces.push(byte);
        }
        piece_ends.push(pieces.len() as u32);
    }
    if pieces.len() > u32::MAX as usize {
        return Err(err(TOKENS, "more than 4 GiB of token pieces"));
    }

    let specials = special::Specials::new(&attrs, text_of);
    Ok(Tokenizer {
        kind,
        texts,
        text_ends,
        pieces,
        piece_ends,
        attrs,
        token_to_id,
        specials,
        bos,
        eos,
        eot,
        eog,
        add_bos,
        add_eos,
    })
}
