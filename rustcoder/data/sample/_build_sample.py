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
