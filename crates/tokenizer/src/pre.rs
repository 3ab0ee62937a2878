//! Byte-level BPE's pre-tokenizers, by `tokenizer.ggml.pre`, as llama.cpp's
//! `llm_tokenizer_bpe` and `unicode_regex_split` apply them: a list of
//! regexes, each cutting the pieces the previous one made into matches and
//! the gaps between them.
//!
//! The regexes are llama.cpp's, character for character, and so is the way
//! each is run, which decides the ids as much as the regex does:
//!
//! - **Unicode**: the regexes llama.cpp runs with a hand-written splitter
//!   (GPT-2's, Llama 3's, Qwen2's, Qwen3.5's, Kimi K2's) have full Unicode
//!   semantics; they run here as written.
//! - **Collapsed**: any other regex naming a Unicode category (`\p{L}`) runs in
//!   llama.cpp on a "collapsed" text, where every non-ASCII code point is one
//!   stand-in per category (letter, number, punctuation, mark, symbol, other;
//!   whitespace as `\v`), and `\p{L}` means that stand-in or `A-Za-z`. So
//!   `\p{Lu}` is any letter, and Tekken's upper/lower-case lookaheads only
//!   see ASCII case. Such regexes run here on the same kind of text.
//! - **Wide**: a regex with no category runs on the code points, non-ASCII
//!   whitespace replaced (C's `\s` is ASCII only).
//!
//! Stand-ins are chosen of the same UTF-8 length as what they replace, so
//! every view of the text has the same byte offsets and pieces cut in one
//! view are pieces of the original.

use std::borrow::Cow;
use std::sync::OnceLock;

use fancy_regex::Regex;
use regex_syntax::hir::{Class, HirKind};

/// GPT-2's word regex as llama.cpp writes it (no trailing `|\s+`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's, with the case-insensitive contractions spelled out.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with digits one by one.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's: Qwen2's with combining marks kept in words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Kimi K2's trigger: llama.cpp runs its own splitter for it, which [`KIMI_K2`] writes as a regex.
const KIMI_K2_TRIGGER: &str = r"\p{Han}+";
/// What llama.cpp's Kimi K2 splitter does: runs of Han (its
/// `unicode_cpt_is_han` ranges), words of other letters with an optional
/// leading character and contraction, numbers in threes, then Llama 3's rest.
const KIMI_K2: &str = concat!(
    r"[\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2EBEF}\x{2F800}-\x{2FA1F}]+",
    r"|[^\r\n\p{L}\p{N}]?(?:(?![\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2EBEF}\x{2F800}-\x{2FA1F}])\p{L})+",
    r"(?:'[sStTmMdD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);
/// The regexes llama.cpp has hand-written splitters for (Unicode semantics).
const UNICODE_SPLITTERS: &[&str] = &[GPT2, LLAMA3, QWEN2, QWEN35, KIMI_K2_TRIGGER];

/// llama.cpp's pre-tokenizer types that byte-level BPE models use: the names
/// `tokenizer.ggml.pre` gives them, their regexes (llama-vocab.cpp), and the
/// flags llama.cpp sets with them.
pub(crate) struct Family {
    /// The `tokenizer.ggml.pre` names, as llama.cpp maps them.
    pub(crate) names: &'static [&'static str],
    regexes: &'static [&'static str],
    /// A word that is itself a token is that token, merges or not (Llama 3, Tekken).
    pub(crate) ignore_merges: bool,
    /// BOS is added unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub(crate) add_bos: bool,
}

const fn family(names: &'static [&'static str], regexes: &'static [&'static str]) -> Family {
    Family {
        names,
        regexes,
        ignore_merges: false,
        add_bos: false,
    }
}

/// Every pre-tokenizer supported, in llama-vocab.cpp's order.
pub(crate) const FAMILIES: &[Family] = &[
    Family {
        ignore_merges: true,
        add_bos: true,
        ..family(
            &[
                "llama3",
                "llama-v3",
                "llama-bpe",
                "falcon3",
                "falcon-h1",
                "pixtral",
                "midm-2.0",
                "lfm2",
            ],
            &[LLAMA3],
        )
    },
    family(&["dbrx", "smaug-bpe"], &[LLAMA3]),
    family(
        &["deepseek-llm"],
        &[
            r"[\r\n]",
            r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
            r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
            r"\s+$",
            r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+",
            r"\p{N}+",
        ],
    ),
    family(
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        &[
            r"\p{N}{1,3}",
            r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ],
    ),
    family(
        &["deepseek-coder"],
        &[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+",
            r"\p{N}",
        ],
    ),
    family(
        &["falcon"],
        &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
    ),
    family(
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        &[r"\p{N}", GPT2],
    ),
    family(
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "exaone4",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
        ],
        &[GPT2],
    ),
    family(
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        &[QWEN2],
    ),
    family(&["qwen35"], &[QWEN35]),
    Family {
        ignore_merges: true,
        add_bos: true,
        ..family(
            &["tekken"],
            &[
                r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
        )
    },
    family(
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        &[
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    ),
    family(&["kimi-k2"], &[KIMI_K2_TRIGGER]),
    family(
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        &[
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
        ],
    ),
    family(
        &["seed-coder"],
        &[
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    ),
    family(
        &["default"],
        &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    ),
];

/// The family of a `tokenizer.ggml.pre` name.
pub(crate) fn find(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.names.contains(&name))
}

/// Every supported `tokenizer.ggml.pre` name, for errors and documentation.
pub fn supported() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.names.iter().copied())
        .collect()
}

