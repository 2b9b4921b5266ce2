"""The hub, seen from a machine that may be offline: whether HF_HUB_OFFLINE is set, whether the hub answers at
all, and what to tell a user when something could not be fetched from it. Standard library only."""

from __future__ import annotations

import os

_REACHABLE: dict[tuple[str, int], bool] = {}


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


def hub_hint(name: str, instead: str) -> str:
    """What to do when ``name`` could not be fetched from the hub, for the actual reason: HF_HUB_OFFLINE set,
    the hub unreachable, or (reachable) a wrong id or a gated repo. ``instead`` is the local alternative,
    e.g. "pass a local model directory"."""
    if hub_offline():
        return (f"HF_HUB_OFFLINE=1 is set: only what is already in the hub cache loads, and {name!r} is not (fully) "
                f"there. Unset HF_HUB_OFFLINE to download it, or {instead}.")
    if not hub_reachable():
        return (f"{hub_host()[0]} cannot be reached from here and {name!r} is not in the hub cache. Connect (or set "
                f"HTTPS_PROXY), or {instead}.")
    return (f"Check the hub id; for a gated or private repo log in with `hf auth login` (or export HF_TOKEN=...). "
            f"Or {instead}.")
