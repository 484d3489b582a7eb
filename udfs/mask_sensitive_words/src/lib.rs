/*
[dependencies]
aho-corasick = "1"
*/
//! `mask_sensitive_words(text, dictionary)`: replaces every occurrence of a
//! dictionary word with as many `*` as it has characters. The dictionary is
//! one string of words separated by `|` (or new lines), matched
//! case-insensitively (ASCII), leftmost-longest. The matcher is built once per
//! distinct dictionary and cached (the same dictionary arrives on every row).

use std::cell::RefCell;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use arroyo_udf_plugin::udf;

thread_local! {
    static MATCHER: RefCell<Option<(String, AhoCorasick)>> = const { RefCell::new(None) };
}

fn build(dictionary: &str) -> AhoCorasick {
    let words: Vec<&str> = dictionary.split(['|', '\n']).map(str::trim).filter(|w| !w.is_empty()).collect();
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(words)
        .expect("a dictionary of literal words always builds")
}

#[udf]
fn mask_sensitive_words(text: &str, dictionary: &str) -> String {
    MATCHER.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().is_none_or(|(d, _)| d != dictionary) {
            *cached = Some((dictionary.to_string(), build(dictionary)));
        }
        let matcher = &cached.as_ref().expect("just set").1;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for found in matcher.find_iter(text) {
            out.push_str(&text[last..found.start()]);
            out.extend(std::iter::repeat_n('*', text[found.start()..found.end()].chars().count()));
            last = found.end();
        }
        out.push_str(&text[last..]);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_words_case_insensitively_and_by_characters() {
        assert_eq!(mask_sensitive_words("Free MONEY, free money!", "money|free"), "**** *****, **** *****!");
        assert_eq!(mask_sensitive_words("点击领取红包", "红包|领取"), "点击****");
        assert_eq!(mask_sensitive_words("spamspam", "spam|spamspam"), "********", "longest match wins");
    }

    #[test]
    fn empty_dictionary_and_dictionary_changes() {
        assert_eq!(mask_sensitive_words("nothing to hide", ""), "nothing to hide");
        assert_eq!(mask_sensitive_words("a b c", "a\nb"), "* * c");
        assert_eq!(mask_sensitive_words("a b c", "c"), "a b *", "a new dictionary replaces the cached one");
    }
}
