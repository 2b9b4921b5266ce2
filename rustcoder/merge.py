"""Fold a run's LoRA adapter into its base model, and prove the result is the same model.

``merge`` turns a run directory (or an adapter directory) into a standalone model directory that
transformers and vLLM load like any Qwen checkpoint: sharded safetensors in the base model's dtype,
config, generation config whose eos includes ``<|im_end|>``, tokenizer, chat template (in
``chat_template.jinja`` and ``tokenizer_config.json``), a model card and ``merge_report.json``.

Two ways to merge, with equal results tensor for tensor:

* in memory (default): the base is loaded in float32, PEFT merges the adapter, the model is cast to
  the base dtype and saved;
* streaming (``streaming=True``): base safetensors shards are read one tensor at a time and each
  target weight becomes ``W + scale * B @ A`` (float32, cast back), so peak memory is about the
  largest tensor, not the whole model.

``verify_merge`` checks the merged directory against base + adapter (logits within a stated
tolerance, identical greedy generations, finite tensors, tied embeddings consistent with the config,
the same chat template rendering, eos). In memory it runs both models whole ("full"); after a
streaming merge it runs them one decoder layer at a time from the safetensors files and checks every
merged tensor against ``W + scale * B @ A`` ("layerwise"), so verification too needs about one layer
plus the embeddings, not the model. Everything is written into a temporary sibling directory and
renamed into place at the end, so a killed merge never leaves a half-written model at the target.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import artifacts
from .artifacts import ADAPTER_DIR, MANIFEST, atomic_write_json, atomic_write_text, read_json
from .errors import RustcoderError, UsageError

MERGED_DIR = "merged"
REPORT = "merge_report.json"
MERGE_FORMAT = 1  # bump when the merge arithmetic or output layout changes (invalidates no-op detection)
MAX_SHARD_SIZE = "5GB"  # in-memory merges; streaming keeps the base's own shard layout
END_OF_TURN = "<|im_end|>"  # same as modeling.END_OF_TURN; not imported so this module stays light

# The merged weights are saved in one of these dtypes ("auto": the base's).
MERGE_DTYPES = ("bfloat16", "float16", "float32")
# Refuse a merge whose saved dtype loses more than this share of the adapter's effect on the probe
# logits (relative L2 over every probe position and vocabulary entry); --max-effect-lost overrides.
DEFAULT_MAX_EFFECT_LOST = 0.10
# Two float32 forwards of the same weights differ only by float32 rounding, which grows with depth and
# width: the merged model's logits must equal the correctly rounded merge's within
# FORWARD_NOISE * sqrt(layers * hidden) * eps(float32) * max |logit| (+ one eps for logits near zero).
FORWARD_NOISE = 8
GREEDY_TOKENS = 16

# Short prompts from four Rust task categories, rendered with the run's chat template.
PROBES: tuple[tuple[str, dict], ...] = (
    ("code_generation", {"title": "Sum of squares",
                         "description": "Return the sum of the squares of a slice of integers.",
                         "function_signature": "fn sum_of_squares(xs: &[i64]) -> i64"}),
    ("bug_detection", {"buggy_code": "fn last(v: &Vec<i32>) -> i32 { v[v.len()] }"}),
    ("code_explanation", {"code": "fn gcd(a: u64, b: u64) -> u64 { if b == 0 { a } else { gcd(b, a % b) } }"}),
    ("function_naming", {"code": "fn __placeholder__(s: &str) -> bool { s.chars().eq(s.chars().rev()) }"}),
)

_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja", "tokenizer.model")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
_PEFT_PREFIX = "base_model.model."


# ---- results ------------------------------------------------------------------------------------

@dataclass
class MergeResult:
    """Where the merged model is, its merge report, and whether this call did anything."""

    merged_dir: Path
    report: dict[str, Any]
    already_merged: bool = False
    pushed_to: str | None = None

    @property
    def verified(self) -> bool | None:
        """True/False when verification ran, None when it was skipped."""
        v = self.report.get("verification") or {}
        return None if v.get("skipped") else bool(v.get("passed"))


@dataclass
class _Source:
    """A resolved merge input: the adapter, the base and what the run recorded about them."""

    adapter_dir: Path
    run_dir: Path | None
    manifest: dict
    adapter_config: dict
    base_name: str        # as the user or the run names it (hub id, tiny name or directory)
    base_dir: Path        # a local directory holding the base's files
    base_revision: str | None
    trained_base: str     # what the adapter was trained on (for messages)
    base_overridden: bool


# ---- safetensors, one tensor at a time ----------------------------------------------------------

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32",
              "U64": "uint64"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _st_code(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    for code, n in _ST_DTYPES.items():
        if n == name:
            return code
    raise RustcoderError(f"cannot write tensors of dtype {name} to safetensors")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, dict], int, dict]:
    """(tensor entries, byte offset where data starts, __metadata__) of a safetensors file."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise RustcoderError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(fh.read(n))
    meta = header.pop("__metadata__", None) or {}
    return header, 8 + n, meta


def _read_into(fh, offset: int, buf) -> None:
    """Fill buf with the file's bytes at offset (plain reads: no mmap, the pages do not stay in our RSS)."""
    view = memoryview(buf)
    fh.seek(offset)
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise RustcoderError(f"{fh.name} is truncated (tensor data ends early); re-download the model")
        got += n


def _read_tensor(fh, info: dict, data_start: int, alloc: Callable[[int], Any] = bytearray):
    """One tensor read with plain file reads into a buffer from alloc(nbytes)."""
    import torch

    start, end = info["data_offsets"]
    dtype = _torch_dtype(_ST_DTYPES[info["dtype"]])
    if end == start:
        return torch.empty(info["shape"], dtype=dtype)
    buf = alloc(end - start)
    _read_into(fh, data_start + start, buf)
    return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"])


class _SafetensorsWriter:
    """Writes a safetensors file whose header is known up front, then tensors one by one."""

    def __init__(self, path: Path, entries: list[tuple[str, str, list[int]]], metadata: dict[str, str]):
        import torch

        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        self.expected = []
        for name, code, shape in entries:
            nbytes = math.prod(shape) * torch.empty((), dtype=_torch_dtype(_ST_DTYPES[code])).element_size()
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.expected.append((name, code, list(shape), nbytes))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.total = offset
        self.fh = open(path, "wb")
        self.fh.write(struct.pack("<Q", len(blob)))
        self.fh.write(blob)
        self.index = 0

    def write(self, name: str, tensor) -> None:
        import torch

        want, code, shape, nbytes = self.expected[self.index]
        if name != want or _st_code(tensor.dtype) != code or list(tensor.shape) != shape:
            raise RustcoderError(f"internal error: wrote {name} {tensor.dtype} {list(tensor.shape)}, "
                                 f"header says {want} {code} {shape}")
        if nbytes:
            self.fh.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self.index += 1

    def copy(self, name: str, src, offset: int, chunk: int = 1 << 24) -> None:
        """Copy the next tensor's bytes unchanged from an open file, a chunk at a time."""
        want, _, _, nbytes = self.expected[self.index]
        if name != want:
            raise RustcoderError(f"internal error: copied {name}, header says {want}")
        buf = bytearray(min(chunk, nbytes))
        src.seek(offset)
        left = nbytes
        while left:
            view = memoryview(buf)[:min(len(buf), left)]
            n = src.readinto(view)
            if not n:
                raise RustcoderError(f"{src.name} is truncated (tensor data ends early); re-download the base model")
            self.fh.write(view[:n])
            left -= n
        self.index += 1

    def close(self) -> None:
        if self.index != len(self.expected):
            raise RustcoderError("internal error: safetensors file closed before all tensors were written")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a model directory (from its index when sharded), in index order."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(read_json(index)["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []


def tensor_shapes(model_dir: str | Path) -> dict[str, tuple[list[int], str]]:
    """{tensor name: (shape, safetensors dtype)} of a model directory, read from headers only."""
    out = {}
    for f in weight_files(model_dir):
        header, _, _ = read_safetensors_header(f)
        out.update({k: (v["shape"], v["dtype"]) for k, v in header.items()})
    return out


def iter_tensors(model_dir: str | Path):
    """Yield (name, tensor) for every tensor in a model directory, one at a time."""
    for f in weight_files(model_dir):
        header, start, _ = read_safetensors_header(f)
        with open(f, "rb") as fh:
            for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                yield name, _read_tensor(fh, info, start)


class _Buffer(bytearray):
    """A bytearray that can be watched (weakref) so _Meter knows when its tensor is gone."""


_LAYER_OF = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class _Meter:
    """Counts the bytes of weight data a verification holds: every tensor read from a file (or upcast
    from one) lives in a buffer from here and is counted until the last tensor using it is freed."""

    def __init__(self):
        self.live: dict[int, tuple[str, int]] = {}
        self.bytes = 0
        self.peak = 0
        self.max_layers = 0  # most decoder layers with tensors alive at the same time
        self._next = 0

    def alloc(self, name: str) -> Callable[[int], _Buffer]:
        def make(nbytes: int) -> _Buffer:
            buf = _Buffer(nbytes)
            key = self._next
            self._next += 1
            self.live[key] = (name, nbytes)
            self.bytes += nbytes
            self.peak = max(self.peak, self.bytes)
            layers = {m.group(1) for n, _ in self.live.values() if (m := _LAYER_OF.search(n))}
            self.max_layers = max(self.max_layers, len(layers))
            weakref.finalize(buf, self._free, key)
            return buf
        return make

    def _free(self, key: int) -> None:
        _, n = self.live.pop(key)
        self.bytes -= n

    def empty(self, name: str, shape, dtype):
        """A counted, uninitialised tensor."""
        import torch

        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not nbytes:
            return torch.empty(list(shape), dtype=dtype)
        return torch.frombuffer(self.alloc(name)(nbytes), dtype=dtype).reshape(list(shape))


class _Reader:
    """The tensors of a model directory by name, each read on demand (whole, or in blocks of rows)."""

    def __init__(self, model_dir: str | Path, meter: _Meter | None = None):
        self.meter = meter or _Meter()
        self.entries: dict[str, tuple[Path, dict, int]] = {}
        for f in weight_files(model_dir):
            header, start, _ = read_safetensors_header(f)
            for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                self.entries[name] = (f, info, start)
        self._open: dict[Path, Any] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> list[int]:
        return list(self.entries[name][1]["shape"])

    def dtype(self, name: str):
        return _torch_dtype(_ST_DTYPES[self.entries[name][1]["dtype"]])

    def _fh(self, path: Path):
        if path not in self._open:
            self._open[path] = open(path, "rb")
        return self._open[path]

    def read(self, name: str, dtype=None):
        """The whole tensor, in its stored dtype or converted to dtype (counted by the meter). A conversion
        reads blocks of rows into the converted tensor, so the stored copy is never held whole as well."""
        path, info, start = self.entries[name]
        if dtype is None or self.dtype(name) == dtype:
            return _read_tensor(self._fh(path), info, start, self.meter.alloc(name))
        out = self.meter.empty(name, self.shape(name), dtype)
        if out.dim() < 2:
            out.copy_(_read_tensor(self._fh(path), info, start, self.meter.alloc(name)))
            return out
        for r0, r1, block in self.rows(name, _rows_per_block(self.shape(name))):
            out[r0:r1] = block
            del block
        return out

    def rows(self, name: str, step: int):
        """Yield (row0, row1, tensor) for blocks of step rows (the whole tensor when it has < 2 dims)."""
        import torch

        path, info, start = self.entries[name]
        shape = list(info["shape"])
        if len(shape) < 2 or shape[0] == 0:
            yield 0, (shape[0] if shape else 1), self.read(name)
            return
        dtype = self.dtype(name)
        row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        for r0 in range(0, shape[0], step):
            r1 = min(shape[0], r0 + step)
            if not row_bytes:
                yield r0, r1, torch.empty([r1 - r0, *shape[1:]], dtype=dtype)
                continue
            buf = self.meter.alloc(name)((r1 - r0) * row_bytes)
            _read_into(self._fh(path), start + info["data_offsets"][0] + r0 * row_bytes, buf)
            yield r0, r1, torch.frombuffer(buf, dtype=dtype).reshape([r1 - r0, *shape[1:]])


# ---- resolving the inputs -----------------------------------------------------------------------

