"""rustcoder: LoRA SFT of Qwen models on Strandset-Rust-v1, evaluated by compiling Rust."""

__version__ = "0.1.0"