/// How llama.cpp runs one regex (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Unicode,
    Collapsed,
    Wide,
}

/// llama.cpp's category names, each with the category it collapses to.
const CATEGORY_NAMES: &[(&str, Category)] = &[
    (r"\p{N}", Category::Number),
    (r"\p{L}", Category::Letter),
    (r"\p{P}", Category::Punctuation),
    (r"\p{M}", Category::Mark),
    (r"\p{S}", Category::Symbol),
    (r"\p{Lu}", Category::Letter),
    (r"\p{Ll}", Category::Letter),
    (r"\p{Lt}", Category::Letter),
    (r"\p{Lm}", Category::Letter),
    (r"\p{Lo}", Category::Letter),
];

/// The categories of the collapsed text (llama.cpp's stand-in bytes 0xD0..0xD5).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Category {
    Other = 0,
    Number = 1,
    Letter = 2,
    Punctuation = 3,
    Mark = 4,
    Symbol = 5,
}

impl Category {
    /// The ASCII characters of the category, as llama.cpp's `k_ucat_map`
    /// lists them, in Rust's class syntax.
    fn ascii(self) -> &'static str {
        match self {
            Category::Number => "0-9",
            Category::Letter => "A-Za-z",
            Category::Punctuation => r"!-#%-*,-/:-;?-@\[-\]_\{\}",
            Category::Mark | Category::Other => "",
            Category::Symbol => r"\$\+<->\^`\|\~",
        }
    }

    /// The stand-ins of the category for code points of UTF-8 length 2, 3 and 4.
    fn stand_ins(self) -> [char; 3] {
        let k = self as u32;
        [0x100 + k, 0xE000 + k, 0xF0000 + k].map(|c| char::from_u32(c).unwrap_or('\u{100}'))
    }
}

/// The stand-in of non-ASCII whitespace of UTF-8 length 2 or 3 (none is longer):
/// whitespace to `\s`, and in no literal class of any regex above.
fn whitespace_stand_in(len: usize) -> char {
    if len == 2 { '\u{85}' } else { '\u{2000}' }
}

/// llama.cpp's `unicode_set_whitespace` (Unicode's White_Space).
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t'..='\r' | ' ' | '\u{85}' | '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}'
        | '\u{2028}' | '\u{2029}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

/// The general category of non-ASCII code points, as sorted ranges.
fn categories() -> &'static [(u32, u32, Category)] {
    static TABLE: OnceLock<Vec<(u32, u32, Category)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::new();
        for (name, category) in &CATEGORY_NAMES[..5] {
            let hir = regex_syntax::parse(name).expect("a Unicode category regex-syntax knows");
            if let HirKind::Class(Class::Unicode(class)) = hir.kind() {
                table.extend(
                    class
                        .ranges()
                        .iter()
                        .map(|r| (u32::from(r.start()), u32::from(r.end()), *category)),
                );
            }
        }
        table.sort_unstable_by_key(|&(start, _, _)| start);
        table
    })
}

fn category(c: char) -> Category {
    let c = u32::from(c);
    let table = categories();
    let i = table.partition_point(|&(start, _, _)| start <= c);
    match i.checked_sub(1).map(|i| table[i]) {
        Some((_, end, category)) if c <= end => category,
        _ => Category::Other,
    }
}