def _adapter_dir_of(run_dir: Path) -> tuple[Path, Path | None]:
    """(adapter_dir, run_dir or None) for a run directory or an adapter directory."""
    if (run_dir / "adapter_config.json").is_file():
        parent = run_dir.parent
        return run_dir, parent if (parent / MANIFEST).is_file() and run_dir.name == ADAPTER_DIR else None
    return run_dir / ADAPTER_DIR, run_dir


def _missing_adapter_files(adapter_dir: Path) -> list[str]:
    missing = []
    if not (adapter_dir / "adapter_config.json").is_file():
        missing.append(str(adapter_dir / "adapter_config.json"))
    if not any((adapter_dir / n).is_file() for n in _ADAPTER_WEIGHTS):
        missing.append(str(adapter_dir / _ADAPTER_WEIGHTS[0]))
    if not (adapter_dir / "tokenizer_config.json").is_file():
        missing.append(str(adapter_dir / "tokenizer_config.json"))
    if not ((adapter_dir / "tokenizer.json").is_file()
            or ((adapter_dir / "vocab.json").is_file() and (adapter_dir / "merges.txt").is_file())):
        missing.append(str(adapter_dir / "tokenizer.json"))
    if not (adapter_dir / "chat_template.jinja").is_file():
        missing.append(str(adapter_dir / "chat_template.jinja"))
    return missing


def _missing_base_files(base_dir: Path, streaming: bool) -> list[str]:
    missing = []
    if not (base_dir / "config.json").is_file():
        missing.append(str(base_dir / "config.json"))
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        for name in sorted(set(read_json(index)["weight_map"].values())):
            if not (base_dir / name).is_file():
                missing.append(str(base_dir / name))
    elif not (base_dir / "model.safetensors").is_file():
        has_bin = (base_dir / "pytorch_model.bin").is_file() or (base_dir / "pytorch_model.bin.index.json").is_file()
        if streaming or not has_bin:
            missing.append(str(base_dir / "model.safetensors") + (" (streaming reads safetensors only)"
                                                                  if has_bin else ""))
    return missing


def _local_base_dir(name: str, revision: str | None) -> Path:
    """A local directory with the base's files: the directory itself, a tiny model, or a hub snapshot."""
    from .modeling import resolve_model

    path = resolve_model(name)
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RustcoderError(f"could not get the base model {name!r}: {first}\nPass a local model directory with "
                             "--base, or check the hub id, your network and `huggingface-cli login`.") from None


def _resolve_source(run_dir: str | Path, base: str | None, streaming: bool) -> _Source:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist. List runs with `rustcoder runs`.")
    adapter_dir, real_run = _adapter_dir_of(run_dir)
    manifest = read_json(real_run / MANIFEST) if real_run and (real_run / MANIFEST).is_file() else {}
    missing = _missing_adapter_files(adapter_dir)
    if missing:
        status = manifest.get("status")
        hint = (f" The run's status is {status!r}: it has no adapter until training finishes."
                if status and status != "finished" else "")
        raise RustcoderError(f"cannot merge {run_dir}: missing {len(missing)} file(s):\n"
                             + "\n".join(f"  - {m}" for m in missing) + f"\n{hint.strip() or 'Train the run again, or pass a complete run directory.'}")
    adapter_config = read_json(adapter_dir / "adapter_config.json")
    recorded_path = manifest.get("base_model_path")
    trained_base = manifest.get("base_model") or adapter_config.get("base_model_name_or_path") or "?"
    if base:
        name, revision, overridden = base, None, True
    elif recorded_path and Path(recorded_path).is_dir():
        name, revision, overridden = recorded_path, None, False
    elif manifest.get("base_model"):
        name, revision, overridden = manifest["base_model"], manifest.get("base_model_revision"), False
    elif adapter_config.get("base_model_name_or_path"):
        name, revision, overridden = adapter_config["base_model_name_or_path"], adapter_config.get("revision"), False
    else:
        raise UsageError(f"{adapter_dir} does not say which base model it was trained on; pass --base ID_OR_DIR.")
    display = base or manifest.get("base_model") or name
    base_dir = _local_base_dir(name, revision)
    missing = _missing_base_files(base_dir, streaming)
    if missing:
        raise RustcoderError(f"the base model {display!r} ({base_dir}) is incomplete: missing {len(missing)} file(s):\n"
                             + "\n".join(f"  - {m}" for m in missing)
                             + "\nPass a complete model directory with --base.")
    return _Source(adapter_dir=adapter_dir, run_dir=real_run, manifest=manifest, adapter_config=adapter_config,
                   base_name=display, base_dir=base_dir, base_revision=revision, trained_base=trained_base,
                   base_overridden=overridden)


# ---- identity and no-op detection ---------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """sha256 of the adapter weights and the adapter-config fields that change the merged weights."""
    adapter_dir = Path(adapter_dir)
    weights = next(adapter_dir / n for n in _ADAPTER_WEIGHTS if (adapter_dir / n).is_file())
    cfg = read_json(adapter_dir / "adapter_config.json")
    relevant = {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern",
                                        "alpha_pattern", "modules_to_save", "fan_in_fan_out", "lora_bias",
                                        "layer_replication", "trainable_token_indices", "target_parameters")}
    h = hashlib.sha256(_sha256_file(weights).encode())
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    return h.hexdigest()


def base_identity(base_dir: str | Path) -> dict[str, Any]:
    """What identifies a base checkpoint cheaply: its config and its weight files' sizes and headers."""
    base_dir = Path(base_dir)
    files = {}
    for f in weight_files(base_dir) or sorted(base_dir.glob("pytorch_model*.bin")):
        entry = {"bytes": f.stat().st_size}
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                entry["header_sha256"] = hashlib.sha256(fh.read(n)).hexdigest()
        files[f.name] = entry
    ident = {"config_sha256": _sha256_file(base_dir / "config.json"), "files": files}
    ident["sha256"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return ident


def _merge_key(adapter_sha: str, base_sha: str, dtype: str) -> str:
    return hashlib.sha256(f"{MERGE_FORMAT}:{adapter_sha}:{base_sha}:{dtype}".encode()).hexdigest()


# ---- the base's config --------------------------------------------------------------------------

def _text_config(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def check_not_quantized(config: dict, base_name: str, trained_base: str | None = None) -> None:
    """Refuse a 4-bit/8-bit (or otherwise quantized) base: merging into it would round the adapter away."""
    q = config.get("quantization_config") or _text_config(config).get("quantization_config")
    if not q:
        return
    method = q.get("quant_method", "unknown method")
    bits = ("4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit")
            else f"{q['bits']}-bit" if q.get("bits") else "quantized")
    hint = f" (the adapter was trained on {trained_base!r})" if trained_base and trained_base != base_name else ""
    raise RustcoderError(
        f"the base model {base_name!r} is quantized ({method}, {bits}): merging an adapter into quantized weights "
        f"rounds the adapter's update away and the result is not the model you trained. Pass the full-precision "
        f"base with --base ID_OR_DIR{hint}; quantize the merged model afterwards if you need to.")


def save_dtype_of(config: dict, base_dir: Path) -> str:
    """The dtype the merged model is saved in: the base config's dtype, else its stored weights' dtype."""
    tc = _text_config(config)
    for d in (config.get("dtype"), config.get("torch_dtype"), tc.get("dtype"), tc.get("torch_dtype")):
        if isinstance(d, str) and d in MERGE_DTYPES:
            return d
    for _, (shape, code) in tensor_shapes(base_dir).items():
        if _ST_DTYPES.get(code) in MERGE_DTYPES:
            return _ST_DTYPES[code]
    return "float32"


def _tied_keys(config: dict) -> tuple[str, str]:
    """(output embedding key, input embedding key) of the architecture."""
    import transformers

    for arch in config.get("architectures") or []:
        cls = getattr(transformers, arch, None)
        keys = getattr(cls, "_tied_weights_keys", None)
        if isinstance(keys, dict) and keys:
            target, source = next(iter(keys.items()))
            return target, source
        if isinstance(keys, (list, tuple)) and keys:
            return keys[0], "model.embed_tokens.weight"
    return "lm_head.weight", "model.embed_tokens.weight"


def _tie_word_embeddings(base_dir: Path) -> bool:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base_dir)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return bool(getattr(text, "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False)))


# ---- the adapter as arithmetic ------------------------------------------------------------------

@dataclass
class _Update:
    """How one base weight changes: PEFT's own formulas, in PEFT's order of operations."""

    kind: str  # "linear" | "embedding"
    A: Any
    B: Any
    scale: float
    magnitude: Any = None  # DoRA

    def apply(self, w32):
        A, B = self.A.float(), self.B.float()
        if self.kind == "embedding":
            delta = (B @ A).T * self.scale
        else:
            delta = (B @ A) * self.scale
        if self.magnitude is None:
            return w32 + delta
        import torch

        norm = torch.linalg.norm(w32 + 1 * delta, dim=1).to(w32.dtype)
        factor = self.magnitude.float() / norm
        return factor.view(-1, 1) * (w32 + delta)

    def rows(self, r0: int, r1: int) -> "_Update":
        """The update of rows r0:r1 of the weight (every formula above is row by row)."""
        if self.kind == "embedding":  # delta = (B @ A).T: its rows are A's columns
            return _Update(self.kind, self.A[:, r0:r1], self.B, self.scale, self.magnitude)
        mag = None if self.magnitude is None else self.magnitude[r0:r1]
        return _Update(self.kind, self.A, self.B[r0:r1], self.scale, mag)


@dataclass
class MergePlan:
    """What the adapter does to each base tensor, and what a streaming merge cannot do."""

    updates: dict[str, _Update] = field(default_factory=dict)        # base key -> low-rank update
    replacements: dict[str, Any] = field(default_factory=dict)       # base key -> full tensor
    unsupported: list[str] = field(default_factory=list)             # reasons streaming must refuse
    adapter_keys: int = 0

    @property
    def touched(self) -> set[str]:
        return set(self.updates) | set(self.replacements)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup (peft.utils.other.get_pattern_key)."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def load_adapter_tensors(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's saved tensors (adapters are small: loaded whole)."""
    adapter_dir = Path(adapter_dir)
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    import torch

    return torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)


def plan_merge(adapter_tensors: dict[str, Any], adapter_config: dict) -> MergePlan:
    """Turn PEFT's saved tensors into per-base-tensor updates (PEFT key naming -> checkpoint names)."""
    plan = MergePlan(adapter_keys=len(adapter_tensors))
    cfg = adapter_config
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RustcoderError(f"rustcoder merges LoRA adapters; this adapter is {cfg.get('peft_type')}.")
    for flag, why in (("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)"), ("lora_bias", "lora_bias"),
                      ("layer_replication", "layer_replication"), ("trainable_token_indices", "trainable tokens"),
                      ("target_parameters", "target_parameters (LoRA on parameters)"),
                      ("use_qalora", "QA-LoRA"), ("use_bdlora", "BD-LoRA")):
        if cfg.get(flag):
            plan.unsupported.append(why)
    parts: dict[str, dict[str, Any]] = {}
    for key, t in adapter_tensors.items():
        k = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        m = re.match(r"(.+)\.(lora_A|lora_B)\.weight$", k) or re.match(r"(.+)\.(lora_embedding_A|lora_embedding_B)$", k) \
            or re.match(r"(.+)\.(lora_magnitude_vector)(?:\.weight)?$", k)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = t
            continue
        if ".lora_" in k or "token_adapter" in k or "trainable_tokens" in k:
            plan.unsupported.append(f"adapter tensor {key}")
            continue
        m = re.match(r"(.+)\.base_layer\.(weight|bias)$", k)
        if m:  # PEFT saves the base embedding next to an embedding adapter (save_embedding_layers)
            plan.replacements[f"{m.group(1)}.{m.group(2)}"] = t
            continue
        plan.replacements[k.replace(".modules_to_save", "")] = t  # modules_to_save: a full trained copy
    for module, p in sorted(parts.items()):
        r_cfg = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        if "lora_A" in p and "lora_B" in p:
            kind, A, B = "linear", p["lora_A"], p["lora_B"]
        elif "lora_embedding_A" in p and "lora_embedding_B" in p:
            kind, A, B = "embedding", p["lora_embedding_A"], p["lora_embedding_B"]
        else:
            plan.unsupported.append(f"{module} has an incomplete LoRA pair ({', '.join(sorted(p))})")
            continue
        r = int(A.shape[0])
        if r != r_cfg:
            plan.unsupported.append(f"{module} has rank {r} but the adapter config says {r_cfg}")
        scale = alpha / math.sqrt(r_cfg) if cfg.get("use_rslora") else alpha / r_cfg
        magnitude = p.get("lora_magnitude_vector")
        if cfg.get("use_dora") and magnitude is None:
            plan.unsupported.append(f"{module} is a DoRA layer without a magnitude vector")
        if magnitude is not None and kind == "embedding":
            plan.unsupported.append(f"{module}: DoRA on an embedding")
        plan.updates[f"{module}.weight"] = _Update(kind, A, B, scale, magnitude)
    return plan


def check_fit(plan: MergePlan, base_shapes: dict[str, tuple[list[int], str]], base_name: str,
              trained_base: str, base_config: dict | None = None, trained_config: dict | None = None) -> None:
    """Refuse a base whose architecture or shapes do not fit the adapter, naming each mismatch."""
    problems = []
    if base_config is not None and trained_config is not None:
        bc, tc = _text_config(base_config), _text_config(trained_config)
        for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size"):
            if k in tc and bc.get(k) != tc.get(k):
                problems.append(f"config {k}: the adapter's base has {tc[k]!r}, {base_name!r} has {bc.get(k)!r}")
    for key, u in sorted(plan.updates.items()):
        module = key.removesuffix(".weight")
        if u.kind == "embedding":
            want = [int(u.A.shape[1]), int(u.B.shape[0])]
            what = "embedding (vocab x hidden)"
        else:
            want = [int(u.B.shape[0]), int(u.A.shape[1])]
            what = "weight (out x in)"
        if key not in base_shapes:
            problems.append(f"{module}: the adapter targets it, but {base_name!r} has no tensor {key}")
            continue
        have = list(base_shapes[key][0])
        if have != want:
            problems.append(f"{module}: adapter expects {what} {'x'.join(map(str, want))}, "
                            f"{base_name!r} has {'x'.join(map(str, have))}")
        if u.magnitude is not None and list(u.magnitude.shape) != [have[0]]:
            problems.append(f"{module}: DoRA magnitude has {list(u.magnitude.shape)}, weight has {have[0]} rows")
    for key, t in sorted(plan.replacements.items()):
        if key in base_shapes and list(base_shapes[key][0]) != list(t.shape):
            problems.append(f"{key}: the adapter saves {'x'.join(map(str, t.shape))}, {base_name!r} has "
                            f"{'x'.join(map(str, base_shapes[key][0]))}")
    if problems:
        shown = problems[:12]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise RustcoderError(
            f"the base model {base_name!r} does not fit this adapter ({len(problems)} mismatch"
            f"{'es' if len(problems) != 1 else ''}):\n" + "\n".join(f"  - {p}" for p in shown) + more
            + f"\nThe adapter was trained on {trained_base!r}; pass that model (or one with the same "
              "architecture and shapes) with --base.")


# ---- output files -------------------------------------------------------------------------------

def _edited_config(base_dir: Path, dtype: str, untie: bool) -> dict:
    cfg = read_json(base_dir / "config.json")
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["dtype"]
    for k in keys:
        cfg[k] = dtype
    if untie:
        cfg["tie_word_embeddings"] = False
        if "text_config" in cfg and isinstance(cfg["text_config"], dict):
            cfg["text_config"]["tie_word_embeddings"] = False
    return cfg


def _token_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id else None


def _generation_config(base_dir: Path, config: dict, tokenizer) -> dict:
    path = base_dir / "generation_config.json"
    gen = read_json(path) if path.is_file() else {}
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    im_end = _token_id(tokenizer, END_OF_TURN)
    if im_end is None:
        raise RustcoderError(f"the run's tokenizer has no {END_OF_TURN} token: the merged model could not stop "
                             "at the end of its turn.")
    if im_end not in eos:
        eos.insert(0, im_end)
    gen["eos_token_id"] = eos
    if tokenizer.pad_token_id is not None:
        gen["pad_token_id"] = tokenizer.pad_token_id
    gen.setdefault("bos_token_id", config.get("bos_token_id"))
    return gen


def _copy_tokenizer(adapter_dir: Path, out: Path) -> str:
    """Copy the run's tokenizer files and put the chat template in tokenizer_config.json too."""
    for name in _TOKENIZER_FILES:
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, out / name)
    template = (adapter_dir / "chat_template.jinja").read_text(encoding="utf-8")
    tok_cfg = read_json(out / "tokenizer_config.json")
    tok_cfg["chat_template"] = template
    tok_cfg["eos_token"] = END_OF_TURN
    for local_only in ("is_local", "local_files_only"):  # describe where the run loaded from, not the model
        tok_cfg.pop(local_only, None)
    atomic_write_json(out / "tokenizer_config.json", tok_cfg)
    return template


