"""Regenerate the built-in Strandset-shaped sample data.

Usage (from the repo root)::

    python rustcoder/data/sample/_build_sample.py

Writes ``strandset_train.jsonl`` (7 rows per category) and
``strandset_test.jsonl`` (2 held-out rows per category) next to this script.
Each category below lists 9 hand-written entries: the first 7 go to train,
the last 2 to test.

Rows mimic Strandset-Rust-v1: five string columns, where ``input_data`` and
``output_data`` hold a dict serialized either as JSON or (about 30% of rows)
as a Python dict literal (``repr``), like the real dataset's quirk. All Rust
uses std only; tests/test_sample_data.py compiles every piece that should
compile and runs the tests of code_generation and test_generation rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_PER_CATEGORY = 7
TEST_PER_CATEGORY = 2
SEED = 1337

# category -> (input keys, output keys); keys in OPTIONAL_INPUT_KEYS may be absent.
SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "code_generation": (("title", "description", "code_context", "function_signature"), ("code",)),
    "code_completion": (("prefix", "suffix"), ("completion",)),
    "bug_detection": (("buggy_code", "code_context"), ("bug_description", "fixed_code")),
    "code_review": (("code_before", "code_context"), ("review_comment", "code_after")),
    "code_refactoring": (("code_before", "code_context"), ("rationale", "code_after")),
    "code_optimization": (("code_before", "code_context"), ("rationale", "code_after")),
    "docstring_generation": (("code", "code_context"), ("docstring",)),
    "comment_generation": (("code", "code_context"), ("commented_code",)),
    "code_summarization": (("code", "code_context"), ("summary",)),
    "code_explanation": (("code", "code_context"), ("explanation",)),
    "function_naming": (("code", "code_context"), ("function_name",)),
    "variable_naming": (("code", "code_context"), ("variable_name",)),
    "code_search": (("query", "code_context"), ("code_snippet",)),
    "test_generation": (("code_context", "code_to_test", "test_context"), ("test_cases",)),
    "api_usage_prediction": (("code", "code_context"), ("next_api_call",)),
}
OPTIONAL_INPUT_KEYS = {"code_generation": {"function_signature"}}


def rs(src: str) -> str:
    """Strip the newlines that surround a triple-quoted block (keeps indentation)."""
    return src.strip("\n")


def E(crate: str, inp: dict, out: dict, test: str = "") -> dict:
    return {"crate_name": crate, "input": inp, "output": out, "test": test}


DATA: dict[str, list[dict]] = {}

# ---------------------------------------------------------------------------
# code_generation
# ---------------------------------------------------------------------------
DATA["code_generation"] = [
    E(
        "ringbuf",
        {
            "title": "Overwriting push for a fixed-capacity ring buffer",
            "description": "Implement `push` for `RingBuffer<T>`. When the buffer has free space the item is appended after the current last element and `None` is returned. When it is full, the oldest element is evicted to make room and returned as `Some(old)`. A zero-capacity buffer hands the pushed item straight back.",
            "code_context": rs(r"""
pub struct RingBuffer<T> {
    buf: Vec<Option<T>>,
    head: usize,
    len: usize,
}

impl<T> RingBuffer<T> {
    pub fn with_capacity(cap: usize) -> Self {
        let mut buf = Vec::with_capacity(cap);
        buf.resize_with(cap, || None);
        RingBuffer { buf, head: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let item = self.buf[self.head].take();
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        item
    }
}
"""),
            "function_signature": "pub fn push(&mut self, item: T) -> Option<T>",
        },
        {
            "code": rs(r"""
impl<T> RingBuffer<T> {
    pub fn push(&mut self, item: T) -> Option<T> {
        let cap = self.buf.len();
        if cap == 0 {
            return Some(item);
        }
        if self.len == cap {
            // Full: the slot at `head` holds the oldest item; overwrite it
            // and advance `head` so the next-oldest becomes the front.
            let evicted = self.buf[self.head].replace(item);
            self.head = (self.head + 1) % cap;
            evicted
        } else {
            let tail = (self.head + self.len) % cap;
            self.buf[tail] = Some(item);
            self.len += 1;
            None
        }
    }
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_until_full_then_evicts_oldest() {
        let mut rb = RingBuffer::with_capacity(2);
        assert_eq!(rb.push(1), None);
        assert_eq!(rb.push(2), None);
        assert_eq!(rb.push(3), Some(1));
        assert_eq!(rb.len(), 2);
        assert_eq!(rb.pop_front(), Some(2));
        assert_eq!(rb.pop_front(), Some(3));
        assert_eq!(rb.pop_front(), None);
    }

    #[test]
    fn wraps_around_after_pops() {
        let mut rb = RingBuffer::with_capacity(3);
        for i in 0..3 {
            rb.push(i);
        }
        assert_eq!(rb.pop_front(), Some(0));
        assert_eq!(rb.push(10), None);
        assert_eq!(rb.push(11), Some(1));
        let drained: Vec<i32> = std::iter::from_fn(|| rb.pop_front()).collect();
        assert_eq!(drained, vec![2, 10, 11]);
    }

