//! Byte-level BPE, as llama.cpp's `llm_tokenizer_bpe`: the text is cut into
//! words by the pre-tokenizer (`pre.rs`), each word's bytes are spelled in
//! GPT-2's byte alphabet, and adjacent symbols are merged by merge rank
//! (lowest first, leftmost on ties) until no merge applies.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use shardload_gguf::Value;

use crate::pre::{Family, PreTokenizer};
use crate::{Error, Tokenizer};

/// A missing byte token: the byte is dropped, as llama.cpp drops it.
const MISSING: u32 = u32::MAX;

pub(crate) struct Bpe {
    pub(crate) pre: PreTokenizer,
    pub(crate) ignore_merges: bool,
    /// The token of each byte's GPT-2 character (`Ġ` for a space).
    pub(crate) byte_ids: [u32; 256],
    /// (left, right) -> (rank, merged token).
    pub(crate) merges: FxHashMap<(u32, u32), (u32, u32)>,
}

/// GPT-2's byte alphabet: printable bytes stand for themselves, the others
/// for the code points from U+0100 on, in byte order.
fn byte_char(byte: u8) -> char {
    const fn printable(b: u8) -> bool {
        matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
    }
    if printable(byte) {
        return char::from(byte);
    }
    let n = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(0x100 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

impl Bpe {
    pub(crate) fn new(
        family: &Family,
        merges: &[Value],
        token_to_id: &FxHashMap<Box<[u8]>, u32>,
    ) -> Result<Bpe, Error> {
        const KEY: &str = "tokenizer.ggml.merges";
        let pre = PreTokenizer::new(family).map_err(|message| Error::Key {
            key: "tokenizer.ggml.pre",
            message,
        })?;
        let mut byte_ids = [MISSING; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            let c = byte_char(b as u8).encode_utf8(&mut buf);
            if let Some(&found) = token_to_id.get(c.as_bytes()) {
                *id = found;
            }
        }
        let mut table = FxHashMap::default();
        table.reserve(merges.len());
        let id = |i: usize, part: &str| {
            token_to_id
                .get(part.as_bytes())
                .copied()
                .ok_or_else(|| Error::Key {
                    key: KEY,
                    message: format!("merge {i} names {part:?}, which is not a token"),
                })
        };
        for (i, merge) in merges.iter().enumerate() {
            let text = merge.as_str().ok_or_else(|| Error::Key {
                key: KEY,
                message: format!("entry {i} is not a string"),
            })?;
            // As llama.cpp: split at the first space after the first byte.
            let at = text
                .bytes()
                .skip(1)
                .position(|b| b == b' ')
                .map(|p| p + 1)
                .ok_or_else(|| Error::Key {
                    key: KEY,
                    message: format!("merge {i} ({text:?}) is not two tokens separated by a space"),
                })?;
            let (left, right) = (&text[..at], &text[at + 1..]);
            let pair = (id(i, left)?, id(i, right)?);
            let merged = id(i, &format!("{left}{right}"))?;
            table.entry(pair).or_insert((i as u32, merged));
        }
        Ok(Bpe {
            pre,
            ignore_merges: family.ignore_merges,
            byte_ids,
            merges: table,
        })
    }

    /// Appends the tokens of one text fragment.
    pub(crate) fn encode(
        &self,
        tok: &Tokenizer,
        raw: &[u8],
        session: &mut Session,
        out: &mut Vec<u32>,
    ) {
        let (text, surrogates) = lenient_utf8(raw);
        if !surrogates.is_empty() {
            // Rare enough to go word by word: stand-ins back to surrogate bytes.
            self.pre.split(&text, &mut |word| {
                let at = word.as_ptr() as usize - text.as_ptr() as usize;
                let mut bytes = word.as_bytes().to_vec();
                for &s in surrogates
                    .iter()
                    .filter(|&&s| s >= at && s < at + word.len())
                {
                    bytes[s - at] = 0xED;
                    bytes[s - at + 1] += 0x20;
                }
                self.word(tok, &bytes, session, out);
            });
            return;
        }
        // Words repeat: each distinct word is merged once per fragment.
        let mut seen: FxHashMap<&str, (usize, usize)> = FxHashMap::default();
        self.pre.split(&text, &mut |word| {
            if let Some(&(start, len)) = seen.get(word) {
                out.extend_from_within(start..start + len);
                return;
            }
            let start = out.len();
            self.word(tok, word.as_bytes(), session, out);
            seen.insert(word, (start, out.len() - start));
        });
    }

    fn word(&self, tok: &Tokenizer, word: &[u8], s: &mut Session, out: &mut Vec<u32>) {
        if self.ignore_merges {
            s.spelled.clear();
            for &b in word {
                s.spelled.push(byte_char(b));
            }
            if let Some(id) = tok.id_of(s.spelled.as_bytes()) {
                out.push(id);
                return;
            }
        }
        let ids = &mut s.ids;
        ids.clear();
        ids.extend(word.iter().map(|&b| self.byte_ids[usize::from(b)]));
        let n = ids.len();
        if n > 1 {
            s.next.clear();
            s.next.extend(1..=n);
            s.prev.clear();
            s.prev.extend((0..n).map(|i| i.wrapping_sub(1)));
            let heap = &mut s.heap;
            heap.clear();
            let candidate = |ids: &[u32], l: usize, r: usize| {
                self.merges
                    .get(&(ids[l], ids[r]))
                    .map(|&(rank, _)| Reverse((rank, l, r, ids[l], ids[r])))
            };
            for i in 1..n {
                heap.extend(candidate(ids, i - 1, i));
            }
            while let Some(Reverse((_, l, r, lid, rid))) = heap.pop() {
                // Stale: either side changed since this pair was seen.
                if ids[l] != lid || ids[r] != rid || s.next[l] != r {
                    continue;
                }
                let Some(&(_, merged)) = self.merges.get(&(lid, rid)) else {
                    continue;
                };
                ids[l] = merged;
                ids[r] = MISSING;
                let after = s.next[r];
                s.next[l] = after;
                s.next[r] = n;
                if after < n {
                    s.prev[after] = l;
                    heap.extend(candidate(ids, l, after));
                }
                let before = s.prev[l];
                if before < n {
                    heap.extend(candidate(ids, before, l));
                }
            }
            let mut i = 0;
            while i < n {
                if ids[i] != MISSING {
                    out.push(ids[i]);
                }
                i = s.next[i];
            }
        } else {
            out.extend(ids.iter().copied().filter(|&id| id != MISSING));
        }
    }
}

/// A merge waiting in the queue: (rank, left index, right index, left id,
/// right id); lowest rank first, then leftmost.
type Candidate = (u32, usize, usize, u32, u32);

/// Buffers reused from word to word.
#[derive(Default)]
pub(crate) struct Session {
    ids: Vec<u32>,
    next: Vec<usize>,
    prev: Vec<usize>,
    heap: BinaryHeap<Reverse<Candidate>>,
    spelled: String,
}

/// Text from bytes as llama.cpp's `unicode_cpts_from_utf8` reads them: a byte
/// that does not start a complete sequence becomes U+FFFD and reading goes on
/// at the next byte. Sequences are not checked further: overlong forms give
/// their code point, and a surrogate (which llama.cpp keeps, and which no `str`
/// can hold) is held by the private-use stand-in U+E000 + (s - U+D800), of the
/// same regex class; its byte offsets are returned to put its bytes back.
/// Code points past U+10FFFF (llama.cpp throws on them) become U+FFFD.
fn lenient_utf8(bytes: &[u8]) -> (Cow<'_, str>, Vec<usize>) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (Cow::Borrowed(text), Vec::new());
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut surrogates = Vec::new();
    let mut i = 0;
    let cont = |j: usize| bytes.get(j).is_some_and(|&b| b & 0xC0 == 0x80);
    while i < bytes.len() {
        let b = bytes[i];
        let (cpt, len) = if b < 0x80 {
            (u32::from(b), 1)
        } else if b & 0x40 == 0 {
            (0xFFFD, 1)
        } else if b & 0x20 == 0 {
            if cont(i + 1) {
                (
                    (u32::from(b & 0x1F) << 6) | u32::from(bytes[i + 1] & 0x3F),
                    2,
                )
            } else {
                (0xFFFD, 1)
            }
        } else if b & 0x10 == 0 {
            if cont(i + 1) && cont(i + 2) {
                let c = (u32::from(b & 0x0F) << 12)
                    | (u32::from(bytes[i + 1] & 0x3F) << 6)
                    | u32::from(bytes[i + 2] & 0x3F);
                (c, 3)
            } else {
                (0xFFFD, 1)
            }
        } else if b & 0x08 == 0 {
            if cont(i + 1) && cont(i + 2) && cont(i + 3) {
                let c = (u32::from(b & 0x07) << 18)
                    | (u32::from(bytes[i + 1] & 0x3F) << 12)
                    | (u32::from(bytes[i + 2] & 0x3F) << 6)
                    | u32::from(bytes[i + 3] & 0x3F);
                (c, 4)
            } else {
                (0xFFFD, 1)
            }
        } else {
            (0xFFFD, 1)
        };
        let c = if (0xD800..0xE000).contains(&cpt) {
            surrogates.push(out.len());
            cpt - 0xD800 + 0xE000
        } else {
            cpt
        };
        out.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
        i += len;
    }
    (Cow::Owned(out), surrogates)
}

/// A byte-level token's text as bytes: each GPT-2 character back to its byte
/// (a character outside the alphabet is kept as it is).
pub(crate) fn decode_text(text: &[u8], out: &mut Vec<u8>) {
    for c in String::from_utf8_lossy(text).chars() {
        match byte_of(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn byte_of(c: char) -> Option<u8> {
    let c = u32::from(c);
    if c < 0x100 {
        let b = c as u8;
        return (byte_char(b) == char::from(b)).then_some(b);
    }
    (0..=255u8).find(|&b| u32::from(byte_char(b)) == c)
}