def _model_card(src: _Source, report: dict) -> str:
    m = src.manifest
    run_name = m.get("run_name") or (src.run_dir.name if src.run_dir else src.adapter_dir.name)
    ds = m.get("dataset") or {}
    dataset = ds.get("source")
    hub_dataset = dataset if dataset and "/" in dataset and not Path(dataset).exists() else None
    metrics = {k: v for k, v in (m.get("metrics") or {}).items() if k.startswith(("eval_", "train_loss"))}
    if isinstance(m.get("eval"), dict):
        metrics.update({f"eval/{k}": v for k, v in m["eval"].items() if isinstance(v, (int, float))})
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    ver = report.get("verification") or {}
    if ver.get("skipped"):
        verified = "not verified (merged with --no-verify)"
    else:
        verified = (f"verified ({ver.get('mode', 'full')}): every merged tensor is the float32 merge rounded once "
                    f"to {report['dtype']}" + _summary(ver).replace("; ", " (", 1) + f") on {len(PROBES)} Rust probe "
                    "prompts; see `merge_report.json`")
    front = ["---", f"base_model: {src.base_name if not Path(src.base_name).exists() else src.trained_base}",
             "library_name: transformers", "pipeline_tag: text-generation"]
    if hub_dataset:
        front += ["datasets:", f"- {hub_dataset}"]
    front += ["tags:", "- rust", "- code", "- rustcoder", "- merged-lora", "---"]
    lines = front + [
        f"# {run_name} (merged)", "",
        f"`{src.base_name}` with the rustcoder LoRA adapter `{run_name}` folded into its weights: a standalone "
        f"model, no PEFT needed. Saved in {report['dtype']}.", "",
        f"- Base model: `{src.base_name}`" + (f" (adapter trained on `{src.trained_base}`)" if src.base_overridden else ""),
        f"- Adapter: `{run_name}` (LoRA r {report['lora']['r']}, alpha {report['lora']['alpha']}"
        + (", rsLoRA" if report["lora"]["rslora"] else "") + (", DoRA" if report["lora"]["dora"] else "") + ")",
    ]
    if dataset:
        lines.append(f"- Dataset: `{dataset}`" + (f" (fingerprint {ds.get('fingerprint')}, {ds.get('train_rows')} train / "
                                                  f"{ds.get('eval_rows')} eval rows)" if ds.get("fingerprint") else ""))
    if m.get("preset"):
        lines.append(f"- Preset: `{m['preset']}`")
    lines += [f"- Chat template: ChatML (`chat_template.jinja`); answers end with `{END_OF_TURN}`, which "
              "`generation_config.json` lists as an eos token.", f"- Merge: {verified}.", ""]
    if rows:
        lines += ["| metric | value |", "| --- | --- |", rows, ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)",
              "```", "", "or `vllm serve PATH`, or `rustcoder serve`.", ""]
    return "\n".join(lines)


# ---- merging ------------------------------------------------------------------------------------

def _untie_needed(tie: bool, plan: MergePlan, tied: tuple[str, str]) -> bool:
    return tie and bool(plan.touched & set(tied))