    #[test]
    fn zero_capacity_returns_item() {
        let mut rb: RingBuffer<&str> = RingBuffer::with_capacity(0);
        assert_eq!(rb.push("x"), Some("x"));
        assert_eq!(rb.len(), 0);
    }
}
"""),
    ),
    E(
        "semver_lite",
        {
            "title": "Parse a MAJOR.MINOR.PATCH version string",
            "description": "Write `parse_version`, which trims surrounding whitespace and parses a string like \"1.4.2\" into a `Version`. Exactly three dot-separated parts are required (report the actual count otherwise), and each part must be a non-negative integer that fits in u64 (report the offending part otherwise).",
            "code_context": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    WrongPartCount(usize),
    InvalidNumber(String),
}
"""),
            "function_signature": "pub fn parse_version(s: &str) -> Result<Version, ParseError>",
        },
        {
            "code": rs(r"""
pub fn parse_version(s: &str) -> Result<Version, ParseError> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    if parts.len() != 3 {
        return Err(ParseError::WrongPartCount(parts.len()));
    }
    let mut nums = [0u64; 3];
    for (slot, part) in nums.iter_mut().zip(&parts) {
        *slot = part
            .parse()
            .map_err(|_| ParseError::InvalidNumber(part.to_string()))?;
    }
    Ok(Version { major: nums[0], minor: nums[1], patch: nums[2] })
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_version() {
        assert_eq!(
            parse_version(" 1.4.2\n"),
            Ok(Version { major: 1, minor: 4, patch: 2 })
        );
    }

    #[test]
    fn rejects_wrong_part_count() {
        assert_eq!(parse_version("1.2"), Err(ParseError::WrongPartCount(2)));
        assert_eq!(parse_version("1.2.3.4"), Err(ParseError::WrongPartCount(4)));
    }

    #[test]
    fn rejects_non_numeric_parts() {
        assert_eq!(parse_version("1.x.3"), Err(ParseError::InvalidNumber("x".into())));
        assert_eq!(parse_version("1.-2.3"), Err(ParseError::InvalidNumber("-2".into())));
    }

    #[test]
    fn versions_order_numerically() {
        let a = parse_version("1.10.0").unwrap();
        let b = parse_version("1.9.9").unwrap();
        assert!(a > b);
    }
}
"""),
    ),
    E(
        "wordfreq",
        {
            "title": "Top-N most frequent words",
            "description": "Count case-insensitive word frequencies in `text` (words are maximal runs of alphanumeric characters or apostrophes) and return the `n` most frequent as (lowercased word, count) pairs, sorted by count descending and then alphabetically so the output is deterministic.",
            "code_context": "use std::collections::HashMap;",
        },
        {
            "code": rs(r"""
pub fn top_n_words(text: &str, n: usize) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    let mut pairs: Vec<(String, usize)> = counts.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    pairs.truncate(n);
    pairs
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_case_insensitively() {
        let top = top_n_words("The cat saw the dog. THE end!", 2);
        assert_eq!(top, vec![("the".to_string(), 3), ("cat".to_string(), 1)]);
    }

    #[test]
    fn keeps_apostrophes_inside_words() {
        let top = top_n_words("don't stop, don't", 1);
        assert_eq!(top, vec![("don't".to_string(), 2)]);
    }

    #[test]
    fn n_larger_than_vocabulary_and_empty_text() {
        assert_eq!(top_n_words("a b", 10).len(), 2);
        assert!(top_n_words("   ", 3).is_empty());
    }
}
"""),
    ),
    E(
        "slugify",
        {
            "title": "URL slug from a title",
            "description": "Convert arbitrary text into a URL slug: ASCII letters and digits are kept (lowercased), every run of other characters becomes a single '-', and no leading or trailing dashes are produced.",
            "code_context": "",
            "function_signature": "pub fn slugify(input: &str) -> String",
        },
        {
            "code": rs(r"""
pub fn slugify(input: &str) -> String {
    let mut slug = String::with_capacity(input.len());
    let mut pending_dash = false;
    for ch in input.chars() {
        if ch.is_ascii_alphanumeric() {
            if pending_dash && !slug.is_empty() {
                slug.push('-');
            }
            pending_dash = false;
            slug.push(ch.to_ascii_lowercase());
        } else {
            pending_dash = true;
        }
    }
    slug
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_title() {
        assert_eq!(slugify("Hello, World!"), "hello-world");
    }

    #[test]
    fn trims_and_collapses_separators() {
        assert_eq!(slugify("  --Rust   2021--  "), "rust-2021");
        assert_eq!(slugify("crème brûlée"), "cr-me-br-l-e");
    }

    #[test]
    fn empty_and_symbol_only_inputs() {
        assert_eq!(slugify(""), "");
        assert_eq!(slugify("!!!"), "");
    }
}
"""),
    ),
    E(
        "lru_lite",
        {
            "title": "LRU cache backed by an index-linked list",
            "description": "Implement `LruCache<K, V>` on top of the given fields: a HashMap from key to node index plus a doubly linked list threaded through `nodes` by index (head = most recently used, tail = least recently used). Provide `new(capacity)` (panics on zero), `get` (marks the entry as most recently used), `put` (inserts or updates; when full, reuses the least recently used node's slot) and `len`. All operations must be O(1) on average.",
            "code_context": rs(r"""
use std::collections::HashMap;
use std::hash::Hash;

struct Node<K, V> {
    key: K,
    value: V,
    prev: Option<usize>,
    next: Option<usize>,
}

pub struct LruCache<K, V> {
    capacity: usize,
    map: HashMap<K, usize>,
    nodes: Vec<Node<K, V>>,
    head: Option<usize>,
    tail: Option<usize>,
}
"""),
            "function_signature": "impl<K: Hash + Eq + Clone, V> LruCache<K, V> { pub fn new(capacity: usize) -> Self; pub fn get(&mut self, key: &K) -> Option<&V>; pub fn put(&mut self, key: K, value: V); pub fn len(&self) -> usize }",
        },
        {
            "code": rs(r"""
impl<K: Hash + Eq + Clone, V> LruCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "capacity must be non-zero");
        LruCache {
            capacity,
            map: HashMap::with_capacity(capacity),
            nodes: Vec::with_capacity(capacity),
            head: None,
            tail: None,
        }
    }

    fn detach(&mut self, idx: usize) {
        let (prev, next) = (self.nodes[idx].prev, self.nodes[idx].next);
        match prev {
            Some(p) => self.nodes[p].next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => self.nodes[n].prev = prev,
            None => self.tail = prev,
        }
        self.nodes[idx].prev = None;
        self.nodes[idx].next = None;
    }

    fn push_front(&mut self, idx: usize) {
        self.nodes[idx].next = self.head;
        self.nodes[idx].prev = None;
        if let Some(h) = self.head {
            self.nodes[h].prev = Some(idx);
        }
        self.head = Some(idx);
        if self.tail.is_none() {
            self.tail = Some(idx);
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        let idx = *self.map.get(key)?;
        self.detach(idx);
        self.push_front(idx);
        Some(&self.nodes[idx].value)
    }

    pub fn put(&mut self, key: K, value: V) {
        if let Some(&idx) = self.map.get(&key) {
            self.nodes[idx].value = value;
            self.detach(idx);
            self.push_front(idx);
            return;
        }
        let idx = if self.nodes.len() < self.capacity {
            self.nodes.push(Node { key: key.clone(), value, prev: None, next: None });
            self.nodes.len() - 1
        } else {
            // Reuse the least recently used slot instead of allocating.
            let lru = self.tail.expect("a full cache has a tail");
            self.detach(lru);
            let old_key = std::mem::replace(&mut self.nodes[lru].key, key.clone());
            self.map.remove(&old_key);
            self.nodes[lru].value = value;
            lru
        };
        self.map.insert(key, idx);
        self.push_front(idx);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = LruCache::new(2);
        cache.put(1, "one");
        cache.put(2, "two");
        assert_eq!(cache.get(&1), Some(&"one"));
        cache.put(3, "three");
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.get(&1), Some(&"one"));
        assert_eq!(cache.get(&3), Some(&"three"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn updating_refreshes_recency() {
        let mut cache = LruCache::new(2);
        cache.put("a", 1);
        cache.put("b", 2);
        cache.put("a", 10);
        cache.put("c", 3);
        assert_eq!(cache.get(&"b"), None);
        assert_eq!(cache.get(&"a"), Some(&10));
    }

    #[test]
    fn capacity_one_keeps_latest() {
        let mut cache = LruCache::new(1);
        for i in 0..5 {
            cache.put(i, i * i);
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&4), Some(&16));
        assert_eq!(cache.get(&3), None);
    }

    #[test]
    #[should_panic(expected = "capacity must be non-zero")]
    fn zero_capacity_panics() {
        let _cache: LruCache<u8, u8> = LruCache::new(0);
    }
}
"""),
    ),
    E(
        "unix_mode",
        {
            "title": "Format Unix permission bits",
            "description": "Render the low 9 permission bits of a Unix mode as the familiar `rwxr-xr--` string (owner, group, other).",
            "code_context": "",
            "function_signature": "pub fn mode_to_string(mode: u32) -> String",
        },
        {
            "code": rs(r"""
pub fn mode_to_string(mode: u32) -> String {
    const FLAGS: [(u32, char); 3] = [(0o4, 'r'), (0o2, 'w'), (0o1, 'x')];
    let mut out = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        for (mask, ch) in FLAGS {
            out.push(if bits & mask != 0 { ch } else { '-' });
        }
    }
    out
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_modes() {
        assert_eq!(mode_to_string(0o754), "rwxr-xr--");
        assert_eq!(mode_to_string(0o644), "rw-r--r--");
        assert_eq!(mode_to_string(0), "---------");
    }

    #[test]
    fn ignores_file_type_bits() {
        assert_eq!(mode_to_string(0o100_755), "rwxr-xr-x");
    }
}
"""),
    ),
    E(
        "interval_set",
        {
            "title": "Merge overlapping half-open ranges",
            "description": "Given unsorted half-open ranges `[start, end)`, drop empty ones and merge any that overlap or touch, returning the result sorted by start.",
            "code_context": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub end: i64,
}
"""),
        },
        {
            "code": rs(r"""
pub fn merge_ranges(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: i64, end: i64) -> Range {
        Range { start, end }
    }

    #[test]
    fn merges_overlapping_and_touching() {
        let out = merge_ranges(vec![r(5, 8), r(1, 3), r(2, 4), r(8, 10)]);
        assert_eq!(out, vec![r(1, 4), r(5, 10)]);
    }

    #[test]
    fn drops_empty_ranges() {
        assert_eq!(merge_ranges(vec![r(3, 3), r(7, 2)]), vec![]);
    }

    #[test]
    fn contained_range_is_absorbed() {
        assert_eq!(merge_ranges(vec![r(0, 100), r(10, 20)]), vec![r(0, 100)]);
    }
}
"""),
    ),
    # --- held-out (test split) ---
    E(
        "roman_numerals",
        {
            "title": "Integer to Roman numerals",
            "description": "Convert an integer to its Roman numeral representation using subtractive notation (IV, IX, XL, XC, CD, CM). Return `None` for 0 and for values above 3999, which standard numerals cannot express.",
            "code_context": "",
            "function_signature": "pub fn to_roman(n: u32) -> Option<String>",
        },
        {
            "code": rs(r"""
pub fn to_roman(mut n: u32) -> Option<String> {
    if n == 0 || n > 3999 {
        return None;
    }
    const TABLE: [(u32, &str); 13] = [
        (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"),
        (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
        (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
    ];
    let mut out = String::new();
    for &(value, numeral) in TABLE.iter() {
        while n >= value {
            out.push_str(numeral);
            n -= value;
        }
    }
    Some(out)
}
"""),
        },
        rs(r"""
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_known_values() {
        assert_eq!(to_roman(1994).as_deref(), Some("MCMXCIV"));
        assert_eq!(to_roman(3999).as_deref(), Some("MMMCMXCIX"));
        assert_eq!(to_roman(4).as_deref(), Some("IV"));
    }

    #[test]
    fn rejects_out_of_range() {
        assert_eq!(to_roman(0), None);
        assert_eq!(to_roman(4000), None);
    }
}
"""),
    ),
    E(
        "csv_line",
        {
            "title": "Split one CSV line with quoted fields",
            "description": "Split a single CSV line on commas. A field that starts with a double quote may contain commas, and a doubled quote (\"\") inside it stands for a literal quote. An opening quote that is never closed is an error that reports the byte column where the quoted field began. An empty line yields a single empty field.",
            "code_context": rs(r"""
#[derive(Debug, PartialEq, Eq)]
pub enum CsvError {
    UnterminatedQuote { column: usize },
}
"""),
        },
        {
            "code": rs(r"""
pub fn split_csv_line(line: &str) -> Result<Vec<String>, CsvError> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut quote_start = 0;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (c, in_quotes) {
            ('"', false) if field.is_empty() => {
                in_quotes = true;
                quote_start = i;
            }
            ('"', true) => {
                if matches!(chars.peek(), Some((_, '"'))) {
                    field.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if in_quotes {
        return Err(CsvError::UnterminatedQuote { column: quote_start });
    }
    fields.push(field);
    Ok(fields)
}
"""),
        },
        rs(r'''
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fields() {
        assert_eq!(split_csv_line("a,b,c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(split_csv_line("a,").unwrap(), vec!["a", ""]);
        assert_eq!(split_csv_line("").unwrap(), vec![""]);
    }

    #[test]
    fn quoted_fields_may_contain_commas_and_quotes() {
        assert_eq!(split_csv_line("\"x, y\",z").unwrap(), vec!["x, y", "z"]);
        assert_eq!(
            split_csv_line(r#""say ""hi""",1"#).unwrap(),
            vec![r#"say "hi""#, "1"]
        );
    }

    #[test]
    fn unterminated_quote_reports_column() {
        assert_eq!(
            split_csv_line("a,\"oops"),
            Err(CsvError::UnterminatedQuote { column: 2 })
        );
    }
}
'''),
    ),
]

# ---------------------------------------------------------------------------
# code_completion  (prefix + completion + suffix is the full, compilable file)
# ---------------------------------------------------------------------------
DATA["code_completion"] = [
    E(
        "tinyjson",
        {
            "prefix": rs(r"""
pub fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
""") + "\n",
            "suffix": "\n" + rs(r"""
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
"""),
        },
        {
            "completion": rs(r"""
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
"""),
        },
    ),
    E(
        "stackvm",
        {
            "prefix": rs(r"""
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Push(i64),
    Add,
    Mul,
    Neg,
}

/// Runs a tiny stack program; `None` on underflow, overflow or a non-singleton final stack.
pub fn run(program: &[Op]) -> Option<i64> {
    let mut stack: Vec<i64> = Vec::new();
    for op in program {
        match *op {
            Op::Push(v) => stack.push(v),
""") + "\n",
            "suffix": "\n" + rs(r"""
            Op::Neg => {
                let a = stack.pop()?;
                stack.push(a.checked_neg()?);
            }
        }
    }
    if stack.len() == 1 { stack.pop() } else { None }
}
"""),
        },
        {
            "completion": rs(r"""
            Op::Add => {
                let b = stack.pop()?;
                let a = stack.pop()?;
                stack.push(a.checked_add(b)?);
            }
            Op::Mul => {
                let b = stack.pop()?;
                let a = stack.pop()?;
                stack.push(a.checked_mul(b)?);
            }
"""),
        },
    ),
    E(
        "dotconf",
        {
            "prefix": rs(r"""
use std::collections::HashMap;

pub fn parse_config(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) =
""") + " ",
            "suffix": rs(r"""
 {
            map.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    map
}
"""),
        },
        {"completion": "line.split_once('=')"},
    ),
    E(
        "matrixkit",
        {
            "prefix": rs(r"""
pub fn transpose(m: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let rows = m.len();
    let cols = m.first().map_or(0, |r| r.len());
    assert!(m.iter().all(|r| r.len() == cols), "ragged matrix");
""") + "\n",
            "suffix": "\n}",
        },
        {"completion": "    (0..cols).map(|c| (0..rows).map(|r| m[r][c]).collect()).collect()"},
    ),
    E(
        "prefix_tree",
        {
            "prefix": rs(r"""
use std::collections::HashMap;

#[derive(Default)]
pub struct TrieNode {
    children: HashMap<char, TrieNode>,
    terminal: bool,
}

impl TrieNode {
    pub fn insert(&mut self, word: &str) {
        let mut node = self;
        for ch in word.chars() {
""") + "\n",
            "suffix": "\n" + rs(r"""
        }
        node.terminal = true;
    }

    pub fn contains(&self, word: &str) -> bool {
        let mut node = self;
        for ch in word.chars() {
            match node.children.get(&ch) {
                Some(next) => node = next,
                None => return false,
            }
        }
        node.terminal
    }
}
"""),
        },
        {"completion": "            node = node.children.entry(ch).or_default();"},
    ),
    E(
        "thermo_units",
        {
            "prefix": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Celsius(pub f64);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fahrenheit(pub f64);

impl From<Celsius> for Fahrenheit {
    fn from(c: Celsius) -> Self {
""") + "\n        ",
            "suffix": "\n" + rs(r"""
    }
}

impl From<Fahrenheit> for Celsius {
    fn from(f: Fahrenheit) -> Self {
        Celsius((f.0 - 32.0) * 5.0 / 9.0)
    }
}
"""),
        },
        {"completion": "Fahrenheit(c.0 * 9.0 / 5.0 + 32.0)"},
    ),
    E(
        "countdown",
        {
            "prefix": rs(r"""
pub struct Countdown {
    remaining: u32,
}

impl Countdown {
    pub fn new(from: u32) -> Self {
        Countdown { remaining: from }
    }
}

impl Iterator for Countdown {
    type Item = u32;
""") + "\n\n",
            "suffix": "\n" + rs(r"""

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Countdown {}
"""),
        },
        {
            "completion": rs(r"""
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let current = self.remaining;
        self.remaining -= 1;
        Some(current)
    }
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "hexfmt",
        {
            "prefix": rs(r"""
use std::fmt::Write;

pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
""") + "\n",
            "suffix": "\n    }\n    out\n}\n",
        },
        {"completion": '        write!(out, "{:02x}", b).expect("writing to a String cannot fail");'},
    ),
    E(
        "sorted_vec",
        {
            "prefix": rs(r"""
/// Inserts `x` keeping `v` sorted and returns the index it was placed at.
pub fn insert_sorted<T: Ord>(v: &mut Vec<T>, x: T) -> usize {
    let idx = match
""") + " ",
            "suffix": ";\n    v.insert(idx, x);\n    idx\n}\n",
        },
        {"completion": "v.binary_search(&x) { Ok(i) | Err(i) => i }"},
    ),
]

# ---------------------------------------------------------------------------
# bug_detection  (buggy_code compiles but is wrong; fixed_code is correct)
# ---------------------------------------------------------------------------
DATA["bug_detection"] = [
    E(
        "paginate",
        {
            "buggy_code": rs(r"""
pub fn paginate<T>(items: &[T], per_page: usize, number: usize) -> Option<Page<'_, T>> {
    assert!(per_page > 0, "per_page must be positive");
    let total_pages = items.len() / per_page;
    if number >= total_pages {
        return None;
    }
    let start = number * per_page;
    let end = (start + per_page).min(items.len());
    Some(Page { number, total_pages, items: &items[start..end] })
}
"""),
            "code_context": rs(r"""
#[derive(Debug, Clone, PartialEq)]
pub struct Page<'a, T> {
    pub number: usize,
    pub total_pages: usize,
    pub items: &'a [T],
}
"""),
        },
        {
            "bug_description": "`total_pages` is computed with floor division, so a trailing partial page is silently dropped: 7 items with `per_page = 3` report 2 pages, and requesting page 2 (which should hold the 7th item) returns `None`. The page count must round up.",
            "fixed_code": rs(r"""
pub fn paginate<T>(items: &[T], per_page: usize, number: usize) -> Option<Page<'_, T>> {
    assert!(per_page > 0, "per_page must be positive");
    let total_pages = items.len().div_ceil(per_page);
    if number >= total_pages {
        return None;
    }
    let start = number * per_page;
    let end = (start + per_page).min(items.len());
    Some(Page { number, total_pages, items: &items[start..end] })
}
"""),
        },
    ),
    E(
        "stats_basic",
        {
            "buggy_code": rs(r"""
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Some(sorted[sorted.len() / 2])
}
"""),
            "code_context": "",
        },
        {
            "bug_description": "For an even number of values the median is the mean of the two middle elements, but the function returns only the upper one: `median(&[1.0, 2.0, 3.0, 4.0])` gives 3.0 instead of 2.5.",
            "fixed_code": rs(r"""
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        Some((sorted[mid - 1] + sorted[mid]) / 2.0)
    } else {
        Some(sorted[mid])
    }
}
"""),
        },
    ),
    E(
        "timeseries",
        {
            "buggy_code": rs(r"""
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let mut out = Vec::new();
    if window == 0 || window > values.len() {
        return out;
    }
    for i in 0..values.len() - window {
        let sum: f64 = values[i..i + window].iter().sum();
        out.push(sum / window as f64);
    }
    out
}
"""),
            "code_context": "",
        },
        {
            "bug_description": "Off-by-one in the loop bound: there are `len - window + 1` windows, but `0..len - window` stops one short, so the last window is never averaged (and a window equal to the slice length yields an empty result). Using `slice::windows` removes the manual index arithmetic entirely.",
            "fixed_code": rs(r"""
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    if window == 0 {
        return Vec::new();
    }
    values
        .windows(window)
        .map(|w| w.iter().sum::<f64>() / window as f64)
        .collect()
}
"""),
        },
    ),
    E(
        "ledger",
        {
            "buggy_code": rs(r"""
impl Ledger {
    pub fn transfer(&mut self, from: &str, to: &str, amount: u64) -> Result<(), TransferError> {
        if !self.balances.contains_key(from) {
            return Err(TransferError::UnknownAccount(from.to_string()));
        }
        let dest = self
            .balances
            .get_mut(to)
            .ok_or_else(|| TransferError::UnknownAccount(to.to_string()))?;
        *dest += amount;
        let src = self.balances.get_mut(from).unwrap();
        if *src < amount {
            return Err(TransferError::InsufficientFunds { needed: amount, available: *src });
        }
        *src -= amount;
        Ok(())
    }
}
"""),
            "code_context": rs(r"""
use std::collections::HashMap;

#[derive(Debug, PartialEq, Eq)]
pub enum TransferError {
    UnknownAccount(String),
    InsufficientFunds { needed: u64, available: u64 },
}

pub struct Ledger {
    pub balances: HashMap<String, u64>,
}
"""),
        },
        {
            "bug_description": "The destination is credited before the source balance is checked. When the sender has insufficient funds the function returns an error but the recipient keeps the money, so failed transfers create funds out of thin air. Validate both accounts and the balance first, and only then mutate.",
            "fixed_code": rs(r"""
impl Ledger {
    pub fn transfer(&mut self, from: &str, to: &str, amount: u64) -> Result<(), TransferError> {
        if !self.balances.contains_key(to) {
            return Err(TransferError::UnknownAccount(to.to_string()));
        }
        let src = self
            .balances
            .get_mut(from)
            .ok_or_else(|| TransferError::UnknownAccount(from.to_string()))?;
        if *src < amount {
            return Err(TransferError::InsufficientFunds { needed: amount, available: *src });
        }
        *src -= amount;
        *self.balances.get_mut(to).expect("checked above") += amount;
        Ok(())
    }
}
"""),
        },
    ),
    E(
        "textutil",
        {
            "buggy_code": rs(r"""
pub fn truncate_with_ellipsis(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut out = s[..max_bytes].to_string();
    out.push('…');
    out
}
"""),
            "code_context": "",
        },
        {
            "bug_description": "Slicing a `str` at an arbitrary byte offset panics when the offset falls inside a multi-byte UTF-8 character, e.g. `truncate_with_ellipsis(\"héllo\", 2)`. Back the cut off to the nearest char boundary before slicing.",
            "fixed_code": rs(r"""
pub fn truncate_with_ellipsis(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut cut = max_bytes;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = s[..cut].to_string();
    out.push('…');
    out
}
"""),
        },
    ),
    E(
        "backoff",
        {
            "buggy_code": rs(r"""
impl Backoff {
    /// Delay before retry number `attempt` (0-based): doubles each time, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.base.saturating_mul(factor).max(self.max)
    }
}
"""),
            "code_context": rs(r"""
use std::time::Duration;

pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}
"""),
        },
        {
            "bug_description": "`max` is used where `min` was intended. Instead of capping the delay, every delay is at least `self.max` (the cap became a floor) and the exponential growth above it is unbounded.",
            "fixed_code": rs(r"""
impl Backoff {
    /// Delay before retry number `attempt` (0-based): doubles each time, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.base.saturating_mul(factor).min(self.max)
    }
}
"""),
        },
    ),
    E(
        "bsearch",
        {
            "buggy_code": rs(r"""
/// Index of the first element that is not less than `target`.
pub fn lower_bound(sorted: &[i32], target: i32) -> usize {
    let (mut lo, mut hi) = (0, sorted.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sorted[mid] <= target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}
"""),
            "code_context": "",
        },
        {
            "bug_description": "The comparison uses `<=`, which turns this into an upper bound: it returns the first index *greater* than `target`. With duplicates it skips the whole run, e.g. `lower_bound(&[1, 2, 2, 2, 3], 2)` returns 4 instead of 1.",
            "fixed_code": rs(r"""
/// Index of the first element that is not less than `target`.
pub fn lower_bound(sorted: &[i32], target: i32) -> usize {
    let (mut lo, mut hi) = (0, sorted.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sorted[mid] < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "vercmp",
        {
            "buggy_code": rs(r"""
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    a.split('.').cmp(b.split('.'))
}
"""),
            "code_context": "use std::cmp::Ordering;",
        },
        {
            "bug_description": "The components are compared as strings, so ordering is lexicographic: \"1.10\" sorts before \"1.9\" and \"2.0\" differs from \"2.0.0\". Parse each component as a number and pad the shorter version with zeros before comparing.",
            "fixed_code": rs(r"""
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (mut va, mut vb) = (parse(a), parse(b));
    let len = va.len().max(vb.len());
    va.resize(len, 0);
    vb.resize(len, 0);
    va.cmp(&vb)
}
"""),
        },
    ),
    E(
        "charfreq",
        {
            "buggy_code": rs(r"""
pub fn char_frequencies(s: &str) -> HashMap<char, usize> {
    let mut freq = HashMap::new();
    for c in s.chars().filter(|c| !c.is_whitespace()) {
        *freq.entry(c).or_insert(1) += 1;
    }
    freq
}
"""),
            "code_context": "use std::collections::HashMap;",
        },
        {
            "bug_description": "`or_insert(1)` seeds a new entry with 1 and then the `+= 1` runs as well, so every count is one too high (a character seen once is reported twice). Seed with 0.",
            "fixed_code": rs(r"""
pub fn char_frequencies(s: &str) -> HashMap<char, usize> {
    let mut freq = HashMap::new();
    for c in s.chars().filter(|c| !c.is_whitespace()) {
        *freq.entry(c).or_insert(0) += 1;
    }
    freq
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# code_review
# ---------------------------------------------------------------------------
DATA["code_review"] = [
    E(
        "invoice_fmt",
        {
            "code_before": rs(r"""
pub fn render_invoice(items: &Vec<LineItem>) -> String {
    let mut out = String::new();
    let mut total = 0;
    for i in 0..items.len() {
        let item = &items[i];
        let line_total = item.qty as u64 * item.unit_cents;
        total = total + line_total;
        out = out + &format!("{} x{} = {}.{:02}\n", item.name, item.qty, line_total / 100, line_total % 100);
    }
    out = out + &format!("TOTAL {}.{:02}\n", total / 100, total % 100);
    out
}
"""),
            "code_context": rs(r"""
pub struct LineItem {
    pub name: String,
    pub qty: u32,
    pub unit_cents: u64,
}
"""),
        },
        {
            "review_comment": "`out = out + &format!(..)` allocates a temporary String for every line, and taking `&Vec<LineItem>` forces callers to own a Vec. Accept a slice, iterate over it directly instead of indexing, and `writeln!` straight into the buffer through `std::fmt::Write`. Use `u64::from` for the lossless widening.",
            "code_after": rs(r"""
use std::fmt::Write;

pub fn render_invoice(items: &[LineItem]) -> String {
    let mut out = String::new();
    let mut total: u64 = 0;
    for item in items {
        let line_total = u64::from(item.qty) * item.unit_cents;
        total += line_total;
        writeln!(out, "{} x{} = {}.{:02}", item.name, item.qty, line_total / 100, line_total % 100)
            .expect("writing to a String cannot fail");
    }
    writeln!(out, "TOTAL {}.{:02}", total / 100, total % 100).expect("writing to a String cannot fail");
    out
}
"""),
        },
    ),
    E(
        "user_directory",
        {
            "code_before": rs(r"""
impl Directory {
    pub fn email_of(&self, id: u32) -> String {
        let user = self.users.get(&id).unwrap();
        user.email.clone()
    }
}
"""),
            "code_context": rs(r"""
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct User {
    pub id: u32,
    pub email: String,
}

pub struct Directory {
    users: HashMap<u32, User>,
}
"""),
        },
        {
            "review_comment": "This panics for any unknown id, which is an ordinary outcome for a lookup, and it clones the email on every call. Return `Option<&str>` so the caller decides how to handle a miss and whether it needs an owned copy.",
            "code_after": rs(r"""
impl Directory {
    pub fn email_of(&self, id: u32) -> Option<&str> {
        self.users.get(&id).map(|user| user.email.as_str())
    }
}
"""),
        },
    ),
    E(
        "fsfilter",
        {
            "code_before": rs(r"""
pub fn has_extension(path: &String, exts: &Vec<String>) -> bool {
    let lower = path.to_lowercase();
    for e in exts.iter() {
        if lower.ends_with(&(".".to_string() + e)) {
            return true;
        }
    }
    false
}
"""),
            "code_context": "",
        },
        {
            "review_comment": "Prefer `&str` and `&[&str]` over `&String`/`&Vec<String>`: they accept more callers and avoid an indirection. The loop also allocates two Strings per extension, and lowercasing only the path means an extension list containing \"PNG\" never matches. Let `Path::extension` find the extension and compare case-insensitively without allocating.",
            "code_after": rs(r"""
use std::path::Path;

pub fn has_extension(path: &str, exts: &[&str]) -> bool {
    Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| exts.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}
"""),
        },
    ),
    E(
        "orders",
        {
            "code_before": rs(r"""
pub fn unshipped_total(orders: &[Order]) -> u64 {
    let all = orders.to_vec();
    let mut pending = Vec::new();
    for o in all {
        if !o.shipped {
            pending.push(o.clone());
        }
    }
    pending.iter().map(|o| o.total_cents).sum()
}
"""),
            "code_context": rs(r"""
#[derive(Debug, Clone)]
pub struct Order {
    pub id: u64,
    pub customer: String,
    pub total_cents: u64,
    pub shipped: bool,
}
"""),
        },
        {
            "review_comment": "Every order is deep-copied twice (`to_vec`, then `clone`), including its `customer` String, just to sum one integer field. Borrow from the slice; `filter` + `map` + `sum` needs no allocation at all.",
            "code_after": rs(r"""
pub fn unshipped_total(orders: &[Order]) -> u64 {
    orders
        .iter()
        .filter(|o| !o.shipped)
        .map(|o| o.total_cents)
        .sum()
}
"""),
        },
    ),
    E(
        "netcfg",
        {
            "code_before": rs(r"""
pub fn parse_port(s: &str) -> Result<u16, String> {
    let n: u32 = s.trim().parse().map_err(|e: ParseIntError| format!("bad port: {}", e))?;
    if n == 0 || n > 65535 {
        return Err("port out of range".to_string());
    }
    Ok(n as u16)
}
"""),
            "code_context": rs(r"""
use std::fmt;
use std::num::ParseIntError;
"""),
        },
        {
            "review_comment": "`Result<_, String>` makes the failure impossible to match on and drops the underlying `ParseIntError`. Introduce a small error enum implementing `Display` and `std::error::Error` (with `source`) plus `From<ParseIntError>` so `?` works. Parsing straight into `u16` lets the type do the upper-bound check, which leaves only 0 to reject explicitly, and removes the `as` cast.",
            "code_after": rs(r"""
#[derive(Debug, PartialEq, Eq)]
pub enum PortError {
    Invalid(ParseIntError),
    Zero,
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::Invalid(e) => write!(f, "invalid port: {e}"),
            PortError::Zero => f.write_str("port 0 is reserved"),
        }
    }
}

impl std::error::Error for PortError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PortError::Invalid(e) => Some(e),
            PortError::Zero => None,
        }
    }
}

impl From<ParseIntError> for PortError {
    fn from(e: ParseIntError) -> Self {
        PortError::Invalid(e)
    }
}

pub fn parse_port(s: &str) -> Result<u16, PortError> {
    match s.trim().parse::<u16>()? {
        0 => Err(PortError::Zero),
        port => Ok(port),
    }
}
"""),
        },
    ),
    E(
        "taskboard",
        {
            "code_before": rs(r"""
pub fn first_urgent(tasks: &[Task]) -> Option<usize> {
    let mut found = None;
    for i in 0..tasks.len() {
        if tasks[i].priority >= 8 && tasks[i].done == false {
            if found.is_none() {
                found = Some(i);
            }
        }
    }
    found
}
"""),
            "code_context": rs(r"""
#[derive(Debug)]
pub struct Task {
    pub name: String,
    pub priority: u8,
    pub done: bool,
}
"""),
        },
        {
            "review_comment": "The loop keeps scanning after it has its answer and reads awkwardly (`== false`, manual indexing, nested ifs). `Iterator::position` short-circuits and states the intent in one line.",
            "code_after": rs(r"""
pub fn first_urgent(tasks: &[Task]) -> Option<usize> {
    tasks.iter().position(|t| t.priority >= 8 && !t.done)
}
"""),
        },
    ),
    E(
        "greeter",
        {
            "code_before": rs(r"""
pub fn greeting(names: &HashMap<u32, String>, id: u32, formal: bool) -> String {
    let name = names.get(&id);
    if name.is_some() {
        match formal {
            true => format!("Good day, {}.", name.unwrap()),
            false => format!("Hey {}!", name.unwrap()),
        }
    } else {
        "Hello, stranger.".to_string()
    }
}
"""),
            "code_context": "use std::collections::HashMap;",
        },
        {
            "review_comment": "`is_some()` followed by `unwrap()` checks the same thing twice and leaves a panic path a later edit could expose, and `match` on a bool is an if/else in disguise. Match on the tuple `(Option, bool)` once so every case is explicit and the compiler checks exhaustiveness.",
            "code_after": rs(r"""
pub fn greeting(names: &HashMap<u32, String>, id: u32, formal: bool) -> String {
    match (names.get(&id), formal) {
        (Some(name), true) => format!("Good day, {name}."),
        (Some(name), false) => format!("Hey {name}!"),
        (None, _) => "Hello, stranger.".to_string(),
    }
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "metrics_hub",
        {
            "code_before": rs(r"""
impl Metrics {
    pub fn report(&self) -> String {
        let samples = self.samples.lock().unwrap();
        let mut sorted = samples.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p50 = sorted[sorted.len() / 2];
        let p99 = sorted[(sorted.len() * 99) / 100];
        format!("n={} p50={:.2} p99={:.2}", samples.len(), p50, p99)
    }
}
"""),
            "code_context": rs(r"""
use std::sync::{Arc, Mutex};

pub struct Metrics {
    pub samples: Arc<Mutex<Vec<f64>>>,
}
"""),
        },
        {
            "review_comment": "The mutex guard lives until the end of the function, so every writer is blocked while we sort and format. Copy the data inside a short block and release the lock immediately. Also: `partial_cmp(..).unwrap()` panics on NaN (use `f64::total_cmp`), indexing panics on an empty vector, and a poisoned lock should not take the reporting path down with it.",
            "code_after": rs(r"""
impl Metrics {
    pub fn report(&self) -> String {
        let mut sorted = {
            let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            samples.clone()
        };
        if sorted.is_empty() {
            return "n=0".to_string();
        }
        sorted.sort_by(f64::total_cmp);
        let pct = |p: usize| sorted[((sorted.len() - 1) * p) / 100];
        format!("n={} p50={:.2} p99={:.2}", sorted.len(), pct(50), pct(99))
    }
}
"""),
        },
    ),
    E(
        "server_conf",
        {
            "code_before": rs(r"""
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub verbose: bool,
}

impl ServerConfig {
    pub fn new() -> ServerConfig {
        ServerConfig {
            host: String::from(""),
            port: 0,
            workers: 0,
            verbose: false,
        }
    }
}
"""),
            "code_context": "",
        },
        {
            "review_comment": "`new()` builds a config nobody can use (empty host, port 0, zero workers), and without a `Default` impl callers can't write `ServerConfig { port: 9000, ..Default::default() }`. Implement `Default` with working values, have `new()` delegate to it, and derive the usual `Debug`/`Clone`/`PartialEq` so configs can be logged and compared in tests.",
            "code_after": rs(r"""
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub verbose: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".to_string(),
            port: 8080,
            workers: 4,
            verbose: false,
        }
    }
}

impl ServerConfig {
    pub fn new() -> Self {
        Self::default()
    }
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# code_refactoring  (behaviour-preserving; before and after both compile)
# ---------------------------------------------------------------------------
DATA["code_refactoring"] = [
    E(
        "shapes",
        {
            "code_before": rs(r"""
pub fn area(kind: &str, a: f64, b: f64) -> Option<f64> {
    if kind == "circle" {
        Some(std::f64::consts::PI * a * a)
    } else if kind == "rect" {
        Some(a * b)
    } else if kind == "triangle" {
        Some(0.5 * a * b)
    } else {
        None
    }
}
"""),
            "code_context": "",
        },
        {
            "rationale": "A string tag plus two anonymous numbers lets callers pass \"cirlce\" or mix up the parameters, and forces an `Option` return for typos. An enum with named fields makes invalid shapes unrepresentable, `match` is checked for exhaustiveness when a shape is added, and `area` becomes infallible.",
            "code_after": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Circle { radius: f64 },
    Rect { width: f64, height: f64 },
    Triangle { base: f64, height: f64 },
}

impl Shape {
    pub fn area(&self) -> f64 {
        match *self {
            Shape::Circle { radius } => std::f64::consts::PI * radius * radius,
            Shape::Rect { width, height } => width * height,
            Shape::Triangle { base, height } => 0.5 * base * height,
        }
    }
}
"""),
        },
    ),
    E(
        "argparse_mini",
        {
            "code_before": rs(r"""
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "-v" || args[i] == "--verbose" {
            opts.verbose = true;
            i += 1;
        } else if args[i] == "-o" {
            if i + 1 >= args.len() {
                return Err("-o needs a value".to_string());
            }
            opts.output = Some(args[i + 1].clone());
            i += 2;
        } else {
            opts.inputs.push(args[i].clone());
            i += 1;
        }
    }
    Ok(opts)
}
"""),
            "code_context": rs(r"""
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub verbose: bool,
    pub output: Option<String>,
    pub inputs: Vec<String>,
}
"""),
        },
        {
            "rationale": "Manual index bookkeeping (`i += 1` vs `i += 2`) is easy to get wrong. Driving an iterator with `while let` and pulling the option's value with `iter.next()` removes the arithmetic, and matching on `arg.as_str()` replaces the if/else chain of string comparisons.",
            "code_after": rs(r"""
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-v" | "--verbose" => opts.verbose = true,
            "-o" => {
                let value = iter.next().ok_or("-o needs a value")?;
                opts.output = Some(value.clone());
            }
            _ => opts.inputs.push(arg.clone()),
        }
    }
    Ok(opts)
}
"""),
        },
    ),
    E(
        "catalog",
        {
            "code_before": rs(r"""
pub fn most_expensive(items: &[Item]) -> Option<&Item> {
    let mut best: Option<&Item> = None;
    for item in items {
        match best {
            None => best = Some(item),
            Some(b) if item.price_cents > b.price_cents => best = Some(item),
            _ => {}
        }
    }
    best
}

pub fn heaviest(items: &[Item]) -> Option<&Item> {
    let mut best: Option<&Item> = None;
    for item in items {
        match best {
            None => best = Some(item),
            Some(b) if item.weight_grams > b.weight_grams => best = Some(item),
            _ => {}
        }
    }
    best
}
"""),
            "code_context": rs(r"""
pub struct Item {
    pub name: String,
    pub price_cents: u64,
    pub weight_grams: u32,
}
"""),
        },
        {
            "rationale": "The two functions are the same loop with a different field. Extract a generic helper parameterised by a key function. `Iterator::max_by_key` is not a drop-in replacement because it returns the *last* maximum on ties while the originals keep the first, so the helper uses `reduce` with a strict `>` to preserve that behaviour.",
            "code_after": rs(r"""
fn first_max_by_key<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Option<&T> {
    items
        .iter()
        .reduce(|best, item| if key(item) > key(best) { item } else { best })
}

pub fn most_expensive(items: &[Item]) -> Option<&Item> {
    first_max_by_key(items, |i| i.price_cents)
}

pub fn heaviest(items: &[Item]) -> Option<&Item> {
    first_max_by_key(items, |i| i.weight_grams)
}
"""),
        },
    ),
    E(
        "numutil",
        {
            "code_before": rs(r"""
pub fn sum_of_even_squares(nums: &[i64]) -> i64 {
    let mut total = 0;
    for n in nums {
        if n % 2 == 0 {
            let sq = n * n;
            total += sq;
        }
    }
    total
}
"""),
            "code_context": "",
        },
        {
            "rationale": "Filter, map and sum are exactly the steps of this loop; the iterator chain says so directly and drops the mutable accumulator.",
            "code_after": rs(r"""
pub fn sum_of_even_squares(nums: &[i64]) -> i64 {
    nums.iter().filter(|&&n| n % 2 == 0).map(|&n| n * n).sum()
}
"""),
        },
    ),
    E(
        "orgchart",
        {
            "code_before": rs(r"""
pub fn manager_name(staff: &HashMap<u32, Employee>, id: u32) -> Option<String> {
    match staff.get(&id) {
        Some(emp) => match emp.manager_id {
            Some(mid) => match staff.get(&mid) {
                Some(mgr) => Some(mgr.name.clone()),
                None => None,
            },
            None => None,
        },
        None => None,
    }
}
"""),
            "code_context": rs(r"""
use std::collections::HashMap;

pub struct Employee {
    pub name: String,
    pub manager_id: Option<u32>,
}
"""),
        },
        {
            "rationale": "Three levels of `match` that all map `None` to `None` are what the `?` operator does on `Option`. Using it flattens the function to two lines with identical behaviour and signature.",
            "code_after": rs(r"""
pub fn manager_name(staff: &HashMap<u32, Employee>, id: u32) -> Option<String> {
    let manager_id = staff.get(&id)?.manager_id?;
    staff.get(&manager_id).map(|mgr| mgr.name.clone())
}
"""),
        },
    ),
    E(
        "httpreq",
        {
            "code_before": rs(r"""
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
    pub retries: u32,
}

pub fn make_request(
    method: &str,
    url: &str,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout_ms: u64,
    retries: u32,
) -> Request {
    Request {
        method: method.to_string(),
        url: url.to_string(),
        headers,
        body,
        timeout_ms,
        retries,
    }
}
"""),
            "code_context": "",
        },
        {
            "rationale": "Six positional arguments, two of them bare integers, are easy to pass in the wrong order, and every call site must spell out defaults such as `Vec::new()` and `None`. A consuming builder gives each setting a name, provides defaults (30 s timeout, no retries) in one place, and lets common cases read as `Request::get(url).header(..).build()`. `#[must_use]` catches a builder that is configured but never built.",
            "code_after": rs(r"""
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
    pub retries: u32,
}

impl Request {
    pub fn get(url: impl Into<String>) -> RequestBuilder {
        RequestBuilder::new("GET", url)
    }

    pub fn post(url: impl Into<String>) -> RequestBuilder {
        RequestBuilder::new("POST", url)
    }
}

#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct RequestBuilder {
    request: Request,
}

impl RequestBuilder {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        RequestBuilder {
            request: Request {
                method: method.into(),
                url: url.into(),
                headers: Vec::new(),
                body: None,
                timeout_ms: 30_000,
                retries: 0,
            },
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = Some(body.into());
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.request.timeout_ms = ms;
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.request.retries = n;
        self
    }

    pub fn build(self) -> Request {
        self.request
    }
}
"""),
        },
    ),
    E(
        "upload_guard",
        {
            "code_before": rs(r"""
pub fn validate(upload: &Upload) -> Result<(), Rejection> {
    if !upload.filename.trim().is_empty() {
        if upload.size_bytes <= MAX_UPLOAD {
            if upload.content_type.starts_with("image/") || upload.content_type == "application/pdf" {
                Ok(())
            } else {
                Err(Rejection::UnsupportedType(upload.content_type.clone()))
            }
        } else {
            Err(Rejection::TooLarge(upload.size_bytes))
        }
    } else {
        Err(Rejection::EmptyName)
    }
}
"""),
            "code_context": rs(r"""
pub struct Upload {
    pub filename: String,
    pub size_bytes: u64,
    pub content_type: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    EmptyName,
    TooLarge(u64),
    UnsupportedType(String),
}

pub const MAX_UPLOAD: u64 = 10 * 1024 * 1024;
"""),
        },
        {
            "rationale": "The nested conditions put each error far away from the check that causes it. Guard clauses handle each rejection right where it is detected, keep the happy path unindented at the end, and make adding another rule a one-block change. The checks still run in the same order, so behaviour is unchanged.",
            "code_after": rs(r"""
pub fn validate(upload: &Upload) -> Result<(), Rejection> {
    if upload.filename.trim().is_empty() {
        return Err(Rejection::EmptyName);
    }
    if upload.size_bytes > MAX_UPLOAD {
        return Err(Rejection::TooLarge(upload.size_bytes));
    }
    let ct = upload.content_type.as_str();
    if !(ct.starts_with("image/") || ct == "application/pdf") {
        return Err(Rejection::UnsupportedType(ct.to_string()));
    }
    Ok(())
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "traffic",
        {
            "code_before": rs(r"""
pub fn next_light(state: u8) -> u8 {
    // 0 = red, 1 = green, 2 = yellow
    if state == 0 {
        1
    } else if state == 1 {
        2
    } else {
        0
    }
}

pub fn light_duration_secs(state: u8) -> u32 {
    match state {
        0 => 30,
        1 => 25,
        2 => 5,
        _ => 0,
    }
}
"""),
            "code_context": "",
        },
        {
            "rationale": "Encoding states as magic `u8`s needs a comment to be understood, accepts meaningless values like 7, and the two functions disagree on how to treat them. An enum names the states, makes invalid ones unrepresentable, and gives both transitions exhaustive matches that the compiler re-checks if a state is added.",
            "code_after": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Light {
    Red,
    Green,
    Yellow,
}

impl Light {
    pub fn next(self) -> Light {
        match self {
            Light::Red => Light::Green,
            Light::Green => Light::Yellow,
            Light::Yellow => Light::Red,
        }
    }

    pub fn duration_secs(self) -> u32 {
        match self {
            Light::Red => 30,
            Light::Green => 25,
            Light::Yellow => 5,
        }
    }
}
"""),
        },
    ),
    E(
        "tagline",
        {
            "code_before": rs(r"""
pub fn format_tags(tags: &[&str]) -> String {
    let mut out = String::new();
    let mut first = true;
    for tag in tags {
        if tag.is_empty() {
            continue;
        }
        if !first {
            out.push_str(", ");
        }
        out.push('#');
        out.push_str(tag);
        first = false;
    }
    out
}
"""),
            "code_context": "",
        },
        {
            "rationale": "The `first` flag re-implements separator handling that `join` already provides. Filtering, formatting and joining as an iterator pipeline expresses the same output in three declarative steps.",
            "code_after": rs(r"""
pub fn format_tags(tags: &[&str]) -> String {
    tags.iter()
        .filter(|t| !t.is_empty())
        .map(|t| format!("#{t}"))
        .collect::<Vec<_>>()
        .join(", ")
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# code_optimization
# ---------------------------------------------------------------------------
DATA["code_optimization"] = [
    E(
        "idset",
        {
            "code_before": rs(r"""
pub fn unique_ids(ids: &[u64]) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    for &id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}
"""),
            "code_context": "",
        },
        {
            "rationale": "`Vec::contains` is a linear scan, making the function O(n²) on mostly-unique input. A `HashSet` gives O(1) average membership tests; `insert` returns whether the value was new, so one call both checks and records it while `filter` preserves first-occurrence order.",
            "code_after": rs(r"""
use std::collections::HashSet;

pub fn unique_ids(ids: &[u64]) -> Vec<u64> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}
"""),
        },
    ),
    E(
        "fibs",
        {
            "code_before": rs(r"""
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        return n as u64;
    }
    fib(n - 1) + fib(n - 2)
}
"""),
            "code_context": "",
        },
        {
            "rationale": "Naive recursion recomputes the same subproblems and takes exponential time (fib(50) makes tens of billions of calls). Iterating with two accumulators is O(n) time and O(1) space. The loop stops at fib(n) itself, so it overflows at exactly the same n as the original (n > 93).",
            "code_after": rs(r"""
pub fn fib(n: u32) -> u64 {
    if n == 0 {
        return 0;
    }
    let (mut prev, mut curr) = (0u64, 1u64);
    for _ in 1..n {
        (prev, curr) = (curr, prev + curr);
    }
    curr
}
"""),
        },
    ),
    E(
        "gridcsv",
        {
            "code_before": rs(r"""
pub fn to_csv(cells: &[Cell]) -> String {
    let mut out = String::new();
    for c in cells {
        let line = format!("{},{},{}\n", c.row, c.col, c.value);
        out = format!("{}{}", out, line);
    }
    out
}
"""),
            "code_context": rs(r"""
pub struct Cell {
    pub row: usize,
    pub col: usize,
    pub value: f64,
}
"""),
        },
        {
            "rationale": "`format!(\"{}{}\", out, line)` copies the whole accumulated output on every iteration, so building the string is O(n²) in its final length, plus one temporary String per line. Writing into a single pre-sized buffer with `writeln!` is linear and allocates once or twice.",
            "code_after": rs(r"""
use std::fmt::Write;

pub fn to_csv(cells: &[Cell]) -> String {
    // ~24 bytes per line is a reasonable guess for small indices and short floats.
    let mut out = String::with_capacity(cells.len() * 24);
    for c in cells {
        writeln!(out, "{},{},{}", c.row, c.col, c.value).expect("writing to a String cannot fail");
    }
    out
}
"""),
        },
    ),
    E(
        "scoring",
        {
            "code_before": rs(r"""
pub fn normalize(scores: &[f64]) -> Vec<f64> {
    let mut result = Vec::new();
    for i in 0..scores.len() {
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        result.push(scores[i] / max);
    }
    result
}
"""),
            "code_context": "",
        },
        {
            "rationale": "The maximum is loop-invariant but recomputed for every element, making this O(n²). Hoist it out of the loop and build the output with `map` + `collect`, which also allocates the exact capacity up front.",
            "code_after": rs(r"""
pub fn normalize(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::MIN, f64::max);
    scores.iter().map(|&s| s / max).collect()
}
"""),
        },
    ),
    E(
        "pricebook",
        {
            "code_before": rs(r"""
impl PriceTable {
    pub fn price_of(&self, sku: u32) -> Option<u64> {
        for (i, &s) in self.skus.iter().enumerate() {
            if s == sku {
                return Some(self.prices[i]);
            }
        }
        None
    }
}
"""),
            "code_context": rs(r"""
pub struct PriceTable {
    /// Sorted ascending by SKU; `prices[i]` belongs to `skus[i]`.
    pub skus: Vec<u32>,
    pub prices: Vec<u64>,
}
"""),
        },
        {
            "rationale": "The SKUs are documented as sorted, so a linear scan wastes that invariant. `binary_search` finds the index in O(log n).",
            "code_after": rs(r"""
impl PriceTable {
    pub fn price_of(&self, sku: u32) -> Option<u64> {
        self.skus.binary_search(&sku).ok().map(|i| self.prices[i])
    }
}
"""),
        },
    ),
    E(
        "rotation",
        {
            "code_before": rs(r"""
pub fn round_robin(mut queue: Vec<String>, rounds: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..rounds {
        if queue.is_empty() {
            break;
        }
        let next = queue.remove(0);
        order.push(next.clone());
        queue.push(next);
    }
    order
}
"""),
            "code_context": "",
        },
        {
            "rationale": "`Vec::remove(0)` shifts every remaining element, so each round costs O(len). Moving the front to the back repeatedly is just cycling through the list in order, which `cycle().take(rounds)` does with no queue mutation at all (and still yields nothing for an empty queue).",
            "code_after": rs(r"""
pub fn round_robin(queue: Vec<String>, rounds: usize) -> Vec<String> {
    queue.iter().cycle().take(rounds).cloned().collect()
}
"""),
        },
    ),
    E(
        "caps_runs",
        {
            "code_before": rs(r"""
pub fn count_uppercase_runs(s: &str) -> usize {
    let mut runs = 0;
    let mut in_run = false;
    for i in 0..s.chars().count() {
        let c = s.chars().nth(i).unwrap();
        if c.is_uppercase() {
            if !in_run {
                runs += 1;
                in_run = true;
            }
        } else {
            in_run = false;
        }
    }
    runs
}
"""),
            "code_context": "",
        },
        {
            "rationale": "`chars().nth(i)` has to decode the string from the start on every iteration, so the loop is O(n²), and `chars().count()` adds another full pass. Iterating over `chars()` once is O(n) and simplifies the run tracking.",
            "code_after": rs(r"""
pub fn count_uppercase_runs(s: &str) -> usize {
    let mut runs = 0;
    let mut in_run = false;
    for c in s.chars() {
        let upper = c.is_uppercase();
        if upper && !in_run {
            runs += 1;
        }
        in_run = upper;
    }
    runs
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "anagrams",
        {
            "code_before": rs(r"""
pub fn group_anagrams(words: &[String]) -> Vec<Vec<String>> {
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for w in words {
        let mut chars: Vec<char> = w.chars().collect();
        chars.sort();
        let key: String = chars.into_iter().collect();
        groups.entry(key.clone()).or_insert(Vec::new()).push(w.clone());
    }
    groups.values().cloned().collect()
}
"""),
            "code_context": rs(r"""
use std::collections::HashMap;

// Input words are lowercase ASCII (validated upstream).
"""),
        },
        {
            "rationale": "Each word pays for a Vec<char>, a sort (O(k log k)), a key String and a redundant `key.clone()`, and the result deep-copies every group via `values().cloned()`. For lowercase ASCII a fixed `[u16; 26]` letter-count array is a cheaper, allocation-free key computed in O(k), and `into_values()` moves the groups out instead of cloning them.",
            "code_after": rs(r"""
pub fn group_anagrams(words: &[String]) -> Vec<Vec<String>> {
    let mut groups: HashMap<[u16; 26], Vec<String>> = HashMap::with_capacity(words.len());
    for w in words {
        let mut key = [0u16; 26];
        for b in w.bytes() {
            key[usize::from(b - b'a')] += 1;
        }
        groups.entry(key).or_default().push(w.clone());
    }
    groups.into_values().collect()
}
"""),
        },
    ),
    E(
        "primes",
        {
            "code_before": rs(r"""
pub fn primes_up_to(n: usize) -> Vec<usize> {
    let mut primes = Vec::new();
    for candidate in 2..=n {
        let mut is_prime = true;
        for d in 2..candidate {
            if candidate % d == 0 {
                is_prime = false;
                break;
            }
        }
        if is_prime {
            primes.push(candidate);
        }
    }
    primes
}
"""),
            "code_context": "",
        },
        {
            "rationale": "Trial division by every smaller number is O(n²) in the worst case. The sieve of Eratosthenes marks composites in O(n log log n): only primes up to √n need to strike out multiples, starting from their square because smaller multiples were already struck by smaller primes.",
            "code_after": rs(r"""
pub fn primes_up_to(n: usize) -> Vec<usize> {
    if n < 2 {
        return Vec::new();
    }
    let mut composite = vec![false; n + 1];
    let mut i = 2;
    while i * i <= n {
        if !composite[i] {
            for multiple in (i * i..=n).step_by(i) {
                composite[multiple] = true;
            }
        }
        i += 1;
    }
    (2..=n).filter(|&k| !composite[k]).collect()
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# docstring_generation  (docstring is the `///` block placed above `code`)
# ---------------------------------------------------------------------------
DATA["docstring_generation"] = [
    E(
        "geom2d",
        {
            "code": rs(r"""
pub fn distance(a: Point, b: Point) -> f64 {
    (a.x - b.x).hypot(a.y - b.y)
}
"""),
            "code_context": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}
"""),
        },
        {
            "docstring": rs(r"""
/// Returns the Euclidean distance between two points.
///
/// Uses [`f64::hypot`], which avoids intermediate overflow and underflow for
/// very large or very small coordinates.
"""),
        },
    ),
    E(
        "textwrap_lite",
        {
            "code": rs(r"""
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}
"""),
            "code_context": "",
        },
        {
            "docstring": rs(r"""
/// Greedily wraps `text` into lines of at most `width` bytes.
///
/// Words are split on Unicode whitespace and never broken, so a single word
/// longer than `width` ends up alone on an over-long line. Runs of whitespace,
/// including newlines, collapse to a single space.
///
/// # Examples
///
/// ```
/// let lines = wrap("the quick brown fox", 10);
/// assert_eq!(lines, vec!["the quick", "brown fox"]);
/// ```
"""),
        },
    ),
    E(
        "retry_policy",
        {
            "code": rs(r"""
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub multiplier: f64,
}
"""),
            "code_context": "use std::time::Duration;",
        },
        {
            "docstring": rs(r"""
/// Configuration for retrying a fallible operation with exponential backoff.
///
/// The first retry waits `initial_delay`; each later retry waits the previous
/// delay times `multiplier`. `max_attempts` counts the initial try as well, so
/// a value of 1 disables retries entirely.
"""),
        },
    ),
    E(
        "checked_stats",
        {
            "code": rs(r"""
pub fn checked_average(values: &[i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let sum = values.iter().try_fold(0i64, |acc, &v| acc.checked_add(v))?;
    Some(sum / values.len() as i64)
}
"""),
            "code_context": "",
        },
        {
            "docstring": "/// Computes the integer mean of `values`, truncating toward zero.\n///\n/// Returns `None` if the slice is empty or if the sum overflows `i64`.",
        },
    ),
    E(
        "envflags",
        {
            "code": rs(r"""
pub fn parse_bool(s: &str) -> Result<bool, ParseBoolError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(ParseBoolError(other.to_string())),
    }
}
"""),
            "code_context": rs(r"""
#[derive(Debug, PartialEq, Eq)]
pub struct ParseBoolError(pub String);
"""),
        },
        {
            "docstring": rs(r"""
/// Parses a human-friendly boolean, such as the value of an environment variable.
///
/// Accepts `1`/`0`, `true`/`false`, `yes`/`no` and `on`/`off`, ignoring ASCII
/// case and surrounding whitespace.
///
/// # Errors
///
/// Returns a [`ParseBoolError`] carrying the trimmed, lowercased input when it
/// matches none of the accepted spellings.
"""),
        },
    ),
    E(
        "tally",
        {
            "code": rs(r"""
pub fn merge_counts(into: &mut HashMap<String, u64>, from: HashMap<String, u64>) {
    for (key, count) in from {
        *into.entry(key).or_insert(0) += count;
    }
}
"""),
            "code_context": "use std::collections::HashMap;",
        },
        {
            "docstring": "/// Adds every count in `from` to the matching entry in `into`, consuming `from`.\n///\n/// Keys missing from `into` are inserted with their count from `from`.",
        },
    ),
    E(
        "batcher",
        {
            "code": rs(r"""
pub fn chunk_by_size<'a>(items: &[&'a str], max_bytes: usize) -> Vec<Vec<&'a str>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for &item in items {
        if !current.is_empty() && size + item.len() > max_bytes {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += item.len();
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}
"""),
            "code_context": "",
        },
        {
            "docstring": rs(r"""
/// Groups `items` into consecutive batches whose total byte length stays within `max_bytes`.
///
/// Order is preserved and items are never split: an item larger than
/// `max_bytes` is placed in a batch of its own. Useful for sending strings to
/// an API that limits the payload size of each request.
///
/// # Examples
///
/// ```
/// let batches = chunk_by_size(&["aa", "bb", "cccc", "d"], 4);
/// assert_eq!(batches, vec![vec!["aa", "bb"], vec!["cccc"], vec!["d"]]);
/// ```
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "casing",
        {
            "code": rs(r"""
pub fn to_snake_case(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 4);
    let mut prev_lower = false;
    for ch in ident.chars() {
        if ch.is_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.extend(ch.to_lowercase());
            prev_lower = false;
        } else {
            out.push(ch);
            prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        }
    }
    out
}
"""),
            "code_context": "",
        },
        {
            "docstring": rs(r"""
/// Converts a `CamelCase` or `camelCase` identifier to `snake_case`.
///
/// An underscore is inserted before an uppercase letter that follows a
/// lowercase letter or digit. Runs of capitals are not split, so acronyms
/// collapse: `"HTTPServer"` becomes `"httpserver"`.
///
/// # Examples
///
/// ```
/// assert_eq!(to_snake_case("HttpServerError"), "http_server_error");
/// assert_eq!(to_snake_case("parseV2Header"), "parse_v2_header");
/// ```
"""),
        },
    ),
    E(
        "lerp",
        {
            "code": rs(r"""
pub fn scale_to_range(value: f64, from: (f64, f64), to: (f64, f64)) -> f64 {
    let (a, b) = from;
    let (c, d) = to;
    if a == b {
        return c;
    }
    let t = ((value - a) / (b - a)).clamp(0.0, 1.0);
    c + t * (d - c)
}
"""),
            "code_context": "",
        },
        {
            "docstring": rs(r"""
/// Linearly maps `value` from the range `from` onto the range `to`, clamping the result.
///
/// Values outside `from` are clamped to the nearest end of `to`. Either range
/// may be reversed (`(10.0, 0.0)`). If `from` is empty (both ends equal) the
/// start of `to` is returned.
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# comment_generation  (commented_code = code + explanatory comments)
# ---------------------------------------------------------------------------
DATA["comment_generation"] = [
    E(
        "luhn",
        {
            "code": rs(r"""
pub fn luhn_valid(number: &str) -> bool {
    let digits: Option<Vec<u32>> = number
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_digit(10))
        .collect();
    let Some(digits) = digits else { return false };
    if digits.len() < 2 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum % 10 == 0
}
"""),
            "code_context": "",
        },
        {
            "commented_code": rs(r"""
pub fn luhn_valid(number: &str) -> bool {
    // Parse every non-space character as a digit; collecting into Option<Vec<_>>
    // yields None as soon as any character is not 0-9.
    let digits: Option<Vec<u32>> = number
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_digit(10))
        .collect();
    let Some(digits) = digits else { return false };
    // A single digit cannot carry a check digit.
    if digits.len() < 2 {
        return false;
    }
    // Walk from the rightmost (check) digit: double every second digit and,
    // if doubling gives a two-digit number, add its digits (same as minus 9).
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    // The number is valid when the total is a multiple of 10.
    sum % 10 == 0
}
"""),
        },
    ),
    E(
        "intmath",
        {
            "code": rs(r"""
pub fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

pub fn lcm(a: u64, b: u64) -> Option<u64> {
    if a == 0 || b == 0 {
        return Some(0);
    }
    (a / gcd(a, b)).checked_mul(b)
}
"""),
            "code_context": "",
        },
        {
            "commented_code": rs(r"""
pub fn gcd(mut a: u64, mut b: u64) -> u64 {
    // Euclid's algorithm: gcd(a, b) == gcd(b, a % b), until the remainder is 0.
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

pub fn lcm(a: u64, b: u64) -> Option<u64> {
    // By convention lcm(0, x) = 0; this also avoids dividing by gcd(0, 0) = 0.
    if a == 0 || b == 0 {
        return Some(0);
    }
    // Divide before multiplying to keep the intermediate small; report overflow
    // as None instead of wrapping.
    (a / gcd(a, b)).checked_mul(b)
}
"""),
        },
    ),
    E(
        "ratelimit",
        {
            "code": rs(r"""
impl TokenBucket {
    pub fn try_acquire(&mut self, cost: f64) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}
"""),
            "code_context": rs(r"""
use std::time::Instant;

pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_sec: f64,
    last: Instant,
}
"""),
        },
        {
            "commented_code": rs(r"""
impl TokenBucket {
    pub fn try_acquire(&mut self, cost: f64) -> bool {
        // Refill lazily: credit the tokens earned since the previous call
        // instead of running a background timer.
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        // Never accumulate more than the bucket can hold, which bounds the burst size.
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        if self.tokens >= cost {
            // Enough budget: spend it and let the request through.
            self.tokens -= cost;
            true
        } else {
            // Not enough yet; the caller should back off and retry later.
            false
        }
    }
}
"""),
        },
    ),
    E(
        "editdist",
        {
            "code": rs(r"""
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut curr = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        curr[0] = i;
        for j in 1..=b.len() {
            let cost = if a[i - 1] == b[j - 1] { 0 } else { 1 };
            curr[j] = (prev[j] + 1).min(curr[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut curr);
    }
    prev[b.len()]
}
"""),
            "code_context": "",
        },
        {
            "commented_code": rs(r"""
pub fn levenshtein(a: &str, b: &str) -> usize {
    // Work on chars, not bytes, so multi-byte characters count as one edit.
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Only two rows of the DP table are needed. Row 0 is the distance from the
    // empty prefix of `a` to each prefix of `b`: j insertions.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut curr = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        // Turning a[..i] into the empty string takes i deletions.
        curr[0] = i;
        for j in 1..=b.len() {
            let cost = if a[i - 1] == b[j - 1] { 0 } else { 1 };
            // Cheapest of: delete from a, insert into a, or substitute (free on a match).
            curr[j] = (prev[j] + 1).min(curr[j - 1] + 1).min(prev[j - 1] + cost);
        }
        // The row just computed becomes the previous row; `curr` is overwritten next pass.
        std::mem::swap(&mut prev, &mut curr);
    }
    // After the final swap the last computed row lives in `prev`.
    prev[b.len()]
}
"""),
        },
    ),
    E(
        "depgraph",
        {
            "code": rs(r"""
pub fn topo_sort(deps: &HashMap<String, Vec<String>>) -> Result<Vec<String>, CycleError> {
    let mut indegree: HashMap<&str, usize> = HashMap::new();
    let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
    for (node, reqs) in deps {
        indegree.entry(node.as_str()).or_insert(0);
        for req in reqs {
            indegree.entry(req.as_str()).or_insert(0);
            *indegree.get_mut(node.as_str()).unwrap() += 1;
            dependents.entry(req.as_str()).or_default().push(node.as_str());
        }
    }
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(&n, _)| n)
        .collect();
    ready.sort_unstable();
    let mut queue: VecDeque<&str> = ready.into();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(node) = queue.pop_front() {
        order.push(node.to_string());
        if let Some(children) = dependents.get(node) {
            let mut newly_ready = Vec::new();
            for &child in children {
                let d = indegree.get_mut(child).unwrap();
                *d -= 1;
                if *d == 0 {
                    newly_ready.push(child);
                }
            }
            newly_ready.sort_unstable();
            queue.extend(newly_ready);
        }
    }
    if order.len() < indegree.len() {
        let mut remaining: Vec<String> = indegree
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(n, _)| n.to_string())
            .collect();
        remaining.sort();
        return Err(CycleError { remaining });
    }
    Ok(order)
}
"""),
            "code_context": rs(r"""
use std::collections::{HashMap, VecDeque};

#[derive(Debug, PartialEq, Eq)]
pub struct CycleError {
    pub remaining: Vec<String>,
}
"""),
        },
        {
            "commented_code": rs(r"""
pub fn topo_sort(deps: &HashMap<String, Vec<String>>) -> Result<Vec<String>, CycleError> {
    // indegree[n] = number of unmet requirements of n;
    // dependents[r] = nodes that must wait for r.
    let mut indegree: HashMap<&str, usize> = HashMap::new();
    let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
    for (node, reqs) in deps {
        // Register every node, including requirements that never appear as keys.
        indegree.entry(node.as_str()).or_insert(0);
        for req in reqs {
            indegree.entry(req.as_str()).or_insert(0);
            *indegree.get_mut(node.as_str()).unwrap() += 1;
            dependents.entry(req.as_str()).or_default().push(node.as_str());
        }
    }
    // Kahn's algorithm starts from the nodes with no requirements. Sorting makes
    // the output deterministic despite HashMap's random iteration order.
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(&n, _)| n)
        .collect();
    ready.sort_unstable();
    let mut queue: VecDeque<&str> = ready.into();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(node) = queue.pop_front() {
        order.push(node.to_string());
        if let Some(children) = dependents.get(node) {
            // Completing `node` satisfies one requirement of each dependent;
            // those with nothing left to wait for become ready.
            let mut newly_ready = Vec::new();
            for &child in children {
                let d = indegree.get_mut(child).unwrap();
                *d -= 1;
                if *d == 0 {
                    newly_ready.push(child);
                }
            }
            // Sort each batch for the same determinism as the initial queue.
            newly_ready.sort_unstable();
            queue.extend(newly_ready);
        }
    }
    // Any node never emitted still has unmet requirements, which can only
    // happen when it is part of (or depends on) a cycle.
    if order.len() < indegree.len() {
        let mut remaining: Vec<String> = indegree
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(n, _)| n.to_string())
            .collect();
        remaining.sort();
        return Err(CycleError { remaining });
    }
    Ok(order)
}
"""),
        },
    ),
    E(
        "bitops",
        {
            "code": rs(r"""
pub fn is_power_of_two(n: u32) -> bool {
    n != 0 && n & (n - 1) == 0
}
"""),
            "code_context": "",
        },
        {
            "commented_code": rs(r"""
pub fn is_power_of_two(n: u32) -> bool {
    // n & (n - 1) clears the lowest set bit, so it is zero exactly when n has a
    // single bit set. Zero is excluded explicitly (and `n - 1` would underflow).
    n != 0 && n & (n - 1) == 0
}
"""),
        },
    ),
    E(
        "rle",
        {
            "code": rs(r"""
pub fn rle_encode(input: &str) -> Vec<(char, usize)> {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for c in input.chars() {
        match runs.last_mut() {
            Some((last, count)) if *last == c => *count += 1,
            _ => runs.push((c, 1)),
        }
    }
    runs
}

pub fn rle_decode(runs: &[(char, usize)]) -> String {
    runs.iter().flat_map(|&(c, n)| std::iter::repeat(c).take(n)).collect()
}
"""),
            "code_context": "",
        },
        {
            "commented_code": rs(r"""
pub fn rle_encode(input: &str) -> Vec<(char, usize)> {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for c in input.chars() {
        match runs.last_mut() {
            // Same character as the current run: just extend it.
            Some((last, count)) if *last == c => *count += 1,
            // First character, or the character changed: start a new run.
            _ => runs.push((c, 1)),
        }
    }
    runs
}

pub fn rle_decode(runs: &[(char, usize)]) -> String {
    // Expand each (char, count) pair back into `count` copies and concatenate.
    runs.iter().flat_map(|&(c, n)| std::iter::repeat(c).take(n)).collect()
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "paintgrid",
        {
            "code": rs(r"""
pub fn flood_fill(grid: &mut [Vec<u8>], start: (usize, usize), new_color: u8) -> usize {
    let (r0, c0) = start;
    let Some(&old) = grid.get(r0).and_then(|row| row.get(c0)) else {
        return 0;
    };
    if old == new_color {
        return 0;
    }
    let mut stack = vec![start];
    let mut painted = 0;
    while let Some((r, c)) = stack.pop() {
        match grid.get_mut(r).and_then(|row| row.get_mut(c)) {
            Some(cell) if *cell == old => *cell = new_color,
            _ => continue,
        }
        painted += 1;
        stack.push((r + 1, c));
        stack.push((r, c + 1));
        if r > 0 {
            stack.push((r - 1, c));
        }
        if c > 0 {
            stack.push((r, c - 1));
        }
    }
    painted
}
"""),
            "code_context": "",
        },
        {
            "commented_code": rs(r"""
pub fn flood_fill(grid: &mut [Vec<u8>], start: (usize, usize), new_color: u8) -> usize {
    let (r0, c0) = start;
    // An out-of-bounds start paints nothing.
    let Some(&old) = grid.get(r0).and_then(|row| row.get(c0)) else {
        return 0;
    };
    // Repainting with the same colour would loop forever re-visiting cells.
    if old == new_color {
        return 0;
    }
    // Explicit stack instead of recursion, so large regions can't overflow the call stack.
    let mut stack = vec![start];
    let mut painted = 0;
    while let Some((r, c)) = stack.pop() {
        // Bounds are checked here with get_mut, which also copes with ragged rows;
        // skip cells outside the grid or not part of the region.
        match grid.get_mut(r).and_then(|row| row.get_mut(c)) {
            Some(cell) if *cell == old => *cell = new_color,
            _ => continue,
        }
        painted += 1;
        // Visit the four orthogonal neighbours, guarding only against underflow.
        stack.push((r + 1, c));
        stack.push((r, c + 1));
        if r > 0 {
            stack.push((r - 1, c));
        }
        if c > 0 {
            stack.push((r, c - 1));
        }
    }
    painted
}
"""),
        },
    ),
    E(
        "humantime",
        {
            "code": rs(r"""
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for ch in s.chars() {
        if let Some(d) = ch.to_digit(10) {
            let n = number.unwrap_or(0);
            let n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d)));
            number = Some(n.ok_or(DurationError::Overflow)?);
            continue;
        }
        let value = number.take().ok_or(DurationError::Malformed)?;
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            other => return Err(DurationError::UnknownUnit(other)),
        };
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or(DurationError::Overflow)?;
    }
    if number.is_some() {
        return Err(DurationError::Malformed);
    }
    Ok(Duration::from_secs(total))
}
"""),
            "code_context": rs(r"""
use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
pub enum DurationError {
    Empty,
    Malformed,
    UnknownUnit(char),
    Overflow,
}
"""),
        },
        {
            "commented_code": rs(r"""
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    // Digits read since the last unit letter; None means no number is pending.
    let mut number: Option<u64> = None;
    for ch in s.chars() {
        if let Some(d) = ch.to_digit(10) {
            // Accumulate the decimal number, refusing to wrap on absurd input.
            let n = number.unwrap_or(0);
            let n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d)));
            number = Some(n.ok_or(DurationError::Overflow)?);
            continue;
        }
        // A unit letter must follow a number ("h" alone or "1hm" is malformed).
        let value = number.take().ok_or(DurationError::Malformed)?;
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            other => return Err(DurationError::UnknownUnit(other)),
        };
        // Add this component in seconds, again with overflow checks.
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or(DurationError::Overflow)?;
    }
    // Trailing digits without a unit ("1h30") are ambiguous, so reject them.
    if number.is_some() {
        return Err(DurationError::Malformed);
    }
    Ok(Duration::from_secs(total))
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# code_summarization
# ---------------------------------------------------------------------------
DATA["code_summarization"] = [
    E(
        "termchart",
        {
            "code": rs(r"""
pub fn ascii_histogram(values: &[u32], width: usize) -> String {
    let max = values.iter().copied().max().unwrap_or(0);
    let mut out = String::new();
    for (i, &v) in values.iter().enumerate() {
        let bar_len = if max == 0 { 0 } else { (v as usize * width) / max as usize };
        out.push_str(&format!("{:>3} | {} {}\n", i, "#".repeat(bar_len), v));
    }
    out
}
"""),
            "code_context": "",
        },
        {
            "summary": "Renders a horizontal text histogram: one line per value showing its index, a bar of `#` scaled so the largest value spans `width` characters, and the raw value. If every value is zero the bars are empty instead of dividing by zero, and an empty slice yields an empty string.",
        },
    ),
    E(
        "roadgraph",
        {
            "code": rs(r"""
pub fn shortest_paths(adj: &[Vec<(usize, u64)>], source: usize) -> Vec<Option<u64>> {
    let mut dist: Vec<Option<u64>> = vec![None; adj.len()];
    let mut heap = BinaryHeap::new();
    dist[source] = Some(0);
    heap.push(Reverse((0u64, source)));
    while let Some(Reverse((d, u))) = heap.pop() {
        if dist[u].is_some_and(|best| d > best) {
            continue;
        }
        for &(v, w) in &adj[u] {
            let candidate = d + w;
            if dist[v].map_or(true, |cur| candidate < cur) {
                dist[v] = Some(candidate);
                heap.push(Reverse((candidate, v)));
            }
        }
    }
    dist
}
"""),
            "code_context": rs(r"""
use std::cmp::Reverse;
use std::collections::BinaryHeap;
"""),
        },
        {
            "summary": "Dijkstra's single-source shortest paths over an adjacency list with non-negative `u64` edge weights. A min-heap (`BinaryHeap` of `Reverse`) pops the closest unsettled node; stale heap entries are skipped instead of being decreased in place. Returns the distance to every node, with `None` for nodes unreachable from `source`.",
        },
    ),
    E(
        "pathclean",
        {
            "code": rs(r"""
pub fn normalize_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}
"""),
            "code_context": "",
        },
        {
            "summary": "Lexically normalizes a Unix-style path without touching the filesystem: drops empty and `.` segments, resolves `..` against the preceding segment, keeps leading `..` for relative paths but discards them at the root of absolute paths, and returns \".\" for an empty relative result.",
        },
    ),
    E(
        "densemat",
        {
            "code": rs(r"""
pub fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let m = b.len();
    let p = b.first().map_or(0, Vec::len);
    if a.iter().any(|row| row.len() != m) || b.iter().any(|row| row.len() != p) {
        return None;
    }
    let mut out = vec![vec![0.0; p]; n];
    for i in 0..n {
        for k in 0..m {
            let aik = a[i][k];
            for j in 0..p {
                out[i][j] += aik * b[k][j];
            }
        }
    }
    Some(out)
}
"""),
            "code_context": "",
        },
        {
            "summary": "Multiplies an n×m matrix by an m×p matrix stored as vectors of rows, returning `None` if the dimensions don't match or either matrix is ragged. It uses the i-k-j loop order so the innermost loop walks rows of `b` and `out` contiguously.",
        },
    ),
    E(
        "money",
        {
            "code": rs(r"""
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.cents < 0 { "-" } else { "" };
        let abs = self.cents.unsigned_abs();
        let whole = (abs / 100).to_string();
        let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
        for (i, ch) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        write!(f, "{sign}{grouped}.{:02} {}", abs % 100, self.currency)
    }
}
"""),
            "code_context": rs(r"""
use std::fmt;

pub struct Money {
    pub cents: i64,
    pub currency: &'static str,
}
"""),
        },
        {
            "summary": "Formats an amount stored in cents as e.g. `-1,234,567.89 USD`: a sign for negatives, thousands separators in the whole part, exactly two decimal places, then the currency code. `unsigned_abs` keeps `i64::MIN` from overflowing.",
        },
    ),
    E(
        "ttlcache",
        {
            "code": rs(r"""
pub fn evict_expired(entries: &mut HashMap<String, Instant>, ttl: Duration, now: Instant) -> usize {
    let before = entries.len();
    entries.retain(|_, inserted| now.saturating_duration_since(*inserted) < ttl);
    before - entries.len()
}
"""),
            "code_context": rs(r"""
use std::collections::HashMap;
use std::time::{Duration, Instant};
"""),
        },
        {
            "summary": "Removes entries older than `ttl` as of `now` and returns how many were evicted.",
        },
    ),
    E(
        "bitstream",
        {
            "code": rs(r"""
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    pub fn read_bits(&mut self, count: u32) -> Option<u32> {
        if count > 32 || self.pos + count as usize > self.data.len() * 8 {
            return None;
        }
        let mut value = 0u32;
        for _ in 0..count {
            let byte = self.data[self.pos / 8];
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            value = (value << 1) | u32::from(bit);
            self.pos += 1;
        }
        Some(value)
    }
}
"""),
            "code_context": "",
        },
        {
            "summary": "A borrowing MSB-first bit reader over a byte slice. `read_bits` returns the next `count` (at most 32) bits as an integer and advances the cursor, or returns `None` without consuming anything if the request would run past the end of the data.",
        },
    ),
    # --- held-out (test split) ---
    E(
        "iniread",
        {
            "code": rs(r"""
pub fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            sections
                .entry(current.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    sections
}
"""),
            "code_context": "use std::collections::HashMap;",
        },
        {
            "summary": "Parses INI-style text into a map of section name to key/value map. Blank lines and `;`/`#` comments are skipped, `[name]` switches the current section (keys before any header go under the empty name \"\"), `key = value` pairs are trimmed and later duplicates overwrite earlier ones, and lines without `=` are silently ignored.",
        },
    ),
    E(
        "mergeutil",
        {
            "code": rs(r"""
pub fn merge_sorted<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if b[j] < a[i] {
            out.push(b[j].clone());
            j += 1;
        } else {
            out.push(a[i].clone());
            i += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
"""),
            "code_context": "",
        },
        {
            "summary": "Merges two already-sorted slices into one sorted Vec in linear time. The merge is stable: on equal elements the one from `a` comes first.",
        },
    ),
]

# ---------------------------------------------------------------------------
# code_explanation
# ---------------------------------------------------------------------------
DATA["code_explanation"] = [
    E(
        "strutil",
        {
            "code": rs(r"""
pub fn longest<'a>(x: &'a str, y: &'a str) -> &'a str {
    if x.len() >= y.len() { x } else { y }
}
"""),
            "code_context": "",
        },
        {
            "explanation": "The function returns whichever of two string slices is longer (the first one on a tie). Because the result is a reference that may point into either argument, the compiler needs to know how long it stays valid. The lifetime parameter `'a` ties all three together: the returned `&str` is valid only as long as *both* inputs are, i.e. for the shorter of the two borrows. Without the annotation the elision rules can't pick an input lifetime for the output (there are two reference parameters), so the signature would not compile.",
        },
    ),
    E(
        "sharedcount",
        {
            "code": rs(r"""
pub struct Counter {
    count: Rc<RefCell<u32>>,
}

impl Counter {
    pub fn pair() -> (Counter, Counter) {
        let shared = Rc::new(RefCell::new(0));
        (Counter { count: Rc::clone(&shared) }, Counter { count: shared })
    }

    pub fn bump(&self) -> u32 {
        let mut c = self.count.borrow_mut();
        *c += 1;
        *c
    }
}
"""),
            "code_context": rs(r"""
use std::cell::RefCell;
use std::rc::Rc;
"""),
        },
        {
            "explanation": "`pair` creates two `Counter` handles that share one integer. `Rc` provides shared ownership (the value lives until the last handle is dropped; `Rc::clone` only increments a reference count), and `RefCell` provides interior mutability, so `bump` can increment through `&self`. `borrow_mut` checks at runtime that no other borrow is active and would panic otherwise; the guard `c` is released at the end of `bump`. Bumping either handle is visible through the other. Both types are single-threaded: `Rc<RefCell<_>>` is neither `Send` nor `Sync`; across threads you would use `Arc<Mutex<_>>` or an atomic.",
        },
    ),
    E(
        "lazyseq",
        {
            "code": rs(r"""
pub fn multiples_of(factor: u32, limit: u32) -> impl Iterator<Item = u32> {
    (1..).map(move |i| i * factor).take_while(move |&m| m <= limit)
}
"""),
            "code_context": "",
        },
        {
            "explanation": "It returns a lazy iterator over `factor, 2*factor, 3*factor, ...` up to and including `limit`. `(1..)` is an unbounded range, which is fine because nothing is computed until the caller iterates, and `take_while` ends the sequence at the first multiple above `limit`. The closures are `move` because they capture `factor` and `limit`, which are locals of this function; the returned iterator outlives the call, so it must own copies rather than borrow them. `impl Iterator<Item = u32>` hides the concrete `TakeWhile<Map<RangeFrom<u32>, _>, _>` type, which can't be written out anyway because closure types are anonymous.",
        },
    ),
    E(
        "envconf",
        {
            "code": rs(r"""
pub fn read_threads(vars: &[(&str, &str)]) -> Result<u8, ConfigError> {
    let raw = vars
        .iter()
        .find(|(k, _)| *k == "THREADS")
        .map(|(_, v)| *v)
        .ok_or(ConfigError::Missing("THREADS"))?;
    let n: u8 = raw.trim().parse()?;
    Ok(n)
}
"""),
            "code_context": rs(r"""
use std::fmt;
use std::num::ParseIntError;

#[derive(Debug)]
pub enum ConfigError {
    Missing(&'static str),
    BadNumber(ParseIntError),
}

impl From<ParseIntError> for ConfigError {
    fn from(e: ParseIntError) -> Self {
        ConfigError::BadNumber(e)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing(key) => write!(f, "missing key `{key}`"),
            ConfigError::BadNumber(e) => write!(f, "bad number: {e}"),
        }
    }
}
"""),
        },
        {
            "explanation": "The function looks up `THREADS` in a list of key/value pairs and parses it as a `u8`. `find` returns the first matching pair, `map` extracts the value, and `ok_or` turns a missing key into `Err(ConfigError::Missing(..))`, which the first `?` returns early. The second `?` is more interesting: `parse` fails with a `ParseIntError`, not a `ConfigError`. `?` calls `From::from` on the error before returning it, and the `impl From<ParseIntError> for ConfigError` in the context makes that conversion produce `ConfigError::BadNumber`. Values like \"300\" or \"-1\" fail here too, because they don't fit in a `u8`.",
        },
    ),
    E(
        "wscollapse",
        {
            "code": rs(r"""
pub fn collapse_spaces(input: &str) -> Cow<'_, str> {
    if !input.contains("  ") {
        return Cow::Borrowed(input);
    }
    let mut out = String::with_capacity(input.len());
    let mut prev_space = false;
    for c in input.chars() {
        if c == ' ' {
            if !prev_space {
                out.push(c);
            }
            prev_space = true;
        } else {
            out.push(c);
            prev_space = false;
        }
    }
    Cow::Owned(out)
}
"""),
            "code_context": "use std::borrow::Cow;",
        },
        {
            "explanation": "It replaces runs of consecutive spaces with a single space. Returning `Cow<str>` (clone-on-write) makes the common case free: if the input contains no double space it is already normalized, so the function returns `Cow::Borrowed(input)` without allocating. Only when work is needed does it build a new `String` and return `Cow::Owned`. The `'_` ties the borrowed variant to the input's lifetime. Callers use the result like a `&str` through `Deref`, or call `into_owned()` when they need a `String`.",
        },
    ),
    E(
        "nonempty",
        {
            "code": rs(r"""
pub struct NonEmptyVec<T>(Vec<T>);

impl<T> NonEmptyVec<T> {
    pub fn new(first: T, rest: Vec<T>) -> Self {
        let mut v = Vec::with_capacity(rest.len() + 1);
        v.push(first);
        v.extend(rest);
        NonEmptyVec(v)
    }

    pub fn first(&self) -> &T {
        &self.0[0]
    }
}

impl<T> Deref for NonEmptyVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}
"""),
            "code_context": "use std::ops::Deref;",
        },
        {
            "explanation": "`NonEmptyVec` is a newtype that guarantees at least one element: the only constructor takes a mandatory `first` item, and the inner `Vec` is private, so nothing outside the module can empty it. That invariant is why `first()` can return `&T` instead of `Option<&T>`. Implementing `Deref<Target = [T]>` (not `Vec<T>`) exposes every read-only slice method, such as `len`, `iter`, indexing and `contains`, through auto-deref, while mutation methods like `clear` or `pop` stay unavailable. Without `DerefMut` the invariant can't be broken.",
        },
    ),
    E(
        "connstate",
        {
            "code": rs(r"""
pub enum Conn {
    Idle,
    Buffering(Vec<u8>),
    Closed,
}

impl Conn {
    pub fn close(&mut self) -> Option<Vec<u8>> {
        match std::mem::replace(self, Conn::Closed) {
            Conn::Buffering(buf) => Some(buf),
            Conn::Idle | Conn::Closed => None,
        }
    }
}
"""),
            "code_context": "",
        },
        {
            "explanation": "`close` moves the connection into the `Closed` state and hands back any buffered bytes. You can't move the `Vec` out of `*self` through a `&mut` reference, because that would leave `self` partially moved. `std::mem::replace` solves this: it writes `Conn::Closed` into `self` and returns the old value by ownership, which can then be destructured and its buffer moved out without cloning. Idle or already-closed connections yield `None`.",
        },
    ),
    # --- held-out (test split) ---
    E(
        "typed_ids",
        {
            "code": rs(r"""
pub struct Id<T> {
    raw: u64,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Id<T> {
    pub const fn new(raw: u64) -> Self {
        Id { raw, _marker: PhantomData }
    }

    pub fn raw(&self) -> u64 {
        self.raw
    }
}

impl<T> Clone for Id<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Id<T> {}

impl<T> PartialEq for Id<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
"""),
            "code_context": "use std::marker::PhantomData;",
        },
        {
            "explanation": "`Id<T>` is a typed identifier: an `Id<User>` and an `Id<Order>` are both just a `u64` at runtime, but the compiler won't let you pass one where the other is expected. `PhantomData` is needed because a struct must use every type parameter. Using `PhantomData<fn() -> T>` rather than `PhantomData<T>` says \"this doesn't own a T\", so `Id<T>` stays `Send`/`Sync` and covariant regardless of `T`, and drop checking ignores `T`. `Clone`, `Copy` and `PartialEq` are implemented by hand because `#[derive]` would add `T: Clone` / `T: PartialEq` bounds, making `Id<T>` uncopyable whenever the marker type isn't, even though only the `u64` is compared or copied.",
        },
    ),
    E(
        "indentguard",
        {
            "code": rs(r"""
pub struct Indent<'a> {
    level: &'a mut usize,
}

impl<'a> Indent<'a> {
    pub fn enter(level: &'a mut usize) -> Self {
        *level += 1;
        Indent { level }
    }

    pub fn depth(&self) -> usize {
        *self.level
    }
}

impl Drop for Indent<'_> {
    fn drop(&mut self) {
        *self.level -= 1;
    }
}
"""),
            "code_context": "",
        },
        {
            "explanation": "This is the RAII guard pattern. `Indent::enter` increments a shared indentation counter and returns a guard holding a mutable borrow of it; when the guard goes out of scope, its `Drop` impl decrements the counter again. The decrement therefore happens on every exit path, including early returns, `?` and panics that unwind, so the level can't get out of sync. While the guard is alive it holds the `&mut usize`, so the borrow checker prevents anyone else from modifying the counter behind its back.",
        },
    ),
]

# ---------------------------------------------------------------------------
# function_naming  (`__placeholder__` stands for the function name)
# ---------------------------------------------------------------------------
DATA["function_naming"] = [
    E(
        "palin",
        {
            "code": rs(r"""
pub fn __placeholder__(s: &str) -> bool {
    let cleaned: Vec<char> = s
        .chars()
        .filter(|c| c.is_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    cleaned.iter().eq(cleaned.iter().rev())
}
"""),
            "code_context": "",
        },
        {"function_name": "is_palindrome"},
    ),
    E(
        "units",
        {
            "code": "pub fn __placeholder__(celsius: f64) -> f64 {\n    celsius * 9.0 / 5.0 + 32.0\n}",
            "code_context": "",
        },
        {"function_name": "celsius_to_fahrenheit"},
    ),
    E(
        "phonetics",
        {
            "code": rs(r"""
pub fn __placeholder__(text: &str) -> usize {
    text.chars()
        .filter(|c| matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u'))
        .count()
}
"""),
            "code_context": "",
        },
        {"function_name": "count_vowels"},
    ),
    E(
        "kvline",
        {
            "code": rs(r"""
pub fn __placeholder__(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    Some((key, value.trim()))
}
"""),
            "code_context": "",
        },
        {"function_name": "parse_key_value"},
    ),
    E(
        "stackish",
        {
            "code": rs(r"""
impl<T> Stack<T> {
    pub fn __placeholder__(&self) -> Option<&T> {
        self.items.last()
    }
}
"""),
            "code_context": rs(r"""
pub struct Stack<T> {
    items: Vec<T>,
}
"""),
        },
        {"function_name": "peek"},
    ),
    E(
        "sliceops",
        {
            "code": rs(r"""
pub fn __placeholder__<T: Clone>(items: &[T], size: usize) -> Vec<Vec<T>> {
    assert!(size > 0, "size must be positive");
    items.chunks(size).map(|c| c.to_vec()).collect()
}
"""),
            "code_context": "",
        },
        {"function_name": "split_into_chunks"},
    ),
    E(
        "latency",
        {
            "code": rs(r"""
pub fn __placeholder__(durations_ms: &[u64]) -> Option<u64> {
    if durations_ms.is_empty() {
        return None;
    }
    let mut sorted = durations_ms.to_vec();
    sorted.sort_unstable();
    let idx = (sorted.len() * 95).div_ceil(100) - 1;
    Some(sorted[idx])
}
"""),
            "code_context": "",
        },
        {"function_name": "p95_latency"},
    ),
    # --- held-out (test split) ---
    E(
        "titlecase",
        {
            "code": rs(r"""
pub fn __placeholder__(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
"""),
            "code_context": "",
        },
        {"function_name": "capitalize_words"},
    ),
    E(
        "warehouse",
        {
            "code": rs(r"""
impl Inventory {
    pub fn __placeholder__(&mut self, sku: &str, qty: u32) -> Result<u32, u32> {
        let available = self.stock.get_mut(sku).ok_or(0u32)?;
        if *available < qty {
            return Err(*available);
        }
        *available -= qty;
        Ok(*available)
    }
}
"""),
            "code_context": rs(r"""
use std::collections::HashMap;

pub struct Inventory {
    stock: HashMap<String, u32>,
}
"""),
        },
        {"function_name": "reserve_stock"},
    ),
]

# ---------------------------------------------------------------------------
# variable_naming  (`__placeholder__` stands for one variable)
# ---------------------------------------------------------------------------
DATA["variable_naming"] = [
    E(
        "wordstats",
        {
            "code": rs(r"""
pub fn most_common_word(text: &str) -> Option<(&str, usize)> {
    let mut __placeholder__: HashMap<&str, usize> = HashMap::new();
    for word in text.split_whitespace() {
        *__placeholder__.entry(word).or_insert(0) += 1;
    }
    __placeholder__.into_iter().max_by_key(|&(w, c)| (c, std::cmp::Reverse(w)))
}
"""),
            "code_context": "use std::collections::HashMap;",
        },
        {"variable_name": "word_counts"},
    ),
    E(
        "diskusage",
        {
            "code": rs(r"""
pub fn directory_size(files: &[(String, u64)]) -> u64 {
    let mut __placeholder__ = 0u64;
    for (_, size) in files {
        __placeholder__ = __placeholder__.saturating_add(*size);
    }
    __placeholder__
}
"""),
            "code_context": "",
        },
        {"variable_name": "total_bytes"},
    ),
    E(
        "grepish",
        {
            "code": rs(r"""
pub fn find_first<R: BufRead>(reader: R, needle: &str) -> io::Result<Option<usize>> {
    for (__placeholder__, line) in reader.lines().enumerate() {
        if line?.contains(needle) {
            return Ok(Some(__placeholder__ + 1));
        }
    }
    Ok(None)
}
"""),
            "code_context": "use std::io::{self, BufRead};",
        },
        {"variable_name": "line_index"},
    ),
    E(
        "gradebook",
        {
            "code": rs(r"""
pub fn median_score(scores: &[u32]) -> Option<u32> {
    let mut __placeholder__ = scores.to_vec();
    __placeholder__.sort_unstable();
    __placeholder__.get(__placeholder__.len() / 2).copied()
}
"""),
            "code_context": "",
        },
        {"variable_name": "sorted"},
    ),
    E(
        "tablefmt",
        {
            "code": rs(r"""
pub fn pad_column(cells: &[&str]) -> Vec<String> {
    let __placeholder__ = cells.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    cells.iter().map(|c| format!("{:<width$}", c, width = __placeholder__)).collect()
}
"""),
            "code_context": "",
        },
        {"variable_name": "max_width"},
    ),
    E(
        "retryloop",
        {
            "code": rs(r"""
pub fn retry<T, E>(mut op: impl FnMut() -> Result<T, E>, max_attempts: u32) -> Result<T, E> {
    let mut __placeholder__ = max_attempts.max(1);
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if __placeholder__ <= 1 => return Err(e),
            Err(_) => __placeholder__ -= 1,
        }
    }
}
"""),
            "code_context": "",
        },
        {"variable_name": "attempts_left"},
    ),
    E(
        "spinwait",
        {
            "code": rs(r"""
pub fn spin_until<F: FnMut() -> bool>(mut ready: F, timeout: Duration) -> bool {
    let __placeholder__ = Instant::now() + timeout;
    while Instant::now() < __placeholder__ {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    ready()
}
"""),
            "code_context": "use std::time::{Duration, Instant};",
        },
        {"variable_name": "deadline"},
    ),
    # --- held-out (test split) ---
    E(
        "ioutil",
        {
            "code": rs(r"""
pub fn read_up_to<R: Read>(reader: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut __placeholder__ = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = reader.read(&mut __placeholder__[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    __placeholder__.truncate(filled);
    Ok(__placeholder__)
}
"""),
            "code_context": "use std::io::{self, Read};",
        },
        {"variable_name": "buffer"},
    ),
    E(
        "monotonic",
        {
            "code": rs(r"""
pub fn is_strictly_increasing(values: &[i32]) -> bool {
    let mut __placeholder__: Option<i32> = None;
    for &v in values {
        if __placeholder__.is_some_and(|p| v <= p) {
            return false;
        }
        __placeholder__ = Some(v);
    }
    true
}
"""),
            "code_context": "",
        },
        {"variable_name": "previous"},
    ),
]

# ---------------------------------------------------------------------------
# code_search  (natural-language query -> snippet that compiles with code_context)
# ---------------------------------------------------------------------------
DATA["code_search"] = [
    E(
        "logscan",
        {
            "query": "How do I read a text file line by line, skip blank lines and propagate I/O errors with `?`",
            "code_context": rs(r"""
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
"""),
        },
        {
            "code_snippet": rs(r"""
pub fn non_empty_lines(path: &Path) -> io::Result<Vec<String>> {
    let reader = BufReader::new(File::open(path)?);
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if !line.trim().is_empty() {
            lines.push(line);
        }
    }
    Ok(lines)
}
"""),
        },
    ),
    E(
        "leaderboard",
        {
            "query": "sort a vector of structs by an f64 field in descending order (f64 is not Ord)",
            "code_context": rs(r"""
pub struct Player {
    pub name: String,
    pub rating: f64,
}
"""),
        },
        {
            "code_snippet": rs(r"""
pub fn sort_by_rating_desc(players: &mut [Player]) {
    players.sort_by(|a, b| b.rating.total_cmp(&a.rating));
}
"""),
        },
    ),
    E(
        "sentence",
        {
            "query": "reverse the order of words in a sentence",
            "code_context": "",
        },
        {
            "code_snippet": rs(r"""
pub fn reverse_words(s: &str) -> String {
    s.split_whitespace().rev().collect::<Vec<_>>().join(" ")
}
"""),
        },
    ),
    E(
        "salesreport",
        {
            "query": "group records by a string key into a HashMap of vectors",
            "code_context": rs(r"""
use std::collections::HashMap;

pub struct Sale {
    pub region: String,
    pub amount: u64,
}
"""),
        },
        {
            "code_snippet": rs(r"""
pub fn sales_by_region(sales: &[Sale]) -> HashMap<&str, Vec<u64>> {
    let mut groups: HashMap<&str, Vec<u64>> = HashMap::new();
    for sale in sales {
        groups.entry(sale.region.as_str()).or_default().push(sale.amount);
    }
    groups
}
"""),
        },
    ),
    E(
        "stopwatch",
        {
            "query": "measure how long a closure takes to run and return its result together with the elapsed time",
            "code_context": "use std::time::{Duration, Instant};",
        },
        {
            "code_snippet": rs(r"""
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}
"""),
        },
    ),
    E(
        "parsum",
        {
            "query": "split a slice across several threads and sum the parts without Arc or cloning the data",
            "code_context": "",
        },
        {
            "code_snippet": rs(r"""
pub fn parallel_sum(data: &[u64], threads: usize) -> u64 {
    let chunk = data.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().sum::<u64>()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker panicked")).sum()
    })
}
"""),
        },
    ),
    E(
        "colors",
        {
            "query": "parse a CSS hex color like #ff8800 into an (r, g, b) tuple",
            "code_context": "",
        },
        {
            "code_snippet": rs(r"""
pub fn parse_hex_color(s: &str) -> Option<(u8, u8, u8)> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.is_ascii() {
        return None;
    }
    let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some((channel(0)?, channel(2)?, channel(4)?))
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "eventlog",
        {
            "query": "get all values whose keys fall in a numeric range from an ordered map",
            "code_context": "use std::collections::BTreeMap;",
        },
        {
            "code_snippet": rs(r"""
pub fn events_between(log: &BTreeMap<u64, String>, from: u64, to: u64) -> Vec<&str> {
    log.range(from..to).map(|(_, msg)| msg.as_str()).collect()
}
"""),
        },
    ),
    E(
        "dedupe",
        {
            "query": "remove duplicates from a vector but keep the first occurrence order",
            "code_context": rs(r"""
use std::collections::HashSet;
use std::hash::Hash;
"""),
        },
        {
            "code_snippet": rs(r"""
pub fn dedup_stable<T: Eq + Hash + Clone>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::new();
    items.iter().filter(|x| seen.insert(*x)).cloned().collect()
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# test_generation  (test_cases: list of `#[test] fn` strings, or one string)
# ---------------------------------------------------------------------------
DATA["test_generation"] = [
    E(
        "rpn_calc",
        {
            "code_context": rs(r"""
#[derive(Debug, PartialEq, Eq)]
pub enum RpnError {
    StackUnderflow,
    DivisionByZero,
    BadToken(String),
    LeftoverOperands(usize),
}
"""),
            "code_to_test": rs(r"""
pub fn eval_rpn(expr: &str) -> Result<i64, RpnError> {
    let mut stack: Vec<i64> = Vec::new();
    for tok in expr.split_whitespace() {
        if let Ok(n) = tok.parse::<i64>() {
            stack.push(n);
            continue;
        }
        let b = stack.pop().ok_or(RpnError::StackUnderflow)?;
        let a = stack.pop().ok_or(RpnError::StackUnderflow)?;
        let v = match tok {
            "+" => a + b,
            "-" => a - b,
            "*" => a * b,
            "/" => {
                if b == 0 {
                    return Err(RpnError::DivisionByZero);
                }
                a / b
            }
            _ => return Err(RpnError::BadToken(tok.to_string())),
        };
        stack.push(v);
    }
    match stack.len() {
        1 => Ok(stack[0]),
        0 => Err(RpnError::StackUnderflow),
        n => Err(RpnError::LeftoverOperands(n)),
    }
}
"""),
            "test_context": "",
        },
        {
            "test_cases": [
                "#[test]\nfn evaluates_single_operation() {\n    assert_eq!(eval_rpn(\"2 3 +\"), Ok(5));\n}",
                "#[test]\nfn operand_order_matters() {\n    assert_eq!(eval_rpn(\"10 4 -\"), Ok(6));\n    assert_eq!(eval_rpn(\"20 5 /\"), Ok(4));\n}",
                "#[test]\nfn evaluates_nested_expression() {\n    assert_eq!(eval_rpn(\"3 4 + 2 *\"), Ok(14));\n}",
                "#[test]\nfn parses_negative_numbers() {\n    assert_eq!(eval_rpn(\"-3 2 *\"), Ok(-6));\n}",
                "#[test]\nfn division_by_zero_is_an_error() {\n    assert_eq!(eval_rpn(\"1 0 /\"), Err(RpnError::DivisionByZero));\n}",
                "#[test]\nfn missing_operands_underflow() {\n    assert_eq!(eval_rpn(\"1 +\"), Err(RpnError::StackUnderflow));\n    assert_eq!(eval_rpn(\"\"), Err(RpnError::StackUnderflow));\n}",
                "#[test]\nfn reports_unknown_operator() {\n    assert_eq!(eval_rpn(\"1 2 ^\"), Err(RpnError::BadToken(\"^\".to_string())));\n}",
                "#[test]\nfn leftover_operands_are_reported() {\n    assert_eq!(eval_rpn(\"1 2\"), Err(RpnError::LeftoverOperands(2)));\n}",
            ],
        },
    ),
    E(
        "fizzbuzz",
        {
            "code_context": "",
            "code_to_test": rs(r"""
pub fn fizzbuzz(n: u32) -> String {
    match (n % 3, n % 5) {
        (0, 0) => "FizzBuzz".to_string(),
        (0, _) => "Fizz".to_string(),
        (_, 0) => "Buzz".to_string(),
        _ => n.to_string(),
    }
}

pub fn fizzbuzz_line(upto: u32) -> String {
    (1..=upto).map(fizzbuzz).collect::<Vec<_>>().join(" ")
}
"""),
            "test_context": "",
        },
        {
            "test_cases": rs(r"""
#[test]
fn plain_numbers_are_echoed() {
    assert_eq!(fizzbuzz(1), "1");
    assert_eq!(fizzbuzz(7), "7");
}

#[test]
fn multiples_of_three_and_five() {
    assert_eq!(fizzbuzz(9), "Fizz");
    assert_eq!(fizzbuzz(10), "Buzz");
    assert_eq!(fizzbuzz(30), "FizzBuzz");
}

#[test]
fn line_up_to_fifteen() {
    assert_eq!(
        fizzbuzz_line(15),
        "1 2 Fizz 4 Buzz Fizz 7 8 Fizz Buzz 11 Fizz 13 14 FizzBuzz"
    );
    assert_eq!(fizzbuzz_line(0), "");
}
"""),
        },
    ),
    E(
        "windowmax",
        {
            "code_context": "use std::collections::VecDeque;",
            "code_to_test": rs(r"""
pub fn sliding_max(values: &[i32], k: usize) -> Vec<i32> {
    if k == 0 || k > values.len() {
        return Vec::new();
    }
    let mut window: VecDeque<usize> = VecDeque::new();
    let mut out = Vec::with_capacity(values.len() - k + 1);
    for i in 0..values.len() {
        while window.front().is_some_and(|&j| j + k <= i) {
            window.pop_front();
        }
        while window.back().is_some_and(|&j| values[j] <= values[i]) {
            window.pop_back();
        }
        window.push_back(i);
        if i + 1 >= k {
            out.push(values[window[0]]);
        }
    }
    out
}
"""),
            "test_context": rs(r"""
fn brute_force(values: &[i32], k: usize) -> Vec<i32> {
    values.windows(k).map(|w| *w.iter().max().unwrap()).collect()
}
"""),
        },
        {
            "test_cases": rs(r"""
#[test]
fn classic_example() {
    let v = [1, 3, -1, -3, 5, 3, 6, 7];
    assert_eq!(sliding_max(&v, 3), vec![3, 3, 5, 5, 6, 7]);
}

#[test]
fn window_of_one_is_identity_and_full_window_is_max() {
    let v = [4, -2, 9, 0];
    assert_eq!(sliding_max(&v, 1), v.to_vec());
    assert_eq!(sliding_max(&v, 4), vec![9]);
}

#[test]
fn degenerate_windows_are_empty() {
    assert!(sliding_max(&[1, 2, 3], 0).is_empty());
    assert!(sliding_max(&[1, 2, 3], 4).is_empty());
    assert!(sliding_max(&[], 1).is_empty());
}

#[test]
fn matches_brute_force_on_pseudo_random_input() {
    let mut state: u32 = 12345;
    let values: Vec<i32> = (0..200)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as i32 % 100 - 50
        })
        .collect();
    for k in 1..=10 {
        assert_eq!(sliding_max(&values, k), brute_force(&values, k), "k = {k}");
    }
}
"""),
        },
    ),
    E(
        "bank",
        {
            "code_context": rs(r"""
#[derive(Debug, PartialEq, Eq)]
pub enum AccountError {
    InsufficientFunds { balance: u64, requested: u64 },
    Frozen,
}

pub struct Account {
    balance: u64,
    frozen: bool,
}
"""),
            "code_to_test": rs(r"""
impl Account {
    pub fn open(initial: u64) -> Self {
        Account { balance: initial, frozen: false }
    }

    pub fn balance(&self) -> u64 {
        self.balance
    }

    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    pub fn deposit(&mut self, amount: u64) -> Result<u64, AccountError> {
        if self.frozen {
            return Err(AccountError::Frozen);
        }
        self.balance = self.balance.saturating_add(amount);
        Ok(self.balance)
    }

    pub fn withdraw(&mut self, amount: u64) -> Result<u64, AccountError> {
        if self.frozen {
            return Err(AccountError::Frozen);
        }
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds { balance: self.balance, requested: amount });
        }
        self.balance -= amount;
        Ok(self.balance)
    }
}
"""),
            "test_context": "",
        },
        {
            "test_cases": [
                "#[test]\nfn deposit_then_withdraw() {\n    let mut acct = Account::open(100);\n    assert_eq!(acct.deposit(50), Ok(150));\n    assert_eq!(acct.withdraw(30), Ok(120));\n    assert_eq!(acct.balance(), 120);\n}",
                "#[test]\nfn overdraw_is_rejected_and_balance_unchanged() {\n    let mut acct = Account::open(10);\n    assert_eq!(\n        acct.withdraw(11),\n        Err(AccountError::InsufficientFunds { balance: 10, requested: 11 })\n    );\n    assert_eq!(acct.balance(), 10);\n}",
                "#[test]\nfn withdrawing_everything_leaves_zero() {\n    let mut acct = Account::open(42);\n    assert_eq!(acct.withdraw(42), Ok(0));\n}",
                "#[test]\nfn frozen_account_rejects_all_operations() {\n    let mut acct = Account::open(100);\n    acct.freeze();\n    assert_eq!(acct.deposit(1), Err(AccountError::Frozen));\n    assert_eq!(acct.withdraw(1), Err(AccountError::Frozen));\n    assert_eq!(acct.balance(), 100);\n}",
                "#[test]\nfn deposit_saturates_instead_of_overflowing() {\n    let mut acct = Account::open(u64::MAX - 1);\n    assert_eq!(acct.deposit(10), Ok(u64::MAX));\n}",
            ],
        },
    ),
    E(
        "headline",
        {
            "code_context": "",
            "code_to_test": rs(r"""
pub fn title_case(s: &str) -> String {
    const SMALL: [&str; 7] = ["a", "an", "and", "of", "the", "in", "on"];
    s.split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let lower = word.to_lowercase();
            if i > 0 && SMALL.contains(&lower.as_str()) {
                lower
            } else {
                let mut chars = lower.chars();
                match chars.next() {
                    Some(c) => c.to_uppercase().chain(chars).collect(),
                    None => String::new(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
"""),
            "test_context": "",
        },
        {
            "test_cases": [
                "#[test]\nfn small_words_stay_lowercase_except_first() {\n    assert_eq!(title_case(\"the lord of the rings\"), \"The Lord of the Rings\");\n}",
                "#[test]\nfn normalizes_case_and_whitespace() {\n    assert_eq!(title_case(\"  war   AND peace \"), \"War and Peace\");\n}",
                "#[test]\nfn handles_non_ascii_initials() {\n    assert_eq!(title_case(\"élan vital\"), \"Élan Vital\");\n}",
                "#[test]\nfn empty_input() {\n    assert_eq!(title_case(\"\"), \"\");\n}",
            ],
        },
    ),
    E(
        "linalg2",
        {
            "code_context": rs(r"""
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mat2 {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub d: f64,
}
"""),
            "code_to_test": rs(r"""
impl Mat2 {
    pub const IDENTITY: Mat2 = Mat2 { a: 1.0, b: 0.0, c: 0.0, d: 1.0 };

    pub fn det(&self) -> f64 {
        self.a * self.d - self.b * self.c
    }

    pub fn inverse(&self) -> Option<Mat2> {
        let det = self.det();
        if det.abs() < f64::EPSILON {
            return None;
        }
        Some(Mat2 { a: self.d / det, b: -self.b / det, c: -self.c / det, d: self.a / det })
    }

    pub fn mul(&self, o: &Mat2) -> Mat2 {
        Mat2 {
            a: self.a * o.a + self.b * o.c,
            b: self.a * o.b + self.b * o.d,
            c: self.c * o.a + self.d * o.c,
            d: self.c * o.b + self.d * o.d,
        }
    }
}
"""),
            "test_context": rs(r"""
fn approx_eq(x: &Mat2, y: &Mat2) -> bool {
    [(x.a, y.a), (x.b, y.b), (x.c, y.c), (x.d, y.d)]
        .iter()
        .all(|(p, q)| (p - q).abs() < 1e-9)
}
"""),
        },
        {
            "test_cases": [
                "#[test]\nfn determinant_of_known_matrix() {\n    let m = Mat2 { a: 3.0, b: 8.0, c: 4.0, d: 6.0 };\n    assert_eq!(m.det(), -14.0);\n}",
                "#[test]\nfn singular_matrix_has_no_inverse() {\n    let m = Mat2 { a: 2.0, b: 4.0, c: 1.0, d: 2.0 };\n    assert_eq!(m.inverse(), None);\n}",
                "#[test]\nfn inverse_times_matrix_is_identity() {\n    let m = Mat2 { a: 4.0, b: 7.0, c: 2.0, d: 6.0 };\n    let inv = m.inverse().expect(\"invertible\");\n    assert!(approx_eq(&m.mul(&inv), &Mat2::IDENTITY));\n    assert!(approx_eq(&inv.mul(&m), &Mat2::IDENTITY));\n}",
                "#[test]\nfn identity_is_neutral_for_mul() {\n    let m = Mat2 { a: 1.5, b: -2.0, c: 0.25, d: 3.0 };\n    assert_eq!(m.mul(&Mat2::IDENTITY), m);\n    assert_eq!(Mat2::IDENTITY.mul(&m), m);\n}",
            ],
        },
    ),
    E(
        "jobqueue",
        {
            "code_context": rs(r"""
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub priority: u8,
    pub seq: u64,
}

impl Ord for Job {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| Reverse(self.seq).cmp(&Reverse(other.seq)))
    }
}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
"""),
            "code_to_test": rs(r"""
#[derive(Default)]
pub struct Scheduler {
    heap: BinaryHeap<Job>,
    next_seq: u64,
}

impl Scheduler {
    pub fn submit(&mut self, name: &str, priority: u8) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Job { name: name.to_string(), priority, seq });
        seq
    }

    pub fn next_job(&mut self) -> Option<Job> {
        self.heap.pop()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn drain_in_order(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_job()).map(|j| j.name).collect()
    }
}
"""),
            "test_context": "",
        },
        {
            "test_cases": rs(r"""
#[test]
fn empty_scheduler_yields_nothing() {
    let mut s = Scheduler::default();
    assert!(s.is_empty());
    assert_eq!(s.next_job(), None);
    assert!(s.drain_in_order().is_empty());
}

#[test]
fn higher_priority_runs_first() {
    let mut s = Scheduler::default();
    s.submit("low", 1);
    s.submit("high", 9);
    s.submit("mid", 5);
    assert_eq!(s.drain_in_order(), vec!["high", "mid", "low"]);
}

#[test]
fn equal_priority_is_fifo() {
    let mut s = Scheduler::default();
    for name in ["a", "b", "c", "d"] {
        s.submit(name, 3);
    }
    assert_eq!(s.drain_in_order(), vec!["a", "b", "c", "d"]);
}

#[test]
fn sequence_numbers_are_monotonic() {
    let mut s = Scheduler::default();
    let ids: Vec<u64> = (0..5).map(|p| s.submit("job", p)).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    assert_eq!(s.len(), 5);
}

#[test]
fn interleaved_submit_and_pop() {
    let mut s = Scheduler::default();
    s.submit("first", 2);
    s.submit("urgent", 8);
    assert_eq!(s.next_job().map(|j| j.name), Some("urgent".to_string()));
    s.submit("second", 2);
    s.submit("also-urgent", 8);
    assert_eq!(s.drain_in_order(), vec!["also-urgent", "first", "second"]);
    assert!(s.is_empty());
}

#[test]
fn job_ordering_matches_heap_semantics() {
    let older = Job { name: "older".into(), priority: 4, seq: 1 };
    let newer = Job { name: "newer".into(), priority: 4, seq: 2 };
    let urgent = Job { name: "urgent".into(), priority: 7, seq: 3 };
    assert!(older > newer, "same priority: the lower seq must compare greater");
    assert!(urgent > older);
    assert_eq!(older.cmp(&older.clone()), Ordering::Equal);
}

#[test]
fn many_jobs_come_out_sorted() {
    let mut s = Scheduler::default();
    for i in 0..50u8 {
        s.submit(&format!("job{i}"), i % 5);
    }
    let mut last: Option<(u8, u64)> = None;
    while let Some(job) = s.next_job() {
        if let Some((prio, seq)) = last {
            assert!(job.priority < prio || (job.priority == prio && job.seq > seq));
        }
        last = Some((job.priority, job.seq));
    }
}
"""),
        },
    ),
    # --- held-out (test split) ---
    E(
        "querystring",
        {
            "code_context": "use std::collections::HashMap;",
            "code_to_test": rs(r"""
pub fn parse_query(query: &str) -> HashMap<String, Vec<String>> {
    let mut params: HashMap<String, Vec<String>> = HashMap::new();
    let query = query.strip_prefix('?').unwrap_or(query);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.entry(decode(k)).or_default().push(decode(v));
    }
    params
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi * 16 + lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
"""),
            "test_context": "",
        },
        {
            "test_cases": [
                "#[test]\nfn parses_simple_pairs() {\n    let q = parse_query(\"a=1&b=2\");\n    assert_eq!(q[\"a\"], vec![\"1\"]);\n    assert_eq!(q[\"b\"], vec![\"2\"]);\n}",
                "#[test]\nfn repeated_keys_accumulate_in_order() {\n    let q = parse_query(\"?tag=x&tag=y\");\n    assert_eq!(q[\"tag\"], vec![\"x\", \"y\"]);\n}",
                "#[test]\nfn decodes_plus_and_percent_escapes() {\n    let q = parse_query(\"q=hello+world%21&check=%E2%9C%93\");\n    assert_eq!(q[\"q\"], vec![\"hello world!\"]);\n    assert_eq!(q[\"check\"], vec![\"\\u{2713}\"]);\n}",
                "#[test]\nfn flag_without_value_and_bad_escape() {\n    let q = parse_query(\"flag&pct=100%zz\");\n    assert_eq!(q[\"flag\"], vec![\"\"]);\n    assert_eq!(q[\"pct\"], vec![\"100%zz\"]);\n}",
                "#[test]\nfn empty_query_is_empty_map() {\n    assert!(parse_query(\"\").is_empty());\n    assert!(parse_query(\"?&&\").is_empty());\n}",
            ],
        },
    ),
    E(
        "progress",
        {
            "code_context": "",
            "code_to_test": rs(r"""
/// Percentage of `part` in `whole`, rounded half up and capped at 100.
pub fn percent(part: u64, whole: u64) -> u8 {
    if whole == 0 {
        return 0;
    }
    let p = (u128::from(part) * 100 + u128::from(whole) / 2) / u128::from(whole);
    p.min(100) as u8
}
"""),
            "test_context": "",
        },
        {
            "test_cases": rs(r"""
#[test]
fn rounds_half_up() {
    assert_eq!(percent(1, 3), 33);
    assert_eq!(percent(2, 3), 67);
    assert_eq!(percent(1, 200), 1);
}

#[test]
fn zero_whole_and_overflowing_inputs() {
    assert_eq!(percent(5, 0), 0);
    assert_eq!(percent(150, 100), 100);
    assert_eq!(percent(u64::MAX, u64::MAX), 100);
    assert_eq!(percent(u64::MAX / 2, u64::MAX), 50);
}
"""),
        },
    ),
]

# ---------------------------------------------------------------------------
# api_usage_prediction  (code is a statement fragment; predict the next call)
# ---------------------------------------------------------------------------
DATA["api_usage_prediction"] = [
    E(
        "wordrank",
        {
            "code": rs(r"""
let mut counts: HashMap<&str, usize> = HashMap::new();
for word in text.split_whitespace() {
    *counts.entry(word).or_insert(0) += 1;
}
let mut pairs: Vec<(&str, usize)> = counts.into_iter().collect();
"""),
            "code_context": "use std::collections::HashMap;",
        },
        {"next_api_call": "pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));"},
    ),
    E(
        "lineread",
        {
            "code": rs(r"""
let file = File::open(path)?;
let reader = BufReader::new(file);
"""),
            "code_context": rs(r"""
use std::fs::File;
use std::io::{BufRead, BufReader};
"""),
        },
        {"next_api_call": "let lines: Vec<String> = reader.lines().collect::<Result<_, _>>()?;"},
    ),
    E(
        "prompt",
        {
            "code": rs(r"""
let stdin = io::stdin();
let mut input = String::new();
"""),
            "code_context": "use std::io;",
        },
        {"next_api_call": "stdin.read_line(&mut input)?;"},
    ),
    E(
        "workers",
        {
            "code": rs(r"""
let handles: Vec<thread::JoinHandle<u64>> = (0..4u64)
    .map(|i| thread::spawn(move || (i * 1000..(i + 1) * 1000).sum()))
    .collect();
"""),
            "code_context": "use std::thread;",
        },
        {"next_api_call": "let total: u64 = handles.into_iter().map(|h| h.join().expect(\"worker panicked\")).sum();"},
    ),
    E(
        "pipeline",
        {
            "code": rs(r"""
let (tx, rx) = mpsc::channel::<String>();
let producer = thread::spawn(move || {
    for i in 0..3 {
        tx.send(format!("msg {i}")).unwrap();
    }
});
"""),
            "code_context": rs(r"""
use std::sync::mpsc;
use std::thread;
"""),
        },
        {"next_api_call": "let received: Vec<String> = rx.iter().collect();"},
    ),
    E(
        "scores",
        {
            "code": "let mut scores = vec![88, 92, 75, 92, 60];\nscores.sort_unstable_by(|a, b| b.cmp(a));",
            "code_context": "",
        },
        {"next_api_call": "scores.dedup();"},
    ),
    E(
        "bench_lite",
        {
            "code": "let start = Instant::now();\nlet result = expensive_computation(&input);",
            "code_context": "use std::time::Instant;",
        },
        {"next_api_call": "let elapsed = start.elapsed();"},
    ),
    # --- held-out (test split) ---
    E(
        "deadlines",
        {
            "code": rs(r"""
let mut heap = BinaryHeap::new();
for deadline in [30, 10, 20] {
    heap.push(Reverse(deadline));
}
"""),
            "code_context": rs(r"""
use std::cmp::Reverse;
use std::collections::BinaryHeap;
"""),
        },
        {"next_api_call": "let earliest = heap.pop().map(|Reverse(d)| d);"},
    ),
    E(
        "mimetype",
        {
            "code": "let path = Path::new(filename);",
            "code_context": "use std::path::Path;",
        },
        {"next_api_call": "let ext = path.extension().and_then(|e| e.to_str()).unwrap_or(\"\");"},
    ),
]


# ---------------------------------------------------------------------------
# assembly
# ---------------------------------------------------------------------------
def _validate(category: str, entry: dict) -> None:
    in_keys, out_keys = SCHEMA[category]
    optional = OPTIONAL_INPUT_KEYS.get(category, set())
    inp, out = entry["input"], entry["output"]
    missing = set(in_keys) - set(inp) - optional
    assert not missing and set(inp) <= set(in_keys), (category, entry["crate_name"], sorted(inp))
    assert set(out) == set(out_keys), (category, entry["crate_name"], sorted(out))
    for key, value in out.items():
        assert value, (category, entry["crate_name"], f"empty {key}")
    assert bool(entry["test"]) == (category == "code_generation"), (category, entry["crate_name"])


def _serialize(d: dict, python_literal: bool) -> str:
    return repr(d) if python_literal else json.dumps(d)


def build_rows() -> tuple[list[dict], list[dict]]:
    assert set(DATA) == set(SCHEMA), sorted(set(SCHEMA) ^ set(DATA))
    splits: dict[str, list[tuple[str, dict]]] = {"train": [], "test": []}
    for category in SCHEMA:
        entries = DATA[category]
        assert len(entries) == TRAIN_PER_CATEGORY + TEST_PER_CATEGORY, (category, len(entries))
        for i, entry in enumerate(entries):
            _validate(category, entry)
            splits["train" if i < TRAIN_PER_CATEGORY else "test"].append((category, entry))

    rng = random.Random(SEED)
    out: dict[str, list[dict]] = {}
    for split, items in splits.items():
        rng.shuffle(items)
        rows = []
        for idx, (category, entry) in enumerate(items):
            # ~30% of rows use the Python-literal form, like the real dataset.
            python_literal = idx % 10 in (1, 4, 7)
            rows.append(
                {
                    "crate_name": entry["crate_name"],
                    "input_data": _serialize(entry["input"], python_literal),
                    "output_data": _serialize(entry["output"], python_literal),
                    "task_category": category,
                    "test": entry["test"],
                }
            )
        out[split] = rows
    return out["train"], out["test"]


def main() -> None:
    train, test = build_rows()
    for name, rows in (("strandset_train.jsonl", train), ("strandset_test.jsonl", test)):
        path = HERE / name
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        literal = sum(r["input_data"].startswith("{'") for r in rows)
        print(f"wrote {path.name}: {len(rows)} rows ({literal} as Python literals)")


if __name__ == "__main__":
    main()
