"""Which process this is in a multi-process run: rank and world size, whether a launcher started it, and the
run directory the launcher chose for every rank. Read by the launcher, training and the CLI (standard library)."""

from __future__ import annotations

import os

LAUNCHED_ENV = "RUSTCODER_LAUNCHED"
RUN_DIR_ENV = "RUSTCODER_RUN_DIR"


def is_launched() -> bool:
    """True inside a process started by rustcoder's launcher (or any torchrun/accelerate launch)."""
    return os.environ.get(LAUNCHED_ENV) == "1" or int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process, from the launcher's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