def _merge_streaming(src: _Source, plan: MergePlan, out: Path, dtype: str, untie: bool, tied: tuple[str, str],
                     log: Callable) -> None:
    """Shard by shard, tensor by tensor: W' = W + scale * B @ A in float32, cast to dtype."""
    if plan.unsupported:
        raise RustcoderError("--streaming cannot merge this adapter: " + "; ".join(plan.unsupported)
                             + ". Merge it without --streaming (in memory, with PEFT).")
    target_dtype = _torch_dtype(dtype)
    lm_key, embed_key = tied
    files = weight_files(src.base_dir)
    all_keys = set(tensor_shapes(src.base_dir))
    missing_new = [k for k in plan.replacements if k not in all_keys and not (untie and k == lm_key)]
    if missing_new:
        raise RustcoderError("--streaming cannot add tensors the base does not have: " + ", ".join(missing_new)
                             + ". Merge it without --streaming.")
    add_lm_head = untie and lm_key not in all_keys
    weight_map: dict[str, str] = {}
    total = 0
    for i, f in enumerate(files, 1):
        header, start, _ = read_safetensors_header(f)
        order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
        entries: list[tuple[str, str, str]] = []  # (output name, source name, dtype code)
        for name in order:
            code = header[name]["dtype"]
            out_code = _st_code(target_dtype) if _ST_DTYPES[code].startswith(("float", "bfloat")) else code
            entries.append((name, name, out_code))
            if add_lm_head and name == embed_key:
                entries.append((lm_key, name, out_code))
        writer = _SafetensorsWriter(out / f.name, [(o, c, header[s]["shape"]) for o, s, c in entries],
                                    {"format": "pt"})
        try:
            with open(f, "rb") as fh:
                for out_name, src_name, code in entries:
                    untouched = out_name not in plan.replacements and out_name not in plan.updates
                    if untouched and code == header[src_name]["dtype"]:  # same bytes: copy without holding them
                        writer.copy(out_name, fh, start + header[src_name]["data_offsets"][0])
                        weight_map[out_name] = f.name
                        continue
                    t = _read_tensor(fh, header[src_name], start)
                    if out_name in plan.replacements:
                        t = plan.replacements[out_name]
                    u = plan.updates.get(out_name)
                    if u is not None:
                        t = u.apply(t.float())
                    writer.write(out_name, t.to(_torch_dtype(_ST_DTYPES[code])))
                    weight_map[out_name] = f.name
                    del t
            writer.close()
        except BaseException:
            writer.fh.close()
            raise
        total += writer.total
        log(f"  shard {i}/{len(files)}: {f.name} ({len(entries)} tensors)")
    if len(files) > 1 or (src.base_dir / "model.safetensors.index.json").is_file():
        atomic_write_json(out / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _load_base_fp32(base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa")


def _load_adapter(model, adapter_dir: Path):
    """PeftModel over model, without PEFT's warnings about tied layers (rustcoder unties them itself)."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(adapter_dir))


def _untie(model) -> None:
    """Give lm_head its own copy of the embedding matrix (before an adapter changes one of them)."""
    import torch

    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    out.weight = torch.nn.Parameter(inp.weight.detach().clone())


def _merge_in_memory(src: _Source, plan: MergePlan, out: Path, dtype: str, untie: bool, tokenizer, verify: bool,
                     log: Callable):
    """Base in float32 + PEFT merge_and_unload, cast to dtype, saved as sharded safetensors."""
    model = _load_base_fp32(src.base_dir)
    if not weight_files(src.base_dir):  # a .bin base: its shapes are known only once loaded
        check_fit(plan, {k: (list(v.shape), "") for k, v in model.state_dict().items()}, src.base_name,
                  src.trained_base)
    if untie:
        _untie(model)
    peft_model = _load_adapter(model, src.adapter_dir)
    reference = None
    if verify:
        log("computing reference outputs (base + adapter, unmerged, float32)")
        reference = probe_outputs(peft_model, tokenizer, base_logits=True)
    merged = peft_model.merge_and_unload()
    import torch

    with torch.no_grad():  # parameters only: buffers such as rotary frequencies stay float32, as a load computes them
        for p in merged.parameters():
            p.data = p.data.to(_torch_dtype(dtype))
    log(f"saving merged weights ({dtype})")
    merged.save_pretrained(out, max_shard_size=MAX_SHARD_SIZE)
    if verify:  # the saved weights, back in float32: the correctly rounded merge's logits (the dtype's floor)
        with torch.no_grad():
            for p in merged.parameters():
                p.data = p.data.float()
        add_rounded_outputs(reference, merged)
    return reference


# ---- verification -------------------------------------------------------------------------------

def probe_messages() -> list[list[dict]]:
    """Chat messages of the verification probes (system + user turn for each Rust task category)."""
    from .data.categories import build_messages

    return [build_messages(cat, inp) for cat, inp in PROBES]


def _render(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def probe_outputs(model, tokenizer, base_logits: bool = False) -> list[dict]:
    """Greedy continuations and float32 logits of a model on the probe prompts.

    With base_logits=True (a PEFT model) also the logits with the adapter disabled: the adapter's own
    effect, against which the dtype's rounding is measured (see add_rounded_outputs).
    """
    import torch
    from transformers import GenerationConfig

    model.eval()
    im_end = _token_id(tokenizer, END_OF_TURN)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=im_end,
                               pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
    results = []
    with torch.no_grad():
        for messages in probe_messages():
            prompt = _encode(tokenizer, _render(tokenizer, messages))
            ids = torch.tensor([prompt])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
            new = out.sequences[0, len(prompt):].tolist()
            full = torch.tensor([prompt + new])
            logits = model(input_ids=full, use_cache=False).logits[0].float()
            item = {"prompt_ids": prompt, "greedy": new, "logits": logits,
                    "margins": [float((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item()) for s in out.scores]}
            if base_logits and hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    item["base_logits"] = model(input_ids=full, use_cache=False).logits[0].float()
            results.append(item)
    return results


def _effect(ref, base):
    """Per position: (squared sum, max) over the vocabulary of the adapter's effect reference - base."""
    effect = ref - base
    return effect.double().pow(2).sum(-1), effect.abs().amax(-1)


def _finish_reference(item: dict, rounded) -> None:
    """Per-position numbers of one reference probe: the adapter's effect (reference - base, from
    base_logits or already in effect_sq/effect_max) and the dtype's floor (correctly rounded merge -
    reference), as squared sums and maxima over the vocabulary."""
    ref = item["logits"]
    if "base_logits" in item:
        item["effect_sq"], item["effect_max"] = _effect(ref, item.pop("base_logits"))
    floor = rounded - ref
    item["rounded_logits"] = rounded
    item["floor_sq"] = floor.double().pow(2).sum(-1)
    item["floor_max"] = floor.abs().amax(-1)


def round_parameters_(model, dtype: str) -> None:
    """Round every floating parameter to dtype and back to float32, in place: what saving in dtype does."""
    import torch

    target = _torch_dtype(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(target).float()


def add_rounded_outputs(reference: list[dict], rounded_model) -> None:
    """Logits of the correctly rounded merge (a merged float32 model after round_parameters_) on the
    reference's own tokens; completes each reference probe (see _finish_reference)."""
    import torch

    rounded_model.eval()
    with torch.no_grad():
        for item in reference:
            full = torch.tensor([item["prompt_ids"] + item["greedy"]])
            _finish_reference(item, rounded_model(input_ids=full, use_cache=False).logits[0].float())


def reference_outputs(base_dir: str | Path, adapter_dir: str | Path, tokenizer, dtype: str = "float32") -> list[dict]:
    """Probe outputs of base + adapter (PEFT, unmerged) in float32: what the merged model must reproduce;
    with the base's logits and those of PEFT's float32 merge rounded once to dtype (the dtype's floor)."""
    model = _load_adapter(_load_base_fp32(Path(base_dir)), adapter_dir)
    out = probe_outputs(model, tokenizer, base_logits=True)
    merged = model.merge_and_unload()
    round_parameters_(merged, dtype)
    add_rounded_outputs(out, merged)
    del model, merged
    return out


def _check(passed: bool, detail: str, **numbers) -> dict:
    return {"passed": bool(passed), "detail": detail, **numbers}


def _common_prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _finite_max(t) -> float:
    """t.max() as a float with NaN read as inf (Python's max() silently drops a NaN: max(0.0, nan) == 0.0)."""
    v = float(t.max()) if t.numel() else 0.0
    return math.inf if math.isnan(v) else v


def _tied_check(ok: bool, tie: bool, lm_key: str) -> dict:
    if tie:
        detail = ("tie_word_embeddings=true and lm_head is the embedding matrix" if ok
                  else "tie_word_embeddings=true but the saved lm_head differs from embed_tokens")
    else:
        detail = ("tie_word_embeddings=false and lm_head is saved" if ok
                  else f"tie_word_embeddings=false but {lm_key} is missing: it would load as random weights")
    return _check(ok, detail, tie_word_embeddings=tie)


def _loaded_tie_check(checks: dict, model, tie: bool) -> None:
    """The model as transformers builds it must share lm_head with embed_tokens exactly when the config ties them."""
    shared = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if shared != tie:
        checks["tied_embeddings"]["passed"] = False
        checks["tied_embeddings"]["detail"] += (f"; but the loaded model {'shares' if shared else 'does not share'} "
                                                "lm_head with embed_tokens")


def _tokenizer_checks(merged_dir: Path, adapter_dir: Path) -> tuple[dict[str, dict], Any, Any]:
    """chat_template and eos checks; also returns (run tokenizer, merged tokenizer)."""
    from transformers import AutoTokenizer

    checks: dict[str, dict] = {}
    run_tok = AutoTokenizer.from_pretrained(adapter_dir)
    merged_tok = AutoTokenizer.from_pretrained(merged_dir)
    template_file = merged_dir / "chat_template.jinja"
    tok_cfg = read_json(merged_dir / "tokenizer_config.json")
    mismatched = []
    convo = probe_messages()
    convo.append(probe_messages()[0] + [{"role": "assistant", "content": "```rust\nfn f() {}\n```"}])
    for messages in convo:
        gen = messages[-1]["role"] != "assistant"
        a = run_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        b = merged_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        if a != b or _encode(run_tok, a) != _encode(merged_tok, b):
            mismatched.append(messages[0]["content"][:40])
    template_ok = (template_file.is_file() and tok_cfg.get("chat_template") == template_file.read_text(encoding="utf-8")
                   and not mismatched)
    checks["chat_template"] = _check(
        template_ok, f"chat_template.jinja and tokenizer_config.json render {len(convo)} conversations exactly as "
        "the run's tokenizer" if template_ok else
        ("chat_template.jinja missing or different from tokenizer_config.json" if not mismatched
         else f"{len(mismatched)} of {len(convo)} conversations render differently"), conversations=len(convo))

    gen_path = merged_dir / "generation_config.json"
    gen = read_json(gen_path) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    im_end = _token_id(merged_tok, END_OF_TURN)
    eos_ok = im_end is not None and im_end in eos and merged_tok.eos_token == END_OF_TURN
    checks["eos"] = _check(eos_ok, f"generation_config eos {eos} includes {END_OF_TURN} ({im_end}); tokenizer eos "
                           f"{merged_tok.eos_token}", eos_token_id=eos)
    return checks, run_tok, merged_tok


def forward_noise_rtol(config: dict) -> float:
    """Relative float32 noise allowed between two forwards of the same weights (see FORWARD_NOISE)."""
    import torch

    tc = _text_config(config)
    depth_width = max(1, int(tc.get("num_hidden_layers") or 1) * int(tc.get("hidden_size") or 1))
    return FORWARD_NOISE * math.sqrt(depth_width) * torch.finfo(torch.float32).eps


def _output_checks(reference: list[dict], got: list[dict], dtype: str, greedy_tokens: int, how: str,
                   noise_rtol: float, max_effect_lost: float = DEFAULT_MAX_EFFECT_LOST) -> dict:
    """The function layer: logits, effect and greedy checks from the probe outputs of base + adapter
    (reference, with the correctly rounded merge's logits and the adapter's effect) and the merged model.

    A merged entry has "logits", or "max_abs_diff", "rounded_diff", "diff_sq" and "positions" when it was
    compared on the fly (layerwise). The merged model is compared where both models read the same tokens:
    the prompt and the continuation up to the first token where their greedy outputs differ.

    - logits: the merged model must compute what the correctly rounded merge computes (the exact float32
      merge rounded once to dtype, run in float32), within float32 forward noise. max |merged - (base +
      adapter)| is reported beside the dtype's floor (the same distance for the correctly rounded merge).
    - effect: the share of the adapter's effect on the logits that rounding to dtype loses,
      ||rounded merge - reference|| / ||reference - base|| over every probe position and vocabulary entry,
      must not exceed max_effect_lost.
    - greedy: a continuation may differ from the reference's only where the reference's top-two margin is
      within what the logits differ by (a near-tie rounding can flip)."""
    max_diff = rounded_diff = floor_max = effect_max = max_ref = 0.0
    floor_sq = effect_sq = diff_sq = effect_sq_compared = 0.0
    positions = skipped = 0
    same, near_ties, diverged = 0, [], []
    per_probe = []
    for i, (ref, g) in enumerate(zip(reference, got)):
        max_ref = max(max_ref, _finite_max(ref["logits"].abs()))
        if "max_abs_diff" in g:
            d, dr, sq, n, missed = (g["max_abs_diff"], g["rounded_diff"], g["diff_sq"], g["positions"],
                                    g.get("not_compared", 0))
        else:  # positions whose inputs are the same tokens: the prompt and the common part of the continuations
            both = min(len(ref["logits"]), len(g["logits"]))
            n = min(both, _common_prefix(ref["prompt_ids"] + ref["greedy"], g["prompt_ids"] + g["greedy"]))
            missed = both - n
            delta = ref["logits"][:n] - g["logits"][:n]
            d = _finite_max(delta.abs())
            dr = _finite_max((ref["rounded_logits"][:n] - g["logits"][:n]).abs())
            sq = float(delta.double().pow(2).sum())
        per_probe.append(d)
        skipped += missed
        positions += n
        max_diff, rounded_diff = max(max_diff, d), max(rounded_diff, dr)
        diff_sq += sq
        effect_sq += float(ref["effect_sq"].sum())
        effect_sq_compared += float(ref["effect_sq"][:n].sum())
        floor_sq += float(ref["floor_sq"].sum())
        effect_max = max(effect_max, _finite_max(ref["effect_max"]))
        floor_max = max(floor_max, _finite_max(ref["floor_max"]))
    tolerance = noise_rtol * max_ref + 1.2e-7
    for i, (ref, g) in enumerate(zip(reference, got)):
        if ref["greedy"] == g["greedy"]:
            same += 1
            continue
        k = _common_prefix(ref["greedy"], g["greedy"])
        margin = ref["margins"][k] if k < len(ref["margins"]) else math.inf
        (near_ties if margin <= 2 * (per_probe[i] + tolerance) else diverged).append(
            {"probe": PROBES[i][0], "token": k, "reference_margin": margin})
    lost = math.sqrt(floor_sq / effect_sq) if effect_sq > 0 else 0.0
    merged_lost = math.sqrt(diff_sq / effect_sq_compared) if effect_sq_compared > 0 else 0.0
    checks = {}
    checks["logits"] = _check(
        rounded_diff <= tolerance,
        f"max |merged - correctly rounded {dtype} merge| = {rounded_diff:.2e} over {len(reference)} probes and "
        f"{positions} positions, tolerance {tolerance:.2e} (float32 forward noise: {noise_rtol:.1e} x max |logit| "
        f"{max_ref:.3g})" + (f" ({skipped} positions after the greedy outputs part, where the inputs differ, not "
                             "compared)" if skipped else "")
        + f"; max |merged - (base + adapter)| = {max_diff:.2e} against the {dtype} floor {floor_max:.2e}; the "
        f"adapter itself moves logits by up to {effect_max:.2e} [{how}]",
        max_abs_diff=max_diff, rounded_diff=rounded_diff, tolerance=tolerance, noise_rtol=noise_rtol,
        dtype_floor=floor_max, max_abs_logit=max_ref, adapter_effect=effect_max, positions=positions,
        positions_not_compared=skipped)
    if effect_sq > 0:
        detail = (f"{dtype} keeps {1 - lost:.1%} of the adapter's effect on the probe logits (rounding the merge "
                  f"to {dtype} loses {lost:.1%}; the limit is {max_effect_lost:.0%}, --max-effect-lost)")
    else:
        detail = "the adapter does not change the probe logits: there is no effect to lose"
    checks["effect"] = _check(lost <= max_effect_lost, detail, effect_lost=lost, effect_kept=1 - lost,
                              merged_effect_lost=merged_lost, max_effect_lost=max_effect_lost, dtype=dtype)
    checks["greedy"] = _check(
        not diverged, f"{same}/{len(reference)} greedy continuations identical ({greedy_tokens} tokens max, {how})"
        + (f"; {len(near_ties)} differ at a near-tie that {dtype} rounding can flip" if near_ties else "")
        + (f"; {len(diverged)} diverge where the logits agree: " + ", ".join(f"{d['probe']} at token {d['token']}"
                                                                              for d in diverged)
           if diverged else ""), identical=same, probes=len(reference), tokens=greedy_tokens, near_ties=near_ties,
        diverged=diverged)
    return checks


# ---- verification, memory-bounded (for streaming merges) ----------------------------------------

# Layerwise verification runs the model one decoder layer at a time. It is implemented for the
# architectures whose forward is embed_tokens -> layers[i] (causal mask, rotary embeddings) -> norm ->
# lm_head, and tested against their transformers forward: Qwen2 (Qwen2.5) and Qwen3.
LAYERWISE_MODEL_TYPES = ("qwen2", "qwen3")
LAYERWISE_GREEDY_TOKENS = 8  # each generated token re-reads every layer from disk: kept small
BLOCK_BYTES = 64 << 20       # tensor checks (and DoRA norms) work on blocks of rows this big


def _rows_per_block(shape: list[int]) -> int:
    return max(1, BLOCK_BYTES // (4 * max(1, math.prod(shape[1:])))) if len(shape) >= 2 else 1


def _blocks_equal(reader: _Reader, a: str, b: str) -> bool:
    import torch

    step = _rows_per_block(reader.shape(a))
    for (_, _, x), (_, _, y) in zip(reader.rows(a, step), reader.rows(b, step)):
        if x.dtype != y.dtype or not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            return False
    return True


def _half_ulp(e32, dtype):
    """Half the spacing of dtype's representable numbers at each element's magnitude (the most a correct
    rounding of a float32 value to dtype can move it)."""
    import torch

    fi = torch.finfo(dtype)
    _, exp = torch.frexp(e32)  # e32 = m * 2**exp with 0.5 <= |m| < 1: dtype's spacing there is 2**(exp-1) * eps
    ulp = torch.ldexp(torch.ones_like(e32), exp - 1) * fi.eps
    return ulp.clamp_min(fi.smallest_normal * fi.eps) / 2  # subnormals: a fixed spacing


def peft_scale_problems(model_dir: Path, adapter_dir: Path, plan: MergePlan) -> list[str]:
    """Where the plan's LoRA modules or scales differ from what PEFT itself computes for this adapter config
    on this architecture (PEFT's LoRA layers injected into a meta-device skeleton: no memory, no weights).
    The merge, the exactness check and the layerwise reference all use the plan's scales: this is the check
    that does not share them."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig.from_pretrained(str(adapter_dir))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = inject_adapter_in_model(config, _skeleton(model_dir), low_cpu_mem_usage=True)
    peft = {f"{name}.weight": next(iter(m.scaling.values())) for name, m in model.named_modules()
            if isinstance(getattr(m, "scaling", None), dict) and m.scaling}
    problems = [f"PEFT applies a LoRA to {k.removesuffix('.weight')}, the merge does not" for k in sorted(peft)
                if k not in plan.updates]
    problems += [f"the merge changes {k.removesuffix('.weight')}, which PEFT does not adapt" for k in
                 sorted(plan.updates) if k not in peft]
    problems += [f"{k.removesuffix('.weight')}: the merge scales B @ A by {u.scale:g}, PEFT by {peft[k]:g}"
                 for k, u in sorted(plan.updates.items()) if k in peft and not math.isclose(u.scale, peft[k],
                                                                                             rel_tol=1e-6)]
    return problems


def _exactness_checks(merged_dir: Path, base_dir: Path, plan: MergePlan, tie: bool, tied: tuple[str, str],
                      dtype: str, meter: _Meter, scale_problems: list[str] | None = None) -> dict[str, dict]:
    """exact, finite, lora_free and tied_embeddings, reading one tensor at a time.

    Exactness: every LoRA-targeted weight must be the float32 merge W + scale * B @ A (recomputed here from
    the base and adapter files, with PEFT's formulas) rounded once to its saved dtype, bit for bit. The only
    element allowed to differ is one whose float32 value lies so close to the midpoint of two neighbours in
    the saved dtype that float32 noise (another BLAS kernel, another device) decides the rounding:
    |merged - expected| <= half an ulp of the dtype + 16 * eps(float32) * (|expected| + |W|); those are
    counted as ties. A tensor the adapter replaces (modules_to_save) must be the adapter's tensor rounded
    the same way, and every other tensor byte-identical to the base's (or to its rounding, when the merge
    changes the dtype). Also counts how many targeted elements the adapter changes at all in the saved
    dtype: an update below the dtype's resolution rounds back to the base weight."""
    import torch

    lm_key, embed_key = tied
    eps32 = torch.finfo(torch.float32).eps
    comparable = bool(weight_files(base_dir))
    skipped = None if comparable else f"{base_dir} has no safetensors weights to recompute the merge from"
    if comparable and plan.unsupported:
        skipped = "the adapter uses " + "; ".join(plan.unsupported) + " (merged by PEFT; not recomputed here)"
    bad, leftovers, problems = [], [], list(scale_problems or []) if not skipped else []
    n_lora = n_replaced = n_same = n_bitwise = count = ties = 0
    changed = targeted = 0
    with _Reader(merged_dir, meter) as merged, _Reader(base_dir if comparable else merged_dir, meter) as base:
        for name in merged.names():
            count += 1
            if "lora_" in name or ".base_layer." in name or "modules_to_save" in name:
                leftovers.append(name)
            mdtype = merged.dtype(name)
            shape = merged.shape(name)
            src = None
            if comparable and not skipped:
                src = name if name in base else embed_key if name == lm_key and embed_key in base else None
                if src is None:
                    problems.append(f"{name} is not in the base model")
                elif base.shape(src) != shape:
                    problems.append(f"{name} has shape {shape}, the base {base.shape(src)}")
                    src = None
            u, rep = plan.updates.get(name), plan.replacements.get(name)
            if src is not None and (u is not None or rep is not None):
                # whole tensors, as the merge computes them (a float32 matmul of a block of rows need not
                # round like the whole product)
                m, b = merged.read(name), base.read(src)
                if mdtype.is_floating_point:
                    nonfinite = int((~torch.isfinite(m)).sum())
                    if nonfinite:
                        bad.append(f"{name} ({nonfinite} non-finite values)")
                w32 = rep.float() if rep is not None else b.float()
                expected = u.apply(w32) if u is not None else w32
                want = expected.to(mdtype)
                if u is not None:
                    targeted += want.numel()
                    changed += int((want != w32.to(mdtype)).sum())
                if torch.equal(m, want):
                    n_bitwise += 1
                    ok = True
                else:
                    diff = (m.float() - expected).abs()
                    allowed = _half_ulp(expected, mdtype) + 16 * eps32 * (expected.abs() + w32.abs())
                    ok = bool((diff <= allowed).all())
                    if ok:
                        ties += int((m != want).sum())
                    else:
                        worst = int((diff > allowed).sum())
                        problems.append(f"{name} is not {'W + scale * B @ A' if u is not None else 'the adapter tensor'}"
                                        f" rounded once to {str(mdtype).removeprefix('torch.')} ({worst} of "
                                        f"{diff.numel()} elements differ, by up to {_finite_max(diff):.2e})")
                    del diff, allowed
                if ok:
                    n_lora += u is not None
                    n_replaced += u is None
                del m, b, w32, expected, want
                continue
            step = _rows_per_block(shape)
            nonfinite, differs = 0, False
            base_blocks = base.rows(src, step) if src is not None else None
            for _, _, m in merged.rows(name, step):
                if mdtype.is_floating_point:
                    nonfinite += int((~torch.isfinite(m)).sum())
                if base_blocks is not None:
                    _, _, b = next(base_blocks)
                    want = b if b.dtype == m.dtype else b.to(m.dtype)
                    differs |= not torch.equal(m.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))
                    del want, b
                del m
            if nonfinite:
                bad.append(f"{name} ({nonfinite} non-finite values)")
            if src is None:
                continue
            if differs:
                problems.append(f"{name} differs from the base although the adapter does not change it")
            else:
                n_same += 1
        if comparable and not skipped:
            for name in base.names():
                if name not in merged and not (tie and name == lm_key):
                    problems.append(f"{name} is missing from the merged model")
            for name in sorted(plan.touched):
                if name not in merged and name not in base and not (tie and name == lm_key):
                    problems.append(f"the adapter changes {name}, which the merged model does not have")
        if tie:
            tied_ok = lm_key not in merged or (embed_key in merged and merged.shape(lm_key) == merged.shape(embed_key)
                                               and _blocks_equal(merged, lm_key, embed_key))
        else:
            tied_ok = lm_key in merged
    if skipped:
        exact = _check(True, f"not checked: {skipped}; the logits checks below still compare the merged model "
                       "with base + adapter", skipped=skipped)
    else:
        exact = _check(
            not problems,
            (f"{n_lora} LoRA-targeted tensors are W + scale * B @ A computed in float32 and rounded once to "
             f"{dtype}" + (f", {n_replaced} replaced ones the adapter's tensors" if n_replaced else "")
             + (", bit for bit" if not ties else f" ({ties} element(s) at float32 rounding ties)")
             + f"; {n_same} untouched tensors byte-identical to the base"
             + (f"; {dtype} keeps the adapter's change in {changed / targeted:.1%} of the targeted weights"
                if targeted else ""))
            if not problems else f"not the exact merge ({len(problems)} problem(s)): " + "; ".join(problems[:5]),
            lora_tensors=n_lora, replaced_tensors=n_replaced, identical_tensors=n_same, bitwise_tensors=n_bitwise,
            tie_elements=ties, targeted_elements=targeted, changed_elements=changed,
            changed_share=(changed / targeted) if targeted else None)
    return {
        "exact": exact,
        "finite": _check(not bad and count > 0, f"{count} tensors, no NaN/inf" if not bad
                         else "non-finite values in " + ", ".join(bad[:5]), tensors=count),
        "lora_free": _check(not leftovers, "no LoRA/PEFT tensors left" if not leftovers
                            else "PEFT tensors left in the model: " + ", ".join(leftovers[:5])),
        "tied_embeddings": _tied_check(tied_ok, tie, lm_key),
    }


def _skeleton(model_dir: Path):
    """The model's module tree on the meta device (takes no memory): float32, sdpa attention, eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def _layerwise_unsupported(merged_dir: Path, base_dir: Path, plan: MergePlan) -> str | None:
    """Why layerwise verification cannot run on these inputs (None when it can)."""
    for d in (merged_dir, base_dir):
        mt = read_json(d / "config.json").get("model_type")
        if mt not in LAYERWISE_MODEL_TYPES:
            return (f"model_type {mt!r}; the layer-by-layer forward is implemented for "
                    f"{', '.join(LAYERWISE_MODEL_TYPES)}")
        if not weight_files(d):
            return f"{d} has no safetensors weights"
    if plan.unsupported:
        return "the adapter uses " + "; ".join(plan.unsupported)
    if any(u.kind == "embedding" and u.magnitude is not None for u in plan.updates.values()):
        return "DoRA on an embedding"
    return None


def _lora_output(x, out, weight, bias, u: _Update, cache: dict):
    """PEFT's unmerged LoRA forward added to the base layer's output (peft.tuners.lora.layer.Linear.forward):
    out + B(A(x)) * scale; with DoRA, k = m / ||W + scale * B @ A||_row and
    out + (k - 1) * (out - bias) + k * B(A(x)) * scale."""
    import torch.nn.functional as F

    lora = F.linear(F.linear(x, u.A.float()), u.B.float())
    if u.magnitude is None:
        return out + lora * u.scale
    if "norm" not in cache:
        cache["norm"] = _dora_weight_norm(weight, u)
    mag = (u.magnitude.float() / cache["norm"]).view(1, -1)
    base = out if bias is None else out - bias
    return out + ((mag - 1) * base + mag * lora * u.scale)


def _dora_weight_norm(weight, u: _Update):
    """||W + scale * B @ A|| per output row (PEFT's DoraLinearLayer.get_weight_norm), in blocks of rows."""
    import torch

    step = _rows_per_block(list(weight.shape))
    return torch.cat([torch.linalg.norm(weight[r0:r0 + step].float()
                                        + u.scale * (u.B[r0:r0 + step].float() @ u.A.float()), dim=1)
                      for r0 in range(0, weight.shape[0], step)])


@dataclass
class _Stream:
    """One probe sequence going through the layers: its hidden states, KV cache, mask and positions.

    mode: "adapter" (base + adapter, unmerged, as PEFT runs it), "base" (adapter off) or "rounded" (the
    exact merge rounded once to the output dtype, run in float32)."""

    mode: str
    probe: int
    hidden: Any
    cache: Any
    masks: dict
    rotary: Any
    positions: Any


class _Layerwise:
    """A qwen2/qwen3 causal LM run one decoder layer at a time from its safetensors files.

    The module tree is built on the meta device with transformers' own classes; a layer's tensors are
    read (and upcast to float32) only while that layer runs, then the layer goes back to meta. The
    embedding matrix, lm_head (one matrix when tied) and final norm are read once and kept: lm_head in
    float32, an untied input embedding in its stored dtype. With a plan, the adapter is
    applied on the fly the way PEFT runs it unmerged: forward hooks add B(A(x)) * scale to each target
    linear's output (DoRA: PEFT's magnitude rescaling), an embedding LoRA adds A^T[ids] B^T * scale, and
    modules_to_save tensors replace the base's. With round_to, a third mode runs the merge as the merge
    computes it (W + scale * B @ A in float32) rounded once to round_to. Modes are switches, so every
    mode runs from the same loaded layer."""

    def __init__(self, model_dir: Path, meter: _Meter, plan: MergePlan | None = None, round_to: str | None = None):
        import torch

        self.dir = model_dir
        self.model = _skeleton(model_dir)
        decoder = self.model.get_decoder()
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(decoder, attr):
                raise RustcoderError(f"{model_dir}: layerwise verification needs model.{attr}")
        names = {id(m): n for n, m in self.model.named_modules()}
        self.decoder = decoder
        self.prefix = names[id(decoder)] + "."
        self.config = decoder.config
        self.layer_types = list(getattr(self.config, "layer_types", None) or
                                ["full_attention"] * len(decoder.layers))
        out_emb = self.model.get_output_embeddings()
        self.lm_key = names[id(out_emb)] + ".weight"
        self.embed_key = self.prefix + "embed_tokens.weight"
        self.tied = out_emb.weight is decoder.embed_tokens.weight
        self.rotary = type(decoder.rotary_emb)(config=self.config)
        self.plan = plan or MergePlan()
        self.round_to = None if round_to is None else _torch_dtype(round_to)
        self.reader = _Reader(model_dir, meter)
        self.mode = "adapter"
        self._head_cache: dict = {}
        self._rounded_matrices: dict = {}
        # lm_head in float32 for the whole pass (upcasting a 16-bit one on every call would cost more time
        # than the extra copy costs memory); an untied input embedding stays as stored (rows are looked up)
        self.embed = self._read(self.embed_key, torch.float32 if self.tied else None)
        self.lm = None if self.tied else self._read(self.lm_key, torch.float32)
        rep = self.plan.replacements.get(self.lm_key)
        self.lm_replacement = None if rep is None else rep.float()
        self.norm_swaps, _ = self._materialize(decoder.norm, self.prefix + "norm.")

    def close(self) -> None:
        self.reader.close()
        self.embed = self.lm = self.lm_replacement = None
        self.norm_swaps = {}
        self._rounded_matrices.clear()
        self.decoder.norm.to("meta")

    def _read(self, name: str, dtype=None):
        if name not in self.reader:
            why = (": tie_word_embeddings=false but lm_head.weight is not saved (it would load as random weights)"
                   if name == self.lm_key else "")
            raise RustcoderError(f"{self.dir} has no tensor {name}{why}")
        return self.reader.read(name, dtype)

    def _rounded(self, key: str, stored, base32):
        """The tensor as the merge saves it, in float32: (replacement, then update) rounded to round_to;
        None when that is base32 itself (an untouched tensor already stored in round_to)."""
        u, rep = self.plan.updates.get(key), self.plan.replacements.get(key)
        if u is None and rep is None and stored == self.round_to:
            return None
        w = rep.float() if rep is not None else base32
        if u is not None:
            w = u.apply(w)
        return w.to(self.round_to).float()

    def _materialize(self, module, prefix: str):
        """Load module's tensors (float32) from the files; returns (mode swaps, LoRA hook handles)."""
        import torch

        keys = list(module.state_dict().keys())
        state = {k: self._read(prefix + k, torch.float32) for k in keys}
        module.load_state_dict(state, strict=True, assign=True)
        del state
        swaps: dict[str, dict] = {}
        for k in keys:
            base = module.get_parameter(k).data
            alt = {}
            if prefix + k in self.plan.replacements:
                alt["adapter"] = self.plan.replacements[prefix + k].float()
            if self.round_to is not None:
                rounded = self._rounded(prefix + k, self.reader.dtype(prefix + k), base)
                if rounded is not None:
                    alt["rounded"] = rounded
            if alt:
                swaps[k] = {"base": base, **alt}
        hooks = []
        for k in keys:
            u = self.plan.updates.get(prefix + k)
            if u is not None:
                if u.kind != "linear" or not k.endswith(".weight"):
                    raise RustcoderError(f"layerwise verification cannot apply a {u.kind} LoRA to {prefix + k}")
                hooks.append(module.get_submodule(k.removesuffix(".weight")).register_forward_hook(self._hook(u)))
        return swaps, hooks

    def _hook(self, u: _Update):
        cache: dict = {}

        def hook(module, args, out):
            return _lora_output(args[0], out, module.weight, module.bias, u, cache) if self.mode == "adapter" else None
        return hook

    def _switch(self, mode: str, module, swaps: dict) -> None:
        self.mode = mode
        for k, alt in swaps.items():
            module.get_parameter(k).data = alt.get(mode, alt["base"])

    def _rounded_matrix(self, key: str, stored_key: str, base32):
        if key not in self._rounded_matrices:
            r = self._rounded(key, self.reader.dtype(stored_key), base32)
            self._rounded_matrices[key] = base32 if r is None else r
        return self._rounded_matrices[key]

    def embed_ids(self, ids, mode: str):
        import torch.nn.functional as F

        if mode == "rounded":
            return F.embedding(ids, self._rounded_matrix(self.embed_key, self.embed_key, self.embed.float())).float()
        rep = self.plan.replacements.get(self.embed_key) if mode == "adapter" else None
        h = F.embedding(ids, rep if rep is not None else self.embed).float()
        u = self.plan.updates.get(self.embed_key) if mode == "adapter" else None
        if u is not None:  # peft.tuners.lora.layer.Embedding.forward
            h = h + (F.embedding(ids, u.A.float().T) @ u.B.float().T) * u.scale
        return h

    def masks(self, h, cache, positions) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kw = dict(config=self.config, inputs_embeds=h, attention_mask=None, past_key_values=cache,
                  position_ids=positions)
        out = {"full_attention": create_causal_mask(**kw)}
        if "sliding_attention" in self.layer_types:
            out["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return out

    def layers(self, streams: list[_Stream]) -> None:
        """Run every stream through every decoder layer, loading each layer once."""
        for i, layer in enumerate(self.decoder.layers):
            swaps, hooks = self._materialize(layer, f"{self.prefix}layers.{i}.")
            try:
                for s in streams:
                    self._switch(s.mode, layer, swaps)
                    s.hidden = layer(s.hidden, attention_mask=s.masks[self.layer_types[i]],
                                     position_embeddings=s.rotary, position_ids=s.positions,
                                     past_key_values=s.cache, use_cache=True)
            finally:
                for h in hooks:
                    h.remove()
                swaps.clear()
                layer.to("meta")

    def head(self, hidden, mode: str):
        """Final norm and lm_head: float32 logits [positions, vocab] of one sequence's hidden states."""
        import torch.nn.functional as F

        self._switch(mode, self.decoder.norm, self.norm_swaps)
        h = self.decoder.norm(hidden)[0]
        source = self.embed if self.tied else self.lm
        if mode == "rounded":  # an untied merge computes lm_head from the (tied) embedding matrix
            return F.linear(h, self._rounded_matrix(self.lm_key, self.embed_key if self.tied else self.lm_key,
                                                    source))
        weight = self.lm_replacement if mode == "adapter" and self.lm_replacement is not None else source
        logits = F.linear(h, weight)
        u = self.plan.updates.get(self.lm_key) if mode == "adapter" else None
        if u is not None:
            if u.kind != "linear":
                raise RustcoderError(f"layerwise verification cannot apply a {u.kind} LoRA to {self.lm_key}")
            logits = _lora_output(h, logits, weight, None, u, self._head_cache)
        return logits


def layerwise_probe_outputs(model_dir: str | Path, tokenizer, *, plan: MergePlan | None = None,
                            base_logits: bool = False, round_to: str | None = None,
                            reference: list[dict] | None = None,
                            greedy_tokens: int = LAYERWISE_GREEDY_TOKENS, prompts: list[list[int]] | None = None,
                            meter: _Meter | None = None) -> list[dict]:
    """probe_outputs computed one decoder layer at a time from model_dir's safetensors files (+ plan's
    adapter applied on the fly): memory of about one layer plus the embeddings, whatever the model size.

    Greedy decoding runs for real, all probes in lockstep with a KV cache per probe: each generated token
    is one more pass over the layers (re-reading every layer), so greedy_tokens is kept small. Returns,
    per probe, prompt_ids, greedy and margins (top-1 minus top-2 logit at each step) and the float32
    logits of every position fed (the prompt and the generated tokens but the last). With base_logits and
    round_to (a reference pass), the adapter-off model and the merge rounded to round_to run alongside on
    the same tokens: the probe gets rounded_logits and the per-position effect and floor numbers of
    _finish_reference. With reference (the output of such a pass), logits are not kept but compared on the
    fly, where the tokens fed are the reference's: max_abs_diff, rounded_diff, diff_sq, positions
    (compared) and not_compared instead of logits (so the merged model's logits are never held).
    """
    import torch
    from transformers import DynamicCache

    if base_logits != (round_to is not None):
        raise ValueError("a reference pass needs both base_logits and round_to")
    meter = meter or _Meter()
    lw = _Layerwise(Path(model_dir), meter, plan, round_to)
    if prompts is None:
        prompts = [_encode(tokenizer, _render(tokenizer, m)) for m in probe_messages()]
    im_end = _token_id(tokenizer, END_OF_TURN)
    modes = ("adapter", "base", "rounded") if base_logits else ("adapter",)
    caches = {(a, p): DynamicCache(config=lw.config) for a in modes for p in range(len(prompts))}
    out = [{"prompt_ids": list(ids), "greedy": [], "margins": []} for ids in prompts]
    kept: dict[str, list[list]] = {m: [[] for _ in prompts] for m in modes}
    diff, rdiff, sq = [0.0] * len(prompts), [0.0] * len(prompts), [0.0] * len(prompts)
    seen, compared, agree = [0] * len(prompts), [0] * len(prompts), [True] * len(prompts)
    feed = {p: list(ids) for p, ids in enumerate(prompts)}
    try:
        with torch.no_grad():
            while feed:
                streams = []
                for a in modes:
                    for p, ids in feed.items():
                        h = lw.embed_ids(torch.tensor([ids]), a)
                        cache = caches[a, p]
                        past = cache.get_seq_length()
                        pos = torch.arange(past, past + len(ids)).unsqueeze(0)
                        streams.append(_Stream(a, p, h, cache, lw.masks(h, cache, pos), lw.rotary(h, pos), pos))
                lw.layers(streams)
                hidden = {(s.mode, s.probe): s.hidden for s in streams}
                del streams
                for p in list(feed):
                    ids = feed[p]
                    x = lw.head(hidden["adapter", p], "adapter")
                    n = x.shape[0]
                    if reference is None:
                        kept["adapter"][p].append(x)
                        if base_logits:  # the base's logits are needed only for the adapter's effect
                            kept["base"][p].append(_effect(x, lw.head(hidden["base", p], "base")))
                            kept["rounded"][p].append(lw.head(hidden["rounded", p], "rounded"))
                    elif agree[p]:  # compare while the inputs are the reference's tokens (see _output_checks)
                        ref, rounded = reference[p]["logits"], reference[p]["rounded_logits"]
                        ref_ids = reference[p]["prompt_ids"] + reference[p]["greedy"]
                        k = min(_common_prefix(ids, ref_ids[seen[p]:]), len(ref) - seen[p])
                        agree[p] = k == n
                        if k > 0:
                            delta = x[:k] - ref[seen[p]:seen[p] + k]
                            diff[p] = max(diff[p], _finite_max(delta.abs()))
                            sq[p] += float(delta.double().pow(2).sum())
                            rdiff[p] = max(rdiff[p], _finite_max((x[:k] - rounded[seen[p]:seen[p] + k]).abs()))
                            compared[p] += k
                    seen[p] += n
                    top = x[-1].topk(2).values
                    out[p]["margins"].append(float(top[0] - top[1]))
                    token = int(x[-1].argmax())
                    out[p]["greedy"].append(token)
                    if token == im_end or len(out[p]["greedy"]) >= greedy_tokens:
                        del feed[p]
                    else:
                        feed[p] = [token]
                    del x
                del hidden
    finally:
        lw.close()
    for p, item in enumerate(out):
        if reference is None:
            item["logits"] = torch.cat(kept["adapter"][p])
            if base_logits:
                item["effect_sq"] = torch.cat([e for e, _ in kept["base"][p]])
                item["effect_max"] = torch.cat([m for _, m in kept["base"][p]])
                _finish_reference(item, torch.cat(kept["rounded"][p]))
        else:
            item["max_abs_diff"], item["rounded_diff"], item["diff_sq"] = diff[p], rdiff[p], sq[p]
            item["positions"] = compared[p]
            item["not_compared"] = min(seen[p], len(reference[p]["logits"])) - compared[p]
    return out


def _weight_sizes(model_dir: Path) -> dict[str, int]:
    """Largest decoder layer in float32 and the embedding matrices as stored, in bytes (from headers)."""
    import torch

    layers: dict[str, int] = {}
    embed = 0
    for name, (shape, code) in tensor_shapes(model_dir).items():
        m = _LAYER_OF.search(name)
        if m:
            layers[m.group(1)] = layers.get(m.group(1), 0) + 4 * math.prod(shape)
        elif "embed_tokens" in name or "lm_head" in name:
            embed += math.prod(shape) * torch.empty((), dtype=_torch_dtype(_ST_DTYPES[code])).element_size()
    return {"largest_layer_fp32": max(layers.values(), default=0), "embeddings": embed, "layers": len(layers)}


def _verify_layerwise(merged_dir: Path, base_dir: Path, adapter_dir: Path, plan: MergePlan, tie: bool,
                      tied: tuple[str, str],
                      dtype: str, run_tok, merged_tok, noise_rtol: float, max_effect_lost: float,
                      log: Callable) -> tuple[dict[str, dict], dict]:
    """Exactness tensor by tensor, then the models run one decoder layer at a time; returns (checks, memory)."""
    checks_meter, forward_meter = _Meter(), _Meter()
    log("checking every merged tensor against the float32 merge rounded to its dtype, one tensor at a time")
    checks = _exactness_checks(merged_dir, base_dir, plan, tie, tied, dtype, checks_meter,
                               peft_scale_problems(base_dir, adapter_dir, plan))
    _loaded_tie_check(checks, _skeleton(merged_dir), tie)
    log(f"reference outputs (base + adapter unmerged, base, and the merge rounded to {dtype}; float32), one decoder "
        "layer at a time")
    tokens = LAYERWISE_GREEDY_TOKENS
    reference = layerwise_probe_outputs(base_dir, run_tok, plan=plan, base_logits=True, round_to=dtype,
                                        meter=forward_meter, greedy_tokens=tokens)
    log("running the merged model on the probe prompts, one decoder layer at a time")
    how = "layer-by-layer forward in float32 with a KV cache"
    try:
        got = layerwise_probe_outputs(merged_dir, merged_tok, reference=reference, meter=forward_meter,
                                      greedy_tokens=tokens)
        checks.update(_output_checks(reference, got, dtype, tokens, how, noise_rtol, max_effect_lost))
    except RustcoderError as e:
        checks["logits"] = _check(False, f"the merged model could not be run: {e}")
        checks["greedy"] = _check(False, "the merged model could not be run")
    sizes = _weight_sizes(merged_dir)
    memory = {"peak_weight_bytes": max(checks_meter.peak, forward_meter.peak),
              "forward_peak_bytes": forward_meter.peak, "tensor_checks_peak_bytes": checks_meter.peak,
              "max_layers_at_once": max(checks_meter.max_layers, forward_meter.max_layers),
              "largest_layer_fp32_bytes": sizes["largest_layer_fp32"], "embedding_bytes": sizes["embeddings"],
              "layers": sizes["layers"], "greedy_tokens": tokens}
    return checks, memory


def _verify_full(merged_dir: Path, base_dir: Path, adapter_dir: Path, plan: MergePlan, tie: bool,
                 tied: tuple[str, str], dtype: str, run_tok, merged_tok, reference: list[dict] | None,
                 noise_rtol: float, max_effect_lost: float, log: Callable) -> dict[str, dict]:
    import torch
    from transformers import AutoModelForCausalLM

    log("checking every merged tensor against the float32 merge rounded to its dtype, one tensor at a time")
    checks = _exactness_checks(merged_dir, base_dir, plan, tie, tied, dtype, _Meter(),
                               peft_scale_problems(base_dir, adapter_dir, plan))
    if reference is None:
        log(f"computing reference outputs (base + adapter unmerged, base, and the merge rounded to {dtype}; float32)")
        reference = reference_outputs(base_dir, adapter_dir, run_tok, dtype)
    log("running the merged model on the probe prompts")
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, attn_implementation="sdpa")
    peft_like = [n for n, _ in model.named_modules() if "lora_" in n or n.endswith("base_layer")]
    checks["lora_free"]["passed"] &= not peft_like
    if peft_like:
        checks["lora_free"]["detail"] += f"; loaded model has LoRA modules: {', '.join(peft_like[:3])}"
    _loaded_tie_check(checks, model, tie)
    merged_out = probe_outputs(model, merged_tok)
    del model
    checks.update(_output_checks(reference, merged_out, dtype, GREEDY_TOKENS, "full model in float32, generate()",
                                 noise_rtol, max_effect_lost))
    return checks


VERIFY_MODES = ("full", "layerwise")
CHECK_ORDER = ("exact", "logits", "effect", "greedy", "finite", "lora_free", "tied_embeddings", "chat_template", "eos")


def verify_merge(merged_dir: str | Path, base_dir: str | Path, adapter_dir: str | Path, *,
                 reference: list[dict] | None = None, mode: str = "full", plan: MergePlan | None = None,
                 max_effect_lost: float = DEFAULT_MAX_EFFECT_LOST, log: Callable = print) -> dict[str, Any]:
    """Check a merged model against base + adapter in two layers; returns {"passed", "cause", "checks", ...}.

    Exactness ("exact"): every merged tensor is the float32 merge W + scale * B @ A (recomputed from the base
    and adapter files) rounded once to the saved dtype, bit for bit; untouched tensors are the base's. A
    mismatch is a bug (wrong scale, transposition, missed module, tied embeddings).

    Function: on Rust probe prompts, "logits": the merged model computes what the correctly rounded merge
    computes, within float32 forward noise (a mismatch is a bug in what was saved beside the tensors:
    config, tied embeddings, dtype); "effect": the share of the adapter's effect on the logits (base +
    adapter - base) that rounding to the saved dtype loses stays within max_effect_lost (a failure is the
    dtype's resolution, not a bug: merge in float32 or serve the adapter); "greedy": continuations equal
    base + adapter's except at near-ties the rounding can flip. Also: no NaN/inf, no LoRA tensors left,
    tied embeddings consistent with the config (in the files and in the model transformers builds), the
    chat template renders the probes exactly as the run's tokenizer does, eos includes <|im_end|>.

    cause is None when everything passed, "dtype" when only "effect" failed, else "bug".

    mode "full" loads base + adapter (PEFT) and then the merged model, whole, in float32, and generates
    GREEDY_TOKENS tokens. mode "layerwise" (what streaming merges use) never holds more than one decoder
    layer plus the embeddings (and the probes' logits): the models run one layer at a time
    (layerwise_probe_outputs) with LAYERWISE_GREEDY_TOKENS greedy tokens. Layerwise falls back to full
    (saying why) for an architecture or adapter it cannot run; reference applies to full mode only.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"mode must be one of {VERIFY_MODES}, not {mode!r}")
    merged_dir, base_dir, adapter_dir = Path(merged_dir), Path(base_dir), Path(adapter_dir)
    config = read_json(merged_dir / "config.json")
    dtype = save_dtype_of(config, merged_dir)
    noise_rtol = forward_noise_rtol(config)
    tied = _tied_keys(config)
    tie = _tie_word_embeddings(merged_dir)
    checks, run_tok, merged_tok = _tokenizer_checks(merged_dir, adapter_dir)
    if plan is None:
        plan = plan_merge(load_adapter_tensors(adapter_dir), read_json(adapter_dir / "adapter_config.json"))
    result: dict[str, Any] = {"skipped": False, "mode": mode, "dtype": dtype, "max_effect_lost": max_effect_lost}
    if mode == "layerwise":
        why = _layerwise_unsupported(merged_dir, base_dir, plan)
        if why:
            log(f"layerwise verification is not possible here ({why}): running the full verification, which "
                "holds a float32 copy of the model")
            mode = result["mode"] = "full"
            result["layerwise_unavailable"] = why
    if mode == "layerwise":
        more, result["memory"] = _verify_layerwise(merged_dir, base_dir, adapter_dir, plan, tie, tied, dtype, run_tok,
                                                   merged_tok, noise_rtol, max_effect_lost, log)
        result["greedy_tokens"] = result["memory"].pop("greedy_tokens")
    else:
        more = _verify_full(merged_dir, base_dir, adapter_dir, plan, tie, tied, dtype, run_tok, merged_tok, reference,
                            noise_rtol, max_effect_lost, log)
        result["greedy_tokens"] = GREEDY_TOKENS
    checks.update(more)
    result["checks"] = {k: checks[k] for k in CHECK_ORDER if k in checks}
    failed = {k for k, c in result["checks"].items() if not c["passed"]}
    result["passed"] = not failed
    result["cause"] = None if not failed else "dtype" if failed == {"effect"} else "bug"
    exact, logits, effect = (result["checks"].get(k, {}) for k in ("exact", "logits", "effect"))
    result["exact"] = None if exact.get("skipped") else exact.get("passed")
    result["max_logit_diff"] = logits.get("max_abs_diff")
    result["dtype_floor"] = logits.get("dtype_floor")
    result["effect_kept"] = effect.get("effect_kept")
    return result


def _summary(v: dict) -> str:
    """'; exact: yes, logits max diff .., bf16 floor .., effect kept ..%' from a verification result."""
    parts = []
    if v.get("exact") is not None:
        parts.append(f"exact: {'yes' if v['exact'] else 'NO'}")
    if v.get("max_logit_diff") is not None:
        parts.append(f"logits max diff {v['max_logit_diff']:.1e} vs {v.get('dtype', '')} floor "
                     f"{v.get('dtype_floor') or 0:.1e}")
    if v.get("effect_kept") is not None:
        parts.append(f"{v.get('dtype', '')} keeps {v['effect_kept']:.1%} of the adapter's effect")
    return "; " + ", ".join(parts) if parts else ""


def render_report(report: dict) -> str:
    """Human-readable summary of a merge report (what the CLI prints)."""
    lines = [f"merged model: {report['merged_dir']}",
             f"  base {report['base']['name']} + adapter {report['adapter']['dir']} -> {report['dtype']}, "
             f"{report['files']['shards']} shard(s), {report['files']['bytes'] / 1e6:.1f} MB, "
             f"{report['mode']} merge in {report['wall_time_s']:.1f} s"]
    if report.get("untied_embeddings"):
        lines.append("  the adapter changes a tied embedding: lm_head and embed_tokens are saved separately "
                     "(tie_word_embeddings=false)")
    v = report.get("verification") or {}
    if v.get("skipped"):
        lines.append("verification: skipped (--no-verify)")
    else:
        lines.append(f"verification: {'passed' if v.get('passed') else 'FAILED'} ({v.get('mode', 'full')}"
                     f"{_summary(v)})")
        mem = v.get("memory")
        if mem:
            lines.append(f"  layerwise: held at most {mem['peak_weight_bytes'] / 1e6:.1f} MB of weights at once "
                         f"({mem['max_layers_at_once']} decoder layer(s) at a time; largest layer in float32 "
                         f"{mem['largest_layer_fp32_bytes'] / 1e6:.1f} MB, embeddings "
                         f"{mem['embedding_bytes'] / 1e6:.1f} MB)")
        for name, c in v.get("checks", {}).items():
            lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {name:<16} {c['detail']}")
    lines.append(f"report: {Path(report['merged_dir']) / REPORT}")
    return "\n".join(lines)


# ---- the atomic output directory ----------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp_dirs(target: Path, log: Callable = print) -> list[Path]:
    """Remove temporary siblings of target left by merges that were killed (their process is gone)."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f".{target.name}.*-*"):
        m = re.match(rf"\.{re.escape(target.name)}\.(merging|replaced)-(\d+)-", p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log(f"removed {len(removed)} half-written merge(s) left by a killed run: {', '.join(p.name for p in removed)}")
    return removed


def _looks_replaceable(target: Path) -> bool:
    return (target / REPORT).is_file() or (target / "config.json").is_file() or not any(target.iterdir())


def _install(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished temporary directory into place (swapping out an old merge with force)."""
    if target.exists():
        if not force:
            raise RustcoderError(f"{target} appeared while merging; pass --force to replace it.")
        old = target.parent / f".{target.name}.replaced-{os.getpid()}-{int(time.time())}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _write_report(out: Path, report: dict) -> None:
    atomic_write_json(out / REPORT, report)


# ---- the public entry points --------------------------------------------------------------------

def default_output_dir(run_dir: str | Path) -> Path:
    """RUN_DIR/merged for a run directory; ADAPTER_DIR-merged beside a bare adapter directory."""
    adapter_dir, real_run = _adapter_dir_of(Path(run_dir))
    return real_run / MERGED_DIR if real_run else adapter_dir.parent / f"{adapter_dir.name}-merged"


def merge(run_dir: str | Path, output_dir: str | Path | None = None, base: str | None = None, force: bool = False,
          verify: bool = True, streaming: bool = False, push_to_hub: str | None = None, dtype: str = "auto",
          max_effect_lost: float = DEFAULT_MAX_EFFECT_LOST, log: Callable = print) -> MergeResult:
    """Merge a run's LoRA adapter into its base model and save a standalone, verified model directory.

    run_dir is a training run directory (or an adapter directory); output_dir defaults to RUN_DIR/merged.
    base overrides the base model the run recorded (hub id or directory). The merge is computed in
    float32 and saved in dtype ("auto": the base's; or one of MERGE_DTYPES); with streaming=True it runs
    shard by shard with memory of about one tensor. Merging the same adapter into the same base in the
    same dtype again is a no-op. Raises RustcoderError (with what to do) for a quantized or mismatched
    base, missing files, an existing target without force, or a failed verification (the target is then
    left untouched): a merge that is not exact is a bug; one whose dtype loses more than max_effect_lost
    of the adapter's effect is refused with the fix (float32, or serving the adapter).
    """
    if dtype != "auto" and dtype not in MERGE_DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of auto, {', '.join(MERGE_DTYPES)}")
    if not 0 <= max_effect_lost <= 1:
        raise UsageError(f"--max-effect-lost {max_effect_lost} must be a share between 0 and 1 (e.g. 0.1 for 10%)")
    started = time.time()
    src = _resolve_source(run_dir, base, streaming)
    target = Path(output_dir) if output_dir else default_output_dir(run_dir)
    target = target.expanduser().resolve()
    for forbidden in (src.adapter_dir, src.base_dir, src.run_dir):
        if forbidden is not None and target == Path(forbidden).resolve():
            raise UsageError(f"--output-dir {target} is the {'base model' if forbidden == src.base_dir else 'run'} "
                             "directory itself; choose a new directory.")

    base_config = read_json(src.base_dir / "config.json")
    check_not_quantized(base_config, src.base_name, src.trained_base)
    base_dtype = save_dtype_of(base_config, src.base_dir)
    dtype = base_dtype if dtype == "auto" else dtype
    adapter_sha = adapter_fingerprint(src.adapter_dir)
    identity = base_identity(src.base_dir)
    key = _merge_key(adapter_sha, identity["sha256"], dtype)

    clean_stale_temp_dirs(target, log)
    if target.exists():
        previous = read_json(target / REPORT) if (target / REPORT).is_file() else None
        if previous and previous.get("merge_key") == key:
            return _pushed(_already_merged(src, target, previous, verify, max_effect_lost, log), push_to_hub, log)
        if not force:
            why = ("it holds a merge of a different adapter or base" if previous
                   else "it is not a rustcoder merge")
            raise RustcoderError(f"{target} already exists and {why}. Pass --force to replace it, or choose "
                                 "another --output-dir.")
        if not target.is_dir() or not _looks_replaceable(target):
            raise RustcoderError(f"{target} exists and is not a model directory; refusing to replace it even with "
                                 "--force. Choose another --output-dir.")

    from transformers import AutoTokenizer

    log(f"merging {src.adapter_dir} into {src.base_name} ({'streaming' if streaming else 'in memory'}, float32 -> "
        f"{dtype})")
    if src.base_overridden:
        log(f"note: --base {src.base_name!r} replaces the base the adapter was trained on ({src.trained_base!r})")
    plan = plan_merge(load_adapter_tensors(src.adapter_dir), src.adapter_config)
    trained_cfg_path = Path(src.manifest.get("base_model_path") or "") / "config.json"
    trained_config = read_json(trained_cfg_path) if src.base_overridden and trained_cfg_path.is_file() else None
    tied = _tied_keys(base_config)
    tie = _tie_word_embeddings(src.base_dir)
    if weight_files(src.base_dir):
        shapes = tensor_shapes(src.base_dir)
        if tie and tied[0] not in shapes and tied[1] in shapes:  # a tied checkpoint stores the matrix once
            shapes[tied[0]] = shapes[tied[1]]
        check_fit(plan, shapes, src.base_name, src.trained_base, base_config, trained_config)
    elif streaming:
        raise RustcoderError(f"--streaming needs safetensors weights; {src.base_dir} has none.")
    untie = _untie_needed(tie, plan, tied)
    if untie:
        log("the adapter changes a tied embedding matrix: saving lm_head and embed_tokens separately "
            "(tie_word_embeddings=false), as base + adapter computes them")
    tokenizer = AutoTokenizer.from_pretrained(src.adapter_dir)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.merging-{os.getpid()}-", dir=target.parent))
    try:
        reference = None
        if streaming:
            _merge_streaming(src, plan, tmp, dtype, untie, tied, log)
        else:
            reference = _merge_in_memory(src, plan, tmp, dtype, untie, tokenizer, verify, log)
        config = _edited_config(src.base_dir, dtype, untie)
        atomic_write_json(tmp / "config.json", config)
        atomic_write_json(tmp / "generation_config.json", _generation_config(src.base_dir, config, tokenizer))
        _copy_tokenizer(src.adapter_dir, tmp)
        shards = weight_files(tmp)
        report = {
            "kind": "rustcoder-merge",
            "merge_format": MERGE_FORMAT,
            "created_at": time.time(),
            "merged_dir": str(target),
            "mode": "streaming" if streaming else "in-memory",
            "merge_key": key,
            "run_dir": str(src.run_dir) if src.run_dir else None,
            "run_name": src.manifest.get("run_name"),
            "adapter": {"dir": str(src.adapter_dir), "sha256": adapter_sha, "tensors": plan.adapter_keys},
            "base": {"name": src.base_name, "dir": str(src.base_dir), "revision": src.base_revision,
                     "trained_on": src.trained_base, "overridden": src.base_overridden, "identity": identity},
            "dtype": dtype,
            "base_dtype": base_dtype,
            "compute_dtype": "float32",
            "lora": {"r": src.adapter_config.get("r"), "alpha": src.adapter_config.get("lora_alpha"),
                     "rslora": bool(src.adapter_config.get("use_rslora")),
                     "dora": bool(src.adapter_config.get("use_dora")),
                     "merged_tensors": len(plan.updates), "replaced_tensors": sorted(plan.replacements)},
            "tie_word_embeddings": tie and not untie,
            "untied_embeddings": untie,
            "files": {"shards": len(shards), "bytes": sum(f.stat().st_size for f in shards)},
            "versions": artifacts.package_versions(),
        }
        if verify:
            report["verification"] = verify_merge(tmp, src.base_dir, src.adapter_dir, reference=reference,
                                                  mode="layerwise" if streaming else "full", plan=plan,
                                                  max_effect_lost=max_effect_lost, log=log)
        else:
            report["verification"] = {"skipped": True, "passed": None}
        report["wall_time_s"] = time.time() - started
        atomic_write_text(tmp / "README.md", _model_card(src, report))
        if verify and not report["verification"]["passed"]:
            raise RustcoderError(refusal_message(report, src.run_dir or src.adapter_dir))
        _write_report(tmp, report)
        _install(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if src.run_dir is not None:
        artifacts.update_manifest(src.run_dir, merged_dir=str(target), merged_at=time.time())
    return _pushed(MergeResult(merged_dir=target, report=report), push_to_hub, log)


def refusal_message(report: dict, source: Path) -> str:
    """Why a merge was not saved, with the true cause and the fix."""
    v = report["verification"]
    checks = v["checks"]
    dtype = report["dtype"]
    if v.get("cause") == "dtype":
        e, x = checks["effect"], checks.get("exact", {})
        changed = x.get("changed_share")
        why = (f" only {changed:.1%} of the adapter-targeted weights change at all in {dtype};" if changed is not None
               else "")
        return (f"the merged model was not saved: in {dtype} it keeps only {e['effect_kept']:.1%} of the adapter's "
                f"effect on the probe logits (rounding loses {e['effect_lost']:.1%}, more than --max-effect-lost "
                f"{e['max_effect_lost']:.0%}).\n"
                f"This is not a bug: the merge is exact (every tensor is the float32 merge rounded once to {dtype}), but "
                f"the adapter's update is mostly below {dtype}'s resolution for weights of this size;{why} typical of a "
                "short or low-learning-rate run.\nFix: merge in float32, which keeps the whole effect at twice the "
                f"size: `rustcoder merge {source} --dtype float32`; or serve the adapter unmerged: `rustcoder serve "
                f"--adapter {source}`; or train longer. `--max-effect-lost 1` merges in {dtype} anyway.")
    failed = {k: c["detail"] for k, c in checks.items() if not c["passed"] and k != "effect"}
    return ("the merged model failed verification, so it was not saved:\n"
            + "\n".join(f"  - {k}: {d}" for k, d in failed.items())
            + "\nThis is a bug in the merge or a broken adapter/base, not rounding: report it with the run's "
              "adapter_config.json and merge output.")


def _pushed(result: MergeResult, repo: str | None, log: Callable) -> MergeResult:
    if repo:
        result.pushed_to = push_merged(result.merged_dir, repo)
        log(f"pushed merged model to {result.pushed_to}")
    return result


def _already_merged(src: _Source, target: Path, previous: dict, verify: bool, max_effect_lost: float,
                    log: Callable) -> MergeResult:
    log(f"{target} already holds this adapter merged into this base in {previous.get('dtype')} (same adapter weights, "
        "base and dtype): nothing to do.")
    if verify and (previous.get("verification") or {}).get("skipped"):
        log("it was merged with --no-verify: verifying it now")
        mode = "layerwise" if previous.get("mode") == "streaming" else "full"
        previous["verification"] = verify_merge(target, src.base_dir, src.adapter_dir, mode=mode,
                                                max_effect_lost=max_effect_lost, log=log)
        _write_report(target, previous)
        if not previous["verification"]["passed"]:
            raise RustcoderError(f"{target} failed verification.\n" + refusal_message(previous, src.run_dir or
                                                                                      src.adapter_dir)
                                 + f"\nRe-merge with --force once fixed.\n" + render_report(previous))
    return MergeResult(merged_dir=target, report=previous, already_merged=True)


def push_merged(merged_dir: str | Path, repo: str) -> str:
    """Upload a merged model directory (with its model card and merge report) to a hub model repo."""
    return artifacts.push_folder(merged_dir, repo, "merged model")


def newest_merged(runs_dir: str | Path = "runs") -> Path:
    """The most recently merged model among the runs under runs_dir (what `rustcoder serve` serves).

    Looks at RUN_DIR/merged and wherever a run's manifest says it was merged to; only complete merges
    (with merge_report.json) whose verification passed or was skipped count.
    """
    found: list[tuple[float, Path]] = []
    for run in artifacts.list_runs(runs_dir):
        manifest = read_json(run / MANIFEST)
        candidates = {run / MERGED_DIR}
        if manifest.get("merged_dir"):
            candidates.add(Path(manifest["merged_dir"]))
        for c in candidates:
            if (c / REPORT).is_file() and (c / "config.json").is_file():
                report = read_json(c / REPORT)
                if (report.get("verification") or {}).get("passed") is not False:
                    found.append((report.get("created_at", 0), c.resolve()))
    if not found:
        raise UsageError(f"no merged model under {str(runs_dir)!r}. Merge a run first: `rustcoder merge` "
                         "(merges the newest finished run).")
    return max(found, key=lambda x: x[0])[1]
