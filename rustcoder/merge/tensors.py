"""Safetensors files read and written one tensor (or one block of rows) at a time, with every byte held counted.

Hand-written on purpose: ``safetensors.safe_open`` memory-maps the file (its pages stay in the process's
RSS) and exposes no byte offsets, which the streaming merge needs to copy an untouched tensor's bytes
without materializing it and the layerwise verification needs to count what it holds.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import weakref
from pathlib import Path
from typing import Any, Callable

from ..artifacts import read_json
from ..errors import RustcoderError

ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32",
              "U64": "uint64"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def st_code(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    for code, n in ST_DTYPES.items():
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


def read_tensor(fh, info: dict, data_start: int, alloc: Callable[[int], Any] = bytearray):
    """One tensor read with plain file reads into a buffer from alloc(nbytes)."""
    import torch

    start, end = info["data_offsets"]
    dtype = torch_dtype(ST_DTYPES[info["dtype"]])
    if end == start:
        return torch.empty(info["shape"], dtype=dtype)
    buf = alloc(end - start)
    _read_into(fh, data_start + start, buf)
    return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"])


class SafetensorsWriter:
    """Writes a safetensors file whose header is known up front, then tensors one by one."""

    def __init__(self, path: Path, entries: list[tuple[str, str, list[int]]], metadata: dict[str, str]):
        import torch

        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        self.expected = []
        for name, code, shape in entries:
            nbytes = math.prod(shape) * torch.empty((), dtype=torch_dtype(ST_DTYPES[code])).element_size()
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
        if name != want or st_code(tensor.dtype) != code or list(tensor.shape) != shape:
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
                yield name, read_tensor(fh, info, start)


class _Buffer(bytearray):
    """A bytearray that can be watched (weakref) so Meter knows when its tensor is gone."""


LAYER_OF = re.compile(r"(?:^|\.)layers\.(\d+)\.")


BLOCK_BYTES = 64 << 20       # tensor checks (and DoRA norms) work on blocks of rows this big


def rows_per_block(shape: list[int]) -> int:
    return max(1, BLOCK_BYTES // (4 * max(1, math.prod(shape[1:])))) if len(shape) >= 2 else 1


class Meter:
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
            layers = {m.group(1) for n, _ in self.live.values() if (m := LAYER_OF.search(n))}
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


class Reader:
    """The tensors of a model directory by name, each read on demand (whole, or in blocks of rows)."""

    def __init__(self, model_dir: str | Path, meter: Meter | None = None):
        self.meter = meter or Meter()
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
        return torch_dtype(ST_DTYPES[self.entries[name][1]["dtype"]])

    def _fh(self, path: Path):
        if path not in self._open:
            self._open[path] = open(path, "rb")
        return self._open[path]

    def read(self, name: str, dtype=None):
        """The whole tensor, in its stored dtype or converted to dtype (counted by the meter). A conversion
        reads blocks of rows into the converted tensor, so the stored copy is never held whole as well."""
        path, info, start = self.entries[name]
        if dtype is None or self.dtype(name) == dtype:
            return read_tensor(self._fh(path), info, start, self.meter.alloc(name))
        out = self.meter.empty(name, self.shape(name), dtype)
        if out.dim() < 2:
            out.copy_(read_tensor(self._fh(path), info, start, self.meter.alloc(name)))
            return out
        for r0, r1, block in self.rows(name, rows_per_block(self.shape(name))):
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
