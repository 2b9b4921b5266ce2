"""Optional stacks: the extra that installs each, and one check whose message is the exact install command.

Each is imported lazily where it is used; ``require(module)`` raises MissingExtraError (exit 1, no
traceback) before work starts. Importing this module is cheap (standard library only).
"""

from __future__ import annotations

import importlib.util

from .errors import MissingExtraError

# module -> (what it is for, the exact install command)
EXTRAS = {
    "trackio": ("Trackio (live training metrics, --report-to trackio, the default)",
                "pip install 'rustcoder[trackio]'   (or: pip install trackio; or train with --report-to none)"),
    "matplotlib": ("matplotlib (the charts: eval's scores.png, compare's and sweep's PNGs)",
                   "pip install 'rustcoder[plots]'   (or: pip install matplotlib)"),
    "deepspeed": ("DeepSpeed (--launch-config deepspeed-zero2 / deepspeed-zero3, on GPUs)",
                  "pip install 'rustcoder[deepspeed]'"),
    "flash_attn": ("flash-attn (CUDA varlen attention for packed forwards)",
                   "pip install 'rustcoder[flash-attn]' --no-build-isolation"),
    "kernels": ("kernels (transformers' hub kernels: kernels-community/flash-attn2)",
                "pip install 'rustcoder[kernels]'"),
}


def installed(module: str) -> bool:
    """Whether an optional module can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-installed package, or one set to None in sys.modules
        return False


def install_command(module: str) -> str:
    """The exact command that installs an optional stack."""
    return EXTRAS[module][1]


def require(module: str) -> None:
    """MissingExtraError naming what the module is for and its install command, when it is not installed."""
    if not installed(module):
        what, install = EXTRAS[module]
        raise MissingExtraError(what, install)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); MissingExtraError when absent."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
