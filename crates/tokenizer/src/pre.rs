//! Byte-level BPE's pre-tokenizers, by `tokenizer.ggml.pre`, as llama.cpp's
//! `llm_tokenizer_bpe` and `unicode_regex_split` apply them: a list of
//! regexes, each cutting the pieces the previous one made into matches and
//! the gaps between them.
//!
//! The regexes are llama.cpp's, character for character, and they run here
//! with Unicode semantics, as written. llama.cpp runs them three ways, and
//! for every regex here all three give the same ids:
//!
//! - GPT-2's, Llama 3's, Qwen2's, Qwen3.5's and Kimi K2's with hand-written
//!   splitters of Unicode semantics (Kimi K2's is written as a regex below).
//! - The others naming a category (`\p{L}`) on a "collapsed" text, one
//!   stand-in per category: the same as Unicode semantics unless a regex tells
//!   letters apart by case beyond ASCII, which none here does (Tekken's and
//!   GPT-4o's case lookaheads only see `a-z` and `A-Z`, so "ÜBER" is cut after
//!   the "Ü" either way).
//! - The rest on the code points with non-ASCII whitespace made `\v`: that
//!   differs only where a literal class holds whitespace (DeepSeek-LLM's holds
//!   U+3000, so "、　。" is one piece here and two in llama.cpp), and no
//!   DeepSeek-LLM token contains U+3000 beside another character, so the ids
//!   agree.
//!
//! Every family is checked against llama-tokenize on real vocabularies
//! (crates/tokenizer/tests/llama_cpp_agreement.rs).

use fancy_regex::Regex;

/// GPT-2's word regex as llama.cpp writes it (no trailing `|\s+`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's, with the case-insensitive contractions spelled out.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with digits one by one.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's: Qwen2's with combining marks kept in words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Kimi K2's trigger: llama.cpp runs its own splitter for it, which `KIMI_K2` writes as a regex.
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
                "jina-v5-nano",
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

/// The supported names grouped by the regexes they share: one group per
/// llama.cpp pre-tokenizer type (for documentation, and for tests that check
/// each against llama.cpp).
pub fn families() -> impl Iterator<Item = &'static [&'static str]> {
    FAMILIES.iter().map(|f| f.names)
}

/// A family's regexes, compiled.
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
    sources: Vec<&'static str>,
}

impl PreTokenizer {
    /// The pre-tokenizer of `family`; an error is a regex that does not compile.
    pub(crate) fn new(family: &Family) -> Result<PreTokenizer, String> {
        let sources: Vec<&'static str> = family
            .regexes
            .iter()
            .map(|&regex| {
                if regex == KIMI_K2_TRIGGER {
                    KIMI_K2
                } else {
                    regex
                }
            })
            .collect();
        let regexes = sources
            .iter()
            .map(|&text| Regex::new(text).map_err(|e| format!("regex {text}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { regexes, sources })
    }

    /// The regexes as they are run (fancy-regex syntax, Unicode semantics),
    /// for hosts in other languages that split as this does.
    pub(crate) fn sources(&self) -> &[&'static str] {
        &self.sources
    }

    /// Calls `f` with each word of `text`, in order.
    pub(crate) fn split<'t>(&self, text: &'t str, f: &mut impl FnMut(&'t str)) {
        split(&self.regexes, text, f);
    }
}

/// Cuts `text` with the first regex into matches and the gaps between them
/// (both are pieces, as llama.cpp's `unicode_regex_split`), then each piece
/// with the rest.
fn split<'t>(regexes: &[Regex], text: &'t str, f: &mut impl FnMut(&'t str)) {
    let Some((first, rest)) = regexes.split_first() else {
        f(text);
        return;
    };
    let mut at = 0;
    for m in first.find_iter(text) {
        let Ok(m) = m else {
            // The backtracking limit: only hostile input gets here; the rest
            // stays one piece rather than failing.
            break;
        };
        if m.start() > at {
            split(rest, &text[at..m.start()], f);
        }
        if m.end() > m.start() {
            split(rest, m.as_str(), f);
        }
        at = m.end();
    }
    if at < text.len() {
        split(rest, &text[at..], f);
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
    fn case_lookaheads_see_only_ascii_case() {
        // Tekken's lookaheads know no case beyond ASCII: "Ü" can end a
        // lower-case run, so "ÜBER" is cut after it.
        assert_eq!(words("tekken", "ÜBER"), ["Ü", "BER"]);
    }

    #[test]
    fn qwen2_splits_digits_one_by_one_and_llama3_in_threes() {
        assert_eq!(words("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(words("llama-bpe", "12345"), ["123", "45"]);
    }
}
