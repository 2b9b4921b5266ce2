"""The hub, seen from a machine that may be offline: whether HF_HUB_OFFLINE is set, whether the hub answers at
all (checked once per process; an unreachable hub switches the process to offline mode), whether a repo is in
the local hub cache, and what to tell a user when something could not be fetched from it."""

from __future__ import annotations

import os
import sys

_REACHABLE: dict[tuple[str, int], bool] = {}
_WENT_OFFLINE = False  # True once settle_offline() set HF_HUB_OFFLINE because the hub did not answer
_SAID = False  # the user was told


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for the local hub cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_host() -> tuple[str, int]:
    """(host, port) of the hub ($HF_ENDPOINT or huggingface.co)."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connect (checked once per process, in at most ``timeout`` s)."""
    import socket

    host = hub_host()
    if host not in _REACHABLE:
        try:
            socket.create_connection(host, timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def settle_offline(log=None) -> bool:
    """Decide once, before any hub call, whether this process works offline; True when it does.

    HF_HUB_OFFLINE set: offline. Else one TCP connect to the hub (at most 3 s): when it does not answer,
    HF_HUB_OFFLINE=1 is set for this process and its children (and in huggingface_hub and datasets when
    already imported), so models and datasets come from the hub cache at once instead of each file being
    retried five times. The first call given a ``log`` says so, once per process.
    """
    global _WENT_OFFLINE, _SAID
    if not _WENT_OFFLINE:
        if hub_offline():
            return True
        if hub_reachable():
            return False
        os.environ["HF_HUB_OFFLINE"] = "1"
        for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                             ("datasets.config", "HF_DATASETS_OFFLINE")):
            if module in sys.modules:  # these read the variable once, at import
                setattr(sys.modules[module], attr, True)
        _WENT_OFFLINE = True
    if log is not None and not _SAID:
        _SAID = True
        log(f"note: {hub_host()[0]} cannot be reached: working offline (models and datasets from the hub cache "
            "and local paths only)")
    return True


def hub_hint(name: str, instead: str) -> str:
    """What to do when ``name`` could not be fetched from the hub, for the actual reason: HF_HUB_OFFLINE set,
    the hub unreachable, or (reachable) a wrong id or a gated repo. ``instead`` is the local alternative,
    e.g. "pass a local model directory"."""
    if _WENT_OFFLINE or (not hub_offline() and not hub_reachable()):
        return (f"{hub_host()[0]} cannot be reached from here and {name!r} is not in the hub cache. Connect (or set "
                f"HTTPS_PROXY), or {instead}.")
    if hub_offline():
        return (f"HF_HUB_OFFLINE=1 is set: only what is already in the hub cache loads, and {name!r} is not (fully) "
                f"there. Unset HF_HUB_OFFLINE to download it, or {instead}.")
    return (f"Check the hub id; for a gated or private repo log in with `hf auth login` (or export HF_TOKEN=...). "
            f"Or {instead}.")


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local hub cache holds a model (its config.json) under this id."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library refuses is not in its cache
        return False


def repo_missing(repo_id: str) -> bool:
    """True only when the hub answers that no model repo has this id (visible to this user); False when it
    exists, is gated, or the hub could not say (then loading it reports the real cause)."""
    try:
        from huggingface_hub import HfApi

        return not HfApi().repo_exists(repo_id)
    except Exception:  # network trouble or an id the library refuses: let the loader report it
        return False
