//! Tokenizers identical to llama.cpp's (`llama-vocab.cpp`), built from a GGUF
//! file's `tokenizer.ggml.*` keys: one id off and a model reads a different
//! prompt, so every rule here is llama.cpp's, checked against `llama-tokenize`.
//!
//! - `gpt2`: byte-level BPE with ranked merges, after the pre-tokenizer regexes
//!   llama.cpp uses for each `tokenizer.ggml.pre` (Qwen, Llama 3 and 4,
//!   DeepSeek, GPT-2, Falcon, StarCoder, Mistral's Tekken, Kimi K2, ...:
//!   [`supported_pre_tokenizers`]), run as llama.cpp runs them.
//! - `llama`: sentencepiece-style score-driven merges over UTF-8 characters,
//!   spaces as `▁`, byte-fallback tokens `<0xXX>` (Gemma 3, Llama 2, ...).
//!
//! Special and control tokens written in the text (`<|im_start|>`,
//! `<start_of_turn>`) become their ids as llama.cpp parses them. Any byte string
//! is tokenizable: see [`Tokenizer::encode`] for invalid UTF-8. Knows nothing of
//! wasm.

mod bpe;
mod export;
mod load;
mod pre;
mod special;
mod spm;

use rustc_hash::FxHashMap;

pub use load::Error;
pub use pre::{families as pre_tokenizer_families, supported as supported_pre_tokenizers};

/// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`
/// (bit flags: llama.cpp may add `CONTROL` to a token it recognises by text).
pub(crate) mod attr {
    pub const UNKNOWN: u8 = 1 << 0;
    pub const UNUSED: u8 = 1 << 1;
    pub const NORMAL: u8 = 1 << 2;
    pub const CONTROL: u8 = 1 << 3;
    pub const USER_DEFINED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;
}

/// The two tokenizer families, with what each needs beyond the vocabulary.
enum Kind {
    Bpe(bpe::Bpe),
    Spm(spm::Spm),
}

