//! The pre-tokenizer: cuts text into the pieces that BPE merges within.
//!
//! A hand-written matcher for [`SPLIT_PATTERN`], several times faster than running the regex; the tests
//! check it against the regex itself (fancy-regex, the engine tiktoken and rustbpe use). The character
//! classes come from regex-syntax, so `\p{L}`, `\p{N}` and `\s` mean exactly what they mean to the regex.

use std::sync::OnceLock;

/// The original's pre-split pattern: GPT-4's, with numbers in groups of one or two digits.
pub const SPLIT_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
const NEWLINE: u8 = 8; // \r or \n (also SPACE)

struct Classes {
    ascii: [u8; 128],
    letter: Vec<(u32, u32)>,
    number: Vec<(u32, u32)>,
    space: Vec<(u32, u32)>,
}

fn unicode_ranges(class: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(class).expect("a valid character class");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        other => panic!("{class} parsed to {other:?}, not a Unicode class"),
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut c = Classes {
            ascii: [0; 128],
            letter: unicode_ranges(r"\p{L}"),
            number: unicode_ranges(r"\p{N}"),
            space: unicode_ranges(r"\s"),
        };
        for b in 0..128u32 {
            c.ascii[b as usize] = c.lookup(b);
        }
        c
    })
}

impl Classes {
    fn lookup(&self, cp: u32) -> u8 {
        let within = |ranges: &[(u32, u32)]| {
            let i = ranges.partition_point(|&(_, end)| end < cp);
            i < ranges.len() && ranges[i].0 <= cp
        };
        let mut bits = 0;
        if within(&self.letter) {
            bits |= LETTER;
        }
        if within(&self.number) {
            bits |= NUMBER;
        }
        if within(&self.space) {
            bits |= SPACE;
        }
        if cp == '\r' as u32 || cp == '\n' as u32 {
            bits |= NEWLINE;
        }
        bits
    }

    #[inline]
    fn of(&self, c: char) -> u8 {
        if c.is_ascii() {
            self.ascii[c as usize]
        } else {
            self.lookup(c as u32)
        }
    }
}

/// Iterator over the pieces of a text, in order; their concatenation is the text.
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
    classes: &'static Classes,
}

pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { text, pos: 0, classes: classes() }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let end = self.piece_end(self.pos);
        let piece = &self.text[self.pos..end];
        self.pos = end;
        Some(piece)
    }
}

impl Pieces<'_> {
    #[inline]
    fn char_at(&self, i: usize) -> Option<(char, u8)> {
        let c = self.text[i..].chars().next()?;
        Some((c, self.classes.of(c)))
    }

    /// End of the run of characters from `i` whose class satisfies `keep`.
    #[inline]
    fn scan(&self, mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
        let bytes = self.text.as_bytes();
        while i < bytes.len() {
            let b = bytes[i];
            if b < 128 {
                if !keep(self.classes.ascii[b as usize]) {
                    break;
                }
                i += 1;
            } else {
                let c = self.text[i..].chars().next().unwrap();
                if !keep(self.classes.lookup(c as u32)) {
                    break;
                }
                i += c.len_utf8();
            }
        }
        i
    }

    /// `'(?i:[sdmt]|ll|ve|re)` after the apostrophe at `after - 1`.
    fn contraction(&self, after: usize) -> Option<usize> {
        let mut rest = self.text[after..].chars();
        let first = rest.next()?;
        if matches!(first, 's' | 'S' | 'ſ' | 'd' | 'D' | 'm' | 'M' | 't' | 'T') {
            return Some(after + first.len_utf8());
        }
        let second = rest.next()?.to_ascii_lowercase();
        match (first.to_ascii_lowercase(), second) {
            ('l', 'l') | ('v', 'e') | ('r', 'e') => Some(after + 2),
            _ => None,
        }
    }

    /// The end of the piece that starts at `i`: the alternatives of the pattern, tried in order.
    fn piece_end(&self, i: usize) -> usize {
        let (c, class) = self.char_at(i).expect("i is inside the text");
        let next = i + c.len_utf8();
        let is_other = |k: u8| k & (LETTER | NUMBER | SPACE) == 0;

        // '(?i:[sdmt]|ll|ve|re)
        if c == '\'' {
            if let Some(end) = self.contraction(next) {
                return end;
            }
        }
        // [^\r\n\p{L}\p{N}]?+\p{L}+
        if class & LETTER != 0 {
            return self.scan(next, |k| k & LETTER != 0);
        }
        if class & (NEWLINE | NUMBER) == 0 {
            if let Some((_, k)) = self.char_at(next).filter(|_| next < self.text.len()) {
                if k & LETTER != 0 {
                    return self.scan(next, |k| k & LETTER != 0);
                }
            }
        }
        // \p{N}{1,2}
        if class & NUMBER != 0 {
            return match self.char_at(next).filter(|_| next < self.text.len()) {
                Some((d, k)) if k & NUMBER != 0 => next + d.len_utf8(),
                _ => next,
            };
        }
        // ' ?[^\s\p{L}\p{N}]++[\r\n]*'
        let punct_start = if c == ' ' { next } else { i };
        if punct_start < self.text.len() {
            let (_, k) = self.char_at(punct_start).unwrap();
            if is_other(k) {
                let end = self.scan(punct_start, is_other);
                return self.scan(end, |k| k & NEWLINE != 0);
            }
        }
        // What is left starts with whitespace.
        let run_end = self.scan(i, |k| k & SPACE != 0);
        let run = &self.text[i..run_end];
        // \s*[\r\n]
        if let Some(p) = run.rfind(['\r', '\n']) {
            return i + p + 1;
        }
        // \s+(?!\S), then \s+
        if run_end == self.text.len() {
            return run_end;
        }
        let last = run.char_indices().next_back().map(|(p, _)| i + p).unwrap();
        if last > i {
            last
        } else {
            run_end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn by_regex(text: &str) -> Vec<String> {
        static RE: OnceLock<fancy_regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| fancy_regex::Regex::new(SPLIT_PATTERN).unwrap());
        re.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect()
    }

    fn by_hand(text: &str) -> Vec<String> {
        pieces(text).map(str::to_string).collect()
    }

    #[test]
    fn hand_computed_cases() {
        assert_eq!(by_hand("Hello world"), ["Hello", " world"]);
        assert_eq!(by_hand("it's 12345!!\n\n  x"), ["it", "'s", " ", "12", "34", "5", "!!\n\n", " ", " x"]);
        assert_eq!(by_hand("a  \n b   "), ["a", "  \n", " b", "   "]);
        assert_eq!(by_hand("WE'LL ſ'ſ"), ["WE", "'LL", " ſ", "'ſ"]);
        assert_eq!(by_hand(""), Vec::<String>::new());
    }

    #[test]
    fn equals_the_regex_on_the_demo_texts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo");
        for name in ["tinyshakespeare.txt", "tinystories_val.txt"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert_eq!(by_hand(&text), by_regex(&text), "{name}");
        }
    }

    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => prop::sample::select(vec![
                'a', 'Z', 'é', 'ſ', 's', 'S', 'l', 'L', 'v', 'e', 'r', 't', 'd', 'm', '\'', '1', '٣', '½', 'Ⅻ',
                ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\u{2028}', '\u{3000}', '\u{85}', '!', '.', '-', '😀', '中',
            ]),
            1 => any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn equals_the_regex_on_random_text(chars in prop::collection::vec(tricky_char(), 0..40)) {
            let text: String = chars.into_iter().collect();
            prop_assert_eq!(by_hand(&text), by_regex(&text));
        }
    }
}