/// `regex` with each category rewritten as llama.cpp rewrites it for the
/// collapsed text: `\p{L}` is `[<stand-ins>A-Za-z]` (inside a class, without
/// the brackets). The scan is llama.cpp's, quirks included.
fn collapse_regex(regex: &str) -> String {
    let bytes = regex.as_bytes();
    let mut out = String::with_capacity(regex.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < regex.len() {
        let b = bytes[i];
        if b == b'[' && (i == 0 || bytes[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && b == b']' && bytes[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if let Some(&(name, category)) = CATEGORY_NAMES
            .iter()
            .find(|(name, _)| regex[i..].starts_with(name))
        {
            if !inside {
                out.push('[');
            }
            out.extend(category.stand_ins());
            out.push_str(category.ascii());
            if !inside {
                out.push(']');
            }
            i += name.len();
            continue;
        }
        let c = regex[i..].chars().next().unwrap_or('\0');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// A family's regexes, compiled for the views llama.cpp runs them on.
pub(crate) struct PreTokenizer {
    splits: Vec<(View, Regex)>,
}

impl PreTokenizer {
    /// The pre-tokenizer of `family`; an error is a regex that does not compile.
    pub(crate) fn new(family: &Family) -> Result<PreTokenizer, String> {
        let splits = family
            .regexes
            .iter()
            .map(|&regex| {
                let (view, text) = if UNICODE_SPLITTERS.contains(&regex) {
                    let text = if regex == KIMI_K2_TRIGGER {
                        KIMI_K2
                    } else {
                        regex
                    };
                    (View::Unicode, Cow::Borrowed(text))
                } else if CATEGORY_NAMES.iter().any(|(name, _)| regex.contains(name)) {
                    (View::Collapsed, Cow::Owned(collapse_regex(regex)))
                } else {
                    (View::Wide, Cow::Borrowed(regex))
                };
                Regex::new(&text)
                    .map(|r| (view, r))
                    .map_err(|e| format!("regex {regex}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { splits })
    }

    /// Calls `f` with each word of `text`, in order.
    pub(crate) fn split<'t>(&self, text: &'t str, f: &mut impl FnMut(&'t str)) {
        let needs = |view| self.splits.iter().any(|(v, _)| *v == view);
        let ascii = text.is_ascii();
        let collapsed = (needs(View::Collapsed) && !ascii).then(|| collapse_text(text));
        let wide = (needs(View::Wide) && !ascii).then(|| wide_text(text));
        let views: Vec<&str> = self
            .splits
            .iter()
            .map(|(view, _)| match view {
                View::Collapsed => collapsed.as_deref().unwrap_or(text),
                View::Wide => wide.as_deref().unwrap_or(text),
                View::Unicode => text,
            })
            .collect();
        split_range(&self.splits, &views, text, 0, text.len(), f);
    }
}

/// The collapsed view: ASCII as is, whitespace and each category as its stand-in.
fn collapse_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            let len = c.len_utf8();
            if len == 1 {
                c
            } else if is_whitespace(c) {
                whitespace_stand_in(len)
            } else {
                category(c).stand_ins()[len - 2]
            }
        })
        .collect()
}

/// The wide view: the code points, non-ASCII whitespace as its stand-in.
fn wide_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.len_utf8() > 1 && is_whitespace(c) {
                whitespace_stand_in(c.len_utf8())
            } else {
                c
            }
        })
        .collect()
}

/// Cuts bytes `[start, end)` with the first regex (on its view) into matches
/// and the gaps between them, then each piece with the rest.
fn split_range<'t>(
    splits: &[(View, Regex)],
    views: &[&str],
    text: &'t str,
    start: usize,
    end: usize,
    f: &mut impl FnMut(&'t str),
) {
    let Some(((_, regex), rest)) = splits.split_first() else {
        f(&text[start..end]);
        return;
    };
    let view = &views[0][start..end];
    let mut at = 0;
    for m in regex.find_iter(view) {
        let Ok(m) = m else {
            // The backtracking limit: only hostile input gets here; the rest
            // stays one piece rather than failing.
            break;
        };
        if m.start() > at {
            split_range(rest, &views[1..], text, start + at, start + m.start(), f);
        }
        if m.end() > m.start() {
            split_range(
                rest,
                &views[1..],
                text,
                start + m.start(),
                start + m.end(),
                f,
            );
        }
        at = m.end();
    }
    if at < view.len() {
        split_range(rest, &views[1..], text, start + at, end, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(name: &str, text: &str) -> Vec<String> {
        let pre = PreTokenizer::new(find(name).unwrap()).unwrap();
        let mut out = Vec::new();
        pre.split(text, &mut |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn every_family_compiles() {
        for family in FAMILIES {
            PreTokenizer::new(family).unwrap_or_else(|e| panic!("{:?}: {e}", family.names));
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names = supported();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn stand_ins_keep_byte_offsets() {
        let text = "a é 中 😀 \u{3000}\u{a0}x";
        assert_eq!(collapse_text(text).len(), text.len());
        assert_eq!(wide_text(text).len(), text.len());
    }

    #[test]
    fn collapsed_case_lookaheads_see_only_ascii_case() {
        // llama.cpp's collapsed text has no case beyond ASCII: "Ü" can end a
        // lower-case run, so Tekken cuts "ÜBER" after it.
        assert_eq!(words("tekken", "ÜBER"), ["Ü", "BER"]);
    }

    #[test]
    fn qwen2_splits_digits_one_by_one_and_llama3_in_threes() {
        assert_eq!(words("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(words("llama-bpe", "12345"), ["123", "45"]);
    }
}
