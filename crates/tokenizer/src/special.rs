//! Splitting text around special tokens written in it, as llama.cpp's
//! `tokenizer_st_partition`: longest token texts first, each taking its
//! leftmost non-overlapping occurrences in whatever text is still unclaimed.

use std::collections::BTreeMap;
use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::attr;

/// A piece of the text to encode: plain text, or a special token's id.
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// The control, user-defined and unknown tokens, longest text first (ties by
/// id), and an automaton that finds all their occurrences in one pass.
pub(crate) struct Specials {
    pub(crate) ids: Vec<u32>,
    lens: Vec<usize>,
    automaton: Option<AhoCorasick>,
}

impl Specials {
    pub(crate) fn new<'a>(attrs: &[u8], text_of: impl Fn(usize) -> &'a [u8]) -> Specials {
        let mut ids: Vec<u32> = (0..attrs.len() as u32)
            .filter(|&id| {
                attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        ids.sort_by_key(|&id| (std::cmp::Reverse(text_of(id as usize).len()), id));
        let lens = ids.iter().map(|&id| text_of(id as usize).len()).collect();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(ids.iter().map(|&id| text_of(id as usize)))
            .ok()
            .filter(|_| !ids.is_empty());
        Specials {
            ids,
            lens,
            automaton,
        }
    }

    /// The fragments of `text`. Without `parse_special`, only user-defined
    /// tokens are matched (as llama.cpp: control and unknown ones are text then).
    pub(crate) fn partition(
        &self,
        text: &[u8],
        parse_special: bool,
        attrs: &[u8],
    ) -> Vec<Fragment> {
        let Some(automaton) = &self.automaton else {
            return whole(text);
        };
        // Every occurrence of every eligible token, by priority then position.
        let mut found: Vec<(u32, usize)> = Vec::new();
        for m in automaton.find_overlapping_iter(text) {
            let rank = m.pattern().as_usize();
            let id = self.ids[rank];
            if !parse_special && attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            found.push((rank as u32, m.start()));
        }
        if found.is_empty() {
            return whole(text);
        }
        found.sort_unstable();
        // Claimed spans, start -> end, never overlapping.
        let mut claimed: BTreeMap<usize, (usize, u32)> = BTreeMap::new();
        for (rank, start) in found {
            let end = start + self.lens[rank as usize];
            let clashes = claimed
                .range(..end)
                .next_back()
                .is_some_and(|(_, &(e, _))| e > start);
            if !clashes {
                claimed.insert(start, (end, self.ids[rank as usize]));
            }
        }
        let mut fragments = Vec::with_capacity(2 * claimed.len() + 1);
        let mut at = 0;
        for (start, (end, id)) in claimed {
            if start > at {
                fragments.push(Fragment::Text(at..start));
            }
            fragments.push(Fragment::Token(id));
            at = end;
        }
        if at < text.len() {
            fragments.push(Fragment::Text(at..text.len()));
        }
        fragments
    }
}

fn whole(text: &[u8]) -> Vec<Fragment> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Fragment::Text(0..text.len())]
    }
}
