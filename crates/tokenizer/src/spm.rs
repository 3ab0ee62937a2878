//! Sentencepiece-style tokenization, as llama.cpp's `llm_tokenizer_spm`:
//! spaces become `▁`, the text is cut into UTF-8 characters, and adjacent
//! symbols whose concatenation is a token are merged, highest score first
//! (leftmost on ties), until none can be. What is left that is not a token
//! becomes byte-fallback tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::Tokenizer;

/// `▁` (U+2581), sentencepiece's space.
const SPACE: &[u8] = "\u{2581}".as_bytes();

pub(crate) struct Spm {
    pub(crate) scores: Vec<f32>,
    /// The token of each byte: `<0xXX>`.
    pub(crate) byte_tokens: [u32; 256],
    pub(crate) add_space_prefix: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher score first, then the leftmost.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// UTF-8 sequence length from a lead byte, as llama.cpp's `unicode_len_utf8`
/// (a stray continuation byte counts as one).
fn utf8_len(byte: u8) -> usize {
    const LOOKUP: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LOOKUP[usize::from(byte >> 4)]
}

impl Spm {
    /// Appends the tokens of one text fragment; `after_special` says whether it
    /// starts the text or follows a special token (where the space prefix goes).
    pub(crate) fn encode(
        &self,
        tok: &Tokenizer,
        raw: &[u8],
        after_special: bool,
        out: &mut Vec<u32>,
    ) {
        let mut text = Vec::with_capacity(raw.len() + raw.len() / 4 + 3);
        if self.add_space_prefix && after_special {
            text.extend_from_slice(SPACE);
        }
        for &b in raw {
            if b == b' ' {
                text.extend_from_slice(SPACE);
            } else {
                text.push(b);
            }
        }

        let mut symbols = Vec::with_capacity(text.len());
        let mut offset = 0;
        while offset < text.len() {
            let len = utf8_len(text[offset]).min(text.len() - offset);
            let index = symbols.len();
            symbols.push(Symbol {
                start: offset,
                len,
                prev: index.wrapping_sub(1),
                next: if offset + len == text.len() {
                    NONE
                } else {
                    index + 1
                },
            });
            offset += len;
        }
        if symbols.is_empty() {
            return;
        }

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        let try_add =
            |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
                if left == NONE || right == NONE {
                    return;
                }
                let (l, r) = (symbols[left], symbols[right]);
                let len = l.len + r.len;
                if let Some(id) = tok.id_of(&text[l.start..l.start + len]) {
                    queue.push(Bigram {
                        score: self.scores[id as usize],
                        left,
                        right,
                        len,
                    });
                }
            };
        for i in 1..symbols.len() {
            try_add(&mut queue, &symbols, i - 1, i);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            // Stale: one side was merged away or grew since.
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if r.next != NONE {
                symbols[r.next].prev = bigram.left;
            }
            try_add(&mut queue, &symbols, l.prev, bigram.left);
            try_add(&mut queue, &symbols, bigram.left, r.next);
        }

        let mut i = 0;
        while i != NONE {
            let s = symbols[i];
            let bytes = &text[s.start..s.start + s.len];
            match tok.id_of(bytes) {
                Some(id) => out.push(id),
                None => out.extend(bytes.iter().map(|&b| self.byte_tokens[usize::from(b)])),
            }
            i = s.next;
        }
    }
}

/// A token's text as text: `▁` back to spaces.
pub(crate) fn unescape_whitespace(text: &[u8], out: &mut Vec<u8>) {
    let mut rest = text;
    while let Some(at) = rest.windows(SPACE.len()).position(|w| w == SPACE) {
        out.extend_from_slice(&rest[..at]);
        out.push(b' ');
        rest = &rest[at + SPACE.len()..];
    }
    out.extend_from_slice(rest);
}
