"""Data: the Strandset-Rust-v1 categories, row parsing, sampling and splitting, and tokenization."""