/// A model's tokenizer: text to ids exactly as llama.cpp's `llama_tokenize`,
/// ids back to text as `llama_token_to_piece`. Built once per model; encoding
/// and decoding borrow it immutably, so one can serve many threads.
pub struct Tokenizer {
    kind: Kind,
    /// Token texts as stored in the GGUF, concatenated; `text_ends[i]` ends token i.
    texts: Vec<u8>,
    text_ends: Vec<u32>,
    /// What each token stands for as text (`▁` and byte-level BPE undone), concatenated.
    pieces: Vec<u8>,
    piece_ends: Vec<u32>,
    attrs: Vec<u8>,
    /// Token text to id; for duplicate texts the last id wins, as in llama.cpp.
    token_to_id: FxHashMap<Box<[u8]>, u32>,
    specials: special::Specials,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl Tokenizer {
    /// The tokenizer of a GGUF file; an error names the `tokenizer.ggml.*` key
    /// that is missing or inconsistent.
    pub fn from_gguf(file: &shardload_gguf::GgufFile) -> Result<Tokenizer, Error> {
        load::load(file)
    }

    /// Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special,
    /// parse_special)`.
    ///
    /// - `add_special`: BOS first and EOS last where the model says so
    ///   (`add_bos_token`, `add_eos_token`).
    /// - `parse_special`: control tokens written in the text (`<|im_start|>`,
    ///   `<bos>`) become their ids; without it they are tokenized as plain text.
    ///   User-defined tokens (Gemma's `\n`, runs of spaces) are matched either way.
    ///
    /// Invalid UTF-8 is tokenizable. Sentencepiece-style: the bytes are kept and
    /// any byte no token covers becomes its byte-fallback token, so decoding gives
    /// the same bytes back. Byte-level BPE: each byte that does not start a valid
    /// sequence becomes U+FFFD, as llama.cpp does; its decoder is lenient and so
    /// is this one (overlong forms give their code point, surrogates keep their
    /// bytes). Code points past U+10FFFF, on which llama.cpp throws, become U+FFFD.
    pub fn encode(&self, text: &[u8], add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            // load() refuses add_bos without a BOS id.
            out.extend(self.bos);
        }
        let fragments = self.specials.partition(text, parse_special, &self.attrs);
        match &self.kind {
            Kind::Bpe(bpe) => {
                let mut session = bpe::Session::default();
                for fragment in fragments {
                    match fragment {
                        special::Fragment::Text(range) => {
                            bpe.encode(self, &text[range], &mut session, &mut out)
                        }
                        special::Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Kind::Spm(spm) => {
                let mut prev_special = true;
                for fragment in fragments {
                    match fragment {
                        special::Fragment::Text(range) => {
                            spm.encode(self, &text[range], prev_special, &mut out);
                            prev_special = false;
                        }
                        special::Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The text a token stands for, as llama.cpp's `llama_token_to_piece` with
    /// `special = true`: control tokens give their own text (`<|im_end|>`), byte
    /// tokens their byte, so a piece may be part of a UTF-8 character.
    pub fn piece(&self, id: u32) -> Result<&[u8], Error> {
        let i = self.index(id)?;
        let start = if i == 0 {
            0
        } else {
            self.piece_ends[i - 1] as usize
        };
        Ok(&self.pieces[start..self.piece_ends[i] as usize])
    }

    /// A token's text as stored in the GGUF (`Ġthe`, `▁the`, `<0x0A>`).
    pub fn token_text(&self, id: u32) -> Result<&[u8], Error> {
        let i = self.index(id)?;
        let start = if i == 0 {
            0
        } else {
            self.text_ends[i - 1] as usize
        };
        Ok(&self.texts[start..self.text_ends[i] as usize])
    }

    /// The bytes a run of ids decodes to: their pieces, control and unknown
    /// tokens left out (they are not text). An id out of range is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for &id in ids {
            if !self.is_hidden(id)? {
                out.extend_from_slice(self.piece(id)?);
            }
        }
        Ok(out)
    }

    /// A streaming decoder: text for one id at a time, in whole UTF-8 characters.
    pub fn decoder(&self) -> Decoder<'_> {
        Decoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }

    /// Whether a token is a control token (BOS, `<|im_end|>`, `<end_of_turn>`):
    /// a marker for the model, never shown as text.
    pub fn is_control(&self, id: u32) -> Result<bool, Error> {
        Ok(self.attrs[self.index(id)?] & attr::CONTROL != 0)
    }

    /// Whether generating this token ends generation: EOS, EOT and the tokens
    /// llama.cpp recognises as end-of-generation by their text (`<|im_end|>`,
    /// `<end_of_turn>`, `<|endoftext|>` ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The BOS id, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn id (`tokenizer.ggml.eot_token_id`, else the first of
    /// llama.cpp's end-of-turn texts the vocabulary has: `<|im_end|>`,
    /// `<end_of_turn>` ...): where a chat reply stops.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether `encode` with `add_special` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The vocabulary size: ids are `0..n_tokens()`.
    pub fn n_tokens(&self) -> u32 {
        self.attrs.len() as u32
    }

    /// Whether a token decodes to nothing: control and unknown tokens.
    fn is_hidden(&self, id: u32) -> Result<bool, Error> {
        Ok(self.attrs[self.index(id)?] & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    fn index(&self, id: u32) -> Result<usize, Error> {
        if (id as usize) < self.attrs.len() {
            Ok(id as usize)
        } else {
            Err(Error::IdOutOfRange {
                id,
                n_tokens: self.n_tokens(),
            })
        }
    }

    fn id_of(&self, text: &[u8]) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }
}

/// Turns ids into text as they are generated: a UTF-8 character split across
/// tokens (byte tokens, partial BPE bytes) comes out whole once complete,
/// never as replacement characters in the middle; control tokens print nothing.
pub struct Decoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
}

impl Decoder<'_> {
    /// The text this token completes: whole characters only. Bytes that can
    /// never become valid UTF-8 come out as U+FFFD; an id out of range is an error.
    pub fn push(&mut self, id: u32) -> Result<String, Error> {
        if self.tokenizer.is_hidden(id)? {
            return Ok(String::new());
        }
        self.pending.extend_from_slice(self.tokenizer.piece(id)?);
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // valid_up_to says these bytes are valid: the default is never taken.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        self.pending.drain(..self.pending.len() - keep);
        Ok(text)
    }

    /// Whatever is left at the end of generation: an unfinished character
    /// comes out as U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
